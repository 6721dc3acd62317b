"""Sora2Hook over real HTTP against the emulator (and, for odd servers, a tiny local HTTP server); no mocks."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from sora2_provider.exceptions import (
    Sora2AuthError,
    Sora2DownloadError,
    Sora2Error,
    Sora2InsufficientCreditsError,
    Sora2JobFailedError,
    Sora2ModelRetiredError,
    Sora2NotFoundError,
    Sora2RateLimitedError,
    Sora2ServerError,
    Sora2SubmitUncertainError,
    Sora2ValidationError,
)
from sora2_provider.hooks._answers import history_record, history_row, history_rows, parse_timestamp
from sora2_provider.hooks._call_budget import RESET_MARGIN
from sora2_provider.hooks.sora2 import Sora2Hook
from sora2_provider.models import DownloadResult, JobStatus, VideoRequest
from tests.hook.support import HOOK_KEY, RATE_WINDOW, TIME_SCALE
from tests.support import VirtualTime

MiB = 1024 * 1024
REQUEST = VideoRequest.create("a red fox running through snow", duration=4)


# --------------------------------------------------------------------------- helpers


def assert_no_key(err: BaseException) -> None:
    """The key is in no exception of the chain (message, repr, cause, context)."""
    seen: BaseException | None = err
    while seen is not None:
        assert HOOK_KEY not in str(seen) and HOOK_KEY not in repr(seen), f"key leaked into {type(seen).__name__}"
        seen = seen.__cause__ or seen.__context__


def raises(exc_type: type[BaseException], call: Callable[[], Any]) -> Any:
    """Run ``call``, expect ``exc_type``, check the key is nowhere in it, and return the exception."""
    with pytest.raises(exc_type) as info:
        call()
    assert_no_key(info.value)
    return info.value


def wait_terminal(hook: Sora2Hook, request_id: str, timeout: float = 15.0) -> JobStatus:
    """Poll the status (the emulator renders sora-2 in about 0.36 s) until COMPLETED or FAILED."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not (status := hook.get_status(request_id)).is_terminal:
        assert time.monotonic() < deadline, f"job {request_id} still {status.status}"
        pause.wait(0.05)
    return status


def completed_job(hook: Sora2Hook) -> str:
    job = hook.submit(REQUEST)
    assert wait_terminal(hook, job.request_id).status == "COMPLETED"
    return job.request_id


def calls(emulator: Any, endpoint: str) -> list[dict[str, Any]]:
    return [entry for entry in emulator.request_log if entry["endpoint"] == endpoint]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png_bytes() -> bytes:
    """A valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


class OddServer:
    """A local HTTP server whose answers a test scripts: a list of ``(status, headers, body, cut_after)``, or of
    functions of the request's headers that return one."""

    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.received: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer.received.append({"method": self.command, "path": self.path, **self.headers})
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                answer = outer.answers.pop(0)
                status, headers, body, cut = answer(self.headers) if callable(answer) else answer
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body[:cut])
                self.close_connection = cut is not None

            do_POST = do_GET

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base_url}/video.mp4"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def odd_server() -> Iterator[OddServer]:
    server = OddServer()
    yield server
    server.close()


# --------------------------------------------------------------------------- parsing what Segmind answers


@pytest.mark.parametrize(
    "header",
    ["2030-01-02T03:04:05.500Z", "2030-01-02T03:04:05.5+00:00", "1893553445.5", "1893553445500"],
)
def test_rate_limit_reset_formats(header: str) -> None:
    assert parse_timestamp(header) == datetime(2030, 1, 2, 3, 4, 5, 500000, tzinfo=timezone.utc)


def test_rate_limit_reset_http_date_and_garbage() -> None:
    assert parse_timestamp("Wed, 02 Jan 2030 03:04:05 GMT") == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_timestamp("soon") is None and parse_timestamp(None) is None


@pytest.mark.parametrize(
    "page",
    [
        [{"request_id": "a"}],
        {"data": [{"request_id": "a"}], "total": 1},
        {"items": [{"request_id": "a"}]},
        {"results": [{"request_id": "a"}]},
        {"rows": [{"request_id": "a"}]},
        {"data": {"items": [{"request_id": "a"}]}},
    ],
)
def test_history_page_wrappers(page: Any) -> None:
    assert [row["request_id"] for row in history_rows(page)] == ["a"]


def test_history_row_with_missing_and_odd_keys() -> None:
    record = history_record({"request_id": "a", "request_body": '{"prompt": "x"}', "generation_url": ["u"]})
    assert (record.request_body, record.output_url, record.status, record.cost, record.model) == (
        {"prompt": "x"}, "u", None, None, None,
    )  # fmt: skip
    assert history_row({"data": {"request_id": "b"}}) == {"request_id": "b"}


