"""The single source of truth for Sora 2 models, their parameters and prices.

Everything that validates a request or estimates a cost (the hook, the operator's ``max_cost``
guard, the credits sensor, the emulator) reads the tables here; there is no second price table.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_DURATION",
    "DURATIONS",
    "MAX_PROMPT_LENGTH",
    "MODELS",
    "TERMINAL_STATUSES",
    "DownloadResult",
    "HistoryRecord",
    "JobResult",
    "JobStatus",
    "ModelSpec",
    "SubmittedJob",
    "SyncResult",
    "VideoRequest",
    "estimate_cost",
    "get_model",
    "plan_cost",
    "validate_duration",
    "validate_input_reference",
    "validate_prompt",
    "validate_size",
]

DURATIONS: tuple[int, ...] = (4, 8, 12)
DEFAULT_DURATION = 8
MAX_PROMPT_LENGTH = 5000


@dataclass(frozen=True)
class ModelSpec:
    """What one Sora 2 model accepts and what it costs."""

    name: str
    default_size: str
    price_per_second: dict[str, float] = field(repr=False)
    typical_generation_seconds: float

    @property
    def sizes(self) -> tuple[str, ...]:
        return tuple(self.price_per_second)


MODELS: dict[str, ModelSpec] = {
    "sora-2": ModelSpec(
        name="sora-2",
        default_size="720x1280",
        price_per_second={"720x1280": 0.10, "1280x720": 0.10},
        typical_generation_seconds=180.0,
    ),
    "sora-2-pro": ModelSpec(
        name="sora-2-pro",
        default_size="1280x720",
        price_per_second={"720x1280": 0.30, "1280x720": 0.30, "1024x1792": 0.50, "1792x1024": 0.50},
        typical_generation_seconds=400.0,
    ),
}


def _allowed(values: Any) -> str:
    return ", ".join(repr(v) for v in values)


def get_model(model: Any) -> ModelSpec:
    """Return the spec of ``model`` or raise ``ValueError`` naming the allowed models."""
    if not isinstance(model, str) or model.strip() not in MODELS:
        raise ValueError(f"model: {model!r} is not a Sora 2 model; allowed values: {_allowed(MODELS)}")
    return MODELS[model.strip()]


def validate_prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("prompt: must be a non-empty string describing the video")
    if len(prompt) > MAX_PROMPT_LENGTH:
        raise ValueError(f"prompt: {len(prompt)} characters is over the limit of {MAX_PROMPT_LENGTH} characters")
    return prompt


def validate_duration(duration: Any) -> int:
    """Accept 4, 8 or 12 as an int or a numeric string (Segmind's own examples send ``"8"``)."""
    value: Any = duration
    if isinstance(duration, str) and duration.strip().isdigit():
        value = int(duration.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value not in DURATIONS:
        raise ValueError(f"duration: {duration!r} is not allowed; allowed values (seconds): {_allowed(DURATIONS)}")
    return value


def validate_size(size: Any, spec: ModelSpec) -> str:
    if size is None or (isinstance(size, str) and not size.strip()):
        return spec.default_size
    if not isinstance(size, str) or size.strip() not in spec.price_per_second:
        raise ValueError(f"size: {size!r} is not allowed for {spec.name}; allowed values: {_allowed(spec.sizes)}")
    return size.strip()


def validate_input_reference(url: Any) -> str | None:
    if url is None or url == "":
        return None
    if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")) or url.endswith("://"):
        raise ValueError(
            f"input_reference: {url!r} is not an http(s) URL; give a public image URL "
            "(the operator uploads a local or object-storage image for you)"
        )
    return url


def estimate_cost(model: str, duration: Any = DEFAULT_DURATION, size: str | None = None) -> float:
    """Credits (USD) that Segmind charges for one video of these parameters."""
    spec = get_model(model)
    seconds = validate_duration(duration)
    resolved_size = validate_size(size, spec)
    return round(spec.price_per_second[resolved_size] * seconds, 4)


@dataclass(frozen=True)
class VideoRequest:
    """A validated Sora 2 generation request. Build it with :meth:`create`."""

    prompt: str
    model: str = "sora-2"
    duration: int = DEFAULT_DURATION
    size: str = "720x1280"
    input_reference: str | None = None

    @classmethod
    def create(
        cls,
        prompt: Any,
        model: Any = "sora-2",
        duration: Any = DEFAULT_DURATION,
        size: Any = None,
        input_reference: Any = None,
    ) -> VideoRequest:
        """Validate and normalise every field; raise ``ValueError`` naming the field and allowed values."""
        spec = get_model(model)
        return cls(
            prompt=validate_prompt(prompt),
            model=spec.name,
            duration=validate_duration(duration),
            size=validate_size(size, spec),
            input_reference=validate_input_reference(input_reference),
        )

    @property
    def estimated_cost(self) -> float:
        return estimate_cost(self.model, self.duration, self.size)

    def to_body(self) -> dict[str, Any]:
        """The flat JSON body Segmind expects (``input_reference`` only when set)."""
        body = {k: v for k, v in asdict(self).items() if k != "model" and v is not None}
        return body

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_cost(jobs: list[dict[str, Any]]) -> float:
    """Total credits for planned work: dicts with ``model``, ``duration``, ``size`` and optional ``count``."""
    if not isinstance(jobs, (list, tuple)) or not jobs:
        raise ValueError("jobs: must be a non-empty list of dicts with model, duration, size and optional count")
    total = 0.0
    for index, job in enumerate(jobs):
        if not isinstance(job, dict):
            raise ValueError(f"jobs[{index}]: {job!r} is not a dict with model, duration, size and optional count")
        count = job.get("count", 1)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"jobs[{index}].count: {count!r} must be a positive integer")
        try:
            model = job.get("model")  # any value: estimate_cost -> get_model refuses a bad one with ValueError
            cost = estimate_cost(model, job.get("duration", DEFAULT_DURATION), job.get("size"))  # type: ignore[arg-type]
        except ValueError as err:
            raise ValueError(f"jobs[{index}].{err}") from None
        total += cost * count
    return round(total, 4)


# ---------------------------------------------------------------------------
# What the hook returns: plain dataclasses, so callers never parse Segmind JSON themselves.
# ---------------------------------------------------------------------------

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED"})


@dataclass(frozen=True)
class SubmittedJob:
    """Answer of an async submit (``POST /v2/{model}``)."""

    request_id: str
    status: str
    status_url: str
    response_url: str


@dataclass(frozen=True)
class JobStatus:
    """Answer of ``GET /v2/requests/{id}/status``; FAILED is a status, not an exception."""

    request_id: str
    status: str
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True)
class JobResult:
    """Answer of ``GET /v2/requests/{id}`` for a COMPLETED job (or a history row that has an output)."""

    request_id: str
    status: str
    output_url: str | None
    cost: float | None = None
    remaining_credits: float | None = None
    generation_seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DownloadResult:
    """What a streamed download wrote."""

    bytes: int
    sha256: str
    content_type: str | None


@dataclass(frozen=True)
class SyncResult:
    """A v1 (sync) generation whose MP4 body was streamed to a destination."""

    request_id: str | None
    download: DownloadResult
    cost: float | None
    remaining_credits: float | None
    generation_seconds: float | None


@dataclass(frozen=True)
class HistoryRecord:
    """One row of Segmind's request history (no 1-hour expiry)."""

    request_id: str
    model: str | None
    status: str | None  # COMPLETED, FAILED or PENDING
    cost: float | None
    request_body: dict[str, Any]
    output_url: str | None
    created_at: str | None
    error: str | None = None
    latency_ms: float | None = None
