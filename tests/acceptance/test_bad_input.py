"""Bad input never reaches a paid endpoint: every case fails before any network call, naming the field.

Two kinds, recorded per case:
- ``parse``: the constructor raises ``ValueError`` while the DAG file is parsed; the user sees it as the
  DagBag import error of that file (one DAG file per case, all parsed in one DagBag).
- ``execute``: the value is only known when the task runs (templated, a path, a connection); the task fails
  with ``AirflowFailException`` in one try although ``retries=3``. All such cases are tasks of one DAG, run
  with one ``dag.test()``; the error is the task's last exception line in the console.

For every case the emulator's request log stays empty and no HTTP request leaves the process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance import matrix
from tests.acceptance.console import SessionConsole, task_error_lines
from tests.support import TEST_API_KEY, TEST_BALANCE, connection_json, dag_bag, task_instances

DAG_ID = "acceptance_bad_input"
MODELS = "'sora-2', 'sora-2-pro'"
DURATIONS = "4, 8, 12"
SORA2_SIZES = "'720x1280', '1280x720'"
GOOD_JOB = {"model": "sora-2", "duration": 4}


@dataclass(frozen=True)
class Case:
    id: str
    what: str
    kind: str  # parse | execute
    task: str  # the operator call, as written in a DAG file
    expect: tuple[str, ...]  # what the error must say: the field and the allowed values
    xfail: str | None = None  # a known miss, reported with its cause


def generate(**kwargs: Any) -> str:
    args = {"prompt": "a quiet harbour at dawn", "output_path": "{output}", "duration": 4, **kwargs}
    return f"Sora2GenerateVideoOperator(task_id='{{id}}', **{args!r})"


def sensor(**kwargs: Any) -> str:
    return f"CreditsSensor(task_id='{{id}}', poke_interval=1, timeout=30, **{kwargs!r})"


CASES: tuple[Case, ...] = (
    # -- parse time: the constructor refuses, the DAG file does not import
    Case("model_unknown", "model='sora-3'", "parse", generate(model="sora-3"), ("model", MODELS)),
    Case("duration_5", "duration=5", "parse", generate(duration=5), ("duration", DURATIONS)),
    Case("duration_eight", "duration='eight'", "parse", generate(duration="eight"), ("duration", DURATIONS)),
    Case("duration_negative", "duration=-4", "parse", generate(duration=-4), ("duration", DURATIONS)),
    Case("size_not_allowed", "size='640x480' (sora-2)", "parse", generate(size="640x480"), ("size", SORA2_SIZES)),
    Case("size_pro_only", "pro-only size '1792x1024' on sora-2", "parse", generate(size="1792x1024"),
         ("size", SORA2_SIZES)),
    Case("max_cost_negative", "max_cost=-1", "parse", generate(max_cost=-1), ("max_cost", ">= 0")),
    Case("mode_unknown", "mode='fast'", "parse", generate(mode="fast"), ("mode", "'async', 'sync'")),
    Case("poll_interval_zero", "poll_interval=0", "parse", generate(poll_interval=0), ("poll_interval", "positive")),
    Case("orphan_policy_unknown", "on_orphaned_intent='maybe'", "parse", generate(on_orphaned_intent="maybe"),
         ("on_orphaned_intent", "'resubmit', 'fail'")),
    Case("generation_timeout_negative", "generation_timeout=-5", "parse", generate(generation_timeout=-5),
         ("generation_timeout", "positive")),
    Case("sensor_min_credits_negative", "CreditsSensor min_credits=-1", "parse", sensor(min_credits=-1),
         ("min_credits", ">= 0")),
    Case("sensor_min_credits_text", "CreditsSensor min_credits='lots'", "parse", sensor(min_credits="lots"),
         ("min_credits", ">= 0")),
    Case("sensor_both", "CreditsSensor with both min_credits and jobs", "parse",
         sensor(min_credits=1, jobs=[GOOD_JOB]), ("exactly one of min_credits", "jobs", "both")),
    Case("sensor_neither", "CreditsSensor with neither min_credits nor jobs", "parse", sensor(),
         ("exactly one of min_credits", "jobs", "neither")),
    Case("sensor_jobs_unknown_model", "CreditsSensor jobs with model 'sora-3'", "parse",
         sensor(jobs=[{"model": "sora-3", "duration": 4}]), ("jobs[0].model", MODELS)),
    Case("sensor_jobs_count_zero", "CreditsSensor jobs with count=0", "parse",
         sensor(jobs=[{**GOOD_JOB, "count": 0}]), ("jobs[0].count", "positive integer")),
    Case("sensor_jobs_duration_5", "CreditsSensor jobs with duration 5", "parse",
         sensor(jobs=[{"model": "sora-2", "duration": 5}]), ("jobs[0].duration", DURATIONS)),
    # -- execute time: known only when the task runs; fails in one try
    Case("prompt_empty", "prompt=''", "execute", generate(prompt=""), ("prompt", "non-empty")),
    Case("prompt_whitespace", "prompt='   '", "execute", generate(prompt="   \n\t"), ("prompt", "non-empty")),
    Case("prompt_oversized", "prompt of 5001 characters", "execute", generate(prompt="x" * 5001),
         ("prompt", "limit of 5000")),
    Case("prompt_templated_empty", "prompt='{{ \"\" }}' (renders empty)", "execute",
         generate(prompt="{{ '' }}"), ("prompt", "non-empty")),
    Case("model_templated", "model='{{ \"sora-3\" }}'", "execute", generate(model="{{ 'sora-3' }}"),
         ("model", MODELS)),
    Case("duration_templated", "duration='{{ \"eight\" }}'", "execute", generate(duration="{{ 'eight' }}"),
         ("duration", DURATIONS)),
    Case("size_templated_pro_only", "size='{{ \"1792x1024\" }}' on sora-2", "execute",
         generate(size="{{ '1792x1024' }}"), ("size", SORA2_SIZES)),
    Case("input_reference_not_url", "input_reference='not a url'", "execute",
         generate(input_reference="not a url"), ("input_reference", "http(s)", "file://")),
    Case("input_reference_missing_file", "input_reference='/nonexistent/ref.png'", "execute",
         generate(input_reference="/nonexistent/ref.png"), ("input_reference", "does not exist", "http(s) URL")),
    Case("input_reference_unknown_scheme", "input_reference='gopher://host/ref.png'", "execute",
         generate(input_reference="gopher://host/ref.png"), ("input_reference", "unknown scheme", "allowed values")),
    Case("output_no_scheme", "output_path='/tmp/video.mp4' (no scheme)", "execute",
         generate(output_path="/tmp/video.mp4"), ("output_path", "no scheme", "file://")),
    Case("output_unknown_scheme", "output_path='foo://bucket/video.mp4'", "execute",
         generate(output_path="foo://bucket/video.mp4"), ("output_path", "unknown scheme", "allowed values", "s3")),
    Case("max_cost_below_estimate", "max_cost=0.1 for a 0.40 job", "execute", generate(max_cost=0.1),
         ("max_cost", "0.40", "nothing was submitted")),
    Case("connection_missing", "sora2_conn_id='acc_missing' (not defined)", "execute",
         generate(sora2_conn_id="acc_missing"), ("sora2_conn_id", "acc_missing")),
    Case("connection_no_password", "connection without password", "execute",
         generate(sora2_conn_id="acc_bad_no_key"), ("acc_bad_no_key", "password")),
    Case("connection_host_space", "connection host 'not a host'", "execute",
         generate(sora2_conn_id="acc_bad_host_space"), ("host", "http(s) URL")),
    Case("connection_host_port", "connection host 'http://127.0.0.1:99999'", "execute",
         generate(sora2_conn_id="acc_bad_host_port"), ("host", "http(s) URL")),
    Case("connection_host_scheme", "connection host 'ftp://example.com'", "execute",
         generate(sora2_conn_id="acc_bad_host_scheme"), ("host", "http(s) URL")),
    Case("connection_timeout_text", "connection extra timeout='soon'", "execute",
         generate(sora2_conn_id="acc_bad_timeout"), ("timeout", "positive number")),
    Case("sensor_min_credits_templated", "CreditsSensor min_credits='{{ -1 }}'", "execute",
         sensor(min_credits="{{ -1 }}"), ("min_credits", ">= 0")),
    Case("sensor_jobs_templated", "CreditsSensor jobs rendering to model 'sora-3'", "execute",
         sensor(jobs="{{ [{'model': 'sora-3', 'duration': 4}] }}"), ("jobs[0].model", MODELS)),
    Case("sensor_connection_missing", "CreditsSensor with sora2_conn_id='acc_missing'", "execute",
         sensor(min_credits=1, sora2_conn_id="acc_missing"), ("acc_missing",)),
    Case("sensor_connection_bad_host", "CreditsSensor with connection host 'not a host'", "execute",
         sensor(min_credits=1, sora2_conn_id="acc_bad_host_space"), ("host",)),
)
PARSE_CASES = tuple(c for c in CASES if c.kind == "parse")
EXECUTE_CASES = tuple(c for c in CASES if c.kind == "execute")

FILE_HEADER = """
import pendulum
from airflow.sdk import DAG
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator
from sora2_provider.sensors.credits import CreditsSensor

