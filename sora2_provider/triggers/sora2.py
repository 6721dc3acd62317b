"""Trigger that waits for a Sora 2 job in the triggerer, freeing the worker slot while the model renders."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from sora2_provider.triggers._render_times import render_kind
from sora2_provider.triggers._watcher import HistoryWatcher

__all__ = ["Sora2JobTrigger"]


class Sora2JobTrigger(BaseTrigger):
    """Wait for a Sora 2 job to be COMPLETED or FAILED, without blocking the event loop.

    The triggers of one connection share one watcher (``triggers/_watcher.py``): one request-history call
    per interval for all their jobs, not one status call per job; a job the history keeps missing gets its
    own status calls. Yields one event: ``{"status": "completed" | "failed" | "not_found" | "error",
    "request_id": ..., "message"?: ..., "output_url"?: ..., "cost"?: ..., "generation_seconds"?: ...,
    "metrics"?: ..., "retryable"?: ...}`` (``retryable`` with ``error``: whether a retry can help, False for a
    refused key). Its kwargs hold no secret: the hook reads the key from the connection inside the triggerer.

    An outage of Segmind (5xx, 429, dropped connections, timeouts) is ridden out until the deferral's timeout
    (the operator's ``generation_timeout``), reading less often while it lasts; the connection extra
    ``max_outage`` (seconds) gives up sooner with an ``error`` event.

    :param request_id: the Segmind request id returned by the submit.
    :param sora2_conn_id: the ``sora2`` connection.
    :param poll_interval: seconds between history reads (the first one an interval after the trigger starts).
    :param max_transient_errors: ignored; accepted so that triggers serialized by earlier versions (which gave up
        after that many errors in a row) still load, and now ride the outage out.
    :param submitted_at: ISO time of the submit; the history is read back to the oldest watched one.
    :param model: the job's model, with ``duration`` and ``size``: the kind of job, whose render time (learned in
        this triggerer, else Segmind's typical one) says when the job can be done and is first looked for. Without
        them the history is read every interval.
    :param try_number: the deferring try, echoed in the event as ``deferred_in_try`` (the operator tells a retry
        Airflow 3.0 resumed into this deferral by it).
    """

    def __init__(
        self,
        request_id: str,
        sora2_conn_id: str = "sora2_default",
        poll_interval: float = 10.0,
        max_transient_errors: int | None = None,
        submitted_at: str | None = None,
        model: str | None = None,
        duration: int | None = None,
        size: str | None = None,
        try_number: int | None = None,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.sora2_conn_id = sora2_conn_id
        self.poll_interval = poll_interval
        self.submitted_at = submitted_at or datetime.now(timezone.utc).isoformat()
        self.model = model
        self.duration = duration
        self.size = size
        self.try_number = try_number

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "request_id": self.request_id,
                "sora2_conn_id": self.sora2_conn_id,
                "poll_interval": self.poll_interval,
                "submitted_at": self.submitted_at,
                "model": self.model,
                "duration": self.duration,
                "size": self.size,
                "try_number": self.try_number,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        watcher = HistoryWatcher.for_connection(self.sora2_conn_id)
        submitted = datetime.fromisoformat(self.submitted_at)
        submitted = submitted if submitted.tzinfo else submitted.replace(tzinfo=timezone.utc)
        async with watcher.watching(
            self.request_id,
            submitted,
            self.poll_interval,
            render_kind(self.model, self.duration, self.size),
        ) as ended:
            event = await ended
        self.log.info("Job %s ended: %s", self.request_id, event["status"])
        yield TriggerEvent(event if self.try_number is None else {**event, "deferred_in_try": self.try_number})
