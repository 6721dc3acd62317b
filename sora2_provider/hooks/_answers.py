"""Reading Segmind's answers defensively: numbers, times, error text, job and history bodies into models.

Plain functions of parsed bodies and responses; nothing here sends a request or knows the API key.
"""

from __future__ import annotations

import base64
import itertools
import json
import mimetypes
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from sora2_provider.models import HistoryRecord, JobResult, JobStatus, SubmittedJob

IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_ERROR_TEXT_LIMIT = 300
_ERROR_BODY_LIMIT = 16 * 1024
_ROW_LIST_KEYS = ("data", "items", "results", "rows")
_NUMBER = r"(\d+(?:\.\d+)?)"
_BALANCE_RE = re.compile(r"(?:balance|available|remaining|have)\D{0,30}?" + _NUMBER, re.IGNORECASE)
_REQUIRED_RE = re.compile(r"(?:requir\w*|need\w*|cost\w*)\D{0,30}?" + _NUMBER, re.IGNORECASE)


def to_float(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def error_text(response: requests.Response) -> str | None:
    """Segmind's error message: the ``error`` of a JSON body, else a short snippet of the text (HTML too)."""
    raw = b"".join(itertools.islice(response.iter_content(1024), _ERROR_BODY_LIMIT // 1024))
    text = raw.decode(response.encoding or "utf-8", errors="replace").strip()
    if not text:
        return None
    try:
        body = json.loads(text)
    except ValueError:
        return _snippet(re.sub(r"<[^>]*>", " ", text))
    if isinstance(body, dict):
        for key in ("error", "message", "detail", "msg"):
            if body.get(key):
                value = body[key]
                return _snippet(value if isinstance(value, str) else json.dumps(value))
    return _snippet(text)


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _ERROR_TEXT_LIMIT else text[: _ERROR_TEXT_LIMIT - 3] + "..."


def json_body(response: requests.Response) -> Any:
    """The JSON body of a successful answer, or None when it is not JSON."""
    try:
        return response.json()
    except ValueError:
        return None


def is_failed_body(response: requests.Response) -> bool:
    """Whether a (422) answer is the FAILED payload of a v2 job rather than a transport error."""
    body = json_body(response)
    return isinstance(body, dict) and str(body.get("status", "")).upper() == "FAILED"


def credit_numbers(text: str | None) -> tuple[float | None, float | None]:
    """Balance and required credits named in a 406 message, when it names them."""
    balance = _BALANCE_RE.search(text or "")
    required = _REQUIRED_RE.search(text or "")
    return (
        float(balance.group(1)) if balance else None,
        float(required.group(1)) if required else None,
    )


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from epoch seconds/milliseconds, ISO 8601 or an HTTP date; None if unreadable."""
    number = to_float(value)
    if number is not None:
        return datetime.fromtimestamp(number / 1000 if number > 1e11 else number, tz=timezone.utc)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    parsed: datetime | None = None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            parsed = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def first_url(value: Any) -> str | None:
    """An output URL given as a string, a list of strings or an object with ``url``."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value:
        return first_url(value[0])
    if isinstance(value, dict):
        return first_url(value.get("url"))
    return None


def output_url(body: dict[str, Any]) -> str | None:
    """The video URL of a v2 result or v1 JSON answer: ``output``, else ``video.url``."""
    return first_url(body.get("output")) or first_url(body.get("video")) or first_url(body.get("url"))


def history_rows(payload: Any) -> list[dict[str, Any]]:
    """The rows of a history page: a bare list, or a list under data/items/results/rows (one level deep too)."""
    if isinstance(payload, list):
        return [row for row in payload if isinstance(row, dict)]
    if isinstance(payload, dict):
        for key in _ROW_LIST_KEYS:
            value = payload.get(key)
            if isinstance(value, list):
                return history_rows(value)
            if isinstance(value, dict) and "request_id" not in value:
                return history_rows(value)
    return []


def history_row(payload: Any) -> dict[str, Any] | None:
    """The row of a single-request history answer: the object itself or the one under a wrapper key."""
    if isinstance(payload, dict) and "request_id" in payload:
        return payload
    if isinstance(payload, dict):
        for key in ("data", "item", "result", "row"):
            if isinstance(payload.get(key), dict):
                return history_row(payload[key])
    rows = history_rows(payload)
    return rows[0] if rows else None


def history_record(row: dict[str, Any]) -> HistoryRecord:
    """A :class:`HistoryRecord` from a history row, every key read with ``.get``."""
    body = row.get("request_body")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            body = {"raw": body}
    created = next((row[k] for k in ("created_at", "model_created", "createdAt", "created") if row.get(k)), None)
    status = row.get("model_status") or row.get("status")
    return HistoryRecord(
        request_id=str(row.get("request_id") or ""),
        model=row.get("model_name") or row.get("model"),
        status=str(status).upper() if status else None,
        cost=to_float(row.get("credits_deduction", row.get("cost"))),
        request_body=body if isinstance(body, dict) else {},
        output_url=first_url(row.get("generation_url")) or first_url(row.get("output")),
        created_at=str(created) if created is not None else None,
        error=row.get("error") or None,
        latency_ms=to_float(row.get("latency_ms")),
    )


def credits(body: Any) -> dict[str, float]:
    """``{"credits": float, "free_credits": float}`` from the credits answer."""
    body = body if isinstance(body, dict) else {}
    free = body.get("free-credits", body.get("free_credits"))
    return {"credits": to_float(body.get("credits")) or 0.0, "free_credits": to_float(free) or 0.0}


def submitted_job(body: dict[str, Any], request_id: str, job_url: str) -> SubmittedJob:
    """The v2 submit answer; ``job_url`` is the job's address when the answer names none."""
    return SubmittedJob(
        request_id=request_id,
        status=str(body.get("status") or "QUEUED"),
        status_url=body.get("status_url") or f"{job_url}/status",
        response_url=body.get("response_url") or job_url,
    )


def job_status(body: dict[str, Any], request_id: str) -> JobStatus:
    metrics = body.get("metrics")
    return JobStatus(
        request_id=str(body.get("request_id") or request_id),
        status=str(body.get("status") or "UNKNOWN").upper(),
        error=body.get("error") or None,
        metrics=metrics if isinstance(metrics, dict) else {},
    )


def result_status(body: dict[str, Any]) -> str:
    """The status of a v2 result: COMPLETED when it holds an output URL and names no status."""
    return str(body.get("status") or ("COMPLETED" if output_url(body) else "UNKNOWN")).upper()


def job_result(body: dict[str, Any], request_id: str) -> JobResult:
    """A v2 result that did not fail; ``output_url`` only once COMPLETED."""
    status = result_status(body)
    metrics = body.get("metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    return JobResult(
        request_id=str(body.get("request_id") or request_id),
        status=status,
        output_url=output_url(body) if status == "COMPLETED" else None,
        cost=to_float(metrics.get("cost")),
        remaining_credits=to_float(metrics.get("remaining_credits")),
        generation_seconds=to_float(metrics.get("inference_time")),
        metrics=metrics,
    )


def history_params(model: str | None, since: datetime | None, status: str | None, per_page: int) -> dict[str, Any]:
    """Query parameters of a history search, newest first, from ``since``'s day to today (UTC)."""
    params: dict[str, Any] = {"per_page": per_page, "sort_by": "model_created", "sort_order": "desc"}
    params["model_name"] = model
    params["status"] = status.upper() if status else None
    if since is not None:
        params["from_date"] = since.astimezone(timezone.utc).date().isoformat()
        params["to_date"] = datetime.now(timezone.utc).date().isoformat()
    return params


def matching_records(
    rows: list[dict[str, Any]], since: datetime | None, model: str | None, status: str | None
) -> tuple[list[HistoryRecord], bool]:
    """The records of one history page that match ``model`` and ``status``, and whether the page went past
    ``since`` (rows come newest first, so later pages hold only older rows)."""
    found: list[HistoryRecord] = []
    for record in map(history_record, rows):
        created = parse_timestamp(record.created_at)
        if since and created and created < since:
            return found, True
        if (not model or record.model in (None, model)) and (not status or record.status == status.upper()):
            found.append(record)
    return found, False


def image_data_url(data: bytes, name: str) -> str:
    """The ``data:`` URL of an image, as the upload call takes it."""
    return f"data:{image_mime(data, name)};base64,{base64.b64encode(data).decode('ascii')}"


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
