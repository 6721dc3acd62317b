"""A distributed Airflow for the cluster tests, and what the scenarios share.

The cluster (``tests.airflow_cluster.run_cluster`` with the CeleryExecutor): Postgres as the metadata DB and
Celery's result backend, Redis as the broker, api-server, scheduler, dag-processor and triggerer on the "main"
host, and two Celery workers, ``worker-a`` and ``worker-b``, each on a "host" of its own (own AIRFLOW_HOME,
DAGs folder copy, logs, temp dir and hostname; ``--celery-hostname``), so the task instances say which worker ran
them and neither worker can read the other's local files. Videos go to S3 (the session's moto server), the
emulator runs in the test process. Every process is started and stopped by its PID; the fixture asserts at
teardown that none is left.

Timing: the emulator renders ``sora-2`` in 180 s x TIME_SCALE = 9 s and ``sora-2-pro`` in 400 s x TIME_SCALE =
20 s (the kill scenarios use it: the kill must land while the job renders). The loss of a component is detected
by Airflow's own heartbeats, shortened here (see SETTINGS); no test sleeps to synchronise: each polls for a
condition with a deadline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

from tests.support import probe_mp4

REPO = Path(__file__).resolve().parents[2]

WORKERS = ("worker-a", "worker-b")
#: Each worker runs two tasks at once and reserves no more (prefetch multiplier 1): tasks queued together spread.
WORKER_CONCURRENCY = 2
BUCKET = "sora2-cluster"
POOL = "sora2_cluster"
POOL_SLOTS = 3
TIME_SCALE = 0.05
POLL_INTERVAL = 0.2
RUN_DEADLINE = 240  # seconds for one scenario's runs to finish once started

SETTINGS: dict[str, str | None] = {
    # Runs are triggered by the tests only, and DAGs need no unpausing.
    "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
    "AIRFLOW__CORE__PARALLELISM": "8",
    "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    # Worker loss: a task whose supervisor stopped heartbeating (every 2 s) is failed, and retried, after 12 s.
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "2",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "12",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
    # Triggerer loss: a new triggerer takes over the triggers of one whose heartbeat is 10 s old.
    "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "10",
    # Scheduler loss: a new scheduler adopts a dead one's tasks once its heartbeat is 15 s old (checked every 5 s).
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_THRESHOLD": "15",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "5",
    "PYTHONDONTWRITEBYTECODE": "1",
    # The example DAG's settings (see its docs).
    "AIRFLOW_VAR_SORA2_OUTPUT_ROOT": f"s3://aws_default@{BUCKET}",
    "SORA2_POLL_INTERVAL": str(POLL_INTERVAL),
}

_DAG = '''\
"""{doc}"""

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

with DAG(
    dag_id="{dag_id}",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    default_args={{"retries": 2, "retry_delay": timedelta(seconds=2)}},
    tags=["sora2", "cluster"],
):
{operator}
'''

_MAPPED = '''\
    Sora2GenerateVideoOperator.partial(
        task_id="generate_video",
        output_path="s3://aws_default@{bucket}/{dag_id}/{{{{ ti.map_index }}}}.mp4",
        model="{model}",
        duration=4,
        size="720x1280",
        deferrable=True,
        poll_interval={poll},
        max_cost=2.0,{extra}
    ).expand(prompt={prompts!r})
'''

_SINGLE = '''\
    Sora2GenerateVideoOperator(
        task_id="generate_video",
        prompt={prompt!r},
        output_path="s3://aws_default@{bucket}/{dag_id}/video.mp4",
        model="{model}",
        duration=4,
        size="720x1280",
        deferrable=False,
        poll_interval={poll},
        max_cost=2.0,{extra}
    )
'''


def mapped_dag(dag_id: str, doc: str, prompts: list[str], model: str, extra: str = "") -> str:
    """A DAG of one mapped, deferrable generate task: one video per prompt at ``<dag_id>/<map index>.mp4``."""
    operator = _MAPPED.format(
        bucket=BUCKET, dag_id=dag_id, model=model, poll=POLL_INTERVAL, prompts=prompts, extra=extra
    )
    return _DAG.format(doc=doc, dag_id=dag_id, operator=operator)


def single_dag(dag_id: str, doc: str, prompt: str, model: str, extra: str = "") -> str:
    """A DAG of one worker-side-polling (``deferrable=False``) generate task, its video at ``<dag_id>/video.mp4``."""
    operator = _SINGLE.format(bucket=BUCKET, dag_id=dag_id, model=model, poll=POLL_INTERVAL, prompt=prompt, extra=extra)
    return _DAG.format(doc=doc, dag_id=dag_id, operator=operator)


BATCH = "cluster_batch"
BATCH_PROMPTS = [f"Cluster batch video {i}: a lighthouse beam sweeping over fog, frame {i}" for i in range(6)]
WORKER_KILL = "cluster_worker_kill"
WORKER_KILL_PROMPT = "Cluster worker kill: a kettle coming to the boil on a gas stove"
WORKER_KILL_S3_STATE = "cluster_worker_kill_s3_state"
WORKER_KILL_S3_STATE_PROMPT = "Cluster worker kill, S3 record: a sailboat tacking in a gusty bay"
STATE_PREFIX = "_sora2_state/"
TRIGGERER_KILL = "cluster_triggerer_kill"
TRIGGERER_KILL_PROMPTS = [f"Cluster triggerer kill {i}: snow falling past a street lamp" for i in range(2)]
SCHEDULER_KILL = "cluster_scheduler_kill"
SCHEDULER_KILL_PROMPTS = [f"Cluster scheduler kill {i}: waves breaking on black sand" for i in range(2)]

#: The daily example DAG, its output root in S3, runs beside the batch: its check task reads the video back wherever
#: it lands.
EXAMPLE_S3 = "sora2_daily_video"
EXAMPLE_S3_DATE = "2025-06-01"
EXAMPLE_DAG_FILES = {f"{EXAMPLE_S3}.py": (REPO / "example_dags" / f"{EXAMPLE_S3}.py").read_text()}

DAG_FILES = {
    **EXAMPLE_DAG_FILES,
    f"{BATCH}.py": mapped_dag(
        BATCH,
        f"Six videos through the `{POOL}` pool ({POOL_SLOTS} slots, deferred tasks included), over both workers.",
        BATCH_PROMPTS,
        "sora-2",
        extra=f'\n        pool="{POOL}",',
    ),
    f"{WORKER_KILL}.py": single_dag(
        WORKER_KILL,
        "One video polled on the worker; the test SIGKILLs that worker after the submit. The job record lives "
        "where Airflow keeps it (no state_path): nothing is written beside the output.",
        WORKER_KILL_PROMPT,
        "sora-2-pro",
    ),
    f"{WORKER_KILL_S3_STATE}.py": single_dag(
        WORKER_KILL_S3_STATE,
        "As cluster_worker_kill, with the job record in S3 under an explicit state_path.",
        WORKER_KILL_S3_STATE_PROMPT,
        "sora-2-pro",
        extra=f'\n        state_path="s3://aws_default@{BUCKET}/{STATE_PREFIX}",',
    ),
    f"{TRIGGERER_KILL}.py": mapped_dag(
        TRIGGERER_KILL, "Two deferred videos; the test SIGKILLs the triggerer.", TRIGGERER_KILL_PROMPTS, "sora-2-pro"
    ),
    f"{SCHEDULER_KILL}.py": mapped_dag(
        SCHEDULER_KILL, "Two deferred videos; the test SIGKILLs the scheduler.", SCHEDULER_KILL_PROMPTS, "sora-2-pro"
    ),
}


# ---------------------------------------------------------------------------------------------- observations


def ledger(emulator: Any) -> list[dict[str, Any]]:
    """The emulator's ledger through its HTTP control: one entry per accepted job."""
    response = requests.get(f"{emulator.url}/_emulator/ledger", timeout=10)
    response.raise_for_status()
    return response.json()["ledger"]


