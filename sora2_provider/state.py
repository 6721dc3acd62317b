"""The job record that lets a retry find the video it already paid for.

A small JSON object beside the output (``<output dir>/_sora2_state/<identity>.json``) survives XCom
clearing, worker crashes and triggerer restarts. It is written *before* the paid submit (the intent)
and completed with the request id right after. Identity is run-stable (no try number); the
fingerprint tells whether the inputs are still the ones that were paid for.

A second object, ``<output dir>/_sora2_state/<file name>.meta.json``, records what was stored at the
output after success, so a rerun can return it without calling Segmind.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from sora2_provider.models import HistoryRecord, VideoRequest

STATE_DIR = "_sora2_state"


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def identity_key(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    """Same value for every try of one task instance, different for any other."""
    return _digest(
        {"dag_id": dag_id, "task_id": task_id, "run_id": run_id, "map_index": -1 if map_index is None else map_index}
    )


def fingerprint(request: VideoRequest, conn_id: str, input_reference: str | None) -> str:
    """Hash of everything that decides what is paid for. ``input_reference`` is the user's value (a path or
    URL), not the URL an upload returned, so re-uploading the same image on a retry keeps the fingerprint."""
    return _digest(
        {
            "model": request.model,
            "prompt": request.prompt,
            "duration": request.duration,
            "size": request.size,
            "input_reference": input_reference,
            "conn_id": conn_id,
        }
    )


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class JobRecord:
    """What one task instance has committed to pay for."""

    identity: str
    fingerprint: str
    intent_at: str
    model: str
    body: dict[str, Any] = field(default_factory=dict)
    mode: str = "async"
    request_id: str | None = None
    submitted_at: str | None = None
    decision: str = "new_submit"  # how this try came to the job: new_submit, resumed, adopted_from_history

    def with_request(self, request_id: str, submitted_at: str | None = None) -> JobRecord:
        return replace(self, request_id=request_id, submitted_at=submitted_at or utcnow().isoformat())

    def with_decision(self, decision: str) -> JobRecord:
        return replace(self, decision=decision)

    @property
    def resumed_from(self) -> str | None:
        """The request id an earlier try paid for, when this try did not submit it itself."""
        return None if self.decision == "new_submit" else self.request_id

    @property
    def started_at(self) -> datetime:
        """When the job (or its intent) began: the origin of the generation timeout."""
        return datetime.fromisoformat(self.submitted_at or self.intent_at)

    def matches(self, row: HistoryRecord) -> bool:
        """Does a request-history row carry exactly the inputs this record meant to send?"""
        if row.model and row.model != self.model:
            return False
        sent = row.request_body or {}
        for key, expected in self.body.items():
            value = sent.get(key)
            if key == "duration" and value is not None and str(value).strip() == str(expected):
                continue
            if value != expected:
                return False
        return True


class JobStateStore:
    """Reads and writes the records of one output location."""

    def __init__(self, output_path: ObjectStoragePath, identity: str) -> None:
        self.state_dir = output_path.parent / STATE_DIR
        self.record_path = self.state_dir / f"{identity[:32]}.json"
        self.meta_path = self.state_dir / f"{output_path.name}.meta.json"

    def read(self) -> JobRecord | None:
        data = _read_json(self.record_path)
        return JobRecord(**data) if data else None

    def write(self, record: JobRecord) -> None:
        _write_json(self.record_path, asdict(record))

    def delete(self) -> None:
        self.record_path.unlink(missing_ok=True)

    def read_meta(self) -> dict[str, Any] | None:
        return _read_json(self.meta_path)

    def write_meta(self, meta: dict[str, Any]) -> None:
        _write_json(self.meta_path, meta)


def _read_json(path: ObjectStoragePath) -> dict[str, Any] | None:
    try:
        with path.open("rb") as handle:
            return json.loads(handle.read())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # a torn or foreign file is treated as absent; the request history is the backstop


def _write_json(path: ObjectStoragePath, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from sora2_provider.storage import atomic_writer

    with atomic_writer(path) as handle:
        handle.write(json.dumps(data, sort_keys=True, indent=1).encode())
