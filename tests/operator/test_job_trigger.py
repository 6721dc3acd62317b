"""Sora2JobTrigger run directly in an event loop against the emulator over real HTTP."""

from __future__ import annotations

import asyncio
import json

import pytest
from airflow.triggers.base import BaseTrigger

from sora2_provider.models import VideoRequest
from sora2_provider.triggers.sora2 import Sora2JobTrigger
from tests.support import TEST_API_KEY, connection_json, with_heartbeat


def submit(emulator, **overrides) -> str:
    from sora2_provider.hooks.sora2 import Sora2Hook

    request = VideoRequest.create(overrides.pop("prompt", "a quiet harbour"), duration=4, **overrides)
    return Sora2Hook().submit(request).request_id


async def only_event(trigger: BaseTrigger, timeout: float = 30.0) -> dict:
    """The payload of the one event ``trigger.run()`` yields: the generator is run to its end, and anything but
    exactly one event fails the test."""

    async def collect() -> list[dict]:
        return [event.payload async for event in trigger.run()]

    events = await asyncio.wait_for(collect(), timeout)
    assert len(events) == 1, f"the trigger yielded {len(events)} events, not one: {events}"
    return events[0]


def test_serializes_to_primitives_without_the_key(sora2_conn):
    trigger = Sora2JobTrigger(
        "req-1", "sora2_default", poll_interval=0.05, model="sora-2-pro", duration=8, size="1792x1024"
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "sora2_provider.triggers.sora2.Sora2JobTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert TEST_API_KEY not in json.dumps(kwargs)
    assert Sora2JobTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert (kwargs["model"], kwargs["duration"], kwargs["size"]) == ("sora-2-pro", 8, "1792x1024")


def test_completed_job_yields_completed_without_blocking_the_loop(sora2_conn):
    request_id = submit(sora2_conn)
    sora2_conn.add_fault("history", "slow", delay=1.0)  # a slow answer must not stall the other coroutines

    beat = asyncio.run(with_heartbeat(only_event(Sora2JobTrigger(request_id, poll_interval=0.05))))

    assert beat.result["status"] == "completed" and beat.result["request_id"] == request_id
    assert beat.longest_gap < 0.5, "a blocked loop would have stalled for the whole 1 s answer"


def test_failed_job_yields_failed_with_segmind_message(sora2_conn):
    sora2_conn.add_fault("submit_v2", "fail_job", message="the prompt was blocked")
    request_id = submit(sora2_conn)

    event = asyncio.run(only_event(Sora2JobTrigger(request_id, poll_interval=0.05)))

    assert event == {"status": "failed", "request_id": request_id, "message": "the prompt was blocked"}


def test_a_failed_job_missing_from_the_history_ends_failed_through_its_own_status(sora2_conn):
    """FAILED is final in a status answer too (HTTP 422 with the FAILED body): the wait ends at once."""
    sora2_conn.add_fault("submit_v2", "fail_job", message="the prompt was blocked")
    request_id = submit(sora2_conn)
    sora2_conn.unlist(request_id)

    event = asyncio.run(only_event(Sora2JobTrigger(request_id, poll_interval=0.05), timeout=10))

    assert event == {"status": "failed", "request_id": request_id, "message": "the prompt was blocked"}
    statuses = [e["status"] for e in sora2_conn.request_log if e["endpoint"] == "status"]
    assert statuses and statuses[-1] == 422


def test_a_job_unknown_to_the_history_falls_back_to_its_status_and_yields_not_found(sora2_conn):
    event = asyncio.run(only_event(Sora2JobTrigger("no-such-request", poll_interval=0.05)))

    assert event["status"] == "not_found" and "HTTP 404" in event["message"]
    status_calls = [e for e in sora2_conn.request_log if e["endpoint"] == "status"]
    assert len(status_calls) == 1, "one status call, after the grace period, settles a job the history lacks"


def test_a_job_whose_v2_record_expired_completes_from_the_history(sora2_conn):
    request_id = submit(sora2_conn)
    sora2_conn.expire(request_id)

    event = asyncio.run(only_event(Sora2JobTrigger(request_id, poll_interval=0.05)))

    assert event["status"] == "completed" and event["output_url"].endswith(".mp4")
    assert event["cost"] == pytest.approx(0.4)
    assert not [e for e in sora2_conn.request_log if e["endpoint"] in ("status", "result")]


@pytest.mark.parametrize("give_up", [False, True], ids=["rides-out", "gives-up"])
def test_repeated_server_errors_are_ridden_out_unless_max_outage_says_give_up(sora2_conn, monkeypatch, give_up):
    request_id = submit(sora2_conn)
    # The hook retries the first failed read 5 times; later reads of an outage are one call each. Twelve failed
    # reads outlast the ten-error limit the trigger used to have.
    sora2_conn.add_fault("history", "status", status=503, times=6 + 11)
    extras = {"outage_backoff_max": 0.1, **({"max_outage": 0.3} if give_up else {})}
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(sora2_conn.url, **extras))

    event = asyncio.run(only_event(Sora2JobTrigger(request_id, poll_interval=0.05)))

    if give_up:
        assert event["status"] == "error" and event["retryable"] is True
        assert "max_outage=0.3 s" in event["message"] and "HTTP 503" in event["message"]
    else:
        assert event["status"] == "completed"


