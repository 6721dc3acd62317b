"""Streaming a video body to its destination: a sink that checks the MP4 and resumes, and a pipeline that hashes
and writes each chunk in threads of their own, fed by bounded queues (memory stays within a few chunks).
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import requests
from airflow.providers.common.compat.sdk import ObjectStoragePath

from sora2_provider.exceptions import Sora2DownloadError
from sora2_provider.models import DownloadResult
from sora2_provider.storage import MP4_SIGNATURE, WRITE_BLOCK_SIZE

CHUNK_SIZE = 1 << 20
QUEUE_CHUNKS = 4  # chunks (1 MiB each when streaming a video) waiting per stage
_STOP = object()


class IncompleteDownloadError(Sora2DownloadError):
    """The body ended before ``Content-Length`` bytes: the download can resume where it stopped."""


class BoundedQueue(queue.Queue[Any]):
    """A FIFO of at most ``maxsize`` items that remembers the most it ever held (``peak``)."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("a pipeline queue must be bounded (maxsize >= 1)")
        super().__init__(maxsize)
        self.peak = 0

    def _put(self, item: Any) -> None:  # called with the queue's mutex held
        super()._put(item)
        self.peak = max(self.peak, len(self.queue))


class Stage:
    """One worker thread that applies ``work`` to every item put, in order."""

    def __init__(self, name: str, work: Callable[[bytes], Any], bound: int = QUEUE_CHUNKS) -> None:
        self.name = name
        self.work = work
        self.queue = BoundedQueue(bound)
        self.error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, chunk: bytes) -> None:
        """Queue ``chunk`` (waiting while the queue is full); raise the worker's error if it failed."""
        self.raise_error()
        self.queue.put(chunk)

    def drain(self) -> None:
        """Wait until every queued chunk was handled; raise the worker's error if it failed."""
        self.queue.join()
        self.raise_error()

    def stop(self, cancel: bool = False) -> None:
        """End the worker once it handled what is queued; with ``cancel``, what is still queued is dropped."""
        self._cancelled = self._cancelled or cancel
        if self._thread.is_alive():
            self.queue.put(_STOP)
            self._thread.join()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            try:
                if item is _STOP:
                    return
                if self.error is None and not self._cancelled:
                    self.work(item)
            except BaseException as err:  # kept for the producer, which raises it in its own thread
                self.error = err
            finally:
                self.queue.task_done()


class ChunkPipeline:
    """Fans every chunk out to a sha256 thread and a writer thread (``write`` is the destination's ``write``).

    Use it as a context manager: leaving the block normally drains both stages and raises a worker's error;
    leaving it on an exception stops both workers (dropping what they still hold) and lets that exception through.
    Either way both threads have ended when the block is left, so the destination can be closed or discarded.
    """

    def __init__(self, write: Callable[[bytes], Any], bound: int = QUEUE_CHUNKS) -> None:
        self._sha = hashlib.sha256()
        self.hasher = Stage("sora2-sha256", self._sha.update, bound)
        self.writer = Stage("sora2-writer", write, bound)
        self._stages = (self.writer, self.hasher)
        self._started = False

    def __enter__(self) -> ChunkPipeline:
        for stage in self._stages:
            stage.start()
        self._started = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        try:
            if exc_type is None:
                self.drain()
        finally:
            failed = exc_type is not None or any(stage.error is not None for stage in self._stages)
            for stage in self._stages:
                stage.stop(cancel=failed)
            self._started = False

    def put(self, chunk: bytes) -> None:
        if not self._started:
            raise RuntimeError("the pipeline is not running: use it in a with block")
        for stage in self._stages:
            stage.put(chunk)

    def drain(self) -> None:
        """Wait until every chunk is hashed and written; raise a worker's error (the writer's first)."""
        for stage in self._stages:
            stage.drain()

    def sha256(self) -> hashlib._Hash:
        """A copy of the hash of every chunk put so far (waits for the hashing thread to catch up)."""
        self.hasher.drain()
        return self._sha.copy()


def content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """Start offset and total size of a 206 answer's ``Content-Range: bytes START-END/TOTAL``."""
    match = re.match(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
    if not match:
        return None, None
    total = match.group(2)
    return int(match.group(1)), int(total) if total.isdigit() else None


class VideoSink:
    """Where a video body goes: counts the chunks, checks the MP4 signature, and hands them to a
    :class:`ChunkPipeline` that hashes them and writes them in threads of its own.

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

    def request_headers(self) -> dict[str, str | None]:
        """Headers of the next GET: no API key, no compression, and ``Range`` from what was written already."""
        headers: dict[str, str | None] = {"x-api-key": None, "Accept-Encoding": "identity", "Accept": "*/*"}
        if self.written:
            headers["Range"] = f"bytes={self.written}-"
            if self.validator:
                headers["If-Range"] = self.validator
        return headers

    def take(self, response: requests.Response) -> None:
        """Write one answer's body: the whole body of a first answer, what follows ``written`` of a resumed one."""
        if self.written:
            chunks = self.resume_from(response)
        else:
            self.start(response)
            chunks = response.iter_content(CHUNK_SIZE)
        self.pump(chunks)

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


def as_path(location: Any) -> Any:
    """An ``ObjectStoragePath`` for URLs (``s3://``, ``file://``...) and object-storage paths, else a local Path."""
    if isinstance(location, ObjectStoragePath):
        return location
    if isinstance(location, str) and "://" in location:
        return ObjectStoragePath(location)
    return Path(os.fspath(location))


@contextmanager
def open_destination(destination: Any) -> Iterator[IO[bytes]]:
    """An open binary file for ``destination``: a file object (left open), an ObjectStoragePath, or a path.

    Object storage is written in ``WRITE_BLOCK_SIZE`` parts (s3fs would buffer 50 MiB by default). A failed
    download may leave a partial file behind: callers write to a temporary name.
    """
    if hasattr(destination, "write"):
        yield destination
        return
    path = as_path(destination)
    opened = path.open("wb") if isinstance(path, Path) else path.open("wb", block_size=WRITE_BLOCK_SIZE)
    with opened as fh:
        yield fh
