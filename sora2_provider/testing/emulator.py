"""A local emulator of Segmind's Sora 2 API (see ``segmind-api.md``), for tests and demos without paying.

Use it from Python::

    with Sora2Emulator(time_scale=0.01) as emulator:
        hook = ...(base_url=emulator.url + "/v1", api_key="SG_emulator")

or from a shell: ``sora2-emulator --port 8765 --time-scale 0.01`` (also ``python -m sora2_provider.testing.emulator``).

It serves the inference host (``/v1``, ``/v2``), the upload host (``/upload-asset``) and the history host
(``/inference-request/...``) on one port, plus test controls under ``/_emulator/`` that need no key. Generation
and expiry times are the real ones multiplied by ``time_scale``; the rate-limit window is in real seconds.
The API key is never logged or recorded (the ledger keeps its last 4 characters).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import re
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from starlette.applications import Starlette
from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sora2_provider.testing.backend import (
    DEFAULT_FAIL_MESSAGE,
    EmulatorState,
    Fault,
    HistoryQuery,
    Job,
    Refusal,
    rate_limit_headers,
)
from sora2_provider.testing.video import mp4_file, pad_mp4, padded_size

DEFAULT_API_KEY = "SG_emulator"
DEFAULT_BALANCE = 100.0
_LOG_ENTRY = "sora2.log_entry"
_LOGGED = "sora2.logged"
_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)
_RANGE = re.compile(r"^bytes=(?P<start>\d*)-(?P<end>\d*)$")


class _Dropped(Exception):
    """The connection was closed on purpose; nothing more is sent."""


@dataclass
class _Call:
    """What :meth:`_Api.begin` learnt about one call: the caller's key and the faults that apply."""

    api_key: str
    faults: list[Fault]

    def fault(self, kind: str) -> Fault | None:
        return next((f for f in self.faults if f.kind == kind), None)

    @property
    def truncate_after(self) -> int | None:
        """Bytes to send before closing, when a ``truncate`` fault applies."""
        truncate = self.fault("truncate")
        return truncate.after_bytes if truncate else None

    @property
    def stall(self) -> tuple[int, float] | None:
        """``(after_bytes, delay)`` of a ``slow`` fault that pauses a body mid-stream, when one applies."""
        slow = next((f for f in self.faults if f.kind == "slow" and f.after_bytes is not None), None)
        return (slow.after_bytes or 0, slow.delay or 0.0) if slow else None


