"""``make demo``: run the ``sora2_daily_video`` example DAG through Airflow against a local Sora 2 emulator.

What it does, all on this machine and without paying anything:

1. starts the Segmind emulator (``python -m sora2_provider.testing.emulator``) as a subprocess with a fast clock;
2. creates a throwaway ``AIRFLOW_HOME`` with a SQLite metadata DB (``airflow db migrate``);
3. defines the ``sora2_default`` connection by the environment variable ``AIRFLOW_CONN_SORA2_DEFAULT``;
4. runs ``airflow dags test sora2_daily_video``: the credits sensor, then the generate task, which submits the
   job, *defers* (the trigger runs in-process under ``dags test``), resumes and streams the MP4 to storage,
   then the check task;
5. prints where the MP4 is, the XCom dict, and the log lines that show the deferral;
6. stops everything it started, by PID, deletes the throwaway ``AIRFLOW_HOME`` and exits 0.

The video stays in ``demo-output/<timestamp>-<random>/`` (see ``--output-dir``). Any ``AIRFLOW_*`` variable of the
calling shell is ignored, so the demo never touches another Airflow installation.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scripts.processes import LOCAL_API_KEY, Processes, start_emulator, without_airflow_settings

REPO = Path(__file__).resolve().parent.parent
DAG_ID = "sora2_daily_video"
BIN = Path(sys.executable).parent

#: Log lines worth showing, as (pattern, label).
HIGHLIGHTS = [
    (r"Segmind balance: .*", "credits"),
    (r"Submitted sora-2 job .*estimated cost.*", "submit"),
    (r"Deferring while job .*", "defer"),
    (r"Pausing task as DEFERRED\.", "defer"),
    (r"\[DAG TEST\] running trigger in line", "trigger"),
    (r"Job \S+ is (QUEUED|PROCESSING|COMPLETED) \(\d+ s\)", "trigger"),
    (r"\[DAG TEST\] Trigger completed", "trigger"),
    (r"Downloaded .*", "store"),
    (r"Stored .*", "store"),
    (r"Verified .*", "check"),
    (r"DagRun Finished: dag_id=\S+", "run"),
]
#: The logger name and key=value fields structlog appends to a console line.
LOG_SUFFIX = re.compile(r"\s+\[[\w.]+\](\s+\w+=\S+)*\s*$")
#: What must appear in the ``dags test`` output for the demo to count as a success with deferral.
REQUIRED = {
    "the generate task deferred": r"Pausing task as DEFERRED\.",
    "the trigger ran": r"\[DAG TEST\] Trigger completed",
    "the video was stored": r"Stored file://\S+ \(\d+ bytes",
    "the check task verified it": r"Verified file://",
}


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="sora2-demo-"))
        self.airflow_home = self.workdir / "airflow"
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        base = (args.output_dir or REPO / "demo-output").resolve()
        base.mkdir(parents=True, exist_ok=True)
        # A new folder per run: an earlier video at the same place would be reused, with nothing to generate.
        self.output_dir = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=base))
        self.processes = Processes(self.workdir)

    # -- helpers ------------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        print(f"[demo {time.monotonic() - self.started:5.1f}s] {message}", flush=True)

    def airflow_env(self, emulator_url: str) -> dict[str, str]:
        """The calling environment without any AIRFLOW_* setting, plus the demo's own."""
        env = without_airflow_settings()
        connection = {"conn_type": "sora2", "host": emulator_url, "password": LOCAL_API_KEY}
        env.update(
            AIRFLOW_HOME=str(self.airflow_home),
            AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "example_dags"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{self.airflow_home / 'airflow.db'}",
            AIRFLOW_CONN_SORA2_DEFAULT=json.dumps(connection),
            AIRFLOW_VAR_SORA2_OUTPUT_ROOT=self.output_dir.as_uri(),
            SORA2_POLL_INTERVAL=str(self.args.poll_interval),
            PYTHONDONTWRITEBYTECODE="1",
        )
        return env

    def run(self, name: str, argv: list[str], env: dict[str, str], timeout: float) -> str:
        """Run a command to completion, its output into ``<workdir>/<name>.log``; fail with the log's tail on error."""
        proc = self.processes.start(name, argv, env, service=False)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{' '.join(argv[:3])} took more than {timeout:.0f} s; log: {self.log(name)}") from None
        text = self.log(name).read_text(errors="replace")
        if code != 0:
            tail = "\n".join(text.splitlines()[-40:])
            command = " ".join(argv[:3])
            raise SystemExit(f"{command} failed with exit code {code}:\n{tail}\n(full log: {self.log(name)})")
        return text

    def log(self, name: str) -> Path:
        return self.processes.log_dir / f"{name}.log"

    # -- steps --------------------------------------------------------------------------------------

    def start_emulator(self) -> str:
        url = start_emulator(self.processes, time_scale=self.args.time_scale, balance=25)
        render = 180 * self.args.time_scale
        pid = self.processes.pid("emulator")
        self.say(f"Sora 2 emulator (PID {pid}) at {url}: a 180 s render takes {render:.1f} s here")
        return url

    def migrate(self, env: dict[str, str]) -> None:
        self.say(f"Throwaway AIRFLOW_HOME {self.airflow_home} (SQLite); running `airflow db migrate`")
        self.run("db-migrate", [str(BIN / "airflow"), "db", "migrate"], env, timeout=300)

    def dags_test(self, env: dict[str, str]) -> str:
        self.say(f"Running `airflow dags test {DAG_ID}` (sensor -> generate, deferred -> check)")
        log = self.output_dir / "airflow-dags-test.log"
        try:
            text = self.run("dags-test", [str(BIN / "airflow"), "dags", "test", DAG_ID], env, timeout=600)
        finally:
            shutil.copyfile(self.log("dags-test"), log)  # kept beside the video, after the workdir is deleted
        for line in text.splitlines():
            for pattern, label in HIGHLIGHTS:
                if match := re.search(pattern, line):
                    stamp = re.match(r"\d{4}-\d\d-\d\dT(\d\d:\d\d:\d\d)", line)
                    message = LOG_SUFFIX.sub("", match.group(0)) if label != "run" else _run_summary(line)
                    print(f"    {stamp.group(1) if stamp else '':8} {label:>7} | {message}", flush=True)
                    break
        missing = [what for what, pattern in REQUIRED.items() if not re.search(pattern, text)]
        if missing:
            raise SystemExit(f"the run did not show that {', '.join(missing)}; full log: {log}")
        return text

    def read_xcom(self, env: dict[str, str]) -> dict[str, Any]:
        """The generate task's XCom dict, read from the throwaway metadata DB by Airflow itself."""
        os.environ.update({k: v for k, v in env.items() if k.startswith("AIRFLOW")})
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        with create_session() as session:
            row = (
                session.query(XComModel)
                .filter_by(dag_id=DAG_ID, task_id="generate_video", key="return_value", map_index=-1)
                .order_by(XComModel.timestamp.desc())
                .first()
            )
            if row is None:
                raise SystemExit("the generate task stored no XCom")
            return XComModel.deserialize_value(row)

    def report(self, xcom: dict[str, Any]) -> None:
        uri = xcom["uri"]
        path = Path(uri.removeprefix("file://"))
        with path.open("rb") as handle:
            header = handle.read(8)
        if header[4:8] != b"ftyp" or path.stat().st_size != xcom["bytes"]:
            raise SystemExit(f"{path} is not the MP4 the task stored")
        print("\nXCom of generate_video:")
        print(json.dumps(xcom, indent=2, sort_keys=True))
        print(f"\nThe MP4 ({xcom['bytes']} bytes, {xcom['size']}, {xcom['duration']} s) is at:\n    {path}\n")

    # -- lifecycle ----------------------------------------------------------------------------------

    def stop_children(self) -> None:
        """Stop every process this demo started, by PID (and whatever is left in their sessions)."""
        self.processes.stop(grace=10)
        if left := self.processes.leftovers():
            raise SystemExit(f"processes started by the demo are still running: {left}")

    def main(self) -> int:
        try:
            url = self.start_emulator()
            env = self.airflow_env(url)
            self.migrate(env)
            self.dags_test(env)
            xcom = self.read_xcom(env)
        finally:
            self.stop_children()
            if self.args.keep_airflow_home:
                self.say(f"Kept AIRFLOW_HOME {self.airflow_home}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        self.report(xcom)
        self.say(f"Done; nothing left running. Delete {self.output_dir} when you no longer need the video.")
        return 0


def _run_summary(line: str) -> str:
    fields = dict(re.findall(r"(\w+)=([^,\s]+)", line))
    seconds = float(fields.get("run_duration", "nan"))
    return f"DAG run {fields.get('run_id')} finished: {fields.get('state')} in {seconds:.0f} s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-scale", type=float, default=0.02, help="emulator clock (default 0.02: 180 s -> 3.6 s)")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="SORA2_POLL_INTERVAL, seconds (default 0.5)")
    parser.add_argument("--output-dir", type=Path, default=None, help="where the video goes (default demo-output/)")
    parser.add_argument("--keep-airflow-home", action="store_true", help="keep the throwaway AIRFLOW_HOME to inspect")
    return parser.parse_args(argv)


if __name__ == "__main__":
    demo = Demo(parse_args())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in `finally` on SIGTERM too
    try:
        sys.exit(demo.main())
    except KeyboardInterrupt:
        sys.exit(130)
