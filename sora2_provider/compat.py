"""What differs between the Airflow lines this provider serves (2.11, 3.0, 3.1, 3.2, 3.3), decided in one place.

Names come from ``airflow.providers.common.compat.sdk`` (``airflow.sdk`` on 3.x, the 2.x homes on 2.11); import
them from there. This module holds only what that package does not cover, each decided by probing what the running
Airflow has, never by its version number: async connection lookup (3.1+), extra links stored by the worker (3.0+),
plugin FastAPI apps (3.0+) and external views (3.1+), the task state store (3.3+).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    AirflowPlugin,
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseHook,
    BaseOperatorLink,
    conf,
)
from asgiref.sync import sync_to_async

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection, TaskInstanceKey

__all__ = [
    "ASYNC_CONNECTION_LOOKUP",
    "LINKS_STORED_BY_WORKER",
    "PLUGIN_APPS",
    "PLUGIN_VIEWS",
    "AirflowException",
    "AirflowFailException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "aget_connection",
    "arun_airflow_call",
    "conf",
    "returned_xcom",
    "task_state_store",
]

T = TypeVar("T")

#: 3.1+: ``BaseHook.aget_connection``; its triggerer's supervisor comms must stay on the event loop's thread.
ASYNC_CONNECTION_LOOKUP: bool = hasattr(BaseHook, "aget_connection")
#: 3.0+: the worker stores each extra link's URL in XCom when the task ends; 2.x calls ``get_link`` on the
#: deserialized operator in the webserver, which holds none of what the task set.
LINKS_STORED_BY_WORKER: bool = hasattr(BaseOperatorLink, "xcom_key")
#: 3.0+: plugins may serve FastAPI apps (the ``/sora2`` pages); 2.x has no such server.
PLUGIN_APPS: bool = hasattr(AirflowPlugin, "fastapi_apps")
#: 3.1+: plugins may add views to the UI (the Video tab, the Sora 2 page in the navigation).
PLUGIN_VIEWS: bool = hasattr(AirflowPlugin, "external_views")


async def aget_connection(conn_id: str) -> Connection:
    """Look a connection up from a trigger: the async API on 3.1+, else the sync one inside ``sync_to_async``
    (3.0's triggerer refuses supervisor calls made from its event loop's thread; 2.11 reads the DB)."""
    if ASYNC_CONNECTION_LOOKUP:
        return await BaseHook.aget_connection(conn_id)
    lookup: Callable[[str], Connection] = BaseHook.get_connection
    return await sync_to_async(lookup)(conn_id)


async def arun_airflow_call(func: Callable[[], T]) -> T:
    """Run, from a trigger, a sync call that talks to Airflow (reading connection extras, registering secret masks)
    where this Airflow's triggerer wants it: on the event loop's thread on 3.1+ (its supervisor comms are not
    thread-safe: a call from another thread takes the whole triggerer down), inside ``sync_to_async`` before."""
    if ASYNC_CONNECTION_LOOKUP:
        return func()
    return await sync_to_async(func)()


def returned_xcom(ti_key: TaskInstanceKey) -> Any:
    """What the task instance returned (its ``return_value`` XCom), or None; for extra links on 2.x."""
    from airflow.providers.common.compat.sdk import XCom  # lazy: version probe (only Airflow 2 reads links here)

    return XCom.get_value(ti_key=ti_key, key="return_value")


def task_state_store(context: Any) -> Any | None:
    """The task instance's ``task_state_store`` (Airflow 3.3+), or None where Airflow has none."""
    return context.get("task_state_store")
