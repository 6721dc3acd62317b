"""Many Sora2JobTriggers in one event loop share one history watcher and one call budget (emulator over HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import pytest

from sora2_provider.hooks.sora2 import Sora2Hook
from sora2_provider.models import VideoRequest
from sora2_provider.triggers._watcher import HistoryWatcher
from sora2_provider.triggers.sora2 import Sora2JobTrigger
from tests.operator.test_job_trigger import only_event
from tests.support import TEST_API_KEY, connection_json, with_heartbeat

POLL = 0.05


def submit_many(count: int, model: str = "sora-2", duration: int = 4) -> list[str]:
    hook = Sora2Hook()
    requests = [VideoRequest.create(f"shot {n}", model=model, duration=duration) for n in range(count)]
    return [hook.submit(request).request_id for request in requests]


def calls(emulator, since: int = 0) -> Counter:
    return Counter(entry["endpoint"] for entry in emulator.request_log[since:])


async def until(condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` on the event loop until it holds (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_hundred_triggers_share_one_watcher_and_one_history_call_per_interval(sora2_conn):
    request_ids = submit_many(100)
    before = len(sora2_conn.request_log)
    seen: dict[str, object] = {}

    async def run_all():
        waits = [asyncio.ensure_future(only_event(Sora2JobTrigger(r, poll_interval=POLL))) for r in request_ids]
        await until(lambda: len(HistoryWatcher.active()) == 1 and len(HistoryWatcher.active()[0].watched) == 100)
        seen["watcher"] = HistoryWatcher.active()[0]
        started = time.monotonic()
        events = await asyncio.gather(*waits)
        seen["elapsed"] = time.monotonic() - started
        return events

    events = asyncio.run(run_all())

    assert sorted(e["request_id"] for e in events) == sorted(request_ids)
    assert {e["status"] for e in events} == {"completed"}
    assert all(e["output_url"] and e["cost"] == pytest.approx(0.4) for e in events)
    made = calls(sora2_conn, before)
    watcher = seen["watcher"]
    assert made["status"] == 0 and made["result"] == 0, made
    assert made["history"] <= 2 * watcher.history_calls, "a round reads at most ceil(100 / 100) + 1 pages"
    assert watcher.history_calls <= seen["elapsed"] / POLL + 2, "one history round per poll interval"
    assert HistoryWatcher.active() == [], "the watcher stops when its last trigger leaves"


def test_a_job_missing_from_the_history_still_completes_through_its_own_status(sora2_conn):
    listed, hidden = submit_many(2)
    sora2_conn.unlist(hidden)

    async def run_all():
        return await asyncio.gather(*(only_event(Sora2JobTrigger(r, poll_interval=POLL)) for r in (listed, hidden)))

    by_id = {e["request_id"]: e for e in asyncio.run(run_all())}

    assert by_id[listed]["status"] == by_id[hidden]["status"] == "completed"
    assert by_id[listed]["output_url"], "the listed job completes from its history row"
    assert "output_url" not in by_id[hidden], "the hidden one through its own status (the operator then reads it)"
    status_calls = [e for e in sora2_conn.request_log if e["endpoint"] == "status"]
    assert status_calls and {c["path"].split("/")[3] for c in status_calls} == {hidden}


def test_cancelled_triggers_leave_the_others_waiting_and_the_last_one_stops_the_watcher(monkeypatch):
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=1.0, api_keys={TEST_API_KEY: 100.0}) as slow:  # renders take minutes
        monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(slow.url))
        request_ids = submit_many(10)

        async def scenario():
            waits = [asyncio.ensure_future(only_event(Sora2JobTrigger(r, poll_interval=POLL))) for r in request_ids]
            await until(lambda: HistoryWatcher.active() and len(HistoryWatcher.active()[0].watched) == 10)
            watcher = HistoryWatcher.active()[0]
            rounds = watcher.history_calls
            for wait in waits[:5]:
                wait.cancel()
            await until(lambda: len(watcher.watched) == 5)
            await until(lambda: watcher.history_calls >= rounds + 2)  # the watcher keeps polling for the rest
            still_waiting = [not w.done() for w in waits[5:]]
            for wait in waits[5:]:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            await asyncio.sleep(0)  # let the cancelled watcher task unwind
            return still_waiting, watcher

        still_waiting, watcher = asyncio.run(scenario())

    assert still_waiting == [True] * 5
    assert watcher.task is None and HistoryWatcher.active() == []


@contextlib.contextmanager
def spent_window(monkeypatch, calls: int, seconds: float):
    """An emulator allowing ``calls`` keyed calls per ``seconds``, the current window already spent by a submit and
    credits calls (the emulator is told they were one window ending ``seconds`` from now, however long they took
    on a busy machine); yields it, the connection's hook and the submitted job's request id."""
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(
        time_scale=0.05, api_keys={TEST_API_KEY: 100.0}, rate_limit_rpm=calls, rate_limit_window=seconds
    ) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emulator.url))
        hook = Sora2Hook()
        request_id = submit_many(1)[0]
        for _ in range(calls - 1):
            hook.get_credits()
        emulator.set_rate_window(TEST_API_KEY, calls, ends_in=seconds)
        yield emulator, hook, request_id


def test_fifty_calls_held_by_the_rate_limit_wait_in_the_loop_without_holding_threads(monkeypatch):
    """Once a 429 closes the budget, calls wait with ``asyncio.sleep``: the loop keeps ticking, ``to_thread`` work
    runs at once, and after the reset the learned allowance lets them all through without new refusals."""
    with spent_window(monkeypatch, calls=50, seconds=5.0) as (emulator, hook, request_id):

        async def scenario():
            pending = [asyncio.ensure_future(hook.aget_status(request_id)) for _ in range(50)]
            await until(lambda: hook.budget.refusals >= 1)  # the window is spent: the budget is closed
            probe = await asyncio.to_thread(lambda: sum(not p.done() for p in pending))
            return probe, await asyncio.gather(*pending)

        beat = asyncio.run(with_heartbeat(scenario()))
        waiting_when_probed, statuses = beat.result

    assert waiting_when_probed == 50, "the thread work ran while all 50 calls were waiting for the reset"
    assert len(statuses) == 50 and {s.request_id for s in statuses} == {request_id}
    assert beat.longest_gap < 1.0, "the loop kept ticking through the 5 s rate-limit wait"
    refused = [e for e in emulator.request_log if e["status"] == 429]
    assert 1 <= len(refused) <= 6, f"only calls already in flight may be refused, not {len(refused)}"
    # Learned from the spent window: 50. When the 50 waiting calls outlast the next 5 s window (a loaded machine), a
    # call sent as a probe into the window after passes and raises it by one, by design (CallBudget._record_pass).
    assert 50 <= hook.budget.allowance <= 52


def test_calls_queued_for_a_thread_when_a_429_closes_the_budget_are_not_sent(monkeypatch):
    """With one worker thread, five calls take their turn at once and queue for it; the first one's 429 closes the
    budget, so the four behind it go back to waiting in the loop instead of being sent into the spent window; after
    the reset all five fit the next window (the learned allowance is 5)."""
    from concurrent.futures import ThreadPoolExecutor

    with spent_window(monkeypatch, calls=5, seconds=3.0) as (emulator, hook, request_id):

        async def scenario():
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=1))
            await hook.aprepare()
            return await asyncio.gather(*(hook.aget_status(request_id) for _ in range(5)))

        statuses = asyncio.run(scenario())

    assert [s.request_id for s in statuses] == [request_id] * 5
    refused = [e for e in emulator.request_log if e["status"] == 429]
    assert len(refused) == 1, f"only the call in the thread when the window closed may be refused, not {len(refused)}"
    assert hook.budget.refusals == 1
