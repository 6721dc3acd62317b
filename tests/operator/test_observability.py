"""OpenLineage events and StatsD metrics of real ``dag.test()`` runs against the emulator over real HTTP.

Each run is a fresh interpreter (``python -c`` loading the DAG file and calling ``dag.test()``) so the
``[openlineage]`` / ``[metrics]`` configuration given as environment variables takes effect: Airflow reads both
once per process (the OpenLineage listener's ``is_disabled`` is cached; the metrics backend is built on first use).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support import MASK_REGISTRATION, TEST_API_KEY, connection_json

REPO = Path(__file__).resolve().parents[2]
RUNNER = """
import sys
from tests.support import dag_bag
bag = dag_bag(sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.get_dag(sys.argv[2]).test()
print(f"DAGRUN_STATE {run.state}\\n", end="", flush=True)  # one write: a lineage thread may log meanwhile
"""

DAG = """
import datetime
import pendulum
from airflow.providers.common.compat.sdk import DAG
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2025, 1, 1), catchup=False) as dag:
    Sora2GenerateVideoOperator(
        task_id="generate",
        prompt="a red fox in fresh snow",
        output_path={output!r},
        model="sora-2",
        duration=4,
        input_reference={reference!r},
        poll_interval=0.05,
        retries=0,
    )
"""


def run_dag(dag_runner: Any, dag_id: str, source: str, env: dict[str, str], expect: str = "success") -> str:
    """Run the DAG with ``dag.test()`` in a fresh interpreter; return its output (the run must end ``expect``)."""
    path = dag_runner.write(dag_id, source)
    try:
        done = subprocess.run(
            [sys.executable, "-c", RUNNER, str(path), dag_id],
            env={**os.environ, **env},
            cwd=REPO,  # the runner imports tests.support
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        path.unlink()
    output = done.stdout + done.stderr
    assert TEST_API_KEY not in output.replace(MASK_REGISTRATION, "MaskSecret(value=<the key being registered>")
    if expect == "success":
        assert done.returncode == 0, output[-5000:]
    assert f"DAGRUN_STATE {expect}" in output, output[-5000:]
    return output


def png(path: Path) -> Path:
    """A 1x1 PNG image."""
    path.write_bytes(
        bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360f8cf00000301010018dd8db40000000049454e44ae426082"
        )
    )
    return path


# --------------------------------------------------------------------------- OpenLineage


def test_openlineage_complete_event_names_the_video_the_image_and_the_sora2_facet(
    dag_runner, emulator, tmp_path
):
    from sora2_provider.lineage import SCHEMA_FILE, SCHEMA_URL
    from tests.unit.test_readme_observability import exported

    (readme_transport,) = map(json.loads, exported("AIRFLOW__OPENLINEAGE__TRANSPORT").values())  # the README's
    events = tmp_path / "openlineage.jsonl"
    output = f"file://{tmp_path}/videos/fox.mp4"
    image = png(tmp_path / "reference.png")
    env = {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps({**readme_transport, "log_file_path": str(events)}),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "sora2-tests",
        "AIRFLOW_CONN_SORA2_DEFAULT": connection_json(emulator.url),
    }
    run_dag(dag_runner, "ol_generate", DAG.format(dag_id="ol_generate", output=output, reference=str(image)), env)

    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    task_events = [e for e in lines if e["job"]["name"] == "ol_generate.generate"]
    assert [e["eventType"] for e in task_events] == ["START", "COMPLETE"], [e["eventType"] for e in lines]
    complete = task_events[-1]
    host = socket.gethostname()
    assert [(d["namespace"], d["name"]) for d in complete["outputs"]] == [
        (f"file://{host}", f"{tmp_path}/videos/fox.mp4")
    ]
    video_bytes = (tmp_path / "videos" / "fox.mp4").stat().st_size
    assert complete["outputs"][0]["outputFacets"]["outputStatistics"]["size"] == video_bytes
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [(f"file://{host}", str(image))]

    facet = complete["run"]["facets"]["sora2"]
    (job,) = emulator.ledger
    assert facet["_schemaURL"] == SCHEMA_URL
    assert SCHEMA_URL.split("#")[0] == "sora2_provider/facets/" + SCHEMA_FILE.name
    assert {k: facet[k] for k in ("model", "duration", "size", "request_id", "cost", "decision")} == {
        "model": "sora-2",
        "duration": 4,
        "size": "720x1280",
        "request_id": job["request_id"],
        "cost": 0.4,  # sora-2 at USD 0.10 per output second x 4 s (Segmind's price table)
        "decision": "new_submit",
    }
    assert job["charged"] == 0.4
    assert facet["estimated_cost"] == 0.4
    assert facet["generation_seconds"] > 0
    schema = json.loads(SCHEMA_FILE.read_text())
    own_part = schema["$defs"]["Sora2RunFacet"]["allOf"][1]
    import jsonschema

    jsonschema.validate(facet, own_part)
    text = json.dumps(lines)
    assert TEST_API_KEY not in text
    assert set(facet) - {"_producer", "_schemaURL"} == {  # no prompt, no output URL, no key
        "model", "duration", "size", "request_id", "cost", "estimated_cost", "decision", "generation_seconds"
    }


def test_dataset_names_follow_openlineage_naming():
    from sora2_provider.lineage import dataset_name

    assert dataset_name("s3://aws_default@my-bucket/videos/a.mp4") == ("s3://my-bucket", "videos/a.mp4")
    assert dataset_name("file:///data/v.mp4") == (f"file://{socket.gethostname()}", "/data/v.mp4")


# --------------------------------------------------------------------------- metrics


class StatsdListener:
    """A UDP socket on 127.0.0.1 collecting StatsD lines."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            self.lines.extend(data.decode().splitlines())

    def close(self) -> None:
        self.sock.close()

    def ours(self) -> list[tuple[str, float, str]]:
        """(name, value, type) of every ``airflow.sora2.*`` line received."""
        found = []
        for line in self.lines:
            if line.startswith("airflow.sora2."):
                name, _, rest = line.partition(":")
                value, _, kind = rest.partition("|")
                found.append((name.removeprefix("airflow."), float(value), kind.split("|")[0]))
        return found


