"""Shared fixtures: one throwaway AIRFLOW_HOME per session, the emulator over real HTTP, a local S3 API,
a runner for real ``dag.test()`` runs, and a guard that fails any test leaking the API key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Airflow reads its configuration at import: set it before anything imports airflow.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="sora2-tests-"))
AIRFLOW_HOME = _SESSION_DIR / "airflow"
DAGS_FOLDER = AIRFLOW_HOME / "dags"
DAGS_FOLDER.mkdir(parents=True)
os.environ["AIRFLOW_HOME"] = str(AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_FOLDER)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
# A DAG file's first import loads the provider and Airflow's authoring modules: 30 s (the default) is not enough on a
# 2-core machine running five Airflow lines' suites at once (seen on 3.0.6 with a load of 13).
os.environ["AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"] = "180"
os.environ.setdefault("SORA2_EMULATOR_CACHE", str(Path.home() / ".cache" / "sora2-emulator"))

from tests.support import MASK_REGISTRATION, TEST_API_KEY, TEST_BALANCE, connection_json, dag_bag  # noqa: E402


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """No task log written during the session may contain the API key."""
    leaks = [p for p in AIRFLOW_HOME.rglob("*") if p.is_file() and _file_contains(p, TEST_API_KEY)]
    if leaks:
        session.exitstatus = 1
        sys.stderr.write(f"\nAPI key leaked into files: {[str(p) for p in leaks]}\n")


def _file_contains(path: Path, needle: str) -> bool:
    if path.suffix in {".db", ".db-journal", ".db-wal"}:
        return False  # the metadata DB is scanned by the secrets tests through SQL
    try:
        return needle in path.read_text(errors="ignore")
    except OSError:
        return False


class Console:
    """Everything the test process printed (task logs of ``dag.test()`` included), read as the test goes."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self._capfd = capfd
        self.history = ""

    def read(self) -> str:
        """What was printed since the last read; it is echoed back so pytest still shows it on failure."""
        out, err = self._capfd.readouterr()
        sys.stdout.write(out)
        sys.stderr.write(err)
        self.history += out + err
        return out + err


@pytest.fixture
def console(capfd: pytest.CaptureFixture[str]) -> Console:
    return Console(capfd)


@pytest.fixture(autouse=True)
def no_api_key_leak(caplog: pytest.LogCaptureFixture, console: Console) -> Iterator[None]:
    """Fail any test whose log records or console output contain the API key."""
    caplog.set_level("DEBUG")
    yield
    console.read()
    for where, text in (("log records", caplog.text), ("console output", console.history)):
        text = text.replace(MASK_REGISTRATION, "MaskSecret(value=<the key being registered>")
        assert TEST_API_KEY not in text, f"the API key leaked into {where}"


@pytest.fixture(autouse=True)
def fresh_call_budgets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no call budget learned: budgets are per connection and host, and an emulator may get
    the port an earlier test's emulator had (whose budget learned that emulator's rate limit, on its clock)."""
    from sora2_provider.hooks import _call_budget

    monkeypatch.setattr(_call_budget, "_BUDGETS", {})


@pytest.fixture(autouse=True)
def fresh_render_times() -> Iterator[None]:
    """Each test starts with a process that has seen no Sora 2 job complete (the history watcher learns render
    times per process: one test's emulator clock must not set another's schedule)."""
    from sora2_provider.triggers._render_times import RENDER_TIMES

    RENDER_TIMES.clear()
    yield
    RENDER_TIMES.clear()


@pytest.fixture
def emulator() -> Iterator[Any]:
    """A fresh Segmind emulator on 127.0.0.1 with a fast clock (180 s render -> about 0.9 s).

    The 1-hour v2 record keeps its real hour: scaled it would be 18 s, and on a loaded machine ``dag.test()`` can take
    a minute between a trigger firing and the resumed task reading the result (seen on Airflow 3.2), which then
    finds the record expired and takes the request-history path. Tests of expiry call ``emulator.expire()``."""
    from sora2_provider.testing.emulator import Sora2Emulator

    time_scale = 0.005
    with Sora2Emulator(
        time_scale=time_scale, api_keys={TEST_API_KEY: TEST_BALANCE}, record_ttl_seconds=3600 / time_scale
    ) as emu:
        yield emu


@pytest.fixture
def sora2_conn(emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``sora2_default`` pointing at the emulator, defined by environment variable."""
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emulator.url))
    return emulator


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Migrate the session's SQLite metadata DB once (about 10 s)."""
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A local S3 API (moto server) on 127.0.0.1 with the bucket ``sora2-test``; yields its endpoint URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        os.environ.setdefault(key, value)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="sora2-test")
    yield endpoint
    server.stop()


@pytest.fixture
def aws_conn(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``aws_default`` pointing at the local S3 API."""
    extra = {"endpoint_url": s3_server, "region_name": "us-east-1"}
    conn = {"conn_type": "aws", "login": "testing", "password": "testing", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(conn))
    return s3_server


class DagRunner:
    """Writes a DAG file into the session's DAGs folder and runs it with a real ``dag.test()``."""

    def __init__(self, dags_folder: Path) -> None:
        self.dags_folder = dags_folder

    def write(self, dag_id: str, source: str) -> Path:
        path = self.dags_folder / f"{dag_id}.py"
        path.write_text(textwrap.dedent(source))
        return path

    def run(self, dag_id: str, source: str, **test_kwargs: Any) -> Any:
        """Write the DAG file, run it with ``dag.test()`` and return its DagRun.

        The file is removed afterwards: ``dag.test()`` re-parses the whole DAGs folder on every call.
        Pass the same ``logical_date`` twice to clear and rerun the same run."""
        path = self.write(dag_id, source)
        try:
            bag = dag_bag(path)
            assert not bag.import_errors, bag.import_errors
            return bag.get_dag(dag_id).test(**test_kwargs)
        finally:
            path.unlink()


@pytest.fixture
def dag_runner(airflow_db: Path) -> DagRunner:
    return DagRunner(DAGS_FOLDER)
