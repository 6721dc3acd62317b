"""``copy_atomically``: a whole copy (file and S3, several S3 parts), or nothing at the destination."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import boto3
import pytest

from sora2_provider.storage import READ_CHUNK, WRITE_BLOCK_SIZE, copy_atomically

BUCKET = "sora2-test"
#: More than one S3 part (8 MiB) and an uneven tail: the copy crosses every boundary the writers have.
PAYLOAD = hashlib.sha256(b"sora2").digest() * ((WRITE_BLOCK_SIZE + 3 * READ_CHUNK) // 32) + b"tail"


def storage_path(uri: str) -> Any:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    return ObjectStoragePath(uri)


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(params=["file", "s3"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """A destination URI under a folder that does not exist yet, and a callable listing everything under that
    folder: objects and staged files, and on S3 unfinished multipart uploads too."""
    if request.param == "file":
        root = tmp_path / "published"
        return (root / "2025-06-01" / "video.mp4").as_uri(), lambda: sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
        )
    s3 = s3_client(request.getfixturevalue("aws_conn"))
    prefix = f"published/{request.node.name}/"

    def listed() -> list[str]:
        uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
        objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
        return sorted([o["Key"][len(prefix) :] for o in objects] + [f"upload:{u['Key']}" for u in uploads])

    return f"s3://aws_default@{BUCKET}/{prefix}2025-06-01/video.mp4", listed


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "review" / "video.mp4"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def read_back(uri: str) -> bytes:
    with storage_path(uri).open("rb") as handle:
        return handle.read()


def test_copies_every_byte_and_returns_size_and_sha256(source: Path, destination: tuple[str, Any]) -> None:
    uri, listed = destination
    expected = hashlib.sha256(PAYLOAD).hexdigest()
    result = copy_atomically(storage_path(source.as_uri()), storage_path(uri), expected_sha256=expected)
    assert result == (len(PAYLOAD), expected)
    assert read_back(uri) == PAYLOAD
    assert listed() == ["2025-06-01/video.mp4"]


class CutReader:
    """A source whose connection drops after ``cut_after`` bytes, as a store's stream can."""

    def __init__(self, data: bytes, cut_after: int) -> None:
        self.data, self.cut_after, self.offset = data, cut_after, 0

    def read(self, size: int) -> bytes:
        if self.offset >= self.cut_after:
            raise ConnectionResetError("connection reset by peer")
        chunk = self.data[self.offset : min(self.offset + size, self.cut_after)]
        self.offset += len(chunk)
        return chunk

    def __enter__(self) -> CutReader:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class CutSource:
    def __init__(self, data: bytes, cut_after: int) -> None:
        self.data, self.cut_after = data, cut_after

    def open(self, mode: str) -> CutReader:
        assert mode == "rb"
        return CutReader(self.data, self.cut_after)

    def __str__(self) -> str:
        return "cut://source"


def test_a_cut_copy_leaves_nothing_behind(destination: tuple[str, Any]) -> None:
    """Cut after the first S3 part went up (and after several local writes): no object, no staged file or upload."""
    uri, listed = destination
    source: Any = CutSource(PAYLOAD, cut_after=WRITE_BLOCK_SIZE + READ_CHUNK + 7)
    with pytest.raises(ConnectionResetError):
        copy_atomically(source, storage_path(uri))
    assert listed() == []


def test_a_copy_not_matching_the_expected_sha256_leaves_nothing(source: Path, destination: tuple[str, Any]) -> None:
    """The reviewed video was replaced since: its copy is refused whole, and an older copy stays as it was."""
    uri, listed = destination
    copy_atomically(storage_path(source.as_uri()), storage_path(uri))
    before = listed()
    source.write_bytes(PAYLOAD[:-1] + b"X")
    with pytest.raises(ValueError, match="not the expected"):
        copy_atomically(storage_path(source.as_uri()), storage_path(uri), hashlib.sha256(PAYLOAD).hexdigest())
    assert read_back(uri) == PAYLOAD
    assert listed() == before
