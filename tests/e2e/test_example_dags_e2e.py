"""The example DAGs on a real Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor, SQLite).

Runs are triggered through the REST API and awaited with deadlines. The three one-video DAGs run at once, then
the batch runs alone, so the emulator's view of concurrent jobs belongs to the batch only; then two runs of the
review DAG, whose review requests are answered through the REST API (one approved, one rejected).

Signals used:
- deferral: the generate task's worker log says ``Pausing task as DEFERRED.`` and *then* stores the video (the
  resumed half, same try), and the triggerer wrote the trigger's own log file for that try
  (``attempt=<n>.log.trigger.<triggerer job id>.log``) naming the job and ending with ``trigger completed``. The
  metadata DB keeps no trace once the task is done (``next_method`` and ``trigger_id`` are cleared, the trigger
  row deleted), so the logs are the record. A second try is accepted only when the scheduler logged Airflow's
  own defer race for that task instance (see ``AIRFLOW_DEFER_RACE`` in support.py); one charge per video must
  hold even then.
- charges and concurrency: the emulator's ledger (``GET /_emulator/ledger``): one charged job per stored video,
  and ``running_jobs_peak``, the most jobs QUEUED or PROCESSING at one moment; for the pool, also the overlap
  of the mapped task instances' start and end dates (deferral included), which does not depend on timing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from tests.e2e.support import EXAMPLE_DAGS, POLL_INTERVAL, S3_BUCKET, AirflowCluster, emulator_ledger
from tests.support import TEST_API_KEY, peak_overlap, probe_mp4, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

DAILY = "sora2_daily_video"
#: A run of the daily DAG whose ``output_root`` param points at S3 (a key of ``Runs``, not a DAG id).
DAILY_S3 = "sora2_daily_video (S3)"
IMAGE = "sora2_image_to_video"
BATCH = "sora2_batch"
RUN_DATE = "2025-06-01"
S3_RUN_DATE = "2025-06-02"
KEYED_ENDPOINTS = ("submit_v2", "submit_v1", "status", "result", "credits", "history", "history_item", "upload")
RUN_DEADLINE = 180  # seconds; a run takes 20 to 60 s here
MAX_KEYED_CALLS_PER_VIDEO = 2.1  # issue 15
#: The batch DAG's prompts: three waves of two in the pool of 2, so the waves' shared history reads are measured
#: over pairs (a lone last video would make its own read).
BATCH_VIDEOS = 6


@dataclass
class Runs:
    run_ids: dict[str, str]
    states: dict[str, str]
    ledger: dict[str, Any]


def dag_of(key: str) -> str:
    """The DAG id of a run key of ``Runs``."""
    return DAILY if key == DAILY_S3 else key


@pytest.fixture(scope="module")
def single_runs(airflow_cluster: AirflowCluster, e2e_emulator: Any) -> Runs:
    """The daily DAG (to file, dated RUN_DATE; to S3 through its ``output_root`` param, dated S3_RUN_DATE) and the
    image DAG (no logical date), triggered at the same time (the daily DAG runs one run at a time)."""
    run_ids = {
        DAILY: airflow_cluster.trigger(DAILY, f"{RUN_DATE}T00:00:00Z"),
        DAILY_S3: airflow_cluster.trigger(
            DAILY, f"{S3_RUN_DATE}T00:00:00Z", output_root=f"s3://aws_default@{S3_BUCKET}"
        ),
        IMAGE: airflow_cluster.trigger(IMAGE, None),
    }
    started = time.monotonic()
    states = airflow_cluster.wait_for_runs({k: v for k, v in run_ids.items() if k != DAILY_S3}, RUN_DEADLINE)
    states.update(airflow_cluster.wait_for_runs({DAILY_S3: run_ids[DAILY_S3]}, RUN_DEADLINE, dag_id=DAILY))
    print(f"{', '.join(run_ids)}: {states} in {time.monotonic() - started:.0f} s")
    return Runs(run_ids, states, emulator_ledger(e2e_emulator))


@pytest.fixture(scope="module")
def batch_run(airflow_cluster: AirflowCluster, e2e_emulator: Any, single_runs: Runs) -> Runs:
    """The batch DAG alone, after the single runs, on a reset emulator (its ledger and peak are the batch's).

    The triggerer has then seen a job of the batch's kind complete (the image DAG's sora-2, 4 s, 720x1280), as a
    running triggerer has: it knows when the batch's jobs can be done (triggers/_render_times.py)."""
    requests.post(f"{e2e_emulator.url}/_emulator/reset", timeout=10).raise_for_status()
    run_ids = {BATCH: airflow_cluster.trigger(BATCH, f"{RUN_DATE}T00:00:00Z")}
    started = time.monotonic()
    states = airflow_cluster.wait_for_runs(run_ids, timeout=RUN_DEADLINE)
    print(f"{BATCH}: {states} in {time.monotonic() - started:.0f} s")
    return Runs(run_ids, states, emulator_ledger(e2e_emulator))


