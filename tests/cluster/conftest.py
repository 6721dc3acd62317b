"""Fixtures of the distributed-cluster tests: one Celery cluster, emulator and S3 bucket for the whole session.

See ``tests/cluster/support.py`` for what runs where, and ``tests/airflow_cluster.py`` for the processes.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.airflow_cluster import AirflowCluster, run_cluster
from tests.cluster.support import (
    BUCKET,
    DAG_FILES,
    POOL,
    POOL_SLOTS,
    SETTINGS,
    TIME_SCALE,
    WORKER_CONCURRENCY,
    WORKERS,
)
from tests.support import TEST_API_KEY, connection_json, wait_for

SESSION_AIRFLOW_HOME = Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="session")
def cluster_emulator() -> Iterator[Any]:
    """The emulator every worker and the triggerer talk to; its ledger spans the session (scenarios use their
    own prompts, so each reads its own charges)."""
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=TIME_SCALE, api_keys={TEST_API_KEY: 1000.0}) as emulator:
        yield emulator


@pytest.fixture(scope="session")
def s3(s3_server: str) -> Any:
    """A boto3 client of the session's moto S3 server, with the cluster's bucket created."""
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="session")
def celery_cluster(cluster_emulator: Any, s3: Any, s3_server: str) -> Iterator[AirflowCluster]:
    """Postgres, Redis, api-server, scheduler, dag-processor, triggerer and two Celery worker hosts."""
    aws = {"conn_type": "aws", "login": "testing", "password": "testing"}
    aws["extra"] = {"endpoint_url": s3_server, "region_name": "us-east-1"}
    settings = {
        **SETTINGS,
        "AIRFLOW_CONN_SORA2_DEFAULT": connection_json(cluster_emulator.url),
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    started = time.monotonic()
    with run_cluster(
        SESSION_AIRFLOW_HOME / "cluster",
        executor="CeleryExecutor",
        workers=WORKERS,
        worker_concurrency=WORKER_CONCURRENCY,
        settings=settings,
        dag_files=DAG_FILES,
    ) as cluster:
        cluster.api("POST", "/pools", json={"name": POOL, "slots": POOL_SLOTS, "include_deferred": True})
        dag_ids = {name.removesuffix(".py") for name in DAG_FILES}
        wait_for("the cluster DAGs parsed", lambda: _parsed(cluster, dag_ids), timeout=180)
        print(f"Celery cluster ready in {time.monotonic() - started:.0f} s")
        yield cluster


def _parsed(cluster: AirflowCluster, dag_ids: set[str]) -> bool:
    """Every DAG parsed, or an import error (a DAG using an operator argument main does not have yet) for it."""
    cluster.check_alive()
    errors = {Path(e["filename"]).stem for e in cluster.api("GET", "/importErrors")["import_errors"]}
    found = {dag["dag_id"] for dag in cluster.api("GET", "/dags", params={"limit": 100})["dags"]}
    return found | errors >= dag_ids


@pytest.fixture
def cluster(celery_cluster: AirflowCluster) -> AirflowCluster:
    """The session's cluster with every process running: whatever an earlier scenario killed is restarted."""
    for name in celery_cluster.processes.started:
        if celery_cluster.processes.started[name].service and not celery_cluster.processes.alive(name):
            celery_cluster.restart(name)
    wait_for("a healthy Airflow", celery_cluster.healthy, timeout=120)
    wait_for("every Celery worker answering a ping", celery_cluster.workers_ready, timeout=120)
    return celery_cluster
