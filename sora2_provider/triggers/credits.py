"""Trigger that waits, without blocking the triggerer's event loop, until the Segmind balance is enough.

Also home of :class:`CreditCheck`, the one place that turns a balance and a requirement into
``available``, ``required`` and ``shortfall`` (used by both the sensor and the trigger).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from sora2_provider.exceptions import Sora2AuthError, Sora2Error, Sora2NotFoundError, Sora2TransientError
from sora2_provider.job_events import Outage, OutagePolicy

__all__ = ["CreditCheck", "CreditsTrigger", "credit_error_message"]


@dataclass(frozen=True)
class CreditCheck:
    """A balance compared with a requirement.

    ``available`` is ``credits + free_credits`` when free credits count, else ``credits``. ``allowance``, when
    set, is what the daily spend cap (``max_spend_per_day``) still allows today; it must cover ``required`` too.
    """

    credits: float
    free_credits: float
    available: float
    required: float
    allowance: float | None = None

    @classmethod
    def from_balance(
        cls, balance: Mapping[str, Any], required: float, include_free_credits: bool, allowance: float | None = None
    ) -> CreditCheck:
        """Build a check from the hook's ``{"credits": ..., "free_credits": ...}``."""
        credits = float(balance.get("credits") or 0.0)
        free_credits = float(balance.get("free_credits") or 0.0)
        available = credits + free_credits if include_free_credits else credits
        allowance = balance.get("allowance") if allowance is None else allowance
        allowance = None if allowance is None else float(allowance)
        return cls(credits, free_credits, round(available, 4), float(required), allowance)

    @property
    def satisfied(self) -> bool:
        return self.available >= self.required and (self.allowance is None or self.allowance >= self.required)

    @property
    def shortfall(self) -> float:
        """Credits still missing (0.0 when the balance is enough)."""
        return round(max(0.0, self.required - self.available), 4)

    def as_xcom(self) -> dict[str, float]:
        """The sensor's XCom value: plain JSON (``allowance`` only under a spend cap)."""
        xcom = {
            "credits": self.credits,
            "free_credits": self.free_credits,
            "available": self.available,
            "required": self.required,
        }
        return xcom if self.allowance is None else {**xcom, "allowance": self.allowance}

    def describe(self) -> str:
        """One log line: balance, requirement and shortfall."""
        return (
            f"Segmind balance: credits={self.credits:.4f}, free_credits={self.free_credits:.4f}, "
            f"available={self.available:.4f}; required={self.required:.4f}; shortfall={self.shortfall:.4f}"
            + ("" if self.allowance is None else f"; allowed today by max_spend_per_day={self.allowance:.4f}")
        )


