"""P1 worker-slot time: how long one deferrable generation holds a worker slot, vs ``deferrable=False``.

Real ``dag.test()`` runs (task runner in process, trigger run inline) of a one-task DAG against the emulator at
time scale 1/10: a sora-2 render takes 18 s, and ``poll_interval`` is the default 10 s scaled the same way (1 s).
The task is a subclass of the operator that only records how long ``execute`` and ``execute_complete`` ran
(and, inside them, ``Sora2Hook.download``); the slot is held for exactly those two calls, since the trigger
runs elsewhere (in the triggerer). Target: slot seconds <= 1% of the render time + the transfer time.

Also reported: the time ``run_task_in_process`` took for each try (the in-process task runner around
``execute``: context, XCom, state calls), which a real worker pays on top, plus a DAG parse and a process start
per try that ``dag.test()`` does not pay.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import (
    Emulator,
    Result,
    bench_main,
    connection_json,
    ensure_airflow_env,
    log,
    median,
    migrate_db,
    ratio,
    scratch_dir,
)

TITLE = "P1 worker-slot seconds of one generation: deferrable vs polling"
TYPICAL_RENDER_S = 180.0  # sora-2 (models.py)
DEFAULT_POLL_S = 10.0  # the operator's default poll_interval

DAG_FILE = '''
"""Benchmark P1: one generation, deferrable or polling, with timings recorded around execute/execute_complete."""
import json
import os
import time

import pendulum
from airflow.sdk import DAG, task

from sora2_provider.hooks import sora2 as hooks_module
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

TIMINGS = os.environ["SORA2_BENCH_TIMINGS"]


def record(phase, dag_id, started, seconds, **extra):
    with open(TIMINGS, "a") as handle:
        handle.write(json.dumps({"phase": phase, "dag_id": dag_id, "started": started, "seconds": seconds,
                                 **extra}) + "\\n")


if not getattr(hooks_module.Sora2Hook.download, "bench_timed", False):
    _download = hooks_module.Sora2Hook.download

    def download(self, url, destination):
        wall, started = time.time(), time.perf_counter()
        try:
            return _download(self, url, destination)
        finally:
            record("transfer", None, wall, time.perf_counter() - started)

    download.bench_timed = True
    hooks_module.Sora2Hook.download = download


class TimedGenerate(Sora2GenerateVideoOperator):
    def _timed(self, phase, call, context, *args):
        wall, started = time.time(), time.perf_counter()
        result, deferred = None, False
        try:
            result = call(context, *args)
            return result
        except BaseException as err:
            deferred = type(err).__name__ == "TaskDeferred"
            raise
        finally:
            request_id = result.get("request_id") if isinstance(result, dict) else None
            record(phase, self.dag_id, wall, time.perf_counter() - started, deferred=deferred,
                   request_id=request_id, try_number=context["ti"].try_number)

    def execute(self, context):
        return self._timed("execute", super().execute, context)

    def execute_complete(self, context, event=None):
        return self._timed("execute_complete", super().execute_complete, context, event)


for dag_id, deferrable in (("bench_p1_deferrable", True), ("bench_p1_polling", False)):
    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
        TimedGenerate(
            task_id="generate",
            prompt="A lighthouse at dusk, waves breaking on the rocks",
            output_path="file://" + os.environ["SORA2_BENCH_OUTPUT"] + "/" + dag_id + "/{{ ts_nodash }}.mp4",
            duration=4,
            size="1280x720",
            deferrable=deferrable,
            poll_interval=float(os.environ["SORA2_BENCH_POLL"]),
            overwrite=True,
        )
    globals()[dag_id] = dag

with DAG("bench_p1_warmup", schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as warmup:

    @task
    def noop():
        return None

    noop()
'''


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time-scale", type=float, help="emulator clock (default 0.1; quick 0.01)")
    parser.add_argument("--runs", type=int, help="deferrable runs (default 2; quick 1); one polling run")


def run(result: Result, args: argparse.Namespace) -> None:
    home = ensure_airflow_env()
    scale = args.time_scale or (0.01 if args.quick else 0.1)
    deferrable_runs = args.runs or (1 if args.quick else 2)
    poll = DEFAULT_POLL_S * scale
    render = TYPICAL_RENDER_S * scale
    result.params = {"time_scale": scale, "render_s": render, "poll_interval_s": poll,
                     "deferrable_runs": deferrable_runs, "polling_runs": 1, "video": "sora-2 4 s 1280x720"}
    migrated = migrate_db(home)
    if migrated:
        log(f"P1: airflow db migrate took {migrated:.1f} s")
    dag_path = home / "dags" / "bench_p1.py"
    with scratch_dir("sora2-bench-p1-") as scratch:
        timings = scratch / "timings.jsonl"
        os.environ.update(SORA2_BENCH_TIMINGS=str(timings), SORA2_BENCH_OUTPUT=str(scratch / "out"),
                          SORA2_BENCH_POLL=repr(poll))
        dag_path.write_text(DAG_FILE)
        try:
            runs, ledger = _runs(dag_path, scale, deferrable_runs, warm_up=not args.quick, scratch=scratch)
        finally:
            dag_path.unlink()
        records = _read_timings(timings)
    _report(result, runs, records, ledger, render)


def _runs(dag_path: Path, scale: float, deferrable_runs: int, *, warm_up: bool,
          scratch: Path) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    with Emulator(time_scale=scale, log_path=scratch / "emulator.log") as emulator:
        os.environ["AIRFLOW_CONN_SORA2_DEFAULT"] = connection_json(emulator.url)
        runner_times = _time_task_runner()
        if warm_up:  # the quick variant lets its first measured run pay this
            log("P1: warming up dag.test() with a no-op DAG (its first run starts the in-process API)")
            _dag_test(dag_path, "bench_p1_warmup")
        # The polling run goes first: it also loads the provider modules execute imports lazily, so the
        # deferrable runs measured after it are steady-state figures.
        order = ["bench_p1_polling"] + ["bench_p1_deferrable"] * deferrable_runs
        runs = []
        for dag_id in order:
            log(f"P1: dag.test() of {dag_id}")
            runner_times.clear()
            wall = time.monotonic()
            state = _dag_test(dag_path, dag_id)
            runs.append({"dag_id": dag_id, "state": state, "dag_test_s": round(time.monotonic() - wall, 2),
                         "task_runner_s": [round(t, 3) for t in runner_times]})
        ledger = {job["request_id"]: job for job in emulator.ledger()}
    return runs, ledger


def _time_task_runner() -> list[float]:
    """Record the duration of each ``run_task_in_process`` call (``dag.test()`` imports it at each call)."""
    from airflow.sdk.execution_time import supervisor

    durations: list[float] = []
    original = supervisor.run_task_in_process

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - started)

    supervisor.run_task_in_process = timed
    return durations


def _dag_test(path: Path, dag_id: str) -> str:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(path))
    if bag.import_errors:
        raise RuntimeError(f"the P1 DAG does not import: {bag.import_errors}")
    run = bag.get_dag(dag_id).test()
    return str(run.state)


def _read_timings(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _report(result: Result, runs: list[dict[str, Any]], timings: list[dict[str, Any]],
            ledger: dict[str, dict[str, Any]], render: float) -> None:
    """Group the timing records by DAG run (they come in order: phases, with the transfer inside one)."""
    per_run: list[dict[str, Any]] = []
    pending: dict[str, Any] = {"phases": [], "transfer": 0.0}
    for row in timings:
        if row["phase"] == "transfer":
            pending["transfer"] += row["seconds"]
            continue
        pending["phases"].append(row)
        pending["dag_id"] = row["dag_id"]
        if not row["deferred"]:  # the call that ended the task (the one after the trigger, or the only one)
            per_run.append(pending)
            pending = {"phases": [], "transfer": 0.0}
    if len(per_run) != len(runs):
        raise RuntimeError(f"expected {len(runs)} finished tasks, got timings for {len(per_run)}: {runs}")
    for run, timing in zip(runs, per_run, strict=True):
        run["slot_s"] = round(sum(p["seconds"] for p in timing["phases"]), 3)
        run["phases_s"] = {p["phase"]: round(p["seconds"], 3) for p in timing["phases"]}
        run["transfer_s"] = round(timing["transfer"], 4)
        request_id = next((p["request_id"] for p in timing["phases"] if p.get("request_id")), None)
        job = ledger.get(request_id or "", {})
        run["request_id"] = request_id
        run["render_s"] = round(job["finished_at"] - job["created_at"], 3) if job else None
        run["charged"] = job.get("charged")
    failed = [r for r in runs if r["state"] != "success"]
    result.figures = {"runs": runs}
    if failed:
        raise RuntimeError(f"dag.test() did not succeed: {failed}")

    deferred = [r for r in runs if r["dag_id"] == "bench_p1_deferrable"]
    polling = [r for r in runs if r["dag_id"] == "bench_p1_polling"]
    slot_d = median([r["slot_s"] for r in deferred])
    slot_p = median([r["slot_s"] for r in polling])
    transfer = median([r["transfer_s"] for r in deferred])
    rendered = median([r["render_s"] or render for r in deferred])
    budget = 0.01 * rendered + transfer
    result.figures.update(slot_deferrable_s=slot_d, slot_polling_s=slot_p, transfer_s=transfer, render_s=rendered,
                          budget_s=round(budget, 3))
    result.check(
        "P1 slot s, deferrable (execute + execute_complete)", round(slot_d, 3), "s",
        baseline_name="deferrable=False", baseline=round(slot_p, 2), ratio=ratio(slot_d, slot_p),
        target=f"<= 1% of {rendered:.0f} s render + transfer = {budget:.3f} s", passed=slot_d <= budget,
    )
    runner_d = median([sum(r["task_runner_s"]) for r in deferred])
    runner_p = median([sum(r["task_runner_s"]) for r in polling])
    result.check(
        "P1 slot s incl. in-process task runner (2 tries)", round(runner_d, 3), "s",
        baseline_name="deferrable=False", baseline=round(runner_p, 2), ratio=ratio(runner_d, runner_p),
    )
    result.notes.append(
        f"deferrable: execute {median([r['phases_s'].get('execute', 0) for r in deferred]):.3f} s + "
        f"execute_complete {median([r['phases_s'].get('execute_complete', 0) for r in deferred]):.3f} s "
        f"(of which transfer {transfer:.3f} s); render {rendered:.1f} s"
    )


if __name__ == "__main__":
    bench_main("p1_worker_slot", TITLE, run, add_args)
