"""The call budget's rules on a clock the test moves (hooks/_call_budget.py); tests/operator/test_watcher.py and
test_rate_limit_windows below run it against the emulator's real rate limit."""

from __future__ import annotations

import pytest

from sora2_provider.hooks._call_budget import GROW_AFTER, MAX_WINDOW, PROBE_WAIT, RESET_MARGIN, CallBudget
from sora2_provider.hooks.sora2 import Sora2Hook
from sora2_provider.testing.emulator import Sora2Emulator
from tests.support import TEST_API_KEY, VirtualTime, connection_json


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def spend(budget: CallBudget, calls: int) -> None:
    """``calls`` turns taken, sent and answered without a 429 at once."""
    for _ in range(calls):
        assert budget.reserve() == 0.0
        budget.record(refused=False, sent_at=budget.now())


def refused_window(budget: CallBudget, clock: Clock, calls: int, reset_at: float) -> None:
    """A window in which ``calls`` pass and the next one is refused with ``reset_at``; then the clock reaches it."""
    spend(budget, calls)
    assert budget.reserve() == 0.0
    budget.record(refused=True, reset_at=reset_at)
    clock.now = reset_at + RESET_MARGIN


def learned(clock: Clock) -> CallBudget:
    """A budget that has learned an allowance of 5 calls and a window of 20 s (plus the margin)."""
    budget = CallBudget(clock)
    refused_window(budget, clock, calls=5, reset_at=clock.now + 20)
    refused_window(budget, clock, calls=5, reset_at=clock.now + 20)
    return budget


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_refusal_closes_the_budget_until_the_reset_and_teaches_the_allowance(clock):
    budget = CallBudget(clock)
    refused_window(budget, clock, calls=5, reset_at=clock.now + 20)
    assert budget.allowance == 5 and budget.window is None


def test_before_the_window_is_known_one_probe_at_a_time_finds_the_next_reset(clock):
    budget = CallBudget(clock)
    refused_window(budget, clock, calls=5, reset_at=clock.now + 20)
    spend(budget, 5)
    assert budget.reserve() == 0.0  # the probe
    assert budget.reserve() == PROBE_WAIT  # the others wait for its answer


def test_two_refused_windows_teach_the_window_and_no_probe_is_sent_after_that(clock):
    budget = learned(clock)
    assert budget.window == pytest.approx(20 + RESET_MARGIN)
    window_opened = clock.now
    spend(budget, 5)
    clock.now += 3
    wait = budget.reserve()
    assert wait == pytest.approx(window_opened + budget.window + RESET_MARGIN - clock.now)
    assert not budget.is_closed(), "closed by its own count, not by a refusal"
    clock.now += wait
    spend(budget, 5)  # the next window's allowance, all at once
    assert budget.refusals == 2


def test_a_window_that_ended_before_the_allowance_was_spent_starts_a_new_count(clock):
    budget = learned(clock)
    spend(budget, 4)
    clock.now += 30  # that window is over: the next call opens a new one
    spend(budget, 5)
    assert budget.reserve() > 0, "the sixth call of the new window waits"


def test_the_window_is_dated_by_the_first_answer_not_by_the_first_send(clock):
    """A window that begins when the first call arrives began after that call was sent; the answer is the safe
    mark: the budget reopens one window after the answer."""
    budget = learned(clock)
    sent_at = budget.now()
    for _ in range(5):
        assert budget.reserve() == 0.0
    clock.now += 2  # the calls are in flight
    assert budget.reserve() == PROBE_WAIT, "spent, and no answer yet: no probe goes out"
    for _ in range(5):
        budget.record(refused=False, sent_at=sent_at)
    answered = clock.now
    assert budget.reserve() == pytest.approx(answered + budget.window + RESET_MARGIN - clock.now)


def test_answers_to_calls_of_the_previous_window_do_not_date_the_next(clock):
    budget = learned(clock)
    old_sent_at = budget.now()
    spend(budget, 4)
    assert budget.reserve() == 0.0  # the fifth call: its answer comes late
    reopen = clock.now + budget.reserve()  # spent: closed until the window ends
    clock.now = reopen
    assert budget.reserve() == 0.0
    budget.record(refused=False, sent_at=old_sent_at)  # the late answer, to a call sent before the count began
    for _ in range(4):
        assert budget.reserve() == 0.0
    assert budget.reserve() == PROBE_WAIT, "the late answer told nothing of this window"
    assert budget.allowance == 5


