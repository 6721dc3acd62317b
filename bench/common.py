"""What every benchmark shares: its result format, the processes it starts (emulator, moto S3), an RSS
sampler, machine facts, and the environment a benchmark process runs Airflow in.

Each benchmark is a module ``bench.pN_*`` run in a fresh interpreter: ``python -m bench.p3_throughput --quick
--json out.json``. It measures a baseline in the same run, and returns a :class:`Result` made of
:class:`Check` rows (one per line of the table). Nothing here imports Airflow: a benchmark imports it
after :func:`airflow_env` has been applied.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
API_KEY = "SG_bench_0000"
MiB = 1 << 20
#: Compiled bytecode for the benchmark interpreters, outside the repo and the venv (see RESULTS.md: the venv
#: ships no .pyc and the environment sets PYTHONDONTWRITEBYTECODE, so each interpreter would compile Airflow).
PYCACHE = Path(os.environ.get("SORA2_BENCH_CACHE", Path.home() / ".cache" / "sora2-bench")) / "pycache"


# --------------------------------------------------------------------------- results


@dataclass
class Check:
    """One row of the table: a measured value, the baseline of the same run, the target and the verdict.

    ``passed`` None means the row is informational (no target of its own).
    """

    name: str
    value: float | None
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None

    @property
    def status(self) -> str:
        return "INFO" if self.passed is None else ("PASS" if self.passed else "MISS")


@dataclass
class Result:
    id: str
    title: str
    quick: bool
    params: dict[str, Any] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None

    def check(self, *args: Any, **kwargs: Any) -> Check:
        row = Check(*args, **kwargs)
        self.checks.append(row)
        return row

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row, check in zip(data["checks"], self.checks, strict=True):
            row["status"] = check.status
        return data


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def bench_main(bench_id: str, title: str, run: Callable[[Result, argparse.Namespace], None],
               add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> None:
    """Command line of one benchmark module: ``--quick``, ``--json PATH``, plus its own options."""
    reexec_with_bytecode(f"bench.{bench_id}")
    parser = argparse.ArgumentParser(prog=f"python -m bench.{bench_id}", description=title)
    parser.add_argument("--quick", action="store_true", help="the smaller variant")
    parser.add_argument("--json", type=Path, help="write the result here (default: print it)")
    if add_args:
        add_args(parser)
    args = parser.parse_args()
    result = Result(title.split(" ")[0], title, args.quick)  # "P5b ..." -> "P5b"
    started = time.monotonic()
    try:
        run(result, args)
    except BaseException as err:  # the runner shows the error in the table instead of losing the other rows
        result.error = f"{type(err).__name__}: {err}"
        traceback.print_exc()
    result.seconds = round(time.monotonic() - started, 1)
    text = json.dumps(result.to_json(), indent=1, default=str)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)
    sys.exit(1 if result.error else 0)


def reexec_with_bytecode(module: str) -> None:
    """Restart this interpreter under :func:`base_env` unless it already is (run by hand, a benchmark would
    otherwise compile every module it imports: the environment sets PYTHONDONTWRITEBYTECODE)."""
    if os.environ.get("PYTHONPYCACHEPREFIX") == str(PYCACHE) and "PYTHONDONTWRITEBYTECODE" not in os.environ:
        return
    PYCACHE.mkdir(parents=True, exist_ok=True)
    env = base_env()
    if "PYTHONDONTWRITEBYTECODE" in os.environ:
        env["SORA2_BENCH_CALLER_DONT_WRITE_BYTECODE"] = "1"  # what the caller's environment said, for RESULTS.md
    os.execve(PYTHON, [PYTHON, "-m", module, *sys.argv[1:]], env)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- environment


def base_env() -> dict[str, str]:
    """The calling environment with bytecode caching on (into :data:`PYCACHE`) and unbuffered output."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("SORA2_EMULATOR_CACHE", str(Path.home() / ".cache" / "sora2-emulator"))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def airflow_env(home: Path) -> dict[str, str]:
    """Settings of a throwaway Airflow in ``home`` (SQLite, a private DAGs folder); any AIRFLOW_* of the
    calling shell is dropped so a benchmark never touches another Airflow installation."""
    env = {k: v for k, v in base_env().items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return env


def ensure_airflow_env() -> Path:
    """In a benchmark process: use the runner's Airflow settings, or make a throwaway home when run alone.

    Must run before anything imports Airflow.
    """
    if os.environ.get("SORA2_BENCH_AIRFLOW_HOME"):
        home = Path(os.environ["SORA2_BENCH_AIRFLOW_HOME"])
    else:  # run by hand: a home of its own, removed at exit
        import atexit

        home = Path(tempfile.mkdtemp(prefix="sora2-bench-airflow-"))
        os.environ["SORA2_BENCH_AIRFLOW_HOME"] = str(home)
        atexit.register(remove, home)
    (home / "dags").mkdir(parents=True, exist_ok=True)
    os.environ.update({k: v for k, v in airflow_env(home).items() if k.startswith(("AIRFLOW", "AWS_"))})
    return home


def migrate_db(home: Path) -> float:
    """A migrated SQLite metadata DB in ``home``; the seconds it took.

    ``airflow db migrate`` runs once per Airflow version: its result is kept beside the bytecode cache and
    copied into later homes (a fresh copy each run, so no state leaks between runs).
    """
    marker = home / ".migrated"
    if marker.exists():
        return 0.0
    started = time.monotonic()
    from importlib.metadata import version

    template = PYCACHE.parent / f"airflow-{version('apache-airflow')}-migrated.db"
    if template.exists():
        shutil.copyfile(template, home / "airflow.db")
    else:
        airflow = Path(PYTHON).with_name("airflow")
        done = subprocess.run([str(airflow), "db", "migrate"], env=airflow_env(home), capture_output=True,
                              text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        template.parent.mkdir(parents=True, exist_ok=True)
        partial = template.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(home / "airflow.db", partial)
        os.replace(partial, template)
    marker.touch()
    return time.monotonic() - started


def connection_json(url: str, **extra: Any) -> str:
    conn: dict[str, Any] = {"conn_type": "sora2", "host": url, "password": API_KEY}
    if extra:
        conn["extra"] = extra
    return json.dumps(conn)


def s3_connection_json(endpoint: str) -> str:
    """``aws_default`` on the moto server. moto completes a multipart upload by joining every part in memory
    (about 20 s for 1 GiB on this machine), longer than s3fs's 15 s read timeout: s3fs would then resend
    CompleteMultipartUpload while the first is still running and moto answers the repeat 500. Hence a longer
    read timeout (``config_kwargs``, passed by the Amazon provider to s3fs)."""
    extra = {"endpoint_url": endpoint, "region_name": "us-east-1", "config_kwargs": {"read_timeout": 600}}
    return json.dumps({"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra})


# --------------------------------------------------------------------------- processes we start


class Child:
    """A subprocess in its own process group, stopped by its PID (and its group) when done."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.log_path = log_path
        out = log_path.open("w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(argv, env=env or base_env(), stdout=subprocess.PIPE, stderr=out, text=True,
                                     start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout or ():
            self.lines.put(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything it left behind in its own group


class Emulator:
    """The Sora 2 emulator as a subprocess (``python -m sora2_provider.testing.emulator``): its memory, CPU and
    event loop stay out of the process being measured. Test controls are read over HTTP."""

    def __init__(self, *, time_scale: float, balance: float = 10_000.0, rate_limit_rpm: int | None = None,
                 rate_limit_window: float = 60.0, pad_output_to: int | None = None,
                 record_ttl_seconds: float | None = None, log_path: Path | None = None) -> None:
        argv = [PYTHON, "-m", "sora2_provider.testing.emulator", "--host", "127.0.0.1", "--port", "0",
                "--time-scale", repr(time_scale), "--api-key", API_KEY, "--balance", repr(balance)]
        if record_ttl_seconds is not None:
            argv += ["--record-ttl-seconds", repr(record_ttl_seconds)]
        if rate_limit_rpm is not None:
            argv += ["--rate-limit-rpm", str(rate_limit_rpm), "--rate-limit-window", repr(rate_limit_window)]
        if pad_output_to is not None:
            argv += ["--pad-output-to", str(pad_output_to)]
        self.child = Child(argv, log_path=log_path)
        try:
            self.url = self.child.lines.get(timeout=60).strip()
        except queue.Empty:
            self.child.stop()
            raise RuntimeError("the Sora 2 emulator did not print its URL within 60 s") from None
        if not self.url.startswith("http"):
            self.child.stop()
            raise RuntimeError(f"the Sora 2 emulator printed {self.url!r} instead of its URL")

    @property
    def pid(self) -> int:
        return self.child.pid

    def _get(self, path: str) -> Any:
        import requests

        answer = requests.get(self.url + path, timeout=60)
        answer.raise_for_status()
        return answer.json()

    def ledger(self) -> list[dict[str, Any]]:
        return self._get("/_emulator/ledger")["ledger"]

    def running_jobs_peak(self) -> int:
        return self._get("/_emulator/ledger")["running_jobs_peak"]

    def request_log(self) -> list[dict[str, Any]]:
        return self._get("/_emulator/requests")["requests"]

    def submit_and_wait(self, *, duration: int = 4, size: str = "720x1280", timeout: float = 600) -> str:
        """A finished v2 job's output URL, made with plain ``requests`` (no provider code involved)."""
        import requests

        headers = {"x-api-key": API_KEY}
        job = requests.post(f"{self.url}/v2/sora-2", json={"prompt": "bench", "duration": duration, "size": size},
                            headers=headers, timeout=60).json()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = requests.get(job["status_url"], headers=headers, timeout=60).json()["status"]
            if status == "COMPLETED":
                return requests.get(job["response_url"], headers=headers, timeout=60).json()["output"]
            time.sleep(0.05)
        raise TimeoutError(f"job {job['request_id']} did not complete")

    def stop(self) -> None:
        self.child.stop()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoS3:
    """A moto S3 server as a subprocess (its copy of the objects is not counted in the measured process),
    with the bucket ``sora2-bench``."""

    bucket = "sora2-bench"

    def __init__(self, log_path: Path | None = None) -> None:
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        self.child = Child([PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path=log_path)
        self._wait_ready(port)
        self.client().create_bucket(Bucket=self.bucket)

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.child.proc.poll() is not None:
                raise RuntimeError("the moto server exited at start")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
            time.sleep(0.2)
        raise RuntimeError("the moto server did not listen within 120 s")

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def size(self, key: str) -> int | None:
        try:
            return int(self.client().head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except Exception:
            return None

    def stop(self) -> None:
        self.child.stop()


# --------------------------------------------------------------------------- measuring


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    """The process's high-water RSS (``ru_maxrss``; KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RssSampler:
    """Polls this process's RSS every ``interval`` seconds in a thread and keeps the highest value.

    Combined with ``ru_maxrss`` (exact, but a lifetime high-water mark) by :meth:`peak_added`.
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def measure(self) -> Iterator[RssSampler]:
        import gc

        gc.collect()
        self.before = rss_bytes()
        self.hwm_before = max_rss_bytes()
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.hwm_after = max_rss_bytes()

    @property
    def peak_added(self) -> int:
        """Highest RSS during the block minus RSS before it (``ru_maxrss`` counts once it rose in the block)."""
        hwm = self.hwm_after if self.hwm_after > self.hwm_before else 0
        return max(self.peak, hwm) - self.before


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


# --------------------------------------------------------------------------- machine facts


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores_logical": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    with contextlib.suppress(Exception):
        import psutil

        info["cores_physical"] = psutil.cpu_count(logical=False)
    with contextlib.suppress(Exception):
        import importlib.util

        spec = importlib.util.find_spec("airflow")
        package = Path(spec.origin).parent if spec and spec.origin else None
        info["venv_has_bytecode"] = bool(package and any((package / "__pycache__").glob("*.pyc")))
    info["caller_sets_dont_write_bytecode"] = (
        "PYTHONDONTWRITEBYTECODE" in os.environ or "SORA2_BENCH_CALLER_DONT_WRITE_BYTECODE" in os.environ
    )
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        info["airflow"] = version("apache-airflow")
        info["task_sdk"] = version("apache-airflow-task-sdk")
        info["requests"] = version("requests")
        info["s3fs"] = version("s3fs")
        info["moto"] = version("moto")
    return info


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def busy_processes(limit: int = 5) -> list[str]:
    """The other processes using CPU right now (a one-second sample), to show how shared the machine was."""
    try:
        import psutil
    except ImportError:
        return []
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.cpu_percent(None)
    time.sleep(1.0)
    rows = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            command = " ".join(part for part in (proc.info["cmdline"] or [proc.info["name"]])[:4] if part.strip())
            rows.append((proc.cpu_percent(None), command.strip()))
    rows.sort(reverse=True)
    return [f"{cpu:.0f}% {cmd[:90]}" for cpu, cmd in rows[:limit] if cpu >= 5]


def workdir(prefix: str) -> Path:
    """A scratch directory on disk (not a tmpfs: 1 GiB files must not count as memory)."""
    base = Path(os.environ.get("SORA2_BENCH_WORKDIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A :func:`workdir` removed when the block succeeds, kept (with the emulator's and moto's logs) when not."""
    path = workdir(prefix)
    try:
        yield path
    except BaseException:
        log(f"kept {path} for inspection")
        raise
    remove(path)


# --------------------------------------------------------------------------- the operator outside a task runner


class StubTaskInstance:
    """The few task-instance fields the operator reads from its context (for runs outside a task runner)."""

    def __init__(self, dag_id: str, task_id: str, run_id: str, map_index: int = -1, try_number: int = 1) -> None:
        self.dag_id, self.task_id, self.run_id = dag_id, task_id, run_id
        self.map_index, self.try_number = map_index, try_number


def operator_context(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> dict[str, Any]:
    """A minimal context for ``execute``/``execute_complete`` called directly (no outlets, no templates)."""
    from airflow.sdk.bases.operator import ExecutorSafeguard

    ExecutorSafeguard.test_mode = True  # calling execute() outside the task runner is the point here
    return {"ti": StubTaskInstance(dag_id, task_id, run_id, map_index)}
