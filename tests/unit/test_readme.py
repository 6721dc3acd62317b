"""Every code block of the README is exercised here (or by ``make demo``), so the README cannot drift."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest
import tomllib

from tests.support import cli_json, dag_bag

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCKS if lang == language]


def command_lines(code: str) -> list[str]:
    return [line.split("#")[0].strip() for line in code.splitlines() if line.split("#")[0].strip()]


def bash_commands() -> list[str]:
    return [line for code in blocks("bash") for line in command_lines(code)]


def test_every_block_is_python_or_bash():
    assert {lang for lang, _ in BLOCKS} == {"python", "bash"}


def test_make_commands_are_real_targets():
    makefile = (ROOT / "Makefile").read_text()
    targets = {line.split()[1] for line in bash_commands() if line.startswith("make ")}
    assert targets == {"demo", "test"}
    for target in targets:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no {target} target"


def test_pip_install_lines_name_the_distribution_its_extras_and_real_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = [line.strip() for code in blocks("bash") for line in code.splitlines()]
    lines = [line.removeprefix("uv ") for line in raw if line.startswith(("pip install", "uv pip install"))]
    assert len(lines) >= 5
    for line in lines:
        args = shlex.split(line.split("#")[0])
        name, _, extras = args[2].partition("[")
        assert name == project["name"]
        for extra in filter(None, extras.rstrip("]").split(",")):
            assert extra in project["optional-dependencies"]
        if "-c" in args:  # a constraints file of this repository, pinning the Airflow its comment names
            constraints = (ROOT / args[args.index("-c") + 1]).read_text().splitlines()
            (airflow,) = [pin for pin in constraints if pin.startswith("apache-airflow==")]
            assert f"Airflow {airflow.removeprefix('apache-airflow==')}" in line


def test_connection_env_var_example_gives_the_hook_its_key(monkeypatch):
    from sora2_provider.hooks.sora2 import Sora2Hook

    (line,) = [c for c in bash_commands() if c.startswith("export AIRFLOW_CONN_SORA2_DEFAULT=")]
    value = shlex.split(line.removeprefix("export "))[0].split("=", 1)[1]
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", value)
    hook = Sora2Hook()
    assert hook.connection.conn_type == "sora2"
    assert hook.connection.password == json.loads(value)["password"]
    assert hook.base_url == "https://api.segmind.com"


def test_connection_cli_example_creates_a_sora2_connection(airflow_db):
    (line,) = [c for c in bash_commands() if c.startswith("airflow connections add")]
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, *shlex.split(line)[1:]], check=True, capture_output=True)
    try:
        out = subprocess.run(
            [airflow, "connections", "get", "sora2_default", "-o", "json"], check=True, capture_output=True, text=True
        ).stdout
        assert cli_json(out)[0]["conn_type"] == "sora2"
    finally:
        subprocess.run([airflow, "connections", "delete", "sora2_default"], check=True, capture_output=True)


def test_pool_example_creates_a_pool_counting_deferred_tasks(airflow_db):
    (line,) = [c for c in bash_commands() if c.startswith("airflow pools set")]
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, *shlex.split(line)[1:]], check=True, capture_output=True)
    out = subprocess.run([airflow, "pools", "get", "sora2", "-o", "json"], check=True, capture_output=True, text=True)
    pool = cli_json(out.stdout)[0]
    assert (pool["slots"], str(pool["include_deferred"])) == ("2", "True")


@pytest.mark.skipif(find_spec("airflow.sdk") is None, reason="the README's DAGs import airflow.sdk (Airflow 3)")
@pytest.mark.parametrize("code", [c for c in blocks("python") if "with DAG(" in c], ids=lambda c: c.split('"')[1])
def test_dag_examples_parse(dag_runner, code):
    dag_id = re.search(r'DAG\("(\w+)"', code).group(1)
    path = dag_runner.write(dag_id, code)
    try:
        bag = dag_bag(path)
        assert not bag.import_errors
        assert dag_id in bag.dag_ids
    finally:
        path.unlink()


def test_emulator_example_runs(monkeypatch):
    (code,) = [c for c in blocks("python") if "Sora2Emulator(" in c]
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", "")  # the example sets it; monkeypatch restores it after
    exec(compile(code, "README.md", "exec"), {})


def test_review_answer_example_matches_airflow_s_hitl_route():
    """The curl line answering a review request: Airflow's PATCH route for HITL details, a valid payload, and an
    option the example DAG's ApprovalOperator offers."""
    pytest.importorskip("airflow.providers.standard.operators.hitl", reason="no human-in-the-loop tasks before 3.1")
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import task_instances_hitl_router
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    (code,) = [c for c in blocks("bash") if "hitlDetails" in c]
    args = shlex.split(code.replace("\\\n", " "))
    assert args[:3] == ["curl", "-X", "PATCH"]
    url = next(arg for arg in args if arg.startswith("$AIRFLOW_URL/api/v2/"))
    path = url.removeprefix("$AIRFLOW_URL/api/v2")
    values = {"dag_id": "sora2_review_and_publish", "dag_run_id": "$RUN_ID", "task_id": "review_video", "map_index": -1}
    patched = [route.path.format(**values) for route in task_instances_hitl_router.routes if "PATCH" in route.methods]
    assert path in patched, patched
    payload = UpdateHITLDetailPayload.model_validate_json(args[args.index("-d") + 1])
    assert payload.chosen_options == [ApprovalOperator.APPROVE]
