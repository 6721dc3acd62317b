"""One deferrable generation through a real scheduler and triggerer, on whichever Airflow line runs the tests.

What ``make test-matrix`` runs on every line (2.11 to 3.3). The components are those the line has: on Airflow 3 an
api-server (its Execution API is how tasks reach the DB), scheduler, dag-processor and triggerer with the
LocalExecutor; on Airflow 2 the webserver, scheduler (it parses the DAGs) and triggerer with the SequentialExecutor
(Airflow 2 refuses the LocalExecutor on SQLite). The run is triggered and read through the CLI and the SQLite
metadata DB, which every line shares; every process is stopped by its PID.

Asserted: the task deferred and the triggerer ran its trigger, exactly one job was paid (the emulator's ledger),
the MP4 at the XCom ``uri`` has the XCom's size and sha256, the "Segmind output" extra link shows the XCom
``source_url`` (on Airflow 2 through the webserver's REST API, which reads it from XCom), and the triggerer still
runs under the PID it started with.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.airflow_cluster import BIN, Processes, airflow_env
from tests.support import TEST_API_KEY, connection_json, free_port, probe_mp4, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

#: Airflow 3 has a FastAPI api-server (and a dag-processor of its own); Airflow 2 a Flask webserver.
AIRFLOW_3 = find_spec("airflow.api_fastapi") is not None
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer") if AIRFLOW_3 else (
    "webserver", "scheduler", "triggerer"
)
DAG_ID = "sora2_every_line"
RUN_ID = "every_line_1"
TIME_SCALE = 0.05  # 180 s of rendering -> 9 s
WEB_USER = ("sora2", "sora2-e2e-password")
DAG_SOURCE = """
import pendulum
from airflow.providers.common.compat.sdk import DAG

from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
    Sora2GenerateVideoOperator(
        task_id="generate",
        prompt="a lighthouse at dawn, waves below",
        duration=4,
        output_path={output!r},
        deferrable=True,
        poll_interval=0.5,
    )
