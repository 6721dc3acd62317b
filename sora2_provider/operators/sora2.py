"""Generate a video with Segmind's Sora 2 and store it in object storage, paying exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from sora2_provider.compat import conf
from sora2_provider.links import Sora2OutputLink, Sora2VideoLink

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from sora2_provider.hooks.sora2 import Sora2Hook
    from sora2_provider.models import JobResult, VideoRequest
    from sora2_provider.state import JobRecord, JobStateStore

MODES = ("async", "sync")
ORPHANED_INTENT_POLICIES = ("resubmit", "fail")
LITERAL_CHECKED_FIELDS = ("model", "duration", "size")


class Sora2GenerateVideoOperator(BaseOperator):
    """Turn a prompt into an MP4 at ``output_path`` with Segmind's Sora 2, paying once however often it retries.

    Every parameter is validated before any paid call. The job is recorded beside the output before
    it is submitted, so a retry (or a crash, or a lost submit answer) resumes the job already paid for
    instead of buying a new one; Segmind's request history finds jobs whose record expired. The MP4 is
    streamed into object storage and appears at ``output_path`` only when complete.

    :param prompt: what the video shows (templated).
    :param output_path: where the MP4 goes: ``file:///abs/v.mp4``, ``s3://conn_id@bucket/key.mp4``, ... (templated).
    :param model: ``sora-2`` or ``sora-2-pro`` (templated).
    :param duration: 4, 8 or 12 seconds (templated).
    :param size: ``WIDTHxHEIGHT`` allowed for the model; None takes the model's default (templated).
    :param input_reference: reference image: an http(s) URL, or a local / object-storage path that is
        uploaded to Segmind first (templated).
    :param mode: ``async`` (v2 submit and wait, default) or ``sync`` (one v1 call streaming the MP4).
    :param deferrable: wait in the triggerer, freeing the worker slot while the model renders.
    :param poll_interval: seconds between status checks.
    :param max_cost: refuse (before paying) a job whose estimated cost in credits is above this.
    :param overwrite: regenerate even when a verified video from the same inputs is already stored.
    :param on_orphaned_intent: when an earlier try recorded its intent to submit but no request id, and
        the request history shows no such job: ``resubmit`` (default) or ``fail``.
    :param generation_timeout: how long to wait for the video, counted from the submit (not the try).
    :param sora2_conn_id: the ``sora2`` connection.

    Returns (XCom) a dict of plain JSON: ``uri``, ``request_id``, ``model``, ``duration``, ``size``,
    ``prompt``, ``bytes``, ``sha256``, ``content_type``, ``cost``, ``remaining_credits``,
    ``source_url``, ``generation_seconds``, ``decision`` and ``resumed_from``.
    """

    template_fields: Sequence[str] = ("prompt", "output_path", "model", "duration", "size", "input_reference")
    template_fields_renderers = {"prompt": "md"}
    operator_extra_links = (Sora2VideoLink(), Sora2OutputLink())
    ui_color = "#f0e6ff"

    def __init__(
        self,
        *,
        prompt: str,
        output_path: Any,
        model: str = "sora-2",
        duration: int | str = 8,
        size: str | None = None,
        input_reference: Any = None,
        mode: str = "async",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 10.0,
        max_cost: float | None = None,
        overwrite: bool = False,
        on_orphaned_intent: str = "resubmit",
        generation_timeout: timedelta | float = timedelta(hours=1),
        sora2_conn_id: str = "sora2_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.output_path = output_path
        self.model = model
        self.duration = duration
        self.size = size
        self.input_reference = input_reference
        self.mode = _one_of("mode", mode, MODES)
        self.deferrable = deferrable
        self.poll_interval = _positive("poll_interval", poll_interval)
        self.max_cost = None if max_cost is None else _non_negative("max_cost", max_cost)
        self.overwrite = overwrite
        self.on_orphaned_intent = _one_of("on_orphaned_intent", on_orphaned_intent, ORPHANED_INTENT_POLICIES)
        self.generation_timeout = _as_timedelta("generation_timeout", generation_timeout)
        self.sora2_conn_id = sora2_conn_id
        self.stored_video_uri: str | None = None
        self.segmind_output_url: str | None = None
        self._stop_polling = threading.Event()
        self._validate_literals()

    def _validate_literals(self) -> None:
        """Fail at DAG parse for model, duration or size given as plain values that can never work."""
        from sora2_provider.models import get_model, validate_duration, validate_size

        if any(isinstance(getattr(self, f), str) and "{{" in getattr(self, f) for f in LITERAL_CHECKED_FIELDS):
            return
        validate_duration(self.duration)
        validate_size(self.size, get_model(self.model))

    # ------------------------------------------------------------------ entry points

    def execute(self, context: Context) -> dict[str, Any]:
        job = self._prepare(context)
        if job.existing is not None:
            self.log.info("A verified video from the same inputs is already at %s; nothing to pay for.", job.uri)
            return self._publish(context, job.existing)
        hook = job.hook()
        record = self._resolve_job(hook, job)
        if record.request_id is None:
            return self._generate_sync(context, hook, job, record)
        return self._wait_and_store(context, hook, job, record)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume on the worker after the trigger fired: download and store the finished video."""
        job = self._prepare(context, check_existing=False)
        hook = job.hook()
        record = job.store.read()
        event = event or {}
        request_id = event.get("request_id") or (record.request_id if record else None)
        if record is None or request_id is None:
            raise _fail(f"the job record at {job.store.record_path} vanished while the task was deferred")
        self._raise_if_failed(job, event)
        if event.get("status") == "error":
            raise _wait_failed(request_id, event)
        return self._store(context, hook, job, record)

    def on_kill(self) -> None:
        """Stop worker-side polling; the job record stays so the next try resumes the paid job."""
        self._stop_polling.set()

    # ------------------------------------------------------------------ preparation (no network)

    def _prepare(self, context: Context, *, check_existing: bool = True) -> _Job:
        from sora2_provider.state import JobStateStore, fingerprint, identity_key
        from sora2_provider.storage import to_object_storage_path

        try:
            request = _video_request(self.prompt, self.model, self.duration, self.size, self.input_reference)
            output = to_object_storage_path(self.output_path)
            _Job.check_connection_id(self.sora2_conn_id)
        except ValueError as err:
            raise _fail(str(err)) from None
        self._check_budget(request)
        ti = context["ti"]
        identity = identity_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        reference = None if self.input_reference is None else str(self.input_reference)
        job = _Job(
            operator=self,
            request=request,
            output=output,
            uri=_uri(self.output_path),
            store=JobStateStore(output, identity),
            identity=identity,
            fingerprint=fingerprint(request, self.sora2_conn_id, reference),
        )
        if check_existing and not self.overwrite:
            job.existing = self._existing_output(job)
        return job

    def _check_budget(self, request: VideoRequest) -> None:
        estimate = request.estimated_cost
        if self.max_cost is not None and estimate > self.max_cost:
            raise _fail(
                f"max_cost: the job would cost {estimate:.2f} credits ({request.model}, {request.duration} s, "
                f"{request.size}), above max_cost={self.max_cost:.2f}; nothing was submitted"
            )

    def _existing_output(self, job: _Job) -> dict[str, Any] | None:
        """The stored result when a complete video made from the same inputs is already at the output."""
        meta = job.store.read_meta()
        if meta and meta.get("fingerprint") != job.fingerprint:
            self.log.info("The video at %s was made from other inputs; generating a new one.", job.uri)
            return None
        if meta and _same_size(job.output, meta.get("bytes")) and _has_mp4_signature(job.output):
            return {**meta["xcom"], "decision": "existing_output"}
        if meta:
            return None
        from sora2_provider.storage import inspect_video

        found = inspect_video(job.output)
        if found is None:
            return None
        size, sha256 = found
        return {
            **job.describe(),
            "bytes": size,
            "sha256": sha256,
            "content_type": "video/mp4",
            "decision": "existing_output",
        }

    # ------------------------------------------------------------------ never pay twice

    def _resolve_job(self, hook: Sora2Hook, job: _Job) -> JobRecord:
        """Find the job this task instance already paid for, or submit one; the record says which."""
        record = job.store.read()
        if record is not None and record.fingerprint != job.fingerprint:
            self.log.warning(
                "The inputs changed since job %s was recorded for this task; it is abandoned (Segmind has no "
                "cancel) and a new job is submitted.",
                record.request_id or "(intent only)",
            )
            record = None
        if record is not None and record.request_id:
            self.log.info("Resuming job %s submitted at %s by an earlier try.", record.request_id, record.submitted_at)
            record = record.with_decision("resumed")
            job.store.write(record)
            return record
        if record is not None:
            adopted = self._adopt_from_history(hook, job, record)
            if adopted is not None:
                return adopted
        return self._submit(hook, job)

    def _adopt_from_history(self, hook: Sora2Hook, job: _Job, record: JobRecord) -> JobRecord | None:
        """An intent without a request id: find the job in Segmind's request history, or decide to resubmit."""
        from sora2_provider.exceptions import Sora2Error

        since = record.started_at - timedelta(minutes=2)
        try:
            rows = hook.find_requests(model=record.model, since=since)
        except Sora2Error as err:
            raise _retryable(
                f"an earlier try may have paid for a job (intent recorded at {record.intent_at}) but the request "
                f"history cannot be read ({err}); not resubmitting, to avoid paying twice"
            ) from None
        matches = [row for row in rows if record.matches(row)]
        if matches:
            row = matches[-1]  # newest first: the oldest match is the first job this intent created
            self.log.warning(
                "Adopted job %s from Segmind's request history (status %s): an earlier try's submit answer "
                "was lost; nothing is resubmitted.",
                row.request_id,
                row.status,
            )
            adopted = record.with_request(row.request_id, row.created_at).with_decision("adopted_from_history")
            job.store.write(adopted)
            return adopted
        if self.on_orphaned_intent == "fail":
            raise _fail(
                f"an earlier try recorded its intent to submit at {record.intent_at} but no request id, and the "
                f"request history shows no matching job; on_orphaned_intent='fail' refuses to risk paying twice. "
                f"Delete {job.store.record_path} to allow a new submit."
            )
        self.log.warning(
            "An earlier try recorded an intent to submit at %s but the request history shows no such job; "
            "submitting now (on_orphaned_intent='resubmit').",
            record.intent_at,
        )
        return None

    def _submit(self, hook: Sora2Hook, job: _Job) -> JobRecord:
        """Write the intent, then submit (async) or leave the v1 call to ``_generate_sync``."""
        from sora2_provider.state import JobRecord, utcnow

        request = job.resolved_request(hook)
        record = JobRecord(
            identity=job.identity,
            fingerprint=job.fingerprint,
            intent_at=utcnow().isoformat(),
            model=request.model,
            body=request.to_body(),
            mode=self.mode,
        )
        job.store.write(record)
        job.sent_request = request
        if self.mode == "sync":
            return record
        submitted = self._paid_call(job, hook.submit, request)
        record = record.with_request(submitted.request_id)
        job.store.write(record)
        self.log.info(
            "Submitted %s job %s (%s s, %s), estimated cost %.2f credits.",
            request.model,
            submitted.request_id,
            request.duration,
            request.size,
            request.estimated_cost,
        )
        return record

    @staticmethod
    def _paid_call(job: _Job, method: Any, *args: Any) -> Any:
        """Call a paid endpoint; when Segmind refused it with a 4xx (401, 406, 410...), no job exists: drop the
        intent record too."""
        from sora2_provider.exceptions import Sora2Error

        try:
            return method(*args)
        except Sora2Error as err:
            if not err.retryable and 400 <= (err.status_code or 0) < 500:
                job.store.delete()
            raise _translate(err) from None

    # ------------------------------------------------------------------ waiting

    def _wait_and_store(self, context: Context, hook: Sora2Hook, job: _Job, record: JobRecord) -> dict[str, Any]:
        assert record.request_id is not None
        remaining = self._remaining(record)
        if self.deferrable and not (record.resumed_from and self._already_ended(hook, record.request_id)):
            from sora2_provider.triggers.sora2 import Sora2JobTrigger

            self.log.info("Deferring while job %s renders (the worker slot is free).", record.request_id)
            self.defer(
                trigger=Sora2JobTrigger(record.request_id, self.sora2_conn_id, self.poll_interval),
                method_name="execute_complete",
                timeout=remaining,
            )
        event = self._poll(hook, record.request_id, remaining)
        self._raise_if_failed(job, event)
        if event["status"] == "error":
            raise _wait_failed(record.request_id, event)
        return self._store(context, hook, job, record)

    def _already_ended(self, hook: Sora2Hook, request_id: str) -> bool:
        """Has a job an earlier try paid for already ended? Then it is collected here, without deferring
        (a trigger that fires at once races the scheduler's handling of the deferral)."""
        from sora2_provider.exceptions import Sora2Error, Sora2NotFoundError

        try:
            return hook.get_status(request_id).is_terminal
        except Sora2NotFoundError:
            return True  # the v2 record expired: the request history has the result
        except Sora2Error:
            return False  # let the trigger ride it out

    def _remaining(self, record: JobRecord) -> timedelta:
        from sora2_provider.state import utcnow

        remaining = record.started_at + self.generation_timeout - utcnow()
        if remaining <= timedelta(0):
            raise _retryable(
                f"job {record.request_id} has not finished within generation_timeout={self.generation_timeout} "
                f"of its submit at {record.started_at.isoformat()}; the record is kept so a later try can still "
                "collect the video if it completes"
            )
        return remaining

    def _poll(self, hook: Sora2Hook, request_id: str, remaining: timedelta) -> dict[str, Any]:
        """Worker-side wait (``deferrable=False``), sharing the trigger's rules through ``JobWatch``."""
        from sora2_provider.exceptions import Sora2Error
        from sora2_provider.triggers.sora2 import JobWatch

        watch = JobWatch(request_id)
        deadline = time.monotonic() + remaining.total_seconds()
        while time.monotonic() < deadline:
            previous = watch.last_status
            try:
                status = hook.get_status(request_id)
            except Sora2Error as err:
                self.log.warning("Status of %s unavailable (%s); polling again", request_id, err)
                event = watch.on_error(err)
            else:
                if status.status != previous:
                    self.log.info("Job %s is %s (%.0f s)", request_id, status.status, watch.elapsed)
                event = watch.on_status(status)
            if event is not None:
                return event
            if self._stop_polling.wait(self.poll_interval):
                raise _retryable(f"polling of job {request_id} was stopped; the next try resumes it")
        raise _retryable(f"job {request_id} did not finish within generation_timeout={self.generation_timeout}")

    def _raise_if_failed(self, job: _Job, event: dict[str, Any]) -> None:
        if event.get("status") == "failed":
            job.store.delete()  # a FAILED job is not billed: a retry may submit again
            raise _retryable(f"Sora 2 job {event.get('request_id')} FAILED (not billed): {event.get('message')}")

    # ------------------------------------------------------------------ storing

    def _store(self, context: Context, hook: Sora2Hook, job: _Job, record: JobRecord) -> dict[str, Any]:
        from sora2_provider.storage import atomic_writer

        assert record.request_id is not None
        result = self._result(hook, record.request_id)
        if not result.output_url:
            raise _retryable(f"job {record.request_id} is {result.status} and has no output yet")
        started = time.monotonic()
        job.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(job.output) as handle:
            download = _call(hook.download, result.output_url, handle)
        self._log_transfer(download.bytes, time.monotonic() - started, job.uri)
        xcom = {
            **job.describe(),
            "request_id": record.request_id,
            "bytes": download.bytes,
            "sha256": download.sha256,
            "content_type": download.content_type or "video/mp4",
            "cost": result.cost,
            "remaining_credits": result.remaining_credits,
            "source_url": result.output_url,
            "generation_seconds": result.generation_seconds,
            "decision": record.decision,
            "resumed_from": record.resumed_from,
        }
        return self._finish(context, job, xcom)

    def _result(self, hook: Sora2Hook, request_id: str) -> JobResult:
        """The finished job from its v2 record, or from the request history once that record expired."""
        from sora2_provider.exceptions import Sora2Error, Sora2JobFailedError, Sora2NotFoundError
        from sora2_provider.models import JobResult

        try:
            return hook.get_result(request_id)
        except Sora2JobFailedError as err:
            raise _retryable(f"Sora 2 job {request_id} FAILED (not billed): {err.segmind_message or err}") from None
        except Sora2NotFoundError:
            self.log.info("The v2 record of %s expired; reading its output from the request history.", request_id)
        except Sora2Error as err:
            raise _translate(err) from None
        row = _call(hook.get_request_record, request_id)
        if row.status == "FAILED":
            raise _retryable(f"Sora 2 job {request_id} FAILED (not billed): {row.error}")
        return JobResult(
            request_id=row.request_id,
            status=row.status or "UNKNOWN",
            output_url=row.output_url,
            cost=row.cost,
            generation_seconds=None if row.latency_ms is None else round(row.latency_ms / 1000, 3),
        )

    def _generate_sync(self, context: Context, hook: Sora2Hook, job: _Job, record: JobRecord) -> dict[str, Any]:
        """``mode="sync"``: one v1 call whose MP4 body streams straight into the output."""
        from sora2_provider.storage import atomic_writer

        request = job.sent_request or job.resolved_request(hook)
        self.log.info(
            "Calling v1 %s synchronously (estimated cost %.2f credits).", request.model, request.estimated_cost
        )
        started = time.monotonic()
        job.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(job.output) as handle:
            result = self._paid_call(job, hook.generate_sync, request, handle)
        self._log_transfer(result.download.bytes, time.monotonic() - started, job.uri)
        xcom = {
            **job.describe(),
            "request_id": result.request_id,
            "bytes": result.download.bytes,
            "sha256": result.download.sha256,
            "content_type": result.download.content_type or "video/mp4",
            "cost": result.cost,
            "remaining_credits": result.remaining_credits,
            "source_url": None,
            "generation_seconds": result.generation_seconds,
            "decision": "new_submit",
            "resumed_from": None,
        }
        return self._finish(context, job, xcom)

    def _finish(self, context: Context, job: _Job, xcom: dict[str, Any]) -> dict[str, Any]:
        job.store.write_meta({"fingerprint": job.fingerprint, "bytes": xcom["bytes"], "xcom": xcom})
        job.store.delete()
        self.log.info(
            "Stored %s (%d bytes, request %s, %s).", job.uri, xcom["bytes"], xcom["request_id"], xcom["decision"]
        )
        return self._publish(context, xcom)

    def _publish(self, context: Context, xcom: dict[str, Any]) -> dict[str, Any]:
        """Set the extra links and the metadata of any Asset outlet, and return the XCom dict."""
        from airflow.sdk import Asset

        self.stored_video_uri = xcom["uri"]
        self.segmind_output_url = xcom.get("source_url")
        metadata = {k: xcom.get(k) for k in ("uri", "request_id", "model", "duration", "cost")}
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update(metadata)
        return xcom

    def _log_transfer(self, size: int, seconds: float, uri: str) -> None:
        megabytes = size / 1e6
        self.log.info(
            "Downloaded %.1f MB to %s in %.1f s (%.1f MB/s).", megabytes, uri, seconds, megabytes / max(seconds, 1e-6)
        )


