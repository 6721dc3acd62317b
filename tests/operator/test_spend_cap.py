"""The daily spend cap (``max_spend_per_day``) in real ``dag.test()`` runs against the emulator over real HTTP.

``dag.test()`` runs the task instances of a run one at a time (it ignores pools: its loop runs each scheduled
task instance inline), which is what a pool of one slot gives; the pool of four runs on a real scheduler in
``tests/e2e/test_spend_cap_e2e.py``.
"""

from __future__ import annotations

import pytest

from sora2_provider.models import VideoRequest
from tests.support import connection_json, task_instances, wait_for

#: sora-2, 8 s: USD 0.10 per output second x 8 s (Segmind's price table: the API contract, README "Costs").
PRICE = 0.8

MAPPED_DAG = """
import datetime
import pendulum
from airflow.providers.common.compat.sdk import DAG
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
    Sora2GenerateVideoOperator.partial(
        task_id="generate",
        prompt="clip {{{{ ti.map_index }}}} of a lighthouse at dusk",
        model="sora-2",
        duration=8,
        retries=3,
        retry_delay=datetime.timedelta(seconds=0),
        poll_interval=0.05,
        {extra}
    ).expand(output_path={outputs!r})
"""

SINGLE_DAG = """
import datetime
import pendulum
from airflow.providers.common.compat.sdk import DAG
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator
{preamble}
with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
    {operator}(
        task_id="generate",
        prompt="a lighthouse at dusk",
        output_path={output!r},
        retries=2,
        retry_delay=datetime.timedelta(seconds=0),
        poll_interval=0.05,
        **{kwargs!r},
    )
"""

#: The first try dies right after its submit returned: the retry resumes the job (never refused by the cap).
DIES_AFTER_SUBMIT = """
class DiesAfterSubmit(Sora2GenerateVideoOperator):
    def _wait_and_store(self, context, hook, job, record):
        if context["ti"].try_number == 1:
            raise RuntimeError("worker died after the submit returned")
        return super()._wait_and_store(context, hook, job, record)
"""


def cap_conn(monkeypatch: pytest.MonkeyPatch, emulator, cap: float | None) -> None:
    extra = {} if cap is None else {"max_spend_per_day": cap}
    monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(emulator.url, **extra))


def paid_posts(emulator) -> list[dict]:
    return [e for e in emulator.request_log if e["method"] == "POST" and e["path"].startswith(("/v2/sora", "/v1/sora"))]


def run_single(dag_runner, tmp_path, dag_id: str, *, operator: str = "Sora2GenerateVideoOperator", **kwargs):
    source = SINGLE_DAG.format(
        dag_id=dag_id,
        output=f"file://{tmp_path}/{dag_id}.mp4",
        operator=operator,
        preamble=DIES_AFTER_SUBMIT if operator != "Sora2GenerateVideoOperator" else "",
        kwargs=kwargs,
    )
    run = dag_runner.run(dag_id, source)
    return task_instances(run)["generate"]


def test_mapped_20_with_cap_4_pays_exactly_5_and_fails_15_in_one_try(
    dag_runner, emulator, monkeypatch, tmp_path, console
):
    cap_conn(monkeypatch, emulator, 4.0)
    outputs = [f"file://{tmp_path}/videos/clip-{i:02d}.mp4" for i in range(20)]
    run = dag_runner.run("spend_cap_mapped", MAPPED_DAG.format(dag_id="spend_cap_mapped", outputs=outputs, extra=""))
    output = console.read()

    tis = task_instances(run)
    states = {key: ti.state for key, ti in tis.items()}
    succeeded = [key for key, state in states.items() if state == "success"]
    failed = [key for key, state in states.items() if state == "failed"]
    assert (len(succeeded), len(failed)) == (5, 15), states
    assert all(tis[key].try_number == 1 for key in failed), {key: tis[key].try_number for key in failed}
    charges = emulator.charges()
    assert len(charges) == 5
    assert round(sum(charges.values()), 6) == 4.0
    assert len(paid_posts(emulator)) == 5  # the 15 refused tasks never called the paid endpoint
    assert len(emulator.ledger) == 5
    assert output.count("AirflowFailException: max_spend_per_day: refusing") >= 15
    assert "the cap is 4.00 credits" in output
    assert "4.00 credits spent in the last 24 h (4.00 charged for 5 completed jobs" in output
    assert "estimated at 0.80 credits" in output


