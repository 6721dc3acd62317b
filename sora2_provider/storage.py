"""Object-storage helpers: parse an output location and write to it so no reader sees a partial object."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from airflow.providers.common.compat.sdk import ObjectStoragePath
from fsspec.implementations.local import LocalFileSystem, get_umask
from fsspec.registry import known_implementations

from sora2_provider._writers import S3PartWriter, WriteBackFile

__all__ = [
    "MP4_SIGNATURE",
    "WRITE_BLOCK_SIZE",
    "atomic_writer",
    "copy_atomically",
    "inspect_video",
    "known_schemes",
    "to_object_storage_path",
]

MP4_SIGNATURE = b"ftyp"
READ_CHUNK = 1024 * 1024
WRITE_BLOCK_SIZE = 8 * 1024 * 1024  # object-store part size: bounds memory (s3fs buffers 50 MiB by default)
PARTS_IN_FLIGHT = 2  # S3 parts uploading at once while the next one fills (3 x 8 MiB: P2 measured 76 MiB added)


def to_object_storage_path(value: Any, field_name: str = "output_path") -> ObjectStoragePath:
    """Turn a ``scheme://...`` string (or an ObjectStoragePath) into an ObjectStoragePath.

    A bare path has no scheme and is refused: say ``file:///abs/path.mp4`` or ``s3://conn@bucket/key.mp4``.
    """
    if isinstance(value, ObjectStoragePath):
        return value
    if not isinstance(value, str) or "://" not in value:
        raise ValueError(
            f"{field_name}: {value!r} has no scheme; give a URL such as 'file:///data/video.mp4' "
            "or 's3://aws_default@bucket/video.mp4'"
        )
    scheme = value.split("://", 1)[0].lower()
    if scheme not in known_schemes():
        raise ValueError(
            f"{field_name}: unknown scheme {scheme!r}; allowed values: {', '.join(sorted(known_schemes()))}"
        )
    try:
        return ObjectStoragePath(value)
    except Exception as err:  # fsspec raises many types for an unusable URL
        raise ValueError(f"{field_name}: {value!r} cannot be opened: {err}") from None


def known_schemes() -> set[str]:
    return {name for name in known_implementations if name not in {"http", "https"}} | {"file"}


@contextmanager
def atomic_writer(path: ObjectStoragePath) -> Iterator[IO[bytes]]:
    """Open ``path`` for writing so the object appears only complete, or not at all.

    A local file is written under a hidden temporary name in its own directory and renamed into place
    (a rename within one filesystem is atomic; fsspec's local transactions stage in the system temp dir,
    and moving from there to another filesystem is a copy that readers see half done). Elsewhere fsspec's
    transactional files (``autocommit=False``) are used, in parts of ``WRITE_BLOCK_SIZE``: an S3 multipart
    upload stays invisible until it is completed (``PARTS_IN_FLIGHT`` parts uploading at once,
    :class:`~sora2_provider._writers.S3PartWriter`), a GCS resumable upload until its last chunk, Azure staged
    blocks until the block list is committed (adlfs commits at ``close()``). On any error, the final upload
    and commit included, the temporary data is discarded (the S3 multipart upload aborted, the GCS upload
    session cancelled; Azure keeps uncommitted blocks until the blob's next commit or for 7 days) and the
    file is marked closed so nothing commits it later: nothing is left at ``path``.
    """
    if isinstance(path.fs, LocalFileSystem):
        with _local_atomic_writer(Path(path.path)) as local:
            yield local
        return
    handle = _open_transactional(path)
    try:
        yield handle
        handle.close()  # uploads the last part: may fail too, and then the upload must be aborted as well
        handle.commit()
    except BaseException:
        with suppress(Exception):  # the original error is the one to report
            handle.discard()
        # Nothing may finish this file later: its finaliser (``__del__`` -> ``close()``) would flush what was
        # written, and adlfs commits its staged blocks on close whatever ``autocommit`` says (a partial blob at
        # ``path``).
        handle.closed = True
        raise
    finally:
        _forget(path.fs, handle)


def _forget(fs: Any, handle: Any) -> None:
    """Take ``handle`` off the queue where fsspec keeps every ``autocommit=False`` file of a filesystem (the
    cached one, for the whole process): a later ``with fs.transaction:`` would commit or discard it again, and
    its buffer would never be freed."""
    files = getattr(getattr(fs, "_transaction", None), "files", None)
    with suppress(AttributeError, ValueError):  # not an fsspec queue, or the file is not (or no longer) on it
        files.remove(handle)  # type: ignore[union-attr]


def _open_transactional(path: ObjectStoragePath) -> Any:
    """A file whose data stays invisible until its ``commit()`` (``discard()`` drops it): for S3 our writer with
    parts in flight, elsewhere fsspec's transactional file."""
    if _is_s3(path.fs):
        return S3PartWriter(path.fs, path.path, part_size=WRITE_BLOCK_SIZE, in_flight=PARTS_IN_FLIGHT)
    return path.fs.open(path.path, "wb", autocommit=False, block_size=WRITE_BLOCK_SIZE)


def _is_s3(fs: Any) -> bool:
    """Whether ``fs`` is s3fs's filesystem (or a subclass), without importing s3fs for other stores."""
    return any(cls.__module__.split(".")[0] == "s3fs" and cls.__name__ == "S3FileSystem" for cls in type(fs).__mro__)


@contextmanager
def _local_atomic_writer(target: Path) -> Iterator[IO[bytes]]:
    """Stage in ``.<name>.<random>.part`` beside ``target``, then rename it over ``target``.

    The staged file starts write-back while it is written (:class:`~sora2_provider._writers.WriteBackFile`), so
    the fsync before the rename has little left to flush.
    """
    fd, staged = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with WriteBackFile(os.fdopen(fd, "wb", buffering=0)) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(staged, 0o666 & ~get_umask())
        os.replace(staged, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(staged)
        raise


def copy_atomically(
    src: ObjectStoragePath, dst: ObjectStoragePath, expected_sha256: str | None = None
) -> tuple[int, str]:
    """Copy ``src`` to ``dst`` (any two stores) through :func:`atomic_writer`; return the size and sha256 copied.

    ``dst``'s folder is created when missing. The bytes stream through in ``READ_CHUNK`` pieces (memory stays
    bounded). A copy cut short (a read or write error, or ``expected_sha256`` not matching what was read, e.g. a
    source replaced since it was checked) raises and leaves nothing at ``dst``: no partial object, no staged file.
    An object already at ``dst`` is replaced only by a complete copy.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with src.open("rb") as source, atomic_writer(dst) as target:
        while chunk := source.read(READ_CHUNK):
            digest.update(chunk)
            target.write(chunk)
            size += len(chunk)
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise ValueError(
                f"{src} holds {size} bytes with sha256 {digest.hexdigest()}, not the expected {expected_sha256}: "
                f"nothing was written to {dst}"
            )
    return size, digest.hexdigest()


def missing_bucket(path: ObjectStoragePath) -> str | None:
    """The bucket (container) of an object-store ``path`` when it does not exist, else None. Checked before anything
    is paid: a write would fail only after the job (and s3fs's ``mkdir`` would create the bucket)."""
    # universal-pathlib 0.2 (Airflow 2.11 to 3.1) keeps the connection id in ``bucket``: "aws_default@media".
    bucket = getattr(path, "bucket", "").rpartition("@")[2]
    if not bucket or isinstance(path.fs, LocalFileSystem) or path.fs.exists(bucket):
        return None
    return bucket


def inspect_video(path: ObjectStoragePath) -> tuple[int, str] | None:
    """Size and sha256 of a stored MP4, or None when there is no complete MP4 at ``path``."""
    try:
        with path.open("rb") as handle:
            head = handle.read(READ_CHUNK)
            if head[4:8] != MP4_SIGNATURE:
                return None
            digest = hashlib.sha256(head)
            size = len(head)
            while chunk := handle.read(READ_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return None
    return size, digest.hexdigest()