def test_late_answers_of_the_refused_window_raise_the_allowance(clock):
    """A burst's answers arrive in any order: passes that come after the first 429 count for that window too."""
    budget = CallBudget(clock)
    sent_at = budget.now()
    for _ in range(8):
        assert budget.reserve() == 0.0
    for _ in range(3):
        budget.record(refused=False, sent_at=sent_at)
    budget.record(refused=True, reset_at=clock.now + 20, sent_at=sent_at)
    assert budget.allowance == 3
    for _ in range(2):
        budget.record(refused=False, sent_at=sent_at)
    budget.record(refused=True, reset_at=clock.now + 20, sent_at=sent_at)
    assert budget.allowance == 5


def test_without_answers_for_a_whole_window_one_probe_goes_out(clock):
    """Calls that never got an answer (lost on the way) do not keep the budget shut: after a window, a probe."""
    budget = learned(clock)
    for _ in range(5):
        assert budget.reserve() == 0.0
    clock.now += budget.window
    assert budget.reserve() == 0.0
    assert budget.reserve() == PROBE_WAIT


def quiet_window(budget: CallBudget, clock: Clock) -> None:
    """The allowance spent at once, then the wait the budget asks for until the next window."""
    spend(budget, budget.allowance or 0)
    wait = budget.reserve()
    assert wait > 0
    clock.now += wait


def test_after_quiet_windows_probes_find_a_larger_allowance(clock):
    """An allowance learned while other callers shared the window is too small: every GROW_AFTER windows without
    a refusal, probes go out until one is refused, each passing one adding a call to the allowance."""
    budget = learned(clock)
    for _ in range(GROW_AFTER):
        quiet_window(budget, clock)
    spend(budget, 5)
    for allowance in (6, 7):
        assert budget.reserve() == 0.0  # a probe
        budget.record(refused=False, sent_at=budget.now())
        assert budget.allowance == allowance
    assert budget.reserve() == 0.0
    budget.record(refused=True, reset_at=clock.now + 20, sent_at=budget.now())
    assert budget.allowance == 7 and budget.refusals == 3
    clock.now += 20 + RESET_MARGIN
    quiet_window(budget, clock)  # and the count of quiet windows starts again
    assert budget.refusals == 3


def test_reset_times_further_apart_than_a_minute_are_not_one_window(clock):
    budget = CallBudget(clock)
    refused_window(budget, clock, calls=5, reset_at=clock.now + 20)
    refused_window(budget, clock, calls=5, reset_at=clock.now + MAX_WINDOW + 40)
    assert budget.window is None


def test_refusals_of_one_window_teach_no_window(clock):
    budget = CallBudget(clock)
    reset_at = clock.now + 20
    spend(budget, 5)
    for _ in range(3):
        budget.record(refused=True, reset_at=reset_at)
    assert budget.window is None and budget.refusals == 3


def test_rate_limit_windows_cost_two_refusals_in_all(monkeypatch):
    """Twenty calls through one hook, at three calls a window: the first two windows' refusals teach the allowance
    and the window; the other windows go by without a refusal (before: a refused probe in every window)."""
    with Sora2Emulator(api_keys={TEST_API_KEY: 100.0}, rate_limit_rpm=3, rate_limit_window=1.0) as emulator:
        clock = VirtualTime.install(monkeypatch)
        monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emulator.url))
        hook = Sora2Hook()
        assert hook.budget.now() == clock.now, "a budget made before the clock was installed would spin"
        started = clock.now
        balances = [hook.get_credits() for _ in range(20)]
        answers = [entry["status"] for entry in emulator.request_log if entry["endpoint"] == "credits"]
    assert len(balances) == 20
    assert answers.count(429) == 2, answers
    assert answers.count(200) == 20
    assert hook.budget.allowance == 3
    # the window as seen from here: the second began when the first refusal's wait (reset + margin) was over
    assert hook.budget.window == pytest.approx(1.0 + RESET_MARGIN, abs=0.01)
    # 20 calls at 3 a window span 7 windows: six waits for a reset, none longer than a window and two margins
    assert 6.0 <= clock.now - started <= 6 * (1.0 + 2 * RESET_MARGIN), clock.now - started