class CreditsTrigger(BaseTrigger):
    """Poll Segmind's free credits call every ``poke_interval`` seconds until the balance covers ``required``.

    Fires exactly one event:

    * ``{"status": "success", "credits", "free_credits", "available", "required"}`` once the balance is enough;
    * ``{"status": "error", "message"}`` for a bad key or a missing credit record (waiting cannot help);
    * ``{"status": "timeout", "message", ...}`` when ``timeout_at`` (epoch seconds) passes first. The
      scheduler enforces the deferral timeout too; this one also holds where no scheduler runs
      (``dag.test()``).

    Transient errors (429, 5xx, dropped connections) are ridden out: one line when Segmind stops answering, one
    when it answers again, checks backing off to one a minute meanwhile (``job_events.Outage``; the connection
    extra ``max_outage`` gives up sooner with an ``error`` event). Only
    primitives are serialized; the API key stays in the connection.

    :param required: credits the balance must reach.
    :param include_free_credits: count the account's free credits towards the balance.
    :param sora2_conn_id: the ``sora2`` connection to read the key from.
    :param poke_interval: seconds between two balance checks.
    :param timeout_at: optional wall-clock deadline (``time.time()`` seconds) after which to give up.
    :param respect_spend_cap: also wait while the connection's ``max_spend_per_day`` allows less than
        ``required`` today (the allowance is read from the request history in a worker thread).
    """

    def __init__(
        self,
        required: float,
        include_free_credits: bool = True,
        sora2_conn_id: str = "sora2_default",
        poke_interval: float = 60.0,
        timeout_at: float | None = None,
        respect_spend_cap: bool = False,
    ) -> None:
        super().__init__()
        self.respect_spend_cap = bool(respect_spend_cap)
        self.required = float(required)
        self.include_free_credits = bool(include_free_credits)
        self.sora2_conn_id = sora2_conn_id
        self.poke_interval = float(poke_interval)
        self.timeout_at = None if timeout_at is None else float(timeout_at)
        self._last_check: CreditCheck | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "required": self.required,
                "include_free_credits": self.include_free_credits,
                "sora2_conn_id": self.sora2_conn_id,
                "poke_interval": self.poke_interval,
                "timeout_at": self.timeout_at,
                "respect_spend_cap": self.respect_spend_cap,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from sora2_provider.hooks.sora2 import Sora2Hook  # lazy: the hook (requests) stays out of DAG parsing

        hook = Sora2Hook(sora2_conn_id=self.sora2_conn_id)
        try:
            await hook.aprepare()
            outage = Outage(f"the balance of {self.sora2_conn_id!r}", OutagePolicy.from_extras(hook.extras), self.log)
        except Sora2Error as err:
            yield TriggerEvent({"status": "error", "message": credit_error_message(err, self.sora2_conn_id)})
            return
        while True:
            payload = await self._check_once(hook, outage)
            if payload is None:
                payload = self._timeout_payload()
            if payload is not None:
                yield TriggerEvent(payload)
                return
            await asyncio.sleep(self._next_sleep(outage.delay(self.poke_interval)))

    async def _check_once(self, hook: Any, outage: Outage) -> dict[str, Any] | None:
        """One balance check: the event payload when done, ``None`` to keep waiting (through an outage too)."""
        try:
            with outage.single_attempts(hook):
                balance = await hook.aget_credits()
            if self.respect_spend_cap:  # the connection and its extras were read on this thread just above
                allowed = await asyncio.to_thread(hook.spend_allowance)
                balance = balance if allowed is None else {**balance, "allowance": allowed[0]}
        except Sora2TransientError as err:
            outage.failed(err)
            return {"status": "error", "message": outage.gave_up(err)} if outage.exhausted else None
        except Sora2Error as err:  # a refused key, no credit record, an unusable connection: waiting cannot help
            return {"status": "error", "message": credit_error_message(err, self.sora2_conn_id)}
        outage.answered()
        check = CreditCheck.from_balance(balance, self.required, self.include_free_credits)
        self.log.info("%s", check.describe())
        self._last_check = check
        return {"status": "success", **check.as_xcom()} if check.satisfied else None

    def _timeout_payload(self) -> dict[str, Any] | None:
        if self.timeout_at is None or time.time() < self.timeout_at:
            return None
        last = self._last_check
        seen = f" Last seen: {last.describe()}." if last is not None else ""
        message = f"Sensor has timed out waiting for {self.required:.4f} Segmind credits.{seen}"
        return {"status": "timeout", "message": message}

    def _next_sleep(self, interval: float) -> float:
        if self.timeout_at is None:
            return interval
        return max(0.0, min(interval, self.timeout_at - time.time()))


def credit_error_message(err: Exception, sora2_conn_id: str) -> str:
    """A message telling the user what to fix for an error that waiting cannot cure."""
    if isinstance(err, Sora2AuthError):
        hint = f"the API key of connection {sora2_conn_id!r} was refused; fix the key"
    elif isinstance(err, Sora2NotFoundError):
        hint = f"Segmind has no credit record for the key of connection {sora2_conn_id!r}; check the account"
    else:
        hint = f"connection {sora2_conn_id!r} cannot be used; fix it"
    return f"Cannot read the Segmind balance: {hint} ({err})"
