"""Never pay twice: find the job a task instance already paid for, or record the intent and submit one.

The decision a try takes before any paid call, in order: the recorded job (same inputs) is resumed; an intent
without a request id is looked up in Segmind's request history and adopted; otherwise a new job is submitted after
its intent is written, so a try that dies mid-submit leaves a trace the next try can follow.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sora2_provider.operators._job import fail, retryable, translate

if TYPE_CHECKING:
    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.operators._job import Job
    from sora2_provider.state import JobRecord


def resolve_job(hook: Sora2Hook, job: Job) -> JobRecord:
    """Find the job this task instance already paid for, or submit one; the record says which."""
    log = job.operator.log
    record = job.store.read()
    if record is not None and record.fingerprint != job.fingerprint:
        log.warning(
            "The inputs changed since job %s was recorded for this task; it is abandoned (Segmind has no "
            "cancel) and a new job is submitted.",
            record.request_id or "(intent only)",
        )
        record = None
    if record is not None and record.request_id:
        log.info("Resuming job %s submitted at %s by an earlier try.", record.request_id, record.submitted_at)
        record = record.with_decision("resumed")
        job.store.write(record)
        return record
    if record is not None:
        adopted = adopt_from_history(hook, job, record)
        if adopted is not None:
            return adopted
    return submit(hook, job)


def adopt_from_history(hook: Sora2Hook, job: Job, record: JobRecord) -> JobRecord | None:
    """An intent without a request id: find the job in Segmind's request history, or decide to resubmit."""
    from sora2_provider.exceptions import Sora2Error

    log = job.operator.log
    since = record.started_at - timedelta(minutes=2)
    try:
        rows = hook.find_requests(model=record.model, since=since)
    except Sora2Error as err:
        raise retryable(
            f"an earlier try may have paid for a job (intent recorded at {record.intent_at}) but the request "
            f"history cannot be read ({err}); not resubmitting, to avoid paying twice"
        ) from None
    matches = [row for row in rows if record.matches(row)]
    if matches:
        row = matches[-1]  # newest first: the oldest match is the first job this intent created
        log.warning(
            "Adopted job %s from Segmind's request history (status %s): an earlier try's submit answer "
            "was lost; nothing is resubmitted.",
            row.request_id,
            row.status,
        )
        adopted = record.with_request(row.request_id, row.created_at).with_decision("adopted_from_history")
        job.store.write(adopted)
        return adopted
    if job.operator.on_orphaned_intent == "fail":
        raise fail(
            f"an earlier try recorded its intent to submit at {record.intent_at} but no request id, and the "
            f"request history shows no matching job; on_orphaned_intent='fail' refuses to risk paying twice. "
            f"Delete the job record in {job.store.location} to allow a new submit."
        )
    log.warning(
        "An earlier try recorded an intent to submit at %s but the request history shows no such job; "
        "submitting now (on_orphaned_intent='resubmit').",
        record.intent_at,
    )
    return None


def submit(hook: Sora2Hook, job: Job) -> JobRecord:
    """Write the intent, then submit (async) or leave the v1 call to the operator's sync path."""
    from sora2_provider.state import JobRecord, utcnow

    mode = job.operator.mode
    request = job.resolved_request(hook)
    record = JobRecord(
        identity=job.identity,
        fingerprint=job.fingerprint,
        intent_at=utcnow().isoformat(),
        model=request.model,
        body=request.to_body(),
        mode=mode,
    )
    job.store.write(record)
    job.sent_request = request
    if mode == "sync":
        return record
    submitted = paid_call(job, hook.submit, request)
    record = record.with_request(submitted.request_id)
    job.store.write(record)
    job.operator.log.info(
        "Submitted %s job %s (%s s, %s), estimated cost %.2f credits.",
        request.model,
        submitted.request_id,
        request.duration,
        request.size,
        request.estimated_cost,
    )
    return record


def paid_call(job: Job, method: Any, *args: Any) -> Any:
    """Call a paid endpoint; when Segmind refused it with a 4xx (401, 406, 410...), no job exists: drop the
    intent record too."""
    from sora2_provider.exceptions import Sora2Error

    try:
        return method(*args)
    except Sora2Error as err:
        if not err.retryable and (400 <= (err.status_code or 0) < 500 or getattr(err, "nothing_sent", False)):
            job.store.delete()
        raise translate(err) from None