class Sora2Emulator:
    """Segmind's Sora 2 API on a local port, served by uvicorn in a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        time_scale: float = 1.0,
        api_keys: dict[str, float | None] | None = None,
        free_credits: float = 0.0,
        rate_limit_rpm: int | None = None,
        rate_limit_window: float = 60.0,
        record_ttl_seconds: float = 3600.0,
        pad_output_to: int | None = None,
        noise_video: bool = False,
        retired_models: tuple[str, ...] = (),
        forbidden_models: tuple[str, ...] = (),
    ) -> None:
        """``api_keys`` maps each accepted key to its credits (default ``{"SG_emulator": 100.0}``).

        ``pad_output_to`` serves every MP4 padded to that many bytes (a trailing ``free`` box), when it
        is at least 8 bytes more than the real file. ``noise_video`` serves MP4s of random pixels, of a real video's
        weight (megabytes, not kilobytes). ``retired_models`` answer 410, ``forbidden_models`` 403.
        """
        self.host, self.port, self.pad_output_to = host, port, pad_output_to
        self.noise_video = noise_video
        self._state = EmulatorState(time_scale, record_ttl_seconds, rate_limit_rpm, rate_limit_window)
        for key, credits in (api_keys if api_keys is not None else {DEFAULT_API_KEY: DEFAULT_BALANCE}).items():
            self._state.set_balance(key, credits, free_credits)
        for models, state in ((retired_models, "retired"), (forbidden_models, "forbidden")):
            for model in models:
                self._state.set_model_state(model, state)
        self.app: ASGIApp = _RequestLog(_build_app(self), self._state)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Sora2Emulator:
        """Serve in a daemon thread; return once the port is bound and :attr:`url` is set."""
        import uvicorn

        if self._server is not None:
            return self
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            http="h11",
            loop="asyncio",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="sora2-emulator", daemon=True)
        self._thread.start()
        self._wait_until_started()
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{_url_host(self.host)}:{port}"
        return self

    def _wait_until_started(self) -> None:
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._thread is None or not self._thread.is_alive() or time.monotonic() > deadline:
                self._server = None
                raise RuntimeError(f"the Sora 2 emulator could not serve on {self.host}:{self.port}")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop serving (in-flight answers get one second to finish)."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Sora2Emulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- test controls -------------------------------------------------------------------------------

    def set_balance(self, api_key: str, credits: float | None, free_credits: float | None = None) -> None:
        """Register ``api_key`` or change its balance; ``credits=None`` makes the credits call answer 404."""
        self._state.set_balance(api_key, credits, free_credits)

    def get_balance(self, api_key: str) -> dict[str, float | None]:
        """``{"credits", "free_credits"}`` of a key, after charging every job completed by now."""
        account = self._state.balance(api_key)
        return {"credits": account.credits, "free_credits": account.free_credits}

    def set_model_state(self, model: str, state: str) -> None:
        """Make ``model`` ``available``, ``retired`` (410) or ``forbidden`` (403); any slug may be given."""
        self._state.set_model_state(model, state)

    def add_fault(
        self,
        endpoint: str,
        kind: str,
        *,
        on_call: int = 1,
        times: int = 1,
        status: int | None = None,
        message: str | None = None,
        delay: float | None = None,
        after_bytes: int | None = None,
    ) -> None:
        """Make calls ``on_call`` .. ``on_call + times - 1`` of ``endpoint``, counted from now, misbehave.

        Endpoints: submit_v2, submit_v1, status, result, download, credits, upload, asset, history,
        history_item. Kinds: ``status`` (answer ``status``, with ``message`` as the error if given),
        ``reset`` (close the connection unanswered), ``slow`` (wait ``delay`` s first; on download/submit_v1
        with ``after_bytes``, send that many body bytes, then pause ``delay`` s mid-stream), ``truncate``
        (download/submit_v1: full Content-Length, closed after ``after_bytes``), ``fail_job`` (the job
        ends FAILED with ``message``), ``submit_502_after_create`` / ``submit_drop_after_create`` (submit_v2:
        the job is created, runs and is charged, but the answer is a 502 / a dropped connection).
        """
        self._state.add_fault(
            endpoint,
            kind,
            on_call=on_call,
            times=times,
            status=status,
            message=message,
            delay=delay,
            after_bytes=after_bytes,
        )

    def clear_faults(self) -> None:
        """Remove every queued fault (call counts keep running)."""
        self._state.clear_faults()

    @property
    def ledger(self) -> list[dict[str, Any]]:
        """One entry per accepted job (v1 and v2): request_id, model, duration, size, status, charged, ..."""
        return self._state.ledger()

    @property
    def request_log(self) -> list[dict[str, Any]]:
        """Every Segmind call (controls excluded): endpoint, method, path, status (None: dropped), dropped, time."""
        with self._state.lock:
            return [dict(entry) for entry in self._state.request_log]

    def charges(self) -> dict[str, float]:
        """``request_id -> credits charged`` for every charged job (so ``len`` counts them, ``sum`` totals)."""
        return {entry["request_id"]: entry["charged"] for entry in self.ledger if entry["charged"]}

    def running_jobs_peak(self) -> int:
        """Most jobs QUEUED or PROCESSING at the same moment so far."""
        return self._state.running_jobs_peak()

    def expire(self, request_id: str) -> None:
        """Expire a job's v2 record now: status and result answer 404; history and the output still work."""
        self._state.expire(request_id)

    def unlist(self, request_id: str) -> None:
        """Leave a job out of request-history listings, as a lagging history would (status and result work)."""
        self._state.unlist(request_id)

    def reset(self) -> None:
        """Forget faults, jobs (ledger and history), uploads, call counts, rate windows and the request log."""
        self._state.reset()

    # -- helpers of the HTTP layer ---------------------------------------------------------------------

    async def drop_connection(self, scope: Scope) -> None:
        """Close the client's connection (buffered bytes are still sent) and wait until it is gone."""
        if _LOG_ENTRY in scope:
            scope[_LOG_ENTRY]["dropped"] = True
            _record(self._state, scope)
        connections = self._server.server_state.connections if self._server else set()
        protocol = next((c for c in list(connections) if c.client == scope.get("client")), None)
        if protocol is None:
            return
        protocol.transport.close()
        for _ in range(400):
            if protocol not in connections:
                return
            await asyncio.sleep(0.005)


