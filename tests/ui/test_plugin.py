"""The provider's Airflow plugin in a real api-server and a real browser: the Video tab, the Sora 2 page, the bytes
route and who may see what (FAB auth manager, per-DAG roles).

The fixture (tests/ui/conftest.py ``plugin_airflow``, DAGs in tests/ui/generations.py) ran four generations: one
into S3 (moto), two mapped into ``file://``, and one refused by Segmind. Waits are Playwright's own or
``tests.support.wait_for``; every page and answer is checked not to show an API key or the store's secret.
"""

from __future__ import annotations

import datetime
import hashlib
import html
import re
from typing import Any
from urllib.parse import quote, unquote

import pytest
import requests
from playwright.sync_api import Frame, Page, expect

from tests.support import TEST_BALANCE, cli_json
from tests.ui import generations
from tests.ui.conftest import PLUGIN_SECRETS, SCREENSHOTS, PluginAirflow
from tests.ui.generations import FILE, OTHER_TASK_ID, REFUSED, S3, TASK_ID, Generation

pytestmark = [pytest.mark.ui, pytest.mark.timeout(300)]

PLAYER_STATE = """() => { const v = document.querySelector('video'); const b = [];
  for (let i = 0; i < v.buffered.length; i++) b.push([v.buffered.start(i), v.buffered.end(i)]);
  return {readyState: v.readyState, duration: v.duration, currentTime: v.currentTime, buffered: b}; }"""
VIDEO_TAB = re.compile(r"/sora2/video\?")
SORA2_PAGE = re.compile(r"/sora2/(\?.*)?$")
#: What the Video tab shows, by XCom key.
FACTS = ("prompt", "model", "duration", "size", "cost", "request_id", "decision", "sha256", "uri", "bytes")
SEEK = """(to) => new Promise(done => { const v = document.querySelector('video');
  v.addEventListener('seeked', () => done(v.currentTime), {once: true}); v.currentTime = to; })"""


# -- helpers ------------------------------------------------------------------------------------


def identity(airflow: PluginAirflow, generation: Generation, map_index: int = -1) -> dict[str, str]:
    return {
        "dag_id": generation.dag_id,
        "run_id": airflow.runs()[generation.dag_id],
        "task_id": TASK_ID,
        "map_index": str(map_index),
    }


def xcom_entry(airflow: PluginAirflow, generation: Generation, map_index: int = -1, key: str = "return_value") -> Any:
    """The XCom entry (value and timestamp) as the REST API gives it."""
    run_id = airflow.runs()[generation.dag_id]
    path = f"/dags/{generation.dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{TASK_ID}/xcomEntries/{key}"
    params = {"map_index": map_index, "deserialize": True, "stringify": False}
    return airflow.api("GET", path, params=params)


def xcom(airflow: PluginAirflow, generation: Generation, map_index: int = -1, key: str = "return_value") -> Any:
    return xcom_entry(airflow, generation, map_index, key)["value"]


def get(airflow: PluginAirflow, path: str, user: tuple[str, str] | None, **kwargs: Any) -> requests.Response:
    """A plugin route as ``user`` (a bearer token), or anonymous; fails if the answer shows any secret."""
    headers = dict(kwargs.pop("headers", {}))
    if user is not None:
        headers["Authorization"] = f"Bearer {airflow.token(user)}"
    answer = requests.get(f"{airflow.url}/sora2{path}", headers=headers, timeout=60, **kwargs)
    assert_no_secret(answer.content + str(answer.headers).encode())
    return answer


def assert_no_secret(data: bytes) -> None:
    shown = [secret for secret in PLUGIN_SECRETS if secret.encode() in data]
    assert not shown, "an API key or the store secret is shown"


def ui_task_path(airflow: PluginAirflow, generation: Generation, map_index: int = -1) -> str:
    run_id = quote(airflow.runs()[generation.dag_id], safe="")
    mapped = f"/mapped/{map_index}" if map_index >= 0 else ""
    return f"/dags/{generation.dag_id}/runs/{run_id}/tasks/{TASK_ID}{mapped}"


