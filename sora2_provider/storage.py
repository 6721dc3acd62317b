"""Object-storage helpers: parse an output location and write to it so no reader sees a partial object."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

MP4_SIGNATURE = b"ftyp"
READ_CHUNK = 1024 * 1024


def to_object_storage_path(value: Any, field_name: str = "output_path") -> ObjectStoragePath:
    """Turn a ``scheme://...`` string (or an ObjectStoragePath) into an ObjectStoragePath.

    A bare path has no scheme and is refused: say ``file:///abs/path.mp4`` or ``s3://conn@bucket/key.mp4``.
    """
    from airflow.sdk import ObjectStoragePath

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
    from fsspec.registry import known_implementations

    return {name for name in known_implementations if name not in {"http", "https"}} | {"file"}


@contextmanager
def atomic_writer(path: ObjectStoragePath) -> Iterator[IO[bytes]]:
    """Open ``path`` for writing so the object appears only complete, or not at all.

    Uses fsspec's transactional files (``autocommit=False``): a local file is written under a temporary
    name and moved into place on commit; an S3 multipart upload stays invisible until it is completed.
    On any error the temporary data is discarded and nothing is left at ``path``.
    """
    handle = path.fs.open(path.path, "wb", autocommit=False)
    try:
        yield handle
    except BaseException:
        handle.discard()
        raise
    handle.close()
    handle.commit()


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
