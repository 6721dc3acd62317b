"""Segmind's request history, as methods of :class:`~sora2_provider.hooks.sora2.Sora2Hook`."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from sora2_provider.exceptions import Sora2NotFoundError
from sora2_provider.hooks._wire import history_record, history_row, history_rows, parse_timestamp
from sora2_provider.models import HistoryRecord


class HistoryMixin:
    """Find a request again: one row of any age, or a search newest first (the 31-day window)."""

    # ``self: Any``: these methods run on Sora2Hook, whose attributes they use.

    def get_request_record(self: Any, request_id: str) -> HistoryRecord:
        """The history row of one request of any age (status, cost, inputs as sent, output URL)."""
        url = f"{self.history_url}/inference-request/request-history/{quote(request_id, safe='')}"
        what = f"history of {request_id}"
        _, body = self._call_json("GET", url, what=what, request_id=request_id)
        row = history_row(body)
        if row is None:
            raise Sora2NotFoundError(f"{what}: the answer holds no request row", request_id=request_id)
        return history_record(row)

    def find_requests(
        self: Any,
        model: str | None = None,
        since: datetime | None = None,
        *,
        status: str | None = None,
        per_page: int = 100,
        max_pages: int = 20,
    ) -> list[HistoryRecord]:
        """History rows newest first, paging until a row is older than ``since`` (naive = UTC) or rows run out.

        Segmind's history window spans at most 31 days; ``since`` older than that is refused (400).
        """
        if not 1 <= per_page <= 100:
            raise ValueError(f"per_page: {per_page!r} must be between 1 and 100")
        since_utc = since.replace(tzinfo=since.tzinfo or timezone.utc) if since else None
        params = self._history_params(model, since_utc, status, per_page)
        url = f"{self.history_url}/inference-request/request-history"
        found: list[HistoryRecord] = []
        for page in range(1, max_pages + 1):
            _, body = self._call_json("GET", url, what="history search", params={**params, "page": page})
            rows = history_rows(body)
            for record in map(history_record, rows):
                created = parse_timestamp(record.created_at)
                if since_utc and created and created < since_utc:
                    return found
                if (not model or record.model in (None, model)) and (not status or record.status == params["status"]):
                    found.append(record)
            if len(rows) < per_page:
                break
        return found

    @staticmethod
    def _history_params(model: str | None, since: datetime | None, status: str | None, per_page: int) -> dict:
        params: dict[str, Any] = {"per_page": per_page, "sort_by": "model_created", "sort_order": "desc"}
        params["model_name"] = model
        params["status"] = status.upper() if status else None
        if since is not None:
            params["from_date"] = since.astimezone(timezone.utc).date().isoformat()
            params["to_date"] = datetime.now(timezone.utc).date().isoformat()
        return params

