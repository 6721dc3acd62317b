"""A Segmind outage on the emulator: every route (or some) answers 503 from a moment until enough calls were refused.

Used by the outage tests (in process, and through a real scheduler and triggerer): :class:`EmulatedOutage` runs in a
thread beside the code under test, begins when told (at once, or once a condition on the emulator's request log
holds, e.g. after the first submit) and ends (clears the faults) once ``refusals`` calls were answered 503: an
outage measured in refused calls, so it outlasts the old ten-error limit whatever the machine's speed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sora2_provider.testing.backend import ENDPOINTS

#: More refused calls than the ten-error limit the waits had before (the first read's own 5 retries included).
LONGER_THAN_TEN_ERRORS = 20
#: Extras that make an outage's backoff quick in tests (reads back off to one every 0.2 s, not a minute).
QUICK_OUTAGE_EXTRAS = {"outage_backoff_max": 0.2}
FOREVER = 10**9


def submitted(log: list[dict[str, Any]]) -> bool:
    """Begin-condition: a submit was answered 200 (the job is paid for and in flight)."""
    return any(e["endpoint"] in ("submit_v2", "submit_v1") and e["status"] == 200 for e in log)


@dataclass
class EmulatedOutage:
    """``routes`` of ``emulator`` answer 503 from when ``begin_when(request_log)`` holds until ``refusals`` calls
    were refused and ``min_seconds`` passed (``FOREVER``: until :meth:`end`)."""

    emulator: Any
    refusals: int = LONGER_THAN_TEN_ERRORS
    min_seconds: float = 0.0  # and lasts at least this long
    routes: tuple[str, ...] = ENDPOINTS
    begin_when: Callable[[list[dict[str, Any]]], bool] = lambda log: True
    began_at: int | None = None  # index in the request log
    ended_at: int | None = None
    seconds: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _began: float = 0.0

    @property
    def calls(self) -> list[dict[str, Any]]:
        """The Segmind calls made while the outage lasted."""
        log = self.emulator.request_log
        return [] if self.began_at is None else log[self.began_at : self.ended_at]

    @property
    def refused(self) -> int:
        return sum(1 for e in self.calls if e["status"] == 503)

    def run(self) -> None:
        while not self.begin_when(self.emulator.request_log):
            if self._stop.wait(0.01):  # a poll tick of this watcher thread, not a synchronisation sleep
                return
        self.began_at = len(self.emulator.request_log)
        self._began = time.monotonic()
        for route in self.routes:
            self.emulator.add_fault(route, "status", status=503, times=FOREVER)
        while not self._over() and not self._stop.wait(0.01):
            pass
        self.end()

    def _over(self) -> bool:
        return self.refused >= self.refusals and time.monotonic() - self._began >= self.min_seconds

    def end(self) -> None:
        with self._lock:
            if self.ended_at is None and self.began_at is not None:
                self.emulator.clear_faults()
                self.ended_at = len(self.emulator.request_log)
                self.seconds = time.monotonic() - self._began
            self._stop.set()


@contextmanager
def outage(emulator: Any, **options: Any) -> Iterator[EmulatedOutage]:
    """Run an :class:`EmulatedOutage` in a thread for the block; it is ended (faults cleared) on leaving."""
    planned = EmulatedOutage(emulator, **options)
    thread = threading.Thread(target=planned.run, name="emulated-outage", daemon=True)
    thread.start()
    try:
        yield planned
    finally:
        planned.end()
        thread.join(timeout=5)