def jobs_for(emulator: Any, prompts: list[str]) -> list[dict[str, Any]]:
    """The jobs the emulator accepted for these prompts (every scenario has prompts of its own)."""
    return [job for job in ledger(emulator) if job["prompt"] in prompts]


def status_polls(emulator: Any, request_id: str) -> int:
    """How many status calls for this job the emulator answered: the worker is past its submit and its record."""
    return sum(1 for call in emulator.request_log if call["endpoint"] == "status" and request_id in call["path"])


def assert_one_charge_per_video(emulator: Any, prompts: list[str], xcoms: list[dict[str, Any]]) -> None:
    """Exactly one charged job per stored video, and it is the job each XCom names."""
    jobs = jobs_for(emulator, prompts)
    assert sorted(job["request_id"] for job in jobs) == sorted(x["request_id"] for x in xcoms), jobs
    assert all(job["status"] == "COMPLETED" and job["charged"] for job in jobs), jobs
    assert sorted(job["prompt"] for job in jobs) == sorted(prompts), jobs


def assert_stored_video(s3: Any, key: str, xcom: dict[str, Any]) -> None:
    """The object at ``key`` is a decodable MP4 of the XCom's size and dimensions."""
    assert xcom["uri"] == f"s3://aws_default@{BUCKET}/{key}", xcom
    data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    width, height = map(int, xcom["size"].split("x"))
    assert probe_mp4(data)[:2] == (width, height)
    assert len(data) == xcom["bytes"]
    assert s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == xcom["bytes"]


def assert_no_multipart_upload_left(s3: Any) -> None:
    uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert not uploads, f"unfinished multipart uploads: {uploads}"


def keys_under(s3: Any, prefix: str) -> list[str]:
    return sorted(obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))