def plugin_frame(page: Page, title: str, address: re.Pattern[str]) -> Frame:
    """The iframe the UI shows the plugin view ``title`` in, once it holds the plugin's page at ``address``."""
    frame = page.locator(f"iframe[title='{title}']").element_handle().content_frame()
    assert frame is not None
    frame.wait_for_url(address)
    frame.wait_for_load_state()
    return frame


def screenshot(page: Page, name: str) -> None:
    assert_no_secret((page.content() + "".join(frame.content() for frame in page.frames[1:])).encode())
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name))


# -- 1. registration -------------------------------------------------------------------------------


def test_airflow_lists_the_plugin(plugin_airflow: PluginAirflow) -> None:
    """``airflow plugins`` and the REST API list it, with both views and the app, and no plugin import error."""
    listed = {plugin["name"]: plugin for plugin in cli_json(plugin_airflow.cli("plugins", "-o", "json"))}
    assert "sora2" in listed, sorted(listed)
    plugin = listed["sora2"]
    views = {view["url_route"]: view for view in plugin["external_views"]}
    assert views["sora2-video"]["destination"] == "task_instance" and views["sora2-video"]["name"] == "Video"
    assert views["sora2"]["destination"] == "nav" and views["sora2"]["name"] == "Sora 2"
    assert [app["url_prefix"] for app in plugin["fastapi_apps"]] == ["/sora2"]
    assert "airflow-provider-sora2" in plugin["source"]
    served = {p["name"] for p in plugin_airflow.api("GET", "/plugins")["plugins"]}
    assert "sora2" in served
    assert plugin_airflow.api("GET", "/plugins/importErrors")["total_entries"] == 0


# -- 2. the Video tab --------------------------------------------------------------------------------


@pytest.mark.parametrize(("generation", "map_index"), [(S3, -1), (FILE, 0)], ids=["s3", "file"])
def test_video_tab_plays_seeks_and_shows_the_xcom(
    plugin_page: Page, plugin_airflow: PluginAirflow, generation: Generation, map_index: int
) -> None:
    page = plugin_page
    fetches: list[Any] = []  # the player's requests for the MP4, in the order it made them

    def on_request(request: Any) -> None:
        if "/sora2/video/bytes" in request.url:
            fetches.append(request)

    page.on("request", on_request)
    try:
        page.goto(plugin_airflow.url + ui_task_path(plugin_airflow, generation, map_index))
        page.get_by_role("link", name="Video", exact=True).click()  # the tab every task instance page now has
        tab = f"{plugin_airflow.url}{ui_task_path(plugin_airflow, generation, map_index)}/plugin/sora2-video"
        expect(page).to_have_url(unquote(tab))  # the UI's address holds the run id as it is
        frame = plugin_frame(page, "Video", VIDEO_TAB)
        frame.wait_for_function("() => document.querySelector('video')?.readyState >= 2")
        assert abs(frame.evaluate(PLAYER_STATE)["duration"] - generation.duration) <= 0.5
        # Once the player has its preload (NETWORK_IDLE), seek to a moment it has not fetched: it must ask for
        # that part of the file (the emulator's MP4s weigh megabytes, with a keyframe a second), and get a 206.
        frame.wait_for_function("() => document.querySelector('video').networkState === 1")
        player = frame.evaluate(PLAYER_STATE)
        target = generation.duration * 0.95
        assert all(not (start <= target <= end) for start, end in player["buffered"]), player
        before = len(fetches)
        assert abs(frame.evaluate(SEEK, target) - target) < 0.5
        frame.wait_for_function("() => document.querySelector('video').readyState >= 2")
        after_seek = fetches[before:]
    finally:
        page.remove_listener("request", on_request)
    seen = [(r.headers.get("range"), getattr(r.response(), "status", "aborted")) for r in fetches]
    assert after_seek, f"the seek fetched nothing; the player fetched {seen} (before: {player})"
    size = xcom(plugin_airflow, generation, map_index)["bytes"]
    answered = [(request.headers.get("range") or "", request.response()) for request in after_seek]
    answered = [(header, answer) for header, answer in answered if answer is not None]  # not aborted by the player
    assert answered, f"every request after the seek was aborted: {seen}"
    starts = []
    for header, answer in answered:
        assert header.startswith("bytes=") and answer.status == 206, (header, answer.status)
        starts.append(int(header.removeprefix("bytes=").split("-")[0]))
        assert answer.headers["content-range"] == f"bytes {starts[-1]}-{size - 1}/{size}"
    assert max(starts) > 0, starts

    # The facts are the task instance's XCom.
    result = xcom(plugin_airflow, generation, map_index)
    for key in FACTS:
        expect(frame.locator(f"dd[data-fact='{key}']")).to_have_attribute("data-value", str(result[key]))
    if generation is S3:
        screenshot(page, "video-tab.png")


