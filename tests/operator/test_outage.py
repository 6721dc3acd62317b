"""Issue 25: a paid job in flight is never given up because Segmind is briefly down.

Every test runs against the emulator over real HTTP through an outage longer than the ten failed reads the waits
used to tolerate (``tests/outage.py``: every route, or the named ones, answers 503 until 20 calls were refused),
with the outage backoff capped at 0.2 s (``outage_backoff_max``) so it lasts seconds. The give-up setting is the
connection extra ``max_outage``.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import pytest

from sora2_provider.models import VideoRequest
from sora2_provider.triggers._watcher import HistoryWatcher
from sora2_provider.triggers.sora2 import Sora2JobTrigger
from tests.operator.test_generate_video import charged, run_generate
from tests.operator.test_job_trigger import only_event
from tests.outage import FOREVER, LONGER_THAN_TEN_ERRORS, QUICK_OUTAGE_EXTRAS, outage, submitted
from tests.sensor.test_credits_sensor import sensor_dag
from tests.support import connection_json, task_instances, xcom_value

UNREACHABLE = "Segmind is unreachable for"
BACK = "Segmind answers again for"


@pytest.fixture
def file_output(tmp_path):
    return f"file://{tmp_path}/videos/out.mp4"


@pytest.fixture
def quick_outages(sora2_conn, monkeypatch):
    """``sora2_default`` with the outage backoff capped at 0.2 s."""
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(sora2_conn.url, **QUICK_OUTAGE_EXTRAS))
    return sora2_conn


@pytest.fixture
def give_up_after_one_second(sora2_conn, monkeypatch):
    """``sora2_default`` with ``max_outage=1``: a wait gives up after one second of outage."""
    extras = {**QUICK_OUTAGE_EXTRAS, "max_outage": 1}
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(sora2_conn.url, **extras))
    return sora2_conn


def refused(calls, endpoint: str) -> int:
    return sum(1 for c in calls if c["endpoint"] == endpoint and c["status"] == 503)


@dataclass
class Logged:
    """Everything logged: stdlib loggers (the triggers; on Airflow 2 and 3.0 the task loggers too) reach ``caplog``
    as records, task loggers the console, where Airflow 3.0 writes each record twice (two handlers)."""

    records: list[str]
    console: str

    def __contains__(self, phrase: str) -> bool:
        return any(phrase in message for message in self.records) or phrase in self.console


def logged(caplog, console) -> Logged:
    return Logged([record.getMessage() for record in caplog.records], console.read())


def once(text: Logged, phrase: str, times: int = 1) -> bool:
    """Logged once by each of ``times`` waiters, not once per read: counted in the records where they reached
    ``caplog``, else in the console (a line at most twice). Airflow 2's console handler may hold a stream an earlier
    test's capture closed: the reports of the records it could not write are dropped."""
    records = sum(phrase in message for message in text.records)
    if records:
        return records <= times
    written = re.sub(r"--- Logging error ---\n.*?\nArguments: [^\n]*\n", "", text.console, flags=re.S)
    return 1 <= written.count(phrase) <= 2 * times


def error_line(run) -> str:
    return xcom_value(run, "generate", key="sora2_error") or ""


# -- the operator: deferrable, worker-side poll, result read, download, submit --------------------------------


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "worker-poll"])
def test_a_job_in_flight_rides_out_an_outage_and_is_stored_once(quick_outages, dag_runner, file_output, caplog,
                                                                 console, deferrable):
    with outage(quick_outages, begin_when=submitted) as down:
        run = run_generate(dag_runner, f"outage_ride_{deferrable}", output_path=file_output, prompt="a storm",
                           duration=4, deferrable=deferrable)

    assert run.state == "success"
    assert task_instances(run)["generate"].try_number == 1
    assert len(quick_outages.ledger) == len(charged(quick_outages)) == 1
    assert down.refused >= LONGER_THAN_TEN_ERRORS
    reads = refused(down.calls, "history" if deferrable else "status")
    assert reads - 5 > 10, "more failed reads (the first with its 5 quick retries) than the old limit of ten"
    text = logged(caplog, console)
    assert once(text, UNREACHABLE) and once(text, BACK), "one line when it begins, one when it ends"


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "worker-poll"])
def test_max_outage_gives_up_in_one_clear_line(give_up_after_one_second, dag_runner, file_output, deferrable):
    with outage(give_up_after_one_second, refusals=FOREVER, begin_when=submitted):
        run = run_generate(dag_runner, f"outage_give_up_{deferrable}", output_path=file_output, prompt="a storm",
                           duration=4, deferrable=deferrable)

    assert run.state == "failed"
    assert task_instances(run)["generate"].try_number == 1
    line = error_line(run)
    assert "longer than the connection's max_outage=1 s" in line and "HTTP 503" in line, line
    assert "\n" not in line


@pytest.mark.parametrize("route", ["result", "download"])
def test_the_result_read_and_the_download_ride_out_an_outage_within_the_try(quick_outages, dag_runner, file_output,
                                                                            route):
    with outage(quick_outages, routes=(route,)) as down:
        run = run_generate(dag_runner, f"outage_{route}", output_path=file_output, prompt="a harbour", duration=4)

    assert run.state == "success"
    assert task_instances(run)["generate"].try_number == 1
    assert len(charged(quick_outages)) == 1
    assert refused(down.calls, route) >= LONGER_THAN_TEN_ERRORS
    assert xcom_value(run, "generate")["bytes"] > 0


