"""Every Airflow name that moved between 3.1, 3.2 and 3.3, in one place.

Most come from ``airflow.providers.common.compat.sdk``, the shim package the Amazon and Google providers use:
on 3.3 it hands out ``airflow.sdk``'s names, on 3.1 the older ``airflow.configuration`` / ``airflow.exceptions``
ones. What it does not cover (whether the running Airflow keeps a task state store) is decided here.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowSensorTimeout,
    AirflowSkipException,
    conf,
)

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "conf",
    "task_state_store",
]


def task_state_store(context: Any) -> Any | None:
    """The task instance's ``task_state_store`` (Airflow 3.3+), or None where Airflow has none."""
    return context.get("task_state_store")
