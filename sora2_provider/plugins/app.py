"""The FastAPI app behind the plugin's views (the Sora 2 page, the Video tab, the MP4 bytes), mounted by the
api-server at ``/sora2``; every route checks the signed-in user's right to read the DAG first."""

from __future__ import annotations

import logging
import threading
import time
from datetime import date, datetime, timezone
from typing import Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import ConnectionDetails, DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, get_user, requires_access_dag
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse

from sora2_provider._http_range import RangeNotSatisfiable, byte_range
from sora2_provider.compat import conf
from sora2_provider.exceptions import Sora2Error
from sora2_provider.hooks.sora2 import Sora2Hook
from sora2_provider.models import MODELS
from sora2_provider.plugins import media, pages
from sora2_provider.plugins.records import (
    BadIdentity,
    Filters,
    Identity,
    generation_dag_ids,
    load_generation,
    recent_generations,
    spend_per_day,
)

__all__ = ["build_app"]

log = logging.getLogger(__name__)

#: How many generations the Sora 2 page shows at most.
PAGE_SIZE = 60
#: The balance shown on the Sora 2 page is read at most this often (seconds) per connection.
BALANCE_TTL = 60.0
BYTES_PATH = "/video/bytes"
ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#7c3aed" stroke-width="2">'
    '<rect x="2" y="5" width="14" height="14" rx="2"/><path d="M16 10l6-3v10l-6-3z"/></svg>'
)
READ_XCOMS = Depends(requires_access_dag("GET", DagAccessEntity.XCOM))

router = APIRouter()


def build_app() -> FastAPI:
    """The app Airflow mounts at ``/sora2``."""
    app = FastAPI(title="Sora 2 videos", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(HTTPException, _refused)
    app.add_exception_handler(BadIdentity, _bad_identity)
    app.include_router(router)
    return app


async def _refused(request: Request, err: Any) -> Response:
    detail = err.detail if isinstance(err.detail, str) else "refused"
    if err.status_code == 401:
        detail = f"{detail}: sign in to Airflow first"
    return _one_line(request, err.status_code, detail)


async def _bad_identity(request: Request, err: Any) -> Response:
    return _one_line(request, err.status, err.message)


def _one_line(request: Request, status: int, message: str) -> Response:
    if request.url.path.endswith(BYTES_PATH):
        return PlainTextResponse(message + "\n", status_code=status)
    return HTMLResponse(pages.message_page(status, message), status_code=status)


# ---------------------------------------------------------------------------------------------- routes


@router.get("/", dependencies=[READ_XCOMS])
def sora2_page(
    user: GetUserDep,
    session: SessionDep,
    dag_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    model: str | None = None,
) -> HTMLResponse:
    """Recent generations of the DAGs the user may read, the spend per day and the balance."""
    filters = Filters(dag_id or None, _day("since", since), _day("until", until), model or None)
    readable = _readable_dag_ids(user)
    now = datetime.now(timezone.utc)
    html = pages.gallery_page(
        generations=recent_generations(session, readable, filters, PAGE_SIZE),
        filters=filters,
        dag_ids=generation_dag_ids(session, readable),
        models=list(MODELS),
        spend=spend_per_day(session, readable, now.date()),
        balance=_balance_box(user),
        now=now,
    )
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.get("/video", dependencies=[READ_XCOMS])
def video_tab(
    session: SessionDep,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
    map_index: str | None = None,
) -> HTMLResponse:
    """The Video tab of one task instance: the player and the facts, or why there is no video."""
    generation = load_generation(session, Identity.parse(dag_id, run_id, task_id, map_index))
    html = pages.video_page(generation, datetime.now(timezone.utc))
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@router.api_route(BYTES_PATH, methods=["GET", "HEAD"], dependencies=[READ_XCOMS])
def video_bytes(
    request: Request,
    session: SessionDep,
    dag_id: str | None = None,
    run_id: str | None = None,
    task_id: str | None = None,
    map_index: str | None = None,
) -> Response:
    """The MP4 recorded in the task instance's XCom (and nothing else), whole or one ``Range`` of it."""
    generation = load_generation(session, Identity.parse(dag_id, run_id, task_id, map_index))
    video = media.open_stored(media.verified_uri(generation))
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-store",  # a private video stays out of the browser's disk cache
        "Content-Disposition": "inline",
        "X-Content-Type-Options": "nosniff",
    }
    sha256 = (generation.result or {}).get("sha256")
    if isinstance(sha256, str):
        headers["ETag"] = f'"{sha256}"'
    content_type = str((generation.result or {}).get("content_type") or "video/mp4")
    try:
        wanted = byte_range(request.headers.get("range"), video.size)
    except RangeNotSatisfiable:
        headers["Content-Range"] = f"bytes */{video.size}"
        return PlainTextResponse("the range starts past the end of the video\n", status_code=416, headers=headers)
    start, stop, status = 0, video.size, 200
    if wanted is not None:
        (start, stop), status = wanted, 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{video.size}"
    headers["Content-Length"] = str(stop - start)
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=content_type)
    body = media.read_range(video, start, stop)
    return StreamingResponse(body, status_code=status, headers=headers, media_type=content_type)


@router.get("/icon.svg", dependencies=[Depends(get_user)])
def icon() -> Response:
    return Response(ICON, media_type="image/svg+xml", headers={"Cache-Control": "private, max-age=86400"})


# ---------------------------------------------------------------------------------------------- helpers


def _day(name: str, value: str | None) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadIdentity(400, f"{name} {value!r} is not a date (YYYY-MM-DD)") from None


def _auth_manager() -> Any:
    return get_auth_manager()


def _readable_dag_ids(user: Any) -> set[str]:
    """The DAGs the user may read, by the auth manager's rule (the one the DAG list of the UI applies)."""
    return set(_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def balance_conn_id() -> str:
    """The connection whose balance the Sora 2 page shows: ``[sora2] balance_conn_id``, default ``sora2_default``."""
    return conf.get("sora2", "balance_conn_id", fallback="sora2_default") or "sora2_default"


def _balance_box(user: Any) -> str:
    """The balance for users who may read the connection (the rule of the UI's Connections page)."""
    conn_id = balance_conn_id()
    allowed = _auth_manager().is_authorized_connection(
        method="GET", details=ConnectionDetails(conn_id=conn_id), user=user
    )
    if not allowed:
        return pages.balance_box(conn_id, None, "shown to users who may read this connection")
    credits, problem = _cached_balance(conn_id)
    return pages.balance_box(conn_id, credits, problem)


_balances: dict[str, tuple[float, dict[str, float] | None, str | None]] = {}
_balance_lock = threading.Lock()


def _cached_balance(conn_id: str) -> tuple[dict[str, float] | None, str | None]:
    """One credits call per connection and ``BALANCE_TTL`` (a failed one is remembered as long)."""
    with _balance_lock:
        read_at, credits, problem = _balances.get(conn_id, (float("-inf"), None, None))
        if time.monotonic() - read_at >= BALANCE_TTL:
            credits, problem = _read_balance(conn_id)
            _balances[conn_id] = (time.monotonic(), credits, problem)
        return credits, problem


def _read_balance(conn_id: str) -> tuple[dict[str, float] | None, str | None]:
    try:
        return Sora2Hook(conn_id, max_retries=0).get_credits(), None
    except Sora2Error as err:  # the provider's messages never hold the key
        return None, f"unavailable: {err}"
    except Exception as err:  # anything else: its type only, its text could come from anywhere
        log.warning("Reading the Sora 2 balance of %s failed: %s", conn_id, type(err).__name__)
        return None, f"unavailable ({type(err).__name__})"
