"""The Airflow UI, checked in headless Chromium: the ``sora2`` connection form and its Test button, the Providers
page, and the operator's extra links on the task instance page. Each step leaves a screenshot in ``docs/img/``.

Waits are Playwright's own (auto-waiting locators and ``expect`` with a deadline), never fixed sleeps.
The API key is typed into the masked field only; before each screenshot the page text is checked not to show it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import boto3
import pytest
from playwright.sync_api import Page, Response, Route, expect

from sora2_provider.get_provider_info import get_provider_info
from sora2_provider.links import browser_url
from tests.support import TEST_API_KEY, TEST_BALANCE
from tests.ui.conftest import SCREENSHOTS, UiAirflow

pytestmark = [pytest.mark.ui, pytest.mark.timeout(300)]

GOOD_CONN = "sora2_ui"
BAD_CONN = "sora2_ui_bad_key"
BAD_KEY = "SG_not_a_key_segmind_knows"
#: Airflow 3.3.1/3.3.2: the Connections list's Test button sends ``port: 0`` for a connection without a port
#: (``Number(null)``), and the API refuses that as "another destination" (apache/airflow#73298, fixed after 3.3.2).
PORTLESS_TEST_REFUSAL = "The host or port to test differs from the stored connection"


# -- helpers ------------------------------------------------------------------------------------


def assert_key_not_shown(page: Page) -> None:
    """The API key is neither in the page's text nor in any field that is not a masked password input."""
    assert TEST_API_KEY not in page.locator("body").inner_text(), "the API key is visible in the page text"
    exposed = page.evaluate(
        """key => Array.from(document.querySelectorAll('input, textarea'))
            .filter(e => e.type !== 'password' && (e.value || '').includes(key))
            .map(e => e.name || e.id)""",
        TEST_API_KEY,
    )
    assert not exposed, f"the API key is in unmasked fields: {exposed}"


def screenshot(page: Page, name: str) -> Path:
    assert_key_not_shown(page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    return path


def open_admin_page(page: Page, airflow: UiAirflow, item: str) -> None:
    """Admin menu -> ``item``, the way a user gets there."""
    page.goto(f"{airflow.url}/")
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name=item, exact=True).click()


def open_connections(page: Page, airflow: UiAirflow) -> None:
    open_admin_page(page, airflow, "Connections")
    expect(page.get_by_role("button", name="Add Connection")).to_be_visible()


def connection_row(page: Page, conn_id: str) -> Any:
    return page.get_by_role("row").filter(has=page.get_by_role("cell", name=conn_id, exact=True))


def choose_sora2_type(page: Page, dialog: Any) -> None:
    """Open the Connection Type list, check 'Segmind Sora 2' is offered among all types, and pick it."""
    dialog.get_by_role("combobox", name="Connection Type").click()
    option = page.get_by_role("option", name="Segmind Sora 2", exact=True)
    expect(option).to_be_visible()
    option.click()
    expect(dialog.get_by_label("API key")).to_be_visible()


def save_connection(page: Page, dialog: Any, conn_id: str) -> None:
    dialog.get_by_role("button", name="Save").click()
    expect(dialog).to_be_hidden()
    expect(connection_row(page, conn_id)).to_be_visible()


def add_connection(page: Page, conn_id: str, host: str, api_key: str) -> None:
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Connection ID").fill(conn_id)
    choose_sora2_type(page, dialog)
    dialog.get_by_label("Base URL").fill(host)
    dialog.get_by_label("API key").fill(api_key)
    save_connection(page, dialog, conn_id)


def click_test(page: Page, conn_id: str) -> Response:
    """Press the row's Test Connection button; return the API's answer to the test request it sends."""
    with page.expect_response(
        lambda r: r.request.method == "POST" and urlsplit(r.url).path == "/api/v2/connections/test"
    ) as answer:
        connection_row(page, conn_id).get_by_role("button", name="Test Connection").click()
    return answer.value


def toast(page: Page, title: str) -> Any:
    return page.get_by_role("status").filter(has_text=title)


def send_blank_port(route: Route) -> None:
    """Apply apache/airflow#73298 on the wire: a portless connection's test request says ``port: null``, not 0."""
    body = route.request.post_data_json
    if isinstance(body, dict) and body.get("port") == 0:
        body["port"] = None
    route.continue_(post_data=json.dumps(body))


def is_portless_refusal(response: Response) -> bool:
    if response.status != 400 or PORTLESS_TEST_REFUSAL not in response.text():
        return False
    body = response.request.post_data_json
    return isinstance(body, dict) and body.get("port") == 0


# -- 1. the connection form, saving, the hook and the Test button -------------------------------------


