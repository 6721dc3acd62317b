"""The hook that speaks to Segmind's Sora 2 API: the only place in this provider that does HTTP.

Connection (type ``sora2``): password = API key; host, when set, replaces ``https://api.segmind.com``
and, unless the extras ``upload_host``/``history_host`` say otherwise, the upload and history hosts too.
Extras ``timeout`` (read, default 60 s) and ``connect_timeout`` (default 10 s) apply to every call;
the blocking v1 call waits ten times ``timeout``.

Retries (tenacity): every call that cannot start a paid job (status, result, credits, history, downloads and
image uploads, where a repeat at worst stores the same image twice) is retried on 429 (until the
``x-rate-limit-reset-at-utc`` time, capped by ``max_wait``), on 5xx and on dropped connections or timeouts,
with exponential backoff and jitter. A paid submit (``POST /v2/{model}``, ``POST /v1/{model}``) is retried
only when Segmind cannot have started the job: a 429, or a connection that failed before anything was sent.
Anything else after the body left raises :class:`~sora2_provider.exceptions.Sora2SubmitUncertainError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import mimetypes
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests
import tenacity
from airflow.sdk import BaseHook
from urllib3.exceptions import ConnectTimeoutError

from sora2_provider.exceptions import (
    Sora2AuthError,
    Sora2ConfigError,
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
from sora2_provider.hooks._limiter import CallBudget, budget_for
from sora2_provider.hooks._wire import (
    CHUNK_SIZE,
    IncompleteDownloadError,
    VideoSink,
    credit_numbers,
    error_text,
    history_record,
    history_row,
    history_rows,
    is_failed_body,
    json_body,
    output_url,
    parse_timestamp,
    to_float,
)
from sora2_provider.models import (
    DownloadResult,
    HistoryRecord,
    JobResult,
    JobStatus,
    SubmittedJob,
    SyncResult,
    VideoRequest,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection

SEGMIND_API_URL = "https://api.segmind.com"
SEGMIND_UPLOAD_URL = "https://workflows-api.segmind.com"
SEGMIND_HISTORY_URL = "https://api.spotprod.segmind.com"
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
SYNC_TIMEOUT_FACTOR = 10
MAX_IMAGE_BYTES = 20 * 1024 * 1024
WRITE_BLOCK_SIZE = 8 * 1024 * 1024  # object-storage part size when streaming a video (S3's minimum is 5 MiB)
RESET_MARGIN = 0.1  # seconds added to the rate-limit reset time, against clock granularity
USER_AGENT = "airflow-provider-sora2"

_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_ERRORS: dict[int, tuple[type[Sora2Error], str]] = {
    400: (Sora2ValidationError, "Segmind rejected a parameter"),
    401: (Sora2AuthError, "the API key is missing or invalid"),
    403: (Sora2AuthError, "the API key may not do this (model not allowed for the account)"),
    404: (
        Sora2NotFoundError,
        "not found: unknown model, or a request id that is unknown or whose 1-hour record expired",
    ),
    405: (Sora2Error, "method not allowed"),
    410: (Sora2ModelRetiredError, "the model is retired"),
    422: (Sora2ValidationError, "Segmind rejected a parameter"),
}
#: Set by the async methods around their worker-thread call: ``[True]`` while the turn the coroutine awaited is
#: unused. In such a thread a 429 is not waited out (the coroutine waits, with ``asyncio.sleep``).
_AWAITED_TURN: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("sora2_awaited_turn", default=None)
# Errors raised by requests after the request may have left: a paid call must not be repeated on these.
_SENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class _KeySafeSession(requests.Session):
    """A session that drops ``x-api-key`` on a redirect to another host, as requests does for Authorization."""

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        if response.request.url and self.should_strip_auth(response.request.url, prepared_request.url or ""):
            prepared_request.headers.pop("x-api-key", None)
        super().rebuild_auth(prepared_request, response)


@dataclass(frozen=True)
class _PaidCall:
    """A billable POST in flight: what is known when its answer is lost."""

    request: VideoRequest
    endpoint: str
    started_at: datetime

    def uncertain(self, detail: str, **kw: Any) -> Sora2SubmitUncertainError:
        r = self.request
        return Sora2SubmitUncertainError(
            f"{self.endpoint} {r.model} ({r.duration} s, {r.size}) sent at {self.started_at.isoformat()}: {detail}. "
            f"Segmind may have created the job and charged for it (about {r.estimated_cost:.2f} credits). "
            f"It was NOT resubmitted: look it up with find_requests(model={r.model!r}, "
            f"since={self.started_at.isoformat()!r}) before submitting again",
            model=r.model,
            sent_at=self.started_at,
            **kw,
        )


def _never_sent(err: requests.RequestException) -> bool:
    """Whether requests failed before a connection existed, so the server cannot have seen the request."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(err, requests.ConnectionError) and isinstance(reason, ConnectTimeoutError)


