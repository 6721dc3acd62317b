"""Where a try's video and job records go, and whether a verified video from the same inputs is already there."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import ObjectStoragePath

from sora2_provider.compat import conf, task_state_store
from sora2_provider.models import DownloadResult
from sora2_provider.operators._job_spec import JobSpec
from sora2_provider.state import JobStateStore, ObjectStateRecords, TaskStateRecords
from sora2_provider.storage import inspect_video, to_object_storage_path
from sora2_provider.xcom import video_result

if TYPE_CHECKING:
    from airflow.sdk.types import Logger

LOCAL_EXECUTORS = ("LocalExecutor", "SequentialExecutor", "DebugExecutor")


def output_uri(output_path: Any) -> str:
    """The output as the user reads it in XCom and logs: ``s3://conn@bucket/key``, ``file:///abs/path``."""
    if isinstance(output_path, ObjectStoragePath):
        conn = f"{output_path.conn_id}@" if output_path.conn_id else ""
        prefix = f"{output_path.protocol}://{conn}"
        return prefix + output_path.path.lstrip("/") if output_path.protocol != "file" else prefix + output_path.path
    return str(output_path)


def state_root(state_path: Any, connection_extras: dict[str, Any]) -> ObjectStoragePath | None:
    """Where the job records go when the user names a place: ``state_path``, else the connection's
    ``state_root`` extra; None leaves the choice to :func:`job_state_store`."""
    if state_path is not None:
        return to_object_storage_path(state_path, "state_path")
    root = str(connection_extras.get("state_root") or "").strip()
    return to_object_storage_path(root, "state_root") if root else None


def job_state_store(
    context: Any, output: ObjectStoragePath, identity: str, root: ObjectStoragePath | None
) -> JobStateStore:
    """Where this task instance's records live: under ``root`` when the user named one, else in Airflow's
    task state store (3.3+), else beside the output (older Airflow)."""
    if root is not None:
        return ObjectStateRecords.under(root, identity, output)
    accessor = task_state_store(context)
    if accessor is not None:
        return TaskStateRecords(accessor)
    return ObjectStateRecords.beside(output, identity)


def existing_output(job: JobSpec) -> dict[str, Any] | None:
    """The stored result when a complete video made from the same inputs is already at the output."""
    meta = job.store.read_meta()
    if meta and meta.get("fingerprint") != job.fingerprint:
        job.log.info("The video at %s was made from other inputs; generating a new one.", job.uri)
        return None
    if meta:
        return {**meta["xcom"], "decision": "existing_output"} if holds_noted_video(job.output, meta) else None
    found = inspect_video(job.output)
    if found is None:
        return None
    stored = DownloadResult(bytes=found[0], sha256=found[1], content_type="video/mp4")
    return video_result(job.uri, job.request, stored, decision="existing_output")


def holds_noted_video(path: ObjectStoragePath, note: dict[str, Any]) -> bool:
    """Is the video an earlier try noted still at ``path``: same size, an MP4, and the same sha256 when noted?"""
    try:
        if path.stat().st_size != note.get("bytes"):
            return False
    except FileNotFoundError:
        return False
    found = inspect_video(path)
    noted_sha256 = (note.get("xcom") or {}).get("sha256")
    return found is not None and (noted_sha256 is None or found[1] == noted_sha256)


def warn_if_local_file_on_remote_workers(task_executor: str | None, output: ObjectStoragePath, log: Logger) -> None:
    """A ``file://`` output lands on the disk of whichever worker ran the try: say so once when the executor
    (the task's, else ``[core] executor``) runs tasks on other hosts."""
    executors = task_executor or conf.get("core", "executor", fallback="LocalExecutor")
    names = [name.strip().split(".")[-1].split(":")[-1] for name in str(executors).split(",") if name.strip()]
    if output.protocol in ("file", "local") and any(name not in LOCAL_EXECUTORS for name in names):
        log.warning(
            "output_path %s is a local file, but the executor (%s) runs tasks on other hosts: the video lands on "
            "this worker's disk only, and downstream tasks elsewhere will not see it. Use shared object storage "
            "(s3://, gs://, ...) for output_path.",
            output,
            ", ".join(names),
        )