# --------------------------------------------------------------------------- identity, hosts, session


def test_identity_lazy_init_and_repr(set_connection: Callable[..., None]) -> None:
    hook = Sora2Hook("no_such_connection")  # no lookup in __init__
    assert (hook.conn_name_attr, hook.default_conn_name, hook.conn_type, hook.hook_name) == (
        "sora2_conn_id",
        "sora2_default",
        "sora2",
        "Segmind Sora 2",
    )
    assert (hook.max_retries, hook.max_wait) == (5, 60.0)
    set_connection("http://127.0.0.1:9", timeout=3)
    default = Sora2Hook()
    default.get_conn()
    assert repr(default) == "Sora2Hook(sora2_conn_id='sora2_default')"
    assert HOOK_KEY not in repr(default) and HOOK_KEY not in str(vars(default).keys())


@pytest.mark.parametrize(
    ("host", "extra", "expected"),
    [
        (None, {}, ("https://api.segmind.com", "https://workflows-api.segmind.com", "https://api.spotprod.segmind.com")),
        ("http://127.0.0.1:8765/", {}, ("http://127.0.0.1:8765",) * 3),
        ("api.example.com", {}, ("https://api.example.com",) * 3),
        (
            "http://127.0.0.1:8765",
            {"upload_host": "http://127.0.0.1:9000", "history_host": "history.example.com"},
            ("http://127.0.0.1:8765", "http://127.0.0.1:9000", "https://history.example.com"),
        ),
        (None, {"history_host": "http://127.0.0.1:9001"}, (
            "https://api.segmind.com", "https://workflows-api.segmind.com", "http://127.0.0.1:9001",
        )),
    ],
)  # fmt: skip
def test_three_hosts_one_override(
    set_connection: Callable[..., None], host: str | None, extra: dict[str, str], expected: tuple[str, str, str]
) -> None:
    set_connection(host, **extra)
    hook = Sora2Hook()
    assert (hook.base_url, hook.upload_url, hook.history_url) == expected


def test_timeouts_from_extras(set_connection: Callable[..., None]) -> None:
    set_connection("http://127.0.0.1:1")
    assert Sora2Hook().timeouts == (10.0, 60.0)
    set_connection("http://127.0.0.1:1", timeout="12.5", connect_timeout=2)
    assert Sora2Hook().timeouts == (2.0, 12.5)
    set_connection("http://127.0.0.1:1", timeout="soon")
    with pytest.raises(ValueError, match="timeout='soon'"):
        _ = Sora2Hook().timeouts


def test_one_session_with_key_header_registered_with_masker(hook: Sora2Hook) -> None:
    from airflow.providers.common.compat.sdk import redact

    session = hook.get_conn()
    assert hook.get_conn() is session
    assert session.headers["x-api-key"] == HOOK_KEY
    assert HOOK_KEY not in str(redact(f"the key is {HOOK_KEY}"))


def test_missing_key_is_an_auth_error(make_hook: Callable[..., Sora2Hook]) -> None:
    hook = make_hook(key=None)
    err = raises(Sora2AuthError, hook.get_credits)
    assert "no API key" in str(err) and "sora2_default" in str(err)
    assert hook.test_connection() == (False, str(err))


# --------------------------------------------------------------------------- credits and connection test


def test_get_credits_and_test_connection(hook: Sora2Hook, hook_emulator: Any) -> None:
    hook_emulator.set_balance(HOOK_KEY, 42.5, free_credits=1.5)
    assert hook.get_credits() == {"credits": 42.5, "free_credits": 1.5}
    ok, message = hook.test_connection()
    assert ok and "42.5 credits" in message and hook_emulator.url in message


def test_test_connection_reports_a_bad_key_without_a_paid_call(
    make_hook: Callable[..., Sora2Hook], hook_emulator: Any
) -> None:
    ok, message = make_hook(key="SG_0000000000000000").test_connection()
    assert not ok
    assert "HTTP 401" in message and "Invalid API key" in message
    assert "sora2_default" not in message  # the UI tests a form under a throwaway id: naming it misleads
    assert hook_emulator.ledger == []
    assert {entry["endpoint"] for entry in hook_emulator.request_log} == {"credits"}


# --------------------------------------------------------------------------- jobs


