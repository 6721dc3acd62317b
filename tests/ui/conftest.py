"""A real Airflow UI in a real browser: ``airflow api-server`` on 127.0.0.1 and Debian's Chromium driven by Playwright.

One Airflow per test module, in an ``AIRFLOW_HOME`` of its own under the session's one (so the session's API-key
scan covers its logs), with the simple auth manager and one known user, and ``[core] test_connection`` enabled.
No scheduler is needed: the generation run that gives the task instance page its extra links is an
``airflow dags test`` run against the same metadata DB (started in the background while the server boots),
writing the MP4 to a ``file://`` path; the connection tests need only the api-server, which runs
``Sora2Hook.test_connection``.

The plugin's tests (``plugin_airflow``) get an api-server of their own with the FAB auth manager (per-DAG roles: the
``ui`` extra), its users and roles made before it starts, and four generations run by ``dag.test()`` in one
background process (tests/ui/generations.py), whose emulator serves MP4s of a real video's weight.

Chromium: Debian's ``/usr/bin/chromium`` (``make test-ui`` installs it with apt), never a browser downloaded by
Playwright. The api-server and the run are started and stopped by PID through ``tests.airflow_cluster`` (shared with
tests/e2e and tests/cluster), which checks at teardown that nothing they started is left.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.airflow_cluster import AirflowCluster, run_cluster
from tests.support import TEST_API_KEY, TEST_BALANCE, connection_json
from tests.ui import generations

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "img"
BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("SORA2_UI_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
VIEWPORT = {"width": 1400, "height": 900}
USERNAME = "admin"
PASSWORD = "admin-pass"
#: The DAG whose run gives the task instance page its extra links.
DAG_ID = "sora2_ui_extra_links"
TASK_ID = "generate_video"
#: The generation run pays from an account of its own, so the balance the UI's connections see stays TEST_BALANCE.
RUN_API_KEY = "SG_ui_generation_run_0001"
#: 180 s of rendering -> 0.9 s.
TIME_SCALE = 0.005
SERVER_DEADLINE = 240  # seconds for the api-server to answer healthy (about 20 s idle, over a minute on a busy machine)
RUN_DEADLINE = 180  # seconds for the background ``airflow dags test`` run

DAG_SOURCE = '''
"""One short Sora 2 video, stored in S3: its task instance shows the operator's extra links."""

import pendulum
from airflow.sdk import DAG

from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

with DAG(
    dag_id="{dag_id}",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    tags=["sora2"],
):
    Sora2GenerateVideoOperator(
        task_id="{task_id}",
        prompt="A paper boat drifting across a rain puddle, macro shot",
        output_path="{output_uri}",
        duration=4,
        poll_interval=0.2,
    )
