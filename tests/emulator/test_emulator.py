"""The Segmind emulator over real HTTP: every endpoint, status transition, error code and fault."""

from __future__ import annotations

import io
import itertools
import json
import signal
import struct
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import av
import pytest
import requests

from sora2_provider.models import MODELS
from sora2_provider.testing.emulator import Sora2Emulator
from sora2_provider.testing.video import free_box_header, is_valid_mp4_prefix, make_mp4, mp4_file, pad_mp4

NOT_JSON = "not json"


def probe(data: bytes | str) -> tuple[int, int, float, int]:
    """Width, height, duration (s) and decoded frame count of an MP4 given as bytes or a path."""
    with av.open(io.BytesIO(data) if isinstance(data, bytes) else data) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert container.duration is not None
        return stream.codec_context.width, stream.codec_context.height, container.duration / 1e6, frames


def error_of(response: requests.Response) -> str:
    return response.json()["error"]


# -- video ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height", "seconds"), [(720, 1280, 4), (1280, 720, 8), (1024, 1792, 12)])
def test_make_mp4_has_the_requested_size_and_duration(width: int, height: int, seconds: int) -> None:
    data = make_mp4(width, height, seconds)
    assert is_valid_mp4_prefix(data)
    decoded_width, decoded_height, duration, frames = probe(data)
    assert (decoded_width, decoded_height) == (width, height)
    assert duration == pytest.approx(seconds, abs=0.01)
    assert frames > 0
    assert len(data) < 1_000_000


