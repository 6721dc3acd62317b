"""One call budget per connection and process: keyed calls wait their turn instead of being refused.

The budget learns the account's allowance per window (and the window's length) from Segmind's 429 answers and
their ``x-rate-limit-reset-at-utc``; the rules are in docs/rate-limits.md. Waiting is the caller's:
:meth:`CallBudget.wait` sleeps (worker side), :meth:`CallBudget.await_turn` awaits (a trigger's coroutine).
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
#: The longest window the budget assumes: Segmind's limits are calls a minute. A longer gap between two reset
#: times (windows without a refusal between them) does not count as one window.
MAX_WINDOW = 60.0
#: Windows the budget closes by itself, without a refusal, before it probes whether the allowance is larger.
GROW_AFTER = 4


class BudgetClosed(Exception):
    """Raised in a trigger's worker thread instead of sending: the budget closed (a 429 elsewhere) after the
    coroutine took its turn. The coroutine awaits a new turn; nothing was sent."""


class CallBudget:
    """The call budget of one connection in this process (thread-safe; see the module docstring)."""

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time  # the wall clock as it is when the budget is made
        self._lock = threading.Lock()
        self._closed_until = 0.0
        self._refused_until = 0.0  # the part of the closure a 429 asked for
        self._allowance: int | None = None  # calls per window, learned from the first refusal
        self._window: float | None = None  # seconds, learned from the reset times of two refusals
        self._last_reset: float | None = None
        self._count_since = 0.0  # calls sent since then are counted: the window they fall in began no earlier
        self._sent = 0  # calls let out since the count began
        self._passed = 0  # of those, answered without a 429
        self._late_passed = 0  # the same for the last count, its late answers included
        self._opened_at: float | None = None  # when the first of them was answered: their window had begun
        self._probe_out = False
        self._quiet_windows = 0  # windows closed by the count since the last refusal or probe
        self.refusals = 0
        self.waited_seconds = 0.0

    @property
    def allowance(self) -> int | None:
        return self._allowance

    @property
    def window(self) -> float | None:
        """The window's length in seconds, once two refusals told it."""
        return self._window

    def now(self) -> float:
        """This budget's clock (epoch seconds): what a caller passes to :meth:`record` as the time it sent."""
        return self._clock()

    def reserve(self) -> float:
        """Take a turn now (0.0) or learn how many seconds to wait before asking again."""
        with self._lock:
            now = self._clock()
            if now < self._closed_until:
                return self._closed_until - now
            window_ends = self._window_ends()
            if window_ends is not None and now >= window_ends:
                self._start_count(now)  # the window of the calls counted so far is over
                window_ends = None
            if self._allowance is not None and self._sent >= self._allowance:
                if window_ends is not None and self._quiet_windows < GROW_AFTER:
                    self._quiet_windows += 1  # spent: wait for the next window rather than be refused
                    self._closed_until = window_ends
                    self._start_count(window_ends)
                    return window_ends - now
                if window_ends is None and self._window is not None and now < self._count_since + self._window:
                    return PROBE_WAIT  # spent, and no answer has told when this window began yet
                if self._probe_out:
                    return PROBE_WAIT
                self._probe_out = True  # this call finds out when the next window opens
            self._sent += 1
            return 0.0

    def is_closed(self) -> bool:
        """Whether a refusal closed the budget until a reset that has not come yet."""
        with self._lock:
            return self._clock() < self._refused_until

    def count(self) -> None:
        """A call made without waiting (its caller awaited its turn for the first of several)."""
        with self._lock:
            self._sent += 1

    def record(self, refused: bool, reset_at: float | None = None, sent_at: float | None = None) -> None:
        """Feed an answer: ``refused`` for a 429, with its reset time (epoch seconds) when it had one; ``sent_at``:
        when the call went out (:meth:`now`)."""
        with self._lock:
            late = sent_at is not None and sent_at < self._count_since  # an answer to a call of the last count
            if refused:
                self._record_refusal(late, reset_at)
            else:
                self._record_pass(late, sent_at)

    def _record_pass(self, late: bool, sent_at: float | None) -> None:
        if late:
            self._late_passed += 1
            if self._allowance is not None:  # that window let more through than counted when it closed
                self._allowance = max(self._allowance, self._late_passed)
        else:
            self._passed += 1
            if self._opened_at is None and sent_at is not None:
                self._opened_at = self._clock()
        if self._probe_out:
            self._probe_out = False
            if self._window is None:  # the window had room after all: a new one may have begun
                self._sent = 0
            elif self._allowance is not None and not late:  # it had room for one more: probe again
                self._allowance += 1

    def _record_refusal(self, late: bool, reset_at: float | None) -> None:
        self.refusals += 1
        passed = self._late_passed if late else self._passed
        if passed:
            self._allowance = max(self._allowance or 0, passed)
        if reset_at:
            self._learn_window(reset_at)
        reopen = (reset_at + RESET_MARGIN) if reset_at else self._clock() + DEFAULT_CLOSE
        self._refused_until = max(self._refused_until, reopen)
        self._quiet_windows = 0
        if reopen > self._closed_until:
            self._closed_until = reopen
            self._start_count(reopen)
        self._probe_out = False

    def _window_ends(self) -> float | None:
        """When the window of the calls counted so far ends at the latest: it had begun by the first answer."""
        if self._window is None or self._opened_at is None:
            return None
        return self._opened_at + self._window + RESET_MARGIN

    def _start_count(self, since: float) -> None:
        self._count_since = since
        self._late_passed = self._passed
        self._sent = self._passed = 0
        self._opened_at = None

    def _learn_window(self, reset_at: float) -> None:
        if self._last_reset is not None and 0.001 < reset_at - self._last_reset <= MAX_WINDOW:
            self._window = min(self._window or MAX_WINDOW, reset_at - self._last_reset)
        if self._last_reset is None or reset_at > self._last_reset:
            self._last_reset = reset_at

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
