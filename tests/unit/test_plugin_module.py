"""The UI plugin without a server: its declaration, what importing it costs, and the pure parts of its routes
(identities, byte ranges, the uri check, the one-line status). tests/ui/test_plugin.py drives the real thing."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from sora2_provider._http_range import RangeNotSatisfiable, byte_range
from sora2_provider.compat import PLUGIN_APPS, PLUGIN_VIEWS
from sora2_provider.links import video_tab_url
from sora2_provider.plugins.media import same_location, verified_uri
from sora2_provider.plugins.records import BadIdentity, Generation, Identity
from sora2_provider.plugins.sora2 import VIDEO_TAB_HREF, Sora2Plugin

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


#: Airflow 2's plugins serve no FastAPI app: there is no sora2 plugin on that line (plugins/sora2.py).
needs_plugin_apps = pytest.mark.skipif(not PLUGIN_APPS, reason="Airflow 2 plugins serve no FastAPI app: no plugin")


@needs_plugin_apps
def test_the_plugin_declares_the_app_and_where_airflow_has_them_the_video_tab_and_the_page():
    from airflow.providers.common.compat.sdk import AirflowPlugin

    assert Sora2Plugin is not None
    assert issubclass(Sora2Plugin, AirflowPlugin) and Sora2Plugin.name == "sora2"
    assert [app["url_prefix"] for app in Sora2Plugin.fastapi_apps] == ["/sora2"]
    if not PLUGIN_VIEWS:  # Airflow 3.0: the /sora2 pages serve, but the UI takes no external views
        assert Sora2Plugin.external_views == []
        return
    views = {view["url_route"]: view for view in Sora2Plugin.external_views}
    assert views["sora2-video"]["destination"] == "task_instance"
    assert views["sora2"]["destination"] == "nav"
    # The UI fills these placeholders for a task instance view (airflow/ui: replaceAll("{DAG_ID}", ...)).
    for placeholder in ("{DAG_ID}", "{RUN_ID}", "{TASK_ID}", "{MAP_INDEX}"):
        assert placeholder in VIDEO_TAB_HREF
    # The address review requests link to (links.video_tab_url) is where the UI shows this view.
    assert video_tab_url("d", "r", "t", base_url="").endswith(f"/plugin/{views['sora2-video']['url_route']}")


def test_the_provider_metadata_and_the_entry_point_name_the_same_class():
    from importlib.metadata import entry_points

    from sora2_provider.get_provider_info import get_provider_info

    declared = get_provider_info()["plugins"]
    [entry_point] = [e for e in entry_points(group="airflow.plugins") if e.name == "sora2"]
    assert entry_point.load() is Sora2Plugin
    if PLUGIN_APPS:
        assert [plugin["plugin-class"] for plugin in declared] == [entry_point.value.replace(":", ".")]
    else:  # Airflow 2: nothing declared, and the entry point names None, which Airflow's loader skips
        assert declared == [] and Sora2Plugin is None


@pytest.mark.skipif(PLUGIN_APPS, reason="Airflow 3 has the plugin (tested above)")
def test_airflow_2_loads_its_plugins_without_an_error_and_without_sora2():
    """Airflow 2 loads plugins from every entry point and, with eager provider discovery, the providers' lists."""
    from airflow import plugins_manager, settings

    previous = settings.LAZY_LOAD_PROVIDERS
    settings.LAZY_LOAD_PROVIDERS = False  # the eager path reads the provider metadata's plugins too
    try:
        plugins_manager.plugins = None
        plugins_manager.ensure_plugins_loaded()
    finally:
        settings.LAZY_LOAD_PROVIDERS = previous
    assert plugins_manager.import_errors == {}
    assert "sora2" not in [plugin.name for plugin in plugins_manager.plugins or []]


