"""Fixtures of the end-to-end tests: one emulator and one real Airflow cluster per test module."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.support import (
    COMPONENTS,
    EXAMPLE_DAGS,
    LOCAL_SETTINGS,
    POLL_INTERVAL,
    S3_BUCKET,
    TIME_SCALE,
    AirflowCluster,
)
from tests.support import TEST_API_KEY, connection_json, free_port, wait_for

#: The session's AIRFLOW_HOME (set by tests/conftest.py): the cluster's home goes inside it, so the session's
#: API-key scan of that directory covers the cluster's logs too.
SESSION_AIRFLOW_HOME = Path(os.environ["AIRFLOW_HOME"])


@pytest.fixture(scope="module")
def e2e_emulator() -> Iterator[Any]:
    """The emulator the cluster talks to, for the whole module (its ledger spans every run)."""
    from sora2_provider.testing.emulator import Sora2Emulator

    with Sora2Emulator(time_scale=TIME_SCALE, api_keys={TEST_API_KEY: 100.0}) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def airflow_cluster(e2e_emulator: Any, s3_server: str) -> Iterator[AirflowCluster]:
    """Start api-server, scheduler, dag-processor and triggerer (LocalExecutor, SQLite) and wait until healthy."""
    home = SESSION_AIRFLOW_HOME / "e2e"
    if home.exists():
        shutil.rmtree(home)
    dags = home / "dags"
    shutil.copytree(EXAMPLE_DAGS, dags, ignore=shutil.ignore_patterns("__pycache__"))
    (home / "process-logs").mkdir(parents=True)
    (home / "config").mkdir()
    (home / "config" / "airflow_local_settings.py").write_text(LOCAL_SETTINGS)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    aws = {"conn_type": "aws", "login": "testing", "password": "testing"}
    aws["extra"] = {"endpoint_url": s3_server, "region_name": "us-east-1"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__EXECUTOR="LocalExecutor",
        AIRFLOW__CORE__PARALLELISM="6",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        # Runs are triggered by the tests only: no scheduled run of the @daily DAGs, no unpausing needed.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{api_url}/execution/",
        AIRFLOW__API__BASE_URL=api_url,
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__API_AUTH__JWT_SECRET=os.urandom(16).hex(),
        AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.2",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        # The scheduler and the triggerer serve their logs on fixed ports by default: take free ones.
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
        AIRFLOW_CONN_SORA2_DEFAULT=connection_json(e2e_emulator.url),
        AIRFLOW_CONN_AWS_DEFAULT=json.dumps(aws),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AIRFLOW_VAR_SORA2_OUTPUT_ROOT=(home / "videos").as_uri(),
        AIRFLOW_VAR_SORA2_S3_BUCKET=S3_BUCKET,
        SORA2_POLL_INTERVAL=str(POLL_INTERVAL),
        PYTHONDONTWRITEBYTECODE="1",
    )
    cluster = AirflowCluster(home=home, env=env, api_url=api_url, output_root=home / "videos")
    started = time.monotonic()
    cluster.cli("db", "migrate", timeout=300)
    migrated = time.monotonic()
    try:
        cluster.start("api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
        for component in COMPONENTS[1:]:
            cluster.start(component)
        # The pool the batch example needs, created the way its docs say (deferred tasks keep their slot).
        cluster.cli("pools", "set", "sora2", "2", "Concurrent Sora 2 generations", "--include-deferred")
        wait_for("a healthy api-server, scheduler, dag-processor and triggerer", cluster.healthy, timeout=180)
        wait_for("the example DAGs parsed", lambda: _all_dags_parsed(cluster), timeout=120)
        ready = time.monotonic() - migrated
        print(f"Airflow e2e cluster: db migrate {migrated - started:.0f} s, then ready in {ready:.0f} s")
        yield cluster
    finally:
        stopping = time.monotonic()
        cluster.stop()
        print(f"Airflow e2e cluster stopped in {time.monotonic() - stopping:.0f} s {cluster.stop_times}")


def _all_dags_parsed(cluster: AirflowCluster) -> bool:
    cluster.check_alive()
    errors = cluster.api("GET", "/importErrors")
    assert errors["total_entries"] == 0, errors
    dag_ids = {dag["dag_id"] for dag in cluster.api("GET", "/dags", params={"limit": 100})["dags"]}
    return dag_ids >= {path.stem for path in EXAMPLE_DAGS.glob("sora2_*.py")}
