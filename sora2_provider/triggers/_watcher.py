"""One request-history poll per connection and event loop wakes every waiting :class:`Sora2JobTrigger`.

A triggerer may hold hundreds of Sora 2 triggers. Polling each job's status would cost one keyed call per job
and interval, more than any Segmind plan allows. Instead the triggers of one connection register with one
:class:`HistoryWatcher` (an asyncio task created on first use, gone when its last trigger leaves). It reads the
account's request history, newest first, back to the oldest watched submit (one call per 100 jobs), and
completes every job whose row says COMPLETED or FAILED.

It reads only when some watched job can plausibly be done (``_render_times.py``: render times learned from the
jobs this process saw complete, else Segmind's typical ones), then every poll interval while a job is past that
age; jobs due within a tenth of a render time (at least one interval) of each other share a read. A job the
history has not listed for ``GRACE_POLLS`` intervals once it is due gets its own status call, at a third of the
pace, so a lagging history can delay a job but never lose it.

While Segmind answers only transient errors (an outage, ``job_events.Outage``) no job is given up: reads back
off from the poll interval to one a minute (the connection extra ``outage_backoff_max``), one line is logged when
the outage begins and one when it ends; the extra ``max_outage`` gives up sooner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from sora2_provider.exceptions import Sora2Error
from sora2_provider.job_events import JobWatch, Outage, OutagePolicy, is_outage
from sora2_provider.models import HistoryRecord
from sora2_provider.triggers._render_times import RENDER_TIMES, RenderKind, RenderTimes

log = logging.getLogger(__name__)

#: A due job the history has not listed for this many polls gets a status call of its own ...
GRACE_POLLS = 3
#: ... every this many poll intervals.
FALLBACK_EVERY = 3
#: While the call budget keeps the watcher waiting, its interval doubles up to this many poll intervals, so
#: history reads never starve the submits of an account with a small rate limit.
MAX_BACKOFF = 8
#: Jobs due within this share of the first due job's render time (at least one poll interval) after it are read
#: together, at the last one's time: the first waits a little (at most a tenth of its render), a read is saved.
COALESCE_SHARE = 0.1
#: The history is read back this much further than the oldest submit (clock skew, creation lag).
SINCE_MARGIN = timedelta(minutes=2)


@dataclass(eq=False)
class _Watched:
    """One job a trigger waits for. Times are epoch seconds (``time.time()``), like the submit time."""

    request_id: str
    submitted: float
    poll_interval: float
    kind: RenderKind | None
    watch: JobWatch
    ended: asyncio.Future[dict[str, Any]]
    registered: float = field(default_factory=time.time)
    read_at: float | None = None
    missing_since: float | None = None
    next_fallback: float = 0.0

    def end(self, event: dict[str, Any]) -> None:
        if not self.ended.done():
            self.ended.set_result(event)

    def next_read(self, times: RenderTimes) -> float:
        """When this job wants the history read next: at the age it can be done (then every interval), and never
        sooner than one interval after its trigger started; every interval while it is due but not listed."""
        if self.missing_since is not None and self.read_at is not None:
            return self.read_at + self.poll_interval
        read_age = None if self.read_at is None else self.read_at - self.submitted
        age = times.next_read_age(self.kind, self.poll_interval, read_age)
        return max(self.submitted + age, self.registered + self.poll_interval)


@dataclass(eq=False)
class HistoryWatcher:
    """The waiting jobs of one connection in one event loop, and the task that polls the history for them."""

    conn_id: str
    loop: asyncio.AbstractEventLoop
    times: RenderTimes = field(default_factory=lambda: RENDER_TIMES)
    watched: list[_Watched] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    history_calls: int = 0
    status_calls: int = 0
    backoff: int = 1
    last_read: float = 0.0
    #: When the watcher plans to read next (epoch seconds), while it sleeps.
    sleeping_until: float | None = None
    outage: Outage = field(init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    _registry: ClassVar[dict[tuple[int, str], HistoryWatcher]] = {}

    def __post_init__(self) -> None:
        self.outage = Outage(f"connection {self.conn_id!r}", logger=log)

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
        self,
        request_id: str,
        submitted_at: datetime,
        poll_interval: float,
        kind: RenderKind | None = None,
    ) -> AsyncIterator[asyncio.Future[dict[str, Any]]]:
        """Watch one job; the future resolves to its final event. Leaving (cancellation included) unwatches it.

        ``kind`` (model, duration, size) says when the job can be done; None reads every interval."""
        entry = _Watched(
            request_id=request_id,
            submitted=submitted_at.timestamp(),
            poll_interval=poll_interval,
            kind=kind,
            watch=JobWatch(request_id, self.outage),
            ended=self.loop.create_future(),
        )
        self.watched.append(entry)
        self._changed.set()
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
        from sora2_provider.hooks.sora2 import Sora2Hook  # lazy: the hook (requests) stays out of DAG parsing

        hook = Sora2Hook(sora2_conn_id=self.conn_id)
        try:
            await hook.aprepare()
            self.outage.policy = OutagePolicy.from_extras(hook.extras)
        except Sora2Error as err:  # an undefined or unusable connection: no wait can fix it
            for entry in list(self.watched):
                entry.end(entry.watch.on_error(err) or {"status": "error", "request_id": entry.request_id})
            return
        try:
            while self.watched:
                if await self._wait_for_next_read():
                    continue
                waited_before = hook.budget.waited_seconds
                await self.poll(hook)
                contended = hook.budget.waited_seconds > waited_before
                self.backoff = min(MAX_BACKOFF, self.backoff * 2) if contended else max(1, self.backoff // 2)
        except Exception as err:  # a bug here must not leave triggers waiting forever
            log.exception("The Sora 2 history watcher of %s stopped", self.conn_id)
            for entry in list(self.watched):
                entry.end({"status": "error", "request_id": entry.request_id, "message": repr(err)})

    async def _wait_for_next_read(self) -> bool:
        """Sleep until the next read is due, or a trigger arrives; True when it slept (then plan again)."""
        self._changed.clear()
        self.sleeping_until = self.next_read()
        delay = self.sleeping_until - time.time()
        try:
            if delay <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), delay)
            return True
        finally:
            self.sleeping_until = None

    def next_read(self) -> float:
        """When to read the history next: when the first waiting job is due, or when the last of the jobs due
        soon after it is (``COALESCE_SHARE``), and at least one (backed-off) interval after the previous read."""
        waiting = [w for w in self.watched if not w.ended.done()]
        if not waiting:
            return time.time() + 3600.0  # only finished jobs whose triggers are leaving
        dues = sorted((w.next_read(self.times), id(w), w) for w in waiting)
        first, _, entry = dues[0]
        window = max(entry.poll_interval, COALESCE_SHARE * self.times.expected(entry.kind, entry.poll_interval))
        together = [due for due, _, _ in dues if due <= first + window]
        interval = min(w.poll_interval for w in waiting)
        pause = max(self.backoff * interval, self.outage.delay(interval))
        return max(together[-1], self.last_read + pause)

    async def poll(self, hook: Any) -> None:
        """One round: a history read for every watched job, then status calls for the due ones it keeps missing."""
        watched = [w for w in self.watched if not w.ended.done()]
        if not watched:
            return
        now = self.last_read = time.time()
        due = {id(w) for w in watched if w.next_read(self.times) <= now}
        since = datetime.fromtimestamp(min(w.submitted for w in watched), tz=timezone.utc) - SINCE_MARGIN
        self.history_calls += 1
        try:
            with self.outage.single_attempts(hook):
                rows = await hook.afind_requests(since=since)
        except Sora2Error as err:
            self._failed(watched, err)
            return
        self.outage.answered()
        by_id = {row.request_id: row for row in rows}
        lagging = [entry for entry in watched if self._read(entry, by_id.get(entry.request_id), now, id(entry) in due)]
        await asyncio.gather(*(self._status_of(hook, entry) for entry in lagging))

    def _failed(self, watched: list[_Watched], err: Sora2Error) -> None:
        """A history read failed: an outage is ridden out (logged once), anything else ends every wait."""
        if is_outage(err):
            self.outage.failed(err)
        else:
            log.warning("Request history of %s unavailable (%s)", self.conn_id, err)
        for entry in watched:  # read_at stays: the history did not cover the job, it is still due
            if (event := entry.watch.on_error(err)) is not None:
                entry.end(event)

    def _read(self, entry: _Watched, row: HistoryRecord | None, now: float, due: bool) -> bool:
        """Apply one read to ``entry``; True when it needs a status call of its own (due, unlisted too long)."""
        entry.read_at = now
        if row is not None:
            entry.missing_since = None
            if (event := entry.watch.on_row(row)) is not None:
                self.times.learn(entry.kind, event.get("generation_seconds"))
                entry.end(event)
            return False
        if not due:
            return False
        entry.missing_since = entry.missing_since or now
        if now - entry.missing_since >= GRACE_POLLS * entry.poll_interval and now >= entry.next_fallback:
            entry.next_fallback = now + FALLBACK_EVERY * entry.poll_interval
            return True
        return False

    async def _status_of(self, hook: Any, entry: _Watched) -> None:
        """The fallback for a job the history does not show: its own status call."""
        self.status_calls += 1
        try:
            with self.outage.single_attempts(hook):
                status = await hook.aget_status(entry.request_id)
            event = entry.watch.on_status(status)
        except Sora2Error as err:
            if is_outage(err):
                self.outage.failed(err)
            event = entry.watch.on_error(err)
        if event is not None:
            entry.end(event)

