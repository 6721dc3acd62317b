"""The daily spend cap: the account's spend over the last 24 hours, read from Segmind's request history.

``max_spend_per_day`` (credits, a rolling 24 h window) is a ``sora2`` connection extra; an operator's
``max_spend_per_day`` may only lower it. Before each *new* paid call (``POST /v2/{model}``, ``POST /v1/{model}``)
the hook sums the account's spend since 24 h ago: the ``credits_deduction`` of every COMPLETED request plus the
estimated cost (price table of :mod:`sora2_provider.models`) of every request still PENDING (Segmind charges at
completion). FAILED requests cost nothing. A call whose estimate would take that sum over the cap is refused
before anything is sent, with :class:`Sora2SpendCapError` (not retryable). A resumed or adopted job sends no
paid call, so it is never refused.

Concurrency: the history shows a job once its submit has been answered, so two workers checking at the same
moment both see the other's job missing. With at most ``P`` tasks running at once against the connection (a pool
of ``P`` slots), the spend can exceed the cap by at most ``(P - 1) x`` the largest job's cost.

Imported lazily (hook, operator, sensor and trigger import it inside methods): DAG parsing pays nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sora2_provider.exceptions import Sora2Error
from sora2_provider.models import HistoryRecord, estimate_cost

if TYPE_CHECKING:
    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.models import VideoRequest

WINDOW = timedelta(hours=24)
EXTRA = "max_spend_per_day"
#: Credits are dollars with cents: sums are compared after rounding, so 5 x 0.8 is exactly 4.0.
PRECISION = 6


class Sora2SpendCapError(Sora2Error):
    """A paid call refused because it would take the rolling 24 h spend over ``max_spend_per_day``.

    Nothing was sent to Segmind: no job exists and nothing was charged.
    """

    retryable = False
    nothing_sent = True

    def __init__(self, message: str, *, cap: float, spent: float, estimate: float) -> None:
        self.cap = cap
        self.spent = spent
        self.estimate = estimate
        super().__init__(message)


@dataclass(frozen=True)
class Spend:
    """The account's spend in the window: charged (COMPLETED) plus estimated (PENDING), in credits."""

    charged: float
    pending: float
    completed_jobs: int
    pending_jobs: int

    @property
    def total(self) -> float:
        return round(self.charged + self.pending, PRECISION)

    def describe(self) -> str:
        return (
            f"{self.total:.2f} credits spent in the last 24 h ({self.charged:.2f} charged for {self.completed_jobs} "
            f"completed jobs + {self.pending:.2f} estimated for {self.pending_jobs} pending)"
        )


def parse_cap(value: Any, where: str) -> float | None:
    """A cap in credits (>= 0) from a connection extra or an argument; None or '' means no cap."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        cap = float(value)
    except (TypeError, ValueError):
        cap = -1.0
    if isinstance(value, bool) or not cap >= 0 or cap == float("inf"):
        raise ValueError(f"{where}: {value!r} must be a number of credits >= 0")
    return cap


def effective_cap(hook: Sora2Hook, lower_to: float | None = None) -> float | None:
    """The cap in force: the connection's ``max_spend_per_day``, lowered (never raised) by ``lower_to``."""
    from sora2_provider.exceptions import Sora2ConfigError

    try:
        conn_cap = parse_cap(hook.extras.get(EXTRA), f"connection {hook.sora2_conn_id!r}: extra {EXTRA}")
    except ValueError as err:
        raise Sora2ConfigError(str(err)) from None
    caps = [cap for cap in (conn_cap, lower_to) if cap is not None]
    if lower_to is not None and conn_cap is not None and lower_to > conn_cap:
        hook.log.warning(
            "max_spend_per_day=%.2f cannot raise the connection's cap of %.2f credits; %.2f applies.",
            lower_to,
            conn_cap,
            conn_cap,
        )
    return min(caps) if caps else None


def row_spend(row: HistoryRecord) -> tuple[str, float]:
    """('completed' | 'pending' | 'free', credits) of one history row."""
    status = (row.status or "").upper()
    if status == "FAILED":
        return "free", 0.0
    if status == "COMPLETED" and row.cost is not None:
        return "completed", row.cost
    body = row.request_body or {}
    try:
        estimate = estimate_cost(row.model or "", body.get("duration", 8), body.get("size"))
    except ValueError:  # a model or body this provider does not price: count what Segmind says it charged
        estimate = row.cost or 0.0
    return ("completed" if status == "COMPLETED" else "pending"), estimate


def rolling_spend(hook: Sora2Hook, now: datetime | None = None) -> Spend:
    """The account's spend over the last 24 h, from the request history (every model)."""
    now = now or datetime.now(timezone.utc)
    since = now - WINDOW
    charged = pending = 0.0
    completed_jobs = pending_jobs = 0
    for row in hook.find_requests(since=since):
        kind, credits = row_spend(row)
        if kind == "completed":
            charged += credits
            completed_jobs += 1
        elif kind == "pending":
            pending += credits
            pending_jobs += 1
    return Spend(round(charged, PRECISION), round(pending, PRECISION), completed_jobs, pending_jobs)


def allowance(hook: Sora2Hook, lower_to: float | None = None) -> tuple[float, Spend] | None:
    """(credits still allowed today, the spend) when a cap is in force, else None."""
    cap = effective_cap(hook, lower_to)
    if cap is None:
        return None
    spend = rolling_spend(hook)
    return round(max(0.0, cap - spend.total), PRECISION), spend


def enforce_spend_cap(hook: Sora2Hook, request: VideoRequest) -> None:
    """Refuse (before anything is sent) a paid call that would take the 24 h spend over the cap in force."""
    cap = effective_cap(hook, hook.max_spend_per_day)
    if cap is None:
        return
    from sora2_provider import metrics

    estimate = request.estimated_cost
    spend = rolling_spend(hook)
    if round(spend.total + estimate, PRECISION) > round(cap, PRECISION):
        metrics.spend_cap_refused(estimate, model=request.model)
        raise Sora2SpendCapError(
            f"max_spend_per_day: refusing to submit a {request.model} job ({request.duration} s, {request.size}) "
            f"estimated at {estimate:.2f} credits: {spend.describe()}, and the cap is {cap:.2f} credits per "
            f"rolling 24 h; nothing was submitted",
            cap=cap,
            spent=spend.total,
            estimate=estimate,
        )
    hook.log.info(
        "Spend cap: %s; this job's estimate %.2f keeps it within the cap of %.2f credits.",
        spend.describe(),
        estimate,
        cap,
    )