'''


@dataclass
class GenerationRun:
    """The finished ``airflow dags test`` run: its run id, the stored video's URI and Segmind's output URL."""

    dag_id: str
    task_id: str
    run_id: str
    stored_uri: str
    output_url: str
    xcom: dict[str, Any]


@dataclass
class UiAirflow(AirflowCluster):
    """The running api-server (``tests.airflow_cluster``, signed in as the known user) and the generation run."""

    output_uri: str = ""
    _run: GenerationRun | None = None

    @property
    def url(self) -> str:
        return self.api_url

    def hook_credits(self, conn_id: str) -> dict[str, float]:
        """``Sora2Hook(conn_id).get_credits()`` in a separate process that reads connections from this metadata DB."""
        code = (
            "import json; from sora2_provider.hooks.sora2 import Sora2Hook; "
            f"print(json.dumps(Sora2Hook({conn_id!r}, max_retries=0).get_credits()))"
        )
        # "server" context: the SDK looks connections up in the metadata DB, as the api-server does.
        env = {**self.env, "_AIRFLOW_PROCESS_CONTEXT": "server"}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"Sora2Hook({conn_id!r}).get_credits() failed:\n{proc.stderr[-3000:]}"
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # -- the generation run ---------------------------------------------------------------------

    def generation_run(self) -> GenerationRun:
        """Wait for the background ``airflow dags test`` run, then read what it stored through the REST API."""
        if self._run is None:
            proc = self.processes.started["dags-test"].popen
            try:
                proc.wait(timeout=RUN_DEADLINE)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"airflow dags test still running:\n{self.log_tail('dags-test')}") from None
            assert proc.returncode == 0, f"airflow dags test failed:\n{self.log_tail('dags-test', 60)}"
            leaks = [p for p in self.home.rglob("*.log") if RUN_API_KEY in p.read_text(errors="ignore")]
            assert not leaks, f"the generation run's API key leaked into {leaks}"
            runs = self.api("GET", f"/dags/{DAG_ID}/dagRuns")["dag_runs"]
            assert len(runs) == 1 and runs[0]["state"] == "success", runs
            run_id = runs[0]["dag_run_id"]
            path = f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{TASK_ID}/xcomEntries/return_value"
            xcom = self.api("GET", path, params={"deserialize": True, "stringify": False})["value"]
            self._run = GenerationRun(DAG_ID, TASK_ID, run_id, xcom["uri"], xcom["source_url"], xcom)
        return self._run


@pytest.fixture(scope="module")
def ui_emulator() -> Iterator[Any]:
    """The Segmind emulator the UI's connections (TEST_API_KEY) and the generation run (RUN_API_KEY) talk to."""
    from sora2_provider.testing.emulator import Sora2Emulator

    keys: dict[str, float | None] = {TEST_API_KEY: TEST_BALANCE, RUN_API_KEY: TEST_BALANCE}
    with Sora2Emulator(time_scale=TIME_SCALE, api_keys=keys) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def ui_airflow(ui_emulator: Any, s3_server: str) -> Iterator[UiAirflow]:
    """``airflow api-server`` on a free loopback port with a migrated SQLite DB, plus the generation run."""
    home = Path(os.environ["AIRFLOW_HOME"]) / "ui"  # inside the session's home: its key-leak scan covers our logs
    output_uri = f"s3://aws_default@sora2-test/ui/{DAG_ID}.mp4"
    passwords = home / "simple_auth_manager_passwords.json"
    settings = dict(
        AIRFLOW__CORE__TEST_CONNECTION="Enabled",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USERNAME}:admin",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="False",
        # Compiled bytecode goes to a cache outside the repository and the venv (whose installer wrote none), so
        # the api-server, the generation run and the hook check do not each recompile Airflow from source.
        PYTHONPYCACHEPREFIX=os.environ.get("SORA2_UI_PYCACHE", str(Path.home() / ".cache" / "sora2-ui-pycache")),
        PYTHONDONTWRITEBYTECODE=None,
    )

    def start_generation_run(airflow: UiAirflow) -> None:
        """The generation run needs no server: it runs the task in-process against the same DB (dag.test()),
        with its own environment-variable connection, while the api-server boots."""
        airflow.output_uri = output_uri
        aws = {
            "conn_type": "aws",
            "login": "testing",
            "password": "testing",
            "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"},
        }
        run_env = {
            **airflow.env,
            "AIRFLOW_CONN_SORA2_DEFAULT": connection_json(ui_emulator.url, api_key=RUN_API_KEY),
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        }
        argv = [str(BIN / "airflow"), "dags", "test", DAG_ID]
        airflow.processes.start("dags-test", argv, run_env, service=False)

    with run_cluster(
        home,
        executor="LocalExecutor",
        components=("api-server",),
        settings=settings,
        dag_files={f"{DAG_ID}.py": DAG_SOURCE.format(dag_id=DAG_ID, task_id=TASK_ID, output_uri=output_uri)},
        home_files={passwords.name: json.dumps({USERNAME: PASSWORD})},
        credentials=(USERNAME, PASSWORD),
        on_started=start_generation_run,
        ready_timeout=SERVER_DEADLINE,
        cls=UiAirflow,
    ) as airflow:
        yield airflow


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    """Headless Debian Chromium with a fresh profile, driven by Playwright (sync API)."""
    from playwright.sync_api import expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make test-ui`, which installs Debian's chromium package")
    profile = Path(tempfile.mkdtemp(prefix="sora2-ui-chromium-"))
    expect.set_options(timeout=30_000)
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(profile),
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport=VIEWPORT,  # type: ignore[arg-type]
            )
            context.set_default_timeout(30_000)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(browser_context: Any, ui_airflow: UiAirflow) -> Any:
    """One browser tab, signed in as the known user through the simple auth manager's login form."""
    from playwright.sync_api import expect

    tab = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    tab.goto(f"{ui_airflow.url}/")
    expect(tab.get_by_role("heading", name="Sign into Airflow")).to_be_visible()
    tab.get_by_label("Username").fill(USERNAME)
    tab.get_by_label("Password").fill(PASSWORD)
    tab.get_by_role("button", name="Sign in").click()
    expect(tab.get_by_role("button", name="Admin")).to_be_visible()
    return tab


# ---------------------------------------------------------------------------------------------- the Sora 2 plugin

#: The plugin suite's accounts and store secret: none of them may appear in any page, answer or log.
PLUGIN_API_KEY = "SG_ui_plugin_account_0002"
BROKE_API_KEY = "SG_ui_plugin_broke_0003"
AWS_KEY_ID = "AKIASORA2UIPLUGIN"
AWS_SECRET = "sora2-ui-plugin-aws-secret-5f1e"
PLUGIN_SECRETS = (PLUGIN_API_KEY, BROKE_API_KEY, AWS_SECRET)


@dataclass
class PluginAirflow(AirflowCluster):
    """The api-server with the FAB auth manager (``tests.airflow_cluster``) and the plugin's fixture generations."""

    videos_root: str = ""
    _runs: dict[str, str] | None = None

    @property
    def url(self) -> str:
        return self.api_url

    def runs(self) -> dict[str, str]:
        """``dag_id -> run_id`` of the fixture runs, once the background ``dag.test()`` process has finished."""
        if self._runs is None:
            proc = self.processes.started["generations"].popen
            try:
                proc.wait(timeout=RUN_DEADLINE)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the generations are still running:\n{self.log_tail('generations')}") from None
            log = (self.log_dir / "generations.log").read_text(errors="replace")
            assert proc.returncode == 0, f"the generation runs failed:\n{self.log_tail('generations', 80)}"
            finished = {line.split()[1]: line.split()[2:] for line in log.splitlines() if line.startswith("RUN ")}
            expected = {g.dag_id: "failed" if g.cost == 0 else "success" for g in generations.GENERATIONS}
            assert {dag: run[1] for dag, run in finished.items()} == expected, log[-3000:]
            self._runs = {dag: run[0] for dag, run in finished.items()}
        return self._runs

    def token(self, user: tuple[str, str]) -> str:
        """A JWT for ``user`` from the FAB auth manager's token route."""
        answer = requests.post(f"{self.url}/auth/token", json={"username": user[0], "password": user[1]}, timeout=30)
        answer.raise_for_status()
        return answer.json()["access_token"]


@pytest.fixture(scope="module")
def plugin_emulator() -> Iterator[Any]:
    """The Segmind emulator of the plugin suite: a funded account and one without credits."""
    from sora2_provider.testing.emulator import Sora2Emulator

    keys: dict[str, float | None] = {PLUGIN_API_KEY: TEST_BALANCE, BROKE_API_KEY: 0.0}
    # MP4s of a real video's weight (megabytes): a player must fetch ranges as it seeks.
    with Sora2Emulator(time_scale=TIME_SCALE, api_keys=keys, noise_video=True) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def plugin_airflow(plugin_emulator: Any, s3_server: str) -> Iterator[PluginAirflow]:
    """``airflow api-server`` with the FAB auth manager, its users and roles, and the fixture generations (run by
    ``dag.test()`` in one background process while the api-server boots)."""
    home = Path(os.environ["AIRFLOW_HOME"]) / "ui-plugin"
    root = str(home / "files")
    aws = {
        "conn_type": "aws",
        "login": AWS_KEY_ID,
        "password": AWS_SECRET,
        "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"},
    }
    settings = dict(
        AIRFLOW__CORE__AUTH_MANAGER=generations.FAB_AUTH_MANAGER,
        AIRFLOW_CONN_SORA2_DEFAULT=connection_json(plugin_emulator.url, api_key=PLUGIN_API_KEY),
        AIRFLOW_CONN_SORA2_BROKE=connection_json(plugin_emulator.url, api_key=BROKE_API_KEY),
        AIRFLOW_CONN_AWS_DEFAULT=json.dumps(aws),
        PYTHONPYCACHEPREFIX=os.environ.get("SORA2_UI_PYCACHE", str(Path.home() / ".cache" / "sora2-ui-pycache")),
        PYTHONDONTWRITEBYTECODE=None,
    )

    def prepare(airflow: PluginAirflow) -> None:
        """Users and roles first (FAB's security manager must not race the api-server's own role sync), then the
        generation runs in the background."""
        airflow.videos_root = root
        setup = [sys.executable, "-c", generations.FAB_SETUP, generations.fab_spec()]
        proc = subprocess.run(setup, env=airflow.env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"FAB users:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        dag_ids = [g.dag_id for g in generations.GENERATIONS]
        argv = [sys.executable, "-c", generations.RUN_DAGS, str(airflow.dags), *dag_ids]
        # tests.support from this checkout; only here: the api-server would also see the checkout's egg-info and load
        # the plugin twice.
        env = {**airflow.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        airflow.processes.start("generations", argv, env, service=False)

    with run_cluster(
        home,
        executor="LocalExecutor",
        components=("api-server",),
        settings=settings,
        dag_files={f"{g.dag_id}.py": generations.dag_source(g, root) for g in generations.GENERATIONS},
        credentials=generations.ADMIN,
        before_start=prepare,
        ready_timeout=SERVER_DEADLINE,
        cls=PluginAirflow,
    ) as airflow:
        yield airflow
        leaks = [p for p in home.rglob("*") if p.is_file() and p.suffix != ".db" and _holds_secret(p)]
        assert not leaks, f"a key or store secret of the plugin suite leaked into {leaks}"


@pytest.fixture(scope="module")
def plugin_page(browser_context: Any, plugin_airflow: PluginAirflow) -> Any:
    """One browser tab, signed in as the admin through the FAB auth manager's login form."""
    from playwright.sync_api import expect

    tab = browser_context.pages[0] if browser_context.pages else browser_context.new_page()
    tab.goto(f"{plugin_airflow.url}/")
    tab.locator("#username").fill(generations.ADMIN[0])
    tab.locator("#password").fill(generations.ADMIN[1])
    tab.locator("input[type=submit]").click()
    expect(tab.get_by_role("link", name="Sora 2", exact=True)).to_be_visible()  # the plugin's navigation entry
    return tab


def _holds_secret(path: Path) -> bool:
    text = path.read_text(errors="ignore")
    return any(secret in text for secret in PLUGIN_SECRETS)