"""


@dataclass
class Airflow:
    home: Path
    env: dict[str, str]
    url: str
    processes: Processes

    def cli(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run(
            [str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"airflow {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def triggered(self) -> bool:
        """Trigger the run once the DAG is in the DB (the CLI refuses a DAG no parser has stored yet)."""
        self.processes.check_alive()
        try:
            self.cli("dags", "trigger", DAG_ID, "--run-id", RUN_ID, timeout=120)
        except AssertionError as err:
            if "not found" in str(err).lower() or "could not find" in str(err).lower():
                return False
            raise
        return True

    def run_state(self) -> str | None:
        self.processes.check_alive()
        try:
            rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", DAG_ID, RUN_ID)
        except sqlite3.OperationalError:  # locked by a writer for longer than the timeout: ask again
            return None
        state = rows[0][0] if rows else None
        return state if state in ("success", "failed") else None

    def xcom(self, key: str) -> Any:
        rows = self.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'generate' AND key = ?",
            DAG_ID, RUN_ID, key,
        )
        return json.loads(rows[0][0]) if rows and rows[0][0] is not None else None

    def logs_mentioning(self, text: str) -> list[Path]:
        return [
            path for path in sorted(self.home.rglob("*.log"))
            if path.is_file() and text in path.read_text(errors="replace")
        ]


@pytest.fixture(scope="module")
def e2e_emulator() -> Iterator[Any]:
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=TIME_SCALE, api_keys={TEST_API_KEY: 100.0}) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def airflow(e2e_emulator: Any) -> Iterator[Airflow]:
    home = Path(os.environ["AIRFLOW_HOME"]) / "every-line"  # inside the session's home: its API-key scan covers it
    (home / "dags").mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor" if AIRFLOW_3 else "SequentialExecutor",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",  # Airflow 2: the scheduler's parser finds the file soon
        "AIRFLOW_CONN_SORA2_DEFAULT": connection_json(e2e_emulator.url),
        "PYTHONDONTWRITEBYTECODE": "1",
        # Airflow 2's executors start each task as `airflow tasks run ...`, found on PATH: this venv's first.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if not AIRFLOW_3:  # the webserver: its address, one session secret, and basic auth for its REST API
        settings["AIRFLOW__WEBSERVER__BASE_URL"] = url
        settings["AIRFLOW__WEBSERVER__SECRET_KEY"] = os.urandom(16).hex()
        settings["AIRFLOW__API__AUTH_BACKENDS"] = "airflow.api.auth.backend.basic_auth"
    env = airflow_env(home, f"sqlite:///{home / 'airflow.db'}?timeout=30", url, **settings)
    output = (home / "videos" / "lighthouse.mp4").as_uri()
    (home / "dags" / f"{DAG_ID}.py").write_text(textwrap.dedent(DAG_SOURCE.format(dag_id=DAG_ID, output=output)))
    processes = Processes(home / "process-logs")
    cluster = Airflow(home, env, url, processes)
    try:
        cluster.cli("db", "migrate")
        if not AIRFLOW_3:
            user, password = WEB_USER
            cluster.cli("users", "create", "--role", "Admin", "--username", user, "--password", password,
                        "--email", "sora2@localhost", "--firstname", "Sora", "--lastname", "Two")
        for name in COMPONENTS:
            argv = [str(BIN / "airflow"), name]
            if name == "api-server":
                argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            elif name == "webserver":
                argv += ["--hostname", "127.0.0.1", "--port", str(port), "--workers", "1"]
            processes.start(name, argv, env)
        yield cluster
    finally:
        processes.stop()
        left = processes.leftovers()
        assert not left, f"processes started for this Airflow are still alive: {left}"


@pytest.fixture(scope="module")
def finished(airflow: Airflow) -> str:
    triggerer_pid = airflow.processes.pid("triggerer")
    wait_for("the DAG parsed and the run triggered", airflow.triggered, timeout=240, interval=2)
    state = wait_for("the run to finish", airflow.run_state, timeout=300, interval=1)
    assert airflow.processes.pid("triggerer") == triggerer_pid
    return state


def test_a_deferred_generation_pays_once_and_stores_the_mp4(airflow: Airflow, finished: str, e2e_emulator: Any):
    assert finished == "success", "\n".join(airflow.processes.log_tail(n, 30) for n in COMPONENTS)
    xcom = airflow.xcom("return_value")
    request_id = xcom["request_id"]

    ledger = requests.get(f"{e2e_emulator.url}/_emulator/ledger", timeout=10).json()
    assert [job["request_id"] for job in ledger["ledger"]] == [request_id], ledger
    assert ledger["charges"] == {request_id: xcom["cost"]}

    assert xcom["uri"].startswith("file://")
    data = Path(xcom["uri"].removeprefix("file://")).read_bytes()
    assert len(data) == xcom["bytes"] and hashlib.sha256(data).hexdigest() == xcom["sha256"]
    probe_mp4(data)


def test_the_task_deferred_to_the_triggerer_which_still_runs(airflow: Airflow, finished: str):
    deferred = airflow.logs_mentioning("Pausing task as DEFERRED")
    assert deferred, "no task log says the task deferred"
    request_id = airflow.xcom("return_value")["request_id"]
    triggerer_logs = [p for p in airflow.logs_mentioning(request_id) if "trigger" in p.name]
    assert triggerer_logs, "neither the triggerer's log nor a trigger log names the job it waited for"
    assert airflow.processes.alive("triggerer"), airflow.processes.log_tail("triggerer")
    airflow.processes.check_alive()


def test_the_segmind_output_link_shows_the_source_url(airflow: Airflow, finished: str):
    source_url = airflow.xcom("return_value")["source_url"]
    if AIRFLOW_3:  # the worker stores each link's URL in XCom as the task ends (3.2: just after its success)
        wait_for("the link's XCom", lambda: airflow.xcom("_link_Sora2OutputLink") == source_url, timeout=60)
        return
    # Airflow 2: the webserver computes the links on the deserialized operator, from the task's returned XCom.
    path = f"/api/v1/dags/{DAG_ID}/dagRuns/{RUN_ID}/taskInstances/generate/links"
    wait_for("the webserver", lambda: requests.get(f"{airflow.url}/health", timeout=10).ok, timeout=180)
    links = requests.get(f"{airflow.url}{path}", auth=WEB_USER, timeout=30)
    links.raise_for_status()
    assert links.json()["Segmind output"] == source_url, links.json()
