"""How ``Sora2GenerateVideoOperator`` waits for its job on the worker and reads the finished job.

The deferrable path waits in the triggerer (``triggers/``); these are the worker-side counterparts: the polling
loop of ``deferrable=False`` (the same rules as the trigger, through ``JobWatch``), the check a resumed try makes
before deferring, and the result of a job whose event did not carry it. Nothing heavy at top level.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sora2_provider.exceptions import Sora2Error, Sora2JobFailedError, Sora2NotFoundError
from sora2_provider.job_events import JobWatch, result_from_row
from sora2_provider.models import JobResult
from sora2_provider.operators._job import call_hook, retryable, translate

if TYPE_CHECKING:
    from sora2_provider.hooks.sora2 import Sora2Hook

__all__ = ["already_ended", "finished_job", "poll_on_worker"]


def poll_on_worker(
    hook: Sora2Hook,
    request_id: str,
    remaining: timedelta,
    *,
    interval: float,
    stop: threading.Event,
    log: Any,
    limit: str,
    fresh: bool = False,
) -> dict[str, Any]:
    """Poll the job's status every ``interval`` until it ends (the event, as a trigger yields it), ``remaining``
    runs out (``limit`` names it in the error), or ``stop`` is set; both raise a retryable error: the next try
    resumes the job. A job this try just submitted cannot be done yet (``fresh``): the first status call waits one
    interval."""
    watch = JobWatch(request_id)
    deadline = time.monotonic() + remaining.total_seconds()
    if fresh and stop.wait(interval):
        raise retryable(f"polling of job {request_id} was stopped; the next try resumes it")
    while time.monotonic() < deadline:
        previous = watch.last_status
        try:
            status = hook.get_status(request_id)
        except Sora2Error as err:
            log.warning("Status of %s unavailable (%s); polling again", request_id, err)
            event = watch.on_error(err)
        else:
            if status.status != previous:
                log.info("Job %s is %s (%.0f s)", request_id, status.status, watch.elapsed)
            event = watch.on_status(status)
        if event is not None:
            return event
        if stop.wait(interval):
            raise retryable(f"polling of job {request_id} was stopped; the next try resumes it")
    raise retryable(f"job {request_id} did not finish within {limit}")


def already_ended(hook: Sora2Hook, request_id: str) -> bool:
    """Has a job an earlier try paid for already ended? Then it is collected at once, without deferring (a trigger
    that fires at once races the scheduler's handling of the deferral)."""
    try:
        return hook.get_status(request_id).is_terminal
    except Sora2NotFoundError:
        return True  # the v2 record expired: the request history has the result
    except Sora2Error:
        return False  # let the trigger ride it out


def finished_job(hook: Sora2Hook, request_id: str, log: Any) -> JobResult:
    """The finished job from its v2 record, or from the request history once that record expired."""
    try:
        return hook.get_result(request_id)
    except Sora2JobFailedError as err:
        raise retryable(f"Sora 2 job {request_id} FAILED (not billed): {err.segmind_message or err}") from None
    except Sora2NotFoundError:
        log.info("The v2 record of %s expired; reading its output from the request history.", request_id)
    except Sora2Error as err:
        raise translate(err) from None
    row = call_hook(hook.get_request_record, request_id)
    if row.status == "FAILED":
        raise retryable(f"Sora 2 job {request_id} FAILED (not billed): {row.error}")
    return result_from_row(row)