class _Job:
    """Everything one try knows about its job before talking to Segmind."""

    def __init__(
        self,
        *,
        operator: Sora2GenerateVideoOperator,
        request: VideoRequest,
        output: ObjectStoragePath,
        uri: str,
        store: JobStateStore,
        identity: str,
        fingerprint: str,
    ) -> None:
        self.operator = operator
        self.request = request
        self.output = output
        self.uri = uri
        self.store = store
        self.identity = identity
        self.fingerprint = fingerprint
        self.existing: dict[str, Any] | None = None
        self.sent_request: VideoRequest | None = None

    @staticmethod
    def check_connection_id(conn_id: Any) -> None:
        if not isinstance(conn_id, str) or not conn_id.strip():
            raise ValueError(f"sora2_conn_id: {conn_id!r} must name a 'sora2' connection")

    def hook(self) -> Sora2Hook:
        """The hook, with its connection checked (exists, has a key, sane host) before any network call."""
        from sora2_provider.exceptions import Sora2Error
        from sora2_provider.hooks.sora2 import Sora2Hook

        hook = Sora2Hook(sora2_conn_id=self.operator.sora2_conn_id)
        try:
            hook.get_conn()
        except Sora2Error as err:
            raise _fail(str(err)) from None
        return hook

    def resolved_request(self, hook: Sora2Hook) -> VideoRequest:
        """The request as sent: a local or object-storage ``input_reference`` is uploaded first."""
        from dataclasses import replace

        reference = self.operator.input_reference
        if reference is None or _is_url(reference):
            return self.request
        url = _call(hook.upload_image, reference)
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


