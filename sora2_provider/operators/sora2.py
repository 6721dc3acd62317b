"""Generate a video with Segmind's Sora 2 and store it in object storage, paying exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import Asset, BaseOperator

from sora2_provider import metrics
from sora2_provider._arguments import as_timedelta, credits, has_template, one_of, positive
from sora2_provider.compat import conf
from sora2_provider.exceptions import Sora2Error
from sora2_provider.job_events import result_from_event, wait_failed
from sora2_provider.links import Sora2OutputLink, Sora2VideoLink
from sora2_provider.models import SyncResult, VideoRequest, get_model, validate_duration, validate_size
from sora2_provider.operators._failures import fail, failure_noted, reason_of, retryable
from sora2_provider.operators._job_spec import (
    MODES,
    ORPHANED_INTENT_POLICIES,
    JobSpec,
    check_connection_id,
    video_request,
)
from sora2_provider.operators._output import (
    existing_output,
    job_state_store,
    output_uri,
    state_root,
    warn_if_local_file_on_remote_workers,
)
from sora2_provider.operators._pay_once import Decision, paid_call, resolve_job
from sora2_provider.operators._waiting import (
    already_ended,
    deadline_after,
    download_video,
    finished_job,
    poll_on_worker,
    resolve_through_outage,
)
from sora2_provider.state import JobRecord, fingerprint, identity_key, utcnow
from sora2_provider.storage import atomic_writer, missing_bucket, to_object_storage_path
from sora2_provider.triggers.sora2 import Sora2JobTrigger
from sora2_provider.xcom import video_result

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from sora2_provider.hooks.sora2 import Sora2Hook

__all__ = ["Sora2GenerateVideoOperator"]

LITERAL_CHECKED_FIELDS = ("model", "duration", "size")


class Sora2GenerateVideoOperator(BaseOperator):
    """Turn a prompt into an MP4 at ``output_path`` with Segmind's Sora 2, paying once however often it retries.

    Every parameter is validated before any paid call. The job is recorded before it is submitted, so a
    retry (on any worker, after a crash, or after a lost submit answer) resumes the job already paid for
    instead of buying a new one; Segmind's request history finds jobs whose record expired. The record lives
    in Airflow's ``task_state_store`` (Airflow 3.3+; nothing is written beside the video), else beside the
    output under ``_sora2_state/``, or under ``state_path`` when given. The MP4 is streamed into object
    storage and appears at ``output_path`` only when complete.

    :param prompt: what the video shows (templated).
    :param output_path: where the MP4 goes: ``file:///abs/v.mp4``, ``s3://conn_id@bucket/key.mp4``, ... (templated).
    :param model: ``sora-2`` or ``sora-2-pro`` (templated).
    :param duration: 4, 8 or 12 seconds (templated).
    :param size: ``WIDTHxHEIGHT`` allowed for the model; None takes the model's default (templated).
    :param input_reference: reference image: an http(s) URL, or a local / object-storage path that is
        uploaded to Segmind first (templated).
    :param mode: ``async`` (v2 submit and wait, default) or ``sync`` (one v1 call streaming the MP4).
    :param deferrable: wait in the triggerer, freeing the worker slot while the model renders.
    :param poll_interval: seconds between checks once the job can be done (see the trigger).
    :param max_cost: refuse (before paying) a job whose estimated cost in credits is above this.
    :param max_spend_per_day: lower (never raise) the connection's ``max_spend_per_day``: a new paid submit that
        would take the account's spend over the last 24 h above it is refused (see docs/costs.md).
    :param overwrite: regenerate even when a verified video from the same inputs is already stored.
    :param on_orphaned_intent: when an earlier try recorded its intent to submit but no request id, and
        the request history shows no such job: ``resubmit`` (default) or ``fail``.
    :param state_path: keep the job records as JSON objects under this object-storage prefix (e.g.
        ``s3://aws_default@bucket/_sora2_state/``) instead of the task state store; the connection extra
        ``state_root`` sets a default for every task.
    :param generation_timeout: how long to wait for the video, counted from the submit (not the try).
    :param sora2_conn_id: the ``sora2`` connection.

    Returns (XCom) a dict of plain JSON: ``uri``, ``request_id``, ``model``, ``duration``, ``size``,
    ``prompt``, ``bytes``, ``sha256``, ``content_type``, ``cost``, ``remaining_credits``,
    ``source_url``, ``generation_seconds``, ``decision`` and ``resumed_from``. A failed try leaves why, in one
    line, in the XCom ``sora2_error`` (shown by the Video tab).
    """

    template_fields: Sequence[str] = ("prompt", "output_path", "model", "duration", "size", "input_reference")
    template_fields_renderers = {"prompt": "md"}
    operator_extra_links = (Sora2VideoLink(), Sora2OutputLink())
    # A threading.Event cannot be deep-copied; Airflow deep-copies tasks (DAG.partial_subset, 3.0's dag.test).
    shallow_copy_attrs: Sequence[str] = ("_stop_polling",)
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
        max_spend_per_day: float | None = None,
        overwrite: bool = False,
        on_orphaned_intent: str = "resubmit",
        generation_timeout: timedelta | float = timedelta(hours=1),
        state_path: Any = None,
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
        self.mode = one_of("mode", mode, MODES)
        self.deferrable = deferrable
        self.poll_interval = positive("poll_interval", poll_interval)
        self.max_cost = None if max_cost is None else credits("max_cost", max_cost)
        self.max_spend_per_day = None if max_spend_per_day is None else credits("max_spend_per_day", max_spend_per_day)
        self.overwrite = overwrite
        self.on_orphaned_intent = one_of("on_orphaned_intent", on_orphaned_intent, ORPHANED_INTENT_POLICIES)
        self.generation_timeout = as_timedelta("generation_timeout", generation_timeout)
        self.state_path = state_path
        self.sora2_conn_id = sora2_conn_id
        self.stored_video_uri: str | None = None
        self.sora2_result: dict[str, Any] | None = None
        self.segmind_output_url: str | None = None
        self._stop_polling = threading.Event()
        self._validate_literals()

    def _validate_literals(self) -> None:
        """Fail at DAG parse for model, duration or size given as plain values that can never work."""
        if any(has_template(getattr(self, field)) for field in LITERAL_CHECKED_FIELDS):
            return
        validate_duration(self.duration)
        validate_size(self.size, get_model(self.model))

    @cached_property
    def hook(self) -> Sora2Hook:
        """The hook of ``sora2_conn_id``; its spend cap lowered by ``max_spend_per_day``."""
        from sora2_provider.hooks.sora2 import Sora2Hook  # lazy: the hook pulls requests, not needed at DAG parse

        hook = Sora2Hook(sora2_conn_id=self.sora2_conn_id)
        hook.max_spend_per_day = self.max_spend_per_day
        return hook

    # ------------------------------------------------------------------ entry points

    def execute(self, context: Context) -> dict[str, Any]:
        with failure_noted(context):
            return self._generate(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume on the worker after the trigger fired: download and store the finished video.

        Airflow 3.0 resumes the retry of a try that failed here into the same event (it keeps the deferral's
        ``next_method``: apache/airflow#56704); a try that did not defer starts over instead."""
        try_number, deferred_in_try = context["ti"].try_number, (event or {}).get("deferred_in_try")
        if deferred_in_try is not None and deferred_in_try != try_number:
            self.log.info("Try %s did not defer (try %s did): starting over.", try_number, deferred_in_try)
            return self.execute(context)
        with failure_noted(context):
            return self._collect(context, event)

    def _generate(self, context: Context) -> dict[str, Any]:
        job = self._job(context)
        warn_if_local_file_on_remote_workers(self.executor, job.output, self.log)
        existing = None if self.overwrite else existing_output(job)
        if existing is not None:
            self.log.info("A verified video from the same inputs is already at %s; nothing to pay for.", job.uri)
            return self._publish(context, existing)
        if bucket := missing_bucket(job.output):
            raise fail(
                f"output_path: the bucket {bucket!r} of {job.uri} does not exist: create it, or correct output_path "
                "or its connection; nothing was submitted",
                "error",
            )
        hook = self._checked_hook()
        decision, sync_result = resolve_through_outage(
            hook,
            lambda: self._resolve(hook, job),
            until=time.monotonic() + self.generation_timeout.total_seconds(),
            interval=self.poll_interval,
            stop=self._stop_polling,
            log=self.log,
        )
        metrics.job_decided(decision.record.decision, model=decision.record.model)
        if sync_result is not None:
            return self._store_sync(context, job, sync_result)
        return self._wait_and_store(context, hook, job, decision.record)

    def _resolve(self, hook: Sora2Hook, job: JobSpec) -> tuple[Decision, SyncResult | None]:
        """Resume, adopt or submit; a sync intent also makes its one v1 call here, so that a call which meets an
        outage leaves its intent for the next round to adopt from the request history (or to send again)."""
        decision = resolve_job(
            job, find_requests=hook.find_requests, upload_image=hook.upload_image, submit=hook.submit
        )
        if decision.record.request_id is not None:
            return decision, None
        assert decision.request is not None  # a sync intent: this try sends the request
        return decision, self._call_sync(hook, job, decision.request)

    def _collect(self, context: Context, event: dict[str, Any] | None) -> dict[str, Any]:
        job = self._job(context)
        hook = self._checked_hook()
        record = job.store.read()
        event = event or {}
        request_id = event.get("request_id") or (record.request_id if record else None)
        if record is None or request_id is None:
            raise fail(f"the job record in {job.store.location} vanished while the task was deferred", "error")
        self._raise_if_failed(job, event)
        if event.get("status") == "error":
            raise wait_failed(request_id, event)
        return self._store(context, hook, job, record, event)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage: the stored video, a stored reference image and the ``sora2`` run facet."""
        return self._lineage(failed=False)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return self._lineage(failed=True)

    def on_kill(self) -> None:
        """Stop worker-side polling; the job record stays so the next try resumes the paid job."""
        self._stop_polling.set()

    # ------------------------------------------------------------------ preparation (no paid call)

    def _job(self, context: Context) -> JobSpec:
        """Bind this try's values: the validated request, the output, the job record store and the policies."""
        try:
            request = video_request(self.prompt, self.model, self.duration, self.size, self.input_reference)
            output = to_object_storage_path(self.output_path)
            conn_id = check_connection_id(self.sora2_conn_id)
            root = state_root(self.state_path, self.hook.extras)
        except (ValueError, Sora2Error) as err:
            raise fail(str(err), "error") from None
        self._check_budget(request)
        ti = context["ti"]
        identity = identity_key(ti.dag_id, ti.task_id, ti.run_id, ti.map_index)
        reference = None if self.input_reference is None else str(self.input_reference)
        return JobSpec(
            conn_id=conn_id,
            request=request,
            input_reference=reference,
            output=output,
            uri=output_uri(self.output_path),
            store=job_state_store(context, output, identity, root),
            identity=identity,
            fingerprint=fingerprint(request, conn_id, reference),
            mode=self.mode,
            on_orphaned_intent=self.on_orphaned_intent,
            log=self.log,
        )

    def _check_budget(self, request: VideoRequest) -> None:
        estimate = request.estimated_cost
        if self.max_cost is not None and estimate > self.max_cost:
            raise fail(
                f"max_cost: the job would cost {estimate:.2f} credits ({request.model}, {request.duration} s, "
                f"{request.size}), above max_cost={self.max_cost:.2f}; nothing was submitted",
                "max_cost",
            )

    def _checked_hook(self) -> Sora2Hook:
        """The hook, with its connection checked (exists, has a key, sane host) before any network call."""
        try:
            self.hook.get_conn()
        except Sora2Error as err:
            raise fail(str(err), reason_of(err)) from None
        return self.hook

    # ------------------------------------------------------------------ waiting

    def _wait_and_store(self, context: Context, hook: Sora2Hook, job: JobSpec, record: JobRecord) -> dict[str, Any]:
        assert record.request_id is not None
        remaining = self._remaining(record)
        if self.deferrable and not (record.resumed_from and already_ended(hook, record.request_id)):
            self.log.info("Deferring while job %s renders (the worker slot is free).", record.request_id)
            self.defer(
                trigger=Sora2JobTrigger(
                    record.request_id,
                    job.conn_id,
                    self.poll_interval,
                    submitted_at=record.submitted_at,
                    model=job.request.model,
                    duration=job.request.duration,
                    size=job.request.size,
                    try_number=context["ti"].try_number,
                ),
                method_name="execute_complete",
                timeout=remaining,
            )
        event = self._poll(hook, record.request_id, remaining, fresh=record.decision == "new_submit")
        self._raise_if_failed(job, event)
        if event["status"] == "error":
            raise wait_failed(record.request_id, event)
        return self._store(context, hook, job, record)

    def _poll(self, hook: Sora2Hook, request_id: str, remaining: timedelta, *, fresh: bool = False) -> dict[str, Any]:
        """Worker-side wait (``deferrable=False``), stopped by ``on_kill``."""
        limit = f"generation_timeout={self.generation_timeout}"
        return poll_on_worker(hook, request_id, remaining, interval=self.poll_interval, stop=self._stop_polling,
                              log=self.log, limit=limit, fresh=fresh)

    def _remaining(self, record: JobRecord) -> timedelta:
        remaining = record.started_at + self.generation_timeout - utcnow()
        if remaining <= timedelta(0):
            raise retryable(
                f"job {record.request_id} has not finished within generation_timeout={self.generation_timeout} "
                f"of its submit at {record.started_at.isoformat()}; the record is kept so a later try can still "
                "collect the video if it completes",
                "timeout",
            )
        return remaining

    @staticmethod
    def _raise_if_failed(job: JobSpec, event: dict[str, Any]) -> None:
        if event.get("status") == "failed":
            job.store.delete()  # a FAILED job is not billed: a retry may submit again
            raise retryable(
                f"Sora 2 job {event.get('request_id')} FAILED (not billed): {event.get('message')}", "job_failed"
            )

    # ------------------------------------------------------------------ storing

    def _store(
        self, context: Context, hook: Sora2Hook, job: JobSpec, record: JobRecord, event: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Download the finished video into the output. When the trigger's event already carries the output URL
        and cost (read from the request history), no further keyed call is made."""
        assert record.request_id is not None
        until, interval = deadline_after(record.started_at, self.generation_timeout), self.poll_interval
        result = result_from_event(event) or finished_job(hook, record.request_id, self.log, until=until,
                                                          interval=interval)
        if not result.output_url:
            raise retryable(f"job {record.request_id} is {result.status} and has no output yet", "error")
        started = time.monotonic()
        job.output.parent.mkdir(parents=True, exist_ok=True)
        download = download_video(hook, result.output_url, job.output, until=until, interval=interval, log=self.log)
        self._log_transfer(download.bytes, time.monotonic() - started, job.uri)
        xcom = video_result(
            job.uri,
            job.request,
            download,
            request_id=record.request_id,
            cost=result.cost,
            remaining_credits=result.remaining_credits,
            source_url=result.output_url,
            generation_seconds=result.generation_seconds,
            decision=record.decision,
            resumed_from=record.resumed_from,
        )
        return self._finish(context, job, xcom)

    def _call_sync(self, hook: Sora2Hook, job: JobSpec, request: VideoRequest) -> SyncResult:
        """``mode="sync"``: one v1 call whose MP4 body streams straight into the output (whole, or not at all)."""
        self.log.info(
            "Calling v1 %s synchronously (estimated cost %.2f credits).", request.model, request.estimated_cost
        )
        started = time.monotonic()
        job.output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(job.output) as handle:
            result = paid_call(job.store, hook.generate_sync, request, handle)
        self._log_transfer(result.download.bytes, time.monotonic() - started, job.uri)
        return result

    def _store_sync(self, context: Context, job: JobSpec, result: SyncResult) -> dict[str, Any]:
        xcom = video_result(
            job.uri,
            job.request,
            result.download,
            request_id=result.request_id,
            cost=result.cost,
            remaining_credits=result.remaining_credits,
            generation_seconds=result.generation_seconds,
            decision="new_submit",
        )
        return self._finish(context, job, xcom)

    def _finish(self, context: Context, job: JobSpec, xcom: dict[str, Any]) -> dict[str, Any]:
        metrics.job_stored(estimated=job.request.estimated_cost, charged=xcom["cost"],
                           generation_seconds=xcom["generation_seconds"], model=job.request.model)
        job.store.write_meta({"fingerprint": job.fingerprint, "bytes": xcom["bytes"], "xcom": xcom})
        job.store.delete()
        self.log.info(
            "Stored %s (%d bytes, request %s, %s).", job.uri, xcom["bytes"], xcom["request_id"], xcom["decision"]
        )
        return self._publish(context, xcom)

    def _publish(self, context: Context, xcom: dict[str, Any]) -> dict[str, Any]:
        """Set the extra links and the metadata of any Asset outlet, and return the XCom dict."""
        self.stored_video_uri = xcom["uri"]
        self.sora2_result = xcom  # read by get_openlineage_facets_on_complete
        self.segmind_output_url = xcom.get("source_url")
        metadata = {k: xcom.get(k) for k in ("uri", "request_id", "model", "duration", "cost")}
        for outlet in self.outlets:
            if isinstance(outlet, Asset):
                context["outlet_events"][outlet].extra.update(metadata)
        return xcom

    def _log_transfer(self, size: int, seconds: float, uri: str) -> None:
        metrics.downloaded(size, seconds)
        megabytes = size / 1e6
        self.log.info(
            "Downloaded %.1f MB to %s in %.1f s (%.1f MB/s).", megabytes, uri, seconds, megabytes / max(seconds, 1e-6)
        )

    def _lineage(self, *, failed: bool) -> Any:
        from sora2_provider import lineage  # lazy: needs the OpenLineage provider, an optional extra

        return lineage.operator_lineage(
            self.sora2_result or {},
            self.input_reference,
            model=self.model,
            duration=self.duration,
            size=self.size,
            failed=failed,
        )
