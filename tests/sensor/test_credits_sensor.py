"""CreditsSensor and CreditsTrigger against the emulator over real HTTP, in real ``dag.test()`` runs."""

from __future__ import annotations

import asyncio
import importlib
import importlib.abc
import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from airflow.providers.common.compat.sdk import AirflowFailException

from sora2_provider.sensors.credits import CreditsSensor
from sora2_provider.triggers.credits import CreditsTrigger
from tests.support import TEST_API_KEY, Heartbeat, connection_json, task_instances, with_heartbeat, xcom_value

WRONG_KEY = "SG_00000000deadbeef"
PLAN = [{"model": "sora-2-pro", "duration": 12, "size": "1792x1024", "count": 3}]


@pytest.fixture
def fast_hook_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny backoff for the hook's own retries, so exhausting them takes milliseconds (configuration, not a mock)."""
    from sora2_provider.hooks.sora2 import Sora2Hook

    monkeypatch.setattr(Sora2Hook, "retry_backoff_initial", 0.001)
    monkeypatch.setattr(Sora2Hook, "retry_backoff_max", 0.005)


def credits_calls(emulator: Any) -> list[dict[str, Any]]:
    return [entry for entry in emulator.request_log if entry["endpoint"] == "credits"]


def sensor_dag(dag_id: str, *sensors: str) -> str:
    """A DAG file holding the given ``CreditsSensor(...)`` expressions as independent tasks."""
    body = "\n".join(f"    {sensor}" for sensor in sensors)
    return (
        "from datetime import datetime\n"
        "from airflow.providers.common.compat.sdk import DAG\n"
        "from sora2_provider.sensors.credits import CreditsSensor\n\n"
        f'with DAG(dag_id="{dag_id}", schedule=None, start_date=datetime(2025, 1, 1), catchup=False):\n'
        f"{body}\n"
    )


def reschedule_dates_parsed() -> bool:
    """Whether Airflow's task SDK client parses a reschedule's start date. Airflow 3.0.6's leaves the string (its
    ``model_construct``), which its in-process ``dag.test()`` hands to the sensor as is: a reschedule-mode sensor
    then fails there on ``utcnow() - '<date>'``. (Under a scheduler the message is parsed on its way to the task.)"""
    try:
        from airflow.sdk.api.client import Client  # lazy: version probe (Airflow 3's task SDK)
    except ImportError:  # Airflow 2: the sensor reads its reschedules from the DB
        return True
    import httpx  # lazy: only with Airflow 3's task SDK

    transport = httpx.MockTransport(lambda request: httpx.Response(200, json="2025-01-01T00:00:00Z"))
    client = Client(base_url="http://probe.invalid", token="", transport=transport)
    return not isinstance(client.task_instances.get_reschedule_start_date(uuid.uuid4()).start_date, str)


#: The three waiting modes; ``reschedule`` by ``dag.test()`` only where Airflow passes it a date (above).
MODES = [
    "poke",
    pytest.param(
        "reschedule",
        marks=pytest.mark.skipif(
            not reschedule_dates_parsed(),
            reason="this Airflow's dag.test() hands a reschedule-mode sensor its first start date as a string",
        ),
    ),
    "deferrable",
]


def mode_kwargs(mode: str) -> str:
    return "deferrable=True" if mode == "deferrable" else f"deferrable=False, mode={mode!r}"


