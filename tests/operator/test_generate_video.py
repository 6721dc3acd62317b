"""Sora2GenerateVideoOperator in real ``dag.test()`` runs against the emulator over real HTTP."""

from __future__ import annotations

import datetime
import hashlib
import json
from importlib.util import find_spec
from typing import Any

import pytest

from sora2_provider.triggers._render_times import RENDER_TIMES
from tests.support import TEST_API_KEY, connection_json, dag_bag, probe_mp4, task_instances, xcom_value

XCOM_FIELDS = {
    "uri",
    "request_id",
    "model",
    "duration",
    "size",
    "prompt",
    "bytes",
    "sha256",
    "content_type",
    "cost",
    "remaining_credits",
    "source_url",
    "generation_seconds",
    "decision",
    "resumed_from",
}

DAG_SOURCE = """
import datetime
import pendulum
from airflow.providers.common.compat.sdk import DAG
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator
{preamble}
with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
    {operator}(
        task_id="generate",
        retries={retries},
        retry_delay=datetime.timedelta(seconds=0),
        poll_interval={poll_interval!r},
        **{kwargs!r},
    )
"""

#: A subclass that dies once, right after the submit returned (what a killed worker leaves behind).
DIE_AFTER_SUBMIT = """
import requests

class DiesAfterSubmit(Sora2GenerateVideoOperator):
    expire_before_retry = False

    def _wait_and_store(self, context, hook, job, record):
        if context["ti"].try_number == 1:
            if self.expire_before_retry:
                while hook.get_status(record.request_id).status != "COMPLETED":
                    self._stop_polling.wait(0.05)
                requests.post(f"{hook.base_url}/_emulator/expire/{record.request_id}", timeout=5)
            raise RuntimeError("worker died after the submit returned")
        return super()._wait_and_store(context, hook, job, record)

class DiesAfterSubmitThenExpires(DiesAfterSubmit):
    expire_before_retry = True
"""


def run_generate(
    dag_runner,
    dag_id: str,
    *,
    retries: int = 0,
    operator: str = "Sora2GenerateVideoOperator",
    preamble: str = "",
    poll_interval: float = 0.05,
    **kwargs: Any,
):
    when = kwargs.pop("logical_date", None)
    test_kwargs = dated(when) if when else {}
    source = DAG_SOURCE.format(
        dag_id=dag_id, operator=operator, retries=retries, kwargs=kwargs, preamble=preamble, poll_interval=poll_interval
    )
    return dag_runner.run(dag_id, source, **test_kwargs)


def ObjectPath(uri: str) -> Any:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    return ObjectStoragePath(uri)


def read_output(uri: str) -> bytes:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    return ObjectStoragePath(uri).read_bytes()


def charged(emulator) -> list[dict]:
    return [job for job in emulator.ledger if job["charged"] > 0]


@pytest.fixture
def file_output(tmp_path):
    return f"file://{tmp_path}/videos/out.mp4"


#: Airflow 3 runs a DAG at a ``logical_date`` (and ``run_after``), Airflow 2 at an ``execution_date``.
AIRFLOW_3 = find_spec("airflow.sdk") is not None


def fab_user_table_on_airflow_2() -> None:
    """Airflow 2's ``dag.test()`` deletes the earlier run of a logical date, whose note references FAB's user
    table: its model must be loaded."""
    if not AIRFLOW_3:
        import airflow.providers.fab.auth_manager.models  # noqa: F401  # lazy: version probe


def dated(when: datetime.datetime) -> dict[str, datetime.datetime]:
    """``dag.test()``'s arguments for a run of ``when``: Airflow 2 names it ``execution_date``."""
    return {"logical_date": when, "run_after": when} if AIRFLOW_3 else {"execution_date": when}
#: Airflow 3.3+ keeps the job records in its task state store; older lines beside the output (the fallback).
HAS_TASK_STATE_STORE = tuple(int(part) for part in __import__("airflow").__version__.split(".")[:2]) >= (3, 3)


