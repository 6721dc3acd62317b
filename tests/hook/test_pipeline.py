"""The download pipeline (hooks/_video_stream.py) and the writers behind ``atomic_writer`` (_writers.py): hashing and
writing in threads of their own, errors raised in the caller, bounded queues, resumes and atomicity kept.

No sleeps and no timings: threads are synchronised with events, and every wait has a generous safety timeout.
"""

from __future__ import annotations

import errno
import hashlib
import io
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sora2_provider.hooks._video_stream import BoundedQueue, ChunkPipeline, Stage
from sora2_provider.hooks.sora2 import Sora2Hook
from tests.hook.support import HOOK_KEY, TIME_SCALE
from tests.hook.test_hook import completed_job

MiB = 1024 * 1024
BUCKET = "sora2-test"
SAFETY = 30.0  # seconds: a wait that takes this long means the test is broken, not slow


def odd_chunks(count: int) -> list[bytes]:
    """Chunks of uneven sizes (1 MiB, odd sizes, a few bytes) and distinct contents."""
    sizes = (MiB, 4099, 1, MiB + 17, 65536)
    return [bytes([n % 251]) * sizes[n % len(sizes)] for n in range(count)]


# --------------------------------------------------------------------------- the pipeline alone


def test_pipeline_writes_and_hashes_every_chunk_in_order() -> None:
    chunks = odd_chunks(37)
    out = io.BytesIO()
    with ChunkPipeline(out.write, bound=2) as pipeline:
        for chunk in chunks:
            pipeline.put(chunk)
        halfway = pipeline.sha256()  # a copy: the hash goes on
        for chunk in chunks:
            pipeline.put(chunk)
    whole = b"".join(chunks) * 2
    assert out.getvalue() == whole
    assert pipeline.sha256().hexdigest() == hashlib.sha256(whole).hexdigest()
    assert halfway.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert not pipeline.writer.is_alive() and not pipeline.hasher.is_alive()


def test_a_queue_never_holds_more_than_its_bound() -> None:
    """The worker holds chunk i until the producer asks for chunk i + bound + 1: by then chunks i+1 .. i+bound
    are queued (the queue is full) and the producer must wait for room; a bound that did not hold shows in
    ``peak``. Deterministic whatever the scheduling."""
    bound, total = 3, 25
    asked = [threading.Event() for _ in range(total + 1)]
    handled: list[int] = []

    def produce() -> Iterator[bytes]:
        for number in range(total):
            asked[number].set()
            yield bytes([number]) * 1024
        asked[total].set()

    def hold_until_queue_is_full(chunk: bytes) -> None:
        assert asked[min(chunk[0] + bound + 1, total)].wait(SAFETY)
        handled.append(chunk[0])

    stage = Stage("test-stage", hold_until_queue_is_full, bound)
    stage.start()
    for chunk in produce():
        stage.put(chunk)
    stage.drain()
    stage.stop()
    assert handled == list(range(total))
    assert stage.queue.peak == bound


def test_a_pipeline_queue_must_be_bounded() -> None:
    with pytest.raises(ValueError, match="bounded"):
        BoundedQueue(0)


def test_a_writer_error_is_raised_in_the_caller_as_it_was_raised() -> None:
    raised: list[OSError] = []

    def write(chunk: bytes) -> None:
        if chunk[0] == 3:
            raised.append(OSError(errno.ENOSPC, "No space left on device"))
            raise raised[-1]

    with pytest.raises(OSError) as info, ChunkPipeline(write) as pipeline:
        for chunk in odd_chunks(40):  # a failed worker keeps emptying its queue: the producer never blocks
            pipeline.put(chunk)
    assert info.value is raised[0] and info.value.errno == errno.ENOSPC
    assert not pipeline.writer.is_alive() and not pipeline.hasher.is_alive()


def test_a_hashing_error_is_raised_in_the_caller() -> None:
    pipeline = ChunkPipeline(io.BytesIO().write)
    failure = RuntimeError("the hash broke")

    def update(chunk: bytes) -> None:
        raise failure

    pipeline.hasher.work = update
    with pytest.raises(RuntimeError) as info, pipeline:
        for chunk in odd_chunks(10):
            pipeline.put(chunk)
    assert info.value is failure


def test_an_error_in_the_caller_stops_both_threads_and_drops_what_is_queued() -> None:
    release, written = threading.Event(), []

    def write(chunk: bytes) -> None:
        assert release.wait(SAFETY)
        written.append(chunk)

    pipeline = ChunkPipeline(write, bound=2)
    with pytest.raises(KeyError), pipeline:
        for chunk in odd_chunks(3):  # one in the writer's hands, two queued
            pipeline.put(chunk)
        release.set()
        raise KeyError("the network broke")
    assert not pipeline.writer.is_alive() and not pipeline.hasher.is_alive()
    assert len(written) <= 3


# --------------------------------------------------------------------------- through the hook


@pytest.fixture
def big_emulator() -> Iterator[Any]:
    """An emulator whose MP4s are padded to 20 MiB: several S3 parts, many chunks."""
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=TIME_SCALE, api_keys={HOOK_KEY: 10.0}, pad_output_to=20 * MiB) as emulator:
        yield emulator


@pytest.fixture
def video_url(big_emulator: Any, make_hook: Callable[..., Sora2Hook]) -> tuple[Sora2Hook, str]:
    hook = make_hook(host=big_emulator.url)
    url = hook.get_result(completed_job(hook)).output_url
    assert url
    return hook, url


def _s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _download_atomically(hook: Sora2Hook, url: str, uri: str) -> Any:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from sora2_provider.storage import atomic_writer

    with atomic_writer(ObjectStoragePath(uri)) as handle:
        return hook.download(url, handle)


