"""The waiting rules shared by the triggers and the worker-side polling loop."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

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
            return self.completed(metrics=status.metrics)
        if status.status == "FAILED":
            return self.failed(status.error)
        return None

    def completed(self, **fields: Any) -> dict[str, Any]:
        return self._event("completed", **fields)

    def failed(self, message: str | None) -> dict[str, Any]:
        return self._event("failed", message=message or "Segmind reported the job FAILED without a reason")

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
