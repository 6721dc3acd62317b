"""How ``Sora2GenerateVideoOperator`` waits for its job on the worker and reads the finished job.

The deferrable path waits in the triggerer (``triggers/``); these are the worker-side counterparts: the polling
loop of ``deferrable=False`` (the same rules as the trigger, through ``JobWatch``), the check a resumed try makes
before deferring, and the reads after the wait (the result, the download). Every one of them rides out an outage of
Segmind (``job_events.Outage``) until the try's deadline, backing off while it lasts; the submit too, through the
request history, so a lost submit answer is adopted rather than paid twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from sora2_provider.exceptions import Sora2Error, Sora2JobFailedError, Sora2NotFoundError, Sora2SubmitUncertainError
from sora2_provider.job_events import JobWatch, Outage, OutagePolicy, is_outage, result_from_row
from sora2_provider.models import DownloadResult, JobResult
from sora2_provider.operators._failures import fail, retryable, translate
from sora2_provider.storage import atomic_writer

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import ObjectStoragePath

    from sora2_provider.hooks.sora2 import Sora2Hook

__all__ = [
    "already_ended",
    "deadline_after",
    "download_video",
    "finished_job",
    "outage_of",
    "poll_on_worker",
    "resolve_through_outage",
    "through_outage",
]

T = TypeVar("T")


def outage_of(hook: Sora2Hook, what: str, log: Any) -> Outage:
    """An outage tracker for ``what`` under the connection's ``max_outage`` and ``outage_backoff_max`` extras."""
    try:
        return Outage(what, OutagePolicy.from_extras(hook.extras), logger=log)
    except Sora2Error as err:
        raise fail(str(err), "error") from None