class Records:
    """Where a test's job records live: the default (Airflow's task state store on 3.3+, beside the output
    before) or ``state_path``."""

    def __init__(self, layout: str, tmp_path) -> None:
        self.layout = layout
        self.root = tmp_path / "records"
        self.output_dir = tmp_path / "videos"

    @property
    def beside_output(self) -> list[str]:
        """What the records put in the output's folder: ``_sora2_state`` only for the fallback layout."""
        return [] if self.layout == "state_path" or HAS_TASK_STATE_STORE else ["_sora2_state"]

    @property
    def kwargs(self) -> dict[str, Any]:
        return {"state_path": f"file://{self.root}/"} if self.layout == "state_path" else {}

    def job_record(self, run) -> dict | None:
        """The job record of the run's ``generate`` task, read from where this layout keeps it."""
        if self.layout == "state_path":
            files = [p for p in self.root.glob("*.json") if not p.name.endswith(".meta.json")]  # meta: the note
            assert len(files) <= 1, files
            return json.loads(files[0].read_text()) if files else None
        if not HAS_TASK_STATE_STORE:
            files = list((self.output_dir / "_sora2_state").glob("*.json"))
            files = [p for p in files if not p.name.endswith(".meta.json")]
            return json.loads(files[0].read_text()) if files else None
        return task_state_value(run, "generate", "sora2_job")


def task_state_value(run, task_id: str, key: str) -> Any:
    """A value in Airflow's ``task_state_store`` table for one task instance of ``run``."""
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(TaskStateStoreModel)
            .filter_by(dag_id=run.dag_id, run_id=run.run_id, task_id=task_id, key=key)
            .one_or_none()
        )
        return None if row is None else json.loads(row.value) if isinstance(row.value, str) else row.value


@pytest.fixture(params=["task_state_store", "state_path"])
def records(request, tmp_path) -> Records:
    return Records(request.param, tmp_path)


@pytest.fixture(params=["file", "s3"])
def any_output(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path}/videos/out.mp4"
    request.getfixturevalue("aws_conn")
    return f"s3://aws_default@sora2-test/{request.node.name.replace('[', '_').rstrip(']')}/out.mp4"


@pytest.mark.parametrize(
    ("mode", "deferrable"), [("async", True), ("async", False), ("sync", False)], ids=["deferrable", "polling", "sync"]
)
def test_each_mode_stores_a_valid_mp4_with_a_complete_xcom(sora2_conn, dag_runner, any_output, mode, deferrable):
    prompt = "A monk meditating under a waterfall"
    run = run_generate(
        dag_runner,
        f"gen_{mode}_{deferrable}",
        output_path=any_output,
        prompt=prompt,
        duration=4,
        size="1280x720",
        mode=mode,
        deferrable=deferrable,
    )

    assert run.state == "success"
    result = xcom_value(run, "generate")
    assert set(result) == XCOM_FIELDS
    data = read_output(any_output)
    assert probe_mp4(data)[:2] == (1280, 720)
    assert result["uri"] == any_output
    assert result["bytes"] == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()
    assert (result["model"], result["duration"], result["size"], result["prompt"]) == ("sora-2", 4, "1280x720", prompt)
    assert result["content_type"] == "video/mp4"
    assert result["cost"] == pytest.approx(0.4)
    if deferrable:  # completed from the request history: one keyed call (the submit), the balance left unknown
        assert result["remaining_credits"] is None
        keyed = [e["endpoint"] for e in sora2_conn.request_log if e["endpoint"] not in ("download", "history")]
        assert keyed == ["submit_v2"], keyed
    else:
        assert result["remaining_credits"] == pytest.approx(100.0 - 0.4)
    assert result["decision"] == "new_submit" and result["resumed_from"] is None
    assert [job["request_id"] for job in charged(sora2_conn)] == [result["request_id"]]
    if mode == "async":
        assert result["source_url"].startswith(sora2_conn.url)
    json.dumps(result)  # plain JSON


