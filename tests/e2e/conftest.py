"""Fixtures of the end-to-end tests: one emulator and one real Airflow cluster per test module."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.airflow_cluster import run_cluster
from tests.e2e.support import EXAMPLE_DAGS, LOCAL_SETTINGS, POLL_INTERVAL, TIME_SCALE, E2ECluster
from tests.support import TEST_API_KEY, connection_json, wait_for

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
def airflow_cluster(e2e_emulator: Any, s3_server: str) -> Iterator[E2ECluster]:
    """Start api-server, scheduler, dag-processor and triggerer (LocalExecutor, SQLite) and wait until healthy."""
    home = SESSION_AIRFLOW_HOME / "e2e"
    aws = {"conn_type": "aws", "login": "testing", "password": "testing"}
    aws["extra"] = {"endpoint_url": s3_server, "region_name": "us-east-1"}
    settings = dict(
        AIRFLOW__CORE__PARALLELISM="6",
        # Runs are triggered by the tests only: no scheduled run of the @daily DAGs, no unpausing needed.
        AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
        AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.2",
        # How often the scheduler resolves timed-out waits (a review without an answer): 15 s by default.
        AIRFLOW__SCHEDULER__TRIGGER_TIMEOUT_CHECK_INTERVAL="2",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        AIRFLOW_CONN_SORA2_DEFAULT=connection_json(e2e_emulator.url),
        AIRFLOW_CONN_AWS_DEFAULT=json.dumps(aws),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AIRFLOW_VAR_SORA2_OUTPUT_ROOT=(home / "videos").as_uri(),
        SORA2_POLL_INTERVAL=str(POLL_INTERVAL),
        PYTHONDONTWRITEBYTECODE="1",
    )

    def create_pool(cluster: E2ECluster) -> None:
        cluster.output_root = home / "videos"
        # The pool the batch example needs, created the way its docs say (deferred tasks keep their slot).
        cluster.cli("pools", "set", "sora2", "2", "Concurrent Sora 2 generations", "--include-deferred")

    with run_cluster(
        home,
        executor="LocalExecutor",
        settings=settings,
        dag_files={path.name: path.read_text() for path in EXAMPLE_DAGS.glob("*.py")},
        home_files={"config/airflow_local_settings.py": LOCAL_SETTINGS},
        on_started=create_pool,
        ready_timeout=180,
        cls=E2ECluster,
    ) as cluster:
        dag_ids = {path.stem for path in EXAMPLE_DAGS.glob("sora2_*.py")}
        wait_for("the example DAGs parsed", lambda: cluster.dags_parsed(dag_ids), timeout=120)
        yield cluster