@contextmanager
def top_up_after(emulator: Any, api_key: str, calls: int, credits: float, within: float = 30.0) -> Iterator[None]:
    """Top the balance up to ``credits`` through the emulator's HTTP controls, from another thread, once the
    emulator has answered ``calls`` credits calls (polled with a deadline: no sleep stands in for a sync)."""
    stop = threading.Event()

    def top_up() -> None:
        deadline = time.monotonic() + within
        while len(credits_calls(emulator)) < calls:
            if stop.wait(0.01) or time.monotonic() > deadline:
                return
        body = {"api_key": api_key, "credits": credits}
        requests.post(f"{emulator.url}/_emulator/balance", json=body, timeout=10).raise_for_status()

    thread = threading.Thread(target=top_up, name="top-up", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# -- construction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({}, ("min_credits", "jobs")),
        ({"min_credits": 5, "jobs": PLAN}, ("min_credits", "jobs")),
        ({"min_credits": -1}, ("min_credits",)),
        ({"min_credits": "lots"}, ("min_credits",)),
        ({"min_credits": True}, ("min_credits",)),
        ({"jobs": []}, ("jobs",)),
        ({"jobs": [{"model": "sora-3", "duration": 8}]}, ("jobs[0].model", "sora-3")),
        ({"jobs": [{"model": "sora-2", "duration": 5}]}, ("jobs[0].duration",)),
    ],
)
def test_bad_arguments_fail_at_construction_naming_the_field(kwargs, names):
    with pytest.raises(ValueError) as err:
        CreditsSensor(task_id="credits", **kwargs)
    for name in names:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "context", "named"),
    [
        ({"min_credits": "{{ params.need }}"}, {"params": {"need": -5}}, "min_credits: '-5'"),
        (
            {"jobs": "{{ dag_run.conf['plan'] | tojson }}"},
            {"dag_run": SimpleNamespace(conf={"plan": [{"model": "sora-3", "duration": 8}]})},
            "jobs[0].model",
        ),
        ({"jobs": [{"model": "{{ params.model }}", "duration": 8}]}, {"params": {"model": "sora-3"}}, "jobs[0].model"),
    ],
)
def test_templated_values_are_checked_after_rendering_not_at_construction(kwargs, context, named):
    """A template is no value yet: construction accepts it; what it renders to is checked before any call."""
    sensor = CreditsSensor(task_id="credits", **kwargs)
    sensor.render_template_fields(context)
    with pytest.raises(AirflowFailException, match=re.escape(named)):
        sensor.poke(context)  # no connection is defined here: the check must come before the hook


def test_jobs_plan_costs_18_credits_from_the_price_table():
    assert CreditsSensor(task_id="credits", jobs=PLAN)._required_credits() == 18.0
    assert CreditsSensor(task_id="credits", min_credits="12.5")._required_credits() == 12.5


