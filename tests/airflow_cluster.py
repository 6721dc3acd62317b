"""Real Airflow for the tests that need one: every component a subprocess, started, killed and stopped by its PID.

One module for the three suites that run Airflow processes:

- ``tests/e2e``: api-server, scheduler, dag-processor and triggerer with the LocalExecutor on SQLite.
- ``tests/ui``: an api-server alone (plus an ``airflow dags test`` run beside it) on SQLite.
- ``tests/cluster``: the CeleryExecutor on a Postgres metadata DB and a Redis broker (both started here, on free
  loopback ports in temp dirs), with Celery workers on "hosts" of their own: each worker has its own
  ``AIRFLOW_HOME``, DAGs folder, logs, temp dir and hostname (``[core] hostname_callable``), so neither can read
  the other's local files and the task instances say which one ran them.

Why an api-server always: in Airflow 3 a task talks to the metadata DB only through the Execution API, which the
api-server serves; workers reach it at ``[core] execution_api_server_url``.

Processes: each one starts in a session of its own (``scripts.processes``, shared with ``make demo`` and ``make
airflow``): stopping or killing a component signals, by PID, every live process of its session.
``Processes.leftovers`` lists whatever is still alive in any session ever started here; the fixtures assert it is
empty after teardown.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from scripts.processes import Processes, as_user
from tests.support import free_port, wait_for

BIN = Path(sys.executable).parent
POSTGRES_BIN = Path(os.environ.get("SORA2_POSTGRES_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = Path(os.environ.get("SORA2_REDIS_SERVER", "/usr/bin/redis-server"))
#: What ``run_cluster`` starts besides any Celery worker, in order (the api-server first: the others need it).
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
#: ``/api/v2/monitor/health`` sections of the components that report there.
HEALTH_SECTIONS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
#: Airflow 3.3.2 race (apache/airflow#66374, #67287, #72716): when a trigger fires before the scheduler processed
#: the executor's "success" of the worker's defer-exit, the scheduler takes the resumed, re-queued try for a task
#: "killed externally" and retries it. Tests accept such a retry only when the scheduler logged exactly this.
AIRFLOW_DEFER_RACE = "finished with state success, but the task instance's state attribute is"
#: The hostname a worker host reports (``[core] hostname_callable``), from a module on that host's PYTHONPATH.
HOSTNAME_MODULE = '''\
"""This host's name, as Airflow records it on the task instances it runs."""


def hostname() -> str:
    return {name!r}