def test_deferrable_run_passes_through_the_triggerer(sora2_conn, dag_runner, file_output, console):
    run = run_generate(
        dag_runner, "gen_deferred", output_path=file_output, prompt="a red fox", duration=4, deferrable=True
    )
    assert run.state == "success"
    output = console.read()
    assert "Deferring while job" in output
    assert "Job" in output and "ended: completed" in output
    # The operator told the trigger the job's kind: the watcher learned its render time (180 s x 0.005 here).
    assert RENDER_TIMES.learned(("sora-2", 4, "720x1280")) == pytest.approx(0.9)


def test_retry_after_the_worker_died_resumes_the_paid_job(sora2_conn, dag_runner, file_output, console, records):
    run = run_generate(
        dag_runner,
        "gen_dies",
        retries=2,
        operator="DiesAfterSubmit",
        preamble=DIE_AFTER_SUBMIT,
        output_path=file_output,
        prompt="a lighthouse at dusk",
        duration=4,
        **records.kwargs,
    )

    assert run.state == "success"
    assert task_instances(run)["generate"].try_number == 2
    result = xcom_value(run, "generate")
    assert result["decision"] == "resumed" and result["resumed_from"] == result["request_id"]
    assert len(sora2_conn.ledger) == 1 and len(charged(sora2_conn)) == 1
    assert f"Resuming job {result['request_id']}" in console.read()
    names = sorted(p.name for p in ObjectPath(file_output).parent.iterdir())
    assert names == sorted(["out.mp4", *records.beside_output])


def test_the_job_record_is_written_before_the_paid_call_and_kept_by_a_dead_try(
    sora2_conn, dag_runner, file_output, records
):
    run = run_generate(
        dag_runner,
        "gen_dies_once",
        operator="DiesAfterSubmit",
        preamble=DIE_AFTER_SUBMIT,
        output_path=file_output,
        prompt="a tram in the rain",
        duration=4,
        **records.kwargs,
    )

    assert run.state == "failed"
    record = records.job_record(run)
    assert record is not None, f"no job record in the {records.layout} layout"
    assert record["request_id"] == sora2_conn.ledger[0]["request_id"]
    assert record["intent_at"] <= record["submitted_at"] and record["decision"] == "new_submit"
    if not records.beside_output:
        assert not ObjectPath(file_output).parent.exists(), "nothing may be written beside the output"


def test_submit_answered_502_after_creating_the_job_is_adopted_from_history(sora2_conn, dag_runner, file_output):
    sora2_conn.add_fault("submit_v2", "submit_502_after_create")
    run = run_generate(dag_runner, "gen_502", retries=2, output_path=file_output, prompt="a paper boat", duration=4)

    assert run.state == "success"
    result = xcom_value(run, "generate")
    assert result["decision"] == "adopted_from_history"
    assert len(sora2_conn.ledger) == 1 and len(charged(sora2_conn)) == 1
    assert result["request_id"] == sora2_conn.ledger[0]["request_id"]
    assert probe_mp4(read_output(file_output))


def test_resume_after_the_v2_record_expired_reads_the_output_from_history(sora2_conn, dag_runner, file_output):
    run = run_generate(
        dag_runner,
        "gen_expired",
        retries=1,
        operator="DiesAfterSubmitThenExpires",
        preamble=DIE_AFTER_SUBMIT,
        output_path=file_output,
        prompt="a snowy owl",
        duration=4,
        deferrable=True,
    )

    assert run.state == "success"
    result = xcom_value(run, "generate")
    assert result["decision"] == "resumed"
    assert result["cost"] == pytest.approx(0.4)
    assert len(sora2_conn.ledger) == 1 and len(charged(sora2_conn)) == 1
    assert probe_mp4(read_output(file_output))