def test_the_largest_video_encodes_in_a_few_seconds_and_is_cached(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SORA2_EMULATOR_CACHE", str(tmp_path))
    started = time.monotonic()
    path = mp4_file(1792, 1024, 12)
    assert time.monotonic() - started < 8
    assert path.parent == tmp_path and path.stat().st_size > 0
    mtime = path.stat().st_mtime_ns
    assert mp4_file(1792, 1024, 12) == path and path.stat().st_mtime_ns == mtime
    assert probe(str(path))[:3] == (1792, 1024, pytest.approx(12, abs=0.01))


def test_pad_mp4_yields_an_exact_size_file_that_still_decodes(tmp_path: Path) -> None:
    data = make_mp4(720, 1280, 4)
    total = len(data) + 2_000_000
    padded = b"".join(pad_mp4(data, total, chunk_size=65536))
    assert len(padded) == total and padded.startswith(data)
    assert padded[len(data) : len(data) + 8] == struct.pack(">I4s", total - len(data), b"free")
    assert probe(padded)[:3] == (720, 1280, pytest.approx(4, abs=0.01))
    assert b"".join(pad_mp4(data, len(data))) == data


def test_pad_mp4_ranges_concatenate_to_the_whole_file() -> None:
    data = make_mp4(720, 1280, 4)
    total = len(data) + 1000
    whole = b"".join(pad_mp4(data, total))
    cuts = [0, 5, len(data) - 3, len(data) + 4, len(data) + 9, total]
    parts = [b"".join(pad_mp4(data, total, start, stop, chunk_size=7)) for start, stop in itertools.pairwise(cuts)]
    assert b"".join(parts) == whole


def test_a_padding_over_4_gib_uses_a_64_bit_free_box_and_decodes(tmp_path: Path) -> None:
    path = mp4_file(720, 1280, 4)
    real, total = path.stat().st_size, 5 * 2**30
    assert free_box_header(total - real) == struct.pack(">I4sQ", 1, b"free", total - real)
    sparse = tmp_path / "big.mp4"
    with sparse.open("wb") as handle:  # the real bytes and the box header, then a sparse hole of zeros
        for chunk in pad_mp4(path, total, stop=real + 16):
            handle.write(chunk)
        handle.truncate(total)
    assert sparse.stat().st_size == total
    assert probe(str(sparse))[:3] == (720, 1280, pytest.approx(4, abs=0.01))


def test_padding_refuses_sizes_that_cannot_hold_a_box() -> None:
    data = make_mp4(720, 1280, 4)
    with pytest.raises(ValueError):
        list(pad_mp4(data, len(data) - 1))
    with pytest.raises(ValueError):
        list(pad_mp4(data, len(data) + 7))
    assert not is_valid_mp4_prefix(b"\x00\x00\x00\x08moov") and not is_valid_mp4_prefix(b"ftyp")


# -- lifecycle of the server ----------------------------------------------------------------------------


def test_starts_on_a_free_port_and_stops() -> None:
    emulator = Sora2Emulator()
    with emulator:
        assert emulator.url.startswith("http://127.0.0.1:") and not emulator.url.endswith("/")
        assert requests.get(emulator.url + "/v1/get-user-credits", headers={"x-api-key": "SG_emulator"},
                            timeout=5).json() == {"credits": 100.0, "free-credits": 0.0}
    with pytest.raises(requests.ConnectionError):
        requests.get(emulator.url + "/v1/get-user-credits", timeout=5)


def test_the_command_line_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "sora2_provider.testing.emulator", "--port", "0", "--time-scale", "0.002",
               "--api-key", "SG_cli_key_1", "--api-key", "SG_cli_key_2", "--balance", "7.5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        for key in ("SG_cli_key_1", "SG_cli_key_2"):
            answer = requests.get(url + "/v1/get-user-credits", headers={"x-api-key": key}, timeout=5)
            assert answer.json() == {"credits": 7.5, "free-credits": 0.0}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# -- v2: submit, status transitions, result, download -----------------------------------------------------


def test_a_v2_job_goes_queued_processing_completed_and_serves_a_valid_mp4(api: Any, emu: Sora2Emulator) -> None:
    submitted = api.submit("sora-2-pro", duration=4, size="1792x1024")
    request_id = submitted["request_id"]
    assert submitted["status"] == "QUEUED"
    assert submitted["status_url"] == f"{emu.url}/v2/requests/{request_id}/status"
    assert submitted["response_url"] == f"{emu.url}/v2/requests/{request_id}"
    assert submitted["poll_url"].startswith(emu.url)
    assert api.poll(request_id) == ["QUEUED", "PROCESSING", "COMPLETED"]

    status = api.get(submitted["status_url"]).json()
    assert status["request_id"] == request_id and status["metrics"]["cost"] == 2.0
    result = api.get(submitted["response_url"])
    assert result.status_code == 200
    body = result.json()
    assert body["status"] == "COMPLETED" and body["output"] == f"{emu.url}/outputs/{request_id}.mp4"
    assert body["metrics"]["remaining_credits"] == 98.0 and body["metrics"]["total_time"] > 0
    assert body["video"]["content_type"] == "video/mp4" and body["video"]["file_name"] == f"{request_id}.mp4"

    download = requests.get(body["output"], timeout=30)  # no key needed
    assert download.status_code == 200 and download.headers["content-type"] == "video/mp4"
    assert len(download.content) == body["video"]["file_size"] == int(download.headers["content-length"])
    assert is_valid_mp4_prefix(download.content)
    assert probe(download.content)[:3] == (1792, 1024, pytest.approx(4, abs=0.01))


def test_status_and_result_before_completion_answer_the_current_status(api: Any) -> None:
    submitted = api.submit("sora-2-pro")
    result = api.get(submitted["response_url"])
    assert result.status_code == 200
    assert result.json()["status"] in ("QUEUED", "PROCESSING") and "output" not in result.json()
    assert requests.get(submitted["response_url"].replace("/v2/requests/", "/outputs/") + ".mp4",
                        timeout=5).status_code == 404


def test_a_failed_job_answers_422_on_status_and_result_and_is_not_charged(api: Any, emu: Sora2Emulator) -> None:
    emu.add_fault("submit_v2", "fail_job", message="content policy violation")
    request_id = api.submit()["request_id"]
    assert api.poll(request_id)[-1] == "FAILED"
    for path in (f"/v2/requests/{request_id}/status", f"/v2/requests/{request_id}"):
        answer = api.get(path)
        assert answer.status_code == 422
        body = answer.json()
        assert body["status"] == "FAILED" and body["error"] == "content policy violation"
        assert "metrics" in body
    assert emu.get_balance(api.api_key) == {"credits": 100.0, "free_credits": 0.0}
    assert [(e["status"], e["charged"], e["error"]) for e in emu.ledger] == [
        ("FAILED", 0.0, "content policy violation")
    ]
    assert requests.get(f"{emu.url}/outputs/{request_id}.mp4", timeout=5).status_code == 404


def test_unknown_and_other_accounts_request_ids_answer_404(api: Any, other_api: Any) -> None:
    unknown = api.get("/v2/requests/0000/status")
    assert unknown.status_code == 404 and error_of(unknown) == "Request 0000 not found"
    request_id = api.submit()["request_id"]
    assert other_api.get(f"/v2/requests/{request_id}/status").status_code == 404
    assert other_api.get(f"/v2/requests/{request_id}").status_code == 404


def test_an_expired_record_answers_404_but_history_and_output_survive(api: Any, emu: Sora2Emulator) -> None:
    request_id = api.submit()["request_id"]
    api.poll(request_id)
    emu.expire(request_id)
    for path in (f"/v2/requests/{request_id}/status", f"/v2/requests/{request_id}"):
        answer = api.get(path)
        assert answer.status_code == 404 and error_of(answer) == f"Request {request_id} not found"
    row = api.get(f"/inference-request/request-history/{request_id}").json()
    assert row["model_status"] == "COMPLETED" and row["generation_url"].endswith(f"/outputs/{request_id}.mp4")
    assert requests.get(row["generation_url"], timeout=10).status_code == 200
    with pytest.raises(KeyError):
        emu.expire("no-such-id")


def test_records_expire_after_the_scaled_hour(make_emulator: Any, api_for: Any, wait_for: Any) -> None:
    emulator = make_emulator(record_ttl_seconds=100)  # 100 s * 0.002 = 0.2 s
    api = api_for(emulator)
    request_id = api.submit()["request_id"]
    assert api.get(f"/v2/requests/{request_id}/status").status_code == 200
    wait_for(lambda: api.get(f"/v2/requests/{request_id}/status").status_code == 404, what="expiry")
    assert api.get(f"/inference-request/request-history/{request_id}").status_code == 200


# -- v1: sync -------------------------------------------------------------------------------------------


def test_v1_blocks_for_the_generation_then_streams_a_billed_mp4(api: Any, emu: Sora2Emulator) -> None:
    started = time.monotonic()
    answer = api.post("/v1/sora-2", json={"prompt": "a red fox", "duration": 8, "size": "1280x720"})
    elapsed = time.monotonic() - started
    assert answer.status_code == 200, answer.text
    assert elapsed >= MODELS["sora-2"].typical_generation_seconds * 0.002
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["x-cost"] == "0.8" and answer.headers["x-remaining-credits"] == "99.2"
    assert float(answer.headers["x-generation-time"]) > 0
    assert probe(answer.content)[:3] == (1280, 720, pytest.approx(8, abs=0.01))
    [entry] = emu.ledger
    assert entry["request_id"] == answer.headers["x-request-id"] and entry["api"] == "v1"
    assert entry["status"] == "COMPLETED" and entry["charged"] == 0.8
    assert api.get(f"/v2/requests/{entry['request_id']}/status").status_code == 404  # no v2 record for v1


def test_v1_answers_422_for_invalid_parameters_and_for_a_failed_generation(api: Any, emu: Sora2Emulator) -> None:
    for body in ({"duration": 4}, {"prompt": "x", "duration": 5}, {"prompt": "x", "size": "1792x1024"}):
        answer = api.post("/v1/sora-2", json=body)
        assert answer.status_code == 422 and error_of(answer)
    emu.add_fault("submit_v1", "fail_job", message="render crashed")
    answer = api.post("/v1/sora-2", json={"prompt": "x", "duration": 4})
    assert answer.status_code == 422 and error_of(answer) == "render crashed"
    assert [(e["status"], e["charged"]) for e in emu.ledger] == [("FAILED", 0.0)]


# -- credits, uploads, history ---------------------------------------------------------------------------


def test_credits_answer_the_balance_and_404_without_a_balance_record(api: Any, emu: Sora2Emulator) -> None:
    emu.set_balance(api.api_key, 12.5, free_credits=2.0)
    assert api.get("/v1/get-user-credits").json() == {"credits": 12.5, "free-credits": 2.0}
    emu.set_balance(api.api_key, None)
    answer = api.get("/v1/get-user-credits")
    assert answer.status_code == 404 and error_of(answer) == "No credits found for the user"


def test_free_credits_are_spent_first(api: Any, emu: Sora2Emulator) -> None:
    emu.set_balance(api.api_key, 10.0, free_credits=0.3)
    api.poll(api.submit()["request_id"])
    assert emu.get_balance(api.api_key) == {"credits": pytest.approx(9.9), "free_credits": 0.0}


def test_upload_returns_urls_the_emulator_serves(api: Any, emu: Sora2Emulator) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(50))
    import base64

    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    answer = api.post("/upload-asset", json={"data_urls": [data_url, data_url]})
    assert answer.status_code == 200
    urls = answer.json()["file_urls"]
    assert len(urls) == 2 and len(set(urls)) == 2 and all(u.startswith(emu.url + "/assets/") for u in urls)
    served = requests.get(urls[0], timeout=5)
    assert served.content == png and served.headers["content-type"] == "image/png"
    assert requests.get(emu.url + "/assets/missing.png", timeout=5).status_code == 404
    for bad in ({"data_urls": ["http://example.com/a.png"]}, {"data_urls": []}, {}):
        assert api.post("/upload-asset", json=bad).status_code == 400