def test_a_trigger_serialized_with_max_transient_errors_still_loads(sora2_conn):
    """Triggers serialized by earlier versions carry ``max_transient_errors``; they load and ride outages out."""
    trigger = Sora2JobTrigger("req-1", poll_interval=0.05, max_transient_errors=10)
    assert "max_transient_errors" not in trigger.serialize()[1]


def test_airflow_is_touched_only_where_the_triggerer_allows_it(sora2_conn, monkeypatch):
    """Airflow 3.1+'s triggerer dies when a worker thread messages its supervisor: connection lookups, extras
    (which register masks) and ``mask_secret`` must all run on the loop's thread; threads get plain values.
    Airflow 3.0's triggerer wants the opposite (inside ``sync_to_async``, off the loop), and 2.11 reads its DB
    there: without ``aget_connection`` none of them may run on the loop's thread."""
    import threading

    from airflow.providers.common.compat.sdk import BaseHook, Connection

    from sora2_provider.compat import ASYNC_CONNECTION_LOOKUP
    from sora2_provider.hooks import sora2 as hook_module
    from sora2_provider.triggers.credits import CreditsTrigger

    loop_thread: list[threading.Thread] = []
    on_loop: list[str] = []
    off_loop: list[str] = []

    def recorded(name, original):
        def call(*args, **kwargs):
            if loop_thread:
                (on_loop if threading.current_thread() is loop_thread[0] else off_loop).append(name)
            return original(*args, **kwargs)

        return call

    monkeypatch.setattr(hook_module, "mask_secret", recorded("mask_secret", hook_module.mask_secret))
    extras = Connection.extra_dejson
    monkeypatch.setattr(Connection, "extra_dejson", property(recorded("extra_dejson", extras.fget)))
    for name in ("get_connection", "aget_connection"):
        if hasattr(BaseHook, name):
            monkeypatch.setattr(BaseHook, name, classmethod(recorded(name, getattr(BaseHook, name).__func__)))
    request_ids = [submit(sora2_conn, prompt=f"harbour {n}") for n in range(3)]
    sora2_conn.add_fault("history", "status", status=503, times=2)  # retries run in the worker threads too

    async def run_all():
        loop_thread.append(threading.current_thread())
        triggers = [only_event(Sora2JobTrigger(r, poll_interval=0.05)) for r in request_ids]
        triggers.append(only_event(CreditsTrigger(required=1.0, poke_interval=0.05)))
        return await asyncio.gather(*triggers)

    events = asyncio.run(run_all())

    assert [e["status"] for e in events[:3]] == ["completed"] * 3
    assert events[3]["status"] == "success", events[3]
    if ASYNC_CONNECTION_LOOKUP:
        assert off_loop == [], f"called off the event loop's thread: {sorted(set(off_loop))}"
        assert {"aget_connection", "mask_secret"} <= set(on_loop), on_loop
    else:
        assert on_loop == [], f"called on the event loop's thread: {sorted(set(on_loop))}"
        assert {"get_connection", "mask_secret"} <= set(off_loop), off_loop