def assert_run_succeeded(cluster: AirflowCluster, runs: Runs, dag_id: str) -> dict[str, dict[str, Any]]:
    tis = cluster.task_instances(dag_of(dag_id), runs.run_ids[dag_id])
    states = {task: ti["state"] for task, ti in tis.items()}
    assert runs.states[dag_id] == "success", f"{dag_id}: {states}\n{cluster.diagnose(runs.run_ids)}"
    assert set(states.values()) == {"success"}, states
    return tis


def assert_valid_video(data: bytes, xcom: dict[str, Any]) -> None:
    width, height = map(int, xcom["size"].split("x"))
    assert probe_mp4(data)[:2] == (width, height)
    assert len(data) == xcom["bytes"]
    assert hashlib.sha256(data).hexdigest() == xcom["sha256"]


def assert_deferred(cluster: AirflowCluster, dag_id: str, run_id: str, request_id: str, map_index: int = -1) -> None:
    """The task deferred on the worker, the triggerer ran its trigger, and the task resumed to store the video.

    Read from the last try's logs; an earlier try is accepted only when Airflow's defer race explains it."""
    files = cluster.task_log_files(dag_id, run_id, "generate_video", map_index)
    tries = {int(m[1]): p for p in files if (m := re.fullmatch(r"attempt=(\d+)\.log", p.name))}
    assert tries, f"no worker log for {dag_id}/{run_id}/generate_video[{map_index}]: {files}"
    races = cluster.defer_races(dag_id, run_id, map_index)
    assert len(tries) - 1 <= races, f"retries of {dag_id}/{run_id}/generate_video[{map_index}]: {files}"
    last = tries[max(tries)]
    trigger_logs = [p for p in files if re.fullmatch(re.escape(last.name) + r"\.trigger\.\d+\.log", p.name)]
    assert trigger_logs, f"no triggerer log for the last try of {dag_id}/{run_id}/generate_video[{map_index}]: {files}"
    worker = _events(last)
    deferred = _index(worker, "Pausing task as DEFERRED")
    stored = _index(worker, "Stored ")
    assert 0 <= deferred < stored, f"expected deferral, then the resumed task storing the video: {worker}"
    # The triggerer writes "trigger completed" after the event it fired: the resumed task may be done before that.
    with contextlib.suppress(TimeoutError):
        wait_for("the trigger's last log line", lambda: _events(trigger_logs[0])[-1:] == ["trigger completed"], 30)
    trigger = _events(trigger_logs[0])
    assert any(request_id in event and "ended: completed" in event for event in trigger), trigger
    assert trigger[-1] == "trigger completed", trigger
    # The triggerer that ran it is still the one started with the cluster (same PID): on Airflow 3.1 a trigger whose
    # thread messaged the supervisor ("Response read out of order") took the whole triggerer down.
    cluster.assert_running("triggerer")
    assert "Response read out of order" not in (cluster.log_dir / "triggerer.log").read_text(errors="replace")


