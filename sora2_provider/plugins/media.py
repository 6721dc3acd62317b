"""The bytes of a stored video, for the browser: the uri a task recorded, checked, then streamed with HTTP ``Range``.

The api-server reads the object through the task's own storage connection (``ObjectStoragePath``: the ``conn_id@``
of an ``s3://``/``gs://``/``abfs://`` uri, or the local disk for ``file://``), one chunk at a time, so a seek in
the player costs one ranged read and memory stays at one chunk per request. No store credential and no store URL
reaches the browser.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sora2_provider.plugins.records import BadIdentity
from sora2_provider.storage import to_object_storage_path

if TYPE_CHECKING:
    from sora2_provider.plugins.records import Generation

CHUNK = 1024 * 1024
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredVideo:
    """An object the api-server may serve: where it is and how big it is."""

    fs: Any
    path: str
    size: int


def verified_uri(generation: Generation) -> str:
    """The XCom uri, once it is shown to be where the task wrote its video: its rendered ``output_path``.

    The XCom can be edited through the REST API; the rendered fields cannot. A uri that differs from the rendered
    ``output_path`` is refused, so no edited XCom makes the api-server read another object with the task's
    connection."""
    uri = generation.uri
    if uri is None:
        why = generation.status_line(datetime.now(timezone.utc))
        raise BadIdentity(404, f"no stored video: {why}")
    rendered = generation.rendered.get("output_path")
    if rendered is None:
        raise BadIdentity(
            400,
            "cannot check the XCom uri: Airflow no longer keeps this task instance's rendered output_path "
            "([core] max_num_rendered_ti_fields_per_task)",
        )
    if not same_location(uri, str(rendered)):
        raise BadIdentity(400, "the XCom uri is not the task's rendered output_path: refusing to serve it")
    return uri


def same_location(uri: str, output_path: str) -> bool:
    """Do the XCom uri and the rendered ``output_path`` name the same object?"""
    return _normal(uri) == _normal(output_path)


def _normal(location: str) -> str:
    text = location.strip()
    return "file://" + text if text.startswith("/") else text


def open_stored(uri: str) -> StoredVideo:
    """The object at ``uri`` through its connection; :class:`BadIdentity` 404 when it is no longer there."""
    try:
        path = to_object_storage_path(uri, "uri")
    except ValueError as err:
        raise BadIdentity(400, str(err)) from None
    try:
        size = int(path.fs.size(path.path))
    except FileNotFoundError:
        raise BadIdentity(404, f"the api-server finds no video at {uri}") from None
    except Exception as err:  # a refused credential, a missing connection, an unreachable store
        log.warning("Reading %s for the Video tab failed: %s", uri, type(err).__name__)
        raise BadIdentity(502, f"the store of {uri} did not answer the api-server ({type(err).__name__})") from None
    return StoredVideo(path.fs, path.path, size)


def read_range(video: StoredVideo, start: int, stop: int) -> Iterator[bytes]:
    """Bytes ``[start, stop)`` of the object, ``CHUNK`` at a time (run by Starlette in its thread pool)."""
    with video.fs.open(video.path, "rb", block_size=CHUNK) as handle:
        handle.seek(start)
        remaining = stop - start
        while remaining > 0:
            data = handle.read(min(CHUNK, remaining))
            if not data:
                return
            remaining -= len(data)
            yield data