class _RefuseHeavyImports(importlib.abc.MetaPathFinder):
    """Fails any import of ``requests`` or the hook while it is on ``sys.meta_path``."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] == "requests" or name == "sora2_provider.hooks.sora2":
            raise ImportError(f"{name} was imported at module level")


def test_module_is_light_to_import(monkeypatch):
    """A DAG file imports the sensor at every parse: neither ``requests`` nor the hook may come with it."""
    import sora2_provider.sensors
    import sora2_provider.triggers

    for package in (sora2_provider.sensors, sora2_provider.triggers):
        monkeypatch.setattr(package, "credits", package.credits)  # restored after the fresh import below
    light = ("sora2_provider.sensors.credits", "sora2_provider.triggers.credits", "sora2_provider.hooks.sora2")
    for name in [m for m in sys.modules if m in light or m.split(".")[0] == "requests"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_RefuseHeavyImports(), *sys.meta_path])

    module = importlib.import_module("sora2_provider.sensors.credits")
    assert module.CreditsSensor.template_fields == ("min_credits", "jobs")
    with pytest.raises(ImportError, match="imported at module level"):  # the guard itself works
        importlib.import_module("sora2_provider.hooks.sora2")


# -- acceptance 1 and 3: enough credits ------------------------------------------------------------


def test_enough_credits_succeeds_on_first_poke_with_xcom(sora2_conn, dag_runner, console):
    """Acceptance 1 and 3: one credits call per sensor; min_credits templated; jobs rendered from the run conf."""
    sora2_conn.set_balance(TEST_API_KEY, 100.0, free_credits=5.0)
    source = sensor_dag(
        "credits_enough",
        'CreditsSensor(task_id="templated", min_credits="{{ params.need }}", params={"need": 104.5}, timeout=5)',
        'CreditsSensor(task_id="paid_only", min_credits=60, include_free_credits=False, timeout=5)',
        "CreditsSensor(task_id=\"plan\", jobs=\"{{ dag_run.conf['plan'] | tojson }}\", timeout=5, deferrable=True)",
    )
    run = dag_runner.run("credits_enough", source, run_conf={"plan": PLAN})

    states = {task_id: ti.state for task_id, ti in task_instances(run).items()}
    assert states == {"templated": "success", "paid_only": "success", "plan": "success"}
    assert xcom_value(run, "templated") == {
        "credits": 100.0, "free_credits": 5.0, "available": 105.0, "required": 104.5,
    }
    assert xcom_value(run, "paid_only") == {
        "credits": 100.0, "free_credits": 5.0, "available": 100.0, "required": 60.0,
    }
    assert xcom_value(run, "plan")["required"] == 18.0
    assert len(credits_calls(sora2_conn)) == 3
    assert "required=104.5000; shortfall=0.0000" in console.read()


# -- acceptance 2: waiting, then a top-up ----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_waits_until_the_balance_is_topped_up(mode, sora2_conn, dag_runner, console, caplog):
    key = TEST_API_KEY
    sora2_conn.set_balance(key, 10.0, free_credits=0.0)
    dag_id = f"credits_top_up_{mode}"
    source = sensor_dag(
        dag_id, f'CreditsSensor(task_id="credits", min_credits=50, poke_interval=0.1, timeout=60, {mode_kwargs(mode)})'
    )
    with top_up_after(sora2_conn, key, calls=2, credits=80.0):
        run = dag_runner.run(dag_id, source)

    ti = task_instances(run)["credits"]
    assert (ti.state, ti.try_number) == ("success", 1)
    assert xcom_value(run, "credits") == {"credits": 80.0, "free_credits": 0.0, "available": 80.0, "required": 50.0}
    assert len(credits_calls(sora2_conn)) >= 3
    output = console.read() + caplog.text
    assert "available=10.0000; required=50.0000; shortfall=40.0000" in output
    if mode == "deferrable":
        assert "running trigger in line" in output
    if mode == "reschedule":
        assert _reschedule_count(ti) >= 1


def _reschedule_count(ti: Any) -> int:
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    with create_session() as session:
        if hasattr(TaskReschedule, "ti_id"):  # Airflow 3: rows point at the task instance's id
            return session.query(TaskReschedule).filter(TaskReschedule.ti_id == ti.id).count()
        query = session.query(TaskReschedule)  # Airflow 2: rows carry the task instance's key
        return query.filter_by(dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id).count()


def test_transient_errors_keep_the_sensor_waiting(sora2_conn, dag_runner, console, fast_hook_retries):
    """Six 503s exhaust the hook's own retries (5): the poke warns and the next one succeeds."""
    sora2_conn.add_fault("credits", "status", status=503, times=6)
    source = sensor_dag("credits_transient", 'CreditsSensor(task_id="credits", min_credits=1, poke_interval=0.1)')
    run = dag_runner.run("credits_transient", source)

    assert task_instances(run)["credits"].state == "success"
    assert [call["status"] for call in credits_calls(sora2_conn)] == [503] * 6 + [200]
    assert "Segmind is unreachable for the balance of 'sora2_default'" in console.read()


# -- acceptance 4: failing fast, timing out softly ---------------------------------------------------


