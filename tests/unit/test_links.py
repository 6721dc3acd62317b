"""Extra links must be URLs a browser opens: Airflow's UI drops any other scheme."""

from __future__ import annotations

import pytest

from sora2_provider.links import browser_url


@pytest.mark.parametrize(
    ("uri", "url"),
    [
        (
            "s3://aws_default@my-bucket/videos/2026-01-01/a b.mp4",
            "https://s3.console.aws.amazon.com/s3/object/my-bucket?prefix=videos/2026-01-01/a%20b.mp4",
        ),
        ("s3://my-bucket/v.mp4", "https://s3.console.aws.amazon.com/s3/object/my-bucket?prefix=v.mp4"),
        (
            "gs://google_cloud_default@media/v.mp4",
            "https://console.cloud.google.com/storage/browser/_details/media/v.mp4",
        ),
        ("https://cdn.segmind.com/out/1.mp4", "https://cdn.segmind.com/out/1.mp4"),
        ("file:///data/videos/v.mp4", ""),
        (None, ""),
    ],
)
def test_browser_url(uri, url):
    assert browser_url(uri) == url
