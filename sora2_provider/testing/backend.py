"""The emulated Segmind account service: keys, balances, jobs, faults, history; no HTTP here.

Public and stable, like the rest of :mod:`sora2_provider.testing`. Job states are computed from the clock
when asked; a refusal is raised as :class:`Refusal`, which the HTTP layer turns into the contract's answer.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sora2_provider.models import DEFAULT_DURATION, MODELS, VideoRequest
from sora2_provider.testing._faults import ENDPOINTS, FAULT_KINDS, FAULT_STATUSES, Fault, check_fault
from sora2_provider.testing._refusal import Refusal, iso, rate_limit_headers

__all__ = [
    "DEFAULT_FAIL_MESSAGE",
    "ENDPOINTS",
    "FAULT_KINDS",
    "FAULT_STATUSES",
    "Account",
    "EmulatorState",
    "Fault",
    "Job",
    "Refusal",
    "iso",
    "rate_limit_headers",
]

QUEUED_FRACTION = 0.05
RECORD_TTL_SECONDS = 3600.0
OUTPUT_TTL_SECONDS = 7 * 24 * 3600.0
DEFAULT_FAIL_MESSAGE = "Video generation failed: the model could not render this prompt"


@dataclass
class Account:
    """A key's balance; ``credits`` None means the key works but has no balance record (credits call: 404)."""

    credits: float | None
    free_credits: float = 0.0

    @property
    def available(self) -> float:
        return (self.credits or 0.0) + self.free_credits

    def as_dict(self) -> dict[str, float | None]:
        return {"credits": self.credits, "free_credits": self.free_credits}

    def debit(self, amount: float) -> None:
        """Take ``amount`` from the free credits first, the rest from the credits."""
        from_free = min(self.free_credits, amount)
        self.free_credits = round(self.free_credits - from_free, 6)
        self.credits = round((self.credits or 0.0) - (amount - from_free), 6)


@dataclass
class Job:
    """One accepted generation (v1 or v2); its status is derived from the clock: QUEUED for the first 5% of its
    scaled generation time, then PROCESSING, then COMPLETED (charged once) or FAILED (never charged)."""

    request_id: str
    api_key: str
    api: str
    request: VideoRequest
    body: dict[str, Any]
    cost: float
    created_at: float
    started_at: float
    finished_at: float
    expires_at: float
    output_expires_at: float
    fail_message: str | None = None
    settled: bool = False
    charged: float = 0.0
    remaining_credits: float | None = None
    listed: bool = True  # False: left out of history listings (a lagging history)

    def status(self, now: float) -> str:
        """Terminal only once settled (see :meth:`EmulatorState.settle`), so COMPLETED always means charged."""
        if now < self.started_at:
            return "QUEUED"
        if not self.settled:
            return "PROCESSING"
        return "FAILED" if self.fail_message else "COMPLETED"

    def metrics(self, now: float) -> dict[str, Any]:
        queue_time = min(now, self.started_at) - self.created_at
        inference_time = max(0.0, min(now, self.finished_at) - self.started_at)
        metrics: dict[str, Any] = {
            "queue_time": round(queue_time, 3),
            "inference_time": round(inference_time, 3),
            "total_time": round(queue_time + inference_time, 3),
        }
        if self.status(now) == "COMPLETED":
            metrics.update(cost=self.charged, remaining_credits=self.remaining_credits)
        return metrics

    def ledger_entry(self, now: float) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "api": self.api,
            "model": self.request.model,
            "duration": self.request.duration,
            "size": self.request.size,
            "prompt": self.request.prompt,
            "status": self.status(now),
            "cost": self.cost,
            "charged": self.charged,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "error": self.fail_message if self.status(now) == "FAILED" else None,
            "api_key_suffix": self.api_key[-4:] if len(self.api_key) > 8 else "",
        }


@dataclass
class _Window:
    started: float
    calls: int = 0


