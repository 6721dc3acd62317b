"""The fault matrix: "a retry never costs you twice, a failure never leaves junk".

Each row of :data:`tests.acceptance.matrix.ROWS` injects one fault (see that module and the ``matrix_run``
fixture for how they run: one real ``dag.test()`` with ``retries=3``, ``retry_delay=0``; the worker kill in a
real ``airflow dags test`` process). The targets asserted for every row:

- the run ends in success or in a clear failure (one exception line naming the cause);
- a fault a retry cannot fix uses exactly one try;
- one charge per stored video, none for a refused submit (submit-502 and expired-record rows included);
- ``output_path`` never holds a partial or corrupt object, at the start and end of any try or after the run.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance import matrix

ROW_IDS = [row.id for row in matrix.ROWS]
META_FILE = re.compile(r"_sora2_state/[0-9a-f]{32}\.meta\.json")


def row_of(matrix_run: Any, row: matrix.Row) -> dict[str, Any]:
    return matrix_run.rows[row.id]


@pytest.mark.parametrize("row", matrix.ROWS, ids=ROW_IDS)
def test_row_meets_the_targets(row: matrix.Row, matrix_run: Any) -> None:
    seen = row_of(matrix_run, row)

    assert seen["state"] == row.outcome, seen
    if row.tries is not None:
        assert seen["tries"] == row.tries, seen
    if not row.retryable:
        assert seen["tries"] == 1, f"{row.id}: a fault a retry cannot fix used {seen['tries']} tries"

    assert seen["charges"] == row.charges, f"{row.id}: {seen['charges']} charges, ledger {seen['ledger_ids']}"
    assert seen["charges"] <= 1

    assert "partial" not in seen["outputs_seen"], f"{row.id}: a try saw a partial object: {seen['outputs_seen']}"
    expected_output = "mp4" if row.outcome == "success" else "nothing"
    assert seen["output"]["kind"] == expected_output, seen["output"]

    if row.outcome == "success":
        assert len(seen["leftovers"]) == 1 and META_FILE.fullmatch(seen["leftovers"][0]), seen["leftovers"]
        assert seen["request_id"] in seen["ledger_ids"]
    else:
        assert seen["user_error"], f"{row.id}: failed without an error line"
        assert row.error_hint and row.error_hint in seen["user_error"], seen["user_error"]
        assert "\n" not in seen["user_error"]
    for error in seen["errors"]:
        if matrix_run.console:  # empty under pytest -s
            assert error["in_console"], f"{row.id}: {error['line']!r} is not what the task log shows"


@pytest.mark.parametrize("row", [r for r in matrix.ROWS if r.outcome == "failed" and r.charges == 0], ids=str)
def test_a_refused_submit_leaves_no_job_record(row: matrix.Row, matrix_run: Any) -> None:
    assert row_of(matrix_run, row)["leftovers"] == []


def test_a_job_paid_before_a_fatal_error_stays_recorded_for_a_rerun(matrix_run: Any) -> None:
    seen = matrix_run.rows["status_401_revoked"]
    assert seen["charges"] == 1 and seen["output"]["kind"] == "nothing"
    assert [name for name in seen["leftovers"] if name.startswith("_sora2_state/")] == seen["leftovers"]
    assert len(seen["leftovers"]) == 1, "the job record must stay so that a clear collects the paid job"


@pytest.mark.parametrize("row_id", ["submit_502_created", "submit_dropped_created"])
def test_a_lost_submit_answer_is_adopted_from_the_request_history(row_id: str, matrix_run: Any) -> None:
    seen = matrix_run.rows[row_id]
    assert seen["decision"] == "adopted_from_history"
    assert seen["jobs"] == 1 and seen["submits"] == 1


def test_an_expired_record_is_resumed_through_the_request_history(matrix_run: Any) -> None:
    seen = matrix_run.rows["record_expired"]
    assert seen["decision"] == "resumed" and seen["jobs"] == 1 and seen["submits"] == 1
    assert seen["errors"][0]["line"].startswith("RuntimeError: simulated worker death")


def test_a_failed_job_is_resubmitted_and_only_the_completed_one_is_charged(matrix_run: Any) -> None:
    seen = matrix_run.rows["job_failed"]
    assert seen["jobs"] == 2 and seen["charges"] == 1
    assert matrix.FAILED_JOB_MESSAGE in seen["errors"][0]["line"]


def test_the_killed_worker_is_resumed_without_a_second_submit(matrix_run: Any) -> None:
    seen = matrix_run.worker_kill
    kill = seen["kill"]
    assert kill["returncode"] == -9, kill
    assert kill["job_status_at_kill"] == ["PROCESSING"], "the process must die while the job renders"
    assert kill["killed_process_tries"] == 1
    assert kill["output_after_kill"]["kind"] == "nothing"
    assert len(kill["records_after_kill"]) == 1, "the killed try must leave its job record"
    assert kill["resumed_run_id"] == kill["killed_run_id"]
    assert seen["decision"] == "resumed" and seen["request_id"] == seen["ledger_ids"][0]
    assert seen["submits"] == 1 and seen["jobs"] == 1 and seen["charges"] == 1


def test_the_restarted_trigger_delivers_the_event_without_a_second_submit(matrix_run: Any) -> None:
    seen = matrix_run.rows["triggerer_restart"]
    killed, restarted = seen["journal"]
    assert killed["event"] == "triggerer_killed" and killed["mid_poll"], killed
    assert killed["polls_before_kill"] >= 3
    assert restarted["event"] == "triggerer_restarted" and restarted["payload"]["status"] == "completed"
    assert killed["submits"] == restarted["submits"] == seen["submits"] == 1
    assert restarted["payload"]["request_id"] == seen["request_id"]


def test_transient_faults_were_really_injected(matrix_run: Any) -> None:
    """Guard against a silently ignored fault: the faulted rows show the retries they forced."""
    console = matrix_run.console
    if not console:
        pytest.skip("no console under pytest -s")
    for needle in ("HTTP 429", "HTTP 500", "HTTP 502", "HTTP 503", "HTTP 504", "ReadTimeout", "RemoteDisconnected"):
        assert needle in console, needle


# -- storage: the atomic commit of a local file -------------------------------------------------------------


def _other_filesystem() -> Path | None:
    """A writable directory on another filesystem than the system temp dir (tmpfs at /dev/shm), if any."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        return None
    if shm.stat().st_dev == Path(tempfile.gettempdir()).stat().st_dev:
        return None
    return shm