def test_history_rows_keep_the_request_body_exactly_as_sent(api: Any, emu: Sora2Emulator) -> None:
    body = {"prompt": "waves", "duration": "8", "size": "720x1280", "extra": [1, 2]}
    request_id = api.submit(**body)["request_id"]
    row = api.get(f"/inference-request/request-history/{request_id}").json()
    assert row["request_body"] == body and row["model_status"] == "PENDING"
    assert row["generation_url"] is None and row["credits_deduction"] == 0.0
    api.poll(request_id)
    row = api.get(f"/inference-request/request-history/{request_id}").json()
    assert row["model_name"] == "sora-2" and row["model_status"] == "COMPLETED" and row["error"] is None
    assert row["credits_deduction"] == 0.8 and row["latency_ms"] > 0
    assert datetime.fromisoformat(row["created_at"].replace("Z", "+00:00")).tzinfo is not None


def test_history_item_of_another_account_is_404(api: Any, other_api: Any) -> None:
    request_id = api.submit()["request_id"]
    answer = other_api.get(f"/inference-request/request-history/{request_id}")
    assert answer.status_code == 404 and error_of(answer) == f"Request {request_id} not found"


def test_history_filters_sorts_and_paginates(api: Any, other_api: Any, emu: Sora2Emulator) -> None:
    ids = [api.submit(duration=d)["request_id"] for d in (4, 8, 12)]
    emu.add_fault("submit_v2", "fail_job", message="nope")
    failed = api.submit()["request_id"]
    pro = api.submit("sora-2-pro", duration=12)["request_id"]
    other_api.submit()

    def history(**params: Any) -> dict[str, Any]:
        answer = api.get("/inference-request/request-history", params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert history(status="PENDING")["total"] == 5  # nothing has finished yet
    for request_id in [*ids, failed, pro]:
        api.poll(request_id)
    everything = history()
    assert everything["total"] == 5 and everything["page"] == 1 and everything["per_page"] == 20
    assert [r["request_id"] for r in everything["data"]] == [pro, failed, *reversed(ids)]  # newest first
    assert [r["request_id"] for r in history(sort_order="asc")["data"]] == [*ids, failed, pro]
    assert {r["request_id"] for r in history(status="COMPLETED")["data"]} == {*ids, pro}
    assert [(r["request_id"], r["error"]) for r in history(status="FAILED")["data"]] == [(failed, "nope")]
    assert history(status="PENDING")["data"] == []
    assert [r["request_id"] for r in history(model_name="pro")["data"]] == [pro]
    by_cost = history(sort_by="credits_deduction", sort_order="desc", status="COMPLETED")["data"]
    assert [r["credits_deduction"] for r in by_cost] == [3.6, 1.2, 0.8, 0.4]
    pages = [history(page=page, per_page=2) for page in (1, 2, 3)]
    assert [len(p["data"]) for p in pages] == [2, 2, 1] and all(p["total"] == 5 for p in pages)
    assert [r["request_id"] for p in pages for r in p["data"]] == [r["request_id"] for r in everything["data"]]

    today = datetime.now(timezone.utc).date()
    assert history(from_date=str(today - timedelta(days=30)), to_date=str(today + timedelta(days=1)))["total"] == 5
    yesterday = str(today - timedelta(days=1))
    assert history(from_date=str(today - timedelta(days=3)), to_date=yesterday)["total"] == 0


@pytest.mark.parametrize("params", [
    {"per_page": 0}, {"per_page": 101}, {"page": 0}, {"page": "x"}, {"status": "DONE"}, {"sort_by": "cost"},
    {"sort_order": "up"}, {"from_date": "2025-13-01"}, {"from_date": "2025-01-01", "to_date": "2025-03-01"},
    {"from_date": "2025-02-01", "to_date": "2025-01-01"},
])
def test_history_refuses_bad_filters_with_400(api: Any, params: dict[str, Any]) -> None:
    answer = api.get("/inference-request/request-history", params=params)
    assert answer.status_code == 400 and error_of(answer)


# -- errors of the contract table -------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    ({"duration": 4}, "prompt"),
    ({"prompt": "  ", "duration": 4}, "prompt"),
    ({"prompt": "x", "duration": 6}, "duration"),
    ({"prompt": "x", "duration": 4, "size": "1792x1024"}, "size"),
    ({"prompt": "x", "input_reference": "file:///etc/passwd"}, "input_reference"),
])
def test_invalid_parameters_answer_400_naming_the_field(api: Any, emu: Sora2Emulator, body: dict[str, Any],
                                                        field: str) -> None:
    answer = api.post("/v2/sora-2", json=body)
    assert answer.status_code == 400 and error_of(answer).startswith(field)
    assert emu.ledger == []


