"""Every example DAG parses, reads well in the UI, and imports only what it needs at parse time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import dag_bag

pytestmark = pytest.mark.e2e

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
EXPECTED = {
    "sora2_daily_video",
    "sora2_batch",
    "sora2_image_to_video",
    "sora2_review_and_publish",
}
#: Modules a DAG file must not pull in when the scheduler or dag-processor parses it.
HEAVY = ("sora2_provider.hooks.sora2", "requests", "boto3", "s3fs", "av")


def test_every_example_dag_parses() -> None:
    """The DagBag the dag-processor would build: no import error, every example DAG, each documented and deferrable."""
    bag = dag_bag(EXAMPLE_DAGS)
    assert not bag.import_errors, bag.import_errors
    assert set(bag.dag_ids) == EXPECTED
    for dag_id in EXPECTED:
        dag = bag.dags[dag_id]
        assert dag.doc_md and dag.doc_md.strip().startswith("###"), f"{dag_id} has no readable doc_md"
        assert "sora2" in dag.tags
        generate = dag.get_task("generate_video")
        kwargs = getattr(generate, "partial_kwargs", None) or vars(generate)  # a mapped operator keeps them apart
        assert kwargs["deferrable"] is True, f"{dag_id}: generate_video should defer"


def test_example_dags_import_nothing_heavy_at_parse_time() -> None:
    """Parse the files one after the other in a fresh interpreter; after each, list the heavy modules loaded."""
    script = (
        "import json, runpy, sys\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = {}\n"
        "for path in sys.argv[1:]:\n"
        "    runpy.run_path(path)\n"
        "    loaded[path] = [m for m in heavy if m in sys.modules]\n"
        "print(json.dumps(loaded))\n"
    )
    paths = [str(path) for path in sorted(EXAMPLE_DAGS.glob("sora2_*.py"))]
    env = {**os.environ, "SORA2_POLL_INTERVAL": "1"}
    proc = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(loaded) == paths
    assert not any(loaded.values()), f"heavy imports at parse time: {loaded}"


def test_poll_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SORA2_POLL_INTERVAL", "0.25")
    bag = dag_bag(EXAMPLE_DAGS / "sora2_daily_video.py")
    dag = bag.dags["sora2_daily_video"]
    assert dag.get_task("generate_video").poll_interval == 0.25
    assert dag.get_task("wait_for_credits").poke_interval == 1.5
