"""A key never leaks: after the whole fault matrix ran with distinctive keys, no surface holds one.

Surfaces scanned: the task logs (console of ``dag.test()``, the killed ``airflow dags test`` output, every file
under ``AIRFLOW_HOME``), every table of the metadata DBs (XCom, rendered template fields, trigger, task
instances...), the trigger kwargs captured from the ``trigger`` table while each task was deferred (as stored
and as a triggerer decrypts them), every exception line the tries raised, the job records and journals beside
the outputs, the ``repr`` of hook, operator and trigger, hook errors whose Segmind answer echoes the key, and
the headers of the downloads (the output host must never get the key).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance import matrix
from tests.acceptance.journal import read_journal
from tests.support import TEST_API_KEY, TEST_BALANCE, connection_json

KEYS = (TEST_API_KEY, matrix.BAD_KEY)


def count(texts: Iterable[str]) -> tuple[int, int]:
    """(items scanned, occurrences of any key)."""
    items = hits = 0
    for text in texts:
        items += 1
        hits += sum(text.count(key) for key in KEYS)
    return items, hits


def files_under(*roots: Path) -> Iterable[str]:
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and path.suffix not in {".db", ".db-journal", ".db-wal", ".db-shm"}:
                yield path.read_text(errors="ignore")


def database_rows(database: Path) -> dict[str, list[str]]:
    """Every row of every table, as text."""
    tables: dict[str, list[str]] = {}
    with sqlite3.connect(database) as db:
        names = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for name in names:
            rows = db.execute(f'SELECT * FROM "{name}"').fetchall()  # names from sqlite_master
            tables[name] = [
                " ".join(v.decode(errors="ignore") if isinstance(v, bytes) else str(v) for v in row) for row in rows
            ]
    return tables


def journals(matrix_run: Any) -> list[dict[str, Any]]:
    return [event for row in matrix.ROWS for event in read_journal(matrix.journal_path(matrix_run.workdir, row))]


def key_echoing_errors() -> list[str]:
    """Hook errors for answers whose body repeats the key (JSON and HTML): the hook must redact it."""
    from sora2_provider.exceptions import Sora2Error
    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.models import VideoRequest
    from sora2_provider.testing.emulator import Sora2Emulator

    messages: list[str] = []
    echo = f"key {TEST_API_KEY} is not allowed here"
    with Sora2Emulator(api_keys={TEST_API_KEY: TEST_BALANCE}) as emulator, pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_ACC_ECHO", connection_json(emulator.url))
        hook = Sora2Hook("acc_echo", max_retries=0)
        for endpoint, status in (("submit_v2", 400), ("status", 401), ("result", 500), ("credits", 403)):
            emulator.add_fault(endpoint, "status", status=status, message=echo)
        calls = (
            lambda: hook.submit(VideoRequest.create("a key echo", duration=4)),
            lambda: hook.get_status("0000"),
            lambda: hook.get_result("0000"),
            hook.get_credits,
        )
        for call in calls:
            try:
                call()
            except Sora2Error as err:
                messages.append(str(err))
    assert len(messages) == len(calls)
    return messages


def reprs() -> list[str]:
    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator
    from sora2_provider.triggers.sora2 import Sora2JobTrigger

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_ACC_REPR", connection_json("http://127.0.0.1:9", TEST_API_KEY))
        hook = Sora2Hook("acc_repr")
        hook.get_conn()  # the key is loaded now
        operator = Sora2GenerateVideoOperator(
            task_id="repr", prompt="a repr", output_path="file:///tmp/repr.mp4", duration=4, sora2_conn_id="acc_repr"
        )
        trigger = Sora2JobTrigger("0000", "acc_repr")
        return [repr(hook), str(hook), repr(operator), str(operator), repr(trigger), repr(trigger.serialize())]


@pytest.fixture(scope="module")
def surfaces(matrix_run: Any, acceptance_results: Any) -> dict[str, tuple[int, int]]:
    airflow_home = Path(os.environ["AIRFLOW_HOME"])  # read now: the session's home is final only after collection
    events = journals(matrix_run)
    captured = [row for e in events if e["event"] == "deferred" for row in e["trigger_rows"]]
    databases = [matrix.metadata_db(), airflow_home / "acceptance-worker" / "airflow.db"]
    tables: dict[str, list[str]] = {}
    for database in databases:
        for name, rows in database_rows(database).items():
            tables.setdefault(name, []).extend(rows)
    killed_log = Path(matrix_run.worker_kill["kill"]["log"]).read_text(errors="ignore")
    found = {
        "task logs: console of dag.test()": count([matrix_run.console]),
        "task logs: killed `airflow dags test` output": count([killed_log]),
        "files under AIRFLOW_HOME (logs, DAG files)": count(files_under(airflow_home)),
        "metadata DB: xcom (XCom values)": count(tables.get("xcom", [])),
        "metadata DB: rendered_task_instance_fields": count(tables.get("rendered_task_instance_fields", [])),
        "metadata DB: trigger": count(tables.get("trigger", [])),
        "metadata DB: task_instance (next_kwargs...)": count(tables.get("task_instance", [])),
        "metadata DB: every table": count(row for rows in tables.values() for row in rows),
        "trigger table while deferred: stored kwargs": count(r["stored"] for r in captured),
        "trigger table while deferred: decrypted kwargs": count(r["kwargs"] for r in captured),
        "exception lines of every try": count(e["line"] for e in events if e["event"] == "error"),
        "hook errors echoing the key (400, 401, 403, 500)": count(key_echoing_errors()),
        "job records, meta files and journals": count(files_under(matrix_run.workdir)),
        "repr/str of hook, operator, trigger": count(reprs()),
        "downloads sent with x-api-key": (
            sum(1 for r in matrix_run.http if "/outputs/" in r["url"]),
            sum(1 for r in matrix_run.http if "/outputs/" in r["url"] and r["keyed"]),
        ),
    }
    acceptance_results.secrets = {
        "keys": [f"{key[:5]}...{key[-2:]}" for key in KEYS],
        "surfaces": {name: {"scanned": items, "occurrences": hits} for name, (items, hits) in found.items()},
        "deferrals_captured": sum(1 for e in events if e["event"] == "deferred"),
    }
    return found


def test_no_surface_holds_a_key(surfaces: dict[str, tuple[int, int]]) -> None:
    leaks = {name: hits for name, (_, hits) in surfaces.items() if hits}
    assert leaks == {}, json.dumps(leaks, indent=1)


@pytest.mark.parametrize(
    "name",
    [
        "task logs: console of dag.test()",
        "metadata DB: xcom (XCom values)",
        "metadata DB: rendered_task_instance_fields",
        "trigger table while deferred: decrypted kwargs",
        "exception lines of every try",
        "downloads sent with x-api-key",
    ],
)
def test_each_surface_was_really_scanned(name: str, surfaces: dict[str, tuple[int, int]]) -> None:
    """A scan of nothing proves nothing: each key surface held data from the matrix."""
    scanned, _ = surfaces[name]
    assert scanned > 0, name


def test_the_console_scan_covered_the_matrix_logs(matrix_run: Any) -> None:
    if not matrix_run.console:
        pytest.skip("no console under pytest -s")
    assert "Submitted sora-2 job" in matrix_run.console and "Pausing task as DEFERRED" in matrix_run.console


def test_the_keys_were_really_used(matrix_run: Any) -> None:
    """The matrix talked to the emulators with these keys: TEST_API_KEY everywhere, the bad key in its row."""
    assert matrix_run.rows["bad_key_401"]["user_error"] and "HTTP 401" in matrix_run.rows["bad_key_401"]["user_error"]
    assert matrix_run.rows["submit_429"]["state"] == "success"
