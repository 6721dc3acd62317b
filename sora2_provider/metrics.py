"""Metrics of the provider through Airflow's own metrics API (``Stats``: StatsD, Datadog or OpenTelemetry, as
configured under ``[metrics]``), every name under ``sora2.`` (the backend adds its prefix, ``airflow.`` by default).

=====================================  =========  ===========================================================
name                                   type       value
=====================================  =========  ===========================================================
``sora2.jobs.submitted``               counter    a new paid job was sent (v2 submit or v1 call)
``sora2.jobs.resumed``                 counter    a try resumed the job an earlier try paid for
``sora2.jobs.adopted``                 counter    a lost submit answer: the job was found in the request history
``sora2.jobs.failed.<reason>``         counter    a try failed: ``job_failed``, ``spend_cap``, ``max_cost``,
                                                  ``timeout``, ``rejected`` (a 4xx) or ``error``
``sora2.credits.spent``                counter    credits charged for a stored video (may be fractional)
``sora2.cost.estimated``               gauge      the price-table estimate of the job just stored
``sora2.cost.charged``                 gauge      what Segmind charged for it
``sora2.generation.duration``          timer      Segmind's generation time of the job
``sora2.download.bytes``               counter    bytes written to the output
``sora2.download.mb_per_s``            gauge      throughput of that download (MB/s)
``sora2.rate_limited.waits``           counter    a 429 was waited out
``sora2.rate_limited.wait``            timer      how long that wait was
``sora2.spend_cap.refused``            counter    a paid call refused by ``max_spend_per_day``
``sora2.outage.wait``                  timer      how long a wait rode out Segmind being unreachable
=====================================  =========  ===========================================================

Tags (``model``, ``dag_id``, ``task_id``; ``reason`` on failures) go to backends that take tags (Datadog, OTel,
StatsD with ``statsd_influxdb_enabled``); plain StatsD gets the names alone. A metric never fails a task: any
error of the backend is logged at debug level and dropped. Imported lazily, never at DAG parse.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)

PREFIX = "sora2"
FAILURE_REASONS = ("job_failed", "spend_cap", "max_cost", "timeout", "rejected", "error")


def _stats() -> Any:
    from airflow.providers.common.compat.sdk import Stats

    return Stats


def _tags(tags: dict[str, Any]) -> dict[str, str]:
    merged = {**current_task_tags(), **tags}
    return {key: str(value) for key, value in merged.items() if value is not None}


def current_task_tags() -> dict[str, Any]:
    """``dag_id`` and ``task_id`` of the task instance running in this process, if any (none in a trigger)."""
    try:
        from airflow.providers.common.compat.sdk import get_current_context

        ti = get_current_context()["ti"]
    except Exception:
        return {}
    return {"dag_id": getattr(ti, "dag_id", None), "task_id": getattr(ti, "task_id", None)}


def _emit(kind: str, name: str, value: Any, tags: dict[str, Any]) -> None:
    try:
        stats = _stats()
        if kind == "incr":
            stats.incr(f"{PREFIX}.{name}", count=value, tags=_tags(tags))
        elif kind == "gauge":
            stats.gauge(f"{PREFIX}.{name}", value, tags=_tags(tags))
        else:
            stats.timing(f"{PREFIX}.{name}", timedelta(seconds=value), tags=_tags(tags))
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
    reason = reason if reason in FAILURE_REASONS else "error"
    _emit("incr", f"jobs.failed.{reason}", 1, {**tags, "reason": reason})


#: Markers of the operator's own failure messages, in the order they are tested.
_REASON_MARKERS = (
    ("max_spend_per_day:", "spend_cap"),
    ("max_cost:", "max_cost"),
    ("FAILED (not billed)", "job_failed"),
    ("generation_timeout", "timeout"),
)


def failure_reason(message: str) -> str:
    """The ``reason`` of a task failure, read from the operator's message."""
    import re

    for marker, reason in _REASON_MARKERS:
        if marker in message:
            return reason
    return "rejected" if re.search(r"\bHTTP 4\d\d\b", message) else "error"


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
