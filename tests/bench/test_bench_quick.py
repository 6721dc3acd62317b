"""``python -m bench --quick`` (what ``make bench-quick`` runs) completes and writes well-formed results, so the
benchmarks of ``make bench`` never rot.

No performance target is asserted: the machine is shared and noisy, and the quick variant is too small to mean
anything. Only the deterministic checks are: P5 has no failed try and its ledger charges exactly the sum of the
estimates, one job per task; P1 and P2 fail on their own when a run or a stored size is wrong.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
IDS = ["P1", "P2", "P3", "P4", "P5", "P5b", "P6"]
STATUSES = {"PASS", "MISS", "INFO"}

pytestmark = [pytest.mark.bench, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench-quick")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=850,
        check=False,
    )
    return done, out


@pytest.fixture(scope="module")
def results(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> dict[str, Any]:
    done, out = quick_run
    assert done.returncode == 0, f"python -m bench --quick failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads((out / "results.json").read_text())


def by_id(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {result["id"]: result for result in results["results"]}


def check(results: dict[str, Any], bench_id: str, name_start: str) -> dict[str, Any]:
    rows = [c for c in by_id(results)[bench_id]["checks"] if c["name"].startswith(name_start)]
    assert len(rows) == 1, f"{bench_id} has no single check starting with {name_start!r}"
    return rows[0]


def test_every_benchmark_ran_without_error(results: dict[str, Any]) -> None:
    assert results["mode"] == "quick"
    assert [r["id"] for r in results["results"]] == IDS
    for result in results["results"]:
        assert result["error"] is None, f"{result['id']}: {result['error']}"
        assert result["quick"] is True
        assert result["checks"], f"{result['id']} reported no check"
        assert result["seconds"] > 0


def test_each_check_is_well_formed(results: dict[str, Any]) -> None:
    targeted = set()
    for result in results["results"]:
        for row in result["checks"]:
            assert row["name"].startswith(result["id"] + " ")
            assert row["status"] in STATUSES
            assert isinstance(row["value"], (int, float)) and math.isfinite(row["value"]), row
            assert isinstance(row["unit"], str) and row["unit"]
            if row["status"] == "INFO":
                assert row["passed"] is None
            else:
                assert row["target"], row
                assert row["status"] == ("PASS" if row["passed"] else "MISS")
                targeted.add(result["id"])
            if row["baseline"] is not None and row["baseline"] != 0 and row["ratio"] is not None:
                # value and baseline are stored rounded (a 0.4 ms baseline may be 0.44): the ratio agrees within that
                assert row["ratio"] == pytest.approx(row["value"] / row["baseline"], rel=0.2, abs=1e-3), row
    assert targeted == set(IDS), "every benchmark has at least one row with a target"


def test_run_records_the_machine_and_load(results: dict[str, Any]) -> None:
    machine = results["machine"]
    assert machine["cores_logical"] >= 1
    assert machine["python"].count(".") == 2
    assert machine["airflow"].startswith("3.")
    assert len(results["load_average_start"]) == len(results["load_average_end"]) == 3
    assert results["date"] and results["seconds"] > 0


def test_deterministic_checks_hold(results: dict[str, Any]) -> None:
    failures = check(results, "P5", "P5 failed tries")
    assert failures["value"] == 0 and failures["status"] == "PASS", by_id(results)["P5"]["figures"]
    ledger = check(results, "P5", "P5 ledger charged == sum of estimates")
    assert ledger["status"] == "PASS"
    figures = by_id(results)["P5"]["figures"]
    assert figures["ledger_jobs"] == figures["tasks_succeeded"] == by_id(results)["P5"]["params"]["jobs"]
    assert all(run["state"] == "success" for run in by_id(results)["P1"]["figures"]["runs"])
    sizes = {row["stored_bytes"] for row in by_id(results)["P2"]["figures"].values()}
    assert sizes == {by_id(results)["P2"]["params"]["mp4_bytes"]}


def test_results_markdown_shows_the_table(results: dict[str, Any], quick_run: tuple[Any, Path]) -> None:
    text = (quick_run[1] / "RESULTS.md").read_text()
    assert "| Benchmark | Result | Baseline (same run) | Ratio | Target | Status |" in text
    assert results["date"] in text and "Machine" in text and "Load" in text
    for result in results["results"]:
        for row in result["checks"]:
            assert f"| {row['name']} |" in text
