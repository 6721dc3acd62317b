"""How the operator ends a try: an error a retry may cure or one it cannot, counted by reason, and the one-line
reason left in XCom for the UI."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from sora2_provider import metrics
from sora2_provider.compat import AirflowException, AirflowFailException, AirflowSkipException
from sora2_provider.exceptions import Sora2Error, Sora2JobFailedError
from sora2_provider.spend import Sora2SpendCapError
from sora2_provider.xcom import ERROR_XCOM_KEY

T = TypeVar("T")


def fail(message: str, reason: str) -> Exception:
    """The error that ends the task without a retry (counted in ``sora2.jobs.failed.<reason>``)."""
    metrics.job_failed(reason)
    return AirflowFailException(message)


def retryable(message: str, reason: str) -> Exception:
    """The error a retry may cure (counted in ``sora2.jobs.failed.<reason>``)."""
    metrics.job_failed(reason)
    return AirflowException(message)


def reason_of(err: Sora2Error) -> str:
    """The metrics reason of a hook error: the spend cap, a FAILED job, a refused request (4xx), or ``error``."""
    if isinstance(err, Sora2SpendCapError):
        return "spend_cap"
    if isinstance(err, Sora2JobFailedError):
        return "job_failed"
    if 400 <= (err.status_code or 0) < 500:
        return "rejected"
    return "error"


def translate(err: Sora2Error) -> Exception:
    """A retry can help a transient error, a FAILED job or an uncertain submit; nothing else."""
    if err.retryable:
        metrics.job_failed(reason_of(err))
        return err
    return fail(str(err), reason_of(err))


def call_hook(method: Callable[..., T], *args: Any) -> T:
    """Call the hook, turning errors a retry cannot fix into ``AirflowFailException``."""
    try:
        return method(*args)
    except Sora2Error as err:
        raise translate(err) from None


@contextmanager
def failure_noted(context: Any) -> Iterator[None]:
    """Leave why this try failed, in one line, in the XCom ``sora2_error``; a deferral is no failure."""
    try:
        yield
    except Exception as err:
        _note_failure(context, err)
        raise


def _note_failure(context: Any, err: Exception) -> None:
    if isinstance(err, AirflowSkipException):
        return
    text = str(err).strip()
    line = text.splitlines()[0] if text else ""
    if not isinstance(err, AirflowException):
        line = f"{type(err).__name__}: {line}" if line else type(err).__name__
    with suppress(Exception):  # noting the reason must never replace the task's own error
        context["ti"].xcom_push(key=ERROR_XCOM_KEY, value=line[:1000])
