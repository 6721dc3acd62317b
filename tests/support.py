"""Helpers shared by the test modules (the fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

TEST_API_KEY = "SG_c0ffee5ec7e70042"
#: Airflow 3.0's ``dag.test()`` traces at debug level each message its task sends the in-process supervisor, the one
#: registering the key as a secret included, and masks only after sending it (3.1+ masks first; a real worker's
#: socket comms trace nothing). That one message of Airflow's own is the only exception to the leak guards.
MASK_REGISTRATION = f"MaskSecret(value='{TEST_API_KEY}'"
TEST_BALANCE = 100.0


def dag_bag(dag_folder: str | os.PathLike[str]) -> Any:
    """A ``DagBag`` of ``dag_folder``, as the dag-processor builds it.

    ``DagBag`` moved: ``airflow.dag_processing.dagbag`` from 3.2 (the old path warns there), ``airflow.models.dagbag``
    on 3.1. Neither is a public interface, so the tests take it from here only."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef]
    return DagBag(dag_folder=str(dag_folder))


def cli_json(output: str) -> Any:
    """The JSON document that ends the output of an ``airflow ... -o json`` command.

    Depending on the line and the command, Airflow prints log lines to stdout before the document (3.2's
    ``connections get``, 3.1's ``providers list``). It must start at the beginning of a line and run to the end of the
    output (whitespace aside), or this fails."""
    decoder = json.JSONDecoder()
    offset = 0
    for line in output.splitlines(keepends=True):
        start = offset + len(line) - len(line.lstrip())
        offset += len(line)
        if not line.lstrip().startswith(("[", "{")):
            continue
        try:
            value, end = decoder.raw_decode(output, start)
        except ValueError:
            continue
        if not output[end:].strip():
            return value
    raise ValueError(f"no JSON document ends this CLI output:\n{output[-3000:]}")


def connection_json(url: str, api_key: str = TEST_API_KEY, **extra: Any) -> str:
    """A ``sora2`` connection (as ``AIRFLOW_CONN_*`` JSON) to ``url`` with a short retry backoff for tests."""
    conn = {"conn_type": "sora2", "host": url, "password": api_key, "extra": {"retry_backoff": 0.05, **extra}}
    return json.dumps(conn)


def task_instances(dag_run: Any) -> dict[str, Any]:
    """The run's task instances by task id (mapped ones by ``task_id[map_index]``), read from the metadata DB."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = (
            session.query(TaskInstance)
            .filter(TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id)
            .all()
        )
        for ti in rows:
            session.expunge(ti)
    return {ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": ti for ti in rows}


def xcom_value(dag_run: Any, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    """An XCom value the run stored, read back from the metadata DB."""
    from airflow.utils.session import create_session

    try:
        from airflow.models.xcom import XComModel  # lazy: version probe (Airflow 3's XCom table)

        deserialize = XComModel.deserialize_value
    except ImportError:  # Airflow 2: BaseXCom maps the table and deserializes each row's value as it loads it
        from airflow.models.xcom import BaseXCom as XComModel  # type: ignore[no-redef]

        def deserialize(row: Any) -> Any:
            return row.value

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key=key, map_index=map_index)
            .one_or_none()
        )
        return None if row is None else deserialize(row)


def probe_mp4(data: bytes) -> tuple[int, int, float]:
    """Decode an MP4 with PyAV: (width, height, duration in seconds). Fails unless ``ftyp`` comes first."""
    import io

    import av

    assert data[4:8] == b"ftyp", "not an MP4: the ftyp box is not first"
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert frames > 0, "the MP4 holds no decodable frame"
        duration = container.duration / 1_000_000 if container.duration else float(stream.duration * stream.time_base)
        return stream.codec_context.width, stream.codec_context.height, duration


class VirtualTime:
    """This process's wall clock, moved only by sleeps: an HTTP call to an in-process emulator takes no time at all,
    so the rate-limit windows the emulator counts and those the hook expects agree however loaded the machine is.
    Install it after the emulator has started (its start polls with ``time.sleep``)."""

    def __init__(self) -> None:
        self.now = time.time()
        self._lock = threading.Lock()

    @classmethod
    def install(cls, monkeypatch: Any) -> VirtualTime:
        clock = cls()
        monkeypatch.setattr(time, "time", clock.time)  # the emulator's windows and reset times, the hook's budget
        monkeypatch.setattr(time, "sleep", clock.sleep)  # the budget's waits and the retry policy's
        return clock

    def time(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += max(0.0, seconds)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (requests.RequestException, OSError, ValueError, KeyError) as err:
            last_error, result = err, None
        if result:
            return result
        time.sleep(interval)  # the poll interval of a deadline-bounded loop
    raise TimeoutError(f"{what}: not done within {timeout:.0f} s (last error: {last_error!r})")


def peak_overlap(spans: list[tuple[Any, Any]]) -> int:
    """Most intervals open at one moment (ISO timestamps or epoch seconds; an end sorts before a start)."""
    events = sorted([(_epoch(start), 1) for start, _ in spans] + [(_epoch(end), -1) for _, end in spans])
    peak = running = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def _epoch(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Heartbeat:
    """What a heartbeat beside a coroutine saw: its result, the longest gap between ticks, the ticks."""

    result: Any
    longest_gap: float
    ticks: int


async def with_heartbeat(coroutine: Any, tick: float = 0.01) -> Heartbeat:
    """Run ``coroutine`` beside a heartbeat ticking every ``tick`` s: a blocked event loop shows as a long gap.

    Tests assert a gap well under the blocking call's length, not near the tick: a loaded machine delays ticks."""
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    try:
        result = await coroutine
    finally:
        beat.cancel()
    return Heartbeat(result, max(gaps, default=0.0), len(gaps))