def test_a_submit_that_meets_an_outage_waits_and_submits_once_segmind_answers(quick_outages, dag_runner,
                                                                             file_output, caplog, console):
    with outage(quick_outages) as down:
        run = run_generate(dag_runner, "outage_submit", output_path=file_output, prompt="a lighthouse", duration=4)

    assert run.state == "success"
    assert task_instances(run)["generate"].try_number == 1
    assert len(quick_outages.ledger) == len(charged(quick_outages)) == 1, "nothing paid twice"
    assert refused(down.calls, "submit_v2") == 1, "one refused submit, then history probes until Segmind is back"
    assert refused(down.calls, "history") >= LONGER_THAN_TEN_ERRORS - 1
    assert once(logged(caplog, console), UNREACHABLE)


def test_a_sync_call_that_meets_an_outage_is_sent_again_once_segmind_answers(quick_outages, dag_runner,
                                                                          file_output, caplog, console):
    with outage(quick_outages) as down:
        run = run_generate(dag_runner, "outage_sync", output_path=file_output, prompt="a lighthouse", duration=4,
                           mode="sync")

    assert run.state == "success"
    assert task_instances(run)["generate"].try_number == 1
    assert len(quick_outages.ledger) == len(charged(quick_outages)) == 1, "nothing paid twice"
    assert refused(down.calls, "submit_v1") == 1, "one refused v1 call, then history probes until Segmind is back"
    assert refused(down.calls, "history") >= LONGER_THAN_TEN_ERRORS - 1
    result = xcom_value(run, "generate")
    assert result["decision"] == "new_submit" and result["bytes"] > 0
    assert once(logged(caplog, console), UNREACHABLE)


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_submit_gives_up_after_max_outage_without_paying(give_up_after_one_second, dag_runner, file_output, mode):
    with outage(give_up_after_one_second, refusals=FOREVER):
        run = run_generate(dag_runner, f"outage_submit_give_up_{mode}", output_path=file_output,
                           prompt="a lighthouse", duration=4, mode=mode)

    assert run.state == "failed"
    assert charged(give_up_after_one_second) == []
    assert "max_outage=1 s" in error_line(run)


# -- the shared history watcher ------------------------------------------------------------------------------


def submit_many(count: int) -> list[str]:
    from sora2_provider.hooks.sora2 import Sora2Hook

    hook = Sora2Hook()
    return [hook.submit(VideoRequest.create(f"shot {n}", duration=4)).request_id for n in range(count)]


def test_the_shared_watcher_rides_out_an_outage_with_one_read_per_pause(quick_outages, caplog):
    request_ids = submit_many(30)

    async def run_all():
        return await asyncio.gather(*(only_event(Sora2JobTrigger(r, poll_interval=0.05)) for r in request_ids))

    with outage(quick_outages) as down:
        events = asyncio.run(run_all())

    assert {e["status"] for e in events} == {"completed"} and len(events) == 30
    assert len(charged(quick_outages)) == 30
    history = refused(down.calls, "history")
    assert history >= LONGER_THAN_TEN_ERRORS
    assert {c["endpoint"] for c in down.calls} == {"history"}, "no per-job calls while Segmind is down"
    assert len(down.calls) <= 6 + down.seconds / 0.1, "one read per backed-off pause for all 30 jobs"
    assert caplog.text.count(UNREACHABLE) == 1 and caplog.text.count(BACK) == 1
    assert HistoryWatcher.active() == []


def test_the_shared_watcher_gives_every_trigger_up_after_max_outage(give_up_after_one_second):
    request_ids = submit_many(5)

    async def run_all():
        return await asyncio.gather(*(only_event(Sora2JobTrigger(r, poll_interval=0.05)) for r in request_ids))

    with outage(give_up_after_one_second, refusals=FOREVER):
        events = asyncio.run(run_all())

    assert {e["status"] for e in events} == {"error"}
    assert all("max_outage=1 s" in e["message"] and e["retryable"] for e in events)


# -- the CreditsSensor -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_the_credits_sensor_keeps_waiting_through_an_outage(quick_outages, dag_runner, caplog, console, mode):
    how = "deferrable=True" if mode == "deferrable" else "deferrable=False, mode='poke'"
    source = sensor_dag(f"outage_credits_{mode}",
                        f'CreditsSensor(task_id="credits", min_credits=1, poke_interval=0.05, timeout=60, {how})')
    with outage(quick_outages, routes=("credits",)) as down:
        run = dag_runner.run(f"outage_credits_{mode}", source)

    assert task_instances(run)["credits"].state == "success"
    assert refused(down.calls, "credits") >= LONGER_THAN_TEN_ERRORS
    text = logged(caplog, console)
    # Deferrable: the worker's first poke meets the outage too, then the trigger waits it out: two waiters, each
    # announcing it once; only the trigger sees it end.
    waiters = 2 if mode == "deferrable" else 1
    assert once(text, BACK) and once(text, UNREACHABLE, times=waiters)


def test_the_credits_sensor_gives_up_after_max_outage(give_up_after_one_second, dag_runner, caplog, console):
    source = sensor_dag("outage_credits_give_up",
                        'CreditsSensor(task_id="credits", min_credits=1, poke_interval=0.05, timeout=60)')
    with outage(give_up_after_one_second, refusals=FOREVER, routes=("credits",)):
        run = dag_runner.run("outage_credits_give_up", source)

    assert task_instances(run)["credits"].state == "failed"
    assert "longer than the connection's max_outage=1 s" in logged(caplog, console)
