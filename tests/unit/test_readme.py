"""The code blocks of the README and the documentation site run here (the README's first DAG in
tests/e2e/test_readme_first_dag.py, the observability examples in test_readme_observability.py), so the docs cannot
drift; tests/unit/test_doc_blocks.py checks that every block and command is claimed by one of these tests."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tests.doc_blocks import ROOT, all_blocks, commands_starting, exported
from tests.support import cli_json, dag_bag


def test_make_commands_are_real_targets():
    makefile = (ROOT / "Makefile").read_text()
    targets = {command.words[1] for command in commands_starting("make")}
    assert {"demo", "test"} <= targets  # the README's two commands
    for target in sorted(targets):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no {target} target"


def pip_install_commands() -> list[list[str]]:
    return [
        c.words[1:] if c.words[0] == "uv" else c.words
        for c in [*commands_starting("pip", "install"), *commands_starting("uv", "pip", "install")]
    ]


def test_pip_install_lines_name_the_distribution_its_extras_and_real_constraints():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    installs = pip_install_commands()
    assert len(installs) >= 8
    for args in installs:
        name, _, extras = args[2].partition("[")
        assert name == project["name"]
        for extra in filter(None, extras.rstrip("]").split(",")):
            assert extra in project["optional-dependencies"]


def test_constraints_lines_name_the_airflow_their_file_pins():
    lines = [c.block.code for c in commands_starting("pip", "install") + commands_starting("uv", "pip", "install")]
    with_constraints = [line for code in lines for line in code.splitlines() if " -c " in line]
    assert len(with_constraints) >= 3
    for line in with_constraints:
        args = shlex.split(line.split("#")[0])
        constraints = (ROOT / args[args.index("-c") + 1]).read_text().splitlines()
        (airflow,) = [pin for pin in constraints if pin.startswith("apache-airflow==")]
        assert f"Airflow {airflow.removeprefix('apache-airflow==')}" in line


def test_connection_env_var_examples_give_the_hook_its_key(monkeypatch):
    from sora2_provider.hooks.sora2 import Sora2Hook

    commands = [c for c in commands_starting("export") if c.words[1].startswith("AIRFLOW_CONN_SORA2_DEFAULT=")]
    assert len(commands) >= 3  # the README's key, the connection page's, the first DAG's emulator
    for command in commands:
        value = command.words[1].split("=", 1)[1]
        monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", value)
        hook = Sora2Hook()
        assert hook.connection.conn_type == "sora2"
        assert hook.connection.password == json.loads(value)["password"]
        assert hook.base_url == json.loads(value).get("host", "https://api.segmind.com")


def test_other_connection_env_vars_are_airflow_connections():
    """The object-store connections of docs/object-stores.md: JSON Airflow reads into the named connection type."""
    from airflow.models.connection import Connection

    found = {name: value for name, value in exported("AIRFLOW_CONN_").items() if name != "AIRFLOW_CONN_SORA2_DEFAULT"}
    expected = {
        "AIRFLOW_CONN_AWS_DEFAULT": "aws",
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": "google_cloud_platform",
        "AIRFLOW_CONN_WASB_DEFAULT": "wasb",
    }
    assert {name: json.loads(value)["conn_type"] for name, value in found.items()} == expected
    for name, value in found.items():
        conn = Connection.from_json(value, conn_id=name.removeprefix("AIRFLOW_CONN_").lower())
        assert conn.conn_type == expected[name]
        assert isinstance(conn.extra_dejson, dict) and conn.extra_dejson


def test_gcs_client_variables_are_those_the_store_tests_set():
    source = (ROOT / "tests" / "stores" / "servers.py").read_text()
    (literal,) = re.findall(r"^GCS_CLIENT_ENV = (\{.*\})$", source, flags=re.M)
    assert {
        name: exported(name)[name] for name in ("FETCH_RAW_TOKEN_EXPIRY", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")
    } == json.loads(literal)


def test_connection_cli_example_creates_a_sora2_connection(airflow_db):
    (command,) = commands_starting("airflow", "connections", "add")
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, *command.words[1:]], check=True, capture_output=True)
    try:
        out = subprocess.run(
            [airflow, "connections", "get", "sora2_default", "-o", "json"], check=True, capture_output=True, text=True
        ).stdout
        assert cli_json(out)[0]["conn_type"] == "sora2"
    finally:
        subprocess.run([airflow, "connections", "delete", "sora2_default"], check=True, capture_output=True)


def test_pool_example_creates_a_pool_counting_deferred_tasks(airflow_db):
    (command,) = commands_starting("airflow", "pools", "set")
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, *command.words[1:]], check=True, capture_output=True)
    out = subprocess.run([airflow, "pools", "get", "sora2", "-o", "json"], check=True, capture_output=True, text=True)
    pool = cli_json(out.stdout)[0]
    assert (pool["slots"], str(pool["include_deferred"])) == ("2", "True")


DAG_BLOCKS = [block for block in all_blocks("python") if re.search(r"with DAG\(", block.code)]


@pytest.mark.skipif(
    importlib.util.find_spec("airflow.sdk") is None, reason="the docs' DAGs import airflow.sdk (Airflow 3)"
)
@pytest.mark.parametrize("block", DAG_BLOCKS, ids=lambda block: block.where)
def test_dag_examples_parse(dag_runner, block):
    dag_id = re.search(r'DAG\("(\w+)"', block.code).group(1)
    path = dag_runner.write(dag_id, block.code)
    try:
        bag = dag_bag(path)
        assert not bag.import_errors
        assert dag_id in bag.dag_ids
    finally:
        path.unlink()


def test_emulator_example_runs(monkeypatch):
    (block,) = [b for b in all_blocks("python") if "Sora2Emulator(" in b.code]
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", "")  # the example sets it; monkeypatch restores it after
    exec(compile(block.code, block.where, "exec"), {})


def test_review_answer_example_matches_airflow_s_hitl_route():
    """The curl line answering a review request: Airflow's PATCH route for HITL details, a valid payload, and an
    option the example DAG's ApprovalOperator offers."""
    pytest.importorskip("airflow.api_fastapi.core_api.datamodels.hitl", reason="no human-in-the-loop tasks before 3.1")
    from airflow.api_fastapi.core_api.datamodels.hitl import UpdateHITLDetailPayload
    from airflow.api_fastapi.core_api.routes.public.hitl import task_instances_hitl_router
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    (command,) = commands_starting("curl")
    args = command.words
    assert args[:3] == ["curl", "-X", "PATCH"]
    url = next(arg for arg in args if arg.startswith("$AIRFLOW_URL/api/v2/"))
    path = url.removeprefix("$AIRFLOW_URL/api/v2")
    values = {"dag_id": "sora2_review_and_publish", "dag_run_id": "$RUN_ID", "task_id": "review_video", "map_index": -1}
    patched = [route.path.format(**values) for route in task_instances_hitl_router.routes if "PATCH" in route.methods]
    assert path in patched, patched
    payload = UpdateHITLDetailPayload.model_validate_json(args[args.index("-d") + 1])
    assert payload.chosen_options == [ApprovalOperator.APPROVE]


