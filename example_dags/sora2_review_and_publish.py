"""
### Sora 2 video, reviewed before publishing

A person watches every generated video and approves or rejects it; only an approved video is published.

1. **`generate_video`** (`Sora2GenerateVideoOperator`, deferrable) renders the prompt and stores the draft at
   `<sora2_output_root>/review/<YYYY-MM-DD>/<run>.mp4` (paid once, even across retries).
2. **`review_video`** (Airflow's `ApprovalOperator`, standard provider, Airflow 3.1+) asks for a decision: the
   request shows the prompt, the cost, the model and where the draft is, and links to the generation task's
   **Video** tab, where the draft plays. Answer it in the UI (**Browse > Required Actions**, or the task's
   **Required Actions** tab) or through the REST API:
   `PATCH /api/v2/dags/sora2_review_and_publish/dagRuns/<run_id>/taskInstances/review_video/-1/hitlDetails`
   with `{"chosen_options": ["Approve"]}` (or `["Reject"]`). No answer within three days counts as a rejection.
3. **`publish_video`** (on approval only) copies the draft to
   `<sora2_output_root>/published/<YYYY-MM-DD>/<run>.mp4` atomically: the published video appears whole or not
   at all, and only when its SHA-256 is the one the generation recorded (a draft replaced after the review is
   refused). A rejection skips it: the run ends successfully with nothing published, and the draft stays under
   `review/`.

**Setup** as for `sora2_daily_video`: the `sora2_default` connection, the optional Variable `sora2_output_root`
(default `file:///tmp/sora2`; any object-storage URL) and the optional environment variable
`SORA2_POLL_INTERVAL` (default 10 s). The Video tab link starts with `[api] base_url`; set it to the address
reviewers open Airflow at.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, Param, task

from sora2_provider.links import video_tab_url
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

POLL_INTERVAL = float(os.environ.get("SORA2_POLL_INTERVAL", "10"))
MODEL, DURATION, SIZE = "sora-2", 4, "1280x720"
REVIEW_TIMEOUT = timedelta(days=3)
RUN_DATE = "{{ ds if ds is defined else dag_run.run_after | ds }}"
# The run id names the files: unique per run, with the characters object stores and URLs dislike replaced.
RUN_KEY = "{{ run_id | replace(':', '-') | replace('+', '_') }}"
OUTPUT_ROOT = "{{ var.value.get('sora2_output_root', 'file:///tmp/sora2') }}"
DRAFT = f"{OUTPUT_ROOT}/review/{RUN_DATE}/{RUN_KEY}.mp4"
PUBLISHED = f"{OUTPUT_ROOT}/published/{RUN_DATE}/{RUN_KEY}.mp4"
# Markdown, rendered when the review task starts: the generation's XCom is there by then.
REVIEW_BODY = (
    """\
{% set video = ti.xcom_pull(task_ids='generate_video') -%}
**Prompt**

> {{ video.prompt | replace('\\n', '\\n> ') }}

- **Cost:** {{ '%.2f credits' | format(video.cost) if video.cost is not none else 'not recorded' }}
- **Video:** {{ video.model }}, {{ video.duration }} s, {{ video.size }}, request `{{ video.request_id }}`
- **Draft:** `{{ video.uri }}`

[Watch it in the Video tab]({{ video_tab_url(dag.dag_id, run_id, 'generate_video') }})

**Approve** copies it to `"""
    + PUBLISHED
    + """`; **Reject** leaves it unpublished.
"""
)

with DAG(
    dag_id="sora2_review_and_publish",
    description="A Sora 2 video, published only once a reviewer approves it",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    params={
        "prompt": Param(
            "A paper boat drifting down a rain-soaked street at dusk, neon reflections in the puddles",
            type="string",
            minLength=1,
            maxLength=5000,
            description="What the video shows.",
        )
    },
    user_defined_macros={"video_tab_url": video_tab_url},
    # Every task waits in the triggerer, checking every POLL_INTERVAL seconds; a failed try is retried twice.
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
        "deferrable": True,
        "poll_interval": POLL_INTERVAL,
    },
    tags=["sora2", "example", "review"],
) as dag:
    generate_video = Sora2GenerateVideoOperator(
        task_id="generate_video",
        prompt="{{ params.prompt }}",
        output_path=DRAFT,
        model=MODEL,
        duration=DURATION,
        size=SIZE,
        max_cost=1.0,
    )

    review_video = ApprovalOperator(
        task_id="review_video",
        subject="Publish this Sora 2 video?",
        body=REVIEW_BODY,
        defaults="Reject",
        response_timeout=REVIEW_TIMEOUT,
    )

    @task
    def publish_video(video: dict, decision: dict, published_uri: str) -> dict:
        """Copy the approved draft to ``published_uri``, whole or not at all, checked against its recorded SHA-256."""
        from airflow.sdk import ObjectStoragePath

        from sora2_provider.storage import copy_atomically

        draft, published = ObjectStoragePath(video["uri"]), ObjectStoragePath(published_uri)
        size, sha256 = copy_atomically(draft, published, expected_sha256=video["sha256"])
        approver = (decision.get("responded_by_user") or {}).get("name")
        print(f"Published {video['uri']} as {published_uri} ({size} bytes), approved by {approver}")
        return {
            "uri": published_uri,
            "bytes": size,
            "sha256": sha256,
            "request_id": video["request_id"],
            "approved_by": approver,
        }

    generate_video >> review_video
    publish_video(generate_video.output, review_video.output, PUBLISHED)
