"""The official ``segmind`` SDK, unchanged, against the emulator."""

from __future__ import annotations

import importlib
import io
from pathlib import Path
from typing import Any

import av
import pytest
import requests
from segmind import SegmindClient
from segmind.exceptions import SegmindError
from segmind.files import Files
from segmind.v2 import InferenceFailed

from sora2_provider.testing.emulator import Sora2Emulator
from sora2_provider.testing.video import is_valid_mp4_prefix


@pytest.fixture
def client(emu: Sora2Emulator, api: Any, monkeypatch: pytest.MonkeyPatch) -> SegmindClient:
    """An SDK client on the emulator, with the history and upload hosts routed to it too."""
    generations = importlib.import_module("segmind.generations")  # ``segmind.generations`` is an object
    monkeypatch.setattr(generations, "REQUEST_HISTORY_URL", emu.url + "/inference-request/request-history")
    monkeypatch.setattr(Files, "STORAGE_BASE_URL", emu.url)
    return SegmindClient(api_key=api.api_key, base_url=emu.url + "/v1")


def dimensions(data: bytes) -> tuple[int, int]:
    with av.open(io.BytesIO(data)) as container:
        context = container.streams.video[0].codec_context
        return context.width, context.height


def test_run_sync_returns_mp4_bytes(client: SegmindClient, emu: Sora2Emulator) -> None:
    response = client.run_sync("sora-2", prompt="a paper boat on a river", duration=4, size="1280x720")
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert is_valid_mp4_prefix(response.content) and dimensions(response.content) == (1280, 720)
    assert response.headers["x-request-id"] in emu.charges()


def test_submit_async_wait_reaches_completed(client: SegmindClient, emu: Sora2Emulator) -> None:
    job = client.submit_async("sora-2-pro", prompt="city lights", duration=4, size="1024x1792")
    assert job.status()["status"] in ("QUEUED", "PROCESSING")
    result = job.wait(timeout=20, interval=0.02)
    assert result["status"] == "COMPLETED" and result["request_id"] == job.request_id
    video = requests.get(result["output"], timeout=30).content
    assert is_valid_mp4_prefix(video) and dimensions(video) == (1024, 1792)
    assert emu.charges() == {job.request_id: 2.0}


def test_a_failed_job_raises_inference_failed(client: SegmindClient, emu: Sora2Emulator) -> None:
    emu.add_fault("submit_v2", "fail_job", message="prompt rejected by moderation")
    job = client.submit_async("sora-2", prompt="x", duration=4)
    with pytest.raises(InferenceFailed) as failure:
        job.wait(timeout=20, interval=0.02)
    assert failure.value.detail == "prompt rejected by moderation"
    assert job.result()["status"] == "FAILED"
    assert emu.charges() == {}


def test_generations_get_and_history(client: SegmindClient) -> None:
    job = client.submit_async("sora-2", prompt="snowfall", duration="8")
    job.wait(timeout=20, interval=0.02)
    row = client.generations.get(job.request_id)
    assert row["request_id"] == job.request_id and row["model_status"] == "COMPLETED"
    assert row["request_body"] == {"prompt": "snowfall", "duration": "8"} and row["credits_deduction"] == 0.8
    page = client.generations.history(per_page=10, model_name="sora-2", status="COMPLETED")
    assert [r["request_id"] for r in page["data"]] == [job.request_id]
    with pytest.raises(SegmindError) as missing:
        client.generations.get("not-a-request")
    assert missing.value.status == 404


def test_files_upload_gives_a_url_the_emulator_serves(client: SegmindClient, tmp_path: Path) -> None:
    image = tmp_path / "reference.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    [url] = client.files.upload(image)["file_urls"]
    assert requests.get(url, timeout=5).content == image.read_bytes()
    job = client.submit_async("sora-2", prompt="animate this", duration=4, input_reference=url)
    assert job.wait(timeout=20, interval=0.02)["status"] == "COMPLETED"


def test_a_bad_key_fails_with_401(emu: Sora2Emulator) -> None:
    client = SegmindClient(api_key="SG_0000000000000000", base_url=emu.url + "/v1")
    for call in (lambda: client.run_sync("sora-2", prompt="x"), lambda: client.submit_async("sora-2", prompt="x")):
        with pytest.raises(SegmindError) as refused:
            call()
        assert (refused.value.status, refused.value.detail) == (401, "Invalid API key")
    assert emu.ledger == []


def test_too_little_balance_fails_with_406(client: SegmindClient, emu: Sora2Emulator, api: Any) -> None:
    emu.set_balance(api.api_key, 0.2)
    for call in (lambda: client.run_sync("sora-2", prompt="x", duration=4),
                 lambda: client.submit_async("sora-2", prompt="x", duration=4)):
        with pytest.raises(SegmindError) as refused:
            call()
        assert refused.value.status == 406
        assert refused.value.detail == "Insufficient credits: balance 0.20, required 0.40"
    assert emu.ledger == []