def public_modules() -> dict[str, list[str]]:
    """Every module of the package that declares ``__all__`` and has no ``_``-prefixed part: its ``__all__``."""
    found = {}
    for path in sorted((ROOT / "sora2_provider").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__" or any(part.startswith("_") for part in parts):
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                found[".".join(parts)] = list(ast.literal_eval(node.value))
    return found


def test_api_page_documents_every_public_module():
    documented = set(re.findall(r"^::: (\S+)$", (ROOT / "docs" / "api.md").read_text(), flags=re.M))
    public = set(public_modules())
    assert {f"sora2_provider.testing.{name}" for name in ("emulator", "video", "backend")} <= public
    assert documented == public


def test_readme_api_list_names_what_each_module_exports():
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(sora2_provider\.[\w.]+)` \| (.+) \|$", text, flags=re.M)
    assert len(rows) >= 5
    public = public_modules()
    for module, names in rows:
        assert module in public, f"README lists {module}, which is not a public module"
        assert set(re.findall(r"`(\w+)`", names)) <= set(public[module]), module


def test_architecture_page_places_every_module_on_its_tested_layer():
    from tests.unit.test_architecture import MODULES, layer_of

    text = (ROOT / "docs" / "architecture.md").read_text()
    placed = {}
    for layer, body in re.findall(r"^### Layer (\d):.*?\n(.*?)(?=^##)", text, flags=re.S | re.M):
        for path in re.findall(r"^\| `([\w/]+\.py)` \|", body, flags=re.M):
            placed[path.removesuffix(".py").replace("/", ".")] = int(layer)
    modules = {name for name, path in MODULES.items() if path.name != "__init__.py"}
    assert set(placed) == modules
    assert {name: layer_of(name) for name in modules} == placed