@contextmanager
def _disk_fills_up_at(size: int) -> Iterator[None]:
    """The kernel refuses any write past ``size`` bytes of a file (``RLIMIT_FSIZE``: EFBIG, as a full disk answers
    ENOSPC), for this process, until the block ends. Python ignores SIGXFSZ, so the write raises instead."""
    assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_IGN
    before = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before)


def test_a_write_cut_short_by_a_full_disk_never_shows_a_partial_object(acceptance_results: Any) -> None:
    """The output's filesystem refuses the video half way. The output is on another filesystem than the system temp
    dir where there is one (fsspec staged local writes in the temp dir and *copied* them there on commit, so a copy
    cut short left a partial MP4): the video must be staged beside the output, and the failed write must surface
    and leave nothing at ``output_path`` nor beside it."""
    from airflow.sdk import ObjectStoragePath

    from sora2_provider.storage import atomic_writer

    folder = Path(tempfile.mkdtemp(dir=_other_filesystem(), prefix="sora2-acceptance-"))
    target = ObjectStoragePath(f"file://{folder}/video.mp4")
    payload = b"\0\0\0\x20ftypisom" + b"\1" * 200_000
    during: list[str] = []
    error: str | None = None
    try:
        with atomic_writer(target) as handle:
            during = sorted(p.name for p in folder.iterdir())
            with _disk_fills_up_at(64 * 1024):
                handle.write(payload)
                handle.flush()
    except OSError as err:
        error = f"{errno.errorcode.get(err.errno or 0, err.errno)}: {err.strerror}"
    finally:
        after = sorted(p.name for p in folder.iterdir())
        data = Path(folder / "video.mp4").read_bytes() if (folder / "video.mp4").exists() else b""
        shutil.rmtree(folder, ignore_errors=True)
    acceptance_results.storage["disk_full_write"] = {
        "other_filesystem": _other_filesystem() is not None,
        "during_write": during,
        "after_failure": after,
        "bytes_at_output": len(data),
        "payload_bytes": len(payload),
        "error": error,
    }
    assert error == "EFBIG: File too large", f"the write did not fail as the full disk made it: {error}"
    assert len(during) == 1 and during[0].startswith(".video.mp4.") and during[0].endswith(".part"), during
    assert after == [], f"junk left at or beside the output: {after}"
    assert data == b"", f"a partial object of {len(data)} bytes at output_path"
