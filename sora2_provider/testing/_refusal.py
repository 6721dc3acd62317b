"""The error answers of the emulated API: a :class:`Refusal` is raised anywhere below the HTTP layer, which
answers it as Segmind does (JSON ``{"error": ...}``, or a gateway's HTML page for 405/502/504)."""

from __future__ import annotations

from datetime import datetime, timezone

_ERROR_MESSAGES = {
    400: "Invalid request parameters",
    401: "Invalid API key",
    403: "Model not allowed for this account",
    404: "Not found",
    406: "Insufficient credits",
    410: "Model retired",
    422: "Validation error",
    429: "Rate limit exceeded",
    500: "Internal server error",
    503: "Service temporarily unavailable",
}
_GATEWAY_PAGES = {405: "405 Not Allowed", 502: "502 Bad Gateway", 504: "504 Gateway Time-out"}
REFUSAL_STATUSES = tuple(sorted({*_ERROR_MESSAGES, *_GATEWAY_PAGES}))


class Refusal(Exception):
    """An error answer: HTTP ``status`` with a JSON ``{"error": ...}`` body, or an HTML page for 405/502/504."""

    def __init__(self, status: int, message: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message or _ERROR_MESSAGES.get(status) or _GATEWAY_PAGES.get(status, f"HTTP {status}"))
        self.status = status
        self.message = str(self)
        self.headers = headers or {}
        self.html = message is None and status in _GATEWAY_PAGES

    @property
    def body(self) -> str | dict[str, str]:
        """The JSON body, or the nginx-like HTML page a gateway answers with."""
        if not self.html:
            return {"error": self.message}
        title = self.message
        return f"<html><head><title>{title}</title></head><body><center><h1>{title}</h1></center><hr></body></html>"


def rate_limit_headers(reset_at: float) -> dict[str, str]:
    """The header of a 429: when the window resets, as an ISO 8601 UTC time."""
    return {"x-rate-limit-reset-at-utc": iso(reset_at)}


def iso(epoch: float) -> str:
    """``2025-01-31T12:00:00.000Z`` for an epoch time."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