def _usable_url(url: str) -> bool:
    """An http(s) URL with a host, a valid port and no white space."""
    try:
        parts = urlsplit(url)
        return (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and parts.port != 0
            and not any(ch.isspace() for ch in url)
        )
    except ValueError:  # a bad port or IPv6 literal
        return False


def _host_url(host: str | None, schema: str | None = None, port: int | None = None) -> str | None:
    """A base URL from a connection host: keeps a given scheme, else ``schema`` or https; adds ``port``."""
    host = (host or "").strip().rstrip("/")
    if not host:
        return None
    if "://" not in host:
        host = f"{schema if schema in ('http', 'https') else 'https'}://{host}"
    if port and urlsplit(host).port is None:
        parts = urlsplit(host)
        host = parts._replace(netloc=f"{parts.netloc}:{port}").geturl()
    return host


def _image_mime(data: bytes, name: str) -> str:
    for signature, mime in _IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed = mimetypes.guess_type(name)[0]
    if guessed and guessed.startswith("image/"):
        return guessed
    raise ValueError(f"source: {name} is not a PNG, JPEG, WEBP or GIF image")


def _as_path(location: Any) -> Any:
    """An ``ObjectStoragePath`` for URLs (``s3://``, ``file://``...) and object-storage paths, else a local Path."""
    from airflow.sdk import ObjectStoragePath

    if isinstance(location, ObjectStoragePath):
        return location
    if isinstance(location, str) and "://" in location:
        return ObjectStoragePath(location)
    return Path(os.fspath(location))


@contextmanager
def _open_destination(destination: Any) -> Iterator[IO[bytes]]:
    """An open binary file for ``destination``: a file object (left open), an ObjectStoragePath, or a path.

    Object storage is written in ``WRITE_BLOCK_SIZE`` parts (s3fs would buffer 50 MiB by default). A failed
    download may leave a partial file behind: callers write to a temporary name.
    """
    if hasattr(destination, "write"):
        yield destination
        return
    path = _as_path(destination)
    opened = path.open("wb") if isinstance(path, Path) else path.open("wb", block_size=WRITE_BLOCK_SIZE)
    with opened as fh:
        yield fh