def test_video_tab_says_why_a_generation_failed(plugin_page: Page, plugin_airflow: PluginAirflow) -> None:
    reason = xcom(plugin_airflow, REFUSED, key="sora2_error")
    assert "Insufficient credits" in reason, reason  # Segmind's own message
    plugin_page.goto(f"{plugin_airflow.url}{ui_task_path(plugin_airflow, REFUSED)}/plugin/sora2-video")
    frame = plugin_frame(plugin_page, "Video", VIDEO_TAB)
    status = frame.locator(".status")
    expect(status).to_have_text(f"failed: {reason}")
    expect(status).to_have_attribute("data-state", "failed")
    expect(frame.locator("video")).to_have_count(0)
    expect(frame.locator("dd[data-fact='prompt']")).to_have_text(REFUSED.prompts[0])


# -- 3. the Sora 2 page -------------------------------------------------------------------------------


def test_sora2_page_lists_every_generation_with_its_cost(
    plugin_page: Page, plugin_airflow: PluginAirflow, plugin_emulator: Any
) -> None:
    page = plugin_page
    page.goto(f"{plugin_airflow.url}/")
    page.get_by_role("link", name="Sora 2", exact=True).click()  # the navigation entry
    expect(page).to_have_url(re.compile(re.escape(f"{plugin_airflow.url}/plugin/sora2")))
    frame = plugin_frame(page, "Sora 2", SORA2_PAGE)
    cards = frame.locator("article.generation")
    expect(cards).to_have_count(4)

    # Newest first: the runs ran S3, then FILE (both map indexes), then REFUSED.
    shown = [(c.get_attribute("data-dag-id"), c.get_attribute("data-map-index")) for c in cards.all()]
    assert shown[0] == (REFUSED.dag_id, "-1") and shown[-1] == (S3.dag_id, "-1"), shown
    assert sorted(shown[1:3]) == [(FILE.dag_id, "0"), (FILE.dag_id, "1")], shown
    costs = {}
    for dag_id, map_index in shown:
        generation = next(g for g in generations.GENERATIONS if g.dag_id == dag_id)
        card = frame.locator(f"article[data-dag-id='{dag_id}'][data-map-index='{map_index}']")
        if generation is REFUSED:
            expect(card).to_have_attribute("data-state", "failed")
            expect(card).to_have_attribute("data-cost", "")
            continue
        cost = xcom(plugin_airflow, generation, int(map_index))["cost"]
        assert cost == pytest.approx(generation.cost)
        expect(card).to_have_attribute("data-cost", str(cost))
        expect(card).to_have_attribute("data-state", "success")
        expect(card.locator("video")).to_have_attribute("preload", "metadata")
        costs[(dag_id, map_index)] = cost
    # Each thumbnail shows its first frame, fetched by the browser (no server-side image).
    frame.wait_for_function(
        "() => [...document.querySelectorAll('article video')].every(v => v.readyState >= 2)", timeout=60_000
    )

    # The chart: 30 days, its total is the sum of the costs, and so is the sum of its bars, day by day.
    total = round(sum(costs.values()), 6)
    assert total == pytest.approx(generations.total_cost())
    expect(frame.locator("#spend-total")).to_have_attribute("data-total", f"{total:.6g}")
    bars = frame.locator("#spend-chart rect.bar")
    expect(bars).to_have_count(30)
    assert sum(float(bar.get_attribute("data-cost") or 0) for bar in bars.all()) == pytest.approx(total)
    per_day: dict[str, float] = {}
    for (dag_id, map_index), cost in costs.items():
        generation = next(g for g in generations.GENERATIONS if g.dag_id == dag_id)
        stored = xcom_entry(plugin_airflow, generation, int(map_index))["timestamp"]
        day = datetime.datetime.fromisoformat(stored.replace("Z", "+00:00")).astimezone(datetime.timezone.utc)
        per_day[day.date().isoformat()] = per_day.get(day.date().isoformat(), 0.0) + cost
    for day, cost in per_day.items():
        bar = frame.locator(f"#spend-chart rect[data-day='{day}']")
        assert float(bar.get_attribute("data-cost") or 0) == pytest.approx(cost)
    # The balance next to it: one credits call, and what the account has left is what the runs did not spend.
    assert float(frame.locator("#balance").get_attribute("data-credits") or 0) == pytest.approx(TEST_BALANCE - total)
    screenshot(page, "sora2-page.png")


