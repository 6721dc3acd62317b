"""The faults a test can queue on the emulator's endpoints: what each kind means, where it applies, and the check of
a fault's options."""

from __future__ import annotations

from dataclasses import dataclass

from sora2_provider.testing._refusal import REFUSAL_STATUSES

ENDPOINTS = (
    "submit_v2",
    "submit_v1",
    "status",
    "result",
    "download",
    "credits",
    "upload",
    "asset",
    "history",
    "history_item",
)
FAULT_KINDS = ("status", "reset", "slow", "truncate", "fail_job", "submit_502_after_create", "submit_drop_after_create")
FAULT_ENDPOINTS = {
    "truncate": ("download", "submit_v1"),
    "fail_job": ("submit_v2", "submit_v1"),
    "submit_502_after_create": ("submit_v2",),
    "submit_drop_after_create": ("submit_v2",),
}
FAULT_STATUSES = REFUSAL_STATUSES  # a "status" fault may answer any status the emulator knows


@dataclass
class Fault:
    """A misbehaviour for calls ``first_call`` .. ``last_call`` (1-based counts) of ``endpoint``."""

    endpoint: str
    kind: str
    first_call: int
    last_call: int
    status: int | None = None
    message: str | None = None
    delay: float | None = None
    after_bytes: int | None = None


def check_fault(
    endpoint: str, kind: str, on_call: int, times: int, status: int | None, delay: float | None, after_bytes: int | None
) -> None:
    """Refuse (ValueError naming the option) a fault that could not happen as asked."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint: {endpoint!r} is not one of {', '.join(ENDPOINTS)}")
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(FAULT_KINDS)}")
    if endpoint not in FAULT_ENDPOINTS.get(kind, ENDPOINTS):
        raise ValueError(f"kind {kind!r} applies only to {', '.join(FAULT_ENDPOINTS[kind])}")
    if on_call < 1 or times < 1:
        raise ValueError("on_call and times must be at least 1")
    if kind == "status" and status not in FAULT_STATUSES:
        raise ValueError(f"status: {status!r} is not one of {', '.join(map(str, FAULT_STATUSES))}")
    if kind == "slow" and (delay is None or delay < 0):
        raise ValueError("a 'slow' fault needs delay >= 0 (seconds)")
    if kind == "truncate" and (after_bytes is None or after_bytes < 0):
        raise ValueError("a 'truncate' fault needs after_bytes >= 0")
