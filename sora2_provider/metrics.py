"""The provider's metrics, every name under ``sora2.``, sent through Airflow's ``Stats`` (StatsD, Datadog or
OpenTelemetry, as configured under ``[metrics]``). A metric never fails a task. The table of names is in
docs/metrics.md.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.providers.common.compat.sdk import Stats, get_current_context

__all__ = [
    "FAILURE_REASONS",
    "downloaded",
    "job_adopted",
    "job_decided",
    "job_failed",
    "job_resumed",
    "job_stored",
    "job_submitted",
    "rate_limited",
    "spend_cap_refused",
]

log = logging.getLogger(__name__)

PREFIX = "sora2"
FAILURE_REASONS = ("job_failed", "spend_cap", "max_cost", "timeout", "rejected", "error")


def _tags(tags: dict[str, Any]) -> dict[str, str]:
    merged = {**current_task_tags(), **tags}
    return {key: str(value) for key, value in merged.items() if value is not None}


def current_task_tags() -> dict[str, Any]:
    """``dag_id`` and ``task_id`` of the task instance running in this process, if any (none in a trigger)."""
    try:
        ti = get_current_context()["ti"]
    except Exception:
        return {}
    return {"dag_id": getattr(ti, "dag_id", None), "task_id": getattr(ti, "task_id", None)}


def _emit(kind: str, name: str, value: Any, tags: dict[str, Any]) -> None:
    try:
        if kind == "incr":
            Stats.incr(f"{PREFIX}.{name}", count=value, tags=_tags(tags))
        elif kind == "gauge":
            Stats.gauge(f"{PREFIX}.{name}", value, tags=_tags(tags))
        else:
            Stats.timing(f"{PREFIX}.{name}", timedelta(seconds=value), tags=_tags(tags))
    except Exception:  # metrics must never fail a task
        log.debug("metric %s.%s not emitted", PREFIX, name, exc_info=True)


def job_submitted(**tags: Any) -> None:
    _emit("incr", "jobs.submitted", 1, tags)


def job_resumed(**tags: Any) -> None:
    _emit("incr", "jobs.resumed", 1, tags)


def job_adopted(**tags: Any) -> None:
    _emit("incr", "jobs.adopted", 1, tags)


def job_decided(decision: str, **tags: Any) -> None:
    """How a try came to its job: ``resumed`` or ``adopted_from_history`` count here (a new submit counts where
    the paid call is sent, see :func:`job_submitted`)."""
    if decision == "resumed":
        job_resumed(**tags)
    elif decision == "adopted_from_history":
        job_adopted(**tags)


def job_failed(reason: str, **tags: Any) -> None:
    """A try failed; ``reason`` is one of :data:`FAILURE_REASONS` (anything else counts as ``error``)."""
    reason = reason if reason in FAILURE_REASONS else "error"
    _emit("incr", f"jobs.failed.{reason}", 1, {**tags, "reason": reason})


def job_stored(
    *,
    estimated: float | None,
    charged: float | None,
    generation_seconds: float | None,
    **tags: Any,
) -> None:
    """What is known once a video is stored: its cost (estimated and charged) and its generation time."""
    if charged is not None:
        _emit("incr", "credits.spent", charged, tags)
        _emit("gauge", "cost.charged", charged, tags)
    if estimated is not None:
        _emit("gauge", "cost.estimated", estimated, tags)
    if generation_seconds is not None:
        _emit("timing", "generation.duration", generation_seconds, tags)


def downloaded(size: int, seconds: float, **tags: Any) -> None:
    """A video written to the output: its bytes and the throughput."""
    _emit("incr", "download.bytes", int(size), tags)
    _emit("gauge", "download.mb_per_s", round(size / 1e6 / max(seconds, 1e-6), 3), tags)


def rate_limited(seconds: float, **tags: Any) -> None:
    """A 429 waited out for ``seconds`` (the hook's retry, or a limiter's wait)."""
    _emit("incr", "rate_limited.waits", 1, tags)
    _emit("timing", "rate_limited.wait", max(0.0, float(seconds)), tags)


def spend_cap_refused(estimate: float, **tags: Any) -> None:
    _emit("incr", "spend_cap.refused", 1, tags)


def outage_waited(seconds: float, **tags: Any) -> None:
    """A wait rode out ``seconds`` of Segmind answering only transient errors (5xx, 429, no connection)."""
    _emit("timing", "outage.wait", max(0.0, float(seconds)), tags)
