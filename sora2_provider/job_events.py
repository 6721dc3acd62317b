"""The waiting vocabulary: how a wait for a Sora 2 job turns what it reads into one final event, and that event
into the finished job. One translation shared by the trigger, the history watcher and the worker-side loop.

An event is the plain dict a trigger yields: ``{"status": "completed" | "failed" | "not_found" | "error",
"request_id", "message"?, "output_url"?, "cost"?, "generation_seconds"?, "metrics"?, "retryable"?}``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sora2_provider import metrics
from sora2_provider.compat import AirflowException, AirflowFailException
from sora2_provider.exceptions import Sora2Error, Sora2NotFoundError
from sora2_provider.models import HistoryRecord, JobResult, JobStatus

__all__ = [
    "DEFAULT_MAX_TRANSIENT_ERRORS",
    "JobWatch",
    "result_from_event",
    "result_from_row",
    "wait_failed",
]

#: Consecutive transient errors a wait tolerates before it gives up.
DEFAULT_MAX_TRANSIENT_ERRORS = 10


@dataclass
class JobWatch:
    """One job's wait: turns status answers, history rows and errors into at most one final event.

    A terminal status or row ends the wait, a missing record ends it with ``not_found``, an error no wait can
    fix with ``error``; transient errors are ridden out until ``max_transient_errors`` come in a row.
    """

    request_id: str
    max_transient_errors: int = DEFAULT_MAX_TRANSIENT_ERRORS
    transient_errors: int = 0
    last_status: str | None = None
    started: float = field(default_factory=time.monotonic)

    def on_status(self, status: JobStatus) -> dict[str, Any] | None:
        self.transient_errors = 0
        self.last_status = status.status
        if status.status == "COMPLETED":
            return self._event("completed", metrics=status.metrics)
        if status.status == "FAILED":
            return self._failed(status.error)
        return None

    def on_row(self, row: HistoryRecord) -> dict[str, Any] | None:
        """The final event when the job's request-history row shows it ended (with its output URL and cost)."""
        self.transient_errors = 0
        self.last_status = row.status
        if row.status == "COMPLETED" and row.output_url:
            return self._event(
                "completed", output_url=row.output_url, cost=row.cost, generation_seconds=_seconds_of(row)
            )
        if row.status == "FAILED":
            return self._failed(row.error)
        return None

    def on_error(self, error: Sora2Error) -> dict[str, Any] | None:
        """The final event for an error, or None to ride it out."""
        if isinstance(error, Sora2NotFoundError):
            return self._event("not_found", message=str(error))
        if error.retryable and self.transient_errors + 1 < self.max_transient_errors:
            self.transient_errors += 1
            return None
        return self._event("error", message=str(error), retryable=error.retryable)

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
    metrics.job_failed(metrics.failure_reason(message))
    if event.get("retryable", True):
        return AirflowException(message)
    return AirflowFailException(
        f"{message}. A retry cannot fix this; the job record is kept, so clearing the task once the cause is "
        "fixed collects the job already paid for"
    )
