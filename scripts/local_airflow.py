"""``make airflow``: a local Airflow to try the provider in, against the Sora 2 emulator, in the foreground.

It starts, each by PID in a session of its own (``scripts.processes``): the emulator (a funded account), then
``airflow api-server``, ``scheduler``, ``dag-processor`` and ``triggerer`` (LocalExecutor, SQLite) with the DAGs of
``example_dags/``. It points the ``sora2_default`` connection at the emulator, creates the ``sora2`` pool, triggers
one run of :data:`EXAMPLE_DAG_ID` and, once its video is stored, prints one block: that run's Video tab, the Sora 2
page and the login (none: the simple auth manager makes every visitor an admin; the server listens on 127.0.0.1
only). Ctrl-C or SIGTERM stops every process it started; nothing is left running.

The Airflow home is ``.airflow/`` in the checkout (git-ignored; ``make clean`` deletes it): the metadata DB, the logs
and the videos (``.airflow/videos``) survive a restart. Schedules are off (``[scheduler] use_job_schedule``): runs
start only when triggered, so no example starts paying by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from scripts.processes import LOCAL_API_KEY, Processes, start_emulator, without_airflow_settings

REPO = Path(__file__).resolve().parent.parent
HOME = REPO / ".airflow"
BIN = Path(sys.executable).parent
#: The example triggered at start (one constant: a renamed example is a one-line change here).
EXAMPLE_DAG_ID = "sora2_daily_video"
EXAMPLE_TASK_ID = "generate_video"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: Seconds for the components to answer healthy and for the example run to finish (both far above what they take).
READY_TIMEOUT = 300
RUN_TIMEOUT = 600
#: The Video tab route of the provider's plugin (sora2_provider.links.VIDEO_TAB_ROUTE) and its Sora 2 page.
VIDEO_TAB = "/dags/{dag}/runs/{run}/tasks/{task}/plugin/sora2-video"
SORA2_PAGE = "/plugin/sora2"
BANNER = "=" * 100


class Stop(BaseException):  # not an Exception: no `except Exception` on the way swallows it
    """SIGINT or SIGTERM arrived: stop everything."""


class LocalAirflow:
    def __init__(self, port: int, home: Path, time_scale: float) -> None:
        self.port = port
        self.home = home
        self.time_scale = time_scale
        self.url = f"http://127.0.0.1:{port}"
        self.processes = Processes(home / "process-logs")
        self.started = time.monotonic()
        self.token: str | None = None

    def say(self, message: str) -> None:
        print(f"[airflow {time.monotonic() - self.started:5.1f}s] {message}", flush=True)

    # -- environment --------------------------------------------------------------------------------

    def env(self, emulator_url: str) -> dict[str, str]:
        connection = {"conn_type": "sora2", "host": emulator_url, "password": LOCAL_API_KEY}
        env = without_airflow_settings()
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "example_dags"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM="8",  # LocalExecutor worker processes (default 32)
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__CORE__TEST_CONNECTION="Enabled",  # the connection form's Test button (a free credits call)
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
            # Four components and the tasks write one SQLite file: wait up to 30 s for its lock, not 5.
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.home / 'airflow.db'}?timeout=30",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.url}/execution/",
            AIRFLOW__API__BASE_URL=self.url,
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API_AUTH__JWT_SECRET=os.urandom(16).hex(),
            # The scheduler and the triggerer serve logs on fixed ports by default (8793, 8794): take free ones.
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
            # The connection for the tasks (the UI's copy is written through the REST API once it is up).
            AIRFLOW_CONN_SORA2_DEFAULT=json.dumps(connection),
            AIRFLOW_VAR_SORA2_OUTPUT_ROOT=(self.home / "videos").as_uri(),
            SORA2_POLL_INTERVAL="1",
        )
        return env

    # -- steps --------------------------------------------------------------------------------------

    def migrate(self, env: dict[str, str]) -> None:
        self.say(f"Airflow home {self.home} (SQLite); `airflow db migrate`")
        proc = self.processes.start("db-migrate", [str(BIN / "airflow"), "db", "migrate"], env, service=False)
        if proc.wait(timeout=600) != 0:
            raise SystemExit(f"airflow db migrate failed:\n{self.processes.log_tail('db-migrate')}")

    def start_components(self, env: dict[str, str]) -> None:
        self.say(f"Starting {', '.join(COMPONENTS)} (logs in {self.processes.log_dir})")
        for name in COMPONENTS:
            argv = [str(BIN / "airflow"), name]
            if name == "api-server":
                argv += ["--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
            self.processes.start(name, argv, env)
        self.wait("Airflow to answer healthy", self.healthy, READY_TIMEOUT)

    def healthy(self) -> bool:
        self.processes.check_alive()
        try:
            health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        sections = ("metadatabase", "scheduler", "dag_processor", "triggerer")
        return all(health.get(section, {}).get("status") == "healthy" for section in sections)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """The REST API, with the token the all-admins simple auth manager hands out."""
        if self.token is None:
            answer = requests.get(f"{self.url}/auth/token", timeout=30)
            answer.raise_for_status()
            self.token = answer.json()["access_token"]
        headers = {"Authorization": f"Bearer {self.token}"}
        # 120 s: a loaded two-core machine with SQLite locked by four components can take that long to answer.
        answer = requests.request(method, f"{self.url}/api/v2{path}", headers=headers, timeout=120, **kwargs)
        answer.raise_for_status()
        return answer.json() if answer.content else None

    def configure(self, emulator_url: str) -> None:
        """The ``sora2_default`` connection (visible in Admin > Connections, at this start's emulator) and the
        ``sora2`` pool of the batch example."""
        connection = {
            "connection_id": "sora2_default",
            "conn_type": "sora2",
            "host": emulator_url,
            "password": LOCAL_API_KEY,
            "description": "The local Sora 2 emulator of `make airflow` (reset at every start)",
        }
        pool = {"name": "sora2", "slots": 2, "include_deferred": True, "description": "Concurrent Sora 2 generations"}
        for path, entity in (("/connections", connection), ("/pools", pool)):
            action = {"action": "create", "entities": [entity], "action_on_existence": "overwrite"}
            body = {"actions": [action]}
            answer = self.wait(f"PATCH {path}", partial(self.api, "PATCH", path, json=body), READY_TIMEOUT)
            if answer["create"]["errors"]:
                raise SystemExit(f"PATCH {path} was refused: {answer['create']['errors']}")

    def trigger_example(self) -> str:
        self.wait(f"the DAG {EXAMPLE_DAG_ID} to be parsed", self.example_parsed, READY_TIMEOUT)
        unpause = {"is_paused": False}
        self.wait("the example unpaused", partial(self.api, "PATCH", f"/dags/{EXAMPLE_DAG_ID}", json=unpause), 300)
        run_id = self.api("POST", f"/dags/{EXAMPLE_DAG_ID}/dagRuns", json={"logical_date": None})["dag_run_id"]
        self.say(f"Triggered {EXAMPLE_DAG_ID} ({run_id}); waiting for its video")
        return run_id

    def example_parsed(self) -> bool:
        self.processes.check_alive()
        errors = self.api("GET", "/importErrors")["import_errors"]
        broken = [error for error in errors if Path(error["filename"]).stem == EXAMPLE_DAG_ID]
        if broken:
            raise SystemExit(f"{EXAMPLE_DAG_ID} does not import:\n{broken[0]['stack_trace']}")
        dag_ids = {dag["dag_id"] for dag in self.api("GET", "/dags", params={"limit": 100})["dags"]}
        return EXAMPLE_DAG_ID in dag_ids

    def wait_for_run(self, run_id: str) -> str:
        path = f"/dags/{EXAMPLE_DAG_ID}/dagRuns/{quote(run_id, safe='')}"

        def finished() -> str | None:
            self.processes.check_alive()
            state = self.api("GET", path)["state"]
            return state if state in ("success", "failed") else None

        return self.wait(f"the run {run_id}", finished, RUN_TIMEOUT)

    def wait(self, what: str, check: Any, timeout: float) -> Any:
        """Poll ``check`` until it returns something; a slow or failed answer (a busy machine, SQLite locked) is
        asked again until ``timeout``."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                if result := check():
                    return result
            except requests.RequestException as err:
                last_error = err
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"gave up waiting {timeout:.0f} s for {what} (last error: {last_error}); "
                    f"logs in {self.processes.log_dir}"
                )
            time.sleep(0.5)  # the poll interval of a deadline-bounded wait

    def ready_block(self, run_id: str, state: str) -> str:
        tab = VIDEO_TAB.format(dag=EXAMPLE_DAG_ID, run=quote(run_id, safe=""), task=EXAMPLE_TASK_ID)
        lines = [
            BANNER,
            f"Airflow with the Sora 2 provider is ready ({time.monotonic() - self.started:.0f} s). Ctrl-C stops it.",
            f"  Video tab:   {self.url}{tab}",
            f"  Sora 2 page: {self.url}{SORA2_PAGE}",
            "  Login:       none needed (every visitor is an admin; the server listens on 127.0.0.1 only)",
            f"  Home:        {self.home} (videos in videos/; kept across restarts, `make clean` deletes it)",
        ]
        if state != "success":
            lines.append(f"  The example run {state}: its Video tab and task logs say why.")
        return "\n".join([*lines, BANNER])

    # -- lifecycle ----------------------------------------------------------------------------------

    def run(self) -> None:
        emulator_url = start_emulator(self.processes, time_scale=self.time_scale, balance=100)
        self.say(f"Sora 2 emulator at {emulator_url} (PID {self.processes.pid('emulator')}), 100 credits")
        env = self.env(emulator_url)
        self.migrate(env)
        self.start_components(env)
        self.configure(emulator_url)
        run_id = self.trigger_example()
        state = self.wait_for_run(run_id)
        print(self.ready_block(run_id, state), flush=True)
        while True:
            self.processes.check_alive()
            time.sleep(1)  # watch the components until a signal stops us

    def stop(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.say("Stopping every process started here, by PID")
        self.processes.stop(grace=30)
        left = self.processes.leftovers()
        if left:
            raise SystemExit(f"still running: {left}")
        self.say(f"Stopped; nothing left running and port {self.port} is free")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_in_use(port: int) -> bool:
    """Whether a server could not listen on ``port`` (SO_REUSEADDR, as servers bind: a closed socket's TIME_WAIT
    does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def raise_stop(signum: int, _frame: Any) -> None:
    raise Stop(signal.Signals(signum).name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8080), help="default $PORT or 8080")
    parser.add_argument("--home", type=Path, default=HOME, help="the Airflow home (default .airflow/)")
    parser.add_argument("--time-scale", type=float, default=0.05, help="emulator clock (0.05: 180 s -> 9 s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if port_in_use(args.port):
        print(f"Port {args.port} is in use (another Airflow?): stop it, or pick another: make airflow PORT=8081",
              file=sys.stderr)  # fmt: skip
        return 2
    local = LocalAirflow(args.port, args.home.resolve(), args.time_scale)
    signal.signal(signal.SIGINT, raise_stop)
    signal.signal(signal.SIGTERM, raise_stop)
    try:
        local.run()
    except Stop:
        return 0
    except AssertionError as err:  # a component exited (scripts.processes): its log tail says why
        print(f"make airflow: {err}", file=sys.stderr)
        return 1
    finally:
        local.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
