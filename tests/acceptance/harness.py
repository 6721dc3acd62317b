"""What the acceptance DAGs import: the real operator with eyes, and a trigger that lives through a restart.

``ObservedGenerate`` is :class:`Sora2GenerateVideoOperator` unchanged, plus a journal (one JSON line per
event in ``observe_to``): what is at ``output_path`` when each try starts and ends, and the exception each
try raised. Two scenarios reproduce process faults inside ``dag.test()``:

- ``expire_then_die``: try 1 submits, waits until the job is done, expires its v2 record through the
  emulator and dies; the next try must find the video through the request history.
- ``restart_triggerer``: the trigger is wrapped in :class:`TriggerRestartHarness`, which runs it, cancels it
  mid-poll (a triggerer killed) and starts a fresh one from the same serialized kwargs, as a restarted
  triggerer does from the ``trigger`` table.

Every resumption after a deferral also copies the ``trigger`` table rows (classpath, stored kwargs) into
the journal, so the secrets test can scan what the metadata DB held for the triggerer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import requests
from airflow.triggers.base import BaseTrigger, TriggerEvent

from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator
from tests.acceptance.journal import describe_output, error_line, journal

SCENARIOS = (None, "expire_then_die", "restart_triggerer")


def trigger_rows() -> list[dict[str, Any]]:
    """The ``trigger`` table as stored (raw kwargs column) and as a triggerer reads it back (decrypted)."""
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session

    with create_session() as session:
        return [
            {"id": row.id, "classpath": row.classpath, "stored": row.encrypted_kwargs, "kwargs": repr(row.kwargs)}
            for row in session.query(Trigger).all()
        ]


class ObservedGenerate(Sora2GenerateVideoOperator):
    """The operator under test, journaling every try; see the module docstring for ``scenario``."""

    def __init__(self, *, observe_to: str, scenario: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario: {scenario!r} is not one of {SCENARIOS}")
        self.observe_to = observe_to
        self.scenario = scenario

    def execute(self, context: Any) -> Any:
        with self._observed(context, "execute"):
            return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> Any:
        with self._observed(context, "execute_complete", trigger_event=event):
            return super().execute_complete(context, event)

    @contextlib.contextmanager
    def _observed(self, context: Any, phase: str, **extra: Any) -> Iterator[None]:
        from airflow.sdk.exceptions import TaskDeferred

        attempt = context["ti"].try_number
        journal(self.observe_to, event="start", phase=phase, attempt=attempt, output=self._output(), **extra)
        if phase == "execute_complete":  # the trigger row written at the deferral is still in the table
            journal(self.observe_to, event="deferred", attempt=attempt, trigger_rows=trigger_rows())
        try:
            yield
        except TaskDeferred:  # not an error: the task hands over to the trigger
            raise
        except BaseException as err:
            journal(self.observe_to, event="error", phase=phase, attempt=attempt, line=error_line(err))
            journal(self.observe_to, event="end", attempt=attempt, output=self._output())
            raise
        journal(self.observe_to, event="end", attempt=attempt, output=self._output())

    def _output(self) -> dict[str, Any]:
        try:
            return describe_output(str(self.output_path))
        except Exception as err:  # a bad output_path: the operator reports it itself
            return {"kind": "unreadable", "bytes": 0, "error": repr(err)}

    def _wait_and_store(self, context: Any, hook: Any, job: Any, record: Any) -> Any:
        if self.scenario == "expire_then_die" and context["ti"].try_number == 1:
            deadline = time.monotonic() + 60
            while hook.get_status(record.request_id).status != "COMPLETED":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"job {record.request_id} did not complete")
                self._stop_polling.wait(0.05)
            requests.post(f"{hook.base_url}/_emulator/expire/{record.request_id}", timeout=5).raise_for_status()
            raise RuntimeError("simulated worker death after the submit (the job record expired meanwhile)")
        return super()._wait_and_store(context, hook, job, record)

    def defer(self, *, trigger: BaseTrigger, method_name: str, kwargs: Any = None, timeout: Any = None) -> Any:
        if self.scenario == "restart_triggerer":
            classpath, trigger_kwargs = trigger.serialize()
            trigger = TriggerRestartHarness(
                classpath=classpath, trigger_kwargs=trigger_kwargs, observe_to=self.observe_to
            )
        return super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)


def _emulator_calls(base_url: str, endpoint: str) -> int:
    log = requests.get(f"{base_url}/_emulator/requests", timeout=5).json()["requests"]
    return sum(1 for entry in log if entry["endpoint"] == endpoint)


class TriggerRestartHarness(BaseTrigger):
    """Run a trigger, kill it mid-poll, restart it from its serialized kwargs, and pass on its event.

    A restarted triggerer does exactly this: it reads ``classpath`` and kwargs from the ``trigger`` table and
    calls ``run()`` on a fresh instance. The journal records the emulator's submit count before and after.
    """

    def __init__(self, classpath: str, trigger_kwargs: dict[str, Any], observe_to: str, min_polls: int = 3) -> None:
        super().__init__()
        self.classpath = classpath
        self.trigger_kwargs = trigger_kwargs
        self.observe_to = observe_to
        self.min_polls = min_polls

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "classpath": self.classpath,
                "trigger_kwargs": self.trigger_kwargs,
                "observe_to": self.observe_to,
                "min_polls": self.min_polls,
            },
        )

    def _fresh(self) -> BaseTrigger:
        from airflow.sdk._shared.module_loading import import_string

        kwargs = json.loads(json.dumps(self.trigger_kwargs))  # what the trigger table gives back: plain JSON
        return import_string(self.classpath)(**kwargs)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        first = self._fresh()
        hook_url = await asyncio.to_thread(self._base_url, first)
        submits_before = await asyncio.to_thread(_emulator_calls, hook_url, "submit_v2")
        polls_before = await asyncio.to_thread(_emulator_calls, hook_url, "history")  # the watcher's polls
        runner = first.run()
        pending = asyncio.ensure_future(runner.__anext__())
        deadline = time.monotonic() + 60
        polls = polls_before
        while not pending.done() and polls - polls_before < self.min_polls and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            polls = await asyncio.to_thread(_emulator_calls, hook_url, "history")
        killed_mid_poll = not pending.done()
        pending.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await pending
        with contextlib.suppress(Exception):
            await runner.aclose()
        journal(
            self.observe_to,
            event="triggerer_killed",
            mid_poll=killed_mid_poll,
            polls_before_kill=polls - polls_before,
            submits=submits_before,
        )
        async for event in self._fresh().run():
            submits_after = await asyncio.to_thread(_emulator_calls, hook_url, "submit_v2")
            journal(self.observe_to, event="triggerer_restarted", submits=submits_after, payload=event.payload)
            yield event
            return

    @staticmethod
    def _base_url(trigger: Any) -> str:
        from sora2_provider.hooks.sora2 import Sora2Hook

        return Sora2Hook(sora2_conn_id=trigger.sora2_conn_id).base_url
