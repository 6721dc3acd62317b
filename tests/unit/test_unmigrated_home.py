"""A DAG run against an Airflow home nobody migrated: the command the docs give (``airflow dags test <dag_id>``)
says to run ``airflow db migrate``. (``dag.test()`` from a script fails inside Airflow, before any provider code
runs, with ``no such table``; the docs therefore run ``airflow db migrate`` first and use ``airflow dags test``.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
DAG = '''
import pendulum
from airflow.providers.common.compat.sdk import DAG
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

with DAG(dag_id="first_video", schedule=None, start_date=pendulum.datetime(2025, 1, 1, tz="UTC")):
    Sora2GenerateVideoOperator(task_id="generate_video", prompt="A paper boat", output_path="file:///tmp/x.mp4")
'''


def test_airflow_dags_test_in_an_unmigrated_home_says_to_run_db_migrate(tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "first_video.py").write_text(DAG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(
        AIRFLOW_HOME=str(tmp_path / "home"),
        AIRFLOW__CORE__DAGS_FOLDER=str(tmp_path / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
    )
    argv = [str(BIN / "airflow"), "dags", "test", "first_video"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    # Airflow 2 words it "... to initialize the database. Please run `airflow db init`" (migrate does that too).
    assert re.search(r"Please run `airflow db (migrate|init)`", proc.stdout + proc.stderr)