def test_bad_key_missing_record_and_bad_template_fail_at_once(sora2_conn, dag_runner, monkeypatch, console):
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(sora2_conn.url, api_key=WRONG_KEY))
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_NORECORD", connection_json(sora2_conn.url))
    sora2_conn.set_balance(TEST_API_KEY, None)
    source = sensor_dag(
        "credits_fail_fast",
        'CreditsSensor(task_id="bad_key", min_credits=1, retries=2, poke_interval=0.1, timeout=30)',
        'CreditsSensor(task_id="no_record", min_credits=1, sora2_conn_id="sora2_norecord", retries=2, timeout=30)',
        'CreditsSensor(task_id="bad_template", min_credits="{{ params.need }}", params={"need": -5}, retries=2)',
    )
    run = dag_runner.run("credits_fail_fast", source)

    tis = task_instances(run)
    assert {task_id: (ti.state, ti.try_number) for task_id, ti in tis.items()} == {
        "bad_key": ("failed", 1), "no_record": ("failed", 1), "bad_template": ("failed", 1),
    }
    assert sorted(call["status"] for call in credits_calls(sora2_conn)) == [401, 404]
    output = console.read()
    assert "the API key of connection 'sora2_default' was refused" in output
    assert "no credit record for the key of connection 'sora2_norecord'" in output
    assert "min_credits: '-5' is not a number of credits >= 0" in output


@pytest.mark.parametrize("mode", MODES)
def test_timeout_skips_with_soft_fail_and_fails_without(mode, sora2_conn, dag_runner):
    sora2_conn.set_balance(TEST_API_KEY, 1.0)
    common = f"min_credits=50, poke_interval=0.1, timeout=0.5, retries=2, {mode_kwargs(mode)}"
    dag_id = f"credits_timeout_{mode}"
    source = sensor_dag(
        dag_id,
        f'CreditsSensor(task_id="soft", soft_fail=True, {common})',
        f'CreditsSensor(task_id="hard", {common})',
    )
    run = dag_runner.run(dag_id, source)

    tis = task_instances(run)
    assert (tis["soft"].state, tis["soft"].try_number) == ("skipped", 1)
    assert (tis["hard"].state, tis["hard"].try_number) == ("failed", 1)


def test_deferral_carries_the_timeout_and_a_trigger_timeout_honours_soft_fail(sora2_conn):
    """What the real triggerer path relies on: ``defer(timeout=...)``, and ``__fail__``/timeout -> skipped."""
    from airflow.providers.common.compat.sdk import AirflowSkipException, TaskDeferred

    try:
        from airflow.sdk.bases.operator import TriggerFailureReason  # lazy: version probe (Airflow 3)

        trigger_timeout = TriggerFailureReason.TRIGGER_TIMEOUT.value
    except ImportError:  # Airflow 2: the scheduler's own words (scheduler_job_runner.check_trigger_timeouts)
        trigger_timeout = "Trigger/execution timeout"

    sora2_conn.set_balance(TEST_API_KEY, 1.0)
    sensor = CreditsSensor(
        task_id="credits", jobs=PLAN, deferrable=True, timeout=90, poke_interval=2, soft_fail=True,
        include_free_credits=False,
    )
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})
    assert deferred.value.timeout == timedelta(seconds=90)
    assert deferred.value.method_name == "execute_complete"
    _, kwargs = deferred.value.trigger.serialize()
    assert kwargs["required"] == 18.0 and kwargs["include_free_credits"] is False and kwargs["poke_interval"] == 2.0
    assert 0 < kwargs["timeout_at"] - time.time() <= 90

    with pytest.raises(AirflowSkipException):
        sensor.resume_execution("__fail__", {"error": trigger_timeout}, {})
    with pytest.raises(AirflowSkipException):
        sensor.resume_execution("execute_complete", {"event": {"status": "error", "message": "bad key"}}, {})


# -- acceptance 5: the trigger on its own ------------------------------------------------------------


