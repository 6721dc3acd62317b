"""Pure helpers of the Sora 2 hook: reading Segmind's answers defensively, and streaming a video body.

Nothing here speaks HTTP by itself or knows the API key; :mod:`sora2_provider.hooks.sora2` does.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import IO, Any

import requests

from sora2_provider.exceptions import Sora2DownloadError
from sora2_provider.hooks._pipeline import ChunkPipeline
from sora2_provider.models import DownloadResult, HistoryRecord

CHUNK_SIZE = 1 << 20
MP4_SIGNATURE = b"ftyp"
_ERROR_TEXT_LIMIT = 300
_ERROR_BODY_LIMIT = 16 * 1024
_ROW_LIST_KEYS = ("data", "items", "results", "rows")
_NUMBER = r"(\d+(?:\.\d+)?)"
_BALANCE_RE = re.compile(r"(?:balance|available|remaining|have)\D{0,30}?" + _NUMBER, re.IGNORECASE)
_REQUIRED_RE = re.compile(r"(?:requir\w*|need\w*|cost\w*)\D{0,30}?" + _NUMBER, re.IGNORECASE)


class IncompleteDownloadError(Sora2DownloadError):
    """The body ended before ``Content-Length`` bytes: the download can resume where it stopped."""


# --------------------------------------------------------------------------- answers


def to_float(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def error_text(response: requests.Response) -> str | None:
    """Segmind's error message: the ``error`` of a JSON body, else a short snippet of the text (HTML too)."""
    raw = b"".join(itertools.islice(response.iter_content(1024), _ERROR_BODY_LIMIT // 1024))
    text = raw.decode(response.encoding or "utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return _snippet(re.sub(r"<[^>]*>", " ", text))
    if isinstance(body, dict):
        for key in ("error", "message", "detail", "msg"):
            if body.get(key):
                value = body[key]
                return _snippet(value if isinstance(value, str) else json.dumps(value))
    return _snippet(text)


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


def json_body(response: requests.Response) -> Any:
    """The JSON body of a successful answer, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def is_failed_body(response: requests.Response) -> bool:
    """Whether a (422) answer is the FAILED payload of a v2 job rather than a transport error."""
    body = json_body(response)
    return isinstance(body, dict) and str(body.get("status", "")).upper() == "FAILED"


def credit_numbers(text: str | None) -> tuple[float | None, float | None]:
    """Balance and required credits named in a 406 message, when it names them."""
    balance = _BALANCE_RE.search(text or "")
    required = _REQUIRED_RE.search(text or "")
    return (
        float(balance.group(1)) if balance else None,
        float(required.group(1)) if required else None,
    )


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from epoch seconds/milliseconds, ISO 8601 or an HTTP date; None if unreadable."""
    number = to_float(value)
    if number is not None:
        return datetime.fromtimestamp(number / 1000 if number > 1e11 else number, tz=timezone.utc)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def first_url(value: Any) -> str | None:
    """An output URL given as a string, a list of strings or an object with ``url``."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value:
        return first_url(value[0])
    if isinstance(value, dict):
        return first_url(value.get("url"))
    return None


def output_url(body: dict[str, Any]) -> str | None:
    """The video URL of a v2 result or v1 JSON answer: ``output``, else ``video.url``."""
    return first_url(body.get("output")) or first_url(body.get("video")) or first_url(body.get("url"))


def history_rows(payload: Any) -> list[dict[str, Any]]:
    """The rows of a history page: a bare list, or a list under data/items/results/rows (one level deep too)."""
    if isinstance(payload, list):
        return [row for row in payload if isinstance(row, dict)]
    if isinstance(payload, dict):
        for key in _ROW_LIST_KEYS:
            value = payload.get(key)
            if isinstance(value, list):
                return history_rows(value)
            if isinstance(value, dict) and "request_id" not in value:
                return history_rows(value)
    return []


def history_row(payload: Any) -> dict[str, Any] | None:
    """The row of a single-request history answer: the object itself or the one under a wrapper key."""
    if isinstance(payload, dict) and "request_id" in payload:
        return payload
    if isinstance(payload, dict):
        for key in ("data", "item", "result", "row"):
            if isinstance(payload.get(key), dict):
                return history_row(payload[key])
    rows = history_rows(payload)
    return rows[0] if rows else None


def history_record(row: dict[str, Any]) -> HistoryRecord:
    """A :class:`HistoryRecord` from a history row, every key read with ``.get``."""
    body = row.get("request_body")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = {"raw": body}
    created = next((row[k] for k in ("created_at", "model_created", "createdAt", "created") if row.get(k)), None)
    status = row.get("model_status") or row.get("status")
    return HistoryRecord(
        request_id=str(row.get("request_id") or ""),
        model=row.get("model_name") or row.get("model"),
        status=str(status).upper() if status else None,
        cost=to_float(row.get("credits_deduction", row.get("cost"))),
        request_body=body if isinstance(body, dict) else {},
        output_url=first_url(row.get("generation_url")) or first_url(row.get("output")),
        created_at=str(created) if created is not None else None,
        error=row.get("error") or None,
        latency_ms=to_float(row.get("latency_ms")),
    )


# --------------------------------------------------------------------------- streaming


def content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """Start offset and total size of a 206 answer's ``Content-Range: bytes START-END/TOTAL``."""
    match = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match:
        return None, None
    total = match.group(2)
    return int(match.group(1)), int(total) if total.isdigit() else None


class VideoSink:
    """Where a video body goes: counts the chunks, checks the MP4 signature, and hands them to a
    :class:`~sora2_provider.hooks._pipeline.ChunkPipeline` that hashes them and writes them in threads of its own.

    Use it as a context manager around the transfer (leaving the block waits for the last write and raises a
    write error). It survives several HTTP answers for one file (a resumed download) and holds a few chunks at most.
    """

    def __init__(self, fh: IO[bytes], what: str) -> None:
        self.fh = fh
        self.what = what
        self.written = 0
        self.expected: int | None = None
        self.content_type: str | None = None
        self.validator: str | None = None
        self._pipeline = ChunkPipeline(fh.write)
        self._head = b""

    def __enter__(self) -> VideoSink:
        self._pipeline.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._pipeline.__exit__(*exc_info)

    def start(self, response: requests.Response) -> None:
        """Take size, type and validator (ETag / Last-Modified) from the first answer."""
        length = response.headers.get("Content-Length")
        self.expected = int(length) if length and length.isdigit() else None
        if response.status_code == 206:
            self.expected = content_range(response)[1]
        self.content_type = response.headers.get("Content-Type")
        self.validator = response.headers.get("ETag") or response.headers.get("Last-Modified")

    def resume_from(self, response: requests.Response) -> Iterable[bytes]:
        """The chunks of a resumed answer that follow what was written already.

        A 206 must start where the file stopped. A 200 means the server ignored ``Range``: its first
        ``written`` bytes are read again and dropped, after checking they hash the same as what was written.
        """
        chunks = response.iter_content(CHUNK_SIZE)
        if response.status_code == 206:
            start, total = content_range(response)
            if start != self.written:
                raise Sora2DownloadError(f"{self.what}: asked for bytes from {self.written}, got a range from {start}")
            self.expected = total if total is not None else self.expected
            return chunks
        return self._skip_written(chunks)

    def _skip_written(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        remaining, check, written_digest = self.written, hashlib.sha256(), self._pipeline.sha256().digest()
        for chunk in chunks:
            if remaining:
                part = chunk[:remaining]
                check.update(part)
                remaining -= len(part)
                chunk = chunk[len(part) :]
                if not remaining and check.digest() != written_digest:
                    raise Sora2DownloadError(f"{self.what}: the file changed on the server during the download")
            if chunk:
                yield chunk

    def pump(self, chunks: Iterable[bytes]) -> None:
        """Write every chunk; a dropped connection or timeout becomes :class:`IncompleteDownloadError`."""
        try:
            for chunk in chunks:
                self.write(chunk)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as err:
            raise IncompleteDownloadError(
                f"{self.what}: the connection broke after {self.written} of {self.expected or '?'} bytes ({err})"
            ) from err

    def write(self, chunk: bytes) -> None:
        if len(self._head) < 8:
            self._head += chunk[: 8 - len(self._head)]
            if len(self._head) == 8:
                self._check_signature()
        self._pipeline.put(chunk)
        self.written += len(chunk)

    def _check_signature(self) -> None:
        if self._head[4:8] != MP4_SIGNATURE:
            raise Sora2DownloadError(
                f"{self.what}: the body is not an MP4 video (first bytes {self._head!r}, "
                f"Content-Type {self.content_type!r})"
            )

    def finish(self) -> DownloadResult:
        """Wait for the pipeline, check the length and the signature, and describe what was written."""
        self._pipeline.drain()
        if self.expected is not None and self.written < self.expected:
            raise IncompleteDownloadError(f"{self.what}: got {self.written} of {self.expected} bytes")
        if self.expected is not None and self.written > self.expected:
            raise Sora2DownloadError(f"{self.what}: got {self.written} bytes, more than the {self.expected} announced")
        if len(self._head) < 8:
            self._check_signature()
        return DownloadResult(
            bytes=self.written, sha256=self._pipeline.sha256().hexdigest(), content_type=self.content_type
        )