def _instant(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _events(path: Path) -> list[str]:
    """The messages of a JSON-lines task log."""
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(str(json.loads(line).get("event", "")).strip())
        except ValueError:
            events.append(line)
    return events


def _index(events: list[str], prefix: str) -> int:
    return next((i for i, event in enumerate(events) if event.startswith(prefix)), -1)


# ---------------------------------------------------------------------------------------------- single videos


def test_daily_video_in_file_storage(airflow_cluster: AirflowCluster, single_runs: Runs) -> None:
    tis = assert_run_succeeded(airflow_cluster, single_runs, DAILY)
    run_id = single_runs.run_ids[DAILY]
    xcom = airflow_cluster.xcom(DAILY, run_id, "generate_video")
    expected = airflow_cluster.output_root / "daily" / RUN_DATE / "video.mp4"
    assert xcom["uri"] == expected.as_uri()
    assert_valid_video(expected.read_bytes(), xcom)
    races = airflow_cluster.defer_races(DAILY, run_id)  # a retry after Airflow's race resumes the paid job
    assert xcom["decision"] == ("resumed" if races else "new_submit") and xcom["cost"] == 0.8
    checked = airflow_cluster.xcom(DAILY, run_id, "check_stored_video")
    assert checked == {"uri": xcom["uri"], "bytes": xcom["bytes"], "request_id": xcom["request_id"], "cost": 0.8}
    credits = airflow_cluster.xcom(DAILY, run_id, "wait_for_credits")
    assert credits["required"] == 0.8 and credits["available"] >= 0.8
    assert tis["generate_video"]["try_number"] == 1 + races


def test_daily_video_in_s3(airflow_cluster: AirflowCluster, single_runs: Runs, s3_server: str) -> None:
    assert_run_succeeded(airflow_cluster, single_runs, DAILY_S3)
    xcom = airflow_cluster.xcom(DAILY, single_runs.run_ids[DAILY_S3], "generate_video")
    key = f"daily/{S3_RUN_DATE}/video.mp4"
    assert xcom["uri"] == f"s3://aws_default@{S3_BUCKET}/{key}"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    assert_valid_video(s3.get_object(Bucket=S3_BUCKET, Key=key)["Body"].read(), xcom)
    listed = [obj["Key"] for obj in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix=f"daily/{S3_RUN_DATE}/")["Contents"]]
    assert listed == [key], "the job record lives in Airflow's task state store: nothing but the video in the bucket"
    assert not s3.list_multipart_uploads(Bucket=S3_BUCKET).get("Uploads"), "an unfinished multipart upload is left"


def test_image_to_video_uploads_the_private_image(
    airflow_cluster: AirflowCluster, single_runs: Runs, e2e_emulator: Any
) -> None:
    """A file in object storage (not a URL) goes to Segmind through the upload API; the path falls back to run_after."""
    assert_run_succeeded(airflow_cluster, single_runs, IMAGE)
    run_id = single_runs.run_ids[IMAGE]
    run = airflow_cluster.api("GET", f"/dags/{IMAGE}/dagRuns/{run_id}")
    assert run["logical_date"] is None
    run_date = _instant(run["run_after"]).strftime("%Y-%m-%d")
    xcom = airflow_cluster.xcom(IMAGE, run_id, "generate_video")
    expected = airflow_cluster.output_root / "image_to_video" / run_date / "video.mp4"
    assert xcom["uri"] == expected.as_uri()
    assert_valid_video(expected.read_bytes(), xcom)

    image = airflow_cluster.output_root / "reference" / "sample-720x1280.png"
    assert airflow_cluster.xcom(IMAGE, run_id, "reference_image") == image.as_uri()
    history = requests.get(
        f"{e2e_emulator.url}/inference-request/request-history/{xcom['request_id']}",
        headers={"x-api-key": TEST_API_KEY},
        timeout=10,
    ).json()
    reference = history["request_body"]["input_reference"]
    assert reference.startswith(f"{e2e_emulator.url}/assets/"), reference
    assert requests.get(reference, timeout=10).content == image.read_bytes()
    uploads = [call for call in e2e_emulator.request_log if call["endpoint"] == "upload"]
    assert [call["status"] for call in uploads] == [200]


@pytest.mark.parametrize("dag_id", [DAILY, DAILY_S3, IMAGE])
def test_generate_task_deferred(airflow_cluster: AirflowCluster, single_runs: Runs, dag_id: str) -> None:
    run_id = single_runs.run_ids[dag_id]
    request_id = airflow_cluster.xcom(dag_of(dag_id), run_id, "generate_video")["request_id"]
    assert_deferred(airflow_cluster, dag_of(dag_id), run_id, request_id)