def test_a_body_that_is_not_a_json_object_answers_400(api: Any) -> None:
    answer = api.post("/v2/sora-2", data="{not json", headers={"content-type": "application/json"})
    assert answer.status_code == 400
    assert api.post("/v2/sora-2", json=["prompt"]).status_code == 400


def test_a_missing_unknown_or_bearer_key_answers_401(api: Any) -> None:
    answers = [
        api.post("/v2/sora-2", api_key=None, json={"prompt": "x"}),
        api.post("/v2/sora-2", api_key="SG_ffffffffffffffff", json={"prompt": "x"}),
        api.post("/v2/sora-2", api_key=None, headers={"authorization": f"Bearer {api.api_key}"}, json={"prompt": "x"}),
        api.get("/v1/get-user-credits", api_key=None),
        api.get("/inference-request/request-history", api_key="nope"),
    ]
    assert [a.status_code for a in answers] == [401] * 5
    assert all(error_of(a) == "Invalid API key" for a in answers)


def test_forbidden_unknown_and_retired_models(api: Any, emu: Sora2Emulator, make_emulator: Any,
                                              api_for: Any) -> None:
    unknown = api.post("/v2/sora-3", json={"prompt": "x"})
    assert unknown.status_code == 404 and "sora-3" in error_of(unknown)
    emu.set_model_state("sora-2-pro", "forbidden")
    assert api.post("/v2/sora-2-pro", json={"prompt": "x"}).status_code == 403
    emu.set_model_state("sora-2", "retired")
    retired = api.post("/v1/sora-2", json={"prompt": "x"})
    assert retired.status_code == 410 and "retired" in error_of(retired)
    other = api_for(make_emulator(retired_models=("sora-1",), forbidden_models=("sora-2",)))
    assert other.post("/v2/sora-1", json={"prompt": "x"}).status_code == 410
    assert other.post("/v2/sora-2", json={"prompt": "x"}).status_code == 403
    assert other.post("/v2/sora-2-pro", json={"prompt": "x", "duration": 4}).status_code == 200
    with pytest.raises(ValueError):
        emu.set_model_state("sora-2", "gone")


