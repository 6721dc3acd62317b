"""Moving video bytes, as methods of :class:`~sora2_provider.hooks.sora2.Sora2Hook`: the paid v1 call whose body
is the MP4, downloads of finished videos (resumed with ``Range`` after a cut), and image uploads.

Memory stays within a few 1 MiB chunks: hashing and writing run in threads fed by bounded queues (``_pipeline``).
"""

from __future__ import annotations

import base64
from typing import Any

import requests

from sora2_provider.exceptions import Sora2DownloadError, Sora2Error
from sora2_provider.hooks._http import as_path, image_mime, open_destination
from sora2_provider.hooks._wire import CHUNK_SIZE, IncompleteDownloadError, VideoSink, json_body, output_url, to_float
from sora2_provider.models import DownloadResult, SyncResult, VideoRequest

SYNC_TIMEOUT_FACTOR = 10
MAX_IMAGE_BYTES = 20 * 1024 * 1024


class TransferMixin:
    """The hook's calls that stream a body (v1 generation, downloads) or send one (image uploads)."""

    # ``self: Any``: these methods run on Sora2Hook, whose attributes they use.

    def generate_sync(self: Any, request: VideoRequest, destination: Any) -> SyncResult:
        """One paid blocking call (``POST /v1/{model}``) whose MP4 body is streamed to ``destination``.

        The read timeout is ten times the connection's ``timeout``. The call is billed once it answers 200:
        a body cut short raises :class:`Sora2DownloadError` naming the request id (it cannot be resumed).
        """
        connect, read = self.timeouts
        with open_destination(destination) as fh:  # opened first: a bad destination fails before paying
            response, paid = self._paid_post(request, "v1", stream=True, timeout=(connect, read * SYNC_TIMEOUT_FACTOR))
            with response:
                request_id = response.headers.get("x-request-id")
                with VideoSink(fh, f"{paid.endpoint} request {request_id}") as sink:
                    download = self._sync_body(response, sink)
        return SyncResult(
            request_id=request_id,
            download=download,
            cost=to_float(response.headers.get("x-cost")),
            remaining_credits=to_float(response.headers.get("x-remaining-credits")),
            generation_seconds=to_float(response.headers.get("x-generation-time")),
        )

    def _sync_body(self: Any, response: requests.Response, sink: VideoSink) -> DownloadResult:
        """Stream the v1 body; when Segmind answered JSON with an output URL instead, download that URL."""
        if "json" in (response.headers.get("Content-Type") or ""):
            url = output_url(json_body(response) or {})
            if not url:
                raise Sora2DownloadError(f"{sink.what}: JSON answer without an output URL (billed)")
            self._retrying()(self._download_attempt, url, sink)
            return sink.finish()
        sink.start(response)
        try:
            sink.pump(response.iter_content(CHUNK_SIZE))
            return sink.finish()
        except IncompleteDownloadError as err:
            raise Sora2DownloadError(f"{err}; the call was billed and its body cannot be resumed") from err

    # ------------------------------------------------------------------ downloads and uploads

    def download(self: Any, url: str, destination: Any) -> DownloadResult:
        """Stream a finished video to ``destination`` (ObjectStoragePath, path, or open binary file).

        Memory stays within a few 1 MiB chunks (hashing and writing run in threads fed by bounded queues, see
        ``_pipeline``). A short read resumes with ``Range`` (or re-reads and skips what
        was written when the server ignores it); the MP4 signature is checked. The API key is not sent.
        """
        with open_destination(destination) as fh, VideoSink(fh, f"download of {url}") as sink:
            self._retrying()(self._download_attempt, url, sink)
        return sink.finish()

    def _download_attempt(self: Any, url: str, sink: VideoSink) -> None:
        headers: dict[str, str | None] = {"x-api-key": None, "Accept-Encoding": "identity", "Accept": "*/*"}
        if sink.written:
            headers["Range"] = f"bytes={sink.written}-"
            if sink.validator:
                headers["If-Range"] = sink.validator
        with self._send("GET", url, what=sink.what, stream=True, headers=headers, keyed=False) as response:
            if sink.written:
                self.log.info("Resuming %s at byte %d (HTTP %d)", url, sink.written, response.status_code)
                chunks = sink.resume_from(response)
            else:
                sink.start(response)
                chunks = response.iter_content(CHUNK_SIZE)
            sink.pump(chunks)
        sink.finish()

    def upload_image(self: Any, source: Any) -> str:
        """Host a local or object-storage image on Segmind and return its public URL (for ``input_reference``).

        ``source``: a local path, a ``file://`` or ``s3://...`` URL, or an ``ObjectStoragePath``.
        The upload is retried like a GET: a repeat at worst stores the same image twice, for free.
        """
        path = as_path(source)
        with path.open("rb") as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"source: {source} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
        data_url = f"data:{image_mime(data, path.name)};base64,{base64.b64encode(data).decode('ascii')}"
        _, body = self._call_json(
            "POST", f"{self.upload_url}/upload-asset", what=f"upload of {path.name}", json={"data_urls": [data_url]}
        )
        urls = body.get("file_urls") if isinstance(body, dict) else None
        if not isinstance(urls, list) or not urls or not isinstance(urls[0], str):
            raise Sora2Error(f"upload of {path.name}: the answer has no file_urls", segmind_message=str(body)[:300])
        return urls[0]
