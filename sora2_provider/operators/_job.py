"""What one try of ``Sora2GenerateVideoOperator`` knows about its job, and the checks and error mapping it uses.

Kept apart from the operator so that module reads as the operator alone. Imported at DAG parse (the argument
checks run in ``__init__``): nothing heavy at top level.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

LOCAL_EXECUTORS = ("LocalExecutor", "SequentialExecutor", "DebugExecutor")
#: XCom key of the one-line reason a try failed (the Video tab of the UI plugin shows it).
ERROR_XCOM_KEY = "sora2_error"

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.models import VideoRequest
    from sora2_provider.operators.sora2 import Sora2GenerateVideoOperator
    from sora2_provider.state import JobStateStore


@dataclass(kw_only=True, eq=False)
class Job:
    """Everything one try knows about its job before talking to Segmind."""

    operator: Sora2GenerateVideoOperator
    request: VideoRequest
    output: ObjectStoragePath
    uri: str
    store: JobStateStore
    identity: str
    fingerprint: str
    existing: dict[str, Any] | None = None
    sent_request: VideoRequest | None = None

    @staticmethod
    def check_connection_id(conn_id: Any) -> None:
        if not isinstance(conn_id, str) or not conn_id.strip():
            raise ValueError(f"sora2_conn_id: {conn_id!r} must name a 'sora2' connection")

    def hook(self) -> Sora2Hook:
        """The hook, with its connection checked (exists, has a key, sane host) before any network call."""
        from sora2_provider.exceptions import Sora2Error
        from sora2_provider.hooks.sora2 import Sora2Hook

        hook = Sora2Hook(sora2_conn_id=self.operator.sora2_conn_id)
        hook.max_spend_per_day = self.operator.max_spend_per_day
        try:
            hook.get_conn()
        except Sora2Error as err:
            raise fail(str(err)) from None
        return hook

    def resolved_request(self, hook: Sora2Hook) -> VideoRequest:
        """The request as sent: a local or object-storage ``input_reference`` is uploaded first."""
        from dataclasses import replace

        reference = self.operator.input_reference
        if reference is None or is_url(reference):
            return self.request
        url = call_hook(hook.upload_image, reference)
        self.operator.log.info("Uploaded the reference image %s to %s.", reference, url)
        return replace(self.request, input_reference=url)

    def describe(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "request_id": None,
            "model": self.request.model,
            "duration": self.request.duration,
            "size": self.request.size,
            "prompt": self.request.prompt,
            "cost": None,
            "remaining_credits": None,
            "source_url": None,
            "generation_seconds": None,
            "resumed_from": None,
        }


def video_request(prompt: Any, model: Any, duration: Any, size: Any, input_reference: Any) -> VideoRequest:
    """Validate through models.py; a path ``input_reference`` must point at an existing image."""
    from sora2_provider.models import VideoRequest

    reference = input_reference
    if reference is not None and not is_url(reference):
        check_image_path(reference)
        reference = None
    return VideoRequest.create(prompt, model=model, duration=duration, size=size, input_reference=reference)


def is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def check_image_path(value: Any) -> None:
    from sora2_provider.storage import to_object_storage_path

    if isinstance(value, str) and "://" not in value:
        value = "file://" + value if value.startswith("/") else value
    try:
        path = to_object_storage_path(value, "input_reference")
    except ValueError as err:
        raise ValueError(f"{err}; input_reference also takes an http(s) image URL or an absolute path") from None
    if not path.is_file():
        raise ValueError(f"input_reference: {value!s} does not exist; give an http(s) URL or an existing image path")


def output_uri(output_path: Any) -> str:
    from airflow.sdk import ObjectStoragePath

    if isinstance(output_path, ObjectStoragePath):
        conn = f"{output_path.conn_id}@" if output_path.conn_id else ""
        prefix = f"{output_path.protocol}://{conn}"
        return prefix + output_path.path.lstrip("/") if output_path.protocol != "file" else prefix + output_path.path
    return str(output_path)


def holds_noted_video(path: ObjectStoragePath, note: dict[str, Any]) -> bool:
    """Is the video an earlier try noted still at ``path``: same size, an MP4, and the same sha256 when noted?"""
    try:
        if path.stat().st_size != note.get("bytes"):
            return False
    except FileNotFoundError:
        return False
    from sora2_provider.storage import inspect_video

    found = inspect_video(path)
    noted_sha256 = (note.get("xcom") or {}).get("sha256")
    return found is not None and (noted_sha256 is None or found[1] == noted_sha256)


def job_state_store(
    context: Any, output: ObjectStoragePath, identity: str, state_root: ObjectStoragePath | None
) -> JobStateStore:
    """Where this task instance's records live: under ``state_root`` when the user named one, else in Airflow's
    task state store (3.3+), else beside the output (older Airflow)."""
    from sora2_provider.compat import task_state_store
    from sora2_provider.state import ObjectStateRecords, TaskStateRecords

    if state_root is not None:
        return ObjectStateRecords.under(state_root, identity, output)
    accessor = task_state_store(context)
    if accessor is not None:
        return TaskStateRecords(accessor)
    return ObjectStateRecords.beside(output, identity)


def connection_state_root(conn_id: str) -> str | None:
    """The ``state_root`` extra of the ``sora2`` connection, if set (read without any network call)."""
    from sora2_provider.exceptions import Sora2Error
    from sora2_provider.hooks.sora2 import Sora2Hook

    try:
        root = Sora2Hook(sora2_conn_id=conn_id).extras.get("state_root")
    except Sora2Error as err:
        raise ValueError(str(err)) from None
    return str(root).strip() or None if root else None


def warn_if_local_file_on_remote_workers(operator: Sora2GenerateVideoOperator, output: ObjectStoragePath) -> None:
    """A ``file://`` output lands on the disk of whichever worker ran the try: say so once when the executor
    runs tasks on other hosts."""
    from sora2_provider.compat import conf

    executors = operator.executor or conf.get("core", "executor", fallback="LocalExecutor")
    names = [name.strip().split(".")[-1].split(":")[-1] for name in str(executors).split(",") if name.strip()]
    if output.protocol in ("file", "local") and any(name not in LOCAL_EXECUTORS for name in names):
        operator.log.warning(
            "output_path %s is a local file, but the executor (%s) runs tasks on other hosts: the video lands on "
            "this worker's disk only, and downstream tasks elsewhere will not see it. Use shared object storage "
            "(s3://, gs://, ...) for output_path.",
            output,
            ", ".join(names),
        )


@contextmanager
def failure_noted(context: Any) -> Iterator[None]:
    """Leave why this try failed, in one line, in the XCom ``sora2_error``; a deferral is no failure."""
    try:
        yield
    except Exception as err:
        _note_failure(context, err)
        raise


def _note_failure(context: Any, err: Exception) -> None:
    from sora2_provider.compat import AirflowException, AirflowSkipException

    if isinstance(err, AirflowSkipException):
        return
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    if not isinstance(err, AirflowException):
        line = f"{type(err).__name__}: {line}" if line else type(err).__name__
    with suppress(Exception):  # noting the reason must never replace the task's own error
        context["ti"].xcom_push(key=ERROR_XCOM_KEY, value=line[:1000])


def call_hook(method: Any, *args: Any) -> Any:
    """Call the hook, turning errors a retry cannot fix into ``AirflowFailException``."""
    from sora2_provider.exceptions import Sora2Error

    try:
        return method(*args)
    except Sora2Error as err:
        raise translate(err) from None


def translate(err: Exception) -> Exception:
    """A retry can help a transient error, a FAILED job or an uncertain submit; nothing else."""
    if getattr(err, "retryable", False):
        metrics().job_failed(metrics().failure_reason(str(err)))
        return err
    return fail(str(err))


def fail(message: str) -> Exception:
    """The error that ends the task without a retry (counted in ``sora2.jobs.failed.<reason>``)."""
    from sora2_provider.compat import AirflowFailException

    metrics().job_failed(metrics().failure_reason(message))
    return AirflowFailException(message)


def retryable(message: str) -> Exception:
    """The error a retry may cure (counted in ``sora2.jobs.failed.<reason>``)."""
    from sora2_provider.compat import AirflowException

    metrics().job_failed(metrics().failure_reason(message))
    return AirflowException(message)


def metrics() -> Any:
    """:mod:`sora2_provider.metrics`, imported on first use (never at DAG parse)."""
    from sora2_provider import metrics as module

    return module


def lineage() -> Any:
    """:mod:`sora2_provider.lineage` (needs the OpenLineage provider), imported only when its provider asks."""
    from sora2_provider import lineage as module

    return module


def one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")
    return value


def positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name}: {value!r} must be a positive number of seconds")
    return float(value)


def non_negative(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name}: {value!r} must be a number of credits >= 0")
    return float(value)


def as_timedelta(name: str, value: Any) -> timedelta:
    seconds = value.total_seconds() if isinstance(value, timedelta) else positive(name, value)
    if seconds <= 0:
        raise ValueError(f"{name}: {value!r} must be positive")
    return timedelta(seconds=seconds)
