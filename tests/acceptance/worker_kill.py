"""The worker-kill row: a real ``airflow dags test`` process SIGKILLed while it polls, then the run resumed.

The killed process runs against a copy of the session's metadata DB (SQLite takes one writer at a time, and the
rest of the matrix runs in this process meanwhile), in an ``AIRFLOW_HOME`` inside the session's one so the
session-wide API-key scan covers its logs. Once the emulator has answered three status polls of its job, the
process group is killed by its PID. The same DAG run (same dag id, task id and run id, so the same job
record beside the output) is then run again in this process with ``dag.test()``: it must resume the job the
killed try paid for, with no second submit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.acceptance import matrix
from tests.acceptance.journal import describe_output, read_journal
from tests.support import TEST_API_KEY, TEST_BALANCE, connection_json

DAG_ID = "acceptance_worker_kill"
LOGICAL_DATE = datetime.fromisoformat("2025-01-02T00:00:00+00:00")
REPO = Path(__file__).resolve().parents[2]
KILL_AFTER_POLLS = 3
START_DEADLINE = 240.0  # seconds for the subprocess to import Airflow, parse, submit and poll


class WorkerKill:
    def __init__(self, row: matrix.Row, workdir: Path) -> None:
        self.row = row
        self.workdir = workdir
        self.home = Path(os.environ["AIRFLOW_HOME"]) / "acceptance-worker"
        self.proc: subprocess.Popen[bytes] | None = None
        self.watcher: threading.Thread | None = None
        self.kill: dict[str, Any] = {}
        self.emulator: Any = None
        self.variable = f"AIRFLOW_CONN_{row.conn_id.upper()}"

    def __enter__(self) -> WorkerKill:
        from sora2_provider.testing.emulator import Sora2Emulator

        options = {"time_scale": matrix.TIME_SCALE, **self.row.emulator_options}
        self.emulator = Sora2Emulator(api_keys={TEST_API_KEY: TEST_BALANCE}, **options).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        os.environ.pop(self.variable, None)
        self.emulator.stop()

    @property
    def source(self) -> str:
        return matrix.dag_source(DAG_ID, (self.row,), self.workdir)

    @property
    def output_log(self) -> Path:
        return self.home / "dags-test.out"

    def start(self) -> None:
        """Start ``airflow dags test`` on a copy of the metadata DB, and a thread that kills it mid-poll."""
        dags = self.home / "dags"
        dags.mkdir(parents=True, exist_ok=True)
        (dags / f"{DAG_ID}.py").write_text(self.source)
        database = self.home / "airflow.db"
        source = sqlite3.connect(f"file:{matrix.metadata_db()}?mode=ro", uri=True)  # fails rather than create one
        copy = sqlite3.connect(database)
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()
        connection = connection_json(self.emulator.url, self.row.api_key, **self.row.conn_extra)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{database}",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            **{self.variable: connection},
        )
        airflow = Path(sys.executable).with_name("airflow")
        with self.output_log.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(airflow), "dags", "test", DAG_ID, LOGICAL_DATE.isoformat()],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed by its PID below
            )
        self.watcher = threading.Thread(target=self._kill_mid_poll, name="worker-kill", daemon=True)
        self.watcher.start()

    def _kill_mid_poll(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline and self.proc.poll() is None:
            polls = [e for e in self.emulator.request_log if e["endpoint"] == "status"]
            jobs = [job["status"] for job in self.emulator.ledger]
            if len(polls) >= KILL_AFTER_POLLS and jobs == ["PROCESSING"]:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.kill = {"status_polls": len(polls), "job_status_at_kill": jobs}
                return
            time.sleep(0.02)  # a polling loop with a deadline
        self.kill = {"error": f"not killed: exit code {self.proc.poll()} (see {self.output_log})"}

    def finish(self, runner: Any, console: Any) -> dict[str, Any]:
        """Wait for the kill, look at what it left, rerun the same DAG run in this process, and observe it."""
        assert self.proc is not None and self.watcher is not None
        self.watcher.join(timeout=START_DEADLINE + 10)
        returncode = self.proc.wait(timeout=30)
        run_id = self._killed_run_id()
        left = describe_output(matrix.output_uri(self.workdir, self.row))
        records = matrix.leftovers(self.workdir, self.row)
        os.environ[self.variable] = connection_json(self.emulator.url, self.row.api_key, **self.row.conn_extra)
        run_after = datetime.fromisoformat(run_id.split("__", 1)[1]) if run_id else None
        dag_run = runner.run(DAG_ID, self.source, logical_date=LOGICAL_DATE, run_after=run_after)
        observed = matrix.observe(self.row, dag_run, self.emulator, self.workdir, console.read())
        events = read_journal(matrix.journal_path(self.workdir, self.row))
        killed_tries = sum(1 for e in events if e["event"] == "start" and e["pid"] != os.getpid())
        observed.update(
            tries=observed["tries"] + 1,
            kill={
                **self.kill,
                "returncode": returncode,
                "killed_run_id": run_id,
                "resumed_run_id": dag_run.run_id,
                "output_after_kill": left,
                "records_after_kill": records,
                "killed_process_tries": killed_tries,
                "log": str(self.output_log),
            },
        )
        observed["note"] = "no error line: the process died by SIGKILL mid-poll; the rerun resumed the job"
        return observed

    def _killed_run_id(self) -> str | None:
        with sqlite3.connect(self.home / "airflow.db") as db:
            row = db.execute("SELECT run_id FROM dag_run WHERE dag_id = ?", (DAG_ID,)).fetchone()
        return row[0] if row else None

