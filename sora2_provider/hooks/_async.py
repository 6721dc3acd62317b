"""The coroutines triggers call, as methods of :class:`~sora2_provider.hooks.sora2.Sora2Hook`.

Everything that touches Airflow (the connection, its extras, secret masks) runs on the event loop's thread;
the HTTP calls run in worker threads with plain values; a rate limit is waited out with ``asyncio.sleep``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from datetime import datetime
from typing import Any

from sora2_provider.compat import aget_connection, arun_airflow_call
from sora2_provider.exceptions import Sora2RateLimitedError
from sora2_provider.hooks._limiter import AWAITED_TURN, BudgetClosed
from sora2_provider.models import HistoryRecord, JobResult, JobStatus


class AsyncMixin:
    """Async counterparts of the hook's read calls (for triggers)."""

    # ``self: Any``: these methods run on Sora2Hook, whose attributes they use.

    async def aprepare(self: Any) -> None:
        """Everything the calls need from Airflow, done here on the event loop's thread: look the connection up
        (async API), read its extras and register the key's mask. The worker threads below then only use plain
        values; on Airflow 3.1 a supervisor message from such a thread would take the whole triggerer down.
        Before 3.1 both go through ``sync_to_async`` instead (:mod:`sora2_provider.compat`)."""
        if self._conn is None:
            try:
                conn: Any = await aget_connection(self.sora2_conn_id)
                self._conn = conn
            except Exception as err:
                raise self._undefined(err) from None
        await arun_airflow_call(self.get_conn)  # builds the session, reads the extras, masks the key

    async def _in_thread(self: Any, method: Any, *args: Any) -> Any:
        """``method(*args)`` in a worker thread, after waiting for a turn of the call budget in the event loop.

        A 429 is waited out here (``asyncio.sleep`` until the reset), up to ``max_retries`` times, so no thread is
        held while the account's rate limit is spent. A call whose budget closed while it queued for a thread is
        not sent at all: it awaits its turn again."""
        await self.aprepare()
        attempt = 0
        while True:
            await self.budget.await_turn()
            context = contextvars.copy_context()
            context.run(AWAITED_TURN.set, [True])
            try:
                return await asyncio.to_thread(context.run, method, *args)
            except BudgetClosed:
                continue
            except Sora2RateLimitedError as err:
                attempt += 1
                if attempt > self.max_retries:
                    raise
                from sora2_provider import metrics

                metrics.rate_limited(max(0.0, (err.reset_at or 0.0) - time.time()))
                self.log.warning("%s; waiting for the reset (retry %d of %d)", err, attempt, self.max_retries)

    async def aget_status(self: Any, request_id: str) -> JobStatus:
        """:meth:`get_status` in a worker thread: the event loop never blocks."""
        return await self._in_thread(self.get_status, request_id)

    async def aget_result(self: Any, request_id: str) -> JobResult:
        """:meth:`get_result` in a worker thread."""
        return await self._in_thread(self.get_result, request_id)

    async def aget_credits(self: Any) -> dict[str, float]:
        """:meth:`get_credits` in a worker thread."""
        return await self._in_thread(self.get_credits)

    async def aget_request_record(self: Any, request_id: str) -> HistoryRecord:
        """:meth:`get_request_record` in a worker thread (recovers a job whose v2 record expired)."""
        return await self._in_thread(self.get_request_record, request_id)

    async def afind_requests(self: Any, since: datetime, per_page: int = 100) -> list[HistoryRecord]:
        """:meth:`find_requests` (every model and status, newest first, back to ``since``) in a worker thread."""
        return await self._in_thread(lambda: self.find_requests(since=since, per_page=per_page))