def test_orphaned_intent_with_policy_fail_refuses_to_resubmit(sora2_conn, dag_runner, file_output, console):
    sora2_conn.add_fault("submit_v2", "status", status=502)  # refused before any job exists
    run = run_generate(
        dag_runner,
        "gen_orphan_fail",
        retries=2,
        output_path=file_output,
        prompt="a kite",
        duration=4,
        on_orphaned_intent="fail",
    )

    assert run.state == "failed"
    # The lost submit is looked up in the request history within the first try (issue 25): no job, so the
    # policy refuses there, and the refusal is final.
    assert task_instances(run)["generate"].try_number == 1
    assert sora2_conn.ledger == []
    assert "on_orphaned_intent='fail'" in console.read()


def test_orphaned_intent_with_an_unreadable_history_is_not_resubmitted(
    sora2_conn, dag_runner, file_output, console, monkeypatch
):
    """The first submit got no answer it could trust (502), so a job may exist; the request history that would
    tell stays unreadable past the connection's ``max_outage``: every try fails rather than risk paying twice (the
    default policy is ``resubmit``)."""
    extras = {"max_outage": 1, "outage_backoff_max": 0.2}
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(sora2_conn.url, **extras))
    sora2_conn.add_fault("submit_v2", "status", status=502)
    sora2_conn.add_fault("history", "status", status=503, times=1000)
    run = run_generate(dag_runner, "gen_orphan_blind", retries=1, output_path=file_output, prompt="a kite", duration=4)

    assert run.state == "failed"
    assert task_instances(run)["generate"].try_number == 2
    assert [e["status"] for e in sora2_conn.request_log if e["endpoint"] == "submit_v2"] == [502]
    assert sora2_conn.ledger == []
    assert "not resubmitting, to avoid paying twice" in console.read()


def test_changed_prompt_on_a_later_try_submits_a_new_job(sora2_conn, dag_runner, file_output, console, records):
    run = run_generate(
        dag_runner,
        "gen_edit",
        retries=1,
        operator="DiesAfterSubmit",
        preamble=DIE_AFTER_SUBMIT,
        output_path=file_output,
        prompt="{{ 'a cat' if ti.try_number == 1 else 'a dog' }}",
        duration=4,
        **records.kwargs,
    )

    assert run.state == "success"
    assert [job["prompt"] for job in sora2_conn.ledger] == ["a cat", "a dog"]
    assert xcom_value(run, "generate")["decision"] == "new_submit"
    assert "is abandoned" in console.read()


def test_changed_prompt_on_a_rerun_of_the_same_logical_date_submits_a_new_job(
    sora2_conn, dag_runner, file_output, console
):
    """``state_path`` records outlive the dag run; ``dag.test()`` deletes and recreates the run of a logical
    date, which also deletes its task-state rows, so this clear-and-rerun needs the object layout."""
    fab_user_table_on_airflow_2()
    when = datetime.datetime(2025, 3, 1, tzinfo=datetime.timezone.utc)
    state_path = file_output.rsplit("/", 2)[0] + "/records/"
    first = run_generate(
        dag_runner,
        "gen_edit_rerun",
        operator="DiesAfterSubmit",
        preamble=DIE_AFTER_SUBMIT,
        output_path=file_output,
        prompt="a cat",
        duration=4,
        logical_date=when,
        state_path=state_path,
    )
    assert first.state == "failed" and len(sora2_conn.ledger) == 1

    second = run_generate(
        dag_runner,
        "gen_edit_rerun",
        output_path=file_output,
        prompt="a dog",
        duration=4,
        logical_date=when,
        state_path=state_path,
    )

    assert second.run_id == first.run_id and second.state == "success"
    assert [job["prompt"] for job in sora2_conn.ledger] == ["a cat", "a dog"]
    assert xcom_value(second, "generate")["decision"] == "new_submit"
    assert "is abandoned" in console.read()


