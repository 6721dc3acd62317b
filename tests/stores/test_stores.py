"""The same contract on every object store (S3, GCS, Azure Blob), each against its local API over real HTTP,
with real ``dag.test()`` runs: a valid MP4 whose size and sha256 match the XCom (deferrable and sync), an
atomic write (a concurrent reader never sees a part; a cut download leaves nothing to read and nothing to pay
for), a private reference image in the store uploaded by the hook, the store's own console link, and the job
record with a rerun that costs nothing. Memory (1 GiB output, <= 64 MiB added) is the P2 benchmark's
``provider_gcs`` / ``provider_azure`` / ``provider_s3`` rows (``make bench BENCH_ARGS="--only P2"``)."""

from __future__ import annotations

import datetime
import gc
import hashlib
import threading
from typing import Any

import pytest

from tests.operator.test_generate_video import charged, run_generate
from tests.stores.conftest import Store
from tests.support import TEST_API_KEY, TEST_BALANCE, connection_json, probe_mp4, xcom_value

MiB = 1024 * 1024
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def assert_stored(store: Store, name: str, result: dict[str, Any]) -> bytes:
    data = store.read(name)
    assert data is not None, f"nothing at {store.uri(name)}"
    assert probe_mp4(data)[:2] == (1280, 720)
    assert result["uri"] == store.uri(name)
    assert (result["bytes"], result["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    return data


def test_deferrable_generation_with_a_private_image_and_records_in_the_store(sora2_conn, dag_runner, store):
    """Deferrable run; the reference image and the job records live in the store; then a rerun of the same
    logical date (``dag.test()`` deletes the old run) finds the record there and makes no Segmind call."""
    import requests

    store.put("refs/ref.png", PNG)
    kwargs = {
        "output_path": store.uri("out.mp4"),
        "prompt": "a lighthouse at dusk",
        "duration": 4,
        "size": "1280x720",
        "deferrable": True,
        "input_reference": store.uri("refs/ref.png"),
        "state_path": store.uri("_sora2_state/"),
        "logical_date": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc),
    }
    dag_id = f"stores_deferred_{store.name}"
    first = run_generate(dag_runner, dag_id, **kwargs)

    assert first.state == "success"
    result = xcom_value(first, "generate")
    assert_stored(store, "out.mp4", result)
    assert result["decision"] == "new_submit" and [j["request_id"] for j in charged(sora2_conn)] == [
        result["request_id"]
    ]
    history = requests.get(
        f"{sora2_conn.url}/inference-request/request-history", headers={"x-api-key": TEST_API_KEY}, timeout=5
    ).json()
    uploaded = history["data"][0]["request_body"]["input_reference"]
    assert uploaded.startswith(sora2_conn.url), "the private image was not uploaded to Segmind"
    assert requests.get(uploaded, timeout=5).content == PNG
    assert xcom_value(first, "generate", key="_link_Sora2VideoLink") == store.console("out.mp4")
    assert store.listed_prefix("_sora2_state/"), "no job record under state_path in the store"

    calls = len(sora2_conn.request_log)
    second = run_generate(dag_runner, dag_id, **kwargs)

    assert second.state == "success"
    assert len(sora2_conn.request_log) == calls, "the rerun called Segmind"
    again = xcom_value(second, "generate")
    assert again["decision"] == "existing_output"
    assert {k: v for k, v in again.items() if k != "decision"} == {k: v for k, v in result.items() if k != "decision"}


def test_sync_generation_then_a_rerun_in_the_default_layout(sora2_conn, dag_runner, store):
    """``mode="sync"`` streams the v1 answer into the store; the job record is in the task state store (3.3);
    a rerun of the same logical date (its records deleted with the run) keeps the verified MP4, no call."""
    kwargs = {
        "output_path": store.uri("sync.mp4"),
        "prompt": "a paper kite",
        "duration": 4,
        "size": "1280x720",
        "mode": "sync",
        "deferrable": False,
        "logical_date": datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc),
    }
    dag_id = f"stores_sync_{store.name}"
    first = run_generate(dag_runner, dag_id, **kwargs)

    assert first.state == "success"
    result = xcom_value(first, "generate")
    data = assert_stored(store, "sync.mp4", result)
    assert len(charged(sora2_conn)) == 1
    assert not store.listed_prefix("_sora2_state/") and not store.listed("sync.mp4.meta.json")

    calls = len(sora2_conn.request_log)
    second = run_generate(dag_runner, dag_id, **kwargs)

    assert second.state == "success"
    assert len(sora2_conn.request_log) == calls, "the rerun called Segmind"
    again = xcom_value(second, "generate")
    assert again["decision"] == "existing_output"
    assert (again["bytes"], again["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.read("sync.mp4") == data


@pytest.fixture
def big_emulator(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An emulator serving 20 MiB MP4s: the upload of one spans several 8 MiB parts / chunks / blocks."""
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=0.005, api_keys={TEST_API_KEY: TEST_BALANCE}, pad_output_to=20 * MiB) as emu:
        monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emu.url))
        yield emu


class Reader(threading.Thread):
    """Lists and reads the output key again and again until stopped; keeps what each look saw."""

    def __init__(self, store: Store, name: str) -> None:
        super().__init__(daemon=True)
        self.store, self.name = store, name
        self.stop = threading.Event()
        self.seen: list[tuple[int, bool, str | None]] = []  # (pending writes, listed, sha256 of what was read)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                pending = self.store.pending(self.name)
                listed = self.store.listed(self.name)
                data = self.store.read(self.name)
                self.seen.append((pending, listed, None if data is None else hashlib.sha256(data).hexdigest()))
                self.stop.wait(0.05)
        except BaseException as err:
            self.error = err


def test_a_concurrent_reader_sees_nothing_or_the_whole_file(big_emulator, dag_runner, store):
    """The download stalls 3 s after 17 MiB (two 8 MiB parts already sent to the store): the reader, running
    all along, must see the in-progress write (parts / session / staged blocks) and never an object that is
    not the final one."""
    big_emulator.add_fault("download", "slow", delay=3.0, after_bytes=17 * MiB)
    reader = Reader(store, "out.mp4")
    reader.start()
    try:
        run = run_generate(dag_runner, f"stores_reader_{store.name}", output_path=store.uri("out.mp4"),
                           prompt="a glacier", duration=4, size="1280x720", deferrable=False)
    finally:
        reader.stop.set()
        reader.join(timeout=60)
    assert reader.error is None, reader.error
    assert run.state == "success"
    final = hashlib.sha256(store.read("out.mp4") or b"").hexdigest()
    assert xcom_value(run, "generate")["bytes"] == 20 * MiB
    # A look is three calls in a row (the write may finish between them): it proves the write was in progress
    # when it found pending parts / a session / staged blocks and nothing at the key.
    during = [look for look in reader.seen if look[0] and not look[1] and look[2] is None]
    assert during, f"the reader never saw the write in progress with nothing at the key ({reader.seen[:5]}...)"
    assert {sha for _, _, sha in reader.seen} <= {None, final}, "the reader saw an object that is not the video"


def test_a_download_cut_mid_stream_leaves_nothing_and_nothing_to_pay_for(big_emulator, dag_runner, store):
    """The first download stops after 17 MiB and every resume gets no byte: the try fails. Nothing is at the
    key, and no unfinished upload is held (S3: aborted, GCS: session cancelled). Azure has no call that drops
    staged blocks of a blob that does not exist: they stay uncommitted (never visible, deleted by Azure after
    7 days) until the next write of the key commits its own list, which the retry does."""
    big_emulator.add_fault("download", "truncate", after_bytes=17 * MiB)
    big_emulator.add_fault("download", "truncate", after_bytes=0, on_call=2, times=50)
    kwargs = {"output_path": store.uri("cut.mp4"), "prompt": "a canyon", "duration": 4, "size": "1280x720",
              "deferrable": False, "state_path": store.uri("_sora2_state/"),
              "logical_date": datetime.datetime(2026, 1, 3, tzinfo=datetime.timezone.utc)}
    dag_id = f"stores_cut_{store.name}"
    failed = run_generate(dag_runner, dag_id, **kwargs)
    gc.collect()  # a file object left to its finaliser must not commit what it holds

    assert failed.state == "failed"
    assert store.read("cut.mp4") is None and not store.listed("cut.mp4")
    if store.name == "azure":
        assert store.pending("cut.mp4") > 0  # staged, uncommitted: what the docstring describes
    else:
        assert store.pending("cut.mp4") == 0, "an unfinished upload is left for the user to pay for"

    big_emulator.clear_faults()
    retried = run_generate(dag_runner, dag_id, **kwargs)

    assert retried.state == "success"
    result = xcom_value(retried, "generate")
    assert result["decision"] == "resumed" and len(charged(big_emulator)) == 1  # the paid job, downloaded again
    assert_stored(store, "cut.mp4", result)
    assert store.pending("cut.mp4") == 0  # Azure: the commit dropped the earlier try's staged blocks


def test_atomic_writer_error_leaves_nothing_even_after_the_file_is_collected(store, airflow_db):
    """``atomic_writer`` itself, on each store: 9 MiB written (one part / chunk / block sent), then an error;
    once the file object is garbage-collected nothing may appear (adlfs commits staged blocks on ``close()``,
    which the finaliser calls; s3fs would start a multipart upload there)."""
    from sora2_provider.storage import atomic_writer, to_object_storage_path

    path = to_object_storage_path(store.uri("partial.mp4"))
    with pytest.raises(RuntimeError, match="cut"), atomic_writer(path) as handle:
        handle.write(b"\0\0\0\x18ftypmp42" + b"\0" * (9 * MiB))
        raise RuntimeError("cut")
    queue = path.fs.transaction.files  # fsspec's queue of the filesystem's autocommit=False files
    assert handle not in queue, "a later `with fs.transaction:` would commit the failed file"
    del handle
    gc.collect()
    with path.fs.transaction:  # someone else's transaction on the same (cached) filesystem
        pass

    assert store.read("partial.mp4") is None and not store.listed("partial.mp4")
    if store.name != "azure":
        assert store.pending("partial.mp4") == 0

    with atomic_writer(path) as handle:
        handle.write(b"\0\0\0\x18ftypmp42")
    assert handle not in queue  # nor is a finished one kept (with its buffers) for the process's lifetime
    assert store.read("partial.mp4") == b"\0\0\0\x18ftypmp42"