@dataclass
class EmulatorState:
    """All mutable state of one emulator, guarded by one lock (the HTTP loop and test threads share it)."""

    time_scale: float = 1.0
    record_ttl_seconds: float = RECORD_TTL_SECONDS
    rate_limit_rpm: int | None = None
    rate_limit_window: float = 60.0
    accounts: dict[str, Account] = field(default_factory=dict)
    model_states: dict[str, str] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    request_log: list[dict[str, Any]] = field(default_factory=list)
    windows: dict[str, _Window] = field(default_factory=dict)
    assets: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # -- keys, rate limit, balances -------------------------------------------------------------------

    def authenticate(self, api_key: str | None) -> str:
        """Return the key when it is known, else refuse with 401 (a bearer header alone is no key)."""
        with self.lock:
            if not api_key or api_key not in self.accounts:
                raise Refusal(401, "Invalid API key")
            return api_key

    def count_call(self, api_key: str) -> None:
        """Count a keyed call in the key's fixed window (real seconds); refuse with 429 over ``rate_limit_rpm``."""
        if self.rate_limit_rpm is None:
            return
        now = time.time()
        with self.lock:
            window = self.windows.get(api_key)
            if window is None or now >= window.started + self.rate_limit_window:
                window = self.windows[api_key] = _Window(started=now)
            window.calls += 1
            if window.calls > self.rate_limit_rpm:
                raise Refusal(429, "Rate limit exceeded", rate_limit_headers(window.started + self.rate_limit_window))

    def set_rate_window(self, api_key: str, calls: int, ends_in: float) -> None:
        """Make the key's current rate-limit window hold ``calls`` keyed calls and end ``ends_in`` s from now."""
        if self.rate_limit_rpm is None:
            raise ValueError("set_rate_window: this emulator has no rate limit (start it with rate_limit_rpm)")
        if calls < 0 or not 0 < ends_in <= self.rate_limit_window:
            raise ValueError(f"set_rate_window: calls must be >= 0 and ends_in in (0, {self.rate_limit_window}]")
        with self.lock:
            self.windows[api_key] = _Window(started=time.time() + ends_in - self.rate_limit_window, calls=calls)

    def set_balance(self, api_key: str, credits: float | None, free_credits: float | None = None) -> None:
        with self.lock:
            previous = self.accounts.get(api_key)
            keep_free = previous.free_credits if previous else 0.0
            self.accounts[api_key] = Account(credits, keep_free if free_credits is None else free_credits)

    def balance(self, api_key: str) -> Account:
        """A copy of the key's account after charging every job completed by now; KeyError for an unknown key."""
        with self.lock:
            self.settle()
            account = self.accounts[api_key]
            return Account(account.credits, account.free_credits)

    def set_model_state(self, model: str, state: str) -> None:
        """Mark a model ``available``, ``retired`` (410) or ``forbidden`` (403)."""
        if state not in ("available", "retired", "forbidden"):
            raise ValueError(f"state: {state!r} is not one of 'available', 'retired', 'forbidden'")
        with self.lock:
            self.model_states[model] = state

    # -- faults ---------------------------------------------------------------------------------------

    def add_fault(
        self,
        endpoint: str,
        kind: str,
        *,
        on_call: int = 1,
        times: int = 1,
        status: int | None = None,
        message: str | None = None,
        delay: float | None = None,
        after_bytes: int | None = None,
    ) -> None:
        """Make calls ``on_call`` .. ``on_call + times - 1`` of ``endpoint`` (counted from now) misbehave."""
        check_fault(endpoint, kind, on_call, times, status, delay, after_bytes)
        with self.lock:
            done = self.calls.get(endpoint, 0)
            first = done + on_call
            self.faults.append(Fault(endpoint, kind, first, first + times - 1, status, message, delay, after_bytes))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def take_faults(self, endpoint: str) -> list[Fault]:
        """Count one call of ``endpoint`` and return the faults that apply to it."""
        with self.lock:
            number = self.calls[endpoint] = self.calls.get(endpoint, 0) + 1
            return [f for f in self.faults if f.endpoint == endpoint and f.first_call <= number <= f.last_call]

    # -- jobs -----------------------------------------------------------------------------------------

    def submit(self, api_key: str, api: str, model: str, body: dict[str, Any], fail_message: str | None = None) -> Job:
        """Validate and accept a job, or refuse (403/404/410, 400 (v2) or 422 (v1), 406)."""
        self.check_model(model)
        try:
            fields = (body.get("duration", DEFAULT_DURATION), body.get("size"), body.get("input_reference"))
            request = VideoRequest.create(body.get("prompt"), model, *fields)
        except ValueError as err:
            raise Refusal(422 if api == "v1" else 400, str(err)) from None
        with self.lock:
            self.settle()
            account = self.accounts[api_key]
            if account.available + 1e-9 < request.estimated_cost:
                raise Refusal(
                    406, f"Insufficient credits: balance {account.available:.2f}, required {request.estimated_cost:.2f}"
                )
            job = self._new_job(api_key, api, request, body, fail_message)
            self.jobs[job.request_id] = job
            return job

    def check_model(self, model: str) -> None:
        state = self.model_states.get(model, "available")
        if state == "retired":
            raise Refusal(410, f"Model {model} has been retired")
        if state == "forbidden":
            raise Refusal(403, f"Model {model} is not allowed for this account")
        if model not in MODELS:
            raise Refusal(404, f"Model {model} not found")

    def _new_job(self, api_key: str, api: str, request: VideoRequest, body: dict[str, Any], fail: str | None) -> Job:
        now = time.time()
        generation = MODELS[request.model].typical_generation_seconds * self.time_scale
        return Job(
            request_id=str(uuid.uuid4()),
            api_key=api_key,
            api=api,
            request=request,
            body=dict(body),
            cost=request.estimated_cost,
            created_at=now,
            started_at=now + generation * QUEUED_FRACTION,
            finished_at=now + generation,
            expires_at=now + self.record_ttl_seconds * self.time_scale,
            output_expires_at=now + OUTPUT_TTL_SECONDS * self.time_scale,
            fail_message=fail,
        )

    def settle(self, now: float | None = None) -> None:
        """Charge, in completion order, every job whose completion time has passed and is not charged yet."""
        now = time.time() if now is None else now
        with self.lock:
            due = sorted(
                (j for j in self.jobs.values() if not j.settled and j.finished_at <= now), key=lambda j: j.finished_at
            )
            for job in due:
                job.settled = True
                if not job.fail_message:
                    account = self.accounts[job.api_key]
                    account.debit(job.cost)
                    job.charged = job.cost
                    job.remaining_credits = account.credits

    def v2_job(self, api_key: str, request_id: str) -> Job:
        """The key's v2 job whose record has not expired, else 404 ``Request <id> not found``."""
        with self.lock:
            self.settle()
            job = self.jobs.get(request_id)
            if job is None or job.api != "v2" or job.api_key != api_key or time.time() >= job.expires_at:
                raise Refusal(404, f"Request {request_id} not found")
            return job

    def output_job(self, request_id: str) -> Job:
        """A COMPLETED job whose output has not expired (no key needed), else 404."""
        with self.lock:
            self.settle()
            job = self.jobs.get(request_id)
            now = time.time()
            if job is None or job.status(now) != "COMPLETED" or now >= job.output_expires_at:
                raise Refusal(404, f"Output {request_id} not found")
            return job

    def expire(self, request_id: str) -> None:
        """Expire the v2 record now (status and result answer 404; history and output still work)."""
        with self.lock:
            if request_id not in self.jobs:
                raise KeyError(request_id)
            self.jobs[request_id].expires_at = time.time()

    def unlist(self, request_id: str) -> None:
        """Leave a job out of history listings (as a lagging history would); status and result still work."""
        with self.lock:
            if request_id not in self.jobs:
                raise KeyError(request_id)
            self.jobs[request_id].listed = False

    def ledger(self) -> list[dict[str, Any]]:
        with self.lock:
            now = time.time()
            self.settle(now)
            return [job.ledger_entry(now) for job in self.jobs.values()]

    def running_jobs_peak(self) -> int:
        """Most jobs QUEUED or PROCESSING at one moment so far (an exact sweep over the jobs' intervals)."""
        now = time.time()
        with self.lock:
            events = [(job.created_at, 1) for job in self.jobs.values()]
            events += [(min(job.finished_at, now), -1) for job in self.jobs.values()]
        peak = running = 0
        for _, change in sorted(events):  # at equal times an end (-1) sorts before a start (+1)
            running += change
            peak = max(peak, running)
        return peak

    def charges(self) -> dict[str, float]:
        """``request_id -> credits charged`` for every charged job."""
        return {entry["request_id"]: entry["charged"] for entry in self.ledger() if entry["charged"]}

    def log_request(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.request_log.append(entry)

    def logged_requests(self) -> list[dict[str, Any]]:
        """A copy of the request log."""
        with self.lock:
            return [dict(entry) for entry in self.request_log]

    def reset(self) -> None:
        """Forget faults, jobs (ledger and history), uploads, call counts, rate windows and the request log."""
        with self.lock:
            for collection in (self.faults, self.request_log):
                collection.clear()
            for mapping in (self.jobs, self.calls, self.windows, self.assets):
                mapping.clear()

    # -- uploads --------------------------------------------------------------------------------------

    def store_asset(self, mime: str, content: bytes) -> str:
        """Keep an uploaded file; return its name (served at ``/assets/<name>``)."""
        name = f"{uuid.uuid4().hex}.{mime.rsplit('/', 1)[-1].split('+')[0]}"
        with self.lock:
            self.assets[name] = (mime, content)
        return name

    def asset(self, name: str) -> tuple[str, bytes]:
        with self.lock:
            if name not in self.assets:
                raise Refusal(404, f"Asset {name} not found")
            return self.assets[name]

    # -- history --------------------------------------------------------------------------------------

    def history_row(self, job: Job, output_url: str | None) -> dict[str, Any]:
        """A request-history row; never expires."""
        now = time.time()
        status = job.status(now)
        terminal = status in ("COMPLETED", "FAILED")
        return {
            "request_id": job.request_id,
            "model_name": job.request.model,
            "model_status": status if terminal else "PENDING",
            "credits_deduction": job.charged,
            "request_body": job.body,
            "generation_url": output_url if status == "COMPLETED" else None,
            "latency_ms": round((job.finished_at - job.created_at) * 1000) if terminal else None,
            "created_at": iso(job.created_at),
            "updated_at": iso(min(now, job.finished_at)),
            "error": job.fail_message if status == "FAILED" else None,
        }

    def history_job(self, api_key: str, request_id: str) -> Job:
        with self.lock:
            self.settle()
            job = self.jobs.get(request_id)
            if job is None or job.api_key != api_key:
                raise Refusal(404, f"Request {request_id} not found")
            return job

    def listed_jobs(self, api_key: str) -> list[Job]:
        """The key's jobs that request-history listings show (every one not :meth:`unlist`-ed), settled by now."""
        with self.lock:
            self.settle()
            return [job for job in self.jobs.values() if job.listed and job.api_key == api_key]
