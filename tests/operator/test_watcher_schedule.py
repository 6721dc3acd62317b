"""When the shared history watcher reads: once a job can be done (learned render time, else the prior), then every
interval; never losing a job (emulator over HTTP, triggers in an event loop as in a triggerer).

The emulator renders a sora-2 job in 180 s x 0.005 = 0.9 s. Counts come from its request log.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta, timezone

from sora2_provider.hooks.sora2 import Sora2Hook
from sora2_provider.models import VideoRequest
from sora2_provider.triggers._render_times import RENDER_TIMES, prior_ages
from sora2_provider.triggers._watcher import HistoryWatcher
from sora2_provider.triggers.sora2 import Sora2JobTrigger
from tests.operator.test_job_trigger import only_event
from tests.operator.test_watcher import until
from tests.support import TEST_API_KEY, connection_json

POLL = 0.05
KIND = ("sora-2", 4, "720x1280")
RENDER_S = 0.9


def submit() -> tuple[str, str]:
    """Submit one sora-2 4 s job; its request id and the submit time the operator would record."""
    request = VideoRequest.create("a kite over the dunes", model="sora-2", duration=4, size="720x1280")
    request_id = Sora2Hook().submit(request).request_id
    return request_id, datetime.now(timezone.utc).isoformat()


def trigger(request_id: str, submitted_at: str) -> Sora2JobTrigger:
    model, duration, size = KIND
    return Sora2JobTrigger(
        request_id, poll_interval=POLL, submitted_at=submitted_at, model=model, duration=duration, size=size
    )


def wait_for(*jobs: tuple[str, str]) -> list[dict]:
    async def run_all():
        return await asyncio.gather(*(only_event(trigger(*job)) for job in jobs))

    return asyncio.run(run_all())


def calls_since(emulator, start: int) -> Counter:
    return Counter(entry["endpoint"] for entry in emulator.request_log[start:])


def test_a_kind_seen_complete_is_read_once_when_it_can_be_done(sora2_conn):
    """The first job of a kind is looked for at the prior's halves (180 s, 90 s... down to the interval); its
    render time is learned from the history row, and the next job of that kind costs a single read."""
    start = len(sora2_conn.request_log)
    [first] = wait_for(submit())
    cold = calls_since(sora2_conn, start)
    assert first["status"] == "completed" and first["output_url"]
    assert RENDER_TIMES.learned(KIND) == first["generation_seconds"] == RENDER_S
    probes = [age for age in prior_ages(180.0, POLL) if age < RENDER_S]
    assert 1 <= cold["history"] <= len(probes) + 1, cold

    start = len(sora2_conn.request_log)
    [second] = wait_for(submit())
    assert second["status"] == "completed" and second["output_url"]
    assert calls_since(sora2_conn, start) == Counter(submit_v2=1, history=1)


def test_jobs_due_close_together_share_one_read(monkeypatch):
    """Renders of 3 s, learned: of two jobs recorded as submitted 0.2 s apart (four poll intervals), the first is due
    before the second is done; it waits for the second (due within a tenth of a render time), one read completes
    both.

    The first job's recorded submit time is set 0.2 s before the second's, whatever the two submits took: a gap
    taken from the wall clock grows past the 0.3 s window on a loaded machine (CI saw 1.2 s). Both jobs were
    created by the emulator before the second's recorded time, so both are done at its due time."""
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=3.0 / 180, api_keys={TEST_API_KEY: 100.0}) as emulator:
        monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emulator.url))
        RENDER_TIMES.learn(KIND, 3.0)
        (first_id, _), second = submit(), submit()
        recorded_first = datetime.fromisoformat(second[1]) - timedelta(seconds=0.2)
        start = len(emulator.request_log)

        events = wait_for((first_id, recorded_first.isoformat()), second)

        assert [e["status"] for e in events] == ["completed", "completed"]
        assert calls_since(emulator, start) == Counter(history=1)


def test_a_job_slower_than_learned_is_read_every_interval_until_it_is_done(sora2_conn):
    """Learned 0.1 s, rendering 0.9 s: read at 0.1 s, then every interval; completed from its history row (no
    status call), and the slow render is learned too."""
    RENDER_TIMES.learn(KIND, 0.1)
    job = submit()
    start = len(sora2_conn.request_log)

    [event] = wait_for(job)

    made = calls_since(sora2_conn, start)
    assert event["status"] == "completed" and event["output_url"]
    assert made["history"] >= 2 and made["status"] == 0, made
    assert sorted(RENDER_TIMES.samples[KIND]) == [0.1, RENDER_S]


def test_a_due_job_the_history_never_lists_completes_through_its_status(sora2_conn):
    """Never lost: a job past its learned time that the history does not show gets its own status calls after
    the grace period, and completes through them."""
    RENDER_TIMES.learn(KIND, RENDER_S)
    request_id, submitted_at = submit()
    sora2_conn.unlist(request_id)

    [event] = wait_for((request_id, submitted_at))

    assert event["status"] == "completed" and "output_url" not in event
    status_calls = [e for e in sora2_conn.request_log if e["endpoint"] == "status"]
    assert status_calls and {c["path"].split("/")[3] for c in status_calls} == {request_id}


def test_a_trigger_arriving_while_the_watcher_sleeps_is_planned_in(sora2_conn):
    """The watcher sleeps until a sora-2-pro job of a kind never seen can be done (first look one 10 s interval
    after its submit); a sora-2 job of a learned kind that joins it is read when it can be done (about 1 s), not
    when the watcher planned to wake, and the pro job (2 s to render here) stays watched."""
    RENDER_TIMES.learn(KIND, RENDER_S)
    pro = Sora2Hook().submit(VideoRequest.create("a glacier calving", model="sora-2-pro", duration=12)).request_id
    pro_trigger = Sora2JobTrigger(
        pro, poll_interval=10.0, model="sora-2-pro", duration=12, size="1280x720", submitted_at=_now()
    )
    job = submit()

    async def scenario():
        waiting_pro = asyncio.ensure_future(only_event(pro_trigger, timeout=60))
        await until(lambda: bool(HistoryWatcher.active()) and HistoryWatcher.active()[0].sleeping_until is not None)
        event = await only_event(trigger(*job), timeout=6.0)
        still_waiting = not waiting_pro.done()
        waiting_pro.cancel()
        return event, still_waiting

    event, still_waiting = asyncio.run(scenario())

    assert event["status"] == "completed" and event["output_url"]
    assert still_waiting


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()
