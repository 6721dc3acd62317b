"""Airflow deep-copies tasks (``DAG.partial_subset``, 3.0's ``dag.test``) and so do users' tests: the operator must
survive it on every line, and a copy must still stop its own polling when killed."""

from __future__ import annotations

import copy

import pendulum
from airflow.providers.common.compat.sdk import DAG

from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator
from sora2_provider.sensors.credits import CreditsSensor


def a_dag() -> DAG:
    with DAG("sora2_copies", schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
        credits = CreditsSensor(task_id="credits", jobs=[{"model": "sora-2", "duration": 4}])
        generate = Sora2GenerateVideoOperator(
            task_id="generate", prompt="a kite over dunes", output_path="file:///tmp/sora2-copies/kite.mp4",
            duration=4, deferrable=True,
        )
        credits >> generate
    return dag


def test_deepcopy_of_the_operator_keeps_its_arguments():
    operator = a_dag().get_task("generate")
    copied = copy.deepcopy(operator)
    assert copied is not operator
    assert (copied.prompt, copied.output_path, copied.duration, copied.deferrable) == (
        "a kite over dunes", "file:///tmp/sora2-copies/kite.mp4", 4, True,
    )
    copied.on_kill()  # what a kill of the copied task runs: it must reach the copy's polling wait
    assert copied._stop_polling.is_set()


def test_partial_subset_of_a_dag_holding_the_operator():
    dag = a_dag()
    subset = dag.partial_subset(["generate"], include_upstream=True, include_downstream=False)
    assert sorted(subset.task_dict) == ["credits", "generate"]
    generate = subset.task_dict["generate"]
    assert isinstance(generate, Sora2GenerateVideoOperator) and generate is not dag.get_task("generate")
    assert generate.upstream_task_ids == {"credits"}
    assert generate.prompt == "a kite over dunes"