class _Api:
    """The Segmind endpoints; each handler is one ``begin`` (faults, key, rate limit) and its own logic."""

    def __init__(self, emulator: Sora2Emulator) -> None:
        self.emulator = emulator
        self.state = emulator._state

    async def begin(self, request: Request, endpoint: str, keyed: bool = True) -> _Call:
        faults = self.state.take_faults(endpoint)
        delay = sum(f.delay or 0.0 for f in faults if f.kind == "slow" and f.after_bytes is None)
        if delay:
            await asyncio.sleep(delay)
        for fault in faults:
            if fault.kind == "status":
                raise self.fault_refusal(fault)
            if fault.kind == "reset":
                await self.drop(request)
        if not keyed:
            return _Call("", faults)
        api_key = self.state.authenticate(request.headers.get("x-api-key"))
        self.state.count_call(api_key)
        return _Call(api_key, faults)

    def fault_refusal(self, fault: Fault) -> Refusal:
        headers = rate_limit_headers(time.time() + self.state.rate_limit_window) if fault.status == 429 else None
        return Refusal(fault.status or 500, fault.message, headers)

    async def drop(self, request: Request) -> NoReturn:
        await self.emulator.drop_connection(request.scope)
        raise _Dropped

    async def submit_v2(self, request: Request) -> Response:
        call = await self.begin(request, "submit_v2")
        job = await self.submit(request, call, "v2")
        if fault := call.fault("submit_502_after_create"):
            raise Refusal(502, fault.message)
        if call.fault("submit_drop_after_create"):
            await self.drop(request)
        status_url = f"{_base_url(request)}/v2/requests/{job.request_id}/status"
        return JSONResponse(
            {
                "request_id": job.request_id,
                "status": "QUEUED",
                "status_url": status_url,
                "response_url": f"{_base_url(request)}/v2/requests/{job.request_id}",
                "poll_url": status_url,
            }
        )

    async def submit(self, request: Request, call: _Call, api: str) -> Job:
        model = request.path_params["model"]
        body = await _json_body(request)
        fail = call.fault("fail_job")
        fail_message = (fail.message or DEFAULT_FAIL_MESSAGE) if fail else None
        return self.state.submit(call.api_key, api, model, body, fail_message)

    async def submit_v1(self, request: Request) -> Response:
        call = await self.begin(request, "submit_v1")
        job = await self.submit(request, call, "v1")
        while (left := job.finished_at - time.time()) > 0:
            await asyncio.sleep(left)
        self.state.settle()
        if job.fail_message:
            raise Refusal(422, job.fail_message)
        headers = {
            "x-remaining-credits": str(job.remaining_credits),
            "x-cost": str(job.charged),
            "x-request-id": job.request_id,
            "x-generation-time": f"{job.finished_at - job.created_at:.3f}",
        }
        return await self.mp4_response(request, job, headers, call.truncate_after, stall=call.stall)

    async def status(self, request: Request) -> Response:
        call = await self.begin(request, "status")
        return self.status_response(self.state.v2_job(call.api_key, request.path_params["request_id"]))

    def status_response(self, job: Job) -> JSONResponse:
        now = time.time()
        status = job.status(now)
        body: dict[str, Any] = {"status": status, "request_id": job.request_id, "metrics": job.metrics(now)}
        if status == "FAILED":
            body["error"] = job.fail_message
        return JSONResponse(body, status_code=422 if status == "FAILED" else 200)

    async def result(self, request: Request) -> Response:
        call = await self.begin(request, "result")
        job = self.state.v2_job(call.api_key, request.path_params["request_id"])
        if job.status(time.time()) != "COMPLETED":
            return self.status_response(job)
        url = _output_url(request, job)
        _, size = await self.output_file(job)
        video = {"url": url, "content_type": "video/mp4", "file_name": f"{job.request_id}.mp4", "file_size": size}
        body = {
            "status": "COMPLETED",
            "request_id": job.request_id,
            "output": url,
            "metrics": job.metrics(time.time()),
            "video": video,
        }
        return JSONResponse(body)

    async def download(self, request: Request) -> Response:
        call = await self.begin(request, "download", keyed=False)
        job = self.state.output_job(request.path_params["request_id"])
        return await self.mp4_response(request, job, {}, call.truncate_after, ranged=True, stall=call.stall)

    async def output_file(self, job: Job) -> tuple[Path, int]:
        """The job's cached MP4 (encoded off the event loop when new) and the size it is served at."""
        width, height = _dimensions(job.request.size)
        path = await asyncio.to_thread(
            mp4_file, width, height, job.request.duration, noise=self.emulator.noise_video
        )
        return path, padded_size(path.stat().st_size, self.emulator.pad_output_to)

    async def mp4_response(
        self,
        request: Request,
        job: Job,
        headers: dict[str, str],
        after_bytes: int | None,
        ranged: bool = False,
        stall: tuple[int, float] | None = None,
    ) -> Response:
        """The (padded) MP4, whole or one ``Range``, streamed chunk by chunk."""
        path, total = await self.output_file(job)
        start, stop, status = 0, total, 200
        byte_range = _parse_range(request.headers.get("range"), total) if ranged else None
        if byte_range:
            (start, stop), status = byte_range, 206
            headers["content-range"] = f"bytes {start}-{stop - 1}/{total}"
        headers.update({"content-length": str(stop - start), "accept-ranges": "bytes"})
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type="video/mp4")
        body = self.stream(request, pad_mp4(path, total, start, stop), after_bytes, stall)
        return StreamingResponse(body, status_code=status, headers=headers, media_type="video/mp4")

    async def stream(
        self,
        request: Request,
        chunks: Iterator[bytes],
        after_bytes: int | None,
        stall: tuple[int, float] | None = None,
    ) -> AsyncIterator[bytes]:
        """Yield the chunks; with ``after_bytes``, close the connection once that many bytes are out; with
        ``stall`` (``(at, delay)``), pause ``delay`` seconds once ``at`` bytes are out."""
        sent = 0
        async for chunk in iterate_in_threadpool(chunks):
            if stall is not None and sent + len(chunk) >= stall[0]:
                head, chunk = chunk[: stall[0] - sent], chunk[stall[0] - sent :]
                if head:
                    yield head
                sent += len(head)
                await asyncio.sleep(stall[1])
                stall = None
            if after_bytes is not None and sent + len(chunk) >= after_bytes:
                yield chunk[: after_bytes - sent]
                await self.emulator.drop_connection(request.scope)
                return
            sent += len(chunk)
            yield chunk

    async def credits(self, request: Request) -> Response:
        call = await self.begin(request, "credits")
        account = self.state.balance(call.api_key)
        if account.credits is None:
            raise Refusal(404, "No credits found for the user")
        return JSONResponse({"credits": account.credits, "free-credits": account.free_credits})

    async def upload(self, request: Request) -> Response:
        await self.begin(request, "upload")
        data_urls = (await _json_body(request)).get("data_urls")
        if not isinstance(data_urls, list) or not data_urls:
            raise Refusal(400, "data_urls: must be a non-empty list of base64 data: URLs")
        names = [self.state.store_asset(*_decode_data_url(url)) for url in data_urls]
        file_urls = [f"{_base_url(request)}/assets/{name}" for name in names]
        return JSONResponse({"file_urls": file_urls, "message": "Files uploaded successfully"})

    async def asset(self, request: Request) -> Response:
        await self.begin(request, "asset", keyed=False)
        mime, content = self.state.asset(request.path_params["name"])
        return Response(content, media_type=mime)

    async def history(self, request: Request) -> Response:
        call = await self.begin(request, "history")
        query = HistoryQuery.parse(dict(request.query_params))
        jobs, total = self.state.history_jobs(call.api_key, query)
        rows = [self.state.history_row(job, _output_url(request, job)) for job in jobs]
        return JSONResponse({"data": rows, "page": query.page, "per_page": query.per_page, "total": total})

    async def history_item(self, request: Request) -> Response:
        call = await self.begin(request, "history_item")
        job = self.state.history_job(call.api_key, request.path_params["request_id"])
        return JSONResponse(self.state.history_row(job, _output_url(request, job)))