@pytest.fixture
def statsd():
    listener = StatsdListener()
    yield listener
    listener.close()


def metrics_env(statsd: StatsdListener, url: str) -> dict[str, str]:
    return {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(statsd.port),
        "AIRFLOW_CONN_SORA2_DEFAULT": connection_json(url),
    }


def wait_for_line(statsd: StatsdListener, name: str) -> None:
    """UDP datagrams sent by the finished subprocess are in the socket buffer; give the reader thread its turn."""
    from tests.support import wait_for

    wait_for(f"StatsD line {name}", lambda: any(n == name for n, _, _ in statsd.ours()), timeout=10, interval=0.05)


def test_a_generation_emits_its_metrics(dag_runner, emulator, tmp_path, statsd):
    output = f"file://{tmp_path}/videos/m.mp4"
    dag = DAG.format(dag_id="metrics_generate", output=output, reference=None)
    run_dag(dag_runner, "metrics_generate", dag, metrics_env(statsd, emulator.url))
    wait_for_line(statsd, "sora2.download.mb_per_s")
    got = statsd.ours()
    by_name: dict[str, list[tuple[float, str]]] = {}
    for name, value, kind in got:
        by_name.setdefault(name, []).append((value, kind))
    (job,) = emulator.ledger
    size = (tmp_path / "videos" / "m.mp4").stat().st_size
    assert job["charged"] == 0.4  # sora-2 at USD 0.10 per output second x 4 s (Segmind's price table)
    assert by_name["sora2.jobs.submitted"] == [(1.0, "c")]
    assert by_name["sora2.credits.spent"] == [(0.4, "c")]
    assert by_name["sora2.cost.charged"] == [(0.4, "g")]
    assert by_name["sora2.cost.estimated"] == [(0.4, "g")]
    assert by_name["sora2.download.bytes"] == [(float(size), "c")]
    ((mbps, kind),) = by_name["sora2.download.mb_per_s"]
    assert kind == "g" and mbps > 0
    ((millis, kind),) = by_name["sora2.generation.duration"]
    assert kind == "ms" and millis > 0
    assert not [n for n in by_name if n.startswith(("sora2.jobs.failed", "sora2.rate_limited", "sora2.jobs.resumed"))]


def test_a_rate_limited_generation_emits_its_waits(dag_runner, tmp_path, statsd):
    from sora2_provider.testing.emulator import Sora2Emulator

    # a 429 whose x-rate-limit-reset-at-utc is 0.4 s ahead: the hook waits that long, then retries
    with Sora2Emulator(time_scale=0.005, api_keys={TEST_API_KEY: 100.0}, rate_limit_window=0.4) as emu:
        emu.add_fault("submit_v2", "status", status=429, times=2)
        output = f"file://{tmp_path}/videos/r.mp4"
        dag = DAG.format(dag_id="metrics_rate_limited", output=output, reference=None)
        run_dag(dag_runner, "metrics_rate_limited", dag, metrics_env(statsd, emu.url))
        assert len(emu.ledger) == 1
    wait_for_line(statsd, "sora2.download.mb_per_s")
    got = statsd.ours()
    assert [(v, k) for n, v, k in got if n == "sora2.rate_limited.waits"] == [(1.0, "c"), (1.0, "c")]
    waits = [v for n, v, k in got if n == "sora2.rate_limited.wait" and k == "ms"]
    assert len(waits) == 2 and all(0 < w <= 1000 for w in waits), waits
    assert [(v, k) for n, v, k in got if n == "sora2.jobs.submitted"] == [(1.0, "c")]


def test_failures_are_counted_by_reason(dag_runner, emulator, tmp_path, statsd):
    env = metrics_env(statsd, emulator.url)
    env["AIRFLOW_CONN_SORA2_DEFAULT"] = connection_json(emulator.url, max_spend_per_day=0.1)
    source = DAG.format(dag_id="metrics_refused", output=f"file://{tmp_path}/x.mp4", reference=None)
    run_dag(dag_runner, "metrics_refused", source, env, expect="failed")
    wait_for_line(statsd, "sora2.jobs.failed.spend_cap")
    names = [n for n, _, _ in statsd.ours()]
    assert names.count("sora2.jobs.failed.spend_cap") == 1
    assert names.count("sora2.spend_cap.refused") == 1
    assert "sora2.jobs.submitted" not in names
    assert emulator.ledger == []


def test_failure_reasons_of_hook_errors_come_from_their_type_and_status():
    from sora2_provider.exceptions import Sora2AuthError, Sora2JobFailedError, Sora2ServerError
    from sora2_provider.operators._failures import reason_of
    from sora2_provider.spend import Sora2SpendCapError

    assert reason_of(Sora2SpendCapError("max_spend_per_day: refusing", cap=4.0, spent=3.6, estimate=0.8)) == "spend_cap"
    assert reason_of(Sora2JobFailedError("moderation", status_code=200)) == "job_failed"
    assert reason_of(Sora2AuthError("POST /v2/sora-2: key refused", status_code=401)) == "rejected"
    assert reason_of(Sora2ServerError("POST /v2/sora-2", status_code=503)) == "error"
    assert reason_of(Sora2AuthError("HTTP 400 in the text alone is no status")) == "error"