def test_connection_form_save_and_test_button(page: Page, ui_airflow: UiAirflow, ui_emulator: Any) -> None:
    open_connections(page, ui_airflow)
    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading", name="Add Connection")).to_be_visible()
    choose_sora2_type(page, dialog)

    # The form of the sora2 type: relabelled host and password, the placeholder, a masked key, no login/schema/port.
    base_url = dialog.get_by_label("Base URL", exact=True)
    expect(base_url).to_have_attribute("placeholder", "https://api.segmind.com")
    expect(base_url).to_have_attribute("type", "text")
    api_key = dialog.get_by_label("API key", exact=True)
    expect(api_key).to_have_attribute("type", "password")
    for hidden in ("login", "schema", "port"):
        expect(dialog.locator(f"input[name='{hidden}']")).to_have_count(0)
    for label in ("Login", "Schema", "Port", "Host", "Password"):
        expect(dialog.get_by_label(label, exact=True)).to_have_count(0)

    dialog.get_by_label("Connection ID").fill(GOOD_CONN)
    dialog.get_by_label("Description").fill("Segmind Sora 2 (local emulator)")
    base_url.fill(ui_emulator.url)
    api_key.fill(TEST_API_KEY)
    expect(api_key).to_have_attribute("type", "password")  # still masked once typed into
    screenshot(page, "connection-form.png")
    save_connection(page, dialog, GOOD_CONN)
    expect(connection_row(page, GOOD_CONN)).to_contain_text(ui_emulator.url)

    with ThreadPoolExecutor(max_workers=1) as pool:
        # Sora2Hook reads the saved connection from the metadata DB (a separate process, run while the browser goes on).
        credits = pool.submit(ui_airflow.hook_credits, GOOD_CONN)
        add_connection(page, BAD_CONN, ui_emulator.url, BAD_KEY)

        page.reload()
        response = click_test(page, GOOD_CONN)
        if is_portless_refusal(response):
            # What a user of Airflow 3.3.1/3.3.2 sees: the upstream bug, before the provider's code is reached.
            expect(toast(page, "Test Connection Failed")).to_contain_text("Bad Request")
            page.route("**/api/v2/connections/test", send_blank_port)
            page.reload()
            response = click_test(page, GOOD_CONN)
        assert response.status == 200, response.text()
        result = response.json()
        expected = f"Connected to {ui_emulator.url}: {TEST_BALANCE:g} credits, 0 free credits"
        assert result == {"status": True, "message": expected}, result
        passed = toast(page, "Test Connection Successful")
        expect(passed).to_be_visible()
        passed.hover()  # a hovered toast stays until the screenshot is taken
        expect(passed).to_contain_text(result["message"])
        screenshot(page, "connection-test-ok.png")

        page.reload()
        response = click_test(page, BAD_CONN)
        assert response.status == 200, response.text()
        result = response.json()
        assert result["status"] is False, result
        assert "the API key is missing or invalid" in result["message"], result
        assert "HTTP 401" in result["message"], result
        failed = toast(page, "Test Connection Failed")
        expect(failed).to_be_visible()
        failed.hover()
        expect(failed).to_contain_text(result["message"])
        screenshot(page, "connection-test-bad-key.png")
        page.unroute("**/api/v2/connections/test")

        assert credits.result() == {"credits": TEST_BALANCE, "free_credits": 0.0}


# -- 2. the Providers page -------------------------------------------------------------------------


def test_providers_page_lists_the_provider(page: Page, ui_airflow: UiAirflow) -> None:
    info = get_provider_info()
    open_admin_page(page, ui_airflow, "Providers")
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=info["package-name"], exact=True))
    expect(row).to_be_visible()
    expect(row).to_contain_text(version(info["package-name"]))
    # Airflow shows the description without its final full stop (and without RST markup).
    expect(row).to_contain_text(info["description"].strip(" \n."))
    screenshot(page, "providers.png")


# -- 3. the extra links of a generation run ------------------------------------------------------------


def open_task_instance_details(page: Page, airflow: UiAirflow) -> Any:
    run = airflow.generation_run()
    page.goto(f"{airflow.url}/dags/{run.dag_id}/runs/{quote(run.run_id, safe='')}/tasks/{run.task_id}")
    expect(page.get_by_role("heading", name=run.task_id, exact=True)).to_be_visible()
    page.get_by_role("link", name="Details", exact=True).click()
    expect(page.get_by_text("Extra Links", exact=True)).to_be_visible()
    return run


def test_generation_run_stores_the_video_and_its_links(page: Page, ui_airflow: UiAirflow, s3_server: str) -> None:
    run = ui_airflow.generation_run()
    assert run.stored_uri == ui_airflow.output_uri
    bucket, key = urlsplit(run.stored_uri).hostname, urlsplit(run.stored_uri).path.lstrip("/")
    head = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").get_object(Bucket=bucket, Key=key)
    assert head["Body"].read(8)[4:8] == b"ftyp", f"{run.stored_uri} is not an MP4"
    links = ui_airflow.api("GET", f"/dags/{run.dag_id}/dagRuns/{run.run_id}/taskInstances/{run.task_id}/links")
    assert links["extra_links"] == {"Stored video": browser_url(run.stored_uri), "Segmind output": run.output_url}


def test_task_instance_page_links_the_stored_video(page: Page, ui_airflow: UiAirflow) -> None:
    run = open_task_instance_details(page, ui_airflow)
    expect(page.get_by_role("link", name="Segmind output", exact=True)).to_have_attribute("href", run.output_url)
    stored = page.get_by_role("link", name="Stored video", exact=True)
    expect(stored).to_have_attribute("href", browser_url(run.stored_uri))
    screenshot(page, "extra-link.png")