def test_hash_is_the_stored_file_s_sha256_for_a_multi_chunk_body(
    video_url: tuple[Sora2Hook, str], tmp_path: Path
) -> None:
    hook, url = video_url
    result = _download_atomically(hook, url, f"file://{tmp_path}/video.mp4")
    data = (tmp_path / "video.mp4").read_bytes()
    assert result.bytes == len(data) == 20 * MiB
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["video.mp4"]


def test_a_cut_mid_stream_resumes_into_s3_with_parts_in_flight(
    video_url: tuple[Sora2Hook, str], big_emulator: Any, aws_conn: str
) -> None:
    hook, url = video_url
    big_emulator.add_fault("download", "truncate", after_bytes=9 * MiB + 4321)  # after the first 8 MiB part
    result = _download_atomically(hook, url, f"s3://aws_default@{BUCKET}/pipeline/cut.mp4")
    s3 = _s3_client(aws_conn)
    data = s3.get_object(Bucket=BUCKET, Key="pipeline/cut.mp4")["Body"].read()
    assert result.bytes == len(data) == 20 * MiB and result.sha256 == hashlib.sha256(data).hexdigest()
    downloads = [e["status"] for e in big_emulator.request_log if e["endpoint"] == "download"]
    assert downloads == [200, 206]
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix="pipeline/").get("Uploads")


def test_a_disk_error_in_the_writer_thread_surfaces_and_leaves_nothing(
    video_url: tuple[Sora2Hook, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sora2_provider import _writers

    original = _writers.WriteBackFile.write

    def fill_up(self: Any, data: Any) -> int:
        if self.tell() >= 3 * MiB:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data)

    monkeypatch.setattr(_writers.WriteBackFile, "write", fill_up)
    hook, url = video_url
    with pytest.raises(OSError, match="No space left on device") as info:
        _download_atomically(hook, url, f"file://{tmp_path}/video.mp4")
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_a_hashing_error_surfaces_from_download_and_leaves_nothing(
    video_url: tuple[Sora2Hook, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from sora2_provider.hooks import _video_stream

    class BrokenSha:
        def update(self, chunk: bytes) -> None:
            raise MemoryError("no room to hash")

    monkeypatch.setattr(_video_stream, "hashlib", SimpleNamespace(sha256=BrokenSha))
    hook, url = video_url
    with pytest.raises(MemoryError, match="no room to hash"):
        _download_atomically(hook, url, f"file://{tmp_path}/video.mp4")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_s3_part_surfaces_and_leaves_no_object_and_no_upload(
    video_url: tuple[Sora2Hook, str], aws_conn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3fs import S3FileSystem

    original = S3FileSystem._call_s3
    failure = OSError(errno.EIO, "injected: part 2 refused")

    async def refuse_part_2(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if method == "upload_part" and kwargs.get("PartNumber") == 2:
            raise failure
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(S3FileSystem, "_call_s3", refuse_part_2)
    hook, url = video_url
    with pytest.raises(OSError) as info:
        _download_atomically(hook, url, f"s3://aws_default@{BUCKET}/pipeline/refused.mp4")
    assert info.value is failure
    s3 = _s3_client(aws_conn)
    assert not s3.list_objects_v2(Bucket=BUCKET, Prefix="pipeline/refused").get("Contents")
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix="pipeline/").get("Uploads")


@pytest.mark.parametrize("size", [0, 1000, 8 * MiB, 8 * MiB + 1])
def test_s3_part_writer_stores_any_size_whole(aws_conn: str, size: int) -> None:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from sora2_provider.storage import atomic_writer

    payload = hashlib.sha256(str(size).encode()).digest() * (size // 32) + b"x" * (size % 32)
    key = f"pipeline/sized-{size}.bin"
    with atomic_writer(ObjectStoragePath(f"s3://aws_default@{BUCKET}/{key}")) as handle:
        for start in range(0, size, MiB):
            handle.write(payload[start : start + MiB])
    s3 = _s3_client(aws_conn)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == payload
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix="pipeline/").get("Uploads")


@pytest.mark.parametrize(
    ("calculation", "checksum"), [("when_supported", "COMPOSITE"), ("when_required", "FULL_OBJECT")]
)
def test_s3_multipart_upload_declares_the_crc32_botocore_computes_unless_told_not_to(
    s3_server: str, calculation: str, checksum: str
) -> None:
    """As the AWS SDK's transfer manager does, the parts' CRC32 is declared: S3 checks each part and keeps a
    composite checksum (else it computes a full-object CRC64NVME itself). A client configured to send checksums
    only where required (an S3 API without flexible checksums) declares none."""
    from s3fs import S3FileSystem

    from sora2_provider._writers import S3PartWriter

    fs = S3FileSystem(
        key="testing", secret="testing", endpoint_url=s3_server, client_kwargs={"region_name": "us-east-1"},
        config_kwargs={"request_checksum_calculation": calculation}, skip_instance_cache=True,
    )
    payload = b"".join(odd_chunks(40))  # 17 MiB: four parts of 5 MiB
    key = f"pipeline/checksum-{calculation}.bin"
    writer = S3PartWriter(fs, f"{BUCKET}/{key}", part_size=5 * MiB, in_flight=2)
    writer.write(payload)
    writer.commit()
    s3 = _s3_client(s3_server)
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == payload
    attributes = s3.get_object_attributes(Bucket=BUCKET, Key=key, ObjectAttributes=["Checksum"])
    assert attributes["Checksum"]["ChecksumType"] == checksum, attributes
    assert ("ChecksumCRC32" in attributes["Checksum"]) == (checksum == "COMPOSITE"), attributes
