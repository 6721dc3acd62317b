"""One call budget per connection and process: keyed calls wait their turn instead of being refused.

Segmind counts an account's calls in fixed windows and answers 429 with ``x-rate-limit-reset-at-utc`` once a
window's allowance is spent. The budget learns from those answers: a refusal closes it until the reset time,
and the number of calls that went through in the window before the refusal becomes the allowance of the
next windows. After a reset at most that many calls go out; then one call probes for the next reset while
the others wait (a probe that passes shows the window had room: counting starts again). Waiting is the
caller's: :meth:`CallBudget.wait` sleeps (worker side), :meth:`CallBudget.await_turn` awaits ``asyncio.sleep``
(a trigger's coroutine, so no executor thread is held while it waits).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Callable

#: Set by the hook's async methods around their worker-thread call: ``[True]`` while the turn the coroutine
#: awaited is unused. In such a thread a 429 is not waited out (the coroutine waits, with ``asyncio.sleep``).
AWAITED_TURN: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("sora2_awaited_turn", default=None)
#: How long a caller waits before asking again while a probe for the next reset is in flight.
PROBE_WAIT = 0.05
#: Closed for this long when a 429 carries no usable reset time.
DEFAULT_CLOSE = 1.0
#: Added to the reset time, against clock granularity between Segmind and this host.
RESET_MARGIN = 0.1


class BudgetClosed(Exception):
    """Raised in a trigger's worker thread instead of sending: the budget closed (a 429 elsewhere) after the
    coroutine took its turn. The coroutine awaits a new turn; nothing was sent."""


class CallBudget:
    """The call budget of one connection in this process (thread-safe; see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._closed_until = 0.0
        self._allowance: int | None = None  # calls per window, learned from the first refusal
        self._sent = 0  # calls let out since the window opened
        self._passed = 0  # of those, answered without a 429
        self._probe_out = False
        self.refusals = 0
        self.waited_seconds = 0.0

    @property
    def allowance(self) -> int | None:
        return self._allowance

    def reserve(self) -> float:
        """Take a turn now (0.0) or learn how many seconds to wait before asking again."""
        with self._lock:
            now = self._clock()
            if now < self._closed_until:
                return self._closed_until - now
            if self._allowance is not None and self._sent >= self._allowance:
                if self._probe_out:
                    return PROBE_WAIT
                self._probe_out = True  # this call finds out when the next window opens
            self._sent += 1
            return 0.0

    def is_closed(self) -> bool:
        """Whether a refusal closed the budget until a reset that has not come yet."""
        with self._lock:
            return self._clock() < self._closed_until

    def count(self) -> None:
        """A call made without waiting (its caller awaited its turn for the first of several)."""
        with self._lock:
            self._sent += 1

    def record(self, refused: bool, reset_at: float | None = None) -> None:
        """Feed an answer: ``refused`` for a 429, with its reset time (epoch seconds) when it had one."""
        with self._lock:
            if not refused:
                self._passed += 1
                if self._probe_out:  # the window had room after all: a new one may have begun
                    self._probe_out = False
                    self._sent = 0
                return
            self.refusals += 1
            if self._passed:
                self._allowance = max(self._allowance or 0, self._passed)
            reopen = (reset_at + RESET_MARGIN) if reset_at else self._clock() + DEFAULT_CLOSE
            if reopen > self._closed_until:
                self._closed_until = reopen
                self._sent = self._passed = 0
            self._probe_out = False

    def wait(self) -> None:
        """Block this thread until a turn is free (worker-side calls)."""
        while (delay := self.reserve()) > 0:
            self._note_wait(delay)
            time.sleep(delay)

    async def await_turn(self) -> None:
        """Wait for a turn in the event loop, holding no thread."""
        while (delay := self.reserve()) > 0:
            self._note_wait(delay)
            await asyncio.sleep(delay)

    def _note_wait(self, delay: float) -> None:
        with self._lock:
            self.waited_seconds += delay


_BUDGETS: dict[str, CallBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def budget_for(key: str) -> CallBudget:
    """The process-wide budget of one connection (``key``: its id)."""
    with _BUDGETS_LOCK:
        return _BUDGETS.setdefault(key, CallBudget())
