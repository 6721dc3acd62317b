"""Operator extra links: the stored video, and Segmind's own output URL (downloadable for 7 days).

Airflow 3 calls ``get_link`` on the worker when the task ends and stores the answer in XCom under
``xcom_key``; the UI shows that stored value, but only when a browser can open it (http(s)), so an
object-storage URI becomes its cloud console page. A ``file://`` video has no browser URL: the link
stays empty and the location is in the XCom dict (``uri``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

_CONSOLES = {
    "s3": "https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={key}",
    "s3a": "https://s3.console.aws.amazon.com/s3/object/{bucket}?prefix={key}",
    "gs": "https://console.cloud.google.com/storage/browser/_details/{bucket}/{key}",
    "gcs": "https://console.cloud.google.com/storage/browser/_details/{bucket}/{key}",
}


def browser_url(uri: str | None) -> str:
    """A URL a browser can open for a stored object: http(s) as is, S3/GCS as their console page, else ''."""
    if not uri:
        return ""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return uri
    console = _CONSOLES.get(parts.scheme)
    if console is None or not parts.hostname:
        return ""
    return console.format(bucket=parts.hostname, key=quote(parts.path.lstrip("/")))


class Sora2VideoLink(BaseOperatorLink):
    """Link to the MP4 where the task stored it (the S3 or GCS console page of the object)."""

    name = "Stored video"
    attribute = "stored_video_uri"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return browser_url(getattr(operator, self.attribute, None))


class Sora2OutputLink(Sora2VideoLink):
    """Link to the video on Segmind's servers, valid for 7 days after generation."""

    name = "Segmind output"
    attribute = "segmind_output_url"