def test_submit_status_result_download_and_history(hook: Sora2Hook, hook_emulator: Any, tmp_path: Path) -> None:
    job = hook.submit(REQUEST)
    assert job.status == "QUEUED"
    assert job.status_url == f"{hook_emulator.url}/v2/requests/{job.request_id}/status"
    assert job.response_url == f"{hook_emulator.url}/v2/requests/{job.request_id}"
    early = hook.get_result(job.request_id)
    assert early.status in ("QUEUED", "PROCESSING") and early.output_url is None

    status = wait_terminal(hook, job.request_id)
    assert status.status == "COMPLETED" and status.error is None and "inference_time" in status.metrics
    result = hook.get_result(job.request_id)
    assert result.output_url == f"{hook_emulator.url}/outputs/{job.request_id}.mp4"
    assert (result.cost, result.remaining_credits) == (0.4, 99.6)
    assert result.generation_seconds and result.generation_seconds > 0

    downloaded = hook.download(result.output_url, str(tmp_path / "video.mp4"))
    data = (tmp_path / "video.mp4").read_bytes()
    assert downloaded == DownloadResult(len(data), hashlib.sha256(data).hexdigest(), "video/mp4")
    assert data[4:8] == b"ftyp"

    record = hook.get_request_record(job.request_id)
    assert (record.request_id, record.model, record.status, record.cost) == (job.request_id, "sora-2", "COMPLETED", 0.4)
    assert record.request_body == REQUEST.to_body() and record.output_url == result.output_url
    assert [entry["request_id"] for entry in hook_emulator.ledger] == [job.request_id]


