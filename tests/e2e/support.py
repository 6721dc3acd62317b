"""A real Airflow for the end-to-end tests: api-server, scheduler, dag-processor and triggerer as subprocesses.

(The fixtures that start it live in ``tests/e2e/conftest.py``; this module holds what tests import too.)

One cluster per test module (starting it takes about a minute on two cores). It runs the example DAGs (a copy of
``example_dags/``) with the LocalExecutor on SQLite, in an ``AIRFLOW_HOME`` of its own under the session's one
(so the session's API-key scan covers its logs), against a module-wide emulator and the session's moto S3 server.

Why an api-server too: in Airflow 3 a task talks to the metadata DB only through the Execution API, which the
api-server serves; LocalExecutor workers reach it at ``[core] execution_api_server_url``. The public REST API of
the same server triggers runs and reads their states and XComs, with a JWT from the simple auth manager's
``GET /auth/token`` (``simple_auth_manager_all_admins``: no credentials on this loopback-only server). Airflow 3.2+
accepts calls without a token in that mode, 3.1 does not; the token works on every line.

LocalExecutor on SQLite: Airflow 3.3 no longer refuses it (``airflow standalone`` runs exactly that); SQLite
serialises the writers, which is fine at this scale. Every process is stopped by its PID at teardown, and any
child it left behind (executor workers, task supervisors, the trigger runner) through its process group.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.support import stop_processes, wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO / "example_dags"
BIN = Path(sys.executable).parent
S3_BUCKET = "sora2-test"
#: 180 s of sora-2 rendering -> 9 s. Long enough that (1) a pool letting deferred tasks go shows the emulator
#: three or four jobs at once (a task takes 2 to 10 s here to start and submit, most of it Airflow loading the
#: object-storage filesystems), and (2) the trigger rarely fires before the scheduler has seen the worker's
#: defer-exit (Airflow's own race, see AIRFLOW_DEFER_RACE).
TIME_SCALE = 0.05
#: Airflow 3.3.2 race (apache/airflow#66374, #67287, #72716): when a trigger fires before the scheduler processed
#: the executor's "success" of the worker's defer-exit, the scheduler takes the resumed, re-queued try for a task
#: "killed externally" and retries it. The tests accept such a retry only when the scheduler logged exactly this.
AIRFLOW_DEFER_RACE = "finished with state success, but the task instance's state attribute is"
#: ``$AIRFLOW_HOME/config/airflow_local_settings.py`` of the cluster: a cluster policy that shortens the examples'
#: one-minute retry delay, so a retry (after that race) costs seconds, not a minute.
LOCAL_SETTINGS = """\
from datetime import timedelta


def task_policy(task):
    task.retry_delay = timedelta(seconds=2)
"""
POLL_INTERVAL = 0.2
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")


@dataclass
class AirflowCluster:
    """The running Airflow: its home, environment, REST API and processes."""

    home: Path
    env: dict[str, str]
    api_url: str
    output_root: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stop_times: dict[str, float] = field(default_factory=dict)
    _token: str | None = None

    # -- processes ------------------------------------------------------------------------------

    @property
    def log_dir(self) -> Path:
        return self.home / "process-logs"

    def cli(self, *args: str, timeout: float = 120) -> str:
        """Run ``airflow <args>`` against this cluster; return its output, failing on a non-zero exit."""
        proc = subprocess.run(
            [str(BIN / "airflow"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def start(self, component: str, *args: str) -> None:
        log = (self.log_dir / f"{component}.log").open("wb")
        self.processes[component] = subprocess.Popen(
            [str(BIN / "airflow"), component, *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: its children can be found and stopped with it
        )

    def check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def assert_running(self, component: str) -> None:
        """``airflow <component>`` still runs under the PID it was started with: it never exited or restarted."""
        proc = self.processes[component]
        exited = proc.poll()
        assert exited is None, f"airflow {component} (PID {proc.pid}) exited with {exited}:\n{self.log_tail(component)}"
        process = psutil.Process(proc.pid)
        assert process.status() != psutil.STATUS_ZOMBIE, f"airflow {component} (PID {proc.pid}) is a zombie"
        assert component in process.cmdline(), process.cmdline()

    def log_tail(self, component: str, lines: int = 40) -> str:
        path = self.log_dir / f"{component}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """Stop every process by its PID (see ``tests.support.stop_processes``), recording how long each took."""
        self.stop_times.update(stop_processes(self.processes))

    # -- REST API -------------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        if self._token is None:
            answer = requests.get(f"{self.api_url}/auth/token", timeout=30)
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        headers = {"Authorization": f"Bearer {self._token}"}
        response = requests.request(method, f"{self.api_url}/api/v2{path}", headers=headers, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def healthy(self) -> bool:
        self.check_alive()
        health = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
        return all(health.get(part, {}).get("status") == "healthy" for part in health)

    def trigger(self, dag_id: str, logical_date: str | None, **conf: Any) -> str:
        """Create a DAG run through the REST API; return its run id."""
        body = {"logical_date": logical_date, "conf": conf}
        return self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def wait_for_runs(self, runs: dict[str, str], timeout: float) -> dict[str, str]:
        """Wait until every ``dag_id -> run_id`` is finished; return their states."""
        states: dict[str, str] = {}

        def finished() -> bool:
            self.check_alive()
            for dag_id, run_id in runs.items():
                states[dag_id] = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]
            return all(state in ("success", "failed") for state in states.values())

        try:
            wait_for(f"runs {runs}", finished, timeout)
        except TimeoutError as err:
            raise AssertionError(f"{err}; states: {states}\n{self.diagnose(runs)}") from None
        return states

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        """Task instances of a run by task id (mapped ones as ``task_id[map_index]``)."""
        rows = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return {
            ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]": ti
            for ti in rows["task_instances"]
        }

    def rendered_fields(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any]:
        """A task instance's rendered template fields, from its own route (the list route leaves them empty on 3.2)."""
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
        ti = self.api("GET", path if map_index < 0 else f"{path}/{map_index}")
        return ti["rendered_fields"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        entry = self.api("GET", path, params={"map_index": map_index, "deserialize": True, "stringify": False})
        return entry["value"]

    def task_log_files(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[Path]:
        """Every log file of a task instance: the worker's and, for a deferred task, the triggerer's."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        return sorted(path for path in folder.glob("attempt=*.log*") if path.is_file())

    def defer_races(self, dag_id: str, run_id: str, map_index: int = -1) -> int:
        """How often the scheduler hit Airflow's defer race (see AIRFLOW_DEFER_RACE) for this generate task."""
        mapped = f" map_index={map_index} " if map_index >= 0 else " "
        ti = f"<TaskInstance: {dag_id}.generate_video {run_id}{mapped}"
        text = (self.log_dir / "scheduler.log").read_text(errors="replace")
        return sum(1 for line in text.splitlines() if AIRFLOW_DEFER_RACE in line and ti in line)

    def diagnose(self, runs: dict[str, str]) -> str:
        """Task states and log tails, to explain a run that did not finish."""
        parts = []
        for dag_id, run_id in runs.items():
            with contextlib.suppress(requests.RequestException):
                states = {k: v["state"] for k, v in self.task_instances(dag_id, run_id).items()}
                parts.append(f"{dag_id} {run_id}: {states}")
        for name in self.processes:
            parts.append(f"--- airflow {name} (last lines)\n{self.log_tail(name, 15)}")
        return "\n".join(parts)
