"""The emulated ``GET /inference-request/request-history`` query: its parameters validated as Segmind does, and the
page of the jobs it is given that they select."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from sora2_provider.testing._refusal import Refusal
from sora2_provider.testing.backend import Job

HISTORY_STATUSES = ("COMPLETED", "FAILED", "PENDING")
HISTORY_SORTS = ("model_created", "model_name", "credits_deduction")
MAX_HISTORY_DAYS = 31
DEFAULT_HISTORY_DAYS = 7


@dataclass(frozen=True)
class HistoryQuery:
    """Validated filters of ``GET /inference-request/request-history``."""

    page: int
    per_page: int
    from_date: date
    to_date: date
    model_name: str | None
    status: str | None
    sort_by: str
    descending: bool

    @classmethod
    def parse(cls, params: dict[str, str]) -> HistoryQuery:
        """Parse query parameters; refuse with 400 naming the bad one."""
        page, per_page = _int_param(params, "page", 1, 1), _int_param(params, "per_page", 20, 1, 100)
        to_date = _date_param(params, "to_date") or datetime.now(timezone.utc).date()
        from_date = _date_param(params, "from_date") or to_date - timedelta(days=DEFAULT_HISTORY_DAYS)
        if from_date > to_date or (to_date - from_date).days > MAX_HISTORY_DAYS:
            raise Refusal(400, f"from_date..to_date must be in order and span at most {MAX_HISTORY_DAYS} days")
        status = _choice_param(params, "status", None, HISTORY_STATUSES)
        sort_by = _choice_param(params, "sort_by", "model_created", HISTORY_SORTS)
        order = _choice_param(params, "sort_order", "desc", ("desc", "asc"))
        model = params.get("model_name") or None
        return cls(page, per_page, from_date, to_date, model, status, sort_by or "model_created", order == "desc")

    def page_of(self, jobs: Iterable[Job], now: float) -> tuple[list[Job], int]:
        """The requested page of the ``jobs`` that match, in the requested order, and how many match in all."""
        matching = sorted((job for job in jobs if self.matches(job, now)), key=self.sort_key, reverse=self.descending)
        first = (self.page - 1) * self.per_page
        return matching[first : first + self.per_page], len(matching)

    def matches(self, job: Job, now: float) -> bool:
        created = datetime.fromtimestamp(job.created_at, tz=timezone.utc).date()
        status = job.status(now)
        status = status if status in ("COMPLETED", "FAILED") else "PENDING"
        return (
            self.from_date <= created <= self.to_date
            and (self.model_name is None or self.model_name in job.request.model)
            and (self.status is None or self.status == status)
        )

    def sort_key(self, job: Job) -> tuple[Any, float]:
        primary = {"model_name": job.request.model, "credits_deduction": job.charged}.get(self.sort_by, job.created_at)
        return primary, job.created_at


def _int_param(params: dict[str, str], name: str, default: int, low: int, high: int | None = None) -> int:
    raw = params.get(name)
    try:
        value = default if raw is None else int(raw)
    except ValueError:
        raise Refusal(400, f"{name}: {raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        raise Refusal(400, f"{name}: {value} is out of range {low}..{high or 'any'}")
    return value


def _date_param(params: dict[str, str], name: str) -> date | None:
    raw = params.get(name)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise Refusal(400, f"{name}: {raw!r} is not a YYYY-MM-DD date") from None


def _choice_param(params: dict[str, str], name: str, default: str | None, allowed: Iterable[str]) -> str | None:
    raw = params.get(name) or default
    if raw is not None and raw not in allowed:
        raise Refusal(400, f"{name}: {raw!r} is not one of {', '.join(allowed)}")
    return raw