#: One DAG whose tasks each meet a different rerun case; every task's output lies in ``{folder}``.
RERUN_DAG = """
import pendulum
from airflow.providers.common.compat.sdk import DAG
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
    for task_id, extra in {tasks!r}.items():
        Sora2GenerateVideoOperator(
            task_id=task_id,
            output_path={folder!r} + "/" + task_id + ".mp4",
            prompt="{{{{ (dag_run.conf or {{}}).get('prompt', {{}}).get(task.task_id, 'a sailboat') }}}}",
            duration=4,
            poll_interval=0.05,
            state_path={state_path!r},
            **extra,
        )
"""
RERUN_TASKS = {"unchanged": {}, "overwrite": {"overwrite": True}, "tampered": {}, "deleted": {}, "new_prompt": {}}


def calls_during(emulator, ti) -> list[str]:
    """The emulator's endpoints called while ``ti`` ran (``dag.test()`` runs one task instance at a time)."""
    start, end = ti.start_date.timestamp(), ti.end_date.timestamp()
    return [e["endpoint"] for e in emulator.request_log if start <= e["time"] <= end]


def test_a_rerun_reuses_only_the_verified_video_of_the_same_inputs(sora2_conn, dag_runner, tmp_path, console):
    """The second run of a logical date: an untouched video from the same inputs is reused without any API call;
    ``overwrite=True``, a video changed or removed since it was noted, and other inputs each pay for a new one.

    ``dag.test()`` deletes and recreates the run of a logical date (and its task-state rows): the note that carries
    the XCom across runs needs the object layout (``state_path``) here; the e2e suite clears a real run instead."""
    fab_user_table_on_airflow_2()
    when = datetime.datetime(2025, 4, 1, tzinfo=datetime.timezone.utc)
    folder = tmp_path / "videos"
    source = RERUN_DAG.format(
        dag_id="gen_rerun", tasks=RERUN_TASKS, folder=f"file://{folder}", state_path=f"file://{tmp_path}/records/"
    )
    first = dag_runner.run("gen_rerun", source, **dated(when))
    assert first.state == "success"
    before = {task_id: xcom_value(first, task_id) for task_id in RERUN_TASKS}
    tampered = (folder / "tampered.mp4").read_bytes()  # same size, still an MP4, one byte changed
    (folder / "tampered.mp4").write_bytes(tampered[:-1] + bytes([tampered[-1] ^ 0xFF]))
    (folder / "deleted.mp4").unlink()
    console.read()

    conf = {"prompt": {"new_prompt": "a sailboat at night"}}
    second = dag_runner.run("gen_rerun", source, **dated(when), run_conf=conf)

    assert second.run_id == first.run_id and second.state == "success"
    after = {task_id: xcom_value(second, task_id) for task_id in RERUN_TASKS}
    assert {task_id: xcom["decision"] for task_id, xcom in after.items()} == {
        "unchanged": "existing_output",
        "overwrite": "new_submit",
        "tampered": "new_submit",
        "deleted": "new_submit",
        "new_prompt": "new_submit",
    }
    assert {k: v for k, v in after["unchanged"].items() if k != "decision"} == {
        k: v for k, v in before["unchanged"].items() if k != "decision"
    }
    unchanged = task_instances(second)["unchanged"]
    if unchanged.start_date is not None:  # Airflow 2.11's dag.test() rerun reports it without its dates: there the
        assert calls_during(sora2_conn, unchanged) == []  # ledger check below (no new job for it) stands alone
    for task_id in ("overwrite", "tampered", "deleted", "new_prompt"):
        assert after[task_id]["request_id"] != before[task_id]["request_id"], task_id
        data = (folder / f"{task_id}.mp4").read_bytes()
        assert (after[task_id]["bytes"], after[task_id]["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert after["new_prompt"]["prompt"] == "a sailboat at night"
    assert "was made from other inputs; generating a new one" in console.read()
    assert len(sora2_conn.ledger) == len(RERUN_TASKS) + 4


def test_download_cut_mid_stream_leaves_nothing_and_the_retry_completes(sora2_conn, dag_runner, tmp_path):
    output = f"file://{tmp_path}/cut/out.mp4"
    sora2_conn.add_fault("download", "truncate", after_bytes=1000, times=50)
    probe = """
import pathlib

class RecordsOutputBeforeRetry(Sora2GenerateVideoOperator):
    def execute(self, context):
        if context["ti"].try_number == 2:
            folder = pathlib.Path({folder!r})
            pathlib.Path({report!r}).write_text(repr(sorted(p.name for p in folder.iterdir())))
            {clear_faults}
        return super().execute(context)
""".format(
        folder=str(tmp_path / "cut"),
        report=str(tmp_path / "listing.txt"),
        clear_faults=f"import requests; requests.delete('{sora2_conn.url}/_emulator/faults', timeout=5)",
    )
    run = run_generate(
        dag_runner,
        "gen_cut",
        retries=1,
        operator="RecordsOutputBeforeRetry",
        preamble=probe,
        output_path=output,
        prompt="a waterfall",
        duration=4,
    )

    beside = Records("default", tmp_path).beside_output  # the job record's folder, where the fallback keeps it
    assert (tmp_path / "listing.txt").read_text() == repr(beside), "a cut download must leave no partial file"
    assert run.state == "success"
    assert probe_mp4(read_output(output))
    assert len(charged(sora2_conn)) == 1


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("bad_key", "HTTP 401"),
        ("no_credits", "HTTP 406"),
        ("retired", "HTTP 410"),
    ],
)
def test_non_retryable_errors_fail_in_one_try(emulator, monkeypatch, dag_runner, file_output, console, setup, expected):
    from tests.support import connection_json

    key = TEST_API_KEY
    if setup == "bad_key":
        key = "SG_ffffffffffffffff"
    elif setup == "no_credits":
        emulator.set_balance(TEST_API_KEY, 0.1, 0.0)
    else:
        emulator.set_model_state("sora-2", "retired")
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emulator.url, key))
    run = run_generate(dag_runner, f"gen_fail_{setup}", retries=3, output_path=file_output, prompt="a bird", duration=4)

    assert run.state == "failed"
    assert task_instances(run)["generate"].try_number == 1
    assert expected in console.read()
    assert not any(job["charged"] for job in emulator.ledger)


