"""What the plugin's UI tests run: the generation DAGs, the FAB users and roles, and the scripts that make them.

Three DAGs, each run once by ``dag.test()`` against the api-server's metadata DB (one background process, started
before the api-server so both overlap):

- ``sora2_ui_s3``: one sora-2 video of 8 s into S3 (the moto server), 0.80 credits;
- ``sora2_ui_file``: two sora-2-pro videos of 8 s (a mapped task) into ``file://``, 2.40 credits each;
- ``sora2_ui_refused``: a generation refused by Segmind (its account has no credits): a failed task instance.

Users (FAB auth manager): ``admin`` (Admin: every DAG), and ``s3_reader``, whose role reads ``sora2_ui_s3`` (and
its XComs) but not the other DAGs.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Any

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
ADMIN = ("admin", "admin-pass-7c3a")
S3_READER = ("s3_reader", "reader-pass-91d2")
S3_READER_ROLE = "sora2_s3_reader"


@dataclass(frozen=True)
class Generation:
    """One DAG of the fixture: how it calls the operator, and what each of its videos costs."""

    dag_id: str
    output: str  # the output_path template, ``{root}`` replaced by the fixture
    model: str
    duration: int
    size: str
    prompts: tuple[str, ...]
    conn_id: str = "sora2_default"
    cost: float = 0.0  # per video; 0 for a refused one

    @property
    def mapped(self) -> bool:
        return len(self.prompts) > 1


S3 = Generation(
    "sora2_ui_s3",
    "s3://aws_default@sora2-test/ui-plugin/{{ run_id | replace(':', '_') }}.mp4",
    "sora-2",
    8,
    "720x1280",
    ("A paper boat drifting across a rain puddle, macro shot",),
    cost=0.80,
)
FILE = Generation(
    "sora2_ui_file",
    "file://{root}/videos/{{ ds_nodash }}-{{ ti.map_index }}.mp4",
    "sora-2-pro",
    8,
    "1280x720",
    ("A lighthouse at dusk, waves rolling in", "A hot-air balloon over a misty valley at sunrise"),
    cost=2.40,
)
REFUSED = Generation(
    "sora2_ui_refused",
    "file://{root}/videos/refused.mp4",
    "sora-2",
    4,
    "720x1280",
    ("A glass of water on a windowsill",),
    conn_id="sora2_broke",
)
GENERATIONS = (S3, FILE, REFUSED)
TASK_ID = "generate_video"
#: A task of another operator in every fixture DAG: it has no video.
OTHER_TASK_ID = "announce"

DAG_SOURCE = '''
"""Sora 2 plugin UI fixture: {dag_id}."""

import pendulum
from airflow.sdk import DAG

from airflow.providers.standard.operators.empty import EmptyOperator
from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator

with DAG(dag_id="{dag_id}", schedule=None, start_date=pendulum.datetime(2025, 1, 1, tz="UTC"), catchup=False):
    EmptyOperator(task_id="{other_task_id}")
    Sora2GenerateVideoOperator{call}(
        task_id="{task_id}",{prompt}
        output_path={output!r},
        model="{model}",
        duration={duration},
        size="{size}",
        poll_interval=0.2,
        sora2_conn_id="{conn_id}",
    ){expand}
'''


def dag_source(generation: Generation, root: str) -> str:
    """The DAG file of ``generation``, writing under ``root`` for ``file://``; a mapped one expands its prompts."""
    prompts = list(generation.prompts)
    return DAG_SOURCE.format(
        dag_id=generation.dag_id,
        task_id=TASK_ID,
        other_task_id=OTHER_TASK_ID,
        prompt="" if generation.mapped else f"\n        prompt={prompts[0]!r},",
        output=generation.output.replace("{root}", root),
        model=generation.model,
        duration=generation.duration,
        size=generation.size,
        conn_id=generation.conn_id,
        call=".partial" if generation.mapped else "",
        expand=f".expand(prompt={prompts!r})" if generation.mapped else "",
    )


#: Runs ``dag.test()`` for each DAG id given, one after the other; prints ``dag_id run_id state`` per run.
RUN_DAGS = textwrap.dedent('''
    import sys
    from tests.support import dag_bag

    bag = dag_bag(sys.argv[1])
    assert not bag.import_errors, bag.import_errors
    for dag_id in sys.argv[2:]:
        run = bag.get_dag(dag_id).test()
        print(f"RUN {dag_id} {run.run_id} {run.state}\\n", end="", flush=True)  # one write per line
''')

#: Creates roles and users through FAB's security manager, in one process (each ``airflow users`` CLI call would
#: start FAB's Flask app again).
FAB_SETUP = textwrap.dedent('''
    import json, sys
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    spec = json.loads(sys.argv[1])
    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        for name, permissions in spec["roles"].items():
            role = sm.find_role(name) or sm.add_role(name)
            for action, resource in permissions:
                sm.add_permission_to_role(role, sm.create_permission(action, resource))
        for username, password, role in spec["users"]:
            made = sm.add_user(username, username, "Tester", f"{username}@example.com", sm.find_role(role),
                               password=password)
            assert made, f"user {username} not created"
        print("FAB users ready", flush=True)
''')


def fab_spec() -> str:
    """Roles and users for :data:`FAB_SETUP`: the reader's role reads one DAG, its runs, task instances, XComs."""
    reads = [("can_read", f"DAG:{S3.dag_id}"), ("can_read", "DAG Runs"), ("can_read", "Task Instances")]
    reads += [("can_read", "XComs"), ("can_read", "Website")]
    spec: dict[str, Any] = {
        "roles": {S3_READER_ROLE: reads},
        "users": [[*ADMIN, "Admin"], [*S3_READER, S3_READER_ROLE]],
    }
    return json.dumps(spec)


def total_cost() -> float:
    return round(sum(g.cost * len(g.prompts) for g in GENERATIONS), 2)