def test_one_charge_per_video(airflow_cluster: AirflowCluster, single_runs: Runs) -> None:
    xcoms = [airflow_cluster.xcom(dag_of(key), run_id, "generate_video") for key, run_id in single_runs.run_ids.items()]
    ledger = single_runs.ledger["ledger"]
    assert sorted(job["request_id"] for job in ledger) == sorted(x["request_id"] for x in xcoms), ledger
    assert single_runs.ledger["charges"] == {x["request_id"]: x["cost"] for x in xcoms}
    assert all(job["status"] == "COMPLETED" and job["api"] == "v2" for job in ledger), ledger


def test_clear_and_rerun_returns_the_stored_video_without_a_call(
    airflow_cluster: AirflowCluster, single_runs: Runs, e2e_emulator: Any
) -> None:
    """The output note kept in the task state store survives a clear: the rerun pays nothing, calls nothing."""
    assert_run_succeeded(airflow_cluster, single_runs, DAILY_S3)
    run_id = single_runs.run_ids[DAILY_S3]
    before = airflow_cluster.xcom(DAILY, run_id, "generate_video")
    state = f"/dags/{DAILY}/dagRuns/{run_id}/taskInstances/generate_video/state-store"
    note = airflow_cluster.api("GET", f"{state}/sora2_output")
    assert note["value"]["xcom"]["request_id"] == before["request_id"], note
    calls = len(e2e_emulator.request_log)

    tries = airflow_cluster.task_instances(DAILY, run_id)["generate_video"]["try_number"]
    body = {"dry_run": False, "only_failed": False, "dag_run_id": run_id, "task_ids": ["generate_video"]}
    cleared = airflow_cluster.api("POST", f"/dags/{DAILY}/clearTaskInstances", json=body)
    assert [ti["task_id"] for ti in cleared["task_instances"]] == ["generate_video"], cleared

    def rerun_finished() -> bool:
        ti = airflow_cluster.task_instances(DAILY, run_id)["generate_video"]
        return ti["try_number"] > tries and ti["state"] in ("success", "failed")

    wait_for("the cleared task's rerun", rerun_finished, RUN_DEADLINE)
    assert airflow_cluster.task_instances(DAILY, run_id)["generate_video"]["state"] == "success"

    after = airflow_cluster.xcom(DAILY, run_id, "generate_video")
    assert after["decision"] == "existing_output"
    assert {k: v for k, v in after.items() if k != "decision"} == {k: v for k, v in before.items() if k != "decision"}
    assert len(e2e_emulator.request_log) == calls, e2e_emulator.request_log[calls:]


# ---------------------------------------------------------------------------------------------- the batch


def test_batch_runs_at_most_pool_size_jobs_at_once(airflow_cluster: AirflowCluster, batch_run: Runs) -> None:
    tis = assert_run_succeeded(airflow_cluster, batch_run, BATCH)
    run_id = batch_run.run_ids[BATCH]
    mapped = {name: ti for name, ti in tis.items() if name.startswith("generate_video[")}
    assert len(mapped) == BATCH_VIDEOS
    assert {ti["pool"] for ti in mapped.values()} == {"sora2"}

    # At the emulator: never more than two jobs QUEUED or PROCESSING at once.
    peak = batch_run.ledger["running_jobs_peak"]
    assert 1 <= peak <= 2, f"{peak} Sora 2 jobs rendered at once with a pool of 2"
    # In Airflow: never more than two generate tasks between their start and their end, deferral included
    # (a pool without include_deferred lets four overlap here, however fast or slow the machine).
    spans = [(ti["start_date"], ti["end_date"]) for ti in mapped.values()]
    assert peak_overlap(spans) <= 2, spans

    # One sensor sized for the whole batch: 6 x 4 s of sora-2 at 0.10 credits/s.
    assert airflow_cluster.xcom(BATCH, run_id, "wait_for_credits")["required"] == pytest.approx(0.4 * BATCH_VIDEOS)
    xcoms = [airflow_cluster.xcom(BATCH, run_id, "generate_video", map_index=i) for i in range(BATCH_VIDEOS)]
    prompts = [
        airflow_cluster.rendered_fields(BATCH, run_id, "generate_video", i)["prompt"] for i in range(BATCH_VIDEOS)
    ]
    assert [x["prompt"] for x in xcoms] == prompts and len(set(prompts)) == BATCH_VIDEOS
    for index, xcom in enumerate(xcoms):
        path = airflow_cluster.output_root / "batch" / RUN_DATE / f"{index}.mp4"
        assert xcom["uri"] == path.as_uri()
        assert_valid_video(path.read_bytes(), xcom)
        assert_deferred(airflow_cluster, BATCH, run_id, xcom["request_id"], map_index=index)

    ledger = batch_run.ledger["ledger"]
    assert batch_run.ledger["charges"] == {x["request_id"]: 0.4 for x in xcoms}
    assert sorted(job["prompt"] for job in ledger) == sorted(prompts)
    summary = airflow_cluster.xcom(BATCH, run_id, "summarize")
    assert summary == {"videos": [x["uri"] for x in xcoms], "total_cost": pytest.approx(0.4 * BATCH_VIDEOS)}


