"""The spend cap's arithmetic (spend.py) on history rows built here: what counts, at what price, and where the
cap refuses. The hook's side (fetching the rows, refusing before anything is sent) is tested over real HTTP in
tests/operator/test_spend_cap.py and tests/sensor/test_spend_cap_sensor.py."""

from __future__ import annotations

import pytest

from sora2_provider import spend
from sora2_provider.exceptions import Sora2SpendCapError
from sora2_provider.models import HistoryRecord, VideoRequest


def row(status: str | None, cost: float | None = None, model: str | None = "sora-2", **body: object) -> HistoryRecord:
    return HistoryRecord(
        request_id="r", model=model, status=status, cost=cost, request_body=dict(body), output_url=None, created_at=None
    )


def test_completed_rows_count_what_was_charged_and_failed_rows_nothing():
    rolled = spend.spend_of([row("COMPLETED", 0.8), row("COMPLETED", 1.2), row("FAILED", 0.8)])
    assert (rolled.charged, rolled.pending, rolled.completed_jobs, rolled.pending_jobs) == (2.0, 0.0, 2, 0)


def test_pending_rows_count_at_the_price_table_estimate_of_their_body():
    rolled = spend.spend_of([row("PENDING", 0.0, duration=12), row("PENDING", None, "sora-2-pro", duration="4")])
    assert (rolled.pending, rolled.pending_jobs) == (pytest.approx(1.2 + 1.2), 2)  # 12 x 0.1, 4 x 0.3
    assert "estimated for 2 pending" in rolled.describe()


def test_a_row_this_provider_cannot_price_counts_what_segmind_says_it_charged():
    assert spend.row_spend(row("PENDING", 0.7, model="some-other-model")) == ("pending", 0.7)
    assert spend.row_spend(row("COMPLETED", None, model="some-other-model")) == ("completed", 0.0)


def test_a_job_that_lands_exactly_on_the_cap_is_allowed_and_one_cent_more_is_refused():
    four_jobs = spend.spend_of([row("COMPLETED", 0.8)] * 4)  # 3.2000000000000003 unrounded
    fifth = VideoRequest.create("p", "sora-2", 8)  # 0.8
    assert spend.refusal(fifth, four_jobs, cap=4.0) is None
    refused = spend.refusal(fifth, spend.spend_of([*[row("COMPLETED", 0.8)] * 4, row("COMPLETED", 0.01)]), cap=4.0)
    assert isinstance(refused, Sora2SpendCapError)
    assert (refused.cap, refused.spent, refused.estimate, refused.retryable) == (4.0, 3.21, 0.8, False)
    assert "nothing was submitted" in str(refused)


def test_an_argument_lowers_the_connection_cap_but_never_raises_it():
    assert spend.effective_cap(5.0, 2.0) == 2.0
    assert spend.effective_cap(2.0, 5.0) == 2.0
    assert spend.effective_cap(None, 3.0) == 3.0
    assert spend.effective_cap(None, None) is None


def test_the_allowance_never_goes_below_zero():
    assert spend.allowance(2.0, spend.spend_of([row("COMPLETED", 0.8)])) == 1.2
    assert spend.allowance(2.0, spend.spend_of([row("COMPLETED", 3.0)])) == 0.0


@pytest.mark.parametrize("value", [-1, "abc", True, float("inf"), float("nan")])
def test_a_cap_that_is_not_a_number_of_credits_is_refused_naming_where_it_came_from(value):
    with pytest.raises(ValueError, match="extra max_spend_per_day"):
        spend.parse_cap(value, "extra max_spend_per_day")


@pytest.mark.parametrize(("value", "cap"), [(None, None), ("", None), (" ", None), ("2.5", 2.5), (0, 0.0)])
def test_a_cap_is_read_from_a_number_or_its_text(value, cap):
    assert spend.parse_cap(value, "cap") == cap
