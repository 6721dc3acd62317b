"""When the history watcher first looks for a job: render times learned per kind of job, and the prior before."""

from __future__ import annotations

import math

import pytest

from sora2_provider.triggers._render_times import SAMPLES, RenderTimes, prior_ages, render_kind

SORA2 = ("sora-2", 4, "720x1280")
PRO = ("sora-2-pro", 12, "1792x1024")


def test_kind_of_a_job_and_none_when_the_trigger_was_not_told():
    assert render_kind("sora-2", "8", "1280x720") == ("sora-2", 8, "1280x720")
    assert render_kind(None, 8, "1280x720") is None
    assert render_kind("sora-2", None, "1280x720") is None
    assert render_kind("sora-2", 8, None) is None
    assert render_kind("sora-2", "eight", "1280x720") is None


def test_nothing_learned_means_segmind_s_typical_time_of_the_model():
    times = RenderTimes()
    assert times.learned(SORA2) is None
    assert times.expected(SORA2, 10.0) == times.prior(SORA2) == 180.0
    assert times.expected(PRO, 10.0) == 400.0
    assert times.prior(("sora-3", 4, "720x1280")) == 180.0, "an unknown model takes sora-2's prior"


def test_learned_time_is_the_lower_quartile_of_the_kind_s_recent_renders():
    times = RenderTimes()
    for seconds in (200.0, 120.0, 160.0, 140.0):
        times.learn(SORA2, seconds)
    assert times.learned(SORA2) == 140.0
    assert times.expected(SORA2, 10.0) == 140.0
    assert times.learned(PRO) is None, "per kind: a sora-2 render says nothing of a sora-2-pro one"
    assert times.learned(("sora-2", 8, "720x1280")) is None, "nor of another duration"


def test_only_the_last_renders_count_and_unusable_figures_are_ignored():
    times = RenderTimes()
    for seconds in [30.0] * SAMPLES + [90.0] * SAMPLES:
        times.learn(SORA2, seconds)
    assert times.learned(SORA2) == 90.0
    for unusable in (None, 0.0, -5.0, math.nan, math.inf):
        times.learn(SORA2, unusable)
    times.learn(None, 10.0)
    assert list(times.samples) == [SORA2] and set(times.samples[SORA2]) == {90.0}


def test_prior_ages_are_one_interval_then_halves_of_the_prior_down_to_two_intervals():
    assert prior_ages(180.0, 10.0) == [10.0, 22.5, 45.0, 90.0, 180.0]
    assert prior_ages(400.0, 10.0) == [10.0, 25.0, 50.0, 100.0, 200.0, 400.0]
    assert prior_ages(180.0, 60.0) == [60.0, 180.0]
    assert prior_ages(180.0, 500.0) == [180.0], "an interval longer than the prior: the prior alone"


def test_a_kind_never_seen_is_read_at_the_prior_ages_then_every_interval():
    times = RenderTimes()
    ages, read_age = [], None
    while read_age is None or read_age < 200:
        read_age = times.next_read_age(SORA2, 10.0, read_age)
        ages.append(read_age)
    assert ages == [10.0, 22.5, 45.0, 90.0, 180.0, 190.0, 200.0]


def test_a_learned_kind_is_read_at_its_time_then_every_interval():
    times = RenderTimes()
    times.learn(SORA2, 150.0)
    assert times.next_read_age(SORA2, 10.0, None) == 150.0
    assert times.next_read_age(SORA2, 10.0, 30.0) == 150.0, "a read for another job does not move it"
    assert times.next_read_age(SORA2, 10.0, 150.0) == 160.0, "late: every interval"
    assert times.next_read_age(SORA2, 10.0, 147.0) == 157.0, "a read just before it counts as that read"


def test_an_unknown_kind_is_read_every_interval():
    times = RenderTimes()
    assert times.next_read_age(None, 10.0, None) == 10.0
    assert times.next_read_age(None, 10.0, 10.0) == 20.0
    assert times.expected(None, 10.0) == 10.0


def test_a_read_just_before_a_prior_age_counts_as_that_read():
    times = RenderTimes()
    assert times.next_read_age(SORA2, 10.0, 44.9) == pytest.approx(90.0)