def test_batch_costs_at_most_2_1_keyed_calls_per_video(
    airflow_cluster: AirflowCluster, batch_run: Runs, e2e_emulator: Any
) -> None:
    """Every keyed call the batch made, per video: the submits, the credits gate and the history reads of the
    triggers' shared watcher, which reads only once a job can be done (then every interval) and hands the output
    URL and cost to the task, so no status or result call is made."""
    assert_run_succeeded(airflow_cluster, batch_run, BATCH)
    calls = [e for e in e2e_emulator.request_log if e["endpoint"] in KEYED_ENDPOINTS]
    keyed = Counter(e["endpoint"] for e in calls)
    run = airflow_cluster.api("GET", f"/dags/{BATCH}/dagRuns/{batch_run.run_ids[BATCH]}")
    waited = (_instant(run["end_date"]) - _instant(run["start_date"])).total_seconds()
    videos = len(batch_run.ledger["ledger"])
    per_video = sum(keyed.values()) / videos
    timeline = ", ".join(f"{e['endpoint']} {e['time'] - calls[0]['time']:.1f}" for e in calls)
    print(f"batch: {videos} videos, {sum(keyed.values())} keyed calls ({dict(keyed)}, {per_video:.2f} a video, "
          f"poll interval {POLL_INTERVAL} s) in {waited:.1f} s: {timeline}")
    assert videos == BATCH_VIDEOS and keyed["submit_v2"] == videos
    assert keyed["status"] == keyed["result"] == 0, keyed
    assert per_video <= MAX_KEYED_CALLS_PER_VIDEO, f"{dict(keyed)}; seconds after the first call: {timeline}"


# ---------------------------------------------------------------------------------------- review before publishing

REVIEW = "sora2_review_and_publish"
#: Where a human-in-the-loop task waits: Airflow 3.3 parks it (no trigger), 3.1 and 3.2 defer it to HITLTrigger.
AWAITING_REVIEW = ("awaiting_input", "deferred")


@dataclass
class Reviews:
    run_ids: dict[str, str]  # "Approve" / "Reject" -> run id
    states: dict[str, str]  # same keys -> the run's final state
    requests: dict[str, dict[str, Any]]  # same keys -> the review request (HITL detail) as the reviewer saw it
    published_before_answers: list[str]


def hitl_path(run_id: str, dag_id: str = REVIEW) -> str:
    return f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/review_video/-1/hitlDetails"


def published_files(cluster: AirflowCluster) -> list[str]:
    """Every file under published/, staged ones included (relative paths)."""
    root = cluster.output_root / "published"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def await_review_request(cluster: AirflowCluster, run_id: str) -> dict[str, Any]:
    """The review request of a run once its review task waits for an answer and the scheduler has seen that try's
    process end, as it has by the time a person reads the request (an answer sent before that, within a second of
    the request, hits AIRFLOW_DEFER_RACE: Airflow fails the resumed try and retries it, and the retry asks again).
    Fails at once if the run failed."""

    def waiting() -> dict[str, Any] | None:
        cluster.check_alive()
        if cluster.api("GET", f"/dags/{REVIEW}/dagRuns/{run_id}")["state"] == "failed":
            raise AssertionError(f"{REVIEW} {run_id} failed:\n{cluster.diagnose({REVIEW: run_id})}")
        state = cluster.task_instances(REVIEW, run_id)["review_video"]["state"]
        if state not in AWAITING_REVIEW or not cluster.exit_processed(REVIEW, run_id, "review_video", state):
            return None
        return cluster.api("GET", hitl_path(run_id))

    return wait_for(f"the review request of {run_id}", waiting, RUN_DEADLINE)


