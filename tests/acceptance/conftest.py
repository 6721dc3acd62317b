"""Fixtures of the acceptance suite: the fault matrix runs once per session, every module reads its results.

The matrix is one ``dag.test()`` of one DAG holding every in-process row, plus the worker-kill row (a real
``airflow dags test`` subprocess, started first so it warms up while the matrix runs). What the session saw
is collected in :class:`Results`; with ``SORA2_ACCEPTANCE_RESULTS=<file>`` it is written there as JSON, from
which ``make acceptance-report`` renders ``tests/acceptance/REPORT.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance import matrix, worker_kill
from tests.acceptance.console import SessionConsole

RESULTS_ENV = "SORA2_ACCEPTANCE_RESULTS"


@dataclass
class Results:
    """What the acceptance session observed, written as JSON for the report."""

    started: float = field(default_factory=time.monotonic)
    matrix: list[dict[str, Any]] = field(default_factory=list)
    bad_input: list[dict[str, Any]] = field(default_factory=list)
    secrets: dict[str, Any] = field(default_factory=dict)
    storage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "matrix": self.matrix,
            "bad_input": self.bad_input,
            "secrets": self.secrets,
            "storage": self.storage,
            "timings": {**self.timings, "suite_seconds": round(time.monotonic() - self.started, 1)},
        }


@pytest.fixture(scope="session")
def acceptance_results() -> Iterator[Results]:
    results = Results()
    yield results
    target = os.environ.get(RESULTS_ENV)
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps(results.as_json(), indent=1, sort_keys=True) + "\n")


@dataclass
class MatrixRun:
    rows: dict[str, dict[str, Any]]
    console: str
    workdir: Path
    dag_run: Any
    worker_kill: dict[str, Any]
    http: list[dict[str, Any]]  # every HTTP request this process sent: method, url, whether it carried x-api-key


@contextlib.contextmanager
def recorded_http() -> Iterator[list[dict[str, Any]]]:
    """Record (without changing) every request ``requests`` sends from this process."""
    import requests.adapters

    sent: list[dict[str, Any]] = []
    real_send = requests.adapters.HTTPAdapter.send

    def send(adapter: Any, prepared: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append({"method": prepared.method, "url": prepared.url, "keyed": "x-api-key" in prepared.headers})
        return real_send(adapter, prepared, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests.adapters.HTTPAdapter, "send", send)
        yield sent


@pytest.fixture(scope="session")
def matrix_run(
    request: pytest.FixtureRequest, airflow_db: Path, s3_server: str, tmp_path_factory: pytest.TempPathFactory,
    acceptance_results: Results,
) -> MatrixRun:
    """Run every matrix row once: the worker-kill subprocess in the background, the rest in one ``dag.test()``."""
    workdir = tmp_path_factory.mktemp("matrix")
    (workdir / "journals").mkdir()
    console = SessionConsole(request.config)
    console.read()
    runner = matrix.DagRunner()
    started = time.monotonic()
    kill_row = next(row for row in matrix.ROWS if row.id == "worker_killed")
    aws = {"conn_type": "aws", "login": "testing", "password": "testing"}
    aws["extra"] = {"endpoint_url": s3_server, "region_name": "us-east-1"}
    with recorded_http() as http, worker_kill.WorkerKill(kill_row, workdir) as killer, \
            pytest.MonkeyPatch.context() as patch:
        patch.setenv(f"AIRFLOW_CONN_{matrix.S3_CONN.upper()}", json.dumps(aws))
        killer.start()
        with matrix.row_emulators(matrix.IN_PROCESS_ROWS) as emulators:
            source = matrix.dag_source(matrix.DAG_ID, matrix.IN_PROCESS_ROWS, workdir)
            dag_run = runner.run(matrix.DAG_ID, source)
            acceptance_results.timings["matrix_dag_test_seconds"] = round(time.monotonic() - started, 1)
            text = console.read()
            rows = {
                row.id: matrix.observe(row, dag_run, emulators[row.id], workdir, text) for row in matrix.IN_PROCESS_ROWS
            }
        resumed = time.monotonic()
        rows[kill_row.id] = killer.finish(runner, console)
        acceptance_results.timings["worker_kill_resume_seconds"] = round(time.monotonic() - resumed, 1)
    acceptance_results.timings["matrix_seconds"] = round(time.monotonic() - started, 1)
    acceptance_results.matrix = [rows[row.id] for row in matrix.ROWS]
    return MatrixRun(
        rows=rows, console=console.text, workdir=workdir, dag_run=dag_run, worker_kill=rows[kill_row.id], http=http
    )
