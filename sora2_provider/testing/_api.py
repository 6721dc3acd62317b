"""The emulator's Segmind endpoints (see ``segmind-api.md``) and the HTTP details they share: request bodies, ranges,
faults and the error pages a refused call answers with. They work on the state, videos and connection-dropping
callable they are given; :mod:`sora2_provider.testing._app` mounts them."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from starlette.concurrency import iterate_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.types import Scope

from sora2_provider._http_range import RangeNotSatisfiable, byte_range
from sora2_provider.testing._faults import Fault
from sora2_provider.testing._history_query import HistoryQuery
from sora2_provider.testing._outputs import OutputVideos
from sora2_provider.testing._refusal import Refusal, rate_limit_headers
from sora2_provider.testing.backend import DEFAULT_FAIL_MESSAGE, EmulatorState, Job
from sora2_provider.testing.video import pad_mp4

DropConnection = Callable[[Scope], Awaitable[None]]

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)$", re.DOTALL)


class Dropped(Exception):
    """The connection was closed on purpose; nothing more is sent."""


@dataclass
class _Call:
    """What :meth:`Api.begin` learnt about one call: the caller's key and the faults that apply."""

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


class Api:
    """The Segmind endpoints; each handler is one ``begin`` (faults, key, rate limit) and its own logic.

    ``drop_connection`` closes a request's connection (and waits until it is gone), for the faults that need it."""

    def __init__(self, state: EmulatorState, videos: OutputVideos, drop_connection: DropConnection) -> None:
        self.state, self.videos, self.drop_connection = state, videos, drop_connection

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
        await self.drop_connection(request.scope)
        raise Dropped

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
        """The job's MP4 (rendered off the event loop when new) and the size it is served at."""
        return await asyncio.to_thread(self.videos.file, job)

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
        wanted = _satisfiable_range(request.headers.get("range"), total) if ranged else None
        if wanted:
            (start, stop), status = wanted, 206
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
                await self.drop_connection(request.scope)
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
        jobs, total = query.page_of(self.state.listed_jobs(call.api_key), time.time())
        rows = [self.state.history_row(job, _output_url(request, job)) for job in jobs]
        return JSONResponse({"data": rows, "page": query.page, "per_page": query.per_page, "total": total})

    async def history_item(self, request: Request) -> Response:
        call = await self.begin(request, "history_item")
        job = self.state.history_job(call.api_key, request.path_params["request_id"])
        return JSONResponse(self.state.history_row(job, _output_url(request, job)))


async def refusal_response(request: Request, refusal: Refusal) -> Response:
    body = refusal.body
    if isinstance(body, str):
        return HTMLResponse(body, status_code=refusal.status, headers=refusal.headers)
    return JSONResponse(body, status_code=refusal.status, headers=refusal.headers)


async def dropped(request: Request, exc: Exception) -> Response:
    return Response(status_code=204)  # never sent: the connection is already closed


async def routing_error(request: Request, exc: HTTPException) -> Response:
    """Unknown paths answer 404 JSON; a wrong method answers 405 with an HTML page, like Segmind's gateway."""
    if exc.status_code == 405:
        return await refusal_response(request, Refusal(405))
    return await refusal_response(request, Refusal(exc.status_code, "Not found" if exc.status_code == 404 else None))


async def _json_body(request: Request) -> dict[str, Any]:
    """The flat JSON object of a POST, refusing a wrong content type (406) or a body that is not one (400)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise Refusal(406, "Content-Type must be application/json")
    return await json_object(request, empty=b"null")


async def json_object(request: Request, empty: bytes = b"{}") -> dict[str, Any]:
    """The request body as a JSON object (``empty`` stands for a missing body); 400 when it is not one."""
    try:
        body = json.loads(await request.body() or empty)
    except ValueError:
        raise Refusal(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "The request body must be a JSON object")
    return body


def required(body: dict[str, Any], name: str) -> Any:
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


def _satisfiable_range(header: str | None, total: int) -> tuple[int, int] | None:
    """``[start, stop)`` of a single ``bytes=`` range; None to serve it all; 416 when it cannot be satisfied."""
    try:
        return byte_range(header, total)
    except RangeNotSatisfiable:
        unsatisfiable = {"content-range": f"bytes */{total}"}
        raise Refusal(416, f"Range {header} is outside the {total}-byte file", unsatisfiable) from None


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _output_url(request: Request, job: Job) -> str:
    return f"{_base_url(request)}/outputs/{job.request_id}.mp4"