class Sora2Hook(BaseHook):
    """
    Interact with Segmind's Sora 2 text-to-video API.

    :param sora2_conn_id: connection of type ``sora2``; its password is the Segmind API key.
    :param max_retries: retries of a failed call that is safe to repeat (0 disables retrying).
    :param max_wait: longest single wait in seconds before a retry, including a rate-limit wait.

    ``retry_backoff_initial`` and ``retry_backoff_max`` (seconds) shape the exponential backoff; set them on
    an instance to change it (tests use tiny values).
    """

    conn_name_attr = "sora2_conn_id"
    default_conn_name = "sora2_default"
    conn_type = "sora2"
    hook_name = "Segmind Sora 2"

    retry_backoff_initial = 0.5
    retry_backoff_max = 30.0

    def __init__(self, sora2_conn_id: str = default_conn_name, *, max_retries: int = 5, max_wait: float = 60.0) -> None:
        super().__init__()
        self.sora2_conn_id = sora2_conn_id
        self.max_retries = max_retries
        self.max_wait = max_wait
        self._conn: Connection | None = None
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()
        self._secret: str | None = None
        self._extra: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sora2_conn_id={self.sora2_conn_id!r})"

    # ------------------------------------------------------------------ connection

    @property
    def connection(self) -> Connection:
        """The Airflow connection, looked up once on first use."""
        if self._conn is None:
            try:
                self._conn = self.get_connection(self.sora2_conn_id)
            except Exception as err:  # Airflow's "isn't defined" error differs between versions and contexts
                raise self._undefined(err) from None
        return self._conn

    def _undefined(self, err: Exception) -> Sora2ConfigError:
        return Sora2ConfigError(
            f"sora2_conn_id: connection {self.sora2_conn_id!r} is not defined ({type(err).__name__}); "
            "create a 'sora2' connection whose password is the Segmind API key"
        )

    @property
    def extras(self) -> dict[str, Any]:
        """The connection's extras, read once: ``extra_dejson`` registers secret masks, which Airflow 3.1 only
        allows from the thread that talks to the supervisor."""
        if self._extra is None:
            self._extra = dict(self.connection.extra_dejson)
        return self._extra

    def validate_connection(self) -> None:
        """Refuse, before anything is sent, a connection no request could use: each host must be an http(s) URL
        and the numeric extras numbers. Raises :class:`Sora2ConfigError` naming the field."""
        try:
            _ = (self.timeouts, self.retry_backoff)
        except ValueError as err:
            raise Sora2ConfigError(str(err)) from None
        hosts = {"host": self.base_url, "upload_host": self.upload_url, "history_host": self.history_url}
        for field, url in hosts.items():
            if not _usable_url(url):
                raise Sora2ConfigError(
                    f"connection {self.sora2_conn_id!r}: {field} {url!r} is not a usable URL; allowed values: an "
                    "http(s) URL such as 'https://api.segmind.com' (or empty for Segmind's own hosts)"
                )

    @property
    def base_url(self) -> str:
        """Inference and credits host: the connection host, else ``https://api.segmind.com``."""
        conn = self.connection
        return _host_url(conn.host, conn.schema, conn.port) or SEGMIND_API_URL

    @property
    def upload_url(self) -> str:
        """Upload host: extra ``upload_host``, else the connection host, else Segmind's upload host."""
        return self._secondary_url("upload_host", SEGMIND_UPLOAD_URL)

    @property
    def history_url(self) -> str:
        """History host: extra ``history_host``, else the connection host, else Segmind's history host."""
        return self._secondary_url("history_host", SEGMIND_HISTORY_URL)

    def _secondary_url(self, extra_key: str, default: str) -> str:
        conn = self.connection
        override = _host_url(self.extras.get(extra_key))
        return override or (self.base_url if conn.host else default)

    @property
    def timeouts(self) -> tuple[float, float]:
        """(connect, read) seconds from the extras ``connect_timeout`` and ``timeout``."""
        extra = self.extras
        return (
            self._extra_seconds(extra, "connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            self._extra_seconds(extra, "timeout", DEFAULT_TIMEOUT),
        )

    def _extra_seconds(self, extra: dict[str, Any], key: str, default: float) -> float:
        value = extra.get(key)
        if value in (None, ""):
            return default
        seconds = to_float(value)
        if seconds is None or seconds <= 0:
            raise ValueError(f"connection {self.sora2_conn_id!r}: extra {key}={value!r} must be a positive number")
        return seconds

    def get_conn(self) -> requests.Session:
        """The hook's one ``requests.Session``, carrying the ``x-api-key`` header (masked in Airflow logs)."""
        with self._session_lock:  # the async methods call in from worker threads
            if self._session is None:
                self._session = self._new_session()
            return self._session

    def _new_session(self) -> requests.Session:
        key = (self.connection.password or "").strip()
        if not key:
            raise Sora2AuthError(f"connection {self.sora2_conn_id!r} has no API key: put the Segmind key in password")
        self.validate_connection()
        from airflow.sdk.log import mask_secret

        mask_secret(key)
        self._secret = key
        session = _KeySafeSession()
        session.headers.update({"x-api-key": key, "Accept": "application/json", "User-Agent": USER_AGENT})
        return session

    @property
    def budget(self) -> CallBudget:
        """The call budget this connection (id and host) shares with every hook of this process (``_limiter``).

        Resolves the connection on first use: in a trigger, await :meth:`aprepare` first."""
        return budget_for(f"{self.sora2_conn_id}|{self.base_url}")

    def _redact(self, text: str | None) -> str | None:
        if text and self._secret:
            return text.replace(self._secret, "***")
        return text

    # ------------------------------------------------------------------ transport

    @property
    def retry_backoff(self) -> float:
        """First backoff delay in seconds: the extra ``retry_backoff``, else ``retry_backoff_initial``."""
        return self._extra_seconds(self.extras, "retry_backoff", self.retry_backoff_initial)

    def _retrying(self) -> tenacity.Retrying:
        initial = self.retry_backoff
        # Not wait_exponential_jitter: its ``multiplier`` needs tenacity >= 9.2, and the Google provider's
        # google-genai caps tenacity below 9.2 (the ``gcs`` extra); these two work on every tenacity 8-9.
        backoff = tenacity.wait_exponential(multiplier=initial, max=self.retry_backoff_max) + tenacity.wait_random(
            0, initial
        )

        def wait(state: tenacity.RetryCallState) -> float:
            err = state.outcome.exception() if state.outcome else None
            if isinstance(err, Sora2RateLimitedError) and err.reset_at is not None:
                delay = err.reset_at - time.time() + RESET_MARGIN
            else:
                delay = backoff(state)
            return max(0.0, min(delay, self.max_wait))

        retried: tuple[type[Exception], ...] = (Sora2ServerError, IncompleteDownloadError)
        if _AWAITED_TURN.get() is None:  # in a trigger's thread the coroutine waits out a 429 instead
            retried = (Sora2RateLimitedError, *retried)
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(retried),
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=wait,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        sleep = state.next_action.sleep if state.next_action else 0.0
        self.log.warning("%s; retry %d of %d in %.2f s", err, state.attempt_number, self.max_retries, sleep)

    def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        paid: _PaidCall | None = None,
        request_id: str | None = None,
        failed_is_payload: bool = False,
        keyed: bool = True,
        **kwargs: Any,
    ) -> requests.Response:
        """One HTTP exchange; answers >= 400 and transport failures become :class:`Sora2Error` subclasses.

        A keyed call takes its turn in the connection's call budget first (``keyed=False``: downloads)."""
        kwargs.setdefault("timeout", self.timeouts)
        session = self.get_conn()
        if keyed:
            self._take_turn()
        started = time.monotonic()
        try:
            response = session.request(method, url, **kwargs)
        except requests.RequestException as err:
            raise self._transport_error(err, what, paid) from err
        if keyed:
            reset = parse_timestamp(response.headers.get("x-rate-limit-reset-at-utc"))
            self.budget.record(response.status_code == 429, reset.timestamp() if reset else None)
        self.log.debug("%s %s -> HTTP %s in %.2f s", method, url, response.status_code, time.monotonic() - started)
        if response.status_code < 400 or (
            failed_is_payload and response.status_code == 422 and is_failed_body(response)
        ):
            return response
        with response:
            raise self._http_error(response, what, paid, request_id)

    def _take_turn(self) -> None:
        """Wait for a turn (worker side), or use the one the calling coroutine awaited (trigger side)."""
        awaited = _AWAITED_TURN.get()
        if awaited is None:
            self.budget.wait()
        elif awaited[0]:
            awaited[0] = False
        else:
            self.budget.count()

    def _transport_error(self, err: requests.RequestException, what: str, paid: _PaidCall | None) -> Sora2Error:
        detail = f"{type(err).__name__}: {self._redact(str(err))}"
        if _never_sent(err):
            return Sora2ServerError(f"{what}: could not connect, nothing was sent ({detail})")
        if not isinstance(err, _SENT_ERRORS):
            return Sora2Error(f"{what}: the request could not be made ({detail})")
        if paid is not None:
            return paid.uncertain(f"the answer was lost ({detail})")
        return Sora2ServerError(f"{what}: {detail}")

    def _http_error(
        self, response: requests.Response, what: str, paid: _PaidCall | None, request_id: str | None
    ) -> Sora2Error:
        code = response.status_code
        kw: dict[str, Any] = {
            "status_code": code,
            "segmind_message": self._redact(error_text(response)),
            "request_id": request_id or response.headers.get("x-request-id"),
        }
        if code >= 500:
            if paid is not None:
                return paid.uncertain(f"Segmind answered HTTP {code}", **kw)
            return Sora2ServerError(f"{what}: Segmind server or gateway error", **kw)
        if code == 429:
            reset = parse_timestamp(response.headers.get("x-rate-limit-reset-at-utc"))
            until = f" until {reset.isoformat()}" if reset else ""
            return Sora2RateLimitedError(
                f"{what}: rate limited{until}", reset_at=reset.timestamp() if reset else None, **kw
            )
        if code == 406:
            return self._not_acceptable(what, kw)
        if code in (401, 403):
            return Sora2AuthError(f"{what}: connection {self.sora2_conn_id!r}: {_ERRORS[code][1]}", **kw)
        error_class, reason = _ERRORS.get(code, (Sora2Error, "unexpected answer"))
        return error_class(f"{what}: {reason}", **kw)

    @staticmethod
    def _not_acceptable(what: str, kw: dict[str, Any]) -> Sora2Error:
        """406 is 'insufficient credits', or (rarely) a wrong content type, which is a request problem."""
        text = kw["segmind_message"] or ""
        if "content" in text.lower() and "type" in text.lower():
            return Sora2ValidationError(f"{what}: Segmind refused the content type", **kw)
        balance, required = credit_numbers(text)
        known = f" (balance {balance}, required {required})" if balance is not None or required is not None else ""
        return Sora2InsufficientCreditsError(
            f"{what}: not enough credits{known}", balance=balance, required=required, **kw
        )

    def _call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """:meth:`_send` under the retry policy."""
        return self._retrying()(self._send, method, url, **kwargs)

    def _call_json(self, method: str, url: str, *, what: str, **kwargs: Any) -> tuple[int, Any]:
        """Status code and JSON body of a retried call; a non-JSON success is an error."""
        with self._call(method, url, what=what, **kwargs) as response:
            body = json_body(response)
            if body is None:
                raise Sora2Error(
                    f"{what}: expected JSON, got {response.headers.get('Content-Type')!r}",
                    status_code=response.status_code,
                    segmind_message=self._redact(error_text(response)),
                )
            return response.status_code, body

    # ------------------------------------------------------------------ credits and connection test

    def get_credits(self) -> dict[str, float]:
        """Balance of the account: ``{"credits": float, "free_credits": float}`` (a free call)."""
        _, body = self._call_json("GET", f"{self.base_url}/v1/get-user-credits", what="credits check")
        body = body if isinstance(body, dict) else {}
        free = body.get("free-credits", body.get("free_credits"))
        return {"credits": to_float(body.get("credits")) or 0.0, "free_credits": to_float(free) or 0.0}

    def test_connection(self) -> tuple[bool, str]:
        """Check the key with the free credits call only; never starts a paid job."""
        self.max_retries = 0  # the UI waits on this button: answer at once instead of riding out an outage
        try:
            credits = self.get_credits()
        except Sora2Error as err:  # the UI tests a form under a throwaway id: naming it would only confuse
            return False, str(err).replace(f"connection {self.sora2_conn_id!r}: ", "")
        except Exception as err:  # the UI shows any failure as a message, not a traceback
            return False, f"{type(err).__name__}: {self._redact(str(err))}"
        return True, (
            f"Connected to {self.base_url}: {credits['credits']:g} credits, {credits['free_credits']:g} free credits"
        )

    # ------------------------------------------------------------------ async jobs (v2)

    def _paid_post(self, request: VideoRequest, version: str, **kwargs: Any) -> tuple[requests.Response, _PaidCall]:
        endpoint = f"POST /{version}/{request.model}"
        paid = _PaidCall(request, endpoint, datetime.now(timezone.utc))
        response = self._call(
            "POST",
            f"{self.base_url}/{version}/{request.model}",
            what=endpoint,
            paid=paid,
            json=request.to_body(),
            **kwargs,
        )
        return response, paid

    def submit(self, request: VideoRequest) -> SubmittedJob:
        """Start one paid job (``POST /v2/{model}``); never resubmits once the request may have arrived."""
        response, paid = self._paid_post(request, "v2")
        with response:
            body = json_body(response)
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not request_id or not isinstance(body, dict):
            raise paid.uncertain(
                "HTTP 200 without a request_id",
                status_code=response.status_code,
                segmind_message=self._redact(error_text(response)),
            )
        self.log.debug("Submitted %s job %s", request.model, request_id)
        return SubmittedJob(
            request_id=request_id,
            status=str(body.get("status") or "QUEUED"),
            status_url=body.get("status_url") or self._job_url(request_id, "/status"),
            response_url=body.get("response_url") or self._job_url(request_id),
        )

    def _job_url(self, request_id: str, suffix: str = "") -> str:
        return f"{self.base_url}/v2/requests/{quote(request_id, safe='')}{suffix}"

    def _job_json(self, request_id: str, suffix: str, what: str) -> dict[str, Any]:
        _, body = self._call_json(
            "GET", self._job_url(request_id, suffix), what=what, request_id=request_id, failed_is_payload=True
        )
        return body if isinstance(body, dict) else {}

    def get_status(self, request_id: str) -> JobStatus:
        """QUEUED, PROCESSING, COMPLETED or FAILED (FAILED, served as HTTP 422, is returned, not raised)."""
        body = self._job_json(request_id, "/status", f"status of {request_id}")
        metrics = body.get("metrics")
        return JobStatus(
            request_id=str(body.get("request_id") or request_id),
            status=str(body.get("status") or "UNKNOWN").upper(),
            error=body.get("error") or None,
            metrics=metrics if isinstance(metrics, dict) else {},
        )

    def get_result(self, request_id: str) -> JobResult:
        """Output URL, cost and metrics of a job; ``output_url`` is None while it is not COMPLETED.

        :raises Sora2JobFailedError: the job ended FAILED (not billed).
        """
        body = self._job_json(request_id, "", f"result of {request_id}")
        status = str(body.get("status") or ("COMPLETED" if output_url(body) else "UNKNOWN")).upper()
        if status == "FAILED":
            raise Sora2JobFailedError(
                f"job {request_id} FAILED (not billed)",
                segmind_message=self._redact(str(body.get("error") or "")) or None,
                request_id=request_id,
            )
        metrics = body.get("metrics")
        metrics = metrics if isinstance(metrics, dict) else {}
        return JobResult(
            request_id=str(body.get("request_id") or request_id),
            status=status,
            output_url=output_url(body) if status == "COMPLETED" else None,
            cost=to_float(metrics.get("cost")),
            remaining_credits=to_float(metrics.get("remaining_credits")),
            generation_seconds=to_float(metrics.get("inference_time")),
            metrics=metrics,
        )

    # ------------------------------------------------------------------ sync job (v1)

    def generate_sync(self, request: VideoRequest, destination: Any) -> SyncResult:
        """One paid blocking call (``POST /v1/{model}``) whose MP4 body is streamed to ``destination``.

        The read timeout is ten times the connection's ``timeout``. The call is billed once it answers 200:
        a body cut short raises :class:`Sora2DownloadError` naming the request id (it cannot be resumed).
        """
        connect, read = self.timeouts
        with _open_destination(destination) as fh:  # opened first: a bad destination fails before paying
            response, paid = self._paid_post(request, "v1", stream=True, timeout=(connect, read * SYNC_TIMEOUT_FACTOR))
            with response:
                request_id = response.headers.get("x-request-id")
                download = self._sync_body(response, VideoSink(fh, f"{paid.endpoint} request {request_id}"))
        return SyncResult(
            request_id=request_id,
            download=download,
            cost=to_float(response.headers.get("x-cost")),
            remaining_credits=to_float(response.headers.get("x-remaining-credits")),
            generation_seconds=to_float(response.headers.get("x-generation-time")),
        )

    def _sync_body(self, response: requests.Response, sink: VideoSink) -> DownloadResult:
        """Stream the v1 body; when Segmind answered JSON with an output URL instead, download that URL."""
        if "json" in (response.headers.get("Content-Type") or ""):
            url = output_url(json_body(response) or {})
            if not url:
                raise Sora2DownloadError(f"{sink.what}: JSON answer without an output URL (billed)")
            self._retrying()(self._download_attempt, url, sink)
            return sink.finish()
        sink.start(response)
        try:
            sink.pump(response.iter_content(CHUNK_SIZE))
            return sink.finish()
        except IncompleteDownloadError as err:
            raise Sora2DownloadError(f"{err}; the call was billed and its body cannot be resumed") from err

    # ------------------------------------------------------------------ downloads and uploads

    def download(self, url: str, destination: Any) -> DownloadResult:
        """Stream a finished video to ``destination`` (ObjectStoragePath, path, or open binary file).

        Memory stays within one 1 MiB chunk. A short read resumes with ``Range`` (or re-reads and skips what
        was written when the server ignores it); the MP4 signature is checked. The API key is not sent.
        """
        with _open_destination(destination) as fh:
            sink = VideoSink(fh, f"download of {url}")
            self._retrying()(self._download_attempt, url, sink)
        return sink.finish()

    def _download_attempt(self, url: str, sink: VideoSink) -> None:
        headers: dict[str, str | None] = {"x-api-key": None, "Accept-Encoding": "identity", "Accept": "*/*"}
        if sink.written:
            headers["Range"] = f"bytes={sink.written}-"
            if sink.validator:
                headers["If-Range"] = sink.validator
        with self._send("GET", url, what=sink.what, stream=True, headers=headers, keyed=False) as response:
            if sink.written:
                self.log.info("Resuming %s at byte %d (HTTP %d)", url, sink.written, response.status_code)
                chunks = sink.resume_from(response)
            else:
                sink.start(response)
                chunks = response.iter_content(CHUNK_SIZE)
            sink.pump(chunks)
        sink.finish()

    def upload_image(self, source: Any) -> str:
        """Host a local or object-storage image on Segmind and return its public URL (for ``input_reference``).

        ``source``: a local path, a ``file://`` or ``s3://...`` URL, or an ``ObjectStoragePath``.
        The upload is retried like a GET: a repeat at worst stores the same image twice, for free.
        """
        path = _as_path(source)
        with path.open("rb") as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"source: {source} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
        data_url = f"data:{_image_mime(data, path.name)};base64,{base64.b64encode(data).decode('ascii')}"
        _, body = self._call_json(
            "POST", f"{self.upload_url}/upload-asset", what=f"upload of {path.name}", json={"data_urls": [data_url]}
        )
        urls = body.get("file_urls") if isinstance(body, dict) else None
        if not isinstance(urls, list) or not urls or not isinstance(urls[0], str):
            raise Sora2Error(f"upload of {path.name}: the answer has no file_urls", segmind_message=str(body)[:300])
        return urls[0]

    # ------------------------------------------------------------------ request history

    def get_request_record(self, request_id: str) -> HistoryRecord:
        """The history row of one request of any age (status, cost, inputs as sent, output URL)."""
        url = f"{self.history_url}/inference-request/request-history/{quote(request_id, safe='')}"
        what = f"history of {request_id}"
        _, body = self._call_json("GET", url, what=what, request_id=request_id)
        row = history_row(body)
        if row is None:
            raise Sora2NotFoundError(f"{what}: the answer holds no request row", request_id=request_id)
        return history_record(row)

    def find_requests(
        self,
        model: str | None = None,
        since: datetime | None = None,
        *,
        status: str | None = None,
        per_page: int = 100,
        max_pages: int = 20,
    ) -> list[HistoryRecord]:
        """History rows newest first, paging until a row is older than ``since`` (naive = UTC) or rows run out.

        Segmind's history window spans at most 31 days; ``since`` older than that is refused (400).
        """
        if not 1 <= per_page <= 100:
            raise ValueError(f"per_page: {per_page!r} must be between 1 and 100")
        since_utc = since.replace(tzinfo=since.tzinfo or timezone.utc) if since else None
        params = self._history_params(model, since_utc, status, per_page)
        url = f"{self.history_url}/inference-request/request-history"
        found: list[HistoryRecord] = []
        for page in range(1, max_pages + 1):
            _, body = self._call_json("GET", url, what="history search", params={**params, "page": page})
            rows = history_rows(body)
            for record in map(history_record, rows):
                created = parse_timestamp(record.created_at)
                if since_utc and created and created < since_utc:
                    return found
                if (not model or record.model in (None, model)) and (not status or record.status == params["status"]):
                    found.append(record)
            if len(rows) < per_page:
                break
        return found

    @staticmethod
    def _history_params(model: str | None, since: datetime | None, status: str | None, per_page: int) -> dict:
        params: dict[str, Any] = {"per_page": per_page, "sort_by": "model_created", "sort_order": "desc"}
        params["model_name"] = model
        params["status"] = status.upper() if status else None
        if since is not None:
            params["from_date"] = since.astimezone(timezone.utc).date().isoformat()
            params["to_date"] = datetime.now(timezone.utc).date().isoformat()
        return params

    # ------------------------------------------------------------------ async counterparts (for triggers)

    async def aprepare(self) -> None:
        """Everything the calls need from Airflow, done here on the event loop's thread: look the connection up
        (async API), read its extras and register the key's mask. The worker threads below then only use plain
        values; on Airflow 3.1 a supervisor message from such a thread would take the whole triggerer down."""
        if self._conn is None:
            try:
                self._conn = await self.aget_connection(self.sora2_conn_id)
            except Exception as err:
                raise self._undefined(err) from None
        self.get_conn()  # no I/O: builds the session, reads the extras, masks the key

    async def _in_thread(self, method: Any, *args: Any) -> Any:
        """``method(*args)`` in a worker thread, after waiting for a turn of the call budget in the event loop.

        A 429 is waited out here (``asyncio.sleep`` until the reset), up to ``max_retries`` times, so no thread is
        held while the account's rate limit is spent."""
        await self.aprepare()
        attempt = 0
        while True:
            await self.budget.await_turn()
            context = contextvars.copy_context()
            context.run(_AWAITED_TURN.set, [True])
            try:
                return await asyncio.to_thread(context.run, method, *args)
            except Sora2RateLimitedError as err:
                attempt += 1
                if attempt > self.max_retries:
                    raise
                self.log.warning("%s; waiting for the reset (retry %d of %d)", err, attempt, self.max_retries)

    async def aget_status(self, request_id: str) -> JobStatus:
        """:meth:`get_status` in a worker thread: the event loop never blocks."""
        return await self._in_thread(self.get_status, request_id)

    async def aget_result(self, request_id: str) -> JobResult:
        """:meth:`get_result` in a worker thread."""
        return await self._in_thread(self.get_result, request_id)

    async def aget_credits(self) -> dict[str, float]:
        """:meth:`get_credits` in a worker thread."""
        return await self._in_thread(self.get_credits)

    async def aget_request_record(self, request_id: str) -> HistoryRecord:
        """:meth:`get_request_record` in a worker thread (recovers a job whose v2 record expired)."""
        return await self._in_thread(self.get_request_record, request_id)

    async def afind_requests(self, since: datetime, per_page: int = 100) -> list[HistoryRecord]:
        """:meth:`find_requests` (every model and status, newest first, back to ``since``) in a worker thread."""
        return await self._in_thread(lambda: self.find_requests(since=since, per_page=per_page))
