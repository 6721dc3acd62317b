"""Extra links must be URLs a browser opens: Airflow's UI drops any other scheme."""

from __future__ import annotations

import pytest

from sora2_provider.compat import PLUGIN_APPS, PLUGIN_VIEWS
from sora2_provider.links import browser_url

#: The Video tab is an external view of the plugin (Airflow 3.1+); 3.0 and 2.11 get other addresses (tested below).
needs_plugin_views = pytest.mark.skipif(not PLUGIN_VIEWS, reason="no plugin views (the Video tab) before Airflow 3.1")


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


AZURE_BLOB_PAGE = (
    "https://portal.azure.com/#view/Microsoft_Azure_Storage/BlobPropertiesBladeV2/storageAccountId/"
    "%2Fsubscriptions%2F0000-sub%2FresourceGroups%2Fmedia-rg%2Fproviders%2FMicrosoft.Storage%2FstorageAccounts%2Fmediaacct"
    "/path/videos%2F2026-01-01%2Fa%20b.mp4/isDeleted~/false/tabToload~/0"
)


@pytest.mark.parametrize(
    "account_fields",
    [
        {"extra": {"account_name": "mediaacct"}},
        {"extra": {"connection_string": "DefaultEndpointsProtocol=https;AccountName=mediaacct;AccountKey=a2V5"}},
        {"login": "mediaacct"},
        {"host": "https://mediaacct.blob.core.windows.net"},
    ],
    ids=["account_name", "connection_string", "login", "host"],
)
@pytest.mark.parametrize("scheme", ["abfs", "abfss"])
def test_azure_blob_opens_its_portal_page(monkeypatch, account_fields, scheme):
    import json

    conn = {"conn_type": "wasb", **account_fields}
    conn["extra"] = {**conn.get("extra", {}), "subscription_id": "0000-sub", "resource_group": "media-rg"}
    monkeypatch.setenv("AIRFLOW_CONN_MEDIA_BLOBS", json.dumps(conn))
    assert browser_url(f"{scheme}://media_blobs@videos/2026-01-01/a b.mp4") == AZURE_BLOB_PAGE


def test_azure_blob_without_the_account_resource_id_has_no_link(monkeypatch):
    import json

    monkeypatch.setenv("AIRFLOW_CONN_MEDIA_BLOBS", json.dumps({"conn_type": "wasb", "login": "mediaacct"}))
    assert browser_url("abfs://media_blobs@videos/v.mp4") == ""  # no subscription_id / resource_group
    assert browser_url("abfs://no_such_connection@videos/v.mp4") == ""
    assert browser_url("abfs://videos/v.mp4") == ""  # no connection at all


RUN_ID = "manual__2025-06-01T00:00:00+00:00"


@pytest.mark.parametrize(
    ("base_url", "map_index", "url"),
    [
        (
            "https://airflow.example.com",
            -1,
            "https://airflow.example.com/dags/daily/runs/manual__2025-06-01T00%3A00%3A00%2B00%3A00"
            "/tasks/generate_video/plugin/sora2-video",
        ),
        (
            "https://example.com/airflow/",
            3,
            "https://example.com/airflow/dags/daily/runs/manual__2025-06-01T00%3A00%3A00%2B00%3A00"
            "/tasks/generate_video/mapped/3/plugin/sora2-video",
        ),
        ("", -1, "/dags/daily/runs/manual__2025-06-01T00%3A00%3A00%2B00%3A00/tasks/generate_video/plugin/sora2-video"),
    ],
    ids=["base_url", "path_prefix_and_mapped", "no_base_url"],
)
@needs_plugin_views
def test_video_tab_url(base_url, map_index, url):
    from sora2_provider.links import video_tab_url

    assert video_tab_url("daily", RUN_ID, "generate_video", map_index, base_url=base_url) == url


@needs_plugin_views
def test_video_tab_url_takes_the_api_base_url(monkeypatch):
    from sora2_provider.links import video_tab_url

    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://127.0.0.1:28080/")
    assert video_tab_url("d", "r", "t") == "http://127.0.0.1:28080/dags/d/runs/r/tasks/t/plugin/sora2-video"


@pytest.mark.skipif(PLUGIN_VIEWS or not PLUGIN_APPS, reason="Airflow 3.0 only: plugin apps without plugin views")
def test_without_the_video_tab_the_address_is_the_plugins_video_page():
    from sora2_provider.links import video_tab_url

    assert video_tab_url("daily", RUN_ID, "generate_video", 3, base_url="https://example.com/airflow/") == (
        "https://example.com/airflow/sora2/video?dag_id=daily&run_id=manual__2025-06-01T00%3A00%3A00%2B00%3A00"
        "&task_id=generate_video&map_index=3"
    )


@pytest.mark.skipif(PLUGIN_APPS, reason="Airflow 2 only: no plugin at all")
def test_without_the_plugin_the_address_is_the_task_in_the_grid_view():
    from sora2_provider.links import video_tab_url

    assert video_tab_url("daily", RUN_ID, "generate_video", base_url="http://127.0.0.1:8080") == (
        "http://127.0.0.1:8080/dags/daily/grid?dag_run_id=manual__2025-06-01T00%3A00%3A00%2B00%3A00"
        "&task_id=generate_video"
    )