def test_importing_the_plugin_module_loads_no_web_app():
    """Every process that loads plugins imports the module: it must not pull in FastAPI or the routes."""
    code = (
        "import json, sys; import airflow.providers.common.compat.sdk as sdk, sora2_provider; "
        "sdk.AirflowPlugin, sdk.BaseHook, sdk.BaseOperatorLink; before = set(sys.modules); "
        "import sora2_provider.plugins.sora2; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    added = json.loads(out.strip().splitlines()[-1])
    assert [m for m in added if m.split(".")[0] in ("fastapi", "starlette")] == []
    ours = [m for m in added if m.startswith("sora2_provider.")]
    assert ours == [f"sora2_provider.{m}" for m in ("compat", "links", "plugins", "plugins.sora2")]


@needs_plugin_apps
def test_the_app_builds_with_its_routes():
    """What the api-server does on the first request (imports every Airflow name the routes use)."""
    from sora2_provider.plugins.app import build_app

    paths = {route.path for route in build_app().routes}
    assert {"/", "/video", "/video/bytes", "/icon.svg"} <= paths


@pytest.mark.parametrize(
    ("map_index", "expected"), [(None, -1), ("", -1), ("{MAP_INDEX}", -1), ("-1", -1), ("0", 0), (" 3 ", 3)]
)
def test_identity_reads_the_map_index_the_ui_sends(map_index, expected):
    assert Identity.parse("d", "r", "t", map_index).map_index == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None, "r", "t", None), "missing dag_id"),
        (("d", "", None, None), "missing run_id, task_id"),
        (("d", "r", "t", "x"), "map_index 'x' is not an integer"),
        (("d", "r", "t", "-2"), "map_index -2 is not -1"),
    ],
)
def test_a_malformed_identity_is_a_400(args, message):
    with pytest.raises(BadIdentity) as caught:
        Identity.parse(*args)
    assert caught.value.status == 400 and message in caught.value.message


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-", (0, 1000)),
        ("bytes=100-199", (100, 200)),
        ("bytes=900-5000", (900, 1000)),
        ("bytes=-10", (990, 1000)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole object (RFC 9110 allows ignoring them)
        ("bytes=abc-", None),
        ("bytes=20-10", None),
        ("items=0-5", None),
    ],
)
def test_byte_range(header, expected):
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0"])
def test_a_range_past_the_end_is_not_satisfiable(header):
    with pytest.raises(RangeNotSatisfiable):
        byte_range(header, 1000)


def generation(state="success", result=None, rendered=None, **fields) -> Generation:
    made = Generation(Identity("d", "r", "t"), state, NOW - timedelta(minutes=5), None, 1, **fields)
    made.result = result
    made.rendered = rendered or {}
    return made


def test_the_xcom_uri_must_be_the_rendered_output_path():
    uri = "s3://aws_default@bucket/videos/a.mp4"
    assert verified_uri(generation(result={"uri": uri}, rendered={"output_path": uri})) == uri
    assert same_location("file:///data/a.mp4", "/data/a.mp4")
    with pytest.raises(BadIdentity) as tampered:
        verified_uri(generation(result={"uri": "s3://aws_default@other/secret.mp4"}, rendered={"output_path": uri}))
    assert tampered.value.status == 400
    with pytest.raises(BadIdentity) as forgotten:
        verified_uri(generation(result={"uri": uri}))
    assert forgotten.value.status == 400 and "max_num_rendered_ti_fields_per_task" in forgotten.value.message
    with pytest.raises(BadIdentity) as none:
        verified_uri(generation(state="running"))
    assert none.value.status == 404


def test_the_status_line_says_why_there_is_no_video():
    assert generation(result={"uri": "file:///a.mp4"}).status_line(NOW) is None
    failed = generation("failed", error="POST /v2/sora-2: not enough credits")
    assert failed.status_line(NOW) == "failed: POST /v2/sora-2: not enough credits"
    record = {"request_id": "req-1", "submitted_at": (NOW - timedelta(minutes=3)).isoformat()}
    rendering = generation("deferred", job_record=record).status_line(NOW)
    assert rendering == "still rendering, submitted 3 min ago (request req-1)"
    assert generation("running").status_line(NOW) == "still rendering, started 5 min ago"
    assert "a retry is scheduled" in (generation("up_for_retry", error="x").status_line(NOW) or "")
    assert generation("queued").status_line(NOW) == "not started yet (state: queued)"
    assert generation("upstream_failed").status_line(NOW) == "no video: the task was upstream failed"


def test_a_store_that_fails_answers_502_naming_only_the_error_type(monkeypatch, tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    from sora2_provider.plugins.media import open_stored

    with pytest.raises(BadIdentity) as missing:
        open_stored(f"file://{tmp_path}/nothing.mp4")
    assert missing.value.status == 404

    def refuse(self, path):
        raise PermissionError("secret-bearing text from the store")

    monkeypatch.setattr(LocalFileSystem, "size", refuse)
    with pytest.raises(BadIdentity) as refused:
        open_stored(f"file://{tmp_path}/video.mp4")
    assert refused.value.status == 502 and "PermissionError" in refused.value.message
    assert "secret-bearing" not in refused.value.message
