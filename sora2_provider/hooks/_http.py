"""The hook's HTTP plumbing that holds no state: URL checks, the key-safe session, error tables, destinations."""

from __future__ import annotations

import mimetypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError

from sora2_provider.exceptions import (
    Sora2AuthError,
    Sora2Error,
    Sora2ModelRetiredError,
    Sora2NotFoundError,
    Sora2SubmitUncertainError,
    Sora2ValidationError,
)
from sora2_provider.models import VideoRequest

WRITE_BLOCK_SIZE = 8 * 1024 * 1024  # object-storage part size when streaming a video (S3's minimum is 5 MiB)

IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
ERRORS: dict[int, tuple[type[Sora2Error], str]] = {
    400: (Sora2ValidationError, "Segmind rejected a parameter"),
    401: (Sora2AuthError, "the API key is missing or invalid"),
    403: (Sora2AuthError, "the API key may not do this (model not allowed for the account)"),
    404: (
        Sora2NotFoundError,
        "not found: unknown model, or a request id that is unknown or whose 1-hour record expired",
    ),
    405: (Sora2Error, "method not allowed"),
    410: (Sora2ModelRetiredError, "the model is retired"),
    422: (Sora2ValidationError, "Segmind rejected a parameter"),
}
# Errors raised by requests after the request may have left: a paid call must not be repeated on these.
SENT_ERRORS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


class KeySafeSession(requests.Session):
    """A session that drops ``x-api-key`` on a redirect to another host, as requests does for Authorization."""

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        if response.request.url and self.should_strip_auth(response.request.url, prepared_request.url or ""):
            prepared_request.headers.pop("x-api-key", None)
        super().rebuild_auth(prepared_request, response)


@dataclass(frozen=True)
class PaidCall:
    """A billable POST in flight: what is known when its answer is lost."""

    request: VideoRequest
    endpoint: str
    started_at: datetime

    def uncertain(self, detail: str, **kw: Any) -> Sora2SubmitUncertainError:
        r = self.request
        return Sora2SubmitUncertainError(
            f"{self.endpoint} {r.model} ({r.duration} s, {r.size}) sent at {self.started_at.isoformat()}: {detail}. "
            f"Segmind may have created the job and charged for it (about {r.estimated_cost:.2f} credits). "
            f"It was NOT resubmitted: look it up with find_requests(model={r.model!r}, "
            f"since={self.started_at.isoformat()!r}) before submitting again",
            model=r.model,
            sent_at=self.started_at,
            **kw,
        )


def never_sent(err: requests.RequestException) -> bool:
    """Whether requests failed before a connection existed, so the server cannot have seen the request."""
    if isinstance(err, requests.ConnectTimeout):
        return True
    reason = getattr(err.args[0], "reason", None) if err.args else None
    return isinstance(err, requests.ConnectionError) and isinstance(reason, ConnectTimeoutError)


def usable_url(url: str) -> bool:
    """An http(s) URL with a host, a valid port and no white space."""
    try:
        parts = urlsplit(url)
        return (
            parts.scheme in ("http", "https")
            and bool(parts.hostname)
            and parts.port != 0
            and not any(ch.isspace() for ch in url)
        )
    except ValueError:  # a bad port or IPv6 literal
        return False


def host_url(host: str | None, schema: str | None = None, port: int | None = None) -> str | None:
    """A base URL from a connection host: keeps a given scheme, else ``schema`` or https; adds ``port``."""
    host = (host or "").strip().rstrip("/")
    if not host:
        return None
    if "://" not in host:
        host = f"{schema if schema in ('http', 'https') else 'https'}://{host}"
    if port and urlsplit(host).port is None:
        parts = urlsplit(host)
        host = parts._replace(netloc=f"{parts.netloc}:{port}").geturl()
    return host


def image_mime(data: bytes, name: str) -> str:
    for signature, mime in IMAGE_SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed = mimetypes.guess_type(name)[0]
    if guessed and guessed.startswith("image/"):
        return guessed
    raise ValueError(f"source: {name} is not a PNG, JPEG, WEBP or GIF image")


def as_path(location: Any) -> Any:
    """An ``ObjectStoragePath`` for URLs (``s3://``, ``file://``...) and object-storage paths, else a local Path."""
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    if isinstance(location, ObjectStoragePath):
        return location
    if isinstance(location, str) and "://" in location:
        return ObjectStoragePath(location)
    return Path(os.fspath(location))


@contextmanager
def open_destination(destination: Any) -> Iterator[IO[bytes]]:
    """An open binary file for ``destination``: a file object (left open), an ObjectStoragePath, or a path.

    Object storage is written in ``WRITE_BLOCK_SIZE`` parts (s3fs would buffer 50 MiB by default). A failed
    download may leave a partial file behind: callers write to a temporary name.
    """
    if hasattr(destination, "write"):
        yield destination
        return
    path = as_path(destination)
    opened = path.open("wb") if isinstance(path, Path) else path.open("wb", block_size=WRITE_BLOCK_SIZE)
    with opened as fh:
        yield fh