class _Controls:
    """Test controls under ``/_emulator/``: no key, never faulted, never logged."""

    def __init__(self, emulator: Sora2Emulator) -> None:
        self.emulator = emulator

    async def balance(self, request: Request) -> Response:
        body = await _control_body(request)
        api_key = _required(body, "api_key")
        self.emulator.set_balance(api_key, body.get("credits"), body.get("free_credits"))
        return JSONResponse(self.emulator.get_balance(api_key))

    async def faults(self, request: Request) -> Response:
        body = await _control_body(request)
        endpoint, kind = _required(body, "endpoint"), _required(body, "kind")
        options = {k: body[k] for k in ("on_call", "times", "status", "message", "delay", "after_bytes") if k in body}
        try:
            self.emulator.add_fault(endpoint, kind, **options)
        except (ValueError, TypeError) as err:
            raise Refusal(400, str(err)) from None
        return JSONResponse({"ok": True})

    async def clear_faults(self, request: Request) -> Response:
        self.emulator.clear_faults()
        return JSONResponse({"ok": True})

    async def models(self, request: Request) -> Response:
        body = await _control_body(request)
        try:
            self.emulator.set_model_state(_required(body, "model"), _required(body, "state"))
        except ValueError as err:
            raise Refusal(400, str(err)) from None
        return JSONResponse({"ok": True})

    async def ledger(self, request: Request) -> Response:
        emu = self.emulator
        body = {"ledger": emu.ledger, "charges": emu.charges(), "running_jobs_peak": emu.running_jobs_peak()}
        return JSONResponse(body)

    async def requests(self, request: Request) -> Response:
        return JSONResponse({"requests": self.emulator.request_log})

    async def expire(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        try:
            self.emulator.expire(request_id)
        except KeyError:
            raise Refusal(404, f"Request {request_id} not found") from None
        return JSONResponse({"ok": True})

    async def reset(self, request: Request) -> Response:
        self.emulator.reset()
        return JSONResponse({"ok": True})


def _build_app(emulator: Sora2Emulator) -> Starlette:
    api, controls = _Api(emulator), _Controls(emulator)
    routes = [
        Route("/v1/get-user-credits", api.credits, methods=["GET"], name="credits"),
        Route("/v1/{model}", api.submit_v1, methods=["POST"], name="submit_v1"),
        Route("/v2/requests/{request_id}/status", api.status, methods=["GET"], name="status"),
        Route("/v2/requests/{request_id}", api.result, methods=["GET"], name="result"),
        Route("/v2/{model}", api.submit_v2, methods=["POST"], name="submit_v2"),
        Route("/outputs/{request_id}.mp4", api.download, methods=["GET", "HEAD"], name="download"),
        Route("/upload-asset", api.upload, methods=["POST"], name="upload"),
        Route("/assets/{name}", api.asset, methods=["GET"], name="asset"),
        Route("/inference-request/request-history", api.history, methods=["GET"], name="history"),
        Route(
            "/inference-request/request-history/{request_id}", api.history_item, methods=["GET"], name="history_item"
        ),
        Route("/_emulator/balance", controls.balance, methods=["POST"]),
        Route("/_emulator/faults", controls.faults, methods=["POST"]),
        Route("/_emulator/faults", controls.clear_faults, methods=["DELETE"]),
        Route("/_emulator/models", controls.models, methods=["POST"]),
        Route("/_emulator/ledger", controls.ledger, methods=["GET"]),
        Route("/_emulator/requests", controls.requests, methods=["GET"]),
        Route("/_emulator/expire/{request_id}", controls.expire, methods=["POST"]),
        Route("/_emulator/reset", controls.reset, methods=["POST"]),
    ]
    handlers: dict[Any, Any] = {Refusal: _refusal_response, HTTPException: _routing_error, _Dropped: _dropped}
    return Starlette(routes=routes, exception_handlers=handlers)


class _RequestLog:
    """ASGI wrapper recording every Segmind call (endpoint, method, path, status, dropped, time).

    An entry is recorded as the answer starts (or the connection is dropped), so it is in the log before
    the client sees the answer; ``status`` is None for a call dropped unanswered.
    """

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_emulator/"):
            await self.app(scope, receive, send)
            return
        entry = scope[_LOG_ENTRY] = {
            "endpoint": _endpoint_name(self.app, scope),
            "method": scope["method"],
            "path": scope["path"],
            "status": None,
            "dropped": False,
            "time": time.time(),
        }

        async def record_then_send(message: Any) -> None:
            if message["type"] == "http.response.start" and not entry["dropped"]:
                entry["status"] = message["status"]
                _record(self.state, scope)
            await send(message)

        try:
            await self.app(scope, receive, record_then_send)
        finally:
            _record(self.state, scope)


def _record(state: EmulatorState, scope: Scope) -> None:
    """Append the call's log entry once, naming the endpoint of the route it matched."""
    if scope.get(_LOGGED):
        return
    scope[_LOGGED] = True
    entry = scope[_LOG_ENTRY]
    entry["endpoint"] = entry["endpoint"] or getattr(scope.get("route"), "name", None)
    state.log_request(entry)


def _endpoint_name(app: Any, scope: Scope) -> str | None:
    """The name of the route a request matches (Starlette before 0.49, which Airflow 3.1 pins, sets no
    ``scope["route"]``)."""
    for route in getattr(app, "routes", ()):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route.name
    return None


async def _refusal_response(request: Request, refusal: Refusal) -> Response:
    body = refusal.body
    if isinstance(body, str):
        return HTMLResponse(body, status_code=refusal.status, headers=refusal.headers)
    return JSONResponse(body, status_code=refusal.status, headers=refusal.headers)


async def _dropped(request: Request, exc: Exception) -> Response:
    return Response(status_code=204)  # never sent: the connection is already closed


async def _routing_error(request: Request, exc: HTTPException) -> Response:
    """Unknown paths answer 404 JSON; a wrong method answers 405 with an HTML page, like Segmind's gateway."""
    if exc.status_code == 405:
        return await _refusal_response(request, Refusal(405))
    return await _refusal_response(request, Refusal(exc.status_code, "Not found" if exc.status_code == 404 else None))


async def _json_body(request: Request) -> dict[str, Any]:
    """The flat JSON object of a POST, refusing a wrong content type (406) or a body that is not one (400)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Refusal(406, "Content-Type must be application/json")
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise Refusal(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "The request body must be a JSON object")
    return body


async def _control_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise Refusal(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "The request body must be a JSON object")
    return body


def _required(body: dict[str, Any], name: str) -> Any:
    if body.get(name) in (None, ""):
        raise Refusal(400, f"{name}: required")
    return body[name]


def _decode_data_url(url: Any) -> tuple[str, bytes]:
    match = _DATA_URL.match(url) if isinstance(url, str) else None
    try:
        if match is None:
            raise ValueError
        return match["mime"], base64.b64decode(match["data"], validate=True)
    except (ValueError, binascii.Error):
        raise Refusal(400, "data_urls: each item must be a data:<mime>;base64,<data> URL") from None


def _parse_range(header: str | None, total: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a single ``bytes=`` range; None to serve it all; 416 when it cannot be satisfied."""
    match = _RANGE.match(header.strip()) if header else None
    if match is None or not (match["start"] or match["end"]):
        return None
    if not match["start"]:
        start, stop = max(0, total - int(match["end"])), total
    else:
        start, stop = int(match["start"]), min(total, int(match["end"]) + 1 if match["end"] else total)
    if start >= total or start >= stop:
        raise Refusal(416, f"Range {header} is outside the {total}-byte file", {"content-range": f"bytes */{total}"})
    return start, stop


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _output_url(request: Request, job: Job) -> str:
    return f"{_base_url(request)}/outputs/{job.request_id}.mp4"


def _dimensions(size: str) -> tuple[int, int]:
    width, height = size.split("x")
    return int(width), int(height)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def main(argv: list[str] | None = None) -> int:
    """``sora2-emulator``: serve until SIGINT or SIGTERM; the first line on stdout is the base URL."""
    parser = argparse.ArgumentParser(prog="sora2-emulator", description="A local emulator of Segmind's Sora 2 API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="multiplies generation and expiry times")
    parser.add_argument("--api-key", action="append", help=f"accepted key, repeatable (default {DEFAULT_API_KEY})")
    parser.add_argument("--balance", type=float, default=DEFAULT_BALANCE, help="credits of each key")
    parser.add_argument("--free-credits", type=float, default=0.0)
    parser.add_argument("--rate-limit-rpm", type=int, default=None, help="calls a key may make per window")
    parser.add_argument("--rate-limit-window", type=float, default=60.0, help="seconds (real, not scaled)")
    parser.add_argument("--record-ttl-seconds", type=float, default=3600.0, help="v2 record lifetime (scaled)")
    parser.add_argument("--pad-output-to", type=int, default=None, help="serve MP4s padded to this many bytes")
    args = parser.parse_args(argv)
    emulator = Sora2Emulator(
        args.host,
        args.port,
        time_scale=args.time_scale,
        api_keys={key: args.balance for key in (args.api_key or [DEFAULT_API_KEY])},
        free_credits=args.free_credits,
        rate_limit_rpm=args.rate_limit_rpm,
        rate_limit_window=args.rate_limit_window,
        record_ttl_seconds=args.record_ttl_seconds,
        pad_output_to=args.pad_output_to,
    )
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    with emulator:
        print(emulator.url, flush=True)
        print("Sora 2 emulator ready; controls under /_emulator/. Ctrl+C stops it.", file=sys.stderr, flush=True)
        while not stopping.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