def test_trigger_serializes_to_primitives_without_the_key(sora2_conn):
    trigger = CreditsTrigger(required=18, include_free_credits=False, sora2_conn_id="sora2_default",
                             poke_interval=0.5, timeout_at=1_900_000_000.0)
    classpath, kwargs = trigger.serialize()
    text = json.dumps(kwargs)
    assert classpath == "sora2_provider.triggers.credits.CreditsTrigger"
    assert "SG_" not in text and "password" not in text
    assert kwargs == {"required": 18.0, "include_free_credits": False, "sora2_conn_id": "sora2_default",
                      "poke_interval": 0.5, "timeout_at": 1_900_000_000.0, "respect_spend_cap": False}
    assert CreditsTrigger(**json.loads(text)).serialize() == (classpath, kwargs)


async def _only_event(trigger: CreditsTrigger) -> Any:
    """The one event ``trigger.run()`` yields: the generator is run to its end, and anything but one event fails."""
    events = [event async for event in trigger.run()]
    assert len(events) == 1, f"the trigger yielded {len(events)} events, not one: {events}"
    return events[0]


async def _top_up_when(emulator: Any, api_key: str, calls: int, credits: float) -> None:
    while len(credits_calls(emulator)) < calls:
        await asyncio.sleep(0.01)
    emulator.set_balance(api_key, credits)


def test_trigger_never_blocks_the_event_loop(sora2_conn):
    """A slow credits call (1 s) and the waits between polls leave a 10 ms heartbeat ticking."""
    key = TEST_API_KEY
    sora2_conn.set_balance(key, 10.0)
    sora2_conn.add_fault("credits", "slow", delay=1.0, times=2)
    trigger = CreditsTrigger(required=50, include_free_credits=True, sora2_conn_id="sora2_default", poke_interval=0.2)

    async def scenario() -> Heartbeat:
        top_up = asyncio.create_task(_top_up_when(sora2_conn, key, calls=2, credits=75.0))
        result = await asyncio.wait_for(with_heartbeat(_only_event(trigger)), timeout=30)
        await top_up
        return result

    started = time.monotonic()
    beat = asyncio.run(scenario())
    elapsed = time.monotonic() - started

    assert beat.result.payload == {
        "status": "success", "credits": 75.0, "free_credits": 0.0, "available": 75.0, "required": 50.0
    }
    assert elapsed >= 2.0  # two slow calls, each would stall a blocking trigger for 1 s
    assert beat.longest_gap < 0.5, f"the event loop was blocked for {beat.longest_gap:.3f} s"
    assert beat.ticks >= 40


def test_trigger_error_events_for_bad_key_and_missing_record(sora2_conn, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_WRONG", connection_json(sora2_conn.url, api_key=WRONG_KEY))
    sora2_conn.set_balance(TEST_API_KEY, None)

    async def both() -> list[Any]:
        return [
            await _only_event(CreditsTrigger(required=1, sora2_conn_id=conn_id, poke_interval=0.1))
            for conn_id in ("sora2_wrong", "sora2_default")
        ]

    bad_key, no_record = asyncio.run(asyncio.wait_for(both(), timeout=30))
    assert bad_key.payload["status"] == "error"
    assert "the API key of connection 'sora2_wrong' was refused" in bad_key.payload["message"]
    assert no_record.payload["status"] == "error"
    assert "no credit record" in no_record.payload["message"]
    assert [call["status"] for call in credits_calls(sora2_conn)] == [401, 404]


def test_trigger_keeps_polling_through_transient_errors_and_times_out(sora2_conn, fast_hook_retries):
    sora2_conn.set_balance(TEST_API_KEY, 1.0)
    sora2_conn.add_fault("credits", "reset", times=6)
    trigger = CreditsTrigger(required=50, poke_interval=0.05, timeout_at=time.time() + 0.5)

    event = asyncio.run(asyncio.wait_for(_only_event(trigger), timeout=30))

    assert event.payload["status"] == "timeout"
    assert "available=1.0000; required=50.0000; shortfall=49.0000" in event.payload["message"]
    statuses = [call["status"] for call in credits_calls(sora2_conn)]
    assert statuses[:6] == [None] * 6 and statuses[6:] and set(statuses[6:]) == {200}