with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False,
         default_args={{"retries": 3, "retry_delay": 0}}) as dag:
"""


def task_line(case: Case, workdir: Path) -> str:
    return "    " + case.task.replace("{id}", case.id).replace("'{output}'", repr(f"file://{workdir}/{case.id}/v.mp4"))


def connections(url: str) -> dict[str, str]:
    """The connections the execute-time cases name (acc_missing is deliberately absent)."""
    no_key = json.dumps({"conn_type": "sora2", "host": url})
    return {
        "acc_bad_input": connection_json(url),
        "acc_bad_no_key": no_key,
        "acc_bad_host_space": connection_json("not a host"),
        "acc_bad_host_port": connection_json("http://127.0.0.1:99999"),
        "acc_bad_host_scheme": connection_json("ftp://example.com"),
        "acc_bad_timeout": connection_json(url, timeout="soon"),
        "sora2_default": connection_json(url),
    }


@dataclass
class BadInputRun:
    emulator_calls: list[dict[str, Any]]
    http_requests: list[str]
    parse_errors: dict[str, str]
    console: str
    states: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def bad_input_run(
    request: pytest.FixtureRequest, airflow_db: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BadInputRun]:
    """Parse every parse-time case, then run every execute-time case in one ``dag.test()``."""
    import requests.adapters

    from sora2_provider.testing.emulator import Sora2Emulator

    workdir = tmp_path_factory.mktemp("bad_input")
    sent: list[str] = []
    real_send = requests.adapters.HTTPAdapter.send

    def recording_send(adapter: Any, prepared: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(f"{prepared.method} {prepared.url}")
        return real_send(adapter, prepared, *args, **kwargs)

    console = SessionConsole(request.config)
    with Sora2Emulator(time_scale=matrix.TIME_SCALE, api_keys={TEST_API_KEY: TEST_BALANCE}) as emulator, \
            pytest.MonkeyPatch.context() as patch:
        patch.setattr(requests.adapters.HTTPAdapter, "send", recording_send)
        for conn_id, value in connections(emulator.url).items():
            patch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", value)
        patch.delenv("AIRFLOW_CONN_ACC_MISSING", raising=False)

        parse_dir = workdir / "parse"
        parse_dir.mkdir()
        for case in PARSE_CASES:
            source = FILE_HEADER.format(dag_id=f"bad_{case.id}") + task_line(case, workdir) + "\n"
            (parse_dir / f"bad_{case.id}.py").write_text(source)
        bag = dag_bag(parse_dir)
        parse_errors = {Path(path).stem.removeprefix("bad_"): text for path, text in bag.import_errors.items()}

        source = FILE_HEADER.format(dag_id=DAG_ID) + "\n".join(task_line(c, workdir) for c in EXECUTE_CASES) + "\n"
        console.read()
        dag_run = matrix.DagRunner().run(DAG_ID, source)
        printed = console.read()
        run = BadInputRun(
            emulator_calls=emulator.request_log,
            http_requests=list(sent),
            parse_errors=parse_errors,
            console=printed,
            states=task_instances(dag_run),
            errors=task_error_lines(printed),
        )
    yield run


def last_line(text: str) -> str:
    return [line for line in text.strip().splitlines() if line.strip()][-1].strip()


def record(results: Any, case: Case, outcome: dict[str, Any]) -> None:
    results.bad_input.append({"id": case.id, "what": case.what, "kind": case.kind, "known_miss": case.xfail, **outcome})


def check_message(message: str, case: Case) -> None:
    for expected in case.expect:
        assert expected in message, f"{case.id}: {expected!r} missing from {message!r}"


def xfail_marks(case: Case) -> list[Any]:
    return [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=xfail_marks(c)) for c in PARSE_CASES])
def test_parse_time_error_names_the_field(case: Case, bad_input_run: BadInputRun, acceptance_results: Any) -> None:
    text = bad_input_run.parse_errors.get(case.id)
    line = last_line(text) if text else None
    record(acceptance_results, case, {"error": line, "tries": 0, "state": "DAG import error"})
    assert line is not None, f"{case.id}: the DAG file imported without error"
    assert line.startswith("ValueError: "), line
    check_message(line, case)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=xfail_marks(c)) for c in EXECUTE_CASES])
def test_execute_time_error_fails_in_one_try(case: Case, bad_input_run: BadInputRun, acceptance_results: Any) -> None:
    if not bad_input_run.console:
        pytest.skip("the error lines are read from captured output: run without -s")
    ti = bad_input_run.states[case.id]
    lines = bad_input_run.errors.get(case.id, [])
    line = lines[-1] if lines else None
    state = str(getattr(ti.state, "value", ti.state))
    record(acceptance_results, case, {"error": line, "tries": ti.try_number, "state": state})
    assert state == "failed"
    assert line is not None, f"{case.id}: no exception line in the console"
    check_message(line, case)
    assert line.startswith("airflow.sdk.exceptions.AirflowFailException: "), line
    assert ti.try_number == 1, f"{case.id} used {ti.try_number} tries for an error a retry cannot fix"


def test_no_case_reached_the_network(bad_input_run: BadInputRun) -> None:
    assert bad_input_run.emulator_calls == []
    assert bad_input_run.http_requests == []


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 25
    assert {c.kind for c in CASES} == {"parse", "execute"}
    assert len({c.id for c in CASES}) == len(CASES)


def test_parse_cases_leave_no_dag_behind(bad_input_run: BadInputRun) -> None:
    assert set(bad_input_run.parse_errors) == {c.id for c in PARSE_CASES}

