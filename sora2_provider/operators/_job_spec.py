"""The values one try of ``Sora2GenerateVideoOperator`` knows about its job before talking to Segmind.

The operator binds them once per try; the pay-once decision, the output checks and the waiting work from these
values, never from the operator object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sora2_provider.models import VideoRequest
from sora2_provider.storage import to_object_storage_path

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath
    from airflow.sdk.types import Logger

    from sora2_provider.state import JobStateStore

MODES = ("async", "sync")
ORPHANED_INTENT_POLICIES = ("resubmit", "fail")


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    """One try's job: what to ask for, where it goes, where its record lives and the policies that apply."""

    conn_id: str
    request: VideoRequest  #: validated; ``input_reference`` is None while a path still has to be uploaded
    input_reference: str | None  #: as the user gave it: an http(s) URL, or a path to upload first
    output: ObjectStoragePath
    uri: str
    store: JobStateStore
    identity: str
    fingerprint: str
    mode: str  #: one of :data:`MODES`
    on_orphaned_intent: str  #: one of :data:`ORPHANED_INTENT_POLICIES`
    log: Logger

    @property
    def reference_to_upload(self) -> str | None:
        """The ``input_reference`` to upload before the submit: a local or object-storage path, not a URL."""
        return None if self.input_reference is None or is_url(self.input_reference) else self.input_reference


def check_connection_id(conn_id: Any) -> str:
    if not isinstance(conn_id, str) or not conn_id.strip():
        raise ValueError(f"sora2_conn_id: {conn_id!r} must name a 'sora2' connection")
    return conn_id


def video_request(prompt: Any, model: Any, duration: Any, size: Any, input_reference: Any) -> VideoRequest:
    """Validate through models.py; a path ``input_reference`` must point at an existing image."""
    reference = input_reference
    if reference is not None and not is_url(reference):
        check_image_path(reference)
        reference = None
    return VideoRequest.create(prompt, model=model, duration=duration, size=size, input_reference=reference)


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def check_image_path(value: Any) -> None:
    if isinstance(value, str) and "://" not in value:
        value = "file://" + value if value.startswith("/") else value
    try:
        path = to_object_storage_path(value, "input_reference")
    except ValueError as err:
        raise ValueError(f"{err}; input_reference also takes an http(s) image URL or an absolute path") from None
    if not path.is_file():
        raise ValueError(f"input_reference: {value!s} does not exist; give an http(s) URL or an existing image path")
