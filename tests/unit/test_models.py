"""models.py is the one price and parameter table: validation messages name the field and allowed values."""

from __future__ import annotations

import pytest

from sora2_provider.models import MODELS, VideoRequest, estimate_cost, plan_cost


@pytest.mark.parametrize(
    ("model", "duration", "size", "credits"),
    [
        ("sora-2", 4, None, 0.4),
        ("sora-2", 12, "1280x720", 1.2),
        ("sora-2-pro", 4, "720x1280", 1.2),
        ("sora-2-pro", 12, "1792x1024", 6.0),
        ("sora-2-pro", "8", None, 2.4),
    ],
)
def test_estimate_cost_matches_contract_prices(model, duration, size, credits):
    assert estimate_cost(model, duration, size) == credits


def test_plan_cost_sums_counts():
    jobs = [{"model": "sora-2-pro", "duration": 12, "size": "1792x1024", "count": 3}]
    assert plan_cost(jobs) == 18.0
    assert plan_cost([*jobs, {"model": "sora-2", "duration": 4}]) == 18.4


def test_defaults_follow_each_model():
    assert VideoRequest.create("a cat").size == MODELS["sora-2"].default_size == "720x1280"
    assert VideoRequest.create("a cat", model="sora-2-pro").size == "1280x720"


def test_numeric_string_duration_is_normalised_to_int():
    request = VideoRequest.create("a cat", duration="12")
    assert request.duration == 12
    assert request.to_body() == {"prompt": "a cat", "duration": 12, "size": "720x1280"}


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": "   "}, "prompt", "non-empty"),
        ({"prompt": "x" * 5001}, "prompt", "5000"),
        ({"prompt": "x", "model": "sora-3"}, "model", "'sora-2', 'sora-2-pro'"),
        ({"prompt": "x", "duration": 5}, "duration", "4, 8, 12"),
        ({"prompt": "x", "duration": "eight"}, "duration", "4, 8, 12"),
        ({"prompt": "x", "duration": -4}, "duration", "4, 8, 12"),
        ({"prompt": "x", "duration": True}, "duration", "4, 8, 12"),
        ({"prompt": "x", "size": "1792x1024"}, "size", "'720x1280', '1280x720'"),
        ({"prompt": "x", "model": "sora-2-pro", "size": "640x480"}, "size", "'1024x1792', '1792x1024'"),
        ({"prompt": "x", "input_reference": "not a url"}, "input_reference", "http(s) URL"),
        ({"prompt": "x", "input_reference": "ftp://host/a.png"}, "input_reference", "http(s) URL"),
    ],
)
def test_invalid_fields_name_the_field_and_allowed_values(kwargs, field, allowed):
    with pytest.raises(ValueError) as err:
        VideoRequest.create(**kwargs)
    assert str(err.value).startswith(f"{field}:")
    assert allowed in str(err.value)


@pytest.mark.parametrize(
    ("jobs", "field"),
    [
        ([], "jobs"),
        ([{"model": "sora-9", "duration": 4}], "jobs[0].model"),
        ([{"model": "sora-2", "duration": 4}, {"model": "sora-2", "count": 0}], "jobs[1].count"),
        (["sora-2"], "jobs[0]"),
    ],
)
def test_plan_cost_names_the_bad_job(jobs, field):
    with pytest.raises(ValueError) as err:
        plan_cost(jobs)
    assert str(err.value).startswith(f"{field}:")
