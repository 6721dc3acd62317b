"""P4 parse cost: import time our modules add over ``airflow.sdk``, vs the HTTP provider's operator.

Every sample is a fresh interpreter that imports ``airflow.sdk`` (and takes ``DAG``, ``BaseOperator`` from it,
as any DAG file does), then the module under test, timing both with ``perf_counter``. The three
configurations (operator, sensor, HTTP operator) are interleaved round by round so machine noise hits them
alike; the median of the samples is reported. Bytecode is cached (``PYTHONPYCACHEPREFIX``), as in any
pip-installed deployment; one warm-up interpreter fills that cache first. Samples record whether
``requests`` got imported; ``-X importtime`` shows which imports cost most (one extra run each).

Also, for context (no target), timed inside the operator's samples: the sensor imported after the operator
(a DAG using both) and then what ``execute`` imports on every try (hook, state, storage, trigger); and
``import airflow.sdk`` itself with and without bytecode (what every interpreter pays where the venv holds no
``.pyc`` and ``PYTHONDONTWRITEBYTECODE`` is set: see the machine line for this run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from typing import Any

from bench.common import PYTHON, Result, airflow_env, bench_main, ensure_airflow_env, log, median, ratio

TITLE = "P4 import time added over airflow.sdk"
TARGET_MS = 30.0
LAZY = ["sora2_provider.hooks.sora2", "sora2_provider.state", "sora2_provider.storage", "sora2_provider.triggers.sora2"]
#: Each configuration is a list of groups imported in turn in one fresh interpreter, each group timed on its own:
#: the operator's samples also time the sensor after it (a DAG using both) and then what execute() imports.
CONFIGS: dict[str, list[list[str]]] = {
    "operator": [["sora2_provider.operators.sora2"], ["sora2_provider.sensors.credits"], LAZY],
    "sensor": [["sora2_provider.sensors.credits"]],
    "http_operator": [["airflow.providers.http.operators.http"]],
}
SAMPLE = r"""
import importlib, json, sys, time
groups = json.loads(sys.argv[1])
t0 = time.perf_counter()
import airflow.sdk
from airflow.sdk import DAG, BaseOperator  # noqa: F401
base = time.perf_counter() - t0
added, requests_after = [], []
for group in groups:
    started = time.perf_counter()
    for name in group:
        importlib.import_module(name)
    added.append((time.perf_counter() - started) * 1e3)
    requests_after.append("requests" in sys.modules)
print(json.dumps({"base_ms": base * 1e3, "added_ms": added, "requests": requests_after,
                  "modules": len(sys.modules)}))
"""


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", type=int, help="fresh interpreters per configuration (default 10; quick 1)")


def run(result: Result, args: argparse.Namespace) -> None:
    home = ensure_airflow_env()
    samples = args.samples or (1 if args.quick else 10)
    result.params = {"samples_per_config": samples, "bytecode": "cached (PYTHONPYCACHEPREFIX)",
                     "base": "import airflow.sdk; from airflow.sdk import DAG, BaseOperator",
                     "configs": {name: groups for name, groups in CONFIGS.items()}}
    env = airflow_env(home)
    if not args.quick:  # one interpreter loading everything fills the bytecode cache
        _sample(env, [[name for name, groups in CONFIGS.items() for group in groups for name in group]])
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for number in range(samples):
        log(f"P4: round {number + 1}/{samples} ({len(CONFIGS)} fresh interpreters)")
        for name, groups in CONFIGS.items():
            rows[name].append(_sample(env, groups))

    def med(name: str, *groups: int) -> float:
        return round(median([sum(r["added_ms"][g] for g in groups) for r in rows[name]]), 1)

    operator, sensor, http = med("operator", 0), med("sensor", 0), med("http_operator", 0)
    both, lazy = med("operator", 0, 1), med("operator", 2)
    base = round(median([r["base_ms"] for name in CONFIGS for r in rows[name]]), 0)
    result.figures = {
        "median_added_ms": {"operator": operator, "sensor": sensor, "http_operator": http,
                            "operator+sensor": both, "execute_lazy_after_both": lazy},
        "median_airflow_sdk_ms": base,
        "samples_added_ms": {n: [[round(x, 1) for x in r["added_ms"]] for r in rows[n]] for n in CONFIGS},
        "imports_requests": {"operator": rows["operator"][0]["requests"][0], "sensor": rows["sensor"][0]["requests"][0],
                             "http_operator": rows["http_operator"][0]["requests"][0]},
    }
    for name, value in (("operators.sora2", operator), ("sensors.credits", sensor)):
        result.check(f"P4 import ms added, {name}", value, "ms", baseline_name="http operator", baseline=http,
                     ratio=ratio(value, http), target=f"<= {TARGET_MS:.0f} ms", passed=value <= TARGET_MS)
    result.check("P4 import ms added, both (a DAG using the two)", both, "ms", baseline_name="http operator",
                 baseline=http, ratio=ratio(both, http))
    result.check("P4 import ms at execute (hook, state, storage, trigger; per try)", lazy, "ms",
                 baseline_name="http operator", baseline=http, ratio=ratio(lazy, http))
    for name in ("operator", "sensor"):
        if result.figures["imports_requests"][name]:
            result.notes.append(f"{name} module imports requests at the top")
    result.notes.append(f"import airflow.sdk itself: median {base:.0f} ms with bytecode")
    if not args.quick:
        result.figures["importtime_top"] = {
            "operators.sora2": _importtime(env, ["sora2_provider.operators.sora2"]),
            "sensors.credits": _importtime(env, ["sora2_provider.sensors.credits"]),
        }
        cold = _cold_sdk(env)
        result.figures["airflow_sdk_no_bytecode_ms"] = cold
        result.check("P4 import airflow.sdk ms with no bytecode at all", cold, "ms",
                     baseline_name="with bytecode", baseline=base, ratio=ratio(cold, base))


def _sample(env: dict[str, str], groups: list[list[str]]) -> dict[str, Any]:
    done = subprocess.run([PYTHON, "-c", SAMPLE, json.dumps(groups)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"import of {groups} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _importtime(env: dict[str, str], targets: list[str]) -> list[str]:
    """The slowest imports (cumulative microseconds) below our module, from ``python -X importtime``."""
    code = "import airflow.sdk\n" + "".join(f"import {t}\n" for t in targets)
    done = subprocess.run([PYTHON, "-X", "importtime", "-c", code], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    lines = done.stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.rstrip().endswith("| airflow.sdk")), 0)
    rows = []
    for line in lines[start + 1:]:
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1]), int(parts[0].split(":")[1]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return [f"{cum / 1e3:.1f} ms cumulative, {own / 1e3:.1f} ms self: {name.strip()}" for cum, own, name in rows[:6]]


def _cold_sdk(env: dict[str, str]) -> float:
    """``import airflow.sdk`` with no bytecode at all, as this environment runs every interpreter."""
    with tempfile.TemporaryDirectory(prefix="sora2-bench-nopyc-") as empty:
        cold = {**env, "PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
        return round(_sample(cold, [])["base_ms"], 0)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    bench_main("p4_import", TITLE, run, add_args)