@pytest.mark.parametrize("deferrable", [True, False], ids=["deferrable", "polling"])
def test_failed_job_fails_the_task_with_segmind_message_and_is_retryable(
    sora2_conn, dag_runner, file_output, console, deferrable
):
    """FAILED ends the wait in the triggerer (from the request history) and on the worker (from the status, HTTP
    422); ``generation_timeout`` only bounds a wait that would otherwise not end."""
    sora2_conn.add_fault("submit_v2", "fail_job", message="prompt rejected by safety system")
    run = run_generate(
        dag_runner,
        f"gen_job_failed_{deferrable}",
        retries=1,
        output_path=file_output,
        prompt="a storm",
        duration=4,
        deferrable=deferrable,
        generation_timeout=20,
    )

    assert run.state == "success"  # the retry submitted again: a FAILED job is not billed
    assert "prompt rejected by safety system" in console.read()
    assert [job["status"] for job in sora2_conn.ledger] == ["FAILED", "COMPLETED"]
    assert len(charged(sora2_conn)) == 1


def test_generation_timeout_ends_the_wait_and_the_retry_does_not_resubmit(
    sora2_conn, dag_runner, file_output, console
):
    """A sora-2-pro job renders for 2 s here; the task allows 0.5 s from its submit. The first try stops waiting,
    the retry finds the limit already passed and fails without buying another job (the record is kept)."""
    run = run_generate(
        dag_runner,
        "gen_timeout",
        retries=1,
        output_path=file_output,
        prompt="a glacier",
        model="sora-2-pro",
        duration=4,
        generation_timeout=0.5,
    )

    assert run.state == "failed"
    assert task_instances(run)["generate"].try_number == 2
    output = console.read()
    assert "within generation_timeout=0:00:00.500000" in output
    assert len(sora2_conn.ledger) == 1
    assert not ObjectPath(file_output).exists()