def test_a_cap_change_takes_effect_at_the_next_submit(dag_runner, emulator, monkeypatch, tmp_path, console):
    cap_conn(monkeypatch, emulator, 1.0)
    ti = run_single(dag_runner, tmp_path, "cap_change_1")
    assert ti.state == "success"
    ti = run_single(dag_runner, tmp_path, "cap_change_2")
    assert (ti.state, ti.try_number) == ("failed", 1)
    assert "0.80 credits spent in the last 24 h" in console.read()
    assert len(paid_posts(emulator)) == 1

    cap_conn(monkeypatch, emulator, 1.6)  # raised: the very next submit sees it
    ti = run_single(dag_runner, tmp_path, "cap_change_3")
    assert ti.state == "success"
    assert len(emulator.charges()) == 2

    cap_conn(monkeypatch, emulator, None)  # removed: no cap, no history read before the submit
    history_calls = sum(1 for e in emulator.request_log if "request-history" in e["path"])
    ti = run_single(dag_runner, tmp_path, "cap_change_4")
    assert ti.state == "success"
    assert sum(1 for e in emulator.request_log if "request-history" in e["path"]) == history_calls
    assert len(emulator.charges()) == 3


def test_operator_argument_lowers_but_never_raises_the_connection_cap(
    dag_runner, emulator, monkeypatch, tmp_path, console
):
    cap_conn(monkeypatch, emulator, 2.0)
    ti = run_single(dag_runner, tmp_path, "cap_lower", max_spend_per_day=0.5)
    assert (ti.state, ti.try_number) == ("failed", 1)
    assert "the cap is 0.50 credits" in console.read()
    assert paid_posts(emulator) == []

    cap_conn(monkeypatch, emulator, 0.5)
    ti = run_single(dag_runner, tmp_path, "cap_raise", max_spend_per_day=100.0)
    assert (ti.state, ti.try_number) == ("failed", 1)
    output = console.read()
    assert "cannot raise the connection's cap of 0.50 credits" in output
    assert "the cap is 0.50 credits" in output
    assert paid_posts(emulator) == []


def test_a_resumed_job_is_never_refused(
    dag_runner, emulator, monkeypatch, tmp_path, console
):
    """The cap is exactly one job. The first try submits and dies; the retry resumes the job it already paid for:
    no cap check (a new submit would be refused: 0.8 + 0.8 > 0.8), one charge."""
    cap_conn(monkeypatch, emulator, PRICE)
    ti = run_single(dag_runner, tmp_path, "cap_resume", operator="DiesAfterSubmit")
    assert (ti.state, ti.try_number) == ("success", 2)
    assert len(paid_posts(emulator)) == 1
    assert len(emulator.charges()) == 1
    assert "max_spend_per_day: refusing" not in console.read()

    ti = run_single(dag_runner, tmp_path, "cap_after_resume")  # the day's allowance is now used up
    assert (ti.state, ti.try_number) == ("failed", 1)
    assert "0.80 credits spent in the last 24 h (0.80 charged for 1 completed jobs" in console.read()


def test_pending_jobs_count_at_their_estimate(monkeypatch):
    """A job still rendering is not charged yet (credits_deduction 0 in the history): it counts at its estimate."""
    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.spend import Sora2SpendCapError
    from sora2_provider.testing.emulator import Sora2Emulator
    from tests.support import TEST_API_KEY

    with Sora2Emulator(time_scale=1.0, api_keys={TEST_API_KEY: 100.0}) as slow:  # renders take minutes
        monkeypatch.setenv("AIRFLOW_CONN_SORA2_DEFAULT", connection_json(slow.url, max_spend_per_day=2.0))
        hook = Sora2Hook()
        hook.submit(VideoRequest.create("a", "sora-2", 8))
        hook.submit(VideoRequest.create("b", "sora-2-pro", 4))  # 0.3 x 4 = 1.2
        spend = hook.rolling_spend()
        assert (spend.charged, spend.pending, spend.pending_jobs) == (0.0, 2.0, 2)
        with pytest.raises(Sora2SpendCapError) as refused:
            hook.submit(VideoRequest.create("c", "sora-2", 4))
        assert (refused.value.cap, refused.value.spent, refused.value.estimate) == (2.0, 2.0, 0.4)
        assert "2.00 estimated for 2 pending" in str(refused.value)
        assert len([e for e in slow.request_log if e["method"] == "POST"]) == 2


def test_failed_jobs_cost_nothing_towards_the_cap(emulator, monkeypatch):
    """A FAILED job is not billed (the contract): with a cap of 1.0, a failed 0.8-credit job leaves room for a
    0.4-credit one; counted at its estimate it would not (0.8 + 0.4 > 1.0). Prices: sora-2 at USD 0.10/s."""
    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.spend import Sora2SpendCapError

    cap_conn(monkeypatch, emulator, 1.0)
    hook = Sora2Hook()
    emulator.add_fault("submit_v2", "fail_job", message="the prompt was blocked")
    failed = hook.submit(VideoRequest.create("a storm", "sora-2", 8)).request_id
    wait_for("the job to fail", lambda: hook.get_status(failed).status == "FAILED", timeout=30, interval=0.05)

    hook.submit(VideoRequest.create("a calm sea", "sora-2", 4))
    with pytest.raises(Sora2SpendCapError) as refused:
        hook.submit(VideoRequest.create("a calm sea at dawn", "sora-2", 8))
    assert (refused.value.spent, refused.value.estimate) == (0.4, 0.8)
    assert len(paid_posts(emulator)) == 2
