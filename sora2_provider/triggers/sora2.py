"""Trigger that waits for a Sora 2 job in the triggerer, freeing the worker slot while the model renders."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from sora2_provider.exceptions import Sora2Error, Sora2NotFoundError
from sora2_provider.models import JobStatus

DEFAULT_MAX_TRANSIENT_ERRORS = 10


@dataclass
class JobWatch:
    """Turns successive status answers (or errors) into at most one final event.

    Shared by the trigger (deferrable mode) and the worker-side polling loop, so both wait the same way:
    a terminal status ends the wait, a missing record ends it with ``not_found``, transient errors are
    ridden out until ``max_transient_errors`` come in a row.
    """

    request_id: str
    max_transient_errors: int = DEFAULT_MAX_TRANSIENT_ERRORS
    last_status: str | None = None
    transient_errors: int = 0
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def on_status(self, status: JobStatus) -> dict[str, Any] | None:
        self.transient_errors = 0
        self.last_status = status.status
        if status.status == "COMPLETED":
            return self._event("completed", metrics=status.metrics)
        if status.status == "FAILED":
            return self._event("failed", message=status.error or "Segmind reported the job FAILED without a reason")
        return None

    def on_error(self, error: Sora2Error) -> dict[str, Any] | None:
        if isinstance(error, Sora2NotFoundError):
            return self._event("not_found", message=str(error))
        if error.retryable and self.transient_errors + 1 < self.max_transient_errors:
            self.transient_errors += 1
            return None
        return self._event("error", message=str(error), retryable=error.retryable)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _event(self, status: str, **fields: Any) -> dict[str, Any]:
        return {"status": status, "request_id": self.request_id, **fields}


class Sora2JobTrigger(BaseTrigger):
    """Poll a Sora 2 job's status until it is COMPLETED or FAILED, without blocking the event loop.

    Yields one event: ``{"status": "completed" | "failed" | "not_found" | "error", "request_id": ...,
    "message"?: ..., "metrics"?: ..., "retryable"?: ...}`` (``retryable`` with ``error``: whether a retry
    can help, False for a refused key). Its kwargs hold no secret: the hook reads the key from the
    connection inside the triggerer.

    :param request_id: the Segmind request id returned by the submit.
    :param sora2_conn_id: the ``sora2`` connection.
    :param poll_interval: seconds between status calls.
    :param max_transient_errors: consecutive 429/5xx/connection errors tolerated before giving up.
    """

    def __init__(
        self,
        request_id: str,
        sora2_conn_id: str = "sora2_default",
        poll_interval: float = 10.0,
        max_transient_errors: int = DEFAULT_MAX_TRANSIENT_ERRORS,
    ) -> None:
        super().__init__()
        self.request_id = request_id
        self.sora2_conn_id = sora2_conn_id
        self.poll_interval = poll_interval
        self.max_transient_errors = max_transient_errors

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "request_id": self.request_id,
                "sora2_conn_id": self.sora2_conn_id,
                "poll_interval": self.poll_interval,
                "max_transient_errors": self.max_transient_errors,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from sora2_provider.hooks.sora2 import Sora2Hook

        hook = Sora2Hook(sora2_conn_id=self.sora2_conn_id)
        watch = JobWatch(self.request_id, self.max_transient_errors)
        while True:
            # Sleep first: the operator defers right after the submit (or after checking that a resumed job
            # is still running), so an immediate poll would only spend a call of the account's rate limit.
            await asyncio.sleep(self.poll_interval)
            event = await self._poll_once(hook, watch)
            if event is not None:
                self.log.info("Job %s ended: %s after %.0f s", self.request_id, event["status"], watch.elapsed)
                yield TriggerEvent(event)
                return

    async def _poll_once(self, hook: Any, watch: JobWatch) -> dict[str, Any] | None:
        previous = watch.last_status
        try:
            status = await hook.aget_status(self.request_id)
        except Sora2Error as err:
            self.log.warning("Status of %s unavailable (%s); polling again", self.request_id, err)
            return watch.on_error(err)
        if status.status != previous:
            self.log.info("Job %s is %s (%.0f s)", self.request_id, status.status, watch.elapsed)
        return watch.on_status(status)
