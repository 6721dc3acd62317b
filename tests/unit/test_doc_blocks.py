"""Every fenced code block of the README and of docs/*.md is run or checked by a test: each python block and each
bash command must be claimed below by the test that runs it, so a new example without a test fails here.

Code the site includes from files (``--8<--`` snippets: the README's quickstart and first DAG, the CHANGELOG) is not
a block of docs/*.md and is tested where it lives."""

from __future__ import annotations

import re

import pytest

from tests.doc_blocks import ROOT, Block, Command, all_blocks, all_commands

#: Blocks that are not code, and nothing else, may be ``text`` blocks: the architecture page's layer diagram, the
#: ready block `make airflow` prints, and the log lines the provider prints during an outage (output to recognise,
#: not commands to run).
NOT_CODE = {
    ("README.md", "====="),
    ("docs/architecture.md", "layer 4"),
    ("docs/errors.md", "Segmind is unreachable for connection"),
    ("docs/errors.md", "waiting for Sora 2 job"),
}

#: python blocks -> the test that runs or parses them (tests/unit/test_readme*.py, tests/e2e/test_readme_first_dag.py)
PYTHON = {
    "test_dag_examples_parse (and the README's first DAG: test_readme_first_dag)": lambda code: "with DAG(" in code,
    "test_emulator_example_runs": lambda code: "Sora2Emulator(" in code,
    "test_facet_example_matches_the_shipped_schema_and_the_facet_class": lambda code: "SORA2_RUN_FACET = {" in code,
    "tests/e2e/test_example_dags_*.py (the site includes the example DAG's file)": lambda code: bool(
        re.fullmatch(r'--8<-- "example_dags/\w+\.py"\n', code)
    ),
}

FIRST_DAG_COMMANDS = re.compile(
    r"^(export AIRFLOW_HOME=|mkdir -p \$AIRFLOW_HOME|sora2-emulator |airflow db migrate$|"
    r"python \$AIRFLOW_HOME/dags/|kill %1$)"
)


def bash_claim(command: Command) -> str | None:
    """The test that runs or checks ``command``, or None."""
    words = command.words
    if command.block.path == "README.md" and FIRST_DAG_COMMANDS.match(command.text):
        return "tests/e2e/test_readme_first_dag.py"
    if words[0] == "make":
        return "test_make_commands_are_real_targets"
    if words[:2] == ["pip", "install"] or words[:3] == ["uv", "pip", "install"]:
        return "test_pip_install_lines_name_the_distribution_its_extras_and_real_constraints"
    if words[:3] == ["airflow", "connections", "add"]:
        return "test_connection_cli_example_creates_a_sora2_connection"
    if words[:3] == ["airflow", "pools", "set"]:
        return "test_pool_example_creates_a_pool_counting_deferred_tasks"
    if words[:3] == ["curl", "-X", "PATCH"]:
        return "test_review_answer_example_matches_airflow_s_hitl_route"
    if words[0] == "export":
        return export_claim(words[1:])
    return None


def export_claim(assignments: list[str]) -> str | None:
    claims = set()
    for name in (word.partition("=")[0] for word in assignments):
        if name == "AIRFLOW_CONN_SORA2_DEFAULT":
            claims.add("test_connection_env_var_examples_give_the_hook_its_key")
        elif name.startswith("AIRFLOW_CONN_"):
            claims.add("test_other_connection_env_vars_are_airflow_connections")
        elif name == "AIRFLOW__OPENLINEAGE__TRANSPORT":
            claims.add("test_openlineage_transport_example_is_a_file_transport")
        elif name.startswith("AIRFLOW__METRICS__"):
            claims.add("test_statsd_example_sets_options_airflow_knows")
        elif name in {"FETCH_RAW_TOKEN_EXPIRY", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"}:
            claims.add("test_gcs_client_variables_are_those_the_store_tests_set")
        else:
            return None
    return ", ".join(sorted(claims))


def test_blocks_are_found_in_the_readme_and_the_docs():
    paths = {block.path for block in all_blocks()}
    assert "README.md" in paths
    assert len(paths) >= 10


def test_every_block_is_python_bash_or_a_listed_diagram():
    for block in all_blocks():
        if block.lang not in {"python", "bash"}:
            assert block.lang == "text", f"{block.where}: a ```{block.lang} block no test runs"
            assert any(block.path == path and block.code.startswith(start) for path, start in NOT_CODE), block.where


@pytest.mark.parametrize("block", all_blocks("python"), ids=lambda block: block.where)
def test_every_python_block_is_run_by_a_test(block: Block):
    claims = [test for test, claims in PYTHON.items() if claims(block.code)]
    assert len(claims) == 1, f"{block.where}: claimed by {claims or 'no test'}"


@pytest.mark.parametrize("command", all_commands(), ids=lambda command: f"{command.block.where} {command.words[0]}")
def test_every_bash_command_is_run_by_a_test(command: Command):
    assert bash_claim(command), f"{command.block.where}: no test runs or checks {command.text!r}"


def test_the_first_dag_commands_are_those_the_e2e_test_runs():
    from tests.e2e.test_readme_first_dag import first_dag_blocks

    _, commands = first_dag_blocks()
    claimed = [c for c in all_commands() if c.block.path == "README.md" and FIRST_DAG_COMMANDS.match(c.text)]
    assert {c.block for c in claimed} == {commands}


def test_site_includes_name_files_that_exist():
    for page in (ROOT / "docs").rglob("*.md"):
        for target in re.findall(r'^--8<-- "([^":]+)', page.read_text(), flags=re.M):
            assert (ROOT / target).is_file(), f"{page}: includes missing {target}"
