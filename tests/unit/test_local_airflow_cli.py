"""``make airflow`` without starting Airflow: a port in use gets one clear line, and the Video tab address it prints
is the plugin's."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import local_airflow
from sora2_provider.compat import PLUGIN_VIEWS
from sora2_provider.links import video_tab_url

REPO = Path(__file__).resolve().parents[2]


def test_a_port_in_use_gets_one_line_naming_it_and_nothing_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [sys.executable, "-m", "scripts.local_airflow", "--port", str(port), "--home", str(tmp_path / "home")]
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"Port {port} is in use (another Airflow?): stop it, or pick another: make airflow PORT=8081"
    ]
    assert not (tmp_path / "home").exists()


@pytest.mark.skipif(not PLUGIN_VIEWS, reason="make airflow runs the newest Airflow (.venv), whose plugin has the tab")
def test_the_printed_video_tab_is_the_plugin_route() -> None:
    run_id = "manual__2026-12-03T13:16:04.882055+00:00"
    printed = local_airflow.LocalAirflow(8080, Path("/tmp/unused"), 0.05).ready_block(run_id, "success")
    dag_id, task_id = local_airflow.EXAMPLE_DAG_ID, local_airflow.EXAMPLE_TASK_ID
    expected = video_tab_url(dag_id, run_id, task_id, base_url="http://127.0.0.1:8080")
    assert f"  Video tab:   {expected}" in printed.splitlines()
