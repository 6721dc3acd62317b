"""Operator extra links (the stored video's console page, Segmind's output URL) and the Airflow UI address of a
generation task's Video tab.

Airflow 3 calls ``get_link`` on the worker when the task ends and stores the answer in XCom; Airflow 2 calls it in
the webserver on the deserialized operator, so there a link reads the dict the task returned (its XCom).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, quote, unquote, urlencode, urlsplit

from airflow.providers.common.compat.sdk import BaseHook, BaseOperatorLink, conf

from sora2_provider.compat import LINKS_STORED_BY_WORKER, PLUGIN_APPS, PLUGIN_VIEWS, returned_xcom

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, TaskInstanceKey

__all__ = [
    "VIDEO_TAB_ROUTE",
    "Sora2OutputLink",
    "Sora2VideoLink",
    "azure_account",
    "azure_portal_url",
    "browser_url",
    "video_tab_url",
]

_CONSOLES = {
    "s3": "https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={key}",
    "s3a": "https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={key}",
    "gs": "https://console.cloud.google.com/storage/browser/_details/{bucket}/{key}",
    "gcs": "https://console.cloud.google.com/storage/browser/_details/{bucket}/{key}",
}


_AZURE_SCHEMES = {"abfs", "abfss", "adl"}
_AZURE_PORTAL = (
    "https://portal.azure.com/#view/Microsoft_Azure_Storage/BlobPropertiesBladeV2/storageAccountId/{account_id}"
    "/path/{path}/isDeleted~/false/tabToload~/0"
)


def azure_portal_url(subscription_id: str, resource_group: str, account: str, container: str, blob: str) -> str:
    """The Azure portal's page of one blob (its properties blade, from the storage account's resource id)."""
    account_id = (
        f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
        f"/providers/Microsoft.Storage/storageAccounts/{account}"
    )
    return _AZURE_PORTAL.format(account_id=quote(account_id, safe=""), path=quote(f"{container}/{blob}", safe=""))


def azure_account(extras: dict[str, Any], login: str | None = None, host: str | None = None) -> dict[str, str] | None:
    """``subscription_id``, ``resource_group`` and ``account`` from a wasb/adls connection, or None.

    The portal addresses a storage account by its resource id, which no ``abfs://`` URI holds: the connection's
    extras ``subscription_id`` and ``resource_group`` give it; the account name is the extra ``account_name``,
    the ``AccountName`` of the extra ``connection_string``, the login, or the host's first label.
    """
    account = extras.get("account_name") or ""
    if not account:
        fields = dict(p.split("=", 1) for p in str(extras.get("connection_string") or "").split(";") if "=" in p)
        account = fields.get("AccountName", "")
    if not account and login:
        account = login
    if not account and host:
        account = (urlsplit(host).hostname or host).split(".", 1)[0]
    subscription, group = extras.get("subscription_id"), extras.get("resource_group")
    if not (account and subscription and group):
        return None
    return {"subscription_id": str(subscription), "resource_group": str(group), "account": account}


def _azure_browser_url(parts: SplitResult) -> str:
    """``abfs://conn_id@container/blob`` -> the blob's portal page, when the connection names its account."""
    if not parts.username or not parts.hostname:
        return ""
    try:
        conn = BaseHook.get_connection(parts.username)
    except Exception:  # no such connection: no link, never a failed task
        return ""
    found = azure_account(conn.extra_dejson, conn.login, conn.host)
    if found is None:
        return ""
    return azure_portal_url(container=parts.hostname, blob=unquote(parts.path.lstrip("/")), **found)


def browser_url(uri: str | None) -> str:
    """A URL a browser can open for a stored object: http(s) as is, S3/GCS/Azure as their console page, else ''."""
    if not uri:
        return ""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return uri
    if parts.scheme in _AZURE_SCHEMES:
        return _azure_browser_url(parts)
    console = _CONSOLES.get(parts.scheme)
    if console is None or not parts.hostname:
        return ""
    return console.format(bucket=parts.hostname, key=quote(parts.path.lstrip("/")))


#: ``url_route`` of the Video tab: the plugin's external view on each generation task instance.
VIDEO_TAB_ROUTE = "sora2-video"


def video_tab_url(dag_id: str, run_id: str, task_id: str, map_index: int = -1, base_url: str | None = None) -> str:
    """The Airflow UI address of a task instance's Video tab.

    ``base_url`` defaults to ``[api] base_url``; when neither is set, the address starts at ``/`` and opens from
    the Airflow UI itself (a link in a review request does). A mapped task instance adds ``/mapped/<index>``.
    Airflow 3.0 has no plugin views (:data:`~sora2_provider.compat.PLUGIN_VIEWS`): there the address is the page the
    tab would show, the plugin's ``/sora2/video``; Airflow 2 has no plugin: the task instance in its grid view.
    """
    if base_url is None:
        base_url = conf.get("api", "base_url", fallback="") or ""
    base_url = base_url.rstrip("/")
    if not PLUGIN_VIEWS:
        return _without_plugin_views(base_url, dag_id, run_id, task_id, map_index)
    path = f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}"
    if map_index >= 0:
        path += f"/mapped/{map_index}"
    return f"{base_url}{path}/plugin/{VIDEO_TAB_ROUTE}"


def _without_plugin_views(base_url: str, dag_id: str, run_id: str, task_id: str, map_index: int) -> str:
    """The plugin's video page (Airflow 3.0), or the task instance in the grid view (Airflow 2: no plugin)."""
    if PLUGIN_APPS:
        query = urlencode({"dag_id": dag_id, "run_id": run_id, "task_id": task_id, "map_index": map_index})
        return f"{base_url}/sora2/video?{query}"
    grid = {"dag_run_id": run_id, "task_id": task_id} | ({"map_index": map_index} if map_index >= 0 else {})
    return f"{base_url}/dags/{quote(dag_id, safe='')}/grid?{urlencode(grid)}"


class Sora2VideoLink(BaseOperatorLink):
    """Link to the MP4 where the task stored it (the S3, GCS or Azure portal page of the object)."""

    name = "Stored video"
    attribute = "stored_video_uri"
    #: The same value in the XCom dict the task returns (read on Airflow 2, see the module docstring).
    xcom_field = "uri"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        value = getattr(operator, self.attribute, None)
        if value is None and not LINKS_STORED_BY_WORKER:
            returned = returned_xcom(ti_key)
            value = returned.get(self.xcom_field) if isinstance(returned, dict) else None
        return browser_url(value)


class Sora2OutputLink(Sora2VideoLink):
    """Link to the video on Segmind's servers, valid for 7 days after generation."""

    name = "Segmind output"
    attribute = "segmind_output_url"
    xcom_field = "source_url"
