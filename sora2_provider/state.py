"""The job record that lets a retry find the video it already paid for, and the note of what was stored.

Two homes for them: Airflow's task state store (:class:`TaskStateRecords`, 3.3+) or small JSON objects in object
storage (:class:`ObjectStateRecords`: beside the output, or under a root the user names).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sora2_provider.storage import atomic_writer

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from sora2_provider.models import HistoryRecord, VideoRequest

__all__ = [
    "JOB_RECORD_KEY",
    "OUTPUT_NOTE_KEY",
    "STATE_DIR",
    "JobRecord",
    "JobStateStore",
    "ObjectStateRecords",
    "TaskStateRecords",
    "fingerprint",
    "identity_key",
    "utcnow",
]

STATE_DIR = "_sora2_state"
#: Keys of the job record and the output note in Airflow's task state store (also read by the plugin).
JOB_RECORD_KEY, OUTPUT_NOTE_KEY = "sora2_job", "sora2_output"
RECORD, OUTPUT_NOTE = "record", "output"
TASK_STATE_KEYS = {RECORD: JOB_RECORD_KEY, OUTPUT_NOTE: OUTPUT_NOTE_KEY}


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
    """Reads and writes the job record and the output note of one task instance."""

    #: Where the records live, for messages ("Delete ... to allow a new submit").
    location: str

    def read(self) -> JobRecord | None:
        data = self._get(RECORD)
        return JobRecord(**data) if data else None

    def write(self, record: JobRecord) -> None:
        self._set(RECORD, asdict(record))

    def delete(self) -> None:
        self._delete(RECORD)

    def read_meta(self) -> dict[str, Any] | None:
        return self._get(OUTPUT_NOTE)

    def write_meta(self, meta: dict[str, Any]) -> None:
        self._set(OUTPUT_NOTE, meta)

    def _get(self, which: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def _set(self, which: str, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def _delete(self, which: str) -> None:
        raise NotImplementedError


class TaskStateRecords(JobStateStore):
    """Records in Airflow's ``task_state_store`` (keys ``sora2_job`` and ``sora2_output``)."""

    def __init__(self, accessor: Any) -> None:
        self._accessor = accessor
        self.location = f"the task state store of this task instance (key {JOB_RECORD_KEY!r})"

    def _get(self, which: str) -> dict[str, Any] | None:
        value = self._accessor.get(TASK_STATE_KEYS[which])
        return value if isinstance(value, dict) else None

    def _set(self, which: str, data: dict[str, Any]) -> None:
        self._accessor.set(TASK_STATE_KEYS[which], data)

    def _delete(self, which: str) -> None:
        self._accessor.delete(TASK_STATE_KEYS[which])


class ObjectStateRecords(JobStateStore):
    """Records as JSON objects: beside the output (:meth:`beside`) or under a chosen root (:meth:`under`)."""

    def __init__(self, record_path: ObjectStoragePath, meta_path: ObjectStoragePath) -> None:
        self.record_path = record_path
        self.meta_path = meta_path
        self.location = str(record_path)

    @classmethod
    def beside(cls, output_path: ObjectStoragePath, identity: str) -> ObjectStateRecords:
        """``<output dir>/_sora2_state/<identity>.json`` and ``<output dir>/_sora2_state/<file name>.meta.json``."""
        state_dir = output_path.parent / STATE_DIR
        return cls(state_dir / f"{identity[:32]}.json", state_dir / f"{output_path.name}.meta.json")

    @classmethod
    def under(cls, root: ObjectStoragePath, identity: str, output_path: ObjectStoragePath) -> ObjectStateRecords:
        """``<root>/<identity>.json`` and ``<root>/<digest of the output>.meta.json``: one root serves many tasks
        and outputs, and the note of an output is found by any run that writes there."""
        return cls(root / f"{identity[:32]}.json", root / f"{_digest(str(output_path))[:32]}.meta.json")

    def _path(self, which: str) -> ObjectStoragePath:
        return self.record_path if which == RECORD else self.meta_path

    def _get(self, which: str) -> dict[str, Any] | None:
        return _read_json(self._path(which))

    def _set(self, which: str, data: dict[str, Any]) -> None:
        _write_json(self._path(which), data)

    def _delete(self, which: str) -> None:
        self._path(which).unlink(missing_ok=True)


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
    with atomic_writer(path) as handle:
        handle.write(json.dumps(data, sort_keys=True, indent=1).encode())
