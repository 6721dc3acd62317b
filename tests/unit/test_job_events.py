"""The waiting vocabulary's outage rules (job_events.py): backoff, give-up, settings, single attempts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sora2_provider.exceptions import Sora2ConfigError, Sora2NotFoundError, Sora2ServerError
from sora2_provider.job_events import JobWatch, Outage, OutagePolicy


def test_reads_back_off_from_the_poll_interval_to_the_cap_and_resume_once_segmind_answers():
    outage = Outage("test", OutagePolicy(backoff_max=60.0))
    assert outage.delay(10.0) == 10.0
    delays = []
    for _ in range(5):
        outage.failed(Sora2ServerError("down"))
        delays.append(outage.delay(10.0))
    assert delays == [20.0, 40.0, 60.0, 60.0, 60.0]
    outage.answered()
    assert outage.delay(10.0) == 10.0 and not outage.active


def test_a_wait_rides_out_an_outage_unless_max_outage_has_passed():
    error = Sora2ServerError("history search: Segmind server or gateway error", status_code=503)
    riding = JobWatch("req-1", Outage("test"))
    riding.outage.failed(error)
    assert riding.on_error(error) is None

    giving_up = JobWatch("req-2", Outage("test", OutagePolicy(max_outage=1e-9)))
    giving_up.outage.failed(error)
    event = giving_up.on_error(error)
    assert event is not None and event["status"] == "error" and event["retryable"] is True
    assert "max_outage=1e-09 s" in event["message"] and "HTTP 503" in event["message"]


def test_errors_no_wait_can_fix_end_the_wait_at_once():
    watch = JobWatch("req-1", Outage("test"))
    assert watch.on_error(Sora2NotFoundError("gone"))["status"] == "not_found"


@pytest.mark.parametrize("value", ["soon", 0, -5, "nan"])
def test_a_bad_outage_setting_is_refused_naming_the_extra(value):
    with pytest.raises(Sora2ConfigError, match="max_outage"):
        OutagePolicy.from_extras({"max_outage": value})


def test_settings_come_from_the_connection_extras():
    assert OutagePolicy.from_extras({}) == OutagePolicy(None, 60.0)
    assert OutagePolicy.from_extras({"max_outage": "900", "outage_backoff_max": 5}) == OutagePolicy(900.0, 5.0)


def test_during_an_outage_each_read_is_one_call_and_the_retries_come_back_after_it():
    hook = SimpleNamespace(max_retries=5)
    outage = Outage("test")
    with outage.single_attempts(hook):
        assert hook.max_retries == 5, "the first failing read keeps the hook's quick retries"
    outage.failed(Sora2ServerError("down"))
    with outage.single_attempts(hook):
        assert hook.max_retries == 0
    assert hook.max_retries == 5