@pytest.fixture(scope="module")
def review_runs(airflow_cluster: AirflowCluster) -> Reviews:
    """Two runs of the review DAG at once, answered through the REST API as a reviewer would: one approved, one
    rejected (after the batch, whose emulator ledger stays its own)."""
    started = time.monotonic()
    run_ids = {
        answer: airflow_cluster.trigger(REVIEW, None, prompt=f"A lighthouse in a storm, take to {answer.lower()}")
        for answer in ("Approve", "Reject")
    }
    requests_seen = {answer: await_review_request(airflow_cluster, run_id) for answer, run_id in run_ids.items()}
    published_before = published_files(airflow_cluster)
    for answer, run_id in run_ids.items():
        response = airflow_cluster.api("PATCH", hitl_path(run_id), json={"chosen_options": [answer]})
        assert response["chosen_options"] == [answer], response
    states = airflow_cluster.wait_for_runs(run_ids, RUN_DEADLINE, dag_id=REVIEW)
    print(f"{REVIEW}: {states} in {time.monotonic() - started:.0f} s (both runs, the review answers included)")
    return Reviews(run_ids, states, requests_seen, published_before)


def published_uri(cluster: AirflowCluster, run_id: str) -> Path:
    """Where the DAG documents the published copy: published/<run date>/<run id, ':' -> '-', '+' -> '_'>.mp4."""
    run = cluster.api("GET", f"/dags/{REVIEW}/dagRuns/{run_id}")
    run_date = _instant(run["logical_date"] or run["run_after"]).strftime("%Y-%m-%d")
    return cluster.output_root / "published" / run_date / f"{run_id.replace(':', '-').replace('+', '_')}.mp4"


def test_review_request_shows_prompt_cost_and_video_tab(airflow_cluster: AirflowCluster, review_runs: Reviews) -> None:
    from sora2_provider.links import video_tab_url

    for answer, run_id in review_runs.run_ids.items():
        video = airflow_cluster.xcom(REVIEW, run_id, "generate_video")
        request = review_runs.requests[answer]
        assert request["subject"] == "Publish this Sora 2 video?"
        assert request["options"] == ["Approve", "Reject"] and request["defaults"] == ["Reject"]
        body = request["body"]
        assert f"> {video['prompt']}" in body and video["prompt"].endswith(answer.lower())
        assert video["cost"] == 0.4 and "**Cost:** 0.40 credits" in body
        assert f"`{video['uri']}`" in body and f"request `{video['request_id']}`" in body
        tab = video_tab_url(REVIEW, run_id, "generate_video", base_url=airflow_cluster.api_url)
        assert f"[Watch it in the Video tab]({tab})" in body, body
        assert "{{" not in body and "{%" not in body, body


def test_nothing_is_published_before_the_review(review_runs: Reviews) -> None:
    assert review_runs.published_before_answers == []


def test_each_reviewer_is_asked_once(airflow_cluster: AirflowCluster, review_runs: Reviews) -> None:
    """The answer resumes the try that asked: no second try, which would ask the reviewer again."""
    for run_id in review_runs.run_ids.values():
        assert airflow_cluster.task_instances(REVIEW, run_id)["review_video"]["try_number"] == 1
        assert airflow_cluster.defer_races(REVIEW, run_id, task_id="review_video") == 0


