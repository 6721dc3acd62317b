"""The emulator's ASGI app: the Segmind routes, the test controls under ``/_emulator/`` and the request log, built
on the state, the videos and the connection-closing callable the emulator gives it."""

from __future__ import annotations

import time
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from sora2_provider.testing._api import (
    Api,
    DropConnection,
    Dropped,
    dropped,
    json_object,
    refusal_response,
    required,
    routing_error,
)
from sora2_provider.testing._outputs import OutputVideos
from sora2_provider.testing._refusal import Refusal
from sora2_provider.testing.backend import EmulatorState

_LOG_ENTRY = "sora2.log_entry"
_LOGGED = "sora2.logged"


def build_app(state: EmulatorState, videos: OutputVideos, close_connection: DropConnection) -> ASGIApp:
    """The whole app; ``close_connection`` closes a request's connection and waits until it is gone."""

    async def drop(scope: Scope) -> None:
        """Close the client's connection (buffered bytes are still sent), logging the call as dropped."""
        if _LOG_ENTRY in scope:
            scope[_LOG_ENTRY]["dropped"] = True
            _record(state, scope)
        await close_connection(scope)

    return _RequestLog(_routes(state, videos, drop), state)


class _Controls:
    """Test controls under ``/_emulator/``: no key, never faulted, never logged."""

    def __init__(self, state: EmulatorState, videos: OutputVideos) -> None:
        self.state, self.videos = state, videos

    async def balance(self, request: Request) -> Response:
        body = await json_object(request)
        api_key = required(body, "api_key")
        self.state.set_balance(api_key, body.get("credits"), body.get("free_credits"))
        return JSONResponse(self.state.balance(api_key).as_dict())

    async def faults(self, request: Request) -> Response:
        body = await json_object(request)
        endpoint, kind = required(body, "endpoint"), required(body, "kind")
        options = {k: body[k] for k in ("on_call", "times", "status", "message", "delay", "after_bytes") if k in body}
        try:
            self.state.add_fault(endpoint, kind, **options)
        except (ValueError, TypeError) as err:
            raise Refusal(400, str(err)) from None
        return JSONResponse({"ok": True})

    async def clear_faults(self, request: Request) -> Response:
        self.state.clear_faults()
        return JSONResponse({"ok": True})

    async def models(self, request: Request) -> Response:
        body = await json_object(request)
        try:
            self.state.set_model_state(required(body, "model"), required(body, "state"))
        except ValueError as err:
            raise Refusal(400, str(err)) from None
        return JSONResponse({"ok": True})

    async def ledger(self, request: Request) -> Response:
        state = self.state
        body = {"ledger": state.ledger(), "charges": state.charges(), "running_jobs_peak": state.running_jobs_peak()}
        return JSONResponse(body)

    async def requests(self, request: Request) -> Response:
        return JSONResponse({"requests": self.state.logged_requests()})

    async def expire(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        try:
            self.state.expire(request_id)
        except KeyError:
            raise Refusal(404, f"Request {request_id} not found") from None
        return JSONResponse({"ok": True})

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        self.videos.clear()
        return JSONResponse({"ok": True})


def _routes(state: EmulatorState, videos: OutputVideos, drop: DropConnection) -> Starlette:
    api, controls = Api(state, videos, drop), _Controls(state, videos)
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
    handlers: dict[Any, Any] = {Refusal: refusal_response, HTTPException: routing_error, Dropped: dropped}
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