def deadline_after(started_at: datetime, timeout: timedelta) -> float:
    """The monotonic time at which ``timeout`` counted from ``started_at`` (aware UTC) ends."""
    left = started_at + timeout - datetime.now(timezone.utc)
    return time.monotonic() + max(0.0, left.total_seconds())


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
    interval. During an outage the calls back off (see ``job_events.Outage``)."""
    watch = JobWatch(request_id, outage_of(hook, f"job {request_id}", log))
    deadline = time.monotonic() + remaining.total_seconds()
    if fresh:
        _pause(stop, interval, request_id)
    while time.monotonic() < deadline:
        event = _poll_once(hook, watch, log)
        if event is not None:
            return event
        _pause(stop, min(watch.outage.delay(interval), max(0.0, deadline - time.monotonic())), request_id)
    raise retryable(f"job {request_id} did not finish within {limit}", "timeout")


def _poll_once(hook: Sora2Hook, watch: JobWatch, log: Any) -> dict[str, Any] | None:
    previous = watch.last_status
    try:
        with watch.outage.single_attempts(hook):
            status = hook.get_status(watch.request_id)
    except Sora2Error as err:
        if is_outage(err):
            watch.outage.failed(err)
        else:
            log.warning("Status of %s unavailable (%s)", watch.request_id, err)
        return watch.on_error(err)
    watch.outage.answered()
    if status.status != previous:
        log.info("Job %s is %s (%.0f s)", watch.request_id, status.status, watch.elapsed)
    return watch.on_status(status)


def _pause(stop: threading.Event, seconds: float, request_id: str) -> None:
    if stop.wait(seconds):
        raise retryable(f"polling of job {request_id} was stopped; the next try resumes it", "error")


def through_outage(
    call: Callable[[], T],
    *,
    hook: Sora2Hook,
    outage: Outage,
    until: float,
    interval: float,
    stop: threading.Event | None = None,
    probe: Callable[[], object] | None = None,
    uncertain_too: bool = False,
) -> T:
    """``call()``, repeated while it fails with an outage (``is_outage``; with ``uncertain_too`` also an uncertain
    submit) until it answers, ``until`` (monotonic) passes or the connection's ``max_outage`` is reached; then the
    last error is raised. Between tries it pauses as :meth:`Outage.delay` says; with ``probe`` (a cheap read) it
    first waits for that to answer, so ``call`` runs again only once Segmind is back."""
    while True:
        try:
            with outage.single_attempts(hook):
                answer = call()
        except Sora2Error as err:
            if not (is_outage(err) or (uncertain_too and isinstance(err, Sora2SubmitUncertainError))):
                raise
            outage.failed(err)
            _wait_for_answer(hook, outage, err, until, interval, stop, probe)
            continue
        outage.answered()
        return answer


def _wait_for_answer(
    hook: Sora2Hook,
    outage: Outage,
    err: Sora2Error,
    until: float,
    interval: float,
    stop: threading.Event | None,
    probe: Callable[[], object] | None,
) -> None:
    """Pause through the outage: until ``probe`` answers (without one: one pause), or give up with ``err``."""
    while True:
        if outage.exhausted:
            raise retryable(outage.gave_up(err), "error")
        delay = outage.delay(interval)
        if time.monotonic() + delay > until:
            raise err
        if stop is not None and stop.wait(delay):
            raise retryable(f"stopped while waiting for Segmind: {err}", "error")
        if stop is None:
            time.sleep(delay)
        if probe is None:
            return
        try:
            with outage.single_attempts(hook):
                probe()
            return
        except Sora2Error as probe_err:
            if not is_outage(probe_err):
                raise
            outage.failed(probe_err)
            err = probe_err


def already_ended(hook: Sora2Hook, request_id: str) -> bool:
    """Has a job an earlier try paid for already ended? Then it is collected at once, without deferring (a trigger
    that fires at once races the scheduler's handling of the deferral)."""
    try:
        return hook.get_status(request_id).is_terminal
    except Sora2NotFoundError:
        return True  # the v2 record expired: the request history has the result
    except Sora2Error:
        return False  # let the trigger ride it out


def finished_job(hook: Sora2Hook, request_id: str, log: Any, *, until: float, interval: float) -> JobResult:
    """The finished job from its v2 record, or from the request history once that record expired; both reads
    ride out an outage until ``until``."""
    outage = outage_of(hook, f"the result of {request_id}", log)
    try:
        return through_outage(
            lambda: hook.get_result(request_id), hook=hook, outage=outage, until=until, interval=interval
        )
    except Sora2JobFailedError as err:
        message = f"Sora 2 job {request_id} FAILED (not billed): {err.segmind_message or err}"
        raise retryable(message, "job_failed") from None
    except Sora2NotFoundError:
        log.info("The v2 record of %s expired; reading its output from the request history.", request_id)
    except Sora2Error as err:
        raise translate(err) from None
    try:
        row = through_outage(
            lambda: hook.get_request_record(request_id), hook=hook, outage=outage, until=until, interval=interval
        )
    except Sora2Error as err:
        raise translate(err) from None
    if row.status == "FAILED":
        raise retryable(f"Sora 2 job {request_id} FAILED (not billed): {row.error}", "job_failed")
    return result_from_row(row)


def download_video(
    hook: Sora2Hook, url: str, output: ObjectStoragePath, *, until: float, interval: float, log: Any
) -> DownloadResult:
    """Stream the finished video into ``output`` (whole, or not at all), riding out an outage of the video host
    until ``until``; each attempt writes anew."""

    def attempt() -> DownloadResult:
        with atomic_writer(output) as handle:
            return hook.download(url, handle)

    outage = outage_of(hook, f"the download of {url}", log)
    try:
        return through_outage(attempt, hook=hook, outage=outage, until=until, interval=interval)
    except Sora2Error as err:
        raise translate(err) from None


def resolve_through_outage(
    hook: Sora2Hook, resolve: Callable[[], T], *, until: float, interval: float, stop: threading.Event, log: Any
) -> T:
    """``resolve()`` (resume, adopt or submit), repeated through an outage until ``until``. A submit whose answer
    was lost (an uncertain submit) leaves its intent recorded; once the request history answers again, the next
    ``resolve()`` adopts the job from it, or submits when the history shows none: nothing is paid twice."""

    def history_answers() -> object:
        return hook.find_requests(since=datetime.now(timezone.utc), per_page=1, max_pages=1)

    outage = outage_of(hook, "the submit", log)
    return through_outage(
        resolve,
        hook=hook,
        outage=outage,
        until=until,
        interval=interval,
        stop=stop,
        probe=history_answers,
        uncertain_too=True,
    )