def test_the_approved_video_is_published_whole(airflow_cluster: AirflowCluster, review_runs: Reviews) -> None:
    run_id = review_runs.run_ids["Approve"]
    tis = airflow_cluster.task_instances(REVIEW, run_id)
    assert review_runs.states["Approve"] == "success", airflow_cluster.diagnose({REVIEW: run_id})
    assert {task: ti["state"] for task, ti in tis.items()} == dict.fromkeys(tis, "success")
    video = airflow_cluster.xcom(REVIEW, run_id, "generate_video")
    target = published_uri(airflow_cluster, run_id)
    assert_valid_video(target.read_bytes(), video)  # a decodable MP4 of the size asked, same bytes and sha256
    decision = airflow_cluster.xcom(REVIEW, run_id, "review_video")
    assert decision["chosen_options"] == ["Approve"] and decision["responded_by_user"]["name"]
    published = airflow_cluster.xcom(REVIEW, run_id, "publish_video")
    assert published == {
        "uri": target.as_uri(),
        "bytes": video["bytes"],
        "sha256": video["sha256"],
        "request_id": video["request_id"],
        "approved_by": decision["responded_by_user"]["name"],
    }


def test_a_rejected_video_ends_the_run_without_publishing(
    airflow_cluster: AirflowCluster, review_runs: Reviews
) -> None:
    run_id = review_runs.run_ids["Reject"]
    assert review_runs.states["Reject"] == "success", airflow_cluster.diagnose({REVIEW: run_id})
    tis = airflow_cluster.task_instances(REVIEW, run_id)
    assert {task: ti["state"] for task, ti in tis.items()} == {
        "generate_video": "success",
        "review_video": "success",
        "publish_video": "skipped",
    }
    # A rejection skips downstream from inside the task, which then pushes no XCom: the answer is in the HITL detail.
    answered = airflow_cluster.api("GET", hitl_path(run_id))
    assert answered["response_received"] and answered["chosen_options"] == ["Reject"], answered
    draft = airflow_cluster.xcom(REVIEW, run_id, "generate_video")["uri"]
    assert Path(draft.removeprefix("file://")).is_file(), "the rejected draft stays under review/"
    approved = published_uri(airflow_cluster, review_runs.run_ids["Approve"])
    root = airflow_cluster.output_root / "published"
    assert published_files(airflow_cluster) == [str(approved.relative_to(root))], "only the approved video, whole"


def test_an_unanswered_review_is_a_rejection(airflow_cluster: AirflowCluster, review_runs: Reviews) -> None:
    """No answer within the response timeout: Airflow answers the request's default, Reject, and nothing is
    published. The example's three days become 8 s in a copy of the DAG (Airflow 3.3's timeout sweep)."""
    dag_id = f"{REVIEW}_timeout"
    source = (EXAMPLE_DAGS / f"{REVIEW}.py").read_text()
    for old, new in {"timedelta(days=3)": "timedelta(seconds=8)", f'dag_id="{REVIEW}"': f'dag_id="{dag_id}"'}.items():
        assert old in source, old
        source = source.replace(old, new)
    airflow_cluster.write_dag(f"{dag_id}.py", source)
    wait_for(f"{dag_id} parsed", lambda: airflow_cluster.dags_parsed({dag_id}), timeout=120)
    published_before = published_files(airflow_cluster)

    run_id = airflow_cluster.trigger(dag_id, None, prompt="A lighthouse in a storm, nobody watching")
    assert airflow_cluster.wait_for_runs({dag_id: run_id}, timeout=RUN_DEADLINE)[dag_id] == "success"

    tis = airflow_cluster.task_instances(dag_id, run_id)
    assert {task: ti["state"] for task, ti in tis.items()} == {
        "generate_video": "success",
        "review_video": "success",
        "publish_video": "skipped",
    }
    if tis["review_video"]["try_number"] > 1:  # the sweep resumed it before the scheduler saw it park
        assert airflow_cluster.defer_races(dag_id, run_id, task_id="review_video") >= 1
    answered = airflow_cluster.api("GET", hitl_path(run_id, dag_id))
    assert answered["chosen_options"] == ["Reject"] and answered["responded_by_user"] is None, answered
    assert published_files(airflow_cluster) == published_before


# ---------------------------------------------------------------------------------------------- hygiene


def test_api_key_never_written_by_airflow(airflow_cluster: AirflowCluster, batch_run: Runs) -> None:
    """Task, trigger and process logs, state records and outputs: none holds the key (the DB is skipped)."""
    leaks = [
        str(path)
        for path in airflow_cluster.home.rglob("*")
        if path.is_file() and not path.name.startswith("airflow.db") and TEST_API_KEY.encode() in path.read_bytes()
    ]
    assert not leaks
