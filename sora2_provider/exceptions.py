"""Errors raised by the Sora 2 hook, one class per cause a user acts on differently.

Every message holds the HTTP status, Segmind's own error text and the request id when known;
never the API key. ``retryable`` tells the operator whether an Airflow retry can help.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "Sora2AuthError",
    "Sora2ConfigError",
    "Sora2DownloadError",
    "Sora2Error",
    "Sora2InsufficientCreditsError",
    "Sora2JobFailedError",
    "Sora2ModelRetiredError",
    "Sora2NotFoundError",
    "Sora2RateLimitedError",
    "Sora2ServerError",
    "Sora2SpendCapError",
    "Sora2SubmitUncertainError",
    "Sora2TransientError",
    "Sora2ValidationError",
]


class Sora2Error(Exception):
    """Base of every error of this provider."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        segmind_message: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.segmind_message = segmind_message
        self.request_id = request_id
        parts = [message]
        if status_code is not None:
            parts.append(f"HTTP {status_code}")
        if segmind_message:
            parts.append(f"Segmind says: {segmind_message}")
        if request_id:
            parts.append(f"request_id={request_id}")
        super().__init__(" | ".join(parts))


class Sora2ConfigError(Sora2Error):
    """The ``sora2`` connection is missing or unusable (no key, a host that is not an http(s) URL, a bad extra)."""


class Sora2AuthError(Sora2Error):
    """401/403: the API key is missing or wrong, or the model is not allowed for the account."""


class Sora2InsufficientCreditsError(Sora2Error):
    """406: the balance does not cover the job."""

    def __init__(self, message: str, *, balance: float | None = None, required: float | None = None, **kw) -> None:
        self.balance = balance
        self.required = required
        super().__init__(message, **kw)


class Sora2ValidationError(Sora2Error):
    """400 (or 422 on v1): Segmind rejected a parameter."""


class Sora2NotFoundError(Sora2Error):
    """404: unknown model, or a request id that is unknown or whose 1-hour record expired."""


class Sora2ModelRetiredError(Sora2Error):
    """410: the model was retired."""


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


class Sora2TransientError(Sora2Error):
    """A failure that may pass: rate limit, server error, dropped connection."""

    retryable = True


class Sora2RateLimitedError(Sora2TransientError):
    """429: the account's request rate is exhausted until ``reset_at`` (epoch seconds, when known)."""

    def __init__(self, message: str, *, reset_at: float | None = None, **kw) -> None:
        self.reset_at = reset_at
        super().__init__(message, **kw)


class Sora2ServerError(Sora2TransientError):
    """5xx, a dropped connection or a timeout on a call that is safe to repeat."""


class Sora2JobFailedError(Sora2Error):
    """The job ended FAILED (not billed); Segmind's message says why."""

    retryable = True


class Sora2SubmitUncertainError(Sora2Error):
    """A submit was sent but its answer was lost: a job (and a charge) may exist.

    ``model`` and ``sent_at`` (aware UTC datetime of the first send) are what a caller needs to look the
    job up with ``Sora2Hook.find_requests(model, since=sent_at)`` before deciding to submit again.
    """

    retryable = True

    def __init__(self, message: str, *, model: str | None = None, sent_at: datetime | None = None, **kw) -> None:
        self.model = model
        self.sent_at = sent_at
        super().__init__(message, **kw)


class Sora2DownloadError(Sora2TransientError):
    """The video could not be downloaded completely or is not a valid MP4."""
