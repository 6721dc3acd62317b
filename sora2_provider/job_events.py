"""The waiting vocabulary: how a wait for a Sora 2 job turns what it reads into one final event, and that event
into the finished job. One translation shared by the trigger, the history watcher and the worker-side loop.

An event is the plain dict a trigger yields: ``{"status": "completed" | "failed" | "not_found" | "error",
"request_id", "message"?, "output_url"?, "cost"?, "generation_seconds"?, "metrics"?, "retryable"?}``.
:class:`Outage` is a run of transient errors (5xx, 429, dropped connections, timeouts): it is ridden out, its
reads backed off, and logged once when it begins and once when it ends.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sora2_provider import metrics
from sora2_provider.compat import AirflowException, AirflowFailException
from sora2_provider.exceptions import (
    Sora2ConfigError,
    Sora2Error,
    Sora2NotFoundError,
    Sora2RateLimitedError,
    Sora2ServerError,
)
from sora2_provider.models import HistoryRecord, JobResult, JobStatus

__all__ = [
    "OUTAGE_BACKOFF_MAX",
    "JobWatch",
    "Outage",
    "OutagePolicy",
    "is_outage",
    "result_from_event",
    "result_from_row",
    "wait_failed",
]

log = logging.getLogger(__name__)

#: While Segmind fails, reads back off (doubling from the poll interval) to one every this many seconds.
OUTAGE_BACKOFF_MAX = 60.0


def is_outage(err: BaseException) -> bool:
    """Is ``err`` what Segmind answers while it is down or overloaded (5xx, 429, no connection, a timeout)?
    A truncated download or an uncertain submit is not: those have their own handling."""
    return isinstance(err, (Sora2ServerError, Sora2RateLimitedError))


@dataclass(frozen=True)
class OutagePolicy:
    """How a wait meets an outage, from the ``sora2`` connection's extras.

    ``max_outage`` (extra ``max_outage``, seconds): give up once Segmind has failed this long without a single
    answer; None (default) rides out any outage until the wait's own limit (``generation_timeout``, the sensor's
    ``timeout``). ``backoff_max`` (extra ``outage_backoff_max``, seconds): the longest pause between two reads
    during an outage.
    """

    max_outage: float | None = None
    backoff_max: float = OUTAGE_BACKOFF_MAX

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any]) -> OutagePolicy:
        return cls(_seconds(extras, "max_outage"), _seconds(extras, "outage_backoff_max") or OUTAGE_BACKOFF_MAX)


def _seconds(extras: Mapping[str, Any], key: str) -> float | None:
    value = extras.get(key)
    if value in (None, ""):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise Sora2ConfigError(f"connection extra {key}={value!r} must be a positive number of seconds")
    return seconds


@dataclass
class Outage:
    """Segmind failing with transient errors since ``since`` (monotonic seconds; None: it answers).

    The first failure logs one warning, the first answer after it one line with how long it lasted (and the
    ``sora2.outage.wait`` metric); the failures in between are silent. :meth:`delay` is the pause before the
    next read: the poll interval while Segmind answers, doubling per failure up to ``policy.backoff_max``.
    """

    what: str
    policy: OutagePolicy = field(default_factory=OutagePolicy)
    logger: Any = log
    since: float | None = None
    failures: int = 0

    @property
    def active(self) -> bool:
        return self.since is not None

    @property
    def seconds(self) -> float:
        """How long the current outage has lasted (0.0 while Segmind answers)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    def failed(self, err: Exception) -> None:
        if self.since is None:
            self.since = time.monotonic()
            self.logger.warning(
                "Segmind is unreachable for %s (%s); still waiting, reads back off to one every %g s",
                self.what,
                err,
                self.policy.backoff_max,
            )
        self.failures += 1

    def answered(self) -> None:
        if self.since is None:
            return
        seconds = self.seconds
        self.logger.warning(
            "Segmind answers again for %s after %.1f s (%d failed reads)", self.what, seconds, self.failures
        )
        metrics.outage_waited(seconds)
        self.since, self.failures = None, 0

    @property
    def exhausted(self) -> bool:
        """Has the outage lasted the connection's ``max_outage``?"""
        return self.policy.max_outage is not None and self.seconds >= self.policy.max_outage

    def gave_up(self, err: Exception) -> str:
        """The one-line reason a wait gives up on this outage."""
        return (
            f"Segmind was unreachable for {self.seconds:.0f} s, longer than the connection's "
            f"max_outage={self.policy.max_outage:g} s; last error: {err}"
        )

    @contextlib.contextmanager
    def single_attempts(self, client: Any) -> Iterator[None]:
        """While the outage lasts, each read of ``client`` (the hook: its ``max_retries``) is one call: the
        backoff here replaces the client's quick retries, so a long outage costs one call per pause."""
        saved = client.max_retries
        if self.active:
            client.max_retries = 0
        try:
            yield
        finally:
            client.max_retries = saved

    def delay(self, interval: float) -> float:
        if self.since is None:
            return interval
        return min(max(interval, self.policy.backoff_max), interval * 2.0 ** min(self.failures, 30))