# ---------------------------------------------------------------------- helpers


def _video_request(prompt: Any, model: Any, duration: Any, size: Any, input_reference: Any) -> VideoRequest:
    """Validate through models.py; a path ``input_reference`` must point at an existing image."""
    from sora2_provider.models import VideoRequest

    reference = input_reference
    if reference is not None and not _is_url(reference):
        _check_image_path(reference)
        reference = None
    return VideoRequest.create(prompt, model=model, duration=duration, size=size, input_reference=reference)


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("http://", "https://"))


def _check_image_path(value: Any) -> None:
    from sora2_provider.storage import to_object_storage_path

    if isinstance(value, str) and "://" not in value:
        value = "file://" + value if value.startswith("/") else value
    try:
        path = to_object_storage_path(value, "input_reference")
    except ValueError as err:
        raise ValueError(f"{err}; input_reference also takes an http(s) image URL or an absolute path") from None
    if not path.is_file():
        raise ValueError(f"input_reference: {value!s} does not exist; give an http(s) URL or an existing image path")


def _uri(output_path: Any) -> str:
    from airflow.sdk import ObjectStoragePath

    if isinstance(output_path, ObjectStoragePath):
        conn = f"{output_path.conn_id}@" if output_path.conn_id else ""
        prefix = f"{output_path.protocol}://{conn}"
        return prefix + output_path.path.lstrip("/") if output_path.protocol != "file" else prefix + output_path.path
    return str(output_path)