def test_a_wrong_method_answers_405_with_an_html_body(api: Any) -> None:
    answer = api.get("/v2/sora-2")
    assert answer.status_code == 405 and answer.headers["content-type"].startswith("text/html")
    with pytest.raises(ValueError):
        answer.json()
    assert api.post("/v2/requests/abc/status", json={}).status_code == 405
    assert api.get("/v1/sora-2").status_code == 405
    unknown = api.get("/no/such/path")
    assert unknown.status_code == 404 and error_of(unknown) == "Not found"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_wrong_content_type_answers_406(api: Any, emu: Sora2Emulator, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    answer = api.post("/v2/sora-2", data=json.dumps({"prompt": "x"}).encode(), headers=headers)
    assert answer.status_code == 406 and "Content-Type" in error_of(answer)
    assert api.post("/v2/sora-2", data=b'{"prompt": "x"}', headers={"content-type": "application/json; charset=utf-8"},
                    ).status_code == 200


def test_too_little_balance_answers_406_naming_balance_and_need(api: Any, emu: Sora2Emulator) -> None:
    emu.set_balance(api.api_key, 0.5)
    answer = api.post("/v2/sora-2", json={"prompt": "x", "duration": 8})
    assert answer.status_code == 406
    assert error_of(answer) == "Insufficient credits: balance 0.50, required 0.80"
    v1 = api.post("/v1/sora-2-pro", json={"prompt": "x", "duration": 12, "size": "1792x1024"})
    assert v1.status_code == 406 and "required 6.00" in error_of(v1)
    assert emu.ledger == [] and emu.get_balance(api.api_key)["credits"] == 0.5
    emu.set_balance(api.api_key, 0.3, free_credits=0.1)
    assert api.post("/v2/sora-2", json={"prompt": "x", "duration": 4}).status_code == 200


def test_the_rate_limit_answers_429_with_the_reset_time_then_recovers(make_emulator: Any, api_for: Any,
                                                                     wait_for: Any) -> None:
    # a minute's window: the four calls fall in one window however slow this machine is
    emulator = make_emulator(rate_limit_rpm=3, rate_limit_window=60.0, api_keys={"SG_a": 10.0, "SG_b": 10.0})
    api, other = api_for(emulator, "SG_a"), api_for(emulator, "SG_b")
    before = datetime.now(timezone.utc)
    assert api.get("/v1/get-user-credits").status_code == 200  # opens the window
    after_first = datetime.now(timezone.utc)
    assert [api.get("/v1/get-user-credits").status_code for _ in range(2)] == [200] * 2
    limited = api.post("/v2/sora-2", json={"prompt": "x"})
    assert limited.status_code == 429 and error_of(limited) == "Rate limit exceeded"
    reset_at = datetime.fromisoformat(limited.headers["x-rate-limit-reset-at-utc"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=59.999) <= reset_at <= after_first + timedelta(seconds=60)
    assert "retry-after" not in limited.headers
    assert other.get("/v1/get-user-credits").status_code == 200  # per key
    emulator.set_rate_window("SG_a", calls=4, ends_in=0.3)  # the spent window ends in 0.3 s instead of a minute
    wait_for(lambda: api.get("/v1/get-user-credits").status_code == 200, timeout=5, what="window reset")


def test_a_rate_window_set_by_the_test_holds_its_calls_and_ends_when_told(make_emulator: Any, api_for: Any) -> None:
    emulator = make_emulator(rate_limit_rpm=3, rate_limit_window=60.0, api_keys={"SG_a": 10.0})
    api = api_for(emulator, "SG_a")
    assert api.get("/v1/get-user-credits").status_code == 200
    emulator.set_rate_window("SG_a", calls=2, ends_in=0.5)
    assert api.get("/v1/get-user-credits").status_code == 200  # the third call of the window
    told = datetime.now(timezone.utc)
    limited = api.get("/v1/get-user-credits")
    reset_at = datetime.fromisoformat(limited.headers["x-rate-limit-reset-at-utc"].replace("Z", "+00:00"))
    assert limited.status_code == 429 and reset_at <= told + timedelta(seconds=0.5)
    with pytest.raises(ValueError, match="ends_in"):
        emulator.set_rate_window("SG_a", calls=3, ends_in=61.0)
    with pytest.raises(ValueError, match="no rate limit"):
        make_emulator().set_rate_window("SG_a", calls=3, ends_in=1.0)


@pytest.mark.parametrize(("status", "html"), [(500, False), (502, True), (503, False), (504, True),
                                              (400, False), (403, False), (410, False), (422, False)])
def test_status_faults_answer_the_contract_shape(api: Any, emu: Sora2Emulator, status: int, html: bool) -> None:
    emu.add_fault("submit_v2", "status", status=status)
    answer = api.post("/v2/sora-2", json={"prompt": "x"})
    assert answer.status_code == status
    if html:
        assert answer.headers["content-type"].startswith("text/html") and str(status) in answer.text
    else:
        assert answer.json()["error"]
    assert emu.ledger == []
    assert api.post("/v2/sora-2", json={"prompt": "x", "duration": 4}).status_code == 200


def test_a_429_fault_carries_the_reset_header_and_a_message_fault_is_json(api: Any, emu: Sora2Emulator) -> None:
    emu.add_fault("status", "status", status=429)
    emu.add_fault("credits", "status", status=502, message="upstream sad")
    request_id = api.submit()["request_id"]
    limited = api.get(f"/v2/requests/{request_id}/status")
    assert limited.status_code == 429 and "x-rate-limit-reset-at-utc" in limited.headers
    gateway = api.get("/v1/get-user-credits")
    assert gateway.status_code == 502 and error_of(gateway) == "upstream sad"


# -- faults -----------------------------------------------------------------------------------------------


def test_faults_hit_the_nth_call_for_times_calls(api: Any, emu: Sora2Emulator) -> None:
    api.get("/v1/get-user-credits")  # calls before the fault do not count
    emu.add_fault("credits", "status", on_call=2, times=2, status=503)
    codes = [api.get("/v1/get-user-credits").status_code for _ in range(5)]
    assert codes == [200, 503, 503, 200, 200]
    with pytest.raises(ValueError):
        emu.add_fault("credits", "truncate", after_bytes=1)
    with pytest.raises(ValueError):
        emu.add_fault("nowhere", "reset")
    with pytest.raises(ValueError):
        emu.add_fault("credits", "status", status=418)


def test_a_reset_drops_the_connection_unanswered(api: Any, emu: Sora2Emulator) -> None:
    emu.add_fault("credits", "reset")
    with pytest.raises(requests.ConnectionError):
        requests.get(emu.url + "/v1/get-user-credits", headers={"x-api-key": api.api_key}, timeout=5)
    assert emu.request_log[-1] == {**emu.request_log[-1], "endpoint": "credits", "status": None, "dropped": True}
    assert api.get("/v1/get-user-credits").status_code == 200


def test_slow_answers_wait_without_blocking_the_server(api: Any, emu: Sora2Emulator) -> None:
    emu.add_fault("credits", "slow", delay=1.5, times=2)
    elapsed: list[float] = []

    def call_slowly() -> None:
        started = time.monotonic()
        answer = requests.get(emu.url + "/v1/get-user-credits", headers={"x-api-key": api.api_key}, timeout=10)
        assert answer.status_code == 200
        elapsed.append(time.monotonic() - started)

    started = time.monotonic()
    threads = [threading.Thread(target=call_slowly) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(elapsed) == 2 and min(elapsed) >= 1.5
    assert time.monotonic() - started < 2.9  # the two delays overlapped (one after the other takes 3 s)


def test_a_truncated_download_sends_the_full_length_then_closes(api: Any, emu: Sora2Emulator) -> None:
    request_id = api.submit()["request_id"]
    api.poll(request_id)
    url = f"{emu.url}/outputs/{request_id}.mp4"
    full = requests.get(url, timeout=10).content
    emu.add_fault("download", "truncate", after_bytes=1000)
    received = bytearray()
    with requests.get(url, stream=True, timeout=10) as answer:
        assert int(answer.headers["content-length"]) == len(full)
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for chunk in answer.iter_content(100):  # 1000 is a multiple: requests drops a partial last read
                received.extend(chunk)
    assert bytes(received) == full[:1000]
    assert emu.request_log[-1]["status"] == 200 and emu.request_log[-1]["dropped"] is True
    assert requests.get(url, timeout=10).content == full


def test_a_truncated_v1_answer_is_still_billed(api: Any, emu: Sora2Emulator) -> None:
    emu.add_fault("submit_v1", "truncate", after_bytes=10)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.post("/v1/sora-2", json={"prompt": "x", "duration": 4})
    assert list(emu.charges().values()) == [0.4]


@pytest.mark.parametrize("kind", ["submit_502_after_create", "submit_drop_after_create"])
def test_a_submit_lost_after_create_still_runs_and_is_charged_once(api: Any, emu: Sora2Emulator, kind: str,
                                                                   wait_for: Any) -> None:
    emu.add_fault("submit_v2", kind)
    if kind == "submit_502_after_create":
        answer = api.post("/v2/sora-2", json={"prompt": "x", "duration": 4})
        assert answer.status_code == 502 and answer.headers["content-type"].startswith("text/html")
    else:
        with pytest.raises(requests.ConnectionError):
            requests.post(emu.url + "/v2/sora-2", json={"prompt": "x", "duration": 4},
                          headers={"x-api-key": api.api_key}, timeout=5)
    rows = api.get("/inference-request/request-history").json()["data"]
    assert len(rows) == 1 and rows[0]["model_status"] == "PENDING"
    request_id = rows[0]["request_id"]
    assert api.poll(request_id)[-1] == "COMPLETED"
    assert emu.charges() == {request_id: 0.4}
    assert api.get(f"/inference-request/request-history/{request_id}").json()["credits_deduction"] == 0.4


# -- ranges and padding ---------------------------------------------------------------------------------


def test_downloads_support_range_requests_and_head(api: Any, emu: Sora2Emulator) -> None:
    request_id = api.submit()["request_id"]
    api.poll(request_id)
    url = f"{emu.url}/outputs/{request_id}.mp4"
    full = requests.get(url, timeout=10).content
    total = len(full)
    cases = {"bytes=0-99": (0, 100), "bytes=100-": (100, total), "bytes=-50": (total - 50, total),
             f"bytes={total - 10}-{total + 500}": (total - 10, total)}
    for header, (start, stop) in cases.items():
        answer = requests.get(url, headers={"range": header}, timeout=10)
        assert answer.status_code == 206, header
        assert answer.content == full[start:stop]
        assert answer.headers["content-range"] == f"bytes {start}-{stop - 1}/{total}"
    ignored = requests.get(url, headers={"range": "bytes=20-10"}, timeout=10)  # invalid: RFC 9110 serves it all
    assert ignored.status_code == 200 and ignored.content == full
    unsatisfiable = requests.get(url, headers={"range": f"bytes={total}-"}, timeout=10)
    assert unsatisfiable.status_code == 416 and unsatisfiable.headers["content-range"] == f"bytes */{total}"
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and int(head.headers["content-length"]) == total and head.content == b""


def test_padded_outputs_have_the_exact_size_and_still_decode(make_emulator: Any, api_for: Any) -> None:
    emulator = make_emulator(pad_output_to=3_000_000)
    api = api_for(emulator)
    request_id = api.submit()["request_id"]
    api.poll(request_id)
    result = api.get(f"/v2/requests/{request_id}").json()
    assert result["video"]["file_size"] == 3_000_000
    data = requests.get(result["output"], timeout=30).content
    assert len(data) == 3_000_000 and is_valid_mp4_prefix(data)
    assert probe(data)[:3] == (720, 1280, pytest.approx(4, abs=0.01))
    v1 = api.post("/v1/sora-2", json={"prompt": "x", "duration": 4})
    assert len(v1.content) == 3_000_000 and probe(v1.content)[:3] == (720, 1280, pytest.approx(4, abs=0.01))


def test_a_5_gib_output_is_streamed_with_a_64_bit_free_box(make_emulator: Any, api_for: Any) -> None:
    total = 5 * 2**30
    emulator = make_emulator(pad_output_to=total)
    api = api_for(emulator)
    request_id = api.submit()["request_id"]
    api.poll(request_id)
    url = f"{emulator.url}/outputs/{request_id}.mp4"
    real = _offset_of_free_box(url, total)
    head = requests.head(url, timeout=10)
    assert int(head.headers["content-length"]) == total
    box = requests.get(url, headers={"range": f"bytes={real}-{real + 15}"}, timeout=10)
    assert box.status_code == 206 and box.content == struct.pack(">I4sQ", 1, b"free", total - real)
    tail = requests.get(url, headers={"range": "bytes=-4096"}, timeout=10)
    assert tail.content == bytes(4096)


def _offset_of_free_box(url: str, total: int) -> int:
    """Where the padding starts: the top-level boxes of the MP4 walked with range reads up to the last one, which
    must be a ``free`` box reaching the end of the file."""
    offset = 0
    while True:
        header = requests.get(url, headers={"range": f"bytes={offset}-{offset + 15}"}, timeout=10).content
        size, kind = struct.unpack(">I4s", header[:8])
        size = struct.unpack(">Q", header[8:])[0] if size == 1 else size
        assert size >= 8, f"box {kind!r} at {offset} has size {size}"
        if offset + size >= total:
            assert (kind, offset + size) == (b"free", total)
            return offset
        offset += size


# -- ledger, peak concurrency, request log ---------------------------------------------------------------


def test_the_ledger_charges_each_completed_job_exactly_once(api: Any, emu: Sora2Emulator) -> None:
    good = [api.submit(duration=4)["request_id"], api.submit("sora-2-pro", duration=8, size="1024x1792")["request_id"]]
    emu.add_fault("submit_v2", "fail_job")
    failed = api.submit()["request_id"]
    assert api.post("/v2/sora-2", json={"duration": 4}).status_code == 400
    emu.set_balance(api.api_key, 0.1)
    assert api.post("/v2/sora-2", json={"prompt": "x"}).status_code == 406
    emu.set_balance(api.api_key, 100.0)
    for request_id in [*good, failed]:
        api.poll(request_id)
        for _ in range(3):  # more reads charge nothing more
            api.get(f"/v2/requests/{request_id}")
    ledger = {entry["request_id"]: entry for entry in emu.ledger}
    assert set(ledger) == {*good, failed}
    # Segmind's price table: sora-2 USD 0.10/s x 4 s; sora-2-pro at 1024x1792 USD 0.50/s x 8 s.
    assert emu.charges() == {good[0]: 0.4, good[1]: 4.0}
    assert ledger[failed]["charged"] == 0.0 and ledger[failed]["status"] == "FAILED"
    assert emu.get_balance(api.api_key)["credits"] == pytest.approx(95.6)
    entry = ledger[good[1]]
    assert (entry["model"], entry["duration"], entry["size"], entry["prompt"]) == (
        "sora-2-pro", 8, "1024x1792", "a lighthouse at dusk")
    assert entry["api_key_suffix"] == api.api_key[-4:] and isinstance(entry["created_at"], float)
    assert api.api_key not in json.dumps(emu.ledger)


def test_the_balance_reflects_completed_jobs_without_any_request(api: Any, emu: Sora2Emulator,
                                                                 wait_for: Any) -> None:
    emu.set_balance(api.api_key, 1.0)
    api.submit(duration=4)
    wait_for(lambda: emu.get_balance(api.api_key)["credits"] == pytest.approx(0.6), what="charge")
    assert [e["status"] for e in emu.ledger] == ["COMPLETED"]


def test_running_jobs_peak_counts_jobs_in_flight_together(api: Any, emu: Sora2Emulator) -> None:
    first = [api.submit()["request_id"] for _ in range(3)]
    assert emu.running_jobs_peak() == 3
    for request_id in first:
        api.poll(request_id)
    api.poll(api.submit()["request_id"])
    assert emu.running_jobs_peak() == 3
    emu.reset()
    api.poll(api.submit()["request_id"])
    api.poll(api.submit()["request_id"])
    assert emu.running_jobs_peak() == 1


def test_the_request_log_names_every_call_and_never_the_key(api: Any, emu: Sora2Emulator) -> None:
    request_id = api.submit()["request_id"]
    api.get(f"/v2/requests/{request_id}")
    api.get("/v1/get-user-credits", api_key="bad")
    api.get("/v2/sora-2")
    log = emu.request_log
    assert [(e["endpoint"], e["method"], e["status"]) for e in log] == [
        ("submit_v2", "POST", 200), ("result", "GET", 200), ("credits", "GET", 401), ("submit_v2", "GET", 405)]
    assert log[1]["path"] == f"/v2/requests/{request_id}"
    assert all(isinstance(e["time"], float) and e["dropped"] is False for e in log)
    assert api.api_key not in json.dumps(log)


# -- HTTP controls ---------------------------------------------------------------------------------------


def test_the_http_controls(api: Any, emu: Sora2Emulator) -> None:
    control = emu.url + "/_emulator"
    answer = requests.post(control + "/balance", json={"api_key": "SG_new", "credits": 3.0, "free_credits": 1.0},
                           timeout=5)
    assert answer.json() == {"credits": 3.0, "free_credits": 1.0}
    assert api.get("/v1/get-user-credits", api_key="SG_new").json() == {"credits": 3.0, "free-credits": 1.0}
    assert requests.post(control + "/balance", json={"credits": 3.0}, timeout=5).status_code == 400

    fault = {"endpoint": "credits", "kind": "status", "status": 503, "on_call": 1, "times": 1}
    assert requests.post(control + "/faults", json=fault, timeout=5).json() == {"ok": True}
    assert api.get("/v1/get-user-credits").status_code == 503
    melt = {"endpoint": "credits", "kind": "melt"}
    assert requests.post(control + "/faults", json=melt, timeout=5).status_code == 400
    assert requests.post(control + "/faults", json={**fault, "times": 5}, timeout=5).ok
    assert requests.delete(control + "/faults", timeout=5).json() == {"ok": True}
    assert api.get("/v1/get-user-credits").status_code == 200

    assert requests.post(control + "/models", json={"model": "sora-2", "state": "retired"}, timeout=5).ok
    assert api.post("/v2/sora-2", json={"prompt": "x"}).status_code == 410
    assert requests.post(control + "/models", json={"model": "sora-2", "state": "available"}, timeout=5).ok

    request_id = api.submit()["request_id"]
    ledger = requests.get(control + "/ledger", timeout=5).json()
    assert [e["request_id"] for e in ledger["ledger"]] == [request_id]
    assert ledger["running_jobs_peak"] == 1 and ledger["charges"] == {}
    log = requests.get(control + "/requests", timeout=5).json()["requests"]
    assert [e["endpoint"] for e in log] == ["credits", "credits", "credits", "submit_v2", "submit_v2"]

    assert requests.post(f"{control}/expire/{request_id}", timeout=5).json() == {"ok": True}
    assert api.get(f"/v2/requests/{request_id}/status").status_code == 404
    assert requests.post(f"{control}/expire/unknown", timeout=5).status_code == 404

    assert requests.post(control + "/reset", timeout=5).json() == {"ok": True}
    assert emu.ledger == [] and emu.request_log == []


def test_the_emulator_never_writes_the_key_to_its_output(api: Any, emu: Sora2Emulator,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    emu.add_fault("credits", "reset")
    with pytest.raises(requests.ConnectionError):
        api.get("/v1/get-user-credits")
    api.poll(api.submit()["request_id"])
    out, err = capfd.readouterr()
    assert api.api_key not in out + err
    sys.stdout.write(out)
    sys.stderr.write(err)
