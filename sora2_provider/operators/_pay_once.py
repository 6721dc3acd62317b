"""Never pay twice: resume the job a task instance already paid for, adopt it from Segmind's request history, or
record the intent and submit a new one.

Decided from the job's values and three small callbacks (history lookup, image upload, submit), in the manner of
Airflow's ``ResumableJobMixin.resume_or_submit``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeVar

from sora2_provider.exceptions import Sora2Error
from sora2_provider.models import HistoryRecord, SubmittedJob, VideoRequest
from sora2_provider.operators._failures import call_hook, fail, retryable, translate
from sora2_provider.operators._job_spec import JobSpec
from sora2_provider.state import JobRecord, JobStateStore, utcnow

T = TypeVar("T")
#: How far before a recorded intent the request history is searched (clock skew between worker and Segmind).
HISTORY_SLACK = timedelta(minutes=2)


@dataclass(frozen=True)
class Decision:
    """How this try came to its job: the record (``decision``: ``new_submit``, ``resumed`` or
    ``adopted_from_history``) and, when this try sends the request itself, the request as sent."""

    record: JobRecord
    request: VideoRequest | None = None


def resolve_job(
    job: JobSpec,
    *,
    find_requests: Callable[..., list[HistoryRecord]],
    upload_image: Callable[[str], str],
    submit: Callable[[VideoRequest], SubmittedJob],
) -> Decision:
    """Find the job this task instance already paid for, or submit one (``mode="sync"``: record the intent and
    leave the one v1 call to the caller)."""
    record = job.store.read()
    if record is not None and record.fingerprint != job.fingerprint:
        job.log.warning(
            "The inputs changed since job %s was recorded for this task; it is abandoned (Segmind has no "
            "cancel) and a new job is submitted.",
            record.request_id or "(intent only)",
        )
        record = None
    if record is not None and record.request_id:
        job.log.info("Resuming job %s submitted at %s by an earlier try.", record.request_id, record.submitted_at)
        return Decision(_written(job.store, record.with_decision("resumed")))
    if record is not None:
        adopted = adopt_from_history(job, record, find_requests)
        if adopted is not None:
            return Decision(adopted)
    return submit_new(job, request_as_sent(job, upload_image), submit)


def adopt_from_history(
    job: JobSpec, record: JobRecord, find_requests: Callable[..., list[HistoryRecord]]
) -> JobRecord | None:
    """An intent without a request id: find the job in Segmind's request history, or decide to resubmit."""
    try:
        rows = find_requests(model=record.model, since=record.started_at - HISTORY_SLACK)
    except Sora2Error as err:
        raise retryable(
            f"an earlier try may have paid for a job (intent recorded at {record.intent_at}) but the request "
            f"history cannot be read ({err}); not resubmitting, to avoid paying twice",
            "error",
        ) from None
    matches = [row for row in rows if record.matches(row)]
    if matches:
        row = matches[-1]  # newest first: the oldest match is the first job this intent created
        job.log.warning(
            "Adopted job %s from Segmind's request history (status %s): an earlier try's submit answer "
            "was lost; nothing is resubmitted.",
            row.request_id,
            row.status,
        )
        adopted = record.with_request(row.request_id, row.created_at).with_decision("adopted_from_history")
        return _written(job.store, adopted)
    if job.on_orphaned_intent == "fail":
        raise fail(
            f"an earlier try recorded its intent to submit at {record.intent_at} but no request id, and the "
            f"request history shows no matching job; on_orphaned_intent='fail' refuses to risk paying twice. "
            f"Delete the job record in {job.store.location} to allow a new submit.",
            "error",
        )
    job.log.warning(
        "An earlier try recorded an intent to submit at %s but the request history shows no such job; "
        "submitting now (on_orphaned_intent='resubmit').",
        record.intent_at,
    )
    return None


def request_as_sent(job: JobSpec, upload_image: Callable[[str], str]) -> VideoRequest:
    """The request as sent: a local or object-storage ``input_reference`` is uploaded first."""
    reference = job.reference_to_upload
    if reference is None:
        return job.request
    url = call_hook(upload_image, reference)
    job.log.info("Uploaded the reference image %s to %s.", reference, url)
    return replace(job.request, input_reference=url)


def submit_new(job: JobSpec, request: VideoRequest, submit: Callable[[VideoRequest], SubmittedJob]) -> Decision:
    """Write the intent, then submit (async) or leave the v1 call to the caller (sync)."""
    intent = JobRecord(
        identity=job.identity,
        fingerprint=job.fingerprint,
        intent_at=utcnow().isoformat(),
        model=request.model,
        body=request.to_body(),
        mode=job.mode,
    )
    job.store.write(intent)
    if job.mode == "sync":
        return Decision(intent, request)
    submitted = paid_call(job.store, submit, request)
    record = _written(job.store, intent.with_request(submitted.request_id))
    job.log.info(
        "Submitted %s job %s (%s s, %s), estimated cost %.2f credits.",
        request.model,
        submitted.request_id,
        request.duration,
        request.size,
        request.estimated_cost,
    )
    return Decision(record, request)


def paid_call(store: JobStateStore, method: Callable[..., T], *args: Any) -> T:
    """Call a paid endpoint; when Segmind refused it with a 4xx (401, 406, 410...), no job exists: drop the
    intent record too."""
    try:
        return method(*args)
    except Sora2Error as err:
        if not err.retryable and (400 <= (err.status_code or 0) < 500 or getattr(err, "nothing_sent", False)):
            store.delete()
        raise translate(err) from None


def _written(store: JobStateStore, record: JobRecord) -> JobRecord:
    store.write(record)
    return record