def test_download_to_every_kind_of_destination(hook: Sora2Hook, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    url = hook.get_result(completed_job(hook)).output_url
    assert url
    reference = hook.download(url, tmp_path / "path.mp4")
    buffer = io.BytesIO()
    assert hook.download(url, buffer) == reference
    assert not buffer.closed and hashlib.sha256(buffer.getvalue()).hexdigest() == reference.sha256
    store = ObjectStoragePath(f"file://{tmp_path}/store.mp4")
    assert hook.download(url, store) == reference
    assert hook.download(url, f"file://{tmp_path}/url.mp4") == reference
    for name in ("store.mp4", "url.mp4"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "path.mp4").read_bytes()


def test_failed_job_is_a_status_and_a_result_error(hook: Sora2Hook, hook_emulator: Any) -> None:
    hook_emulator.add_fault("submit_v2", "fail_job", message="the prompt was refused by the safety system")
    job = hook.submit(REQUEST)
    status = wait_terminal(hook, job.request_id)
    assert status == JobStatus(job.request_id, "FAILED", "the prompt was refused by the safety system", status.metrics)
    err = raises(Sora2JobFailedError, lambda: hook.get_result(job.request_id))
    assert "FAILED" in str(err) and "refused by the safety system" in str(err) and job.request_id in str(err)
    assert hook_emulator.ledger[0]["charged"] == 0


def test_generate_sync_streams_the_body_and_reads_the_headers(
    make_hook: Callable[..., Sora2Hook], hook_emulator: Any, tmp_path: Path
) -> None:
    # The render takes about 0.36 s, over the 0.2 s read timeout: only the v1 factor of 10 lets it through.
    hook = make_hook(timeout=0.2)
    result = hook.generate_sync(REQUEST, tmp_path / "sync.mp4")
    data = (tmp_path / "sync.mp4").read_bytes()
    assert result.download == DownloadResult(len(data), hashlib.sha256(data).hexdigest(), "video/mp4")
    (entry,) = hook_emulator.ledger
    assert (result.request_id, result.cost, result.remaining_credits) == (entry["request_id"], 0.4, 99.6)
    assert result.generation_seconds and result.generation_seconds > 0.2


def test_generate_sync_body_cut_short_names_the_billed_request(
    hook: Sora2Hook, hook_emulator: Any, tmp_path: Path
) -> None:
    hook_emulator.add_fault("submit_v1", "truncate", after_bytes=100)
    err = raises(Sora2DownloadError, lambda: hook.generate_sync(REQUEST, tmp_path / "sync.mp4"))
    (entry,) = hook_emulator.ledger
    assert entry["request_id"] in str(err) and "billed" in str(err)
    assert len(calls(hook_emulator, "submit_v1")) == 1


# --------------------------------------------------------------------------- error mapping


def _invalid_request() -> VideoRequest:
    return VideoRequest(prompt="a fox", model="sora-2", duration=5, size="720x1280")  # bypasses local validation


ERROR_CASES: list[tuple[str, Callable[[Any], None], Callable[[Sora2Hook], Any], type[Sora2Error], tuple[str, ...]]] = [
    ("400", lambda emu: None, lambda h: h.submit(_invalid_request()), Sora2ValidationError,
     ("HTTP 400", "duration: 5 is not allowed")),
    ("401", lambda emu: emu.set_balance("SG_other", 1.0), lambda h: h.get_credits(), Sora2AuthError,
     ("HTTP 401", "Invalid API key")),
    ("403", lambda emu: emu.set_model_state("sora-2", "forbidden"), lambda h: h.submit(REQUEST), Sora2AuthError,
     ("HTTP 403", "not allowed for this account")),
    ("404", lambda emu: None, lambda h: h.get_status("no-such-id"), Sora2NotFoundError,
     ("HTTP 404", "Request no-such-id not found", "request_id=no-such-id")),
    ("406", lambda emu: emu.set_balance(HOOK_KEY, 0.25), lambda h: h.submit(REQUEST), Sora2InsufficientCreditsError,
     ("HTTP 406", "balance 0.25, required 0.4")),
    ("406 content type", lambda emu: emu.add_fault("credits", "status", status=406,
                                                   message="Content-Type must be application/json"),
     lambda h: h.get_credits(), Sora2ValidationError, ("HTTP 406", "Content-Type must be application/json")),
    ("410", lambda emu: emu.set_model_state("sora-2", "retired"), lambda h: h.submit(REQUEST), Sora2ModelRetiredError,
     ("HTTP 410", "has been retired")),
    ("422 v1", lambda emu: None, lambda h: h.generate_sync(_invalid_request(), io.BytesIO()), Sora2ValidationError,
     ("HTTP 422", "duration: 5 is not allowed")),
    ("405 html", lambda emu: emu.add_fault("status", "status", status=405), lambda h: h.get_status("x"), Sora2Error,
     ("HTTP 405", "Segmind says: 405 Not Allowed")),
    ("502 html", lambda emu: emu.add_fault("credits", "status", status=502, times=9), lambda h: h.get_credits(),
     Sora2ServerError, ("HTTP 502", "Segmind says: 502 Bad Gateway")),
    ("500 json", lambda emu: emu.add_fault("history_item", "status", status=500, times=9),
     lambda h: h.get_request_record("abc"), Sora2ServerError, ("HTTP 500", "Internal server error", "request_id=abc")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "call", "error", "texts"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_error_mapping(
    hook: Sora2Hook,
    hook_emulator: Any,
    setup: Callable[[Any], None],
    call: Callable[[Sora2Hook], Any],
    error: type[Sora2Error],
    texts: tuple[str, ...],
) -> None:
    if error is Sora2AuthError and "401" in texts[0]:
        hook.get_conn().headers["x-api-key"] = "SG_wrongwrongwrong"
    setup(hook_emulator)
    err = raises(error, lambda: call(hook))
    assert type(err) is error
    for text in texts:
        assert text in str(err)
    assert "<" not in str(err), "HTML tags should be stripped from the snippet"
    assert hook_emulator.ledger == [] or all(entry["charged"] == 0 for entry in hook_emulator.ledger)


def test_insufficient_credits_parses_balance_and_need(hook: Sora2Hook, hook_emulator: Any) -> None:
    hook_emulator.set_balance(HOOK_KEY, 0.25)
    err = raises(Sora2InsufficientCreditsError, lambda: hook.submit(REQUEST))
    assert (err.status_code, err.balance, err.required) == (406, 0.25, 0.4)


def test_segmind_echoing_the_key_is_redacted(hook: Sora2Hook, hook_emulator: Any) -> None:
    hook_emulator.add_fault("credits", "status", status=400, message=f"key {HOOK_KEY} is malformed")
    err = raises(Sora2ValidationError, hook.get_credits)
    assert "key *** is malformed" in str(err)


# --------------------------------------------------------------------------- retries


def test_rate_limit_fault_waits_for_the_reset_then_succeeds(hook: Sora2Hook, hook_emulator: Any) -> None:
    hook_emulator.add_fault("credits", "status", status=429)
    started = time.monotonic()
    assert hook.get_credits()["credits"] == 100.0
    elapsed = time.monotonic() - started
    assert RATE_WINDOW - 0.05 <= elapsed < RATE_WINDOW + 2
    assert [entry["status"] for entry in calls(hook_emulator, "credits")] == [429, 200]


def test_rate_limit_window_is_respected(make_hook: Callable[..., Sora2Hook], monkeypatch: Any) -> None:
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(api_keys={HOOK_KEY: 5.0}, rate_limit_rpm=2, rate_limit_window=0.8) as emulator:
        clock = VirtualTime.install(monkeypatch)  # two calls fit in the window however slow this machine is
        hook = make_hook(host=emulator.url)
        assert hook.budget.now() == clock.now, "a budget made before the clock was installed would spin"
        started = clock.now
        for _ in range(3):
            hook.get_credits()
        assert 0.8 <= clock.now - started <= 0.8 + 2 * RESET_MARGIN
        assert [entry["status"] for entry in emulator.request_log] == [200, 200, 429, 200]


def test_rate_limit_with_no_retries_left_raises_with_the_reset_time(
    make_hook: Callable[..., Sora2Hook], hook_emulator: Any
) -> None:
    hook_emulator.add_fault("status", "status", status=429)
    before = time.time()
    err = raises(Sora2RateLimitedError, lambda: make_hook(max_retries=0).get_status("abc"))
    assert err.reset_at is not None and before < err.reset_at <= time.time() + RATE_WINDOW + 0.01
    assert "rate limited until" in str(err) and "HTTP 429" in str(err)


def test_503_on_get_is_retried(hook: Sora2Hook, hook_emulator: Any) -> None:
    job = hook.submit(REQUEST)
    hook_emulator.add_fault("status", "status", status=503, times=2)
    assert hook.get_status(job.request_id).status in ("QUEUED", "PROCESSING", "COMPLETED")
    assert [entry["status"] for entry in calls(hook_emulator, "status")] == [503, 503, 200]


def test_dropped_connection_on_get_is_retried(hook: Sora2Hook, hook_emulator: Any) -> None:
    hook_emulator.add_fault("history", "reset")
    assert hook.find_requests() == []
    assert [entry["dropped"] for entry in calls(hook_emulator, "history")] == [True, False]


def test_retries_stop_after_max_retries(make_hook: Callable[..., Sora2Hook], hook_emulator: Any) -> None:
    hook_emulator.add_fault("credits", "status", status=503, times=10)
    raises(Sora2ServerError, make_hook(max_retries=2).get_credits)
    assert len(calls(hook_emulator, "credits")) == 3


def test_4xx_is_never_retried(hook: Sora2Hook, hook_emulator: Any) -> None:
    raises(Sora2NotFoundError, lambda: hook.get_result("nope"))
    assert len(calls(hook_emulator, "result")) == 1


def test_read_timeout_on_get_is_retried(make_hook: Callable[..., Sora2Hook], hook_emulator: Any) -> None:
    hook = make_hook(timeout=0.3)
    hook_emulator.add_fault("credits", "slow", delay=0.6)
    assert hook.get_credits()["credits"] == 100.0


# --------------------------------------------------------------------------- submit is never repeated blindly


@pytest.mark.parametrize("kind", ["submit_502_after_create", "submit_drop_after_create"])
def test_submit_lost_answer_is_uncertain_and_the_job_is_found_in_history(
    hook: Sora2Hook, hook_emulator: Any, kind: str
) -> None:
    hook_emulator.add_fault("submit_v2", kind)
    err = raises(Sora2SubmitUncertainError, lambda: hook.submit(REQUEST))
    assert "may have created the job and charged" in str(err) and "NOT resubmitted" in str(err)
    assert "sora-2" in str(err) and err.model == "sora-2" and err.sent_at is not None
    assert len(calls(hook_emulator, "submit_v2")) == 1
    (entry,) = hook_emulator.ledger
    found = hook.find_requests("sora-2", since=err.sent_at)
    assert [record.request_id for record in found] == [entry["request_id"]]
    assert found[0].request_body == REQUEST.to_body()


def test_submit_5xx_is_uncertain_and_not_retried(hook: Sora2Hook, hook_emulator: Any) -> None:
    hook_emulator.add_fault("submit_v2", "status", status=503, times=5)
    err = raises(Sora2SubmitUncertainError, lambda: hook.submit(REQUEST))
    assert "HTTP 503" in str(err)
    assert len(calls(hook_emulator, "submit_v2")) == 1


def test_submit_read_timeout_is_uncertain(make_hook: Callable[..., Sora2Hook], hook_emulator: Any) -> None:
    hook_emulator.add_fault("submit_v2", "slow", delay=0.8)
    err = raises(Sora2SubmitUncertainError, lambda: make_hook(timeout=0.3).submit(REQUEST))
    assert "ReadTimeout" in str(err)


def test_submit_429_is_retried_once_the_limit_resets(hook: Sora2Hook, hook_emulator: Any) -> None:
    hook_emulator.add_fault("submit_v2", "status", status=429)
    job = hook.submit(REQUEST)
    assert [entry["request_id"] for entry in hook_emulator.ledger] == [job.request_id]
    assert [entry["status"] for entry in calls(hook_emulator, "submit_v2")] == [429, 200]


def test_submit_refused_connection_is_retried_then_reported(
    make_hook: Callable[..., Sora2Hook], caplog: pytest.LogCaptureFixture
) -> None:
    host = f"http://127.0.0.1:{free_port()}"
    hook = make_hook(max_retries=2, host=host)
    err = raises(Sora2ServerError, lambda: hook.submit(REQUEST))
    # What to do, first: the host, and that the emulator is not running there or the host is wrong.
    assert str(err).startswith(
        f"POST /v2/sora-2: could not connect to {host}, nothing was sent: is the Sora 2 emulator (`sora2-emulator`) "
        "running there, or is the host of connection 'sora2_default' wrong? (ConnectionError: "
    ), str(err)
    attempts = [r for r in caplog.records if r.name.startswith("urllib3") and "new HTTP connection" in r.getMessage()]
    assert len(attempts) == 3


# --------------------------------------------------------------------------- downloads


def test_truncated_download_resumes_with_range(make_hook: Callable[..., Sora2Hook], tmp_path: Path) -> None:
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=TIME_SCALE, api_keys={HOOK_KEY: 10.0}, pad_output_to=3 * MiB) as emulator:
        hook = make_hook(host=emulator.url)
        url = hook.get_result(completed_job(hook)).output_url
        whole = hook.download(url, tmp_path / "whole.mp4")
        emulator.add_fault("download", "truncate", after_bytes=2 * MiB + 12345)
        resumed = hook.download(url, tmp_path / "resumed.mp4")
        assert resumed == whole and whole.bytes == 3 * MiB
        assert (tmp_path / "resumed.mp4").read_bytes() == (tmp_path / "whole.mp4").read_bytes()
        assert [entry["status"] for entry in calls(emulator, "download")] == [200, 200, 206]


def _mp4_like(size: int, seed: bytes = b"seed") -> bytes:
    return b"\x00\x00\x00\x18ftypmp42" + hashlib.sha256(seed).digest() * (size // 32)


def test_download_restarts_when_the_server_ignores_range(
    make_hook: Callable[..., Sora2Hook], odd_server: OddServer, tmp_path: Path
) -> None:
    body = _mp4_like(3 * MiB)
    odd_server.answers = [(200, {"Content-Type": "video/mp4"}, body, 2 * MiB + 7), (200, {}, body, None)]
    result = make_hook().download(odd_server.url, tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == body and result.sha256 == hashlib.sha256(body).hexdigest()
    first, second = odd_server.received
    assert "Range" not in first and second["Range"].startswith("bytes=") and second["Range"] != "bytes=0-"
    assert not any(name.lower() == "x-api-key" for headers in odd_server.received for name in headers)


def test_a_restart_refuses_a_file_that_changed_on_the_server(
    make_hook: Callable[..., Sora2Hook], odd_server: OddServer, tmp_path: Path
) -> None:
    """The server ignores ``Range`` and now serves other bytes of the same length: gluing its tail to what was
    written would store a corrupt video, so the download stops instead (and is not retried into one)."""
    before, after = _mp4_like(3 * MiB), _mp4_like(3 * MiB, seed=b"re-encoded")
    odd_server.answers = [(200, {"Content-Type": "video/mp4"}, before, 2 * MiB + 7), (200, {}, after, None)]
    err = raises(Sora2DownloadError, lambda: make_hook().download(odd_server.url, tmp_path / "v.mp4"))
    assert "changed on the server" in str(err)
    assert len(odd_server.received) == 2


def test_a_resumed_answer_that_ends_early_is_resumed_again(
    make_hook: Callable[..., Sora2Hook], odd_server: OddServer, tmp_path: Path
) -> None:
    """A 206 that ends cleanly before the size its ``Content-Range`` announced (its own ``Content-Length`` is
    honest, so the transport sees nothing wrong) is a short download: the hook asks for the rest."""
    body = _mp4_like(3 * MiB)
    size, short_end = len(body), 2 * MiB + 3

    def from_range(headers: Any, end: int) -> tuple[int, dict[str, str], bytes, None]:
        start = int(headers["Range"].removeprefix("bytes=").rstrip("-"))
        return 206, {"Content-Range": f"bytes {start}-{size - 1}/{size}"}, body[start:end], None

    odd_server.answers = [
        (200, {"Content-Type": "video/mp4"}, body, MiB + 5),
        lambda headers: from_range(headers, short_end),  # announces the rest, sends part of it
        lambda headers: from_range(headers, size),
    ]
    result = make_hook().download(odd_server.url, tmp_path / "v.mp4")
    assert (tmp_path / "v.mp4").read_bytes() == body
    assert (result.bytes, result.sha256) == (size, hashlib.sha256(body).hexdigest())
    first, resumed, resumed_again = odd_server.received
    assert "Range" not in first and resumed["Range"] != "bytes=0-" and resumed_again["Range"] == f"bytes={short_end}-"


def test_generate_sync_follows_a_json_answer_to_the_video(
    make_hook: Callable[..., Sora2Hook], odd_server: OddServer, tmp_path: Path
) -> None:
    body = _mp4_like(MiB // 2)
    answer = json.dumps({"status": "COMPLETED", "output": odd_server.url}).encode()
    headers = {"Content-Type": "application/json", "x-request-id": "r-1", "x-cost": "0.4"}
    odd_server.answers = [(200, headers, answer, None), (200, {"Content-Type": "video/mp4"}, body, None)]
    result = make_hook(host=odd_server.base_url).generate_sync(REQUEST, tmp_path / "v.mp4")
    assert (result.request_id, result.cost, result.download.bytes) == ("r-1", 0.4, len(body))
    assert (tmp_path / "v.mp4").read_bytes() == body
    post, get = odd_server.received
    assert (post["method"], post["path"], post["x-api-key"]) == ("POST", "/v1/sora-2", HOOK_KEY)
    assert (get["method"], "x-api-key" in get) == ("GET", False)


def test_download_refuses_a_body_that_is_not_mp4(
    make_hook: Callable[..., Sora2Hook], odd_server: OddServer, tmp_path: Path
) -> None:
    odd_server.answers = [(200, {"Content-Type": "text/html"}, b"<html>Access denied</html>", None)]
    err = raises(Sora2DownloadError, lambda: make_hook().download(odd_server.url, tmp_path / "v.mp4"))
    assert "not an MP4" in str(err) and "text/html" in str(err)
    assert len(odd_server.received) == 1


def test_download_of_an_unknown_output_is_not_found(hook: Sora2Hook, hook_emulator: Any) -> None:
    err = raises(Sora2NotFoundError, lambda: hook.download(f"{hook_emulator.url}/outputs/nope.mp4", io.BytesIO()))
    assert "HTTP 404" in str(err)


_MEMORY_PROBE = """
import json, resource, sys, threading
import psutil
from sora2_provider.hooks._answers import history_record, history_row, history_rows, parse_timestamp
from sora2_provider.hooks._call_budget import RESET_MARGIN
from sora2_provider.hooks.sora2 import Sora2Hook

hook = Sora2Hook()
hook.get_credits()  # imports, connection lookup and session done before the baseline
process = psutil.Process()
baseline = process.memory_info().rss
maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
samples, done = [baseline], threading.Event()

def sample():
    while not done.wait(0.005):
        samples.append(process.memory_info().rss)

sampler = threading.Thread(target=sample)
sampler.start()
result = hook.download(sys.argv[1], sys.argv[2])
done.set()
sampler.join()
maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"bytes": result.bytes, "sha256": result.sha256, "sampled_peak": max(samples) - baseline,
                  "maxrss_growth": maxrss_after - max(maxrss_before, baseline)}))
"""


def test_500_mb_download_keeps_memory_bounded(make_hook: Callable[..., Sora2Hook], tmp_path: Path) -> None:
    from sora2_provider.testing.emulator import Sora2Emulator

    size = 500 * MiB
    with Sora2Emulator(time_scale=TIME_SCALE, api_keys={HOOK_KEY: 10.0}, pad_output_to=size) as emulator:
        hook = make_hook(host=emulator.url)
        url = hook.get_result(completed_job(hook)).output_url
        target = tmp_path / "big.mp4"
        probe = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, str(url), str(target)], capture_output=True, text=True, timeout=300
        )
    assert probe.returncode == 0, probe.stderr[-2000:]
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["bytes"] == size == target.stat().st_size
    assert report["sampled_peak"] < 64 * MiB and report["maxrss_growth"] < 64 * MiB, report
    digest = hashlib.sha256()
    with target.open("rb") as fh:
        while chunk := fh.read(8 * MiB):
            digest.update(chunk)
    assert digest.hexdigest() == report["sha256"]


# --------------------------------------------------------------------------- uploads


def test_upload_image_from_local_path_and_file_url(hook: Sora2Hook, tmp_path: Path) -> None:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    image = tmp_path / "ref.png"
    image.write_bytes(png_bytes())
    for source in (str(image), image, f"file://{image}", ObjectStoragePath(f"file://{image}")):
        url = hook.upload_image(source)
        served = requests.get(url, timeout=5)
        assert served.content == png_bytes() and served.headers["Content-Type"] == "image/png"


def test_upload_image_from_object_storage(hook: Sora2Hook, aws_conn: str, tmp_path: Path) -> None:
    import boto3
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    s3 = boto3.client("s3", endpoint_url=aws_conn, region_name="us-east-1")
    s3.put_object(Bucket="sora2-test", Key="refs/ref.png", Body=png_bytes())
    url = hook.upload_image(ObjectStoragePath("s3://aws_default@sora2-test/refs/ref.png"))
    assert requests.get(url, timeout=5).content == png_bytes()


def test_download_to_object_storage(hook: Sora2Hook, aws_conn: str) -> None:
    import boto3
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    url = hook.get_result(completed_job(hook)).output_url
    assert url
    result = hook.download(url, ObjectStoragePath("s3://aws_default@sora2-test/videos/fox.mp4"))
    s3 = boto3.client("s3", endpoint_url=aws_conn, region_name="us-east-1")
    data = s3.get_object(Bucket="sora2-test", Key="videos/fox.mp4")["Body"].read()
    assert result == DownloadResult(len(data), hashlib.sha256(data).hexdigest(), "video/mp4")


def test_upload_image_refuses_what_is_not_an_image(hook: Sora2Hook, hook_emulator: Any, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="not a PNG, JPEG, WEBP or GIF image"):
        hook.upload_image(text)
    assert calls(hook_emulator, "upload") == []


def test_upload_is_retried_on_503(hook: Sora2Hook, hook_emulator: Any, tmp_path: Path) -> None:
    image = tmp_path / "ref.png"
    image.write_bytes(png_bytes())
    hook_emulator.add_fault("upload", "status", status=503)
    assert requests.get(hook.upload_image(image), timeout=5).content == png_bytes()


# --------------------------------------------------------------------------- history


def test_expired_job_is_found_by_id_in_history(hook: Sora2Hook, hook_emulator: Any, tmp_path: Path) -> None:
    request_id = completed_job(hook)
    hook_emulator.expire(request_id)
    raises(Sora2NotFoundError, lambda: hook.get_status(request_id))
    record = hook.get_request_record(request_id)
    assert record.status == "COMPLETED" and record.cost == 0.4 and record.output_url
    assert record.latency_ms and record.created_at
    assert hook.download(record.output_url, tmp_path / "v.mp4").bytes > 0


def test_history_of_a_failed_job_and_of_another_account(hook: Sora2Hook, hook_emulator: Any) -> None:
    hook_emulator.add_fault("submit_v2", "fail_job", message="refused")
    job = hook.submit(REQUEST)
    wait_terminal(hook, job.request_id)
    record = hook.get_request_record(job.request_id)
    assert (record.status, record.error, record.output_url, record.cost) == ("FAILED", "refused", None, 0.0)
    assert [r.request_id for r in hook.find_requests(status="failed")] == [job.request_id]
    assert hook.find_requests(status="COMPLETED") == []
    raises(Sora2NotFoundError, lambda: hook.get_request_record("someone-elses-id"))


def test_find_requests_pages_newest_first_and_stops_at_since(hook: Sora2Hook, hook_emulator: Any) -> None:
    ids = [hook.submit(REQUEST).request_id for _ in range(3)]
    newest_first = list(reversed(ids))
    assert [r.request_id for r in hook.find_requests("sora-2", per_page=2)] == newest_first
    assert [r.request_id for r in hook.find_requests(per_page=1, max_pages=2)] == newest_first[:2]
    assert hook.find_requests("sora-2-pro") == []

    hook_emulator.request_log.clear()
    second = hook.get_request_record(ids[1]).created_at
    assert second
    since = datetime.fromisoformat(second.replace("Z", "+00:00"))
    before = len(calls(hook_emulator, "history"))
    assert [r.request_id for r in hook.find_requests("sora-2", since=since, per_page=1)] == newest_first[:2]
    assert len(calls(hook_emulator, "history")) - before == 3  # the third page's row is older: paging stops
    naive_old = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=2)
    assert len(hook.find_requests(since=naive_old)) == 3
    with pytest.raises(ValueError, match="per_page"):
        hook.find_requests(per_page=101)


# --------------------------------------------------------------------------- async


def test_async_methods_do_not_block_the_event_loop(hook: Sora2Hook, hook_emulator: Any) -> None:
    job = hook.submit(REQUEST)
    hook_emulator.add_fault("status", "slow", delay=0.5)

    async def scenario() -> tuple[JobStatus, int]:
        ticks, stop = 0, asyncio.Event()

        async def heartbeat() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        beating = asyncio.create_task(heartbeat())
        status = await Sora2Hook().aget_status(job.request_id)
        stop.set()
        await beating
        return status, ticks

    status, ticks = asyncio.run(scenario())
    assert status.request_id == job.request_id and ticks >= 15


def test_async_counterparts(hook: Sora2Hook) -> None:
    request_id = completed_job(hook)

    async def scenario() -> tuple[Any, ...]:
        fresh = Sora2Hook()
        return await asyncio.gather(
            fresh.aget_credits(), fresh.aget_result(request_id), fresh.aget_request_record(request_id)
        )

    credits, result, record = asyncio.run(scenario())
    assert credits["credits"] == pytest.approx(99.6)
    assert result.status == "COMPLETED" and result.output_url == record.output_url