def _same_size(path: ObjectStoragePath, expected: Any) -> bool:
    try:
        return path.stat().st_size == expected
    except FileNotFoundError:
        return False


def _has_mp4_signature(path: ObjectStoragePath) -> bool:
    from sora2_provider.storage import MP4_SIGNATURE

    with path.open("rb") as handle:
        return handle.read(8)[4:8] == MP4_SIGNATURE


def _call(method: Any, *args: Any) -> Any:
    """Call the hook, turning errors a retry cannot fix into ``AirflowFailException``."""
    from sora2_provider.exceptions import Sora2Error

    try:
        return method(*args)
    except Sora2Error as err:
        raise _translate(err) from None


def _translate(err: Exception) -> Exception:
    """A retry can help a transient error, a FAILED job or an uncertain submit; nothing else."""
    return err if getattr(err, "retryable", False) else _fail(str(err))


def _fail(message: str) -> Exception:
    from sora2_provider.compat import AirflowFailException

    return AirflowFailException(message)


def _retryable(message: str) -> Exception:
    from sora2_provider.compat import AirflowException

    return AirflowException(message)


def _wait_failed(request_id: str, event: dict[str, Any]) -> Exception:
    """A wait that ended in an error: retryable (outage) or not (refused key); the job record stays either way."""
    message = f"waiting for Sora 2 job {request_id} failed: {event.get('message')}"
    if event.get("retryable", True):
        return _retryable(message)
    return _fail(
        f"{message}. A retry cannot fix this; the job record is kept, so clearing the task once the cause is "
        "fixed collects the job already paid for"
    )


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: {value!r} is not allowed; allowed values: {', '.join(map(repr, allowed))}")
    return value


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name}: {value!r} must be a positive number of seconds")
    return float(value)


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name}: {value!r} must be a number of credits >= 0")
    return float(value)


def _as_timedelta(name: str, value: Any) -> timedelta:
    seconds = value.total_seconds() if isinstance(value, timedelta) else _positive(name, value)
    if seconds <= 0:
        raise ValueError(f"{name}: {value!r} must be positive")
    return timedelta(seconds=seconds)
