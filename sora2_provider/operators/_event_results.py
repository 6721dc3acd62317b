"""What the operator makes of the event that ends a wait: the finished job, or the error to raise.

Kept as they were in ``operators/_job.py`` (only the metrics reason is now passed to ``retryable``/``fail``); the
shared waiting vocabulary (``job_events.py``) is their intended home.
"""

from __future__ import annotations

from typing import Any

from sora2_provider.models import JobResult
from sora2_provider.operators._failures import fail, retryable


def result_from_event(event: dict[str, Any] | None) -> JobResult | None:
    """The finished job as the trigger's event tells it (from the request history), or None when the event
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


def wait_failed(request_id: str, event: dict[str, Any]) -> Exception:
    """A wait that ended in an error: retryable (outage) or not (refused key); the job record stays either way."""
    message = f"waiting for Sora 2 job {request_id} failed: {event.get('message')}"
    if event.get("retryable", True):
        return retryable(message, "error")
    return fail(
        f"{message}. A retry cannot fix this; the job record is kept, so clearing the task once the cause is "
        "fixed collects the job already paid for",
        "rejected",
    )