def test_sora2_page_filters_narrow_the_list(plugin_page: Page, plugin_airflow: PluginAirflow) -> None:
    page = plugin_page
    page.goto(f"{plugin_airflow.url}/plugin/sora2")
    frame = plugin_frame(page, "Sora 2", SORA2_PAGE)
    cards = frame.locator("article.generation")
    expect(cards).to_have_count(4)

    filter_by(frame, dag_id=FILE.dag_id)
    expect(cards).to_have_count(2)
    assert {c.get_attribute("data-dag-id") for c in cards.all()} == {FILE.dag_id}

    filter_by(frame, dag_id="", model="sora-2")
    expect(cards).to_have_count(2)
    assert {c.get_attribute("data-dag-id") for c in cards.all()} == {S3.dag_id, REFUSED.dag_id}

    today = datetime.datetime.now(datetime.timezone.utc).date()
    filter_by(frame, model="", since=(today + datetime.timedelta(days=1)).isoformat())
    expect(cards).to_have_count(0)
    filter_by(frame, since=today.isoformat(), until=today.isoformat())
    expect(cards).to_have_count(4)
    filter_by(frame, dag_id=S3.dag_id, since=today.isoformat(), until=today.isoformat())
    expect(cards).to_have_count(1)


def filter_by(frame: Frame, **fields: str) -> None:
    """Set the page's filter fields (selects and dates, by name) and submit: the frame loads the filtered page."""
    for name, value in fields.items():
        field = frame.locator(f"[name={name}]")
        if field.evaluate("e => e.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
    with frame.expect_navigation():
        frame.get_by_role("button", name="Filter").click()


# -- 4. access ------------------------------------------------------------------------------------------


def test_anonymous_requests_are_refused(plugin_airflow: PluginAirflow) -> None:
    video = identity(plugin_airflow, S3)
    for path, params in (("/", {}), ("/video", video), ("/video/bytes", video), ("/icon.svg", {})):
        answer = get(plugin_airflow, path, None, params=params)
        assert answer.status_code == 401, (path, answer.status_code, answer.text[:300])
        assert S3.prompts[0] not in answer.text


def test_a_user_who_may_not_read_the_dag_gets_403_and_learns_nothing(plugin_airflow: PluginAirflow) -> None:
    reader = generations.S3_READER
    mine, theirs = identity(plugin_airflow, S3), identity(plugin_airflow, FILE, 0)
    assert get(plugin_airflow, "/video", reader, params=mine).status_code == 200
    assert get(plugin_airflow, "/video/bytes", reader, params=mine, headers={"Range": "bytes=0-99"}).status_code == 206
    hidden = [*FILE.prompts, str(xcom(plugin_airflow, FILE, 0)["uri"]), plugin_airflow.videos_root]
    for path in ("/video", "/video/bytes"):
        answer = get(plugin_airflow, path, reader, params=theirs)
        assert answer.status_code == 403, (path, answer.status_code)
        assert not [text for text in hidden if text in answer.text], answer.text
    # An unknown DAG answers the same: its absence is not revealed either.
    unknown = {**theirs, "dag_id": "no_such_dag"}
    assert get(plugin_airflow, "/video", reader, params=unknown).status_code == 403
    assert get(plugin_airflow, "/", reader, params={"dag_id": FILE.dag_id}).status_code == 403

    page = get(plugin_airflow, "/", reader)
    assert page.status_code == 200
    assert page.text.count('<article class="generation"') == 1 and f'data-dag-id="{S3.dag_id}"' in page.text
    assert f'data-total="{S3.cost:.6g}"' in page.text  # the chart counts the readable DAGs only
    assert "data-credits" not in page.text  # the balance needs read access to the connection


# -- 5. bad identities and ranges -----------------------------------------------------------------------


def test_bad_identities_answer_a_clear_404_or_400(plugin_airflow: PluginAirflow) -> None:
    admin = generations.ADMIN
    s3, file = identity(plugin_airflow, S3), identity(plugin_airflow, FILE, 0)
    cases = [
        ({**s3, "dag_id": "no_such_dag"}, 404, "no DAG 'no_such_dag'"),
        ({**s3, "run_id": "no_such_run"}, 404, f"DAG '{S3.dag_id}' has no run 'no_such_run'"),
        ({**s3, "task_id": "no_such_task"}, 404, "has no task 'no_such_task'"),
        ({**file, "map_index": "5"}, 404, "has no map index 5 (it has 0 to 1)"),
        ({**s3, "map_index": "0"}, 404, "is not mapped"),
        ({**s3, "map_index": "first"}, 400, "map_index 'first' is not an integer"),
        ({key: value for key, value in s3.items() if key != "run_id"}, 400, "missing run_id"),
        ({**s3, "task_id": OTHER_TASK_ID}, 400, f"task '{OTHER_TASK_ID}' runs EmptyOperator, not Sora2GenerateVid"),
    ]
    for params, status, message in cases:
        for path in ("/video", "/video/bytes"):
            answer = get(plugin_airflow, path, admin, params=params)
            text = html.unescape(answer.text)
            assert (answer.status_code, message in text) == (status, True), (params, text[-300:])
            assert len([line for line in text.splitlines() if message in line]) == 1


def test_bytes_route_honours_ranges(plugin_airflow: PluginAirflow) -> None:
    admin, s3 = generations.ADMIN, identity(plugin_airflow, S3)
    result = xcom(plugin_airflow, S3)
    whole = get(plugin_airflow, "/video/bytes", admin, params=s3)
    assert whole.status_code == 200 and len(whole.content) == result["bytes"]
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["content-type"] == "video/mp4"
    assert hashlib.sha256(whole.content).hexdigest() == result["sha256"]
    part = get(plugin_airflow, "/video/bytes", admin, params=s3, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{result['bytes']}"
    tail = get(plugin_airflow, "/video/bytes", admin, params=s3, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    past = get(plugin_airflow, "/video/bytes", admin, params=s3, headers={"Range": f"bytes={result['bytes']}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{result['bytes']}"


def test_an_xcom_uri_that_is_not_the_tasks_output_is_refused(plugin_airflow: PluginAirflow) -> None:
    """Someone with XCom write access points the refused task's XCom at another DAG's video: the api-server refuses
    to read it with the task's connection (400), because it is not the task's rendered ``output_path``."""
    admin = generations.ADMIN
    run_id = quote(plugin_airflow.runs()[REFUSED.dag_id], safe="")
    entries = f"/dags/{REFUSED.dag_id}/dagRuns/{run_id}/taskInstances/{TASK_ID}/xcomEntries"
    stolen = {"uri": xcom(plugin_airflow, S3)["uri"], "content_type": "video/mp4"}
    plugin_airflow.api("POST", entries, json={"key": "return_value", "value": stolen})
    try:
        answer = get(plugin_airflow, "/video/bytes", admin, params=identity(plugin_airflow, REFUSED))
        assert answer.status_code == 400, answer.text
        assert "not the task's rendered output_path" in answer.text
    finally:
        plugin_airflow.api("DELETE", f"{entries}/return_value")