@dataclass
class JobWatch:
    """One job's wait: turns status answers, history rows and errors into at most one final event.

    A terminal status or row ends the wait, a missing record ends it with ``not_found``, an error no wait can
    fix with ``error``; transient errors are ridden out (see :class:`Outage`) unless ``outage`` says it lasted
    the connection's ``max_outage``.
    """

    request_id: str
    outage: Outage
    last_status: str | None = None
    started: float = field(default_factory=time.monotonic)

    def on_status(self, status: JobStatus) -> dict[str, Any] | None:
        self.last_status = status.status
        if status.status == "COMPLETED":
            return self._event("completed", metrics=status.metrics)
        if status.status == "FAILED":
            return self._failed(status.error)
        return None

    def on_row(self, row: HistoryRecord) -> dict[str, Any] | None:
        """The final event when the job's request-history row shows it ended (with its output URL and cost)."""
        self.last_status = row.status
        if row.status == "COMPLETED" and row.output_url:
            return self._event(
                "completed", output_url=row.output_url, cost=row.cost, generation_seconds=_seconds_of(row)
            )
        if row.status == "FAILED":
            return self._failed(row.error)
        return None

    def on_error(self, error: Sora2Error) -> dict[str, Any] | None:
        """The final event for an error (None: ride it out). Transient ones count in ``outage`` (the caller's)."""
        if isinstance(error, Sora2NotFoundError):
            return self._event("not_found", message=str(error))
        if not error.retryable:
            return self._event("error", message=str(error), retryable=False)
        if self.outage.exhausted:
            return self._event("error", message=self.outage.gave_up(error), retryable=True)
        return None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _failed(self, message: str | None) -> dict[str, Any]:
        return self._event("failed", message=message or "Segmind reported the job FAILED without a reason")

    def _event(self, status: str, **fields: Any) -> dict[str, Any]:
        return {"status": status, "request_id": self.request_id, **fields}


def _seconds_of(row: HistoryRecord) -> float | None:
    return None if row.latency_ms is None else round(row.latency_ms / 1000, 3)


def result_from_event(event: dict[str, Any] | None) -> JobResult | None:
    """The finished job as a ``completed`` event tells it (from the request history), or None when the event
    lacks the output URL and a result call is needed. ``remaining_credits`` is then unknown (None)."""
    if not event or event.get("status") != "completed" or not event.get("output_url"):
        return None
    return JobResult(
        request_id=str(event["request_id"]),
        status="COMPLETED",
        output_url=str(event["output_url"]),
        cost=event.get("cost"),
        generation_seconds=event.get("generation_seconds"),
    )


def result_from_row(row: HistoryRecord) -> JobResult:
    """The job as its request-history row tells it (a job whose v2 record expired)."""
    return JobResult(
        request_id=row.request_id,
        status=row.status or "UNKNOWN",
        output_url=row.output_url,
        cost=row.cost,
        generation_seconds=_seconds_of(row),
    )


def wait_failed(request_id: str, event: dict[str, Any]) -> Exception:
    """A wait that ended in an error: retryable (outage) or not (refused key); the job record stays either way."""
    message = f"waiting for Sora 2 job {request_id} failed: {event.get('message')}"
    retryable = event.get("retryable", True)
    metrics.job_failed("error" if retryable else "rejected")
    if retryable:
        return AirflowException(message)
    return AirflowFailException(
        f"{message}. A retry cannot fix this; the job record is kept, so clearing the task once the cause is "
        "fixed collects the job already paid for"
    )
