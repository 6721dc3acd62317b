"""``python -m bench``: run the benchmarks P1..P6, print the table, write ``results.json`` and ``RESULTS.md``.

Each benchmark runs in a fresh interpreter (``python -m bench.pN_...``) against a throwaway Airflow home and
its own emulator (and moto server); the runner collects their JSON. ``--quick`` runs the smaller variant of
each (figures only show the benchmarks still work: nothing is tuned to be meaningful there).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.common import (
    PYCACHE,
    PYTHON,
    REPO,
    airflow_env,
    busy_processes,
    load_average,
    machine_info,
    migrate_db,
    reexec_with_bytecode,
    remove,
    workdir,
)
from bench.explain import EXPLANATIONS

BENCH_DIR = Path(__file__).resolve().parent
BENCHMARKS = {
    "P1": "p1_worker_slot",
    "P2": "p2_memory",
    "P3": "p3_throughput",
    "P4": "p4_import",
    "P5": "p5_rate_limit",
    "P5b": "p5b_free_plan",
    "P6": "p6_triggerer",
}
#: Longest first, so that ``--jobs 2`` finishes soonest.
QUICK_ORDER = ("P1", "P6", "P5", "P5b", "P2", "P3", "P4")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the smaller variant of each benchmark")
    parser.add_argument("--only", help="comma-separated ids, e.g. P2,P3 (default: all)")
    parser.add_argument("--out", type=Path, help="where results.json and RESULTS.md go (default bench/ for a full "
                                                  "run of all six, else bench/quick/ or bench/partial/)")
    parser.add_argument("--jobs", type=int, help="benchmarks run at once (default 1; quick 2). More than 1 "
                                                 "makes them disturb each other: fine for --quick only")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, Airflow home)")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: rewrite RESULTS.md from the results.json in --out (explain.py edits)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        reexec_with_bytecode("bench")
    args = parse_args(argv)
    by_lower = {bench_id.lower(): bench_id for bench_id in BENCHMARKS}
    ids = [by_lower.get(i.strip().lower(), i.strip()) for i in args.only.split(",")] if args.only else list(BENCHMARKS)
    unknown = [i for i in ids if i not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    order = [i for i in QUICK_ORDER if i in ids] if args.quick else ids
    # Only a full run of all six replaces the committed bench/RESULTS.md.
    out = args.out or BENCH_DIR / ("quick" if args.quick else "partial" if ids != list(BENCHMARKS) else "")
    if args.render:
        run = json.loads((out / "results.json").read_text())
        (out / "RESULTS.md").write_text(results_markdown(run, markdown_table(run["results"])))
        _say(f"rewrote {out / 'RESULTS.md'} from {out / 'results.json'} ({run['date']})")
        return 0
    jobs = args.jobs or (2 if args.quick else 1)
    started, date = time.monotonic(), datetime.now(timezone.utc)
    scratch = workdir("sora2-bench-")
    home = scratch / "airflow"
    (home / "dags").mkdir(parents=True)
    PYCACHE.mkdir(parents=True, exist_ok=True)
    _say(f"{'quick' if args.quick else 'full'} run of {', '.join(ids)}; scratch {scratch}")
    run: dict[str, Any] = {
        "date": date.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "command": "python -m bench" + (" --quick" if args.quick else ""),
        "machine": machine_info(),
        "load_average_start": load_average(),
        "busy_processes_start": busy_processes(),
        "jobs": jobs,
    }
    if "P1" in ids:
        run["db_migrate_s"] = round(migrate_db(home), 1)
    results: dict[str, dict[str, Any]] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(_run_one, bench_id, args.quick, scratch, home): bench_id for bench_id in order}
        for future in concurrent.futures.as_completed(futures):
            bench_id = futures[future]
            results[bench_id] = future.result()
            _say(f"{bench_id} done in {results[bench_id]['seconds']:.0f} s"
                 + (f": ERROR {results[bench_id]['error']}" if results[bench_id].get("error") else ""))
    run["load_average_end"] = load_average()
    run["seconds"] = round(time.monotonic() - started, 1)
    run["results"] = [results[i] for i in ids]
    table = markdown_table(run["results"])
    print("\n" + table + "\n", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(run, indent=1, default=str) + "\n")
    (out / "RESULTS.md").write_text(results_markdown(run, table))
    errors = [r["id"] for r in run["results"] if r.get("error")]
    _say(f"wrote {out / 'results.json'} and {out / 'RESULTS.md'} in {run['seconds']:.0f} s"
         + (f"; errors in {errors}, logs kept in {scratch}" if errors else ""))
    if not errors and not args.keep:
        remove(scratch)
    return 1 if errors else 0


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run_one(bench_id: str, quick: bool, scratch: Path, home: Path) -> dict[str, Any]:
    module = BENCHMARKS[bench_id]
    out, log_path = scratch / f"{bench_id}.json", scratch / f"{bench_id}.log"
    env = airflow_env(home)
    env.update(SORA2_BENCH_AIRFLOW_HOME=str(home), SORA2_BENCH_WORKDIR=str(scratch / "work"))
    argv = [PYTHON, "-m", f"bench.{module}", "--json", str(out)] + (["--quick"] if quick else [])
    _say(f"{bench_id} ({module}) started")
    started = time.monotonic()
    with log_path.open("w") as log:
        try:
            code = subprocess.run(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=600 if quick else 1200, check=False).returncode
        except subprocess.TimeoutExpired:
            code = -1
    if out.exists():
        result = json.loads(out.read_text())
    else:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        result = {"id": bench_id, "title": module, "quick": quick, "checks": [], "figures": {}, "notes": [],
                  "params": {}, "error": f"exit code {code} without a result; log tail:\n{tail}"}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


# --------------------------------------------------------------------------- rendering


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"
    return str(value)


def markdown_table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| Benchmark | Result | Baseline (same run) | Ratio | Target | Status |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        if result.get("error"):
            first = result["error"].splitlines()[0]
            lines.append(f"| {result['id']} {result.get('title', '')} | - | - | - | - | ERROR: {first[:120]} |")
            continue
        for check in result["checks"]:
            value = f"{_number(check['value'])} {check['unit']}"
            baseline = (f"{_number(check['baseline'])} ({check['baseline_name']})"
                        if check.get("baseline") is not None else "-")
            ratio_text = f"{check['ratio']:.3g}x" if check.get("ratio") is not None else "-"
            lines.append(f"| {check['name']} | {value} | {baseline} | {ratio_text} | {check['target'] or '-'} | "
                         f"{check['status']} |")
    return "\n".join(lines)


def results_markdown(run: dict[str, Any], table: str) -> str:
    machine = run["machine"]
    quick = run["mode"] == "quick"
    parts = [
        "# Benchmarks" + (" (quick variant: figures not meaningful)" if quick else ""),
        "",
        f"`make bench{'-quick' if quick else ''}` (`{run['command']}`) on {run['date']}, "
        f"{run['seconds'] / 60:.1f} minutes. Issue #8. Every row is measured against a baseline taken in the same "
        "run, so a noisy machine moves both; absolute figures are in `results.json`.",
        "",
        "**Machine**: "
        f"{machine.get('cores_logical')} logical cores ({machine.get('cores_physical')} physical), "
        f"{machine.get('cpu_model', '?')}, {machine.get('memory_gib', '?')} GiB RAM; {machine.get('platform')}; "
        f"Python {machine.get('python')}, Airflow {machine.get('airflow')} (task SDK {machine.get('task_sdk')}), "
        f"requests {machine.get('requests')}, s3fs {machine.get('s3fs')}, moto {machine.get('moto')}. "
        f"Venv bytecode (.pyc): {_yes_no(machine.get('venv_has_bytecode'))}; PYTHONDONTWRITEBYTECODE set by the "
        f"caller: {_yes_no(machine.get('caller_sets_dont_write_bytecode'))} (benchmark interpreters cache their "
        "bytecode anyway, see the end).",
        "",
        "**Load**: the machine is shared; other engineers ran tests at the same time. Load average "
        f"{run['load_average_start']} at the start, {run['load_average_end']} at the end (1/5/15 min, "
        f"{machine.get('cores_logical')} cores)."
        + (f" Busiest other processes at the start: {'; '.join(run['busy_processes_start'])}."
           if run.get("busy_processes_start") else ""),
        "",
        table,
        "",
    ]
    misses = [c for r in run["results"] for c in r["checks"] if c["status"] == "MISS"]
    if misses:
        parts += ["## Missed targets: why, and what would fix them", ""]
        for check in misses:
            text = next((v for k, v in EXPLANATIONS.items() if check["name"].startswith(k)), None)
            parts.append(f"- **{check['name']}** ({_number(check['value'])} {check['unit']}, target "
                         f"{check['target']}): {text or 'no analysis recorded yet.'}")
        parts.append("")
    parts += ["## How each benchmark measures", ""]
    for result in run["results"]:
        module = BENCHMARKS.get(result["id"])
        doc = _module_doc(module) if module else ""
        parts += [f"### {result['id']} ({result.get('seconds', 0):.0f} s)", "", doc, ""]
        if result.get("params"):
            parts.append("Parameters: " + ", ".join(f"{k}={v}" for k, v in result["params"].items()) + ".")
            parts.append("")
        for note in result.get("notes", []):
            parts.append(f"- {note}")
        if result.get("error"):
            parts += ["", "```", result["error"], "```"]
        parts.append("")
    parts += [
        "## Running them",
        "",
        "`make bench` (all six, full size: under 15 minutes on 2 cores) or `make bench-quick` (the small variant, "
        "also run by `make test` through `tests/bench/test_bench_quick.py`); one benchmark alone: "
        "`make bench BENCH_ARGS=--only=P3` (written to `bench/partial/`) or `.venv/bin/python -m "
        "bench.p3_throughput --quick` (prints its JSON). Quick and partial results are not committed.",
        "",
        "Benchmark interpreters cache bytecode under `~/.cache/sora2-bench/pycache` (`PYTHONPYCACHEPREFIX`), "
        "so that none of them compiles Airflow where the venv holds no `.pyc` and `PYTHONDONTWRITEBYTECODE` is "
        "set; the migrated Airflow DB used by P1 is cached there too.",
        "",
    ]
    return "\n".join(parts)


def _yes_no(value: Any) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _module_doc(module: str) -> str:
    import ast

    source = (BENCH_DIR / f"{module}.py").read_text()
    return (ast.get_docstring(ast.parse(source)) or "").strip()


if __name__ == "__main__":
    sys.exit(main())
