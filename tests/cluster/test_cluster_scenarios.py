"""The provider on a distributed Airflow: CeleryExecutor, two worker hosts, Postgres, Redis (see support.py).

Every scenario asserts the run's state, the emulator's ledger (exactly one charged job per stored video, the one
the XCom names), the object at each output key (a decodable MP4 whose size is the XCom's ``bytes``) and that no
multipart upload is left in progress. Kills are SIGKILLs, by PID, of every process of the component's session
(for a worker: the Celery main process, its pool processes, the task supervisor and the task process).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.airflow_cluster import AirflowCluster
from tests.cluster.support import (
    BATCH,
    BATCH_PROMPTS,
    BUCKET,
    EXAMPLE_S3,
    EXAMPLE_S3_DATE,
    POOL,
    POOL_SLOTS,
    RUN_DEADLINE,
    SCHEDULER_KILL,
    SCHEDULER_KILL_PROMPTS,
    STATE_PREFIX,
    TRIGGERER_KILL,
    TRIGGERER_KILL_PROMPTS,
    WORKER_KILL,
    WORKER_KILL_PROMPT,
    WORKER_KILL_S3_STATE,
    WORKER_KILL_S3_STATE_PROMPT,
    WORKERS,
    assert_no_multipart_upload_left,
    assert_one_charge_per_video,
    assert_stored_video,
    jobs_for,
    keys_under,
    status_polls,
)
from tests.support import peak_overlap, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

RENDERING = ("QUEUED", "PROCESSING")
START_DEADLINE = 180  # seconds from trigger to the state a kill waits for (a task start takes 5 to 30 s here)


def finished_runs(cluster: AirflowCluster, runs: dict[str, str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Wait for the runs; assert each and all their task instances succeeded; return the task instances by DAG."""
    started = time.monotonic()
    states = cluster.wait_for_runs(runs, timeout=RUN_DEADLINE)
    print(f"{states} in {time.monotonic() - started:.0f} s")
    found = {}
    for dag_id, run_id in runs.items():
        tis = cluster.task_instances(dag_id, run_id)
        assert states[dag_id] == "success", cluster.diagnose(runs)
        assert {ti["state"] for ti in tis.values()} == {"success"}, cluster.diagnose(runs)
        found[dag_id] = tis
    return found


