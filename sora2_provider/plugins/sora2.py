"""The ``sora2`` Airflow plugin: a "Video" tab on every task instance page and a "Sora 2" page in the navigation.

Airflow imports this module wherever it loads plugins (the api-server, but also the scheduler, the dag-processor
and every task process), so it holds the plugin's declaration only. The FastAPI app behind both views is built
by :class:`Sora2App` on the first request the api-server routes to it (:mod:`sora2_provider.plugins.app`); no
other process imports it.

Registered twice, as Airflow's own providers do: the ``airflow.plugins`` entry point (what loads it with the default
``[core] lazy_discover_providers = True``) and the provider metadata's ``plugins`` list (read when providers are
discovered eagerly; Airflow then skips the second registration with a warning).

Where Airflow has the parts (:mod:`sora2_provider.compat`): 3.1+ the tab, the page and the app; 3.0 the app only (its
pages open by URL and from the extra link); Airflow 2 serves no FastAPI app, so there is no plugin at all: the name
``Sora2Plugin`` is None, which Airflow's plugin loader skips without an error.
"""

from __future__ import annotations

from typing import Any

from airflow.providers.common.compat.sdk import AirflowPlugin

# The Video tab's address in the UI, ``/dags/{dag}/runs/{run}/tasks/{task}[/mapped/{index}]/plugin/sora2-video``, is
# also made by links.video_tab_url (review requests link to it): one route name for both.
from sora2_provider.compat import PLUGIN_APPS, PLUGIN_VIEWS
from sora2_provider.links import VIDEO_TAB_ROUTE

__all__ = ["Sora2App", "Sora2Plugin"]

URL_PREFIX = "/sora2"
PAGE_ROUTE = "sora2"
#: Relative to the UI's ``<base href>``, so a deployment under a sub-path works. The UI fills the placeholders of a
#: ``task_instance`` view; ``{MAP_INDEX}`` stays as is for an unmapped task (the app reads it as -1).
VIDEO_TAB_HREF = "sora2/video?dag_id={DAG_ID}&run_id={RUN_ID}&task_id={TASK_ID}&map_index={MAP_INDEX}"


class Sora2App:
    """An ASGI app that builds the real FastAPI app on its first request, in the api-server."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            from sora2_provider.plugins.app import build_app  # lazy: the FastAPI app, api-server only

            self._app = build_app()
        await self._app(scope, receive, send)


class Sora2Plugin(AirflowPlugin):
    """The Video tab (``task_instance`` view) and the Sora 2 page (``nav`` view), served under ``/sora2``."""

    name = "sora2"
    fastapi_apps = [{"app": Sora2App(), "url_prefix": URL_PREFIX, "name": "Sora 2 videos"}]
    external_views = [
        {
            "name": "Video",
            "href": VIDEO_TAB_HREF,
            "destination": "task_instance",
            "url_route": VIDEO_TAB_ROUTE,
            "icon": "sora2/icon.svg",
        },
        {"name": "Sora 2", "href": "sora2/", "destination": "nav", "url_route": PAGE_ROUTE, "icon": "sora2/icon.svg"},
    ] if PLUGIN_VIEWS else []


if not PLUGIN_APPS:
    Sora2Plugin = None  # type: ignore[misc,assignment]
