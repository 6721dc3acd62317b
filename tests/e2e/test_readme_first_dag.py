"""The README's "Your first DAG" runs as written: its DAG file and its shell commands, in a fresh home, in bash.

The one change made to the commands: the emulator's port 8765 becomes a free port (on a shared machine 8765 may
be taken). Everything else, `airflow db migrate` and `python $AIRFLOW_HOME/dags/my_first_video.py` included, runs
verbatim, with nothing of the test session's Airflow configuration in the environment."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_blocks import ROOT, Block, document_blocks, section
from tests.support import free_port, wait_for

pytestmark = pytest.mark.e2e

README_PORT = "8765"


def first_dag_blocks() -> tuple[Block, Block]:
    """The README section's python block (the DAG file) and bash block (the commands)."""
    text = section("README.md", "Your first DAG")
    blocks = [block for block in document_blocks(ROOT / "README.md") if block.code in text]
    (dag_file,) = [block for block in blocks if block.lang == "python"]
    (commands,) = [block for block in blocks if block.lang == "bash"]
    return dag_file, commands


def test_first_dag_runs_as_written(tmp_path: Path):
    dag_file, commands = first_dag_blocks()
    name = re.search(r"Save this as `([\w.]+)`", section("README.md", "Your first DAG")).group(1)
    (tmp_path / name).write_text(dag_file.code)
    home = tmp_path / "home"
    home.mkdir()
    port = str(free_port())
    assert commands.code.count(README_PORT) == 2  # the emulator's --port and the connection's host
    script = "trap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + commands.code.replace(README_PORT, port)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "SORA2_"))}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")

    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert re.search(r"DagRun Finished: dag_id=my_first_video, .*state=success", output), output[-5000:]
    (stored,) = set(re.findall(r"Stored file://(/tmp/sora2-first/\d{8}T\d{6}\.mp4) \(\d+ bytes", output))
    try:
        assert Path(stored).read_bytes()[4:8] == b"ftyp"
    finally:
        Path(stored).unlink()
    assert (home / "sora2-first-dag" / "airflow.db").is_file()  # the home the README names, under ~
    assert "SG_try" not in output  # the key of the README's connection is never logged
    wait_for("`kill %1` to stop the emulator", lambda: not listening(int(port)), timeout=10)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return False
    return True
