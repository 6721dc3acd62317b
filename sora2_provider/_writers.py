"""The files :func:`sora2_provider.storage.atomic_writer` writes through, for speed with bounded memory.

* :class:`WriteBackFile`, a local file that hands its data to the disk while it is still being written (so the
  fsync before the rename has little left to flush);
* :class:`S3PartWriter`, an S3 object written as a multipart upload with a few parts uploading at once (s3fs's
  own file uploads each part inside ``write()``, so the caller waits for every part).

Both are written by one thread at a time; neither makes anything visible at the target by itself.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections import deque
from concurrent.futures import Future
from typing import Any

_CHECKSUM = {"ChecksumAlgorithm": "CRC32"}
_PART_CHECKSUM = "ChecksumCRC32"
WRITEBACK_STEP = 8 * 1024 * 1024  # start write-back of each new 8 MiB of a local file
SYNC_STEP = 64 * 1024 * 1024  # and wait for what was written every 64 MiB, so dirty data stays bounded


class WriteBackFile(io.BufferedWriter):
    """A buffered local file that starts write-back as it goes: ``posix_fadvise(DONTNEED)`` asks Linux to write
    the last ``WRITEBACK_STEP`` bytes now (without waiting), ``fdatasync`` every ``SYNC_STEP`` waits for them.
    Where ``posix_fadvise`` is missing only the periodic ``fdatasync`` is done."""

    def __init__(self, raw: io.RawIOBase, writeback_step: int = WRITEBACK_STEP, sync_step: int = SYNC_STEP) -> None:
        super().__init__(raw, buffer_size=io.DEFAULT_BUFFER_SIZE)
        self._writeback_step, self._sync_step = writeback_step, sync_step
        self._size = self._started = self._synced = 0

    def write(self, data: Any) -> int:
        written = super().write(data)
        self._size += written
        if self._size - self._started >= self._writeback_step:
            self._start_writeback()
        return written

    def _start_writeback(self) -> None:
        self.flush()
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fileno(), self._started, self._size - self._started, os.POSIX_FADV_DONTNEED)
        self._started = self._size
        if self._size - self._synced >= self._sync_step:
            _datasync(self.fileno())
            self._synced = self._size


def _datasync(fd: int) -> None:
    """Wait until the file's data is on disk (``fdatasync`` where it exists, else ``fsync``)."""
    getattr(os, "fdatasync", os.fsync)(fd)


class S3PartWriter:
    """One S3 object written as a multipart upload, ``in_flight`` parts of ``part_size`` uploading at once.

    ``write`` queues a part on s3fs's event loop as soon as one is full and waits only while ``in_flight`` parts
    are still uploading; memory stays about ``(in_flight + 1) x part_size``. ``close`` sends the last part and
    waits for all of them; ``commit`` completes the upload (or, for an object smaller than a part, sends it in one
    PUT); ``discard`` waits for the parts in flight and aborts the upload. Until ``commit`` nothing is at the key.
    An upload error is raised, as s3fs raised it, by the next ``write``, ``close`` or ``commit``.

    Like the AWS SDK's own transfer manager (s3transfer), the upload declares the CRC32 checksum botocore computes
    for every part (when the client's ``request_checksum_calculation`` is ``when_supported``, botocore's default)
    and completes with each part's checksum: S3 checks every part and keeps a composite checksum. Without it S3
    computes a full-object CRC64NVME itself, and a local S3 API such as moto does that in the completion call.
    """

    def __init__(self, fs: Any, path: str, part_size: int, in_flight: int) -> None:
        if in_flight < 1:
            raise ValueError("in_flight must be >= 1")
        self.fs, self.path = fs, path
        self.bucket, self.key, _ = fs.split_path(path)
        self.part_size, self.in_flight = part_size, in_flight
        self.closed = False
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._pending: deque[tuple[int, Future[Any]]] = deque()
        self._parts: list[dict[str, Any]] = []
        self._checksum: dict[str, str] = {}

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= self.part_size:
            self._send_part()
        return len(chunk)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Parts go out when full: nothing to do (an S3 part, the last excepted, is at least 5 MiB)."""

    def close(self) -> None:
        """Send what is buffered as the last part (if an upload was started) and wait for every part."""
        if self.closed:
            return
        self.closed = True
        if self._upload_id is not None and self._buffered:
            self._send_part()
        while self._pending:
            self._collect_oldest()

    def commit(self) -> None:
        """Make the object appear at its key: complete the multipart upload, or PUT a small object whole."""
        self.close()
        if self._upload_id is None:
            self._call("put_object", Body=self._take_buffer())
        else:
            parts = sorted(self._parts, key=lambda part: part["PartNumber"])
            self._call("complete_multipart_upload", UploadId=self._upload_id, MultipartUpload={"Parts": parts})
            self._upload_id = None
        self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        """Drop everything: wait for the parts in flight (whatever they answer), then abort the upload."""
        self.closed = True
        self._chunks, self._buffered = [], 0
        while self._pending:
            self._pending.popleft()[1].exception()  # waits; its error, if any, is not the one to report
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            self._call("abort_multipart_upload", UploadId=upload_id)

    def _send_part(self) -> None:
        if self._upload_id is None:
            self._checksum = _CHECKSUM if _checksums_when_supported(self.fs) else {}
            self._upload_id = self._call("create_multipart_upload", **self._checksum)["UploadId"]
        while len(self._pending) >= self.in_flight:
            self._collect_oldest()
        number = len(self._parts) + len(self._pending) + 1
        coroutine = self.fs._call_s3(
            "upload_part", Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number,
            Body=self._take_buffer(), **self._checksum,
        )
        self._pending.append((number, asyncio.run_coroutine_threadsafe(coroutine, self.fs.loop)))

    def _collect_oldest(self) -> None:
        number, future = self._pending.popleft()
        answer = future.result()
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        if answer.get(_PART_CHECKSUM):
            part[_PART_CHECKSUM] = answer[_PART_CHECKSUM]
        self._parts.append(part)

    def _take_buffer(self) -> bytes:
        body = b"".join(self._chunks)
        self._chunks, self._buffered = [], 0
        return body

    def _call(self, method: str, **kwargs: Any) -> Any:
        return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)


def _checksums_when_supported(fs: Any) -> bool:
    """Whether the S3 client computes request checksums where the API supports them (botocore >= 1.36's default);
    a user who set ``request_checksum_calculation="when_required"`` (for an S3 API without flexible checksums)
    gets uploads without a declared checksum, as before."""
    config = getattr(getattr(fs.connect(), "meta", None), "config", None)
    return getattr(config, "request_checksum_calculation", None) == "when_supported"
