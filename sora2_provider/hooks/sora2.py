"""The hook that speaks to Segmind's Sora 2 API: every call the provider makes, sync and async, in one class.

The HTTP itself (session, retries, call budget, error mapping) is in ``_transport``; reading answers in
``_answers``; streaming a video to its destination in ``_video_stream``. Retries and the connection's
fields are described in docs/errors.md and docs/connection.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import requests
from airflow.providers.common.compat.sdk import BaseHook, mask_secret

from sora2_provider import metrics, spend
from sora2_provider.compat import aget_connection, arun_airflow_call
from sora2_provider.exceptions import (
    Sora2AuthError,
    Sora2ConfigError,
    Sora2DownloadError,
    Sora2Error,
    Sora2JobFailedError,
    Sora2NotFoundError,
)
from sora2_provider.hooks import _answers as answers
from sora2_provider.hooks._call_budget import CallBudget, budget_for
from sora2_provider.hooks._transport import PaidCall, Transport, host_url, new_session, usable_url
from sora2_provider.hooks._video_stream import (
    IncompleteDownloadError,
    VideoSink,
    as_path,
    open_destination,
)
from sora2_provider.models import (
    DownloadResult,
    HistoryRecord,
    JobResult,
    JobStatus,
    SubmittedJob,
    SyncResult,
    VideoRequest,
)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Connection

__all__ = ["Sora2Hook"]

T = TypeVar("T")

SEGMIND_API_URL = "https://api.segmind.com"
SEGMIND_UPLOAD_URL = "https://workflows-api.segmind.com"
SEGMIND_HISTORY_URL = "https://api.spotprod.segmind.com"
DEFAULT_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 10.0
SYNC_TIMEOUT_FACTOR = 10
MAX_IMAGE_BYTES = 20 * 1024 * 1024


class Sora2Hook(BaseHook):
    """
    Interact with Segmind's Sora 2 text-to-video API.

    :param sora2_conn_id: connection of type ``sora2``; its password is the Segmind API key.
    :param max_retries: retries of a failed call that is safe to repeat (0 disables retrying).
    :param max_wait: longest single wait in seconds before a retry, including a rate-limit wait.

    ``retry_backoff_initial`` and ``retry_backoff_max`` (seconds) shape the exponential backoff; set them on
    an instance to change it (tests use tiny values).
    """

    conn_name_attr = "sora2_conn_id"
    default_conn_name = "sora2_default"
    conn_type = "sora2"
    hook_name = "Segmind Sora 2"

    retry_backoff_initial = 0.5
    retry_backoff_max = 30.0
    #: Lowers (never raises) the connection's ``max_spend_per_day`` for this hook's paid calls.
    max_spend_per_day: float | None = None

    def __init__(self, sora2_conn_id: str = default_conn_name, *, max_retries: int = 5, max_wait: float = 60.0) -> None:
        super().__init__()
        self.sora2_conn_id = sora2_conn_id
        self.max_retries = max_retries
        self.max_wait = max_wait
        self._conn: Connection | None = None
        self._session: requests.Session | None = None
        self._session_lock = threading.Lock()
        self._secret: str | None = None
        self._extra: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sora2_conn_id={self.sora2_conn_id!r})"

    # ------------------------------------------------------------------ connection

    @property
    def connection(self) -> Connection:
        """The Airflow connection, looked up once on first use."""
        if self._conn is None:
            try:
                self._conn = self.get_connection(self.sora2_conn_id)
            except Exception as err:  # Airflow's "isn't defined" error differs between versions and contexts
                raise self._undefined(err) from None
        return self._conn

    def _undefined(self, err: Exception) -> Sora2ConfigError:
        return Sora2ConfigError(
            f"sora2_conn_id: connection {self.sora2_conn_id!r} is not defined ({type(err).__name__}); "
            "create a 'sora2' connection whose password is the Segmind API key"
        )

    @property
    def extras(self) -> dict[str, Any]:
        """The connection's extras, read once: ``extra_dejson`` registers secret masks, which Airflow 3.1 only
        allows from the thread that talks to the supervisor."""
        if self._extra is None:
            self._extra = dict(self.connection.extra_dejson)
        return self._extra

    def validate_connection(self) -> None:
        """Refuse, before anything is sent, a connection no request could use: each host must be an http(s) URL
        and the numeric extras numbers. Raises :class:`Sora2ConfigError` naming the field."""
        try:
            _ = (self.timeouts, self.retry_backoff)
        except ValueError as err:
            raise Sora2ConfigError(str(err)) from None
        hosts = {"host": self.base_url, "upload_host": self.upload_url, "history_host": self.history_url}
        for field, url in hosts.items():
            if not usable_url(url):
                raise Sora2ConfigError(
                    f"connection {self.sora2_conn_id!r}: {field} {url!r} is not a usable URL; allowed values: an "
                    "http(s) URL such as 'https://api.segmind.com' (or empty for Segmind's own hosts)"
                )

    @property
    def base_url(self) -> str:
        """Inference and credits host: the connection host, else ``https://api.segmind.com``."""
        conn = self.connection
        return host_url(conn.host, conn.schema, conn.port) or SEGMIND_API_URL

    @property
    def upload_url(self) -> str:
        """Upload host: extra ``upload_host``, else the connection host, else Segmind's upload host."""
        return self._secondary_url("upload_host", SEGMIND_UPLOAD_URL)

    @property
    def history_url(self) -> str:
        """History host: extra ``history_host``, else the connection host, else Segmind's history host."""
        return self._secondary_url("history_host", SEGMIND_HISTORY_URL)

    def _secondary_url(self, extra_key: str, default: str) -> str:
        override = host_url(self.extras.get(extra_key))
        return override or (self.base_url if self.connection.host else default)

    @property
    def timeouts(self) -> tuple[float, float]:
        """(connect, read) seconds from the extras ``connect_timeout`` and ``timeout``."""
        return (
            self._extra_seconds("connect_timeout", DEFAULT_CONNECT_TIMEOUT),
            self._extra_seconds("timeout", DEFAULT_TIMEOUT),
        )

    @property
    def retry_backoff(self) -> float:
        """First backoff delay in seconds: the extra ``retry_backoff``, else ``retry_backoff_initial``."""
        return self._extra_seconds("retry_backoff", self.retry_backoff_initial)

    def _extra_seconds(self, key: str, default: float) -> float:
        value = self.extras.get(key)
        if value in (None, ""):
            return default
        seconds = answers.to_float(value)
        if seconds is None or seconds <= 0:
            raise ValueError(f"connection {self.sora2_conn_id!r}: extra {key}={value!r} must be a positive number")
        return seconds

    def get_conn(self) -> requests.Session:
        """The hook's one ``requests.Session``, carrying the ``x-api-key`` header (masked in Airflow logs)."""
        with self._session_lock:  # the async methods call in from worker threads
            if self._session is None:
                key = (self.connection.password or "").strip()
                if not key:
                    raise Sora2AuthError(
                        f"connection {self.sora2_conn_id!r} has no API key: put the Segmind key in password"
                    )
                self.validate_connection()
                mask_secret(key)
                self._secret = key
                self._session = new_session(key)
            return self._session

    @property
    def budget(self) -> CallBudget:
        """The call budget this connection (id and host) shares with every hook of this process.

        Resolves the connection on first use: in a trigger, await :meth:`aprepare` first."""
        return budget_for(f"{self.sora2_conn_id}|{self.base_url}")

    def _transport(self) -> Transport:
        """How this hook's calls go out, from its current settings (``max_retries`` may change between calls)."""
        return Transport(
            session=self.get_conn(),
            budget=self.budget,
            conn_id=self.sora2_conn_id,
            secret=self._secret,
            timeouts=self.timeouts,
            max_retries=self.max_retries,
            max_wait=self.max_wait,
            backoff_initial=self.retry_backoff,
            backoff_max=self.retry_backoff_max,
            log=self.log,
        )

    # ------------------------------------------------------------------ credits and connection test

    def get_credits(self) -> dict[str, float]:
        """Balance of the account: ``{"credits": float, "free_credits": float}`` (a free call)."""
        _, body = self._transport().call_json("GET", f"{self.base_url}/v1/get-user-credits", what="credits check")
        return answers.credits(body)

    def test_connection(self) -> tuple[bool, str]:
        """Check the key with the free credits call only; never starts a paid job."""
        self.max_retries = 0  # the UI waits on this button: answer at once instead of riding out an outage
        try:
            balance = self.get_credits()
        except Sora2Error as err:  # the UI tests a form under a throwaway id: naming it would only confuse
            return False, str(err).replace(f"connection {self.sora2_conn_id!r}: ", "")
        except Exception as err:  # the UI shows any failure as a message, not a traceback
            text = str(err).replace(self._secret, "***") if self._secret else str(err)
            return False, f"{type(err).__name__}: {text}"
        return True, (
            f"Connected to {self.base_url}: {balance['credits']:g} credits, {balance['free_credits']:g} free credits"
        )

    # ------------------------------------------------------------------ the daily spend cap

    def spend_cap(self, lower_to: float | None = None) -> float | None:
        """The cap in force: the connection's ``max_spend_per_day``, lowered (never raised) by ``lower_to``."""
        try:
            conn_cap = spend.parse_cap(
                self.extras.get(spend.EXTRA), f"connection {self.sora2_conn_id!r}: extra {spend.EXTRA}"
            )
        except ValueError as err:
            raise Sora2ConfigError(str(err)) from None
        if lower_to is not None and conn_cap is not None and lower_to > conn_cap:
            self.log.warning(
                "max_spend_per_day=%.2f cannot raise the connection's cap of %.2f credits; %.2f applies.",
                lower_to,
                conn_cap,
                conn_cap,
            )
        return spend.effective_cap(conn_cap, lower_to)

    def rolling_spend(self) -> spend.Spend:
        """The account's spend over the last 24 h, from the request history (every model)."""
        return spend.spend_of(self.find_requests(since=datetime.now(timezone.utc) - spend.WINDOW))

    def spend_allowance(self, lower_to: float | None = None) -> tuple[float, spend.Spend] | None:
        """(credits still allowed today, the spend) when a cap is in force, else None."""
        cap = self.spend_cap(lower_to)
        if cap is None:
            return None
        rolled = self.rolling_spend()
        return spend.allowance(cap, rolled), rolled

    def enforce_spend_cap(self, request: VideoRequest) -> None:
        """Refuse (before anything is sent) a paid call that would take the 24 h spend over the cap in force."""
        cap = self.spend_cap(self.max_spend_per_day)
        if cap is None:
            return
        rolled = self.rolling_spend()
        refused = spend.refusal(request, rolled, cap)
        if refused is not None:
            metrics.spend_cap_refused(refused.estimate, model=request.model)
            raise refused
        self.log.info(
            "Spend cap: %s; this job's estimate %.2f keeps it within the cap of %.2f credits.",
            rolled.describe(),
            request.estimated_cost,
            cap,
        )

    # ------------------------------------------------------------------ async jobs (v2)

    def _paid_post(self, request: VideoRequest, version: str, **kwargs: Any) -> tuple[requests.Response, PaidCall]:
        """The one paid POST: refused by the spend cap before anything is sent, never resent once it may have
        arrived (:class:`~sora2_provider.exceptions.Sora2SubmitUncertainError`)."""
        self.enforce_spend_cap(request)
        endpoint = f"POST /{version}/{request.model}"
        paid = PaidCall(request, endpoint, datetime.now(timezone.utc))
        url = f"{self.base_url}/{version}/{request.model}"
        response = self._transport().call("POST", url, what=endpoint, paid=paid, json=request.to_body(), **kwargs)
        metrics.job_submitted(model=request.model)
        return response, paid

    def submit(self, request: VideoRequest) -> SubmittedJob:
        """Start one paid job (``POST /v2/{model}``); never resubmits once the request may have arrived."""
        response, paid = self._paid_post(request, "v2")
        with response:
            body = answers.json_body(response)
        request_id = body.get("request_id") if isinstance(body, dict) else None
        if not request_id or not isinstance(body, dict):
            raise paid.uncertain(
                "HTTP 200 without a request_id",
                status_code=response.status_code,
                segmind_message=self._transport().redact(answers.error_text(response)),
            )
        self.log.debug("Submitted %s job %s", request.model, request_id)
        return answers.submitted_job(body, request_id, self._job_url(request_id))

    def _job_url(self, request_id: str, suffix: str = "") -> str:
        return f"{self.base_url}/v2/requests/{quote(request_id, safe='')}{suffix}"

    def _job_json(self, request_id: str, suffix: str, what: str) -> dict[str, Any]:
        url = self._job_url(request_id, suffix)
        _, body = self._transport().call_json("GET", url, what=what, request_id=request_id, failed_is_payload=True)
        return body if isinstance(body, dict) else {}

    def get_status(self, request_id: str) -> JobStatus:
        """QUEUED, PROCESSING, COMPLETED or FAILED (FAILED, served as HTTP 422, is returned, not raised)."""
        return answers.job_status(self._job_json(request_id, "/status", f"status of {request_id}"), request_id)

    def get_result(self, request_id: str) -> JobResult:
        """Output URL, cost and metrics of a job; ``output_url`` is None while it is not COMPLETED.

        :raises Sora2JobFailedError: the job ended FAILED (not billed).
        """
        body = self._job_json(request_id, "", f"result of {request_id}")
        if answers.result_status(body) == "FAILED":
            raise Sora2JobFailedError(
                f"job {request_id} FAILED (not billed)",
                segmind_message=self._transport().redact(str(body.get("error") or "")) or None,
                request_id=request_id,
            )
        return answers.job_result(body, request_id)

    # ------------------------------------------------------------------ request history

    def get_request_record(self, request_id: str) -> HistoryRecord:
        """The history row of one request of any age (status, cost, inputs as sent, output URL)."""
        url = f"{self.history_url}/inference-request/request-history/{quote(request_id, safe='')}"
        what = f"history of {request_id}"
        _, body = self._transport().call_json("GET", url, what=what, request_id=request_id)
        row = answers.history_row(body)
        if row is None:
            raise Sora2NotFoundError(f"{what}: the answer holds no request row", request_id=request_id)
        return answers.history_record(row)

    def find_requests(
        self,
        model: str | None = None,
        since: datetime | None = None,
        *,
        status: str | None = None,
        per_page: int = 100,
        max_pages: int = 20,
    ) -> list[HistoryRecord]:
        """History rows newest first, paging until a row is older than ``since`` (naive = UTC) or rows run out.

        Segmind's history window spans at most 31 days; ``since`` older than that is refused (400).
        """
        if not 1 <= per_page <= 100:
            raise ValueError(f"per_page: {per_page!r} must be between 1 and 100")
        since_utc = since.replace(tzinfo=since.tzinfo or timezone.utc) if since else None
        params = answers.history_params(model, since_utc, status, per_page)
        url = f"{self.history_url}/inference-request/request-history"
        transport = self._transport()
        found: list[HistoryRecord] = []
        for page in range(1, max_pages + 1):
            _, body = transport.call_json("GET", url, what="history search", params={**params, "page": page})
            rows = answers.history_rows(body)
            records, past_since = answers.matching_records(rows, since_utc, model, status)
            found.extend(records)
            if past_since or len(rows) < per_page:
                break
        return found

    # ------------------------------------------------------------------ video bytes

    def generate_sync(self, request: VideoRequest, destination: Any) -> SyncResult:
        """One paid blocking call (``POST /v1/{model}``) whose MP4 body is streamed to ``destination``.

        The read timeout is ten times the connection's ``timeout``. The call is billed once it answers 200:
        a body cut short raises :class:`Sora2DownloadError` naming the request id (it cannot be resumed).
        """
        connect, read = self.timeouts
        with open_destination(destination) as fh:  # opened first: a bad destination fails before paying
            response, paid = self._paid_post(request, "v1", stream=True, timeout=(connect, read * SYNC_TIMEOUT_FACTOR))
            with response:
                request_id = response.headers.get("x-request-id")
                with VideoSink(fh, f"{paid.endpoint} request {request_id}") as sink:
                    download = self._sync_body(response, sink)
        return SyncResult(
            request_id=request_id,
            download=download,
            cost=answers.to_float(response.headers.get("x-cost")),
            remaining_credits=answers.to_float(response.headers.get("x-remaining-credits")),
            generation_seconds=answers.to_float(response.headers.get("x-generation-time")),
        )

    def _sync_body(self, response: requests.Response, sink: VideoSink) -> DownloadResult:
        """Stream the v1 body; when Segmind answered JSON with an output URL instead, download that URL."""
        if "json" in (response.headers.get("Content-Type") or ""):
            url = answers.output_url(answers.json_body(response) or {})
            if not url:
                raise Sora2DownloadError(f"{sink.what}: JSON answer without an output URL (billed)")
            self._transport().retrying()(self._download_attempt, url, sink)
            return sink.finish()
        try:
            sink.take(response)
            return sink.finish()
        except IncompleteDownloadError as err:
            raise Sora2DownloadError(f"{err}; the call was billed and its body cannot be resumed") from err

    def download(self, url: str, destination: Any) -> DownloadResult:
        """Stream a finished video to ``destination`` (ObjectStoragePath, path, or open binary file).

        Memory stays within a few 1 MiB chunks. A short read resumes with ``Range`` (or re-reads and skips what
        was written when the server ignores it); the MP4 signature is checked. The API key is not sent.
        """
        with open_destination(destination) as fh, VideoSink(fh, f"download of {url}") as sink:
            self._transport().retrying()(self._download_attempt, url, sink)
        return sink.finish()

    def _download_attempt(self, url: str, sink: VideoSink) -> None:
        headers = sink.request_headers()
        with self._transport().send("GET", url, what=sink.what, stream=True, headers=headers, keyed=False) as answer:
            if sink.written:
                self.log.info("Resuming %s at byte %d (HTTP %d)", url, sink.written, answer.status_code)
            sink.take(answer)
        sink.finish()

    def upload_image(self, source: Any) -> str:
        """Host a local or object-storage image on Segmind and return its public URL (for ``input_reference``).

        ``source``: a local path, a ``file://`` or ``s3://...`` URL, or an ``ObjectStoragePath``.
        The upload is retried like a GET: a repeat at worst stores the same image twice, for free.
        """
        path = as_path(source)
        with path.open("rb") as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise ValueError(f"source: {source} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB")
        url, what = f"{self.upload_url}/upload-asset", f"upload of {path.name}"
        _, body = self._transport().call_json(
            "POST", url, what=what, json={"data_urls": [answers.image_data_url(data, path.name)]}
        )
        urls = body.get("file_urls") if isinstance(body, dict) else None
        if not isinstance(urls, list) or not urls or not isinstance(urls[0], str):
            raise Sora2Error(f"{what}: the answer has no file_urls", segmind_message=str(body)[:300])
        return urls[0]

    # ------------------------------------------------------------------ async (triggers)

    async def aprepare(self) -> None:
        """Everything the calls need from Airflow, done where this Airflow's triggerer wants it (on the event
        loop's thread on 3.1+, inside ``sync_to_async`` before: :mod:`sora2_provider.compat`): look the connection
        up, read its extras and register the key's mask. The worker threads of the calls below then use plain
        values only (on Airflow 3.1 a supervisor message from such a thread takes the triggerer down)."""
        if self._conn is None:
            try:
                self._conn = await aget_connection(self.sora2_conn_id)
            except Exception as err:
                raise self._undefined(err) from None
        await arun_airflow_call(self.get_conn)  # builds the session, reads the extras, masks the key

    async def _in_thread(self, method: Callable[..., T], *args: Any) -> T:
        await self.aprepare()
        return await self._transport().in_thread(method, *args)

    async def aget_status(self, request_id: str) -> JobStatus:
        """:meth:`get_status` in a worker thread: the event loop never blocks."""
        return await self._in_thread(self.get_status, request_id)

    async def aget_result(self, request_id: str) -> JobResult:
        """:meth:`get_result` in a worker thread."""
        return await self._in_thread(self.get_result, request_id)

    async def aget_credits(self) -> dict[str, float]:
        """:meth:`get_credits` in a worker thread."""
        return await self._in_thread(self.get_credits)

    async def aget_request_record(self, request_id: str) -> HistoryRecord:
        """:meth:`get_request_record` in a worker thread (recovers a job whose v2 record expired)."""
        return await self._in_thread(self.get_request_record, request_id)

    async def afind_requests(self, since: datetime, per_page: int = 100) -> list[HistoryRecord]:
        """:meth:`find_requests` (every model and status, newest first, back to ``since``) in a worker thread."""
        return await self._in_thread(lambda: self.find_requests(since=since, per_page=per_page))