'''


# ---------------------------------------------------------------------------------------------- services


def start_postgres(processes: Processes, workdir: Path) -> str:
    """Postgres 15 on 127.0.0.1 and a free port, data in a temp dir; returns the SQLAlchemy URL of DB ``airflow``.

    ``initdb`` and ``postgres`` refuse to run as root: as root they run as the ``postgres`` system user (the
    Debian package creates it) with a data dir that user owns; otherwise as the current user."""
    user = "postgres" if os.geteuid() == 0 else None
    data = Path(tempfile.mkdtemp(prefix="sora2-postgres-"))  # outside workdir: the postgres user must reach it
    (workdir / "postgres-data-dir").write_text(str(data))
    if user:
        shutil.chown(data, user, user)
    initdb = [str(POSTGRES_BIN / "initdb"), "-D", str(data / "pg"), "-U", "airflow", "--auth=trust", "-E", "UTF8"]
    proc = subprocess.run([*initdb, "--no-sync"], capture_output=True, text=True, timeout=120, **as_user(user))
    assert proc.returncode == 0, f"initdb failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(data),
        "max_connections": "200",
        "fsync": "off",  # a throwaway DB: durability across a power cut does not matter
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    argv = [str(POSTGRES_BIN / "postgres"), "-D", str(data / "pg"), "-p", str(port)]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    # SIGINT is Postgres's fast shutdown (SIGTERM would wait for every client to disconnect).
    processes.start("postgres", argv, {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}, stop_signal=signal.SIGINT,
                    stage=1, user=user)

    def accepts_connections() -> bool:
        import psycopg2

        processes.check_alive(["postgres"])
        try:
            db = psycopg2.connect(host="127.0.0.1", port=port, user="airflow", dbname="postgres", connect_timeout=2)
        except psycopg2.OperationalError:
            return False  # not listening yet
        with contextlib.closing(db):
            db.autocommit = True
            with db.cursor() as cursor:
                cursor.execute("CREATE DATABASE airflow")
        return True

    wait_for("Postgres accepting connections", accepts_connections, timeout=60, interval=0.2)
    return f"postgresql+psycopg2://airflow@127.0.0.1:{port}/airflow"


def remove_postgres_data(workdir: Path) -> None:
    marker = workdir / "postgres-data-dir"
    if marker.exists():
        shutil.rmtree(marker.read_text(), ignore_errors=True)


def start_redis(processes: Processes, workdir: Path) -> str:
    """Redis on 127.0.0.1 and a free port, no persistence, working dir in ``workdir``; returns its URL."""
    import redis

    folder = workdir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [str(REDIS_SERVER), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder)]
    argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "yes"]
    processes.start("redis", argv, {"PATH": os.environ["PATH"]}, stage=1)
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)

    def answers() -> bool:
        processes.check_alive(["redis"])
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for("Redis answering PING", answers, timeout=30, interval=0.1)
    client.close()
    return f"redis://127.0.0.1:{port}/0"


# ---------------------------------------------------------------------------------------------- Airflow


@dataclass
class WorkerHost:
    """A Celery worker's "machine": its own AIRFLOW_HOME, DAGs folder, logs, temp dir and hostname."""

    name: str
    home: Path

    @property
    def dags(self) -> Path:
        return self.home / "dags"

    @property
    def celery_hostname(self) -> str:
        return f"{self.name}@cluster"


@dataclass
class AirflowCluster:
    """A running Airflow: its main home (scheduler, dag-processor, triggerer, api-server), worker hosts, REST API."""

    home: Path
    env: dict[str, str]
    api_url: str
    processes: Processes
    executor: str = "LocalExecutor"
    hosts: dict[str, WorkerHost] = field(default_factory=dict)
    broker_url: str | None = None
    credentials: tuple[str, str] | None = None  # user and password for a token; None: all-admins, no token
    _token: str | None = None

    # -- processes ------------------------------------------------------------------------------

    @property
    def dags(self) -> Path:
        return Path(self.env["AIRFLOW__CORE__DAGS_FOLDER"])

    @property
    def log_dir(self) -> Path:
        return self.processes.log_dir

    @property
    def stop_times(self) -> dict[str, float]:
        return self.processes.stop_times

    def cli(self, *args: str, timeout: float = 300, env: dict[str, str] | None = None) -> str:
        """Run ``airflow <args>`` against this cluster; return its output, failing on a non-zero exit."""
        proc = subprocess.run(
            [str(BIN / "airflow"), *args], env=env or self.env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``airflow <args>`` (default: ``airflow <name>``) as the process ``name``."""
        return self.processes.start(name, [str(BIN / "airflow"), *(args or (name,))], env or self.env)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> list[int]:
        return self.processes.kill(name, sig)

    def restart(self, name: str) -> None:
        self.processes.restart(name)

    def check_alive(self) -> None:
        self.processes.check_alive()

    def assert_running(self, name: str) -> None:
        """``name`` still runs under the PID it was started with: it never exited, died or was restarted."""
        started = self.processes.started[name]
        exited = started.popen.poll()
        assert exited is None, f"{name} (PID {started.popen.pid}) exited with {exited}:\n{self.log_tail(name)}"
        process = psutil.Process(started.popen.pid)
        assert process.status() != psutil.STATUS_ZOMBIE, f"{name} (PID {started.popen.pid}) is a zombie"
        command = started.argv[1] if len(started.argv) > 1 else started.argv[0]  # ``airflow <command>``
        assert command in process.cmdline(), process.cmdline()

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.processes.log_tail(name, lines)

    def stop(self) -> None:
        self.processes.stop()

    def write_dag(self, file_name: str, source: str) -> None:
        """Write a DAG file to every host's DAGs folder (workers first: a parsed DAG can be run at once)."""
        text = textwrap.dedent(source)
        for folder in [*(host.dags for host in self.hosts.values()), self.dags]:
            (folder / file_name).write_text(text)

    # -- Celery workers -------------------------------------------------------------------------

    def start_worker(self, host: WorkerHost, concurrency: int) -> None:
        argv = ["celery", "worker", "--celery-hostname", host.celery_hostname, "--concurrency", str(concurrency)]
        self.start(host.name, *argv, env=self.host_env(host))

    def host_env(self, host: WorkerHost) -> dict[str, str]:
        return {
            **self.env,
            "AIRFLOW_HOME": str(host.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(host.dags),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "sora2_cluster_host.hostname",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(host.home / "lib"), self.env.get("PYTHONPATH")])),
            "TMPDIR": str(host.home / "tmp"),
        }

    def workers_ready(self) -> bool:
        """Every running worker answers a Celery ping through the broker."""
        from celery import Celery

        names = [host.celery_hostname for name, host in self.hosts.items() if self.processes.alive(name)]
        self.check_alive()
        app = Celery(broker=self.broker_url)
        try:
            answers = app.control.ping(destination=names, timeout=1.0)
        finally:
            app.close()
        return {name for answer in answers for name in answer} >= set(names)

    # -- REST API -------------------------------------------------------------------------------

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the public REST API with a JWT from the simple auth manager: ``POST /auth/token`` with the
        credentials, or ``GET /auth/token`` in ``simple_auth_manager_all_admins`` mode (3.2+ also accepts calls
        without a token there, 3.1 does not; the token works on every line)."""
        if self._token is None:
            if self.credentials is not None:
                user, password = self.credentials
                body = {"username": user, "password": password}
                answer = requests.post(f"{self.api_url}/auth/token", json=body, timeout=30)
            else:
                answer = requests.get(f"{self.api_url}/auth/token", timeout=30)
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        headers = {"Authorization": f"Bearer {self._token}"}
        response = requests.request(method, f"{self.api_url}/api/v2{path}", headers=headers, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None  # None: 204 (a DELETE)

    def healthy(self) -> bool:
        """Every component started here is alive and the ones that report health are healthy."""
        self.check_alive()
        health = requests.get(f"{self.api_url}/api/v2/monitor/health", timeout=5).json()
        sections = ["metadatabase"]
        sections += [section for name, section in HEALTH_SECTIONS.items() if self.processes.alive(name)]
        return all(health.get(section, {}).get("status") == "healthy" for section in sections)

    def dags_parsed(self, dag_ids: set[str]) -> bool:
        """Every DAG in ``dag_ids`` is parsed; fails at once on an import error."""
        self.check_alive()
        errors = self.api("GET", "/importErrors")
        assert errors["total_entries"] == 0, errors
        found = {dag["dag_id"] for dag in self.api("GET", "/dags", params={"limit": 100})["dags"]}
        return found >= dag_ids

    def trigger(self, dag_id: str, logical_date: str | None, **conf: Any) -> str:
        """Create a DAG run through the REST API; return its run id."""
        body = {"logical_date": logical_date, "conf": conf}
        return self.api("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def wait_for_runs(self, runs: Mapping[str, str], timeout: float, dag_id: str | None = None) -> dict[str, str]:
        """Wait until every run of ``runs`` is finished; return their states by the same keys. ``runs`` maps a DAG
        id to its run id, or any key to a run id of ``dag_id`` (several runs of one DAG)."""
        states: dict[str, str] = {}

        def finished() -> bool:
            self.check_alive()
            for key, run_id in runs.items():
                states[key] = self.api("GET", f"/dags/{dag_id or key}/dagRuns/{run_id}")["state"]
            return all(state in ("success", "failed") for state in states.values())

        try:
            wait_for(f"runs {dict(runs)}", finished, timeout)
        except TimeoutError as err:
            raise AssertionError(f"{err}; states: {states}\n{self.diagnose(runs, dag_id)}") from None
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
        return self.api("GET", path if map_index < 0 else f"{path}/{map_index}")["rendered_fields"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
        entry = self.api("GET", path, params={"map_index": map_index, "deserialize": True, "stringify": False})
        return entry["value"]

    def task_log_files(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, home: Path | None = None
    ) -> list[Path]:
        """Every log file of a task instance in one home (default: the main one, where a LocalExecutor's task
        and the triggerer write)."""
        folder = (home or self.home) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        return sorted(path for path in folder.glob("attempt=*.log*") if path.is_file())

    def defer_races(self, dag_id: str, run_id: str, map_index: int = -1, task_id: str = "generate_video") -> int:
        """How often the scheduler hit Airflow's defer race (see AIRFLOW_DEFER_RACE) for this task instance."""
        mapped = f" map_index={map_index} " if map_index >= 0 else " "
        ti = f"<TaskInstance: {dag_id}.{task_id} {run_id}{mapped}"
        return sum(1 for line in self._scheduler_log_lines() if AIRFLOW_DEFER_RACE in line and ti in line)

    def exit_processed(self, dag_id: str, run_id: str, task_id: str, state: str) -> bool:
        """Whether the scheduler has processed the executor's report of a try that ended in ``state`` (e.g. a task
        parked in ``awaiting_input``). Resuming such a task before that hits AIRFLOW_DEFER_RACE."""
        finished = f"TaskInstance Finished: dag_id={dag_id}, task_id={task_id}, run_id={run_id}, "
        return any(finished in line and f", state={state}," in line for line in self._scheduler_log_lines())

    def _scheduler_log_lines(self) -> list[str]:
        path = self.log_dir / "scheduler.log"
        return path.read_text(errors="replace").splitlines() if path.exists() else []

    def diagnose(self, runs: Mapping[str, str], dag_id: str | None = None) -> str:
        """Task states and log tails, to explain a run that did not finish (``runs`` as in :meth:`wait_for_runs`)."""
        parts = []
        for key, run_id in runs.items():
            with contextlib.suppress(requests.RequestException):
                tis = self.task_instances(dag_id or key, run_id)
                states = {k: (ti["state"], ti["try_number"], ti["hostname"]) for k, ti in tis.items()}
                parts.append(f"{dag_id or key} {run_id} (state, try, host): {states}")
        for name in self.processes.started:
            parts.append(f"--- {name} (last lines)\n{self.log_tail(name, 15)}")
        return "\n".join(parts)


def airflow_env(home: Path, database_url: str, api_url: str, **settings: str | None) -> dict[str, str]:
    """The environment of every component: this process's minus its ``AIRFLOW*`` variables, plus the cluster's
    and ``settings`` (a None value removes the variable)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database_url,
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{api_url}/execution/",
        AIRFLOW__API__BASE_URL=api_url,
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=api_url.rsplit(":", 1)[1],
        AIRFLOW__API_AUTH__JWT_SECRET=os.urandom(16).hex(),  # one secret: every component accepts the others' tokens
        # The scheduler and the triggerer serve their logs on fixed ports by default: take free ones.
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
    )
    for key, value in settings.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


CELERY_SETTINGS = {
    # Each worker reserves no more tasks than it has processes: tasks queued together spread over the workers.
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    "AIRFLOW__CELERY__SYNC_PARALLELISM": "1",
    "AIRFLOW__CELERY__OPERATION_TIMEOUT": "10",
}


@contextlib.contextmanager
def run_cluster(
    home: Path,
    *,
    executor: str = "LocalExecutor",
    components: Sequence[str] = COMPONENTS,
    workers: Sequence[str] = (),
    worker_concurrency: int = 2,
    settings: dict[str, str | None] | None = None,
    dag_files: dict[str, str] | None = None,
    home_files: dict[str, str] | None = None,
    credentials: tuple[str, str] | None = None,
    before_start: Callable[[Any], None] | None = None,
    on_started: Callable[[Any], None] | None = None,
    ready_timeout: float = 240,
    cls: type[AirflowCluster] = AirflowCluster,
) -> Iterator[Any]:
    """Start an Airflow in ``home`` (removed first if it exists) and stop every process it started on exit.

    ``executor``: ``LocalExecutor`` (SQLite DB in ``home``) or ``CeleryExecutor`` (Postgres and Redis started here;
    ``workers`` names the worker hosts, each with ``worker_concurrency`` processes). ``settings`` adds environment
    variables for every component, ``dag_files`` (file name -> source) fills every DAGs folder and ``home_files``
    (path relative to the main home -> text) adds files such as ``config/airflow_local_settings.py``, before
    anything starts. ``before_start`` runs once the DB is migrated, before any component starts (e.g. to create users
    that no component may create at the same time); ``on_started`` runs once every process is started, before
    waiting for them to be healthy;
    ``cls`` is the ``AirflowCluster`` subclass to yield (its extra fields need defaults; set them in
    ``on_started``). Yields once the api-server and the other components answer healthy (and every worker answers
    a ping). On exit, asserts that no process started here is left."""
    if executor not in ("LocalExecutor", "CeleryExecutor"):
        raise ValueError(f"executor: {executor!r} is not LocalExecutor or CeleryExecutor")
    if workers and executor != "CeleryExecutor":
        raise ValueError("worker hosts need the CeleryExecutor")
    if home.exists():
        shutil.rmtree(home)
    (home / "dags").mkdir(parents=True)
    processes = Processes(home / "process-logs")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    cluster: AirflowCluster | None = None
    try:
        extra: dict[str, str | None] = {"AIRFLOW__CORE__EXECUTOR": executor, **(settings or {})}
        broker_url = None
        if executor == "CeleryExecutor":
            database_url = start_postgres(processes, home)
            broker_url = start_redis(processes, home)
            extra = {
                **CELERY_SETTINGS,
                "AIRFLOW__CELERY__BROKER_URL": broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + database_url,
                **extra,
            }
        else:
            # Four components and up to six tasks write to one SQLite file: wait up to 30 s for its lock (Python's
            # default is 5 s, which a loaded 2-core machine exceeds, and the REST API then answers 500).
            database_url = f"sqlite:///{home / 'airflow.db'}?timeout=30"
        cluster = cls(
            home=home,
            env=airflow_env(home, database_url, api_url, **extra),
            api_url=api_url,
            processes=processes,
            executor=executor,
            broker_url=broker_url,
            credentials=credentials,
        )
        for name in workers:
            host = WorkerHost(name, home / "hosts" / name)
            for folder in (host.dags, host.home / "lib", host.home / "tmp"):
                folder.mkdir(parents=True)
            (host.home / "lib" / "sora2_cluster_host.py").write_text(HOSTNAME_MODULE.format(name=name))
            cluster.hosts[name] = host
        for file_name, source in (dag_files or {}).items():
            cluster.write_dag(file_name, source)
        for relative, text in (home_files or {}).items():
            (home / relative).parent.mkdir(parents=True, exist_ok=True)
            (home / relative).write_text(text)
        cluster.cli("db", "migrate")
        if before_start is not None:
            before_start(cluster)
        migrated = time.monotonic()
        for component in components:
            if component == "api-server":
                cluster.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
            else:
                cluster.start(component)
        for host in cluster.hosts.values():
            cluster.start_worker(host, worker_concurrency)
        if on_started is not None:
            on_started(cluster)
        wait_for("a healthy Airflow", cluster.healthy, timeout=ready_timeout)
        if cluster.hosts:
            wait_for("every Celery worker answering a ping", cluster.workers_ready, timeout=ready_timeout)
        print(
            f"Airflow ({executor}, {', '.join([*components, *workers])}): db migrate {migrated - started:.0f} s, "
            f"then ready in {time.monotonic() - migrated:.0f} s"
        )
        yield cluster
    finally:
        stopping = time.monotonic()
        processes.stop()
        remove_postgres_data(home)
        print(f"Airflow stopped in {time.monotonic() - stopping:.0f} s {processes.stop_times}")
        left = processes.leftovers()
        assert not left, f"processes started for the Airflow cluster are still alive: {left}"
