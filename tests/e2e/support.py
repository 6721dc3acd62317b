"""A real Airflow for the end-to-end tests: api-server, scheduler, dag-processor and triggerer as subprocesses.

(The fixtures that start it live in ``tests/e2e/conftest.py``, the processes in ``tests/airflow_cluster.py``, shared
with tests/ui and tests/cluster; this module holds what tests import too.)

One cluster per test module (starting it takes about a minute on two cores). It runs the example DAGs (a copy of
``example_dags/``) with the LocalExecutor on SQLite, in an ``AIRFLOW_HOME`` of its own under the session's one
(so the session's API-key scan covers its logs), against a module-wide emulator and the session's moto S3 server.
The public REST API of the api-server (``simple_auth_manager_all_admins``: no login on this loopback-only
server) triggers runs and reads their states and XComs.

LocalExecutor on SQLite: Airflow 3.3 no longer refuses it (``airflow standalone`` runs exactly that); SQLite
serialises the writers, which is fine at this scale. Every process is stopped by its PID at teardown, with
whatever it started (executor workers, task supervisors, task processes, the trigger runner): see
``tests.airflow_cluster.Processes``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests import airflow_cluster
from tests.airflow_cluster import AIRFLOW_DEFER_RACE, COMPONENTS
from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DAGS = REPO / "example_dags"
S3_BUCKET = "sora2-test"
#: 180 s of sora-2 rendering -> 9 s. Long enough that (1) a pool letting deferred tasks go shows the emulator
#: three or four jobs at once (a task takes 2 to 10 s here to start and submit, most of it Airflow loading the
#: object-storage filesystems), and (2) the trigger rarely fires before the scheduler has seen the worker's
#: defer-exit (Airflow's own race, see AIRFLOW_DEFER_RACE).
TIME_SCALE = 0.05
#: ``$AIRFLOW_HOME/config/airflow_local_settings.py`` of the cluster: a cluster policy that shortens the examples'
#: one-minute retry delay, so a retry (after that race) costs seconds, not a minute.
LOCAL_SETTINGS = """\
from datetime import timedelta


def task_policy(task):
    task.retry_delay = timedelta(seconds=2)
"""
#: The operator's default 10 s poll interval, scaled like the render time (180 s -> 9 s): the history watcher reads
#: once a job can be done, then every interval, so the interval weighs on the calls as it does in production.
POLL_INTERVAL = 10.0 * TIME_SCALE

__all__ = [
    "AIRFLOW_DEFER_RACE",
    "COMPONENTS",
    "EXAMPLE_DAGS",
    "S3_BUCKET",
    "AirflowCluster",
    "E2ECluster",
    "deploy_dag",
    "emulator_ledger",
]


@dataclass
class E2ECluster(airflow_cluster.AirflowCluster):
    """The e2e Airflow, and where its ``file://`` examples store their videos."""

    output_root: Path = Path("/nonexistent")


#: The name the e2e tests use for it.
AirflowCluster = E2ECluster


def emulator_ledger(emulator: Any) -> dict[str, Any]:
    """The emulator's ledger, read over its control API: ``charges`` (request id -> credits) and more."""
    response = requests.get(f"{emulator.url}/_emulator/ledger", timeout=10)
    response.raise_for_status()
    return response.json()


def deploy_dag(
    cluster: E2ECluster, emulator: Any, *, dag_id: str, template: str, values: dict[str, Any], api_key: str,
    extra: dict[str, Any]
) -> None:
    """Write ``template`` as the DAG ``dag_id`` (each name in ``values`` replaced by the value's ``repr``; ``DAG_ID``
    and ``CONN_ID`` are ``dag_id``), add its own ``sora2`` connection with ``extra`` and wait until it is parsed."""
    source = template
    for name, value in {"DAG_ID": dag_id, "CONN_ID": dag_id, **values}.items():
        source = source.replace(name, repr(value))
    cluster.write_dag(f"{dag_id}.py", source)
    connection = {"connection_id": dag_id, "conn_type": "sora2", "host": emulator.url, "password": api_key}
    cluster.api("POST", "/connections", json={**connection, "extra": json.dumps(extra)})
    wait_for(f"{dag_id} parsed", lambda: cluster.dags_parsed({dag_id}), timeout=120)
