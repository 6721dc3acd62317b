"""Operator extra links: the stored video, and Segmind's own output URL (downloadable for 7 days).

Airflow 3 calls ``get_link`` on the worker when the task ends and stores the answer in XCom under
``xcom_key``; the UI shows that stored value. The operator sets the attributes read here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class Sora2VideoLink(BaseOperatorLink):
    """Link to the MP4 where the task stored it (``file://``, ``s3://``...)."""

    name = "Stored video"
    attribute = "stored_video_uri"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return getattr(operator, self.attribute, None) or ""


class Sora2OutputLink(Sora2VideoLink):
    """Link to the video on Segmind's servers, valid for 7 days after generation."""

    name = "Segmind output"
    attribute = "segmind_output_url"