def test_max_cost_below_the_estimate_fails_before_submit(sora2_conn, dag_runner, file_output, console):
    run = run_generate(
        dag_runner,
        "gen_budget",
        retries=2,
        output_path=file_output,
        prompt="a city",
        duration=12,
        model="sora-2-pro",
        size="1792x1024",
        max_cost=5.0,
    )
    assert run.state == "failed"
    assert task_instances(run)["generate"].try_number == 1
    assert sora2_conn.request_log == []
    assert "above max_cost=5.00" in console.read()


def test_private_image_is_uploaded_and_used_as_input_reference(sora2_conn, dag_runner, tmp_path, file_output):
    image = tmp_path / "ref.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    run = run_generate(
        dag_runner, "gen_image", output_path=file_output, prompt="animate this", duration=4, input_reference=str(image)
    )
    assert run.state == "success"
    import requests

    history = requests.get(
        f"{sora2_conn.url}/inference-request/request-history", headers={"x-api-key": TEST_API_KEY}, timeout=5
    ).json()
    (row,) = history["data"]
    uploaded = row["request_body"]["input_reference"]
    assert uploaded.startswith(sora2_conn.url)
    assert requests.get(uploaded, timeout=5).content == image.read_bytes()


def test_a_missing_output_bucket_fails_at_once_naming_it_and_nothing_is_paid(sora2_conn, aws_conn, dag_runner):
    import boto3
    import botocore.exceptions

    output = "s3://aws_default@no-such-bucket/daily/out.mp4"
    run = run_generate(dag_runner, "gen_no_bucket", output_path=output, prompt="a fern", duration=4, retries=2)
    assert run.state == "failed"
    assert sora2_conn.ledger == []  # nothing submitted, so nothing paid
    assert [(ti.state, ti.try_number) for ti in task_instances(run).values()] == [("failed", 1)]  # no retry
    assert xcom_value(run, "generate", key="sora2_error") == (
        f"output_path: the bucket 'no-such-bucket' of {output} does not exist: create it, or correct output_path or "
        "its connection; nothing was submitted"
    )
    s3 = boto3.client("s3", endpoint_url=aws_conn, region_name="us-east-1")
    with pytest.raises(botocore.exceptions.ClientError):  # and the provider did not create it
        s3.head_bucket(Bucket="no-such-bucket")


def test_extra_links_point_at_the_stored_video(sora2_conn, aws_conn, dag_runner):
    from sora2_provider.compat import LINKS_STORED_BY_WORKER
    from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

    output = "s3://aws_default@sora2-test/links/fern.mp4"
    run = run_generate(dag_runner, "gen_links", output_path=output, prompt="a fern", duration=4)
    result = xcom_value(run, "generate")
    console = "https://s3.console.aws.amazon.com/s3/object/sora2-test?prefix=links/fern.mp4"
    if LINKS_STORED_BY_WORKER:  # Airflow 3: the worker stored each link's URL in XCom when the task ended
        assert xcom_value(run, "generate", key="_link_Sora2VideoLink") == console
        assert xcom_value(run, "generate", key="_link_Sora2OutputLink") == result["source_url"]
        return
    # Airflow 2: the webserver asks a freshly loaded operator, which holds nothing the task set: the XCom answers.
    ti = task_instances(run)["generate"]
    links = {link.name: link for link in Sora2GenerateVideoOperator.operator_extra_links}
    fresh = Sora2GenerateVideoOperator(task_id="generate", prompt="a fern", output_path=output, duration=4)
    assert fresh.stored_video_uri is None
    assert links["Stored video"].get_link(fresh, ti_key=ti.key) == console
    assert links["Segmind output"].get_link(fresh, ti_key=ti.key) == result["source_url"]


