"""Sensor that holds a DAG until the Segmind account can pay for the work it plans."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import BaseSensorOperator, PokeReturnValue

from sora2_provider._arguments import credits_from_text, is_literal
from sora2_provider.compat import AirflowFailException, AirflowSensorTimeout, AirflowSkipException, conf
from sora2_provider.exceptions import Sora2Error, Sora2TransientError
from sora2_provider.job_events import Outage, OutagePolicy
from sora2_provider.models import plan_cost
from sora2_provider.triggers.credits import CreditCheck, CreditsTrigger, credit_error_message

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

    from sora2_provider.hooks.sora2 import Sora2Hook

__all__ = ["CreditsSensor"]


class CreditsSensor(BaseSensorOperator):
    """Wait until the Segmind balance covers a number of credits or a plan of videos.

    Give exactly one of ``min_credits`` or ``jobs``. One credit is one US dollar; the cost of ``jobs``
    comes from the provider's price table (:func:`sora2_provider.models.plan_cost`), the same one the
    operator's ``max_cost`` guard uses.

    The XCom value is ``{"credits", "free_credits", "available", "required"}``, all floats. Every check
    logs the balance, the requirement and the shortfall. Transient API errors (429, 5xx, dropped
    connections) are logged as warnings and the sensor keeps waiting; a refused key (401/403) or an
    account with no credit record (404) fails at once without retries.

    :param min_credits: credits the balance must reach, a number >= 0. Templated.
    :param jobs: planned work instead of a number: a list of dicts with ``model``, ``duration``, ``size``
        and optional ``count``; the sensor waits for their total cost. Templated (also from XCom or
        ``expand``), so a mapped batch can pass its own plan.
    :param include_free_credits: count the account's free credits towards the balance (default ``True``).
    :param respect_spend_cap: when the connection sets ``max_spend_per_day``, also wait while the day's remaining
        allowance (the cap minus the spend of the last 24 h) is below the requirement (default ``True``; no
        effect without a cap).
    :param deferrable: wait in the triggerer instead of a worker slot (default
        ``[operators] default_deferrable``). ``timeout`` and ``soft_fail`` apply there too.
    :param sora2_conn_id: the ``sora2`` connection holding the API key (default ``sora2_default``).
    :param kwargs: the usual sensor arguments: ``poke_interval``, ``timeout``, ``mode``, ``soft_fail``,
        ``exponential_backoff``, ``max_wait`` ... and the operator ones (``task_id``, ``retries`` ...).
    """

    template_fields: Sequence[str] = ("min_credits", "jobs")
    ui_color = "#f3e8ff"

    def __init__(
        self,
        *,
        min_credits: float | str | None = None,
        jobs: list[dict[str, Any]] | str | None = None,
        include_free_credits: bool = True,
        respect_spend_cap: bool = True,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        sora2_conn_id: str = "sora2_default",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (min_credits is None) == (jobs is None):
            given = "both" if min_credits is not None else "neither"
            raise ValueError(
                "CreditsSensor: give exactly one of min_credits (a number of credits) or jobs "
                f"(planned videos); got {given}"
            )
        self.min_credits = min_credits
        self.jobs = jobs
        self.include_free_credits = include_free_credits
        self.respect_spend_cap = respect_spend_cap
        self.deferrable = deferrable
        self.sora2_conn_id = sora2_conn_id
        if is_literal(min_credits if jobs is None else jobs):
            self._required_credits_or_value_error()

    # -- the requirement -------------------------------------------------------------------------

    def _required_credits_or_value_error(self) -> float:
        if self.jobs is not None:
            return plan_cost(_parse_jobs(self.jobs))
        return credits_from_text("min_credits", self.min_credits)

    def _required_credits(self) -> float:
        """Credits needed, from the rendered fields; a bad value fails the task (a retry cannot fix it)."""
        try:
            return self._required_credits_or_value_error()
        except ValueError as err:
            raise AirflowFailException(f"CreditsSensor {self.task_id}: {err}") from err

    # -- checking the balance --------------------------------------------------------------------

    @cached_property
    def hook(self) -> Sora2Hook:
        """The Sora 2 hook of ``sora2_conn_id``."""
        from sora2_provider.hooks.sora2 import Sora2Hook  # lazy: the hook pulls requests, not needed at DAG parse

        return Sora2Hook(sora2_conn_id=self.sora2_conn_id)

    @cached_property
    def _outage(self) -> Outage:
        """Segmind failing since when (one line when it begins, one when it ends); the connection's ``max_outage``."""
        return Outage(f"the balance of {self.sora2_conn_id!r}", OutagePolicy.from_extras(self.hook.extras), self.log)

    def _read_balance(self) -> dict[str, Any] | None:
        """The balance, or ``None`` during an outage (the sensor keeps waiting; ``max_outage`` gives up)."""
        try:
            outage = self._outage
            with outage.single_attempts(self.hook):
                balance: dict[str, Any] = dict(self.hook.get_credits())
            if self.respect_spend_cap:
                allowed = self.hook.spend_allowance()
                if allowed is not None:
                    balance["allowance"] = allowed[0]
                    self.log.info("Spend cap: %s", allowed[1].describe())
        except Sora2TransientError as err:
            outage.failed(err)
            if outage.exhausted:
                raise AirflowFailException(outage.gave_up(err)) from None
            return None
        except Sora2Error as err:  # a refused key, no credit record, an unusable connection: waiting cannot help
            raise AirflowFailException(credit_error_message(err, self.sora2_conn_id)) from err
        outage.answered()
        return balance

    def poke(self, context: Context) -> PokeReturnValue:
        required = self._required_credits()
        balance = self._read_balance()
        if balance is None:
            return PokeReturnValue(is_done=False)
        check = CreditCheck.from_balance(balance, required, self.include_free_credits)
        self.log.info("%s", check.describe())
        return PokeReturnValue(is_done=check.satisfied, xcom_value=check.as_xcom())

    # -- deferrable mode -------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        started_at = time.time()
        first = self._first_poke(context)
        if first:
            self.log.info("Success criteria met. Exiting.")
            return first.xcom_value
        self.defer(
            trigger=CreditsTrigger(
                required=self._required_credits(),
                include_free_credits=self.include_free_credits,
                sora2_conn_id=self.sora2_conn_id,
                poke_interval=self.poke_interval,
                timeout_at=started_at + self.timeout,
                respect_spend_cap=self.respect_spend_cap,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def _first_poke(self, context: Context) -> PokeReturnValue:
        """Poke once before deferring, honouring ``soft_fail``, ``never_fail`` and ``silent_fail`` as the
        sensor loop of :class:`BaseSensorOperator` does."""
        try:
            return self.poke(context)
        except (AirflowFailException, AirflowSensorTimeout) as err:
            if self.soft_fail or self.never_fail:
                raise AirflowSkipException(f"Skipping due to soft_fail/never_fail: {err}") from err
            raise
        except AirflowSkipException:
            raise
        except Exception as err:
            if self.never_fail:
                raise AirflowSkipException(f"Skipping due to never_fail: {err}") from err
            if not self.silent_fail:
                raise
            self.log.exception("Sensor poke failed; deferring anyway (silent_fail)")
            return PokeReturnValue(is_done=False)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        """Airflow's own resume, plus ``soft_fail`` on a trigger timeout, which Airflow 3.0 leaves a failure."""
        try:
            return super().resume_execution(next_method, next_kwargs, context)
        except AirflowSensorTimeout as err:
            if self.soft_fail:
                raise AirflowSkipException(f"Skipping due to soft_fail: {err}") from err
            raise

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, float]:
        """Resume after :class:`CreditsTrigger`: the XCom dict on success, else fail (or skip with soft_fail)."""
        event = event or {}
        status = event.get("status")
        if status == "success":
            check = CreditCheck.from_balance(event, event["required"], self.include_free_credits)
            self.log.info("%s", check.describe())
            return check.as_xcom()
        message = event.get("message") or f"CreditsTrigger ended without a usable event: {event!r}"
        if status == "timeout":
            raise AirflowSensorTimeout(message)
        raise AirflowFailException(message)


def _parse_jobs(value: Any) -> Any:
    """Jobs as given, or parsed from a rendered template string (JSON or a Python literal)."""
    if not isinstance(value, str):
        return value
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(value)
        except (ValueError, SyntaxError, TypeError):
            continue
    raise ValueError(f"jobs: {value!r} is not a list of dicts with model, duration, size and optional count")
