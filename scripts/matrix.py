#!/usr/bin/env python3
"""``make test-matrix``: the provider on every Airflow line it claims, 2.11 to 3.3 (issues 13 and 24).

For each ``constraints/airflow-X.Y.txt`` (or the lines named on the command line), in four phases:

1. venv:    ``.matrix/airflow-X.Y/`` with ``-e .[test,s3,openlineage]`` pinned by that file, built with uv, kept until
            pyproject.toml or the constraints file changes (their hash is its stamp).
2. suites:  the unit, hook, sensor and operator suites. The lines run at the same time (``--jobs``): a suite is
            mostly Airflow's own CPU work in ``dag.test()``, one core or less, and two cores serve three of them
            about as fast as two. Each pytest session makes its own throwaway AIRFLOW_HOME (tests/conftest.py).
3. e2e:     one deferrable generation through a real scheduler and triggerer (Airflow 3: with an api-server and a
            dag-processor; Airflow 2: with its webserver), paying one job, storing the MP4 the XCom describes; the
            triggerer must still run under its PID afterwards. One line at a time: the deadlines want the CPU.
4. release: the wheel in dist/ (``make dist``) installed, not editable, with the emulator extra into a clean venv
            ``.matrix/release-X.Y/`` with the same constraints file; it must import from that venv, show in
            ``airflow providers list``, show in ``airflow plugins`` what the line gets (3.1+ the UI plugin with its
            views and app, 3.0 its app, 2.11 no plugin) with no error logged about it, and serve HTTP as
            ``sora2-emulator``.

pytest output goes to ``.matrix/logs/``; its tail (all of it up to the summary, on failure) is printed. Every line
and phase runs even after a failure; the summary at the end gives each step's result and wall time, and the exit
status is 1 when anything failed. Standard library only: it runs with the machine's python3.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / ".matrix"
CONSTRAINTS = ROOT / "constraints"
UV = [sys.executable, "-m", "uv"]

LOGS = MATRIX / "logs"
#: In the order `make test` runs them (alphabetical), so a test leaking state meets the same neighbours.
SUITES = ["tests/hook", "tests/operator", "tests/sensor", "tests/unit"]
#: One deferrable generation through the real triggerer, with the components the line has (the module's docstring).
E2E = ["tests/e2e/test_deferrable_every_line.py"]
STARTED: list[subprocess.Popen[bytes]] = []  # every pytest this script started, stopped by PID if it is stopped
RELEASE_IMPORTS = ["sora2_provider.operators.sora2", "sora2_provider.sensors.credits", "sora2_provider.triggers.sora2"]
RELEASE_KEY = "SG_release_check"


class StepFailed(Exception):
    pass


def run(cmd: list[str | Path], *, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    """Run ``cmd`` and return its output (stdout and stderr); fail the step, showing the output, on a non-zero exit."""
    print(f"$ {' '.join(map(str, cmd))}", flush=True)
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        print(proc.stdout[-5000:], flush=True)
        raise StepFailed(f"exit {proc.returncode}: {' '.join(map(str, cmd))}")
    return proc.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """Our environment without any Airflow setting or active venv, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k != "VIRTUAL_ENV"}
    env.update(extra)
    return env


def airflow_version(constraints: Path) -> str:
    for line in constraints.read_text().splitlines():
        if line.startswith("apache-airflow=="):
            return line.split("==", 1)[1]
    raise SystemExit(f"{constraints} pins no apache-airflow")


# ---------------------------------------------------------------------------------------------- tests


def test_venv(line: str) -> Path:
    """``.matrix/airflow-<line>/`` with the project installed editable, rebuilt only when its inputs changed."""
    venv = MATRIX / f"airflow-{line}"
    constraints = CONSTRAINTS / f"airflow-{line}.txt"
    stamp = venv / ".installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + constraints.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        print(f"{venv.relative_to(ROOT)} is up to date", flush=True)
        return venv
    stamp.unlink(missing_ok=True)
    if not (venv / "bin" / "python").exists():
        run([*UV, "venv", "--quiet", "--python", "python3", venv])
    # --compile-bytecode: this machine sets PYTHONDONTWRITEBYTECODE=1, so nothing would ever be cached otherwise.
    run([*UV, "pip", "install", "--quiet", "--compile-bytecode", "--python", venv / "bin" / "python",
         "-c", constraints, "-e", ".[test,s3,openlineage]"])
    stamp.write_text(digest)
    return venv


