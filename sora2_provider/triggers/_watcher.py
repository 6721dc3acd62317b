"""One request-history poll per connection and event loop wakes every waiting :class:`Sora2JobTrigger`.

A triggerer may hold hundreds of Sora 2 triggers. Polling each job's status would cost one keyed call per job
and interval, more than any Segmind plan allows. Instead the triggers of one connection register with one
:class:`HistoryWatcher` (an asyncio task created on first use, gone when its last trigger leaves). Each
interval it reads the account's request history, newest first, back to the oldest watched submit (one call
per 100 jobs), and completes every job whose row says COMPLETED or FAILED. A job the history has not shown
for ``GRACE_POLLS`` intervals gets its own status call, at a third of the pace, so a lagging history can
delay a job but never lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sora2_provider.exceptions import Sora2Error
from sora2_provider.models import HistoryRecord
from sora2_provider.triggers._job_watch import JobWatch

log = logging.getLogger(__name__)

#: A watched job the history has not listed for this many polls gets a status call of its own ...
GRACE_POLLS = 3
#: ... every this many poll intervals.
FALLBACK_EVERY = 3
#: While the call budget keeps the watcher waiting, its interval doubles up to this many poll intervals, so
#: history reads never starve the submits of an account with a small rate limit.
MAX_BACKOFF = 8
#: The history is read back this much further than the oldest submit (clock skew, creation lag).
SINCE_MARGIN = timedelta(minutes=2)


@dataclass(eq=False)
class _Watched:
    """One job a trigger waits for."""

    request_id: str
    submitted_at: datetime
    poll_interval: float
    watch: JobWatch
    ended: asyncio.Future[dict[str, Any]]
    missing_since: float | None = None
    next_fallback: float = 0.0

    def end(self, event: dict[str, Any]) -> None:
        if not self.ended.done():
            self.ended.set_result(event)


@dataclass(eq=False)
class HistoryWatcher:
    """The waiting jobs of one connection in one event loop, and the task that polls the history for them."""

    conn_id: str
    loop: asyncio.AbstractEventLoop
    watched: list[_Watched] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    history_calls: int = 0
    status_calls: int = 0
    backoff: int = 1

    _registry: ClassVar[dict[tuple[int, str], HistoryWatcher]] = {}

    @classmethod
    def for_connection(cls, conn_id: str) -> HistoryWatcher:
        """The watcher of ``conn_id`` in the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        key = (id(loop), conn_id)
        watcher = cls._registry.get(key)
        if watcher is None or watcher.loop is not loop:
            watcher = cls._registry[key] = cls(conn_id, loop)
        return watcher

    @classmethod
    def active(cls) -> list[HistoryWatcher]:
        """Every watcher with a running task (for tests and benchmarks)."""
        return [w for w in cls._registry.values() if w.task is not None and not w.task.done()]

    @contextlib.asynccontextmanager
    async def watching(
        self, request_id: str, submitted_at: datetime, poll_interval: float, max_transient_errors: int
    ) -> AsyncIterator[asyncio.Future[dict[str, Any]]]:
        """Watch one job; the future resolves to its final event. Leaving (cancellation included) unwatches it."""
        entry = _Watched(
            request_id=request_id,
            submitted_at=submitted_at,
            poll_interval=poll_interval,
            watch=JobWatch(request_id, max_transient_errors),
            ended=self.loop.create_future(),
        )
        self.watched.append(entry)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._run(), name=f"sora2-history-watcher-{self.conn_id}")
        try:
            yield entry.ended
        finally:
            self.watched.remove(entry)
            if not self.watched:
                self._stop()

    def _stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.task = None
        key = (id(self.loop), self.conn_id)
        if self._registry.get(key) is self:
            del self._registry[key]

    async def _run(self) -> None:
        from sora2_provider.hooks.sora2 import Sora2Hook

        hook = Sora2Hook(sora2_conn_id=self.conn_id)
        try:
            await hook.aprepare()
        except Sora2Error as err:  # an undefined or unusable connection: no wait can fix it
            for entry in list(self.watched):
                entry.end(entry.watch.on_error(err) or {"status": "error", "request_id": entry.request_id})
            return
        try:
            while self.watched:
                await asyncio.sleep(self.backoff * min(w.poll_interval for w in self.watched))
                waited_before = hook.budget.waited_seconds
                await self.poll(hook)
                contended = hook.budget.waited_seconds > waited_before
                self.backoff = min(MAX_BACKOFF, self.backoff * 2) if contended else max(1, self.backoff // 2)
        except Exception as err:  # a bug here must not leave triggers waiting forever
            log.exception("The Sora 2 history watcher of %s stopped", self.conn_id)
            for entry in list(self.watched):
                entry.end({"status": "error", "request_id": entry.request_id, "message": repr(err)})

    async def poll(self, hook: Any) -> None:
        """One round: a history read for every watched job, then status calls for the ones it keeps missing."""
        watched = [w for w in self.watched if not w.ended.done()]
        if not watched:
            return
        since = min(w.submitted_at for w in watched) - SINCE_MARGIN
        self.history_calls += 1
        try:
            rows = await hook.afind_requests(since=since)
        except Sora2Error as err:
            log.warning("Request history of %s unavailable (%s); polling again", self.conn_id, err)
            for entry in watched:
                if (event := entry.watch.on_error(err)) is not None:
                    entry.end(event)
            return
        by_id = {row.request_id: row for row in rows}
        now = time.monotonic()
        lagging = []
        for entry in watched:
            row = by_id.get(entry.request_id)
            if row is not None:
                entry.missing_since = None
                entry.watch.transient_errors = 0
                if (event := _event_from_history(entry.watch, row)) is not None:
                    entry.end(event)
                continue
            entry.missing_since = entry.missing_since or now
            if now - entry.missing_since >= GRACE_POLLS * entry.poll_interval and now >= entry.next_fallback:
                entry.next_fallback = now + FALLBACK_EVERY * entry.poll_interval
                lagging.append(entry)
        await asyncio.gather(*(self._status_of(hook, entry) for entry in lagging))

    async def _status_of(self, hook: Any, entry: _Watched) -> None:
        """The fallback for a job the history does not show: its own status call."""
        self.status_calls += 1
        try:
            event = entry.watch.on_status(await hook.aget_status(entry.request_id))
        except Sora2Error as err:
            event = entry.watch.on_error(err)
        if event is not None:
            entry.end(event)


def _event_from_history(watch: JobWatch, row: HistoryRecord) -> dict[str, Any] | None:
    """The final event for a history row that shows the job ended (with what the operator needs to store it)."""
    if row.status == "COMPLETED" and row.output_url:
        seconds = None if row.latency_ms is None else round(row.latency_ms / 1000, 3)
        return watch.completed(output_url=row.output_url, cost=row.cost, generation_seconds=seconds)
    if row.status == "FAILED":
        return watch.failed(row.error)
    return None
