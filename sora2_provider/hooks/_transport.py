"""The only HTTP of the provider: the key-safe session, one exchange under the call budget, the retry policy,
and Segmind's status codes mapped to :mod:`sora2_provider.exceptions`.

:class:`Transport` is built by the hook for its calls from the connection's values; it never reads Airflow itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import tenacity
from urllib3.exceptions import ConnectTimeoutError

from sora2_provider import metrics
from sora2_provider.exceptions import (
    Sora2AuthError,
    Sora2Error,
    Sora2InsufficientCreditsError,
    Sora2ModelRetiredError,
    Sora2NotFoundError,
    Sora2RateLimitedError,
    Sora2ServerError,
    Sora2SubmitUncertainError,
    Sora2ValidationError,
)
from sora2_provider.hooks._answers import credit_numbers, error_text, is_failed_body, json_body, parse_timestamp
from sora2_provider.hooks._call_budget import AWAITED_TURN, RESET_MARGIN, BudgetClosed, CallBudget
from sora2_provider.hooks._video_stream import IncompleteDownloadError
from sora2_provider.models import VideoRequest

T = TypeVar("T")
USER_AGENT = "airflow-provider-sora2"

ERRORS: dict[int, tuple[type[Sora2Error], str]] = {
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
# Errors raised by requests after the request may have left: a paid call must not be repeated on these.
SENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class KeySafeSession(requests.Session):
    """A session that drops ``x-api-key`` on a redirect to another host, as requests does for Authorization."""

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        if response.request.url and self.should_strip_auth(response.request.url, prepared_request.url or ""):
            prepared_request.headers.pop("x-api-key", None)
        super().rebuild_auth(prepared_request, response)


@dataclass(frozen=True)
class PaidCall:
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


def never_sent(err: requests.RequestException) -> bool:
    """Whether requests failed before a connection existed, so the server cannot have seen the request."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(err, requests.ConnectionError) and isinstance(reason, ConnectTimeoutError)


def usable_url(url: str) -> bool:
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


def host_url(host: str | None, schema: str | None = None, port: int | None = None) -> str | None:
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


def new_session(key: str) -> KeySafeSession:
    """A session that sends ``key`` as ``x-api-key`` (and never to another host)."""
    session = KeySafeSession()
    session.headers.update({"x-api-key": key, "Accept": "application/json", "User-Agent": USER_AGENT})
    return session


@dataclass
class Transport:
    """How the calls of one hook go out: its session and call budget, timeouts, retry policy and log."""

    session: requests.Session
    budget: CallBudget
    conn_id: str
    # Never in its repr: Airflow 3.0 prints a failed task's traceback with the locals of each frame, unmasked.
    secret: str | None = field(repr=False)
    timeouts: tuple[float, float]
    max_retries: int
    max_wait: float
    backoff_initial: float
    backoff_max: float
    log: Any  # the hook's logger

    def redact(self, text: str | None) -> str | None:
        if text and self.secret:
            return text.replace(self.secret, "***")
        return text

    def retrying(self) -> tenacity.Retrying:
        """The retry policy: 429 until the reset (capped by ``max_wait``), 5xx, dropped connections, backoff with
        jitter. In a trigger's worker thread a 429 is not retried: the coroutine waits it out (:meth:`in_thread`)."""
        initial = self.backoff_initial
        # Not wait_exponential_jitter: its ``multiplier`` needs tenacity >= 9.2, and the Google provider's
        # google-genai caps tenacity below 9.2 (the ``gcs`` extra); these two work on every tenacity 8-9.
        backoff = tenacity.wait_exponential(multiplier=initial, max=self.backoff_max) + tenacity.wait_random(0, initial)

        def wait(state: tenacity.RetryCallState) -> float:
            err = state.outcome.exception() if state.outcome else None
            if isinstance(err, Sora2RateLimitedError) and err.reset_at is not None:
                delay = err.reset_at - time.time() + RESET_MARGIN
            else:
                delay = backoff(state)
            return max(0.0, min(delay, self.max_wait))

        retried: tuple[type[Exception], ...] = (Sora2ServerError, IncompleteDownloadError)
        if AWAITED_TURN.get() is None:
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
            metrics.rate_limited(sleep)

    def call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """:meth:`send` under the retry policy."""
        return self.retrying()(self.send, method, url, **kwargs)

    def call_json(self, method: str, url: str, *, what: str, **kwargs: Any) -> tuple[int, Any]:
        """Status code and JSON body of a retried call; a non-JSON success is an error."""
        with self.call(method, url, what=what, **kwargs) as response:
            body = json_body(response)
            if body is None:
                raise Sora2Error(
                    f"{what}: expected JSON, got {response.headers.get('Content-Type')!r}",
                    status_code=response.status_code,
                    segmind_message=self.redact(error_text(response)),
                )
            return response.status_code, body

    def send(
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
        if keyed:
            self._take_turn()
        started, sent_at = time.monotonic(), self.budget.now()
        try:
            response = self.session.request(method, url, **kwargs)
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
        detail = f"{type(err).__name__}: {self.redact(str(err))}"
        if never_sent(err):
            url = urlsplit(err.request.url) if err.request is not None and err.request.url else None
            where = f"{url.scheme}://{url.netloc}" if url else "its host"
            return Sora2ServerError(
                f"{what}: could not connect to {where}, nothing was sent: is the Sora 2 emulator (`sora2-emulator`) "
                f"running there, or is the host of connection {self.conn_id!r} wrong? ({detail})"
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
            "segmind_message": self.redact(error_text(response)),
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
            return not_acceptable(what, kw)
        if code in (401, 403):
            return Sora2AuthError(f"{what}: connection {self.conn_id!r}: {ERRORS[code][1]}", **kw)
        error_class, reason = ERRORS.get(code, (Sora2Error, "unexpected answer"))
        return error_class(f"{what}: {reason}", **kw)

    async def in_thread(self, method: Callable[..., T], *args: Any) -> T:
        """``method(*args)`` in a worker thread, after waiting for a turn of the call budget in the event loop.

        A 429 is waited out here (``asyncio.sleep`` until the reset), up to ``max_retries`` times, so no thread is
        held while the account's rate limit is spent. A call whose budget closed while it queued for a thread is
        not sent at all: it awaits its turn again."""
        attempt = 0
        while True:
            await self.budget.await_turn()
            context = contextvars.copy_context()
            context.run(AWAITED_TURN.set, [True])
            try:
                return await asyncio.to_thread(context.run, method, *args)
            except BudgetClosed:
                continue
            except Sora2RateLimitedError as err:
                attempt += 1
                if attempt > self.max_retries:
                    raise
                metrics.rate_limited(max(0.0, (err.reset_at or 0.0) - time.time()))
                self.log.warning("%s; waiting for the reset (retry %d of %d)", err, attempt, self.max_retries)


def not_acceptable(what: str, kw: dict[str, Any]) -> Sora2Error:
    """406 is 'insufficient credits', or (rarely) a wrong content type, which is a request problem."""
    text = kw["segmind_message"] or ""
    if "content" in text.lower() and "type" in text.lower():
        return Sora2ValidationError(f"{what}: Segmind refused the content type", **kw)
    balance, required = credit_numbers(text)
    known = f" (balance {balance}, required {required})" if balance is not None or required is not None else ""
    return Sora2InsufficientCreditsError(f"{what}: not enough credits{known}", balance=balance, required=required, **kw)