def start_pytest(
    line: str, targets: list[str], name: str, pytest_args: list[str]
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start pytest in the line's venv, its output going to ``.matrix/logs/airflow-<line>-<name>.log``."""
    log = LOGS / f"airflow-{line}-{name}.log"
    cmd = [str(MATRIX / f"airflow-{line}" / "bin" / "pytest"), *targets, *pytest_args]
    print(f"$ {' '.join(cmd)} > {log.relative_to(ROOT)}", flush=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=clean_env(), stdout=out, stderr=subprocess.STDOUT)
    STARTED.append(proc)
    return proc, log


def stop_started() -> None:
    """SIGTERM every pytest we started that still runs (by its PID), then wait for it."""
    for proc in STARTED:
        if proc.poll() is None:
            print(f"stopping pytest PID {proc.pid}", flush=True)
            proc.terminate()
    for proc in STARTED:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report_pytest(version: str, name: str, status: int, log: Path) -> None:
    """Print the end of a pytest log (all of its summary on failure); fail the step on a non-zero exit."""
    lines = log.read_text(errors="replace").splitlines()
    print(f"\n---- Airflow {version} {name}: exit {status}, last lines of {log.relative_to(ROOT)}")
    print("\n".join(lines[-(120 if status else 3):]), flush=True)
    if status != 0:
        raise StepFailed(f"pytest exited with {status}")


# ---------------------------------------------------------------------------------------------- step 2: release


def wheel() -> Path:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    path = ROOT / "dist" / f"airflow_provider_sora2-{version}-py3-none-any.whl"
    if not path.exists():
        raise StepFailed(f"{path.relative_to(ROOT)} is missing: run `make dist` first")
    return path


def release_check(line: str) -> None:
    whl = wheel()
    venv = MATRIX / f"release-{line}"
    python = venv / "bin" / "python"
    run([*UV, "venv", "--quiet", "--clear", "--python", "python3", venv])
    run([*UV, "pip", "install", "--quiet", "--compile-bytecode", "--python", python,
         "-c", CONSTRAINTS / f"airflow-{line}.txt", f"{whl}[emulator]"])
    with tempfile.TemporaryDirectory(prefix="sora2-release-") as tmp:
        # Run from an empty directory with a fresh AIRFLOW_HOME, so neither the checkout nor any Airflow setup of
        # this machine can stand in for what the wheel installed.
        work = Path(tmp)
        env = clean_env(AIRFLOW_HOME=str(work / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False")

        code = (
            "import json, sora2_provider\n"
            + "".join(f"import {module}\n" for module in RELEASE_IMPORTS)
            + "print(json.dumps(sora2_provider.__file__))\n"
        )
        location = Path(json.loads(run([python, "-c", code], cwd=work, env=env).strip().splitlines()[-1]))
        if not location.is_relative_to(venv):
            raise StepFailed(f"sora2_provider was imported from {location}, not from the wheel in {venv}")

        version = whl.name.split("-")[1]
        out = run([venv / "bin" / "airflow", "providers", "list", "-o", "json"], cwd=work, env=env, timeout=300)
        providers = {p["package_name"]: p["version"] for p in last_json_document(out)}
        if providers.get("airflow-provider-sora2") != version:
            raise StepFailed(f"airflow providers list shows no airflow-provider-sora2 {version}: {providers}")
        print(f"airflow providers list: airflow-provider-sora2 {version}")
        check_plugin_listed(venv, work, env)

        run([venv / "bin" / "sora2-emulator", "--help"], cwd=work, env=env)
        check_emulator_serves(venv, work, env)


def plugin_parts(python: Path, cwd: Path, env: dict[str, str]) -> tuple[bool, bool]:
    """What this Airflow's plugins can have, probed by the installed wheel itself (sora2_provider.compat):
    (FastAPI apps, external views)."""
    code = "import json; from sora2_provider import compat as c; print(json.dumps([c.PLUGIN_APPS, c.PLUGIN_VIEWS]))"
    apps, views = json.loads(run([python, "-c", code], cwd=cwd, env=env).strip().splitlines()[-1])
    return apps, views


def check_plugin_listed(venv: Path, cwd: Path, env: dict[str, str]) -> None:
    """``airflow plugins`` shows what this line gets, from the wheel alone, and logs no error about it: the plugin
    with its two views and its app (3.1+), with its app only (3.0: no external views), or no plugin (2.11)."""
    has_apps, has_views = plugin_parts(venv / "bin" / "python", cwd, env)
    out = run([venv / "bin" / "airflow", "plugins", "-o", "json"], cwd=cwd, env=env, timeout=300)
    errors = [line for line in out.splitlines() if "sora2" in line and ("rror" in line or "Failed" in line)]
    if errors:
        raise StepFailed("airflow plugins logged an error about sora2:\n" + "\n".join(errors))
    # Airflow prints "No plugins loaded" instead of a JSON document when it loaded none (2.11 with the wheel alone).
    plugins = {} if "No plugins loaded" in out else {p["name"]: p for p in last_json_document(out)}
    plugin = plugins.get("sora2")
    if not has_apps:
        if plugin is not None:
            raise StepFailed(f"airflow plugins lists a sora2 plugin where Airflow serves no plugin app: {plugin}")
        print("airflow plugins: no sora2 plugin (no FastAPI server on this line), no error logged")
        return
    views = sorted(view.get("url_route") for view in (plugin or {}).get("external_views", []))
    apps = [app.get("url_prefix") for app in (plugin or {}).get("fastapi_apps", [])]
    if plugin is None or apps != ["/sora2"] or views != (["sora2", "sora2-video"] if has_views else []):
        raise StepFailed(f"airflow plugins shows no sora2 plugin with this line's views and app: {plugins}")
    print(f"airflow plugins: sora2 (views {', '.join(views) or 'none on this line'}; app /sora2)")


def check_emulator_serves(venv: Path, cwd: Path, env: dict[str, str]) -> None:
    """Start ``sora2-emulator`` on a port it picks, ask it for a key's credits over HTTP, stop it by its PID."""
    proc = subprocess.Popen(
        [venv / "bin" / "sora2-emulator", "--port", "0", "--api-key", RELEASE_KEY, "--balance", "3.5"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # its first line, printed once it is listening (or EOF if it died)
        if not url.startswith("http://127.0.0.1:"):
            raise StepFailed(f"sora2-emulator printed {url!r} instead of its URL (exit {proc.poll()})")
        request = urllib.request.Request(f"{url}/v1/get-user-credits", headers={"x-api-key": RELEASE_KEY})
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
        if answer.get("credits") != 3.5:
            raise StepFailed(f"sora2-emulator answered the credits call with {answer}")
        with urllib.request.urlopen(f"{url}/_emulator/requests", timeout=30) as response:
            logged = [entry.get("endpoint") for entry in json.load(response)["requests"]]
        if logged != ["credits"]:
            raise StepFailed(f"sora2-emulator logged the credits call as {logged}")
        print(f"sora2-emulator at {url}: credits {answer['credits']}, request log {logged}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise StepFailed("sora2-emulator did not stop within 30 s of SIGTERM") from None
    if status != 0:
        raise StepFailed(f"sora2-emulator exited with {status} after SIGTERM")


def last_json_document(output: str) -> Any:
    """The JSON document that ends a CLI's output (Airflow 3.2 prints log lines before it)."""
    decoder = json.JSONDecoder()
    lines = output.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("[", "{")):
            rest = "".join(lines[i:])
            try:
                value, end = decoder.raw_decode(rest.lstrip())
            except ValueError:
                continue
            if not rest.lstrip()[end:].strip():
                return value
    raise StepFailed(f"no JSON document ends this output:\n{output[-2000:]}")


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    available = sorted(p.stem.removeprefix("airflow-") for p in CONSTRAINTS.glob("airflow-*.txt"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lines", nargs="*", default=available, help=f"Airflow lines (default: {' '.join(available)})")
    parser.add_argument("--phases", default="suites,e2e,release", help="comma-separated: suites, e2e, release")
    parser.add_argument("--jobs", type=int, default=3, help="lines whose suites run at the same time (default 3)")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, e.g. '-x'")
    parser.add_argument(
        "--skip-suites", default="", help="comma-separated lines whose suites ran elsewhere (.ci/run: 3.3, make test)"
    )
    args = parser.parse_args(argv)
    phases = args.phases.split(",")
    pytest_args = args.pytest_args.split()
    versions = {line: airflow_version(CONSTRAINTS / f"airflow-{line}.txt") for line in args.lines}
    LOGS.mkdir(parents=True, exist_ok=True)
    results: list[tuple[str, str, str, float]] = []
    started = time.monotonic()

    def record(line: str, step: str, began: float, error: BaseException | None) -> None:
        if error is not None:
            print(f"Airflow {versions[line]} {step} FAILED: {error}", flush=True)
        results.append((versions[line], step, "FAILED" if error else "passed", time.monotonic() - began))

    ready = []
    if {"suites", "e2e"} & set(phases):
        for line in args.lines:
            print(f"\n==== Airflow {versions[line]}: venv ====", flush=True)
            began = time.monotonic()
            try:
                test_venv(line)
                ready.append(line)
                record(line, "venv", began, None)
            except (StepFailed, subprocess.TimeoutExpired) as err:
                record(line, "venv", began, err)

    if "suites" in phases:
        print(f"\n==== suites of Airflow {', '.join(versions[line] for line in ready)} ({args.jobs} at a time) ====")
        skipped = set(args.skip_suites.split(",")) - {""}
        pending = [line for line in ready if line not in skipped]
        for line in sorted(skipped & set(ready)):
            print(f"Airflow {versions[line]} suites skipped: --skip-suites (they ran in this CI run already)")
        running: dict[str, tuple[subprocess.Popen[bytes], Path, float]] = {}
        while pending or running:
            while pending and len(running) < args.jobs:
                line = pending.pop(0)
                running[line] = (*start_pytest(line, SUITES, "suites", pytest_args), time.monotonic())
            line = wait_any(running)
            proc, log, began = running.pop(line)
            try:
                report_pytest(versions[line], "suites", proc.returncode, log)
                record(line, "suites", began, None)
            except StepFailed as err:
                record(line, "suites", began, err)

    for phase in ("e2e", "release"):
        if phase not in phases:
            continue
        for line in ready if phase == "e2e" else args.lines:
            print(f"\n==== Airflow {versions[line]}: {phase} ====", flush=True)
            began = time.monotonic()
            try:
                if phase == "e2e":
                    proc, log = start_pytest(line, E2E, "e2e", pytest_args)
                    report_pytest(versions[line], "e2e", proc.wait(), log)
                else:
                    release_check(line)
                record(line, phase, began, None)
            except (StepFailed, subprocess.TimeoutExpired) as err:
                record(line, phase, began, err)

    print("\n==== test-matrix summary ====")
    for version, step, outcome, seconds in results:
        print(f"Airflow {version:<8} {step:<8} {outcome:<7} {seconds:6.0f} s")
    total = time.monotonic() - started
    print(f"total {total:.0f} s ({total / 60:.1f} min)")
    return 0 if results and all(outcome == "passed" for *_, outcome, _ in results) else 1


def wait_any(running: dict[str, tuple[subprocess.Popen[bytes], Path, float]]) -> str:
    """Block until one of the running pytest processes exits; return its line."""
    pid, status = os.wait()
    for line, (proc, _, _) in running.items():
        if proc.pid == pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return line
    return wait_any(running)  # a child we did not start here (none expected)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminated)  # make's or CI's stop: the finally below stops our pytest runs
    try:
        sys.exit(main(sys.argv[1:]))
    finally:
        stop_started()
