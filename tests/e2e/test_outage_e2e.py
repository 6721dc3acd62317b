"""Issue 25 end to end: mapped deferrable generations with ``retries=0`` ride out a Segmind outage in a real
triggerer (scheduler, triggerer, LocalExecutor on SQLite), and the outage costs a bounded number of calls.

Six jobs are submitted and deferred; then every Segmind route answers 503 for at least 210 s (3.5 minutes: the
ten-error limit used to give paid jobs up after about 200 s) and more than the ten failed reads the triggers used to
tolerate. With ``outage_backoff_max=5`` (a minute in production) the shared
history watcher reads once every 5 s while Segmind is down: the calls made during the outage are printed (``-s``)
and asserted within ``6 + 8 + seconds / 5`` (the first read and its five quick retries, the doubling pauses up to
the cap, then one read per pause), whatever the number of jobs.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from tests.e2e.support import AirflowCluster, deploy_dag, emulator_ledger
from tests.outage import outage
from tests.support import TEST_API_KEY

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
JOBS = 6
BACKOFF_MAX = 5.0
OUTAGE_SECONDS = 210.0  # longer than the ~200 s after which the ten-error limit used to give the jobs up

DAG_FILE = """
import pendulum
from airflow.sdk import DAG
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

with DAG(DAG_ID, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False):
    Sora2GenerateVideoOperator.partial(
        task_id="generate",
        prompt="clip {{ ti.map_index }} of a storm over the harbour",
        model="sora-2",
        duration=4,
        deferrable=True,
        retries=0,
        poll_interval=0.5,
        sora2_conn_id=CONN_ID,
    ).expand(output_path=OUTPUTS)
"""


def charges(emulator: Any) -> dict[str, float]:
    return emulator_ledger(emulator)["charges"]


def all_submitted(log: list[dict[str, Any]]) -> bool:
    return sum(1 for e in log if e["endpoint"] == "submit_v2" and e["status"] == 200) >= JOBS


def test_mapped_deferrable_jobs_ride_out_an_outage_with_a_bounded_number_of_calls(
    airflow_cluster: AirflowCluster, e2e_emulator: Any
) -> None:
    dag_id = "outage_e2e"
    before = set(charges(e2e_emulator))
    out = airflow_cluster.home / "outage-videos"
    outputs = [(out / f"clip-{i}.mp4").as_uri() for i in range(JOBS)]
    deploy_dag(airflow_cluster, e2e_emulator, dag_id=dag_id, template=DAG_FILE, values={"OUTPUTS": outputs},
               api_key=TEST_API_KEY, extra={"retry_backoff": 0.05, "outage_backoff_max": BACKOFF_MAX})

    started = datetime.datetime.now(datetime.timezone.utc)
    with outage(e2e_emulator, begin_when=all_submitted, min_seconds=OUTAGE_SECONDS, refusals=6 + 11) as down:
        run_id = airflow_cluster.trigger(dag_id, None)
        state = airflow_cluster.wait_for_runs({dag_id: run_id}, timeout=480)[dag_id]

    tis = airflow_cluster.task_instances(dag_id, run_id)
    diagnosis = airflow_cluster.diagnose({dag_id: run_id}, dag_id=dag_id) if state != "success" else ""
    assert state == "success", diagnosis
    assert len(tis) == JOBS and all(ti["state"] == "success" and ti["try_number"] == 1 for ti in tis.values()), tis
    paid = {rid: credits for rid, credits in charges(e2e_emulator).items() if rid not in before}
    assert len(paid) == JOBS, "one charge per video"
    calls = down.calls
    refused = sum(1 for c in calls if c["status"] == 503)
    bound = 6 + 8 + down.seconds / BACKOFF_MAX
    print(
        f"\noutage e2e: {JOBS} deferred jobs, outage {down.seconds:.1f} s (from {started:%H:%M:%S}): {len(calls)} "
        f"calls during the outage ({refused} refused; by endpoint "
        f"{sorted({c['endpoint'] for c in calls})}), bound {bound:.1f}"
    )
    assert refused >= 6 + 11, "the outage outlasted the ten failed reads the triggers used to tolerate"
    assert len(calls) <= bound, (len(calls), bound)
