"""
### A batch of Sora 2 videos

One video per prompt, generated in parallel but never more than the `sora2` pool allows at once.

1. **`wait_for_credits`** (`CreditsSensor`) waits once for the cost of the whole batch: `jobs` plans
   `len(PROMPTS)` videos of 4 s of `sora-2` at 720x1280 (0.40 credits each).
2. **`generate_video`** is mapped over the prompts (`partial(...).expand(prompt=PROMPTS)`): one task instance,
   one paid job and one MP4 per prompt, stored at `<sora2_output_root>/batch/<YYYY-MM-DD>/<map index>.mp4`.
3. **`summarize`** collects the mapped XCom dicts: where each video is and what the batch cost.

**The pool.** Every `generate_video` instance runs in the Airflow pool `sora2`, so at most that many Sora 2
jobs render at once, across every DAG that uses the pool. The tasks are deferrable, and a deferred task leaves
its pool slot free unless the pool counts deferred tasks, so create the pool with `--include-deferred`:

    airflow pools set sora2 2 "Concurrent Sora 2 generations" --include-deferred

Airflow does not create pools: until `sora2` exists, the scheduler leaves `generate_video` in the `scheduled`
state and logs that the pool does not exist. (To limit one DAG only, without a pool, use
`max_active_tis_per_dagrun=2` on the mapped operator instead.)

**Setup** as for `sora2_daily_video`: the `sora2_default` connection, the optional Variable `sora2_output_root`
(default `file:///tmp/sora2`) and the optional environment variable `SORA2_POLL_INTERVAL` (default 10 s).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import DAG, task

from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator
from sora2_provider.sensors.credits import CreditsSensor

POLL_INTERVAL = float(os.environ.get("SORA2_POLL_INTERVAL", "10"))
POOL = "sora2"
MODEL, DURATION, SIZE = "sora-2", 4, "720x1280"
RUN_DATE = "{{ ds if ds is defined else dag_run.run_after | ds }}"
OUTPUT_ROOT = "{{ var.value.get('sora2_output_root', 'file:///tmp/sora2') }}"

PROMPTS = [
    "A paper boat drifting down a rain-soaked city gutter, macro lens",
    "A red fox trotting across fresh snow at dawn, tracking shot",
    "Steam rising from a cup of coffee on a windowsill, rain outside",
    "A hummingbird hovering at a purple flower, slow motion",
    "Neon signs reflecting in puddles as a tram passes at night",
    "Waves folding over black sand under a low grey sky, drone shot",
]

with DAG(
    dag_id="sora2_batch",
    description="One Sora 2 video per prompt, at most `sora2` pool slots at once",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    tags=["sora2", "example"],
) as dag:
    wait_for_credits = CreditsSensor(
        task_id="wait_for_credits",
        jobs=[{"model": MODEL, "duration": DURATION, "size": SIZE, "count": len(PROMPTS)}],
        deferrable=True,
        poke_interval=6 * POLL_INTERVAL,
        timeout=timedelta(hours=6).total_seconds(),
    )

    videos = Sora2GenerateVideoOperator.partial(
        task_id="generate_video",
        output_path=f"{OUTPUT_ROOT}/batch/{RUN_DATE}/{{{{ ti.map_index }}}}.mp4",
        model=MODEL,
        duration=DURATION,
        size=SIZE,
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        max_cost=0.5,
        pool=POOL,
    ).expand(prompt=PROMPTS)

    @task
    def summarize(results: list[dict]) -> dict:
        """Where each video went and what the batch cost."""
        results = list(results)
        for result in results:
            print(f"{result['uri']}: {result['bytes']} bytes, {result['cost']} credits, {result['decision']}")
        total = round(sum(result["cost"] or 0.0 for result in results), 4)
        return {"videos": [result["uri"] for result in results], "total_cost": total}

    wait_for_credits >> videos
    summarize(videos.output)
