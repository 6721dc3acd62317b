"""The job records' two homes: chosen per task instance, and each one reading back what it wrote."""

from __future__ import annotations

import pytest
from airflow.providers.common.compat.sdk import ObjectStoragePath

from sora2_provider.operators._output import job_state_store, warn_if_local_file_on_remote_workers
from sora2_provider.state import JobRecord, ObjectStateRecords, TaskStateRecords, identity_key

IDENTITY = identity_key("dag", "task", "run", -1)


class MemoryAccessor:
    """The get/set/delete surface of Airflow 3.3's ``TaskStateStoreAccessor``, kept in a dict."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def get(self, key, default=None):
        return self.values.get(key, default)

    def set(self, key, value):
        assert value is not None
        self.values[key] = value

    def delete(self, key):
        self.values.pop(key, None)


def record() -> JobRecord:
    return JobRecord(identity=IDENTITY, fingerprint="f" * 64, intent_at="2026-01-01T00:00:00+00:00", model="sora-2")


@pytest.fixture
def output(tmp_path) -> ObjectStoragePath:
    return ObjectStoragePath(f"file://{tmp_path}/videos/clip.mp4")


def test_a_named_root_wins_over_the_task_state_store(tmp_path, output):
    root = ObjectStoragePath(f"file://{tmp_path}/records/")
    store = job_state_store({"task_state_store": MemoryAccessor()}, output, IDENTITY, root)
    assert isinstance(store, ObjectStateRecords) and str(store.record_path).startswith(str(root))


def test_the_task_state_store_is_used_where_airflow_has_one(output):
    accessor = MemoryAccessor()
    store = job_state_store({"task_state_store": accessor}, output, IDENTITY, None)
    assert isinstance(store, TaskStateRecords)
    store.write(record().with_request("req-1"))
    store.write_meta({"bytes": 3})
    assert set(accessor.values) == {"sora2_job", "sora2_output"}
    assert store.read().request_id == "req-1" and store.read_meta() == {"bytes": 3}
    store.delete()
    assert store.read() is None and "sora2_job" in store.location
    assert not output.parent.exists(), "nothing is written beside the output"


def test_without_a_task_state_store_the_records_go_beside_the_output(output):
    store = job_state_store({}, output, IDENTITY, None)
    store.write(record())
    store.write_meta({"bytes": 3})
    names = sorted(p.name for p in (output.parent / "_sora2_state").iterdir())
    assert names == sorted([f"{IDENTITY[:32]}.json", "clip.mp4.meta.json"])
    assert store.read() == record()
    store.delete()
    assert store.read() is None and store.read_meta() == {"bytes": 3}


def test_under_a_root_the_output_note_is_keyed_by_the_output_not_the_run(tmp_path, output):
    root = ObjectStoragePath(f"file://{tmp_path}/records/")
    first = ObjectStateRecords.under(root, identity_key("dag", "task", "run-1", -1), output)
    second = ObjectStateRecords.under(root, identity_key("dag", "task", "run-2", -1), output)
    other = ObjectStateRecords.under(root, IDENTITY, ObjectStoragePath(f"file://{tmp_path}/videos/other.mp4"))
    first.write_meta({"bytes": 7})
    assert second.read_meta() == {"bytes": 7} and other.read_meta() is None
    assert first.record_path != second.record_path


def test_a_torn_record_reads_as_absent(output):
    store = ObjectStateRecords.beside(output, IDENTITY)
    store.record_path.parent.mkdir(parents=True)
    store.record_path.write_bytes(b'{"identity": ')
    assert store.read() is None


@pytest.mark.parametrize(
    ("executor", "output_uri", "warned"),
    [
        ("CeleryExecutor", "file:///tmp/v.mp4", True),
        ("LocalExecutor,KubernetesExecutor", "file:///tmp/v.mp4", True),
        ("LocalExecutor", "file:///tmp/v.mp4", False),
        ("CeleryExecutor", "memory://bucket/v.mp4", False),  # shared storage (no S3 client cached here)
    ],
)
def test_a_local_file_on_remote_workers_is_warned_about(monkeypatch, capfd, executor, output_uri, warned):
    from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", executor)
    operator = Sora2GenerateVideoOperator(task_id="generate", prompt="a kite", output_path=output_uri)
    capfd.readouterr()
    warn_if_local_file_on_remote_workers(operator.executor, ObjectStoragePath(output_uri), operator.log)
    messages = [line for line in capfd.readouterr().out.splitlines() if "is a local file" in line]
    assert len(messages) == (1 if warned else 0), messages
    if warned:
        assert "downstream tasks elsewhere will not see it" in messages[0]