def test_asset_outlet_event_carries_the_video_metadata(sora2_conn, dag_runner, file_output):
    from airflow.utils.session import create_session

    try:
        from airflow.models.asset import AssetEvent, AssetModel  # lazy: version probe (Airflow 3's assets)

        asset_id, asset_name = AssetEvent.asset_id, AssetModel.name
    except ImportError:  # Airflow 2: the same things are datasets, named by their uri
        from airflow.models.dataset import DatasetEvent as AssetEvent
        from airflow.models.dataset import DatasetModel as AssetModel

        asset_id, asset_name = AssetEvent.dataset_id, AssetModel.uri

    preamble = "from airflow.providers.common.compat.sdk import Asset"
    source = DAG_SOURCE.format(
        dag_id="gen_asset",
        operator="Sora2GenerateVideoOperator",
        retries=0,
        poll_interval=0.05,
        preamble=preamble,
        kwargs={"output_path": file_output, "prompt": "a comet", "duration": 4},
    )
    source = source.replace('task_id="generate",', 'task_id="generate", outlets=[Asset("sora2_test_videos")],')
    bag = dag_bag(dag_runner.write("gen_asset", source))
    if hasattr(bag, "sync_to_db"):  # 2.x and 3.0: dag.test() records events only of assets the DB knows
        if AIRFLOW_3:  # 3.0: into the DAG bundle, which must be in the DB first
            from airflow.dag_processing.bundles.manager import DagBundlesManager  # lazy: version probe (3.0)

            DagBundlesManager().sync_bundles_to_db()
            bag.sync_to_db("dags-folder", None)
        else:
            bag.sync_to_db()
    run = dag_runner.run("gen_asset", source)
    result = xcom_value(run, "generate")

    with create_session() as session:
        event = (
            session.query(AssetEvent)
            .join(AssetModel, asset_id == AssetModel.id)
            .filter(asset_name == "sora2_test_videos")
            .one()
        )
        extra = dict(event.extra)
    expected = {key: result[key] for key in ("uri", "request_id", "model", "duration", "cost")}
    assert {key: extra.get(key) for key in expected} == expected


#: A subclass whose ``on_kill`` is called from another thread, as the task runner does on SIGTERM, once the
#: emulator has answered the submit (polled with a deadline).
KILLED_WHILE_POLLING = """
import threading
import time

import requests

class KilledWhilePolling(Sora2GenerateVideoOperator):
    def execute(self, context):
        threading.Thread(target=self._kill_once_submitted, daemon=True).start()
        return super().execute(context)

    def _kill_once_submitted(self):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            log = requests.get({url!r} + "/_emulator/requests", timeout=5).json()["requests"]
            if any(e["endpoint"] == "submit_v2" and e["status"] == 200 for e in log):
                self.on_kill()
                return
            threading.Event().wait(0.01)
"""


def test_on_kill_stops_worker_side_polling_and_keeps_the_job_record(sora2_conn, dag_runner, tmp_path, console):
    """``on_kill`` ends the polling wait at once (a 30 s interval here, and the job renders for 2 s); the job
    record stays, naming the job already paid for, so the next try resumes it."""
    output = f"file://{tmp_path}/videos/out.mp4"
    run = run_generate(
        dag_runner,
        "gen_killed",
        operator="KilledWhilePolling",
        preamble=KILLED_WHILE_POLLING.format(url=sora2_conn.url),
        poll_interval=30,
        output_path=output,
        prompt="a glacier",
        model="sora-2-pro",
        duration=4,
    )

    assert run.state == "failed"
    assert "was stopped; the next try resumes it" in console.read()
    (job,) = sora2_conn.ledger
    record = Records("task_state_store", tmp_path).job_record(run)
    assert record is not None, "the killed try left no job record"
    assert (record["request_id"], record["decision"]) == (job["request_id"], "new_submit")
    assert not [e for e in sora2_conn.request_log if e["endpoint"] in ("status", "result", "download")]
    assert not ObjectPath(output).exists()
