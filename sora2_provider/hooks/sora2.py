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

import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import requests
import tenacity
from airflow.sdk import BaseHook

from sora2_provider.exceptions import (
    Sora2AuthError,
    Sora2ConfigError,
    Sora2Error,
    Sora2InsufficientCreditsError,
    Sora2JobFailedError,
    Sora2RateLimitedError,
    Sora2ServerError,
    Sora2ValidationError,
)
from sora2_provider.hooks._async import AsyncMixin
from sora2_provider.hooks._history import HistoryMixin
from sora2_provider.hooks._http import (
    ERRORS,
    SENT_ERRORS,
    KeySafeSession,
    PaidCall,
    host_url,
    never_sent,
    usable_url,
)
from sora2_provider.hooks._limiter import AWAITED_TURN, BudgetClosed, CallBudget, budget_for
from sora2_provider.hooks._transfer import TransferMixin
from sora2_provider.hooks._wire import (
    IncompleteDownloadError,
    credit_numbers,
    error_text,
    is_failed_body,
    json_body,
    output_url,
    parse_timestamp,
    to_float,
)
from sora2_provider.models import (
    JobResult,
    JobStatus,
    SubmittedJob,
    VideoRequest,
)

if TYPE_CHECKING:
    from airflow.sdk import Connection

SEGMIND_API_URL = "https://api.segmind.com"
SEGMIND_UPLOAD_URL = "https://workflows-api.segmind.com"
SEGMIND_HISTORY_URL = "https://api.spotprod.segmind.com"
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
RESET_MARGIN = 0.1  # seconds added to the rate-limit reset time, against clock granularity
USER_AGENT = "airflow-provider-sora2"


class Sora2Hook(AsyncMixin, HistoryMixin, TransferMixin, BaseHook):
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
    #: Lowers (never raises) the connection's ``max_spend_per_day`` for this hook's paid calls (see spend.py).
    max_spend_per_day: float | None = None

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
            if not usable_url(url):
                raise Sora2ConfigError(
                    f"connection {self.sora2_conn_id!r}: {field} {url!r} is not a usable URL; allowed values: an "
                    "http(s) URL such as 'https://api.segmind.com' (or empty for Segmind's own hosts)"
                )

    @property
    def base_url(self) -> str:
        """Inference and credits host: the connection host, else ``https://api.segmind.com``."""
        conn = self.connection
        return host_url(conn.host, conn.schema, conn.port) or SEGMIND_API_URL

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
        override = host_url(self.extras.get(extra_key))
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
        session = KeySafeSession()
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
        if AWAITED_TURN.get() is None:  # in a trigger's thread the coroutine waits out a 429 instead
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
        if isinstance(err, Sora2RateLimitedError):
            from sora2_provider import metrics

            metrics.rate_limited(sleep)

    def _send(
        self,
        method: str,
        url: str,
        *,
        what: str,
        paid: PaidCall | None = None,
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
        started, sent_at = time.monotonic(), self.budget.now()
        try:
            response = session.request(method, url, **kwargs)
        except requests.RequestException as err:
            raise self._transport_error(err, what, paid) from err
        if keyed:
            reset = parse_timestamp(response.headers.get("x-rate-limit-reset-at-utc"))
            self.budget.record(response.status_code == 429, reset.timestamp() if reset else None, sent_at)
        self.log.debug("%s %s -> HTTP %s in %.2f s", method, url, response.status_code, time.monotonic() - started)
        if response.status_code < 400 or (
            failed_is_payload and response.status_code == 422 and is_failed_body(response)
        ):
            return response
        with response:
            raise self._http_error(response, what, paid, request_id)

    def _take_turn(self) -> None:
        """Wait for a turn (worker side), or use the one the calling coroutine awaited (trigger side)."""
        awaited = AWAITED_TURN.get()
        if awaited is None:
            self.budget.wait()
        elif awaited[0]:
            if self.budget.is_closed():  # a 429 came back since the coroutine's turn: it waits again
                raise BudgetClosed()
            awaited[0] = False
        else:
            self.budget.count()

    def _transport_error(self, err: requests.RequestException, what: str, paid: PaidCall | None) -> Sora2Error:
        detail = f"{type(err).__name__}: {self._redact(str(err))}"
        if never_sent(err):
            url = urlsplit(err.request.url if err.request and err.request.url else self.base_url)
            where = f"{url.scheme}://{url.netloc}"
            return Sora2ServerError(
                f"{what}: could not connect to {where}, nothing was sent: is the Sora 2 emulator (`sora2-emulator`) "
                f"running there, or is the host of connection {self.sora2_conn_id!r} wrong? ({detail})"
            )
        if not isinstance(err, SENT_ERRORS):
            return Sora2Error(f"{what}: the request could not be made ({detail})")
        if paid is not None:
            return paid.uncertain(f"the answer was lost ({detail})")
        return Sora2ServerError(f"{what}: {detail}")

    def _http_error(
        self, response: requests.Response, what: str, paid: PaidCall | None, request_id: str | None
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
            return Sora2AuthError(f"{what}: connection {self.sora2_conn_id!r}: {ERRORS[code][1]}", **kw)
        error_class, reason = ERRORS.get(code, (Sora2Error, "unexpected answer"))
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

    def _paid_post(self, request: VideoRequest, version: str, **kwargs: Any) -> tuple[requests.Response, PaidCall]:
        from sora2_provider import metrics, spend

        spend.enforce_spend_cap(self, request)  # max_spend_per_day: refused before anything is sent
        endpoint = f"POST /{version}/{request.model}"
        paid = PaidCall(request, endpoint, datetime.now(timezone.utc))
        response = self._call(
            "POST",
            f"{self.base_url}/{version}/{request.model}",
            what=endpoint,
            paid=paid,
            json=request.to_body(),
            **kwargs,
        )
        metrics.job_submitted(model=request.model)
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
