"""The daily spend cap's arithmetic: the spend of the last 24 h from request-history rows, the cap in force,
what is still allowed, and the refusal of a paid call that would go over it.

Pure functions of values: :class:`~sora2_provider.hooks.sora2.Sora2Hook` fetches the rows and applies the cap.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sora2_provider.exceptions import Sora2SpendCapError
from sora2_provider.models import HistoryRecord, VideoRequest, estimate_cost

__all__ = [
    "EXTRA",
    "WINDOW",
    "Sora2SpendCapError",
    "Spend",
    "allowance",
    "effective_cap",
    "parse_cap",
    "refusal",
    "row_spend",
    "spend_of",
]

WINDOW = timedelta(hours=24)
EXTRA = "max_spend_per_day"
#: Credits are dollars with cents: sums are compared after rounding, so 5 x 0.8 is exactly 4.0.
PRECISION = 6


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


def effective_cap(conn_cap: float | None, lower_to: float | None) -> float | None:
    """The cap in force: the connection's, lowered (never raised) by ``lower_to``; None when neither is set."""
    caps = [cap for cap in (conn_cap, lower_to) if cap is not None]
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


def spend_of(rows: Iterable[HistoryRecord]) -> Spend:
    """The spend of the history rows of the window (every model): charged plus the estimate of pending jobs."""
    charged = pending = 0.0
    completed_jobs = pending_jobs = 0
    for row in rows:
        kind, credits = row_spend(row)
        if kind == "completed":
            charged += credits
            completed_jobs += 1
        elif kind == "pending":
            pending += credits
            pending_jobs += 1
    return Spend(round(charged, PRECISION), round(pending, PRECISION), completed_jobs, pending_jobs)


def allowance(cap: float, spend: Spend) -> float:
    """Credits still allowed in the window."""
    return round(max(0.0, cap - spend.total), PRECISION)


def refusal(request: VideoRequest, spend: Spend, cap: float) -> Sora2SpendCapError | None:
    """The error refusing ``request`` when its estimate would take ``spend`` over ``cap``, else None."""
    estimate = request.estimated_cost
    if round(spend.total + estimate, PRECISION) <= round(cap, PRECISION):
        return None
    return Sora2SpendCapError(
        f"max_spend_per_day: refusing to submit a {request.model} job ({request.duration} s, {request.size}) "
        f"estimated at {estimate:.2f} credits: {spend.describe()}, and the cap is {cap:.2f} credits per "
        f"rolling 24 h; nothing was submitted",
        cap=cap,
        spent=spend.total,
        estimate=estimate,
    )