def finished_run(cluster: AirflowCluster, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
    return finished_runs(cluster, {dag_id: run_id})[dag_id]


def mapped_states(cluster: AirflowCluster, dag_id: str, run_id: str) -> list[str]:
    tis = cluster.task_instances(dag_id, run_id)
    return [ti["state"] for name, ti in sorted(tis.items()) if name.startswith("generate_video[")]


def assert_mapped_videos(
    cluster: AirflowCluster, s3: Any, emulator: Any, dag_id: str, run_id: str, prompts: list[str]
) -> list[dict[str, Any]]:
    xcoms = [cluster.xcom(dag_id, run_id, "generate_video", map_index=i) for i in range(len(prompts))]
    assert [x["prompt"] for x in xcoms] == prompts
    for index, xcom in enumerate(xcoms):
        assert_stored_video(s3, f"{dag_id}/{index}.mp4", xcom)
    assert_one_charge_per_video(emulator, prompts, xcoms)
    assert_no_multipart_upload_left(s3)
    return xcoms


# ---------------------------------------------------------------------------------------------- 1. the batch


@pytest.fixture(scope="module")
def first_runs(celery_cluster: AirflowCluster) -> dict[str, str]:
    """The batch and the S3 example DAG, run at the same time on the fresh cluster."""
    runs = {
        BATCH: celery_cluster.trigger(BATCH, None),
        EXAMPLE_S3: celery_cluster.trigger(EXAMPLE_S3, f"{EXAMPLE_S3_DATE}T00:00:00Z"),
    }
    celery_cluster.wait_for_runs(runs, timeout=RUN_DEADLINE)
    return runs


def test_mapped_batch_spreads_over_both_workers_within_the_pool(
    cluster: AirflowCluster, first_runs: dict[str, str], cluster_emulator: Any, s3: Any
) -> None:
    run_id = first_runs[BATCH]
    tis = finished_run(cluster, BATCH, run_id)
    mapped = {name: ti for name, ti in tis.items() if name.startswith("generate_video[")}
    assert len(mapped) == len(BATCH_PROMPTS) == 6
    assert {ti["pool"] for ti in mapped.values()} == {POOL}

    # Both hosts ran tries: each wrote task logs under its own AIRFLOW_HOME, and the task instances name them.
    ran = {
        name: [i for i in range(6) if cluster.task_log_files(BATCH, run_id, "generate_video", i, home=host.home)]
        for name, host in cluster.hosts.items()
    }
    print(f"{BATCH}: map indexes with a try on each host: {ran}")
    assert all(ran.values()), f"a worker ran no generate_video try of the batch: {ran}"
    assert {ti["hostname"] for ti in mapped.values()} <= set(WORKERS)

    # The pool (deferred tasks keep their slot): never more than POOL_SLOTS jobs rendering at once at the emulator.
    # (Not the task instances' start-to-end spans: once its trigger fired, a task waits in `scheduled` for a slot
    # with its span still open while another task holds the slot it gave back; with Celery that wait is seconds.)
    jobs = jobs_for(cluster_emulator, BATCH_PROMPTS)
    peak = peak_overlap([(job["created_at"], job["finished_at"]) for job in jobs])
    print(f"{BATCH}: at most {peak} jobs rendering at once")
    assert 1 <= peak <= POOL_SLOTS, jobs

    xcoms = assert_mapped_videos(cluster, s3, cluster_emulator, BATCH, run_id, BATCH_PROMPTS)
    prompts = [ti["rendered_fields"]["prompt"] for _, ti in sorted(mapped.items(), key=lambda kv: kv[1]["map_index"])]
    assert prompts == BATCH_PROMPTS
    for index, xcom in enumerate(xcoms):
        races = cluster.defer_races(BATCH, run_id, index)  # a retry after Airflow's race resumes the paid job
        assert xcom["decision"] == ("resumed" if races else "new_submit"), (index, xcom, races)


def test_example_s3_dag_on_celery_workers(
    cluster: AirflowCluster, first_runs: dict[str, str], cluster_emulator: Any, s3: Any
) -> None:
    """``sora2_daily_video`` writing to S3: its check task reads the video back, on whichever host it runs."""
    run_id = first_runs[EXAMPLE_S3]
    tis = finished_run(cluster, EXAMPLE_S3, run_id)
    print(f"{EXAMPLE_S3}: hosts {({task: ti['hostname'] for task, ti in tis.items()})}")
    assert {ti["hostname"] for ti in tis.values()} <= set(WORKERS)
    xcom = cluster.xcom(EXAMPLE_S3, run_id, "generate_video")
    assert_stored_video(s3, f"daily/{EXAMPLE_S3_DATE}/video.mp4", xcom)
    checked = cluster.xcom(EXAMPLE_S3, run_id, "check_stored_video")
    assert checked == {k: xcom[k] for k in ("uri", "bytes", "request_id", "cost")}
    assert_one_charge_per_video(cluster_emulator, [xcom["prompt"]], [xcom])
    assert_no_multipart_upload_left(s3)


# ---------------------------------------------------------------------------------------------- 2 and 5. a worker

JOB_RECORD_KEY = "sora2_job"


def task_state(cluster: AirflowCluster, dag_id: str, run_id: str, map_index: int = -1) -> dict[str, Any]:
    """The task instance's rows in Airflow's task state store (public REST API), by key."""
    path = f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/generate_video/state-store"
    rows = cluster.api("GET", path, params={"map_index": map_index})["task_state_store"]
    return {row["key"]: row["value"] for row in rows}



def kill_worker_after_submit(
    cluster: AirflowCluster, emulator: Any, dag_id: str, prompt: str
) -> tuple[str, str, dict[str, Any]]:
    """Trigger ``dag_id``; once its try runs on a worker that submitted the job and polls it, SIGKILL that worker
    (every process of its session). Returns the run id, the killed host and the job as the emulator saw it."""
    run_id = cluster.trigger(dag_id, None)

    def polling_on_a_worker() -> tuple[str, dict[str, Any]] | None:
        cluster.check_alive()
        jobs = jobs_for(emulator, [prompt])
        if len(jobs) != 1 or status_polls(emulator, jobs[0]["request_id"]) < 2:
            return None
        ti = cluster.task_instances(dag_id, run_id)["generate_video"]
        return (ti["hostname"], jobs[0]) if ti["state"] == "running" and ti["hostname"] in WORKERS else None

    host, job = wait_for(f"{dag_id} submitted and polling on a worker", polling_on_a_worker, START_DEADLINE, 0.1)
    killed = cluster.kill(host)
    job = jobs_for(emulator, [prompt])[0]
    print(f"{dag_id}: killed {host} (PIDs {killed}) while job {job['request_id']} was {job['status']}")
    assert job["status"] in RENDERING, f"the job ended before the kill: {job}"
    return run_id, host, job


def assert_resumed_on_the_other_worker(
    cluster: AirflowCluster, s3: Any, emulator: Any, dag_id: str, run_id: str, killed: str, job: dict[str, Any]
) -> dict[str, Any]:
    prompt = job["prompt"]
    (other,) = set(WORKERS) - {killed}

    def retry_on_the_other_worker() -> bool:
        cluster.check_alive()
        ti = cluster.task_instances(dag_id, run_id)["generate_video"]
        return (ti["try_number"] == 2 and ti["hostname"] == other) or ti["state"] in ("success", "failed")

    wait_for(f"{dag_id}: the retry running on {other}", retry_on_the_other_worker, RUN_DEADLINE)
    cluster.restart(killed)  # back for the next scenario; the retry is on the other worker already
    ti = finished_run(cluster, dag_id, run_id)["generate_video"]
    assert ti["try_number"] == 2 and ti["hostname"] == other, ti
    first = cluster.task_log_files(dag_id, run_id, "generate_video", home=cluster.hosts[killed].home)
    second = cluster.task_log_files(dag_id, run_id, "generate_video", home=cluster.hosts[other].home)
    assert [p.name for p in first] == ["attempt=1.log"] and [p.name for p in second] == ["attempt=2.log"]

    xcom = cluster.xcom(dag_id, run_id, "generate_video")
    assert xcom["decision"] == "resumed" and xcom["resumed_from"] == job["request_id"], xcom
    assert_stored_video(s3, f"{dag_id}/video.mp4", xcom)
    assert_one_charge_per_video(emulator, [prompt], [xcom])
    assert_no_multipart_upload_left(s3)
    assert keys_under(s3, f"{dag_id}/") == [f"{dag_id}/video.mp4"], "objects beside the output"
    return xcom


def test_worker_killed_after_submit_retry_resumes_on_the_other_worker(
    cluster: AirflowCluster, cluster_emulator: Any, s3: Any
) -> None:
    """The record lives only where Airflow keeps it (task_state_store, in the metadata DB): the other worker
    cannot see the killed one's files, and nothing is written beside the output."""
    run_id, killed, job = kill_worker_after_submit(cluster, cluster_emulator, WORKER_KILL, WORKER_KILL_PROMPT)
    assert keys_under(s3, f"{WORKER_KILL}/") == [], "a record beside the output"
    record = task_state(cluster, WORKER_KILL, run_id).get(JOB_RECORD_KEY)
    assert record is not None and record["request_id"] == job["request_id"], record
    assert_resumed_on_the_other_worker(cluster, s3, cluster_emulator, WORKER_KILL, run_id, killed, job)


def test_worker_killed_after_submit_s3_record_prevents_a_second_charge(
    cluster: AirflowCluster, cluster_emulator: Any, s3: Any
) -> None:
    """As above with ``state_path=`` in S3, so Airflow's task state store is not used: the record the retry resumes
    from is the S3 object (the path of Airflow versions without a task state store)."""
    before = keys_under(s3, STATE_PREFIX)
    run_id, killed, job = kill_worker_after_submit(
        cluster, cluster_emulator, WORKER_KILL_S3_STATE, WORKER_KILL_S3_STATE_PROMPT
    )
    records = [key for key in keys_under(s3, STATE_PREFIX) if key not in before]
    assert records, f"no job record under s3://{BUCKET}/{STATE_PREFIX} after the submit"
    bodies = [s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode() for key in records]
    assert any(job["request_id"] in body for body in bodies), bodies
    assert task_state(cluster, WORKER_KILL_S3_STATE, run_id) == {}, "records in the task state store too"
    assert_resumed_on_the_other_worker(cluster, s3, cluster_emulator, WORKER_KILL_S3_STATE, run_id, killed, job)


# ---------------------------------------------------------------------------------------------- 3. the triggerer


def wait_until_deferred(cluster: AirflowCluster, emulator: Any, dag_id: str, run_id: str, prompts: list[str]) -> None:
    """Every mapped generate task deferred, each with its job submitted and still rendering."""

    def all_deferred() -> bool:
        cluster.check_alive()
        return mapped_states(cluster, dag_id, run_id) == ["deferred"] * len(prompts)

    wait_for(f"{dag_id}: every generate task deferred", all_deferred, START_DEADLINE, 0.2)
    jobs = jobs_for(emulator, prompts)
    assert len(jobs) == len(prompts) and all(job["status"] in RENDERING for job in jobs), jobs


def test_triggerer_killed_while_deferred_then_restarted(
    cluster: AirflowCluster, cluster_emulator: Any, s3: Any
) -> None:
    run_id = cluster.trigger(TRIGGERER_KILL, None)
    wait_until_deferred(cluster, cluster_emulator, TRIGGERER_KILL, run_id, TRIGGERER_KILL_PROMPTS)
    killed = cluster.kill("triggerer")
    print(f"{TRIGGERER_KILL}: killed the triggerer (PIDs {killed})")
    assert mapped_states(cluster, TRIGGERER_KILL, run_id) == ["deferred"] * 2
    cluster.restart("triggerer")

    tis = finished_run(cluster, TRIGGERER_KILL, run_id)
    xcoms = assert_mapped_videos(cluster, s3, cluster_emulator, TRIGGERER_KILL, run_id, TRIGGERER_KILL_PROMPTS)
    for index, xcom in enumerate(xcoms):
        races = cluster.defer_races(TRIGGERER_KILL, run_id, index)
        assert tis[f"generate_video[{index}]"]["try_number"] == 1 + races
        assert xcom["decision"] == ("resumed" if races else "new_submit"), xcom


# ---------------------------------------------------------------------------------------------- 4. the scheduler


def test_scheduler_killed_while_deferred_then_restarted(
    cluster: AirflowCluster, cluster_emulator: Any, s3: Any
) -> None:
    run_id = cluster.trigger(SCHEDULER_KILL, None)
    wait_until_deferred(cluster, cluster_emulator, SCHEDULER_KILL, run_id, SCHEDULER_KILL_PROMPTS)
    killed = cluster.kill("scheduler")
    print(f"{SCHEDULER_KILL}: killed the scheduler (PIDs {killed})")

    # Without a scheduler the jobs still finish and the triggerer still fires: the tasks wait to be scheduled.
    def fired_without_scheduler() -> bool:
        jobs = jobs_for(cluster_emulator, SCHEDULER_KILL_PROMPTS)
        states = mapped_states(cluster, SCHEDULER_KILL, run_id)
        return all(job["status"] == "COMPLETED" for job in jobs) and states == ["scheduled"] * 2

    wait_for("the triggers fired while the scheduler is down", fired_without_scheduler, START_DEADLINE, 0.5)
    cluster.restart("scheduler")

    tis = finished_run(cluster, SCHEDULER_KILL, run_id)
    xcoms = assert_mapped_videos(cluster, s3, cluster_emulator, SCHEDULER_KILL, run_id, SCHEDULER_KILL_PROMPTS)
    for index, xcom in enumerate(xcoms):
        races = cluster.defer_races(SCHEDULER_KILL, run_id, index)
        assert tis[f"generate_video[{index}]"]["try_number"] == 1 + races
        assert xcom["decision"] == ("resumed" if races else "new_submit"), xcom
