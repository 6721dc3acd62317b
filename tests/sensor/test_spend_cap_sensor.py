"""CreditsSensor(respect_spend_cap=...) in real ``dag.test()`` runs: it waits while the day's allowance under the
connection's ``max_spend_per_day`` is below its requirement, in poke mode and deferred (CreditsTrigger)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sora2_provider.models import VideoRequest
from tests.sensor.test_credits_sensor import mode_kwargs, sensor_dag
from tests.support import TEST_API_KEY, connection_json, task_instances, xcom_value

ONE_VIDEO = '[{"model": "sora-2", "duration": 8}]'  # 0.8 credits


@contextmanager
def history_forgotten_after_first_read(emulator) -> Iterator[None]:
    """Once the emulator has answered the first request-history read (its log entry is written as the answer
    starts), make it forget its jobs, as the 24 h window moving past them would: the next read is empty."""
    stop = threading.Event()

    def reads() -> int:
        return sum(1 for e in emulator.request_log if "request-history" in e["path"])

    before = reads()  # the submit's own spend-cap check read it already

    def forget() -> None:
        while reads() <= before:
            if stop.wait(0.01):
                return
        emulator.reset()

    thread = threading.Thread(target=forget, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_waits_while_the_allowance_is_below_the_requirement(dag_runner, monkeypatch, console, mode):
    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=1.0, api_keys={TEST_API_KEY: 100.0}) as emulator:  # the job renders for minutes
        monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emulator.url, max_spend_per_day=1.0))
        Sora2Hook().submit(VideoRequest.create("a storm", "sora-2", 8))  # pending: counts at its 0.8 estimate
        dag_id = f"spend_sensor_{mode}"
        sensor = f"CreditsSensor(task_id='gate', jobs={ONE_VIDEO}, poke_interval=0.1, timeout=60, {mode_kwargs(mode)})"
        with history_forgotten_after_first_read(emulator):
            run = dag_runner.run(dag_id, sensor_dag(dag_id, sensor))
        output = console.read()

    assert task_instances(run)["gate"].state == "success"
    assert "allowed today by max_spend_per_day=0.2000" in output  # first check: 1.0 - 0.8 pending
    assert xcom_value(run, "gate") == {
        "credits": 100.0,
        "free_credits": 0.0,
        "available": 100.0,
        "required": 0.8,
        "allowance": 1.0,  # the window moved past the job
    }
    assert output.count("allowed today by max_spend_per_day=") >= 2


def test_times_out_while_the_cap_is_used_up(dag_runner, emulator, monkeypatch, console):
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emulator.url, max_spend_per_day=0.5))
    sensor = f"CreditsSensor(task_id='gate', jobs={ONE_VIDEO}, poke_interval=0.1, timeout=1, mode='poke')"
    run = dag_runner.run("spend_sensor_timeout", sensor_dag("spend_sensor_timeout", sensor))
    assert task_instances(run)["gate"].state == "failed"
    assert "allowed today by max_spend_per_day=0.5000" in console.read()


def test_respect_spend_cap_false_ignores_the_cap(dag_runner, emulator, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emulator.url, max_spend_per_day=0.5))
    sensor = f"CreditsSensor(task_id='gate', jobs={ONE_VIDEO}, respect_spend_cap=False, timeout=5, mode='poke')"
    run = dag_runner.run("spend_sensor_ignored", sensor_dag("spend_sensor_ignored", sensor))
    assert task_instances(run)["gate"].state == "success"
    assert "allowance" not in xcom_value(run, "gate")
    assert not [e for e in emulator.request_log if "request-history" in e["path"]]
