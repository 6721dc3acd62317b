"""What the metadata DB knows about generation task instances (their XComs, rendered fields and job records),
read by the plugin's routes in the api-server only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from airflow.models.dag import DagModel
from airflow.models.dagrun import DagRun
from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
from airflow.models.taskinstance import TaskInstance as TI
from sqlalchemy import and_, func, or_, select

from sora2_provider.state import JOB_RECORD_KEY
from sora2_provider.xcom import ERROR_XCOM_KEY as ERROR_KEY

try:
    from airflow.models.xcom import XComModel
except ImportError:  # Airflow 2, whose XCom table is ``XCom``: no plugin serves there, the module still imports
    from airflow.models.xcom import XCom as XComModel  # type: ignore[no-redef]

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

OPERATOR = "Sora2GenerateVideoOperator"
RESULT_KEY = "return_value"
UNMAPPED = -1


class BadIdentity(Exception):
    """A task-instance identity that names nothing usable: ``status`` 404 (no such thing), 400 (not a video, or a
    uri that is not the task's output) or 502 (its store did not answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Identity:
    """One task instance: what the routes take instead of any path."""
    dag_id: str
    run_id: str
    task_id: str
    map_index: int = UNMAPPED

    @classmethod
    def parse(cls, dag_id: str | None, run_id: str | None, task_id: str | None, map_index: str | None) -> Identity:
        """From query parameters; ``{MAP_INDEX}`` (what the UI leaves for an unmapped task) or nothing is -1."""
        missing = [name for name, value in (("dag_id", dag_id), ("run_id", run_id), ("task_id", task_id)) if not value]
        if missing:
            raise BadIdentity(400, f"missing {', '.join(missing)}: a video is named by dag_id, run_id, task_id "
                                    "and map_index")
        text = (map_index or "").strip()
        if text in ("", "{MAP_INDEX}"):
            index = UNMAPPED
        else:
            try:
                index = int(text)
            except ValueError:
                raise BadIdentity(400, f"map_index {text!r} is not an integer") from None
            if index < UNMAPPED:
                raise BadIdentity(400, f"map_index {index} is not -1 (unmapped) or a mapped task's index")
        assert dag_id and run_id and task_id
        return cls(dag_id, run_id, task_id, index)

    def query(self) -> dict[str, str]:
        return {"dag_id": self.dag_id, "run_id": self.run_id, "task_id": self.task_id, "map_index": str(self.map_index)}


@dataclass
class Generation:
    """A generation task instance and what it left in the metadata DB."""
    identity: Identity
    state: str | None
    start_date: datetime | None
    end_date: datetime | None
    try_number: int
    result: dict[str, Any] | None = None
    error: str | None = None
    rendered: dict[str, Any] = field(default_factory=dict)
    job_record: dict[str, Any] | None = None
    stored_at: datetime | None = None

    @property
    def uri(self) -> str | None:
        uri = (self.result or {}).get("uri")
        return uri if isinstance(uri, str) and uri else None

    @property
    def has_video(self) -> bool:
        return self.state == "success" and self.uri is not None

    def fact(self, name: str) -> Any:
        """A fact of the video: from the XCom dict, else (no video yet) from the rendered template fields."""
        if self.result and self.result.get(name) is not None:
            return self.result[name]
        return self.rendered.get(name)

    def status_line(self, now: datetime) -> str | None:
        """Why there is no video to play, in one line; None when there is one."""
        state = self.state or "not scheduled yet"
        if self.has_video:
            return None
        if state == "success":
            return "the task succeeded but left no video record (its XCom return_value is gone)"
        if state in ("failed", "up_for_retry"):
            reason = self.error or "no reason recorded by the operator; the task log has it"
            prefix = "failed" if state == "failed" else f"try {self.try_number} failed, a retry is scheduled"
            return f"{prefix}: {reason}"
        if state in ("running", "deferred", "up_for_reschedule"):
            return self._rendering_line(now)
        if state in ("skipped", "upstream_failed", "removed"):
            return f"no video: the task was {state.replace('_', ' ')}"
        return f"not started yet (state: {state})"

    def _rendering_line(self, now: datetime) -> str:
        submitted = (self.job_record or {}).get("submitted_at")
        request_id = (self.job_record or {}).get("request_id")
        if submitted and request_id:
            when = _parse_time(submitted)
            return f"still rendering, submitted {_ago(now, when)} (request {request_id})"
        if self.job_record:
            return "submitting the job to Segmind"
        started = f", started {_ago(now, self.start_date)}" if self.start_date else ""
        return f"still rendering{started}"


def _parse_time(text: str) -> datetime | None:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _ago(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "at an unknown time"
    minutes = int((now - then).total_seconds() // 60)
    if minutes < 1:
        return "less than a minute ago"
    if minutes < 120:
        return f"{minutes} min ago"
    return f"{minutes // 60} h ago"


# ---------------------------------------------------------------------------------------------- one task instance


def load_generation(session: Session, identity: Identity) -> Generation:
    """The generation task instance ``identity`` names, or :class:`BadIdentity` saying what is wrong with it."""
    ti = session.scalar(
        select(TI).where(
            TI.dag_id == identity.dag_id,
            TI.run_id == identity.run_id,
            TI.task_id == identity.task_id,
            TI.map_index == identity.map_index,
        )
    )
    if ti is None:
        raise BadIdentity(404, _missing(session, identity))
    if ti.operator != OPERATOR:
        raise BadIdentity(
            400, f"task {identity.task_id!r} runs {ti.operator or 'another operator'}, not {OPERATOR}: it has no video"
        )
    generation = Generation(identity, ti.state, ti.start_date, ti.end_date, ti.try_number or 0)
    xcoms = _xcoms(session, [identity])
    generation.result, generation.stored_at = xcoms.get((identity, RESULT_KEY), (None, None))
    generation.error = _one_line(xcoms.get((identity, ERROR_KEY), (None, None))[0])
    generation.rendered = _rendered(session, [identity]).get(identity, {})
    if not generation.has_video and generation.state in ("running", "deferred", "up_for_reschedule"):
        generation.job_record = _job_record(session, identity)
    return generation


def _missing(session: Session, identity: Identity) -> str:
    """The first part of ``identity`` that names nothing, as one line."""
    if session.scalar(select(DagModel.dag_id).where(DagModel.dag_id == identity.dag_id)) is None:
        return f"no DAG {identity.dag_id!r}"
    run = select(DagRun.id).where(DagRun.dag_id == identity.dag_id, DagRun.run_id == identity.run_id)
    if session.scalar(run) is None:
        return f"DAG {identity.dag_id!r} has no run {identity.run_id!r}"
    indexes = sorted(
        session.scalars(
            select(TI.map_index).where(
                TI.dag_id == identity.dag_id, TI.run_id == identity.run_id, TI.task_id == identity.task_id
            )
        )
    )
    if not indexes:
        return f"run {identity.run_id!r} of DAG {identity.dag_id!r} has no task {identity.task_id!r}"
    if indexes == [UNMAPPED]:
        return f"task {identity.task_id!r} is not mapped: it has no map index {identity.map_index}"
    return f"task {identity.task_id!r} has no map index {identity.map_index} (it has {indexes[0]} to {indexes[-1]})"


def _one_line(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text.splitlines()[0][:1000] if text else None


def _xcoms(session: Session, identities: list[Identity]) -> dict[tuple[Identity, str], tuple[Any, datetime]]:
    """The ``return_value`` and ``sora2_error`` XComs of these task instances, deserialized."""
    if not identities:
        return {}
    rows = session.execute(
        select(XComModel).where(
            XComModel.key.in_((RESULT_KEY, ERROR_KEY)),
            _matches(XComModel, identities),
        )
    ).scalars()
    found = {}
    for row in rows:
        identity = Identity(row.dag_id, row.run_id, row.task_id, row.map_index)
        found[(identity, row.key)] = (XComModel.deserialize_value(row), row.timestamp)
    return found


def _rendered(session: Session, identities: list[Identity]) -> dict[Identity, dict[str, Any]]:
    """The rendered template fields of these task instances (Airflow keeps the last
    ``[core] max_num_rendered_ti_fields_per_task`` runs of each task)."""

    if not identities:
        return {}
    rows = session.execute(select(RTIF).where(_matches(RTIF, identities))).scalars()
    return {Identity(r.dag_id, r.run_id, r.task_id, r.map_index): dict(r.rendered_fields or {}) for r in rows}


def _matches(model: Any, identities: list[Identity]) -> Any:
    """A WHERE clause selecting exactly these task instances (an OR of ANDs: SQLite has no tuple IN)."""
    return or_(
        *(
            and_(
                model.dag_id == i.dag_id,
                model.run_id == i.run_id,
                model.task_id == i.task_id,
                model.map_index == i.map_index,
            )
            for i in identities
        )
    )


def _job_record(session: Session, identity: Identity) -> dict[str, Any] | None:
    """The job record in the task state store (Airflow 3.3+); None where Airflow has none or it holds none."""
    try:
        from airflow._shared.state import TaskScope  # lazy: version probe (Airflow 3.3+)
        from airflow.state import get_state_backend  # lazy: version probe (Airflow 3.3+)
    except ImportError:  # Airflow 3.1, 3.2: the record lives beside the output; the TI's start date is used
        return None
    scope = TaskScope(
        dag_id=identity.dag_id, run_id=identity.run_id, task_id=identity.task_id, map_index=identity.map_index
    )
    value = get_state_backend().get(scope, JOB_RECORD_KEY, session=session)
    try:
        record = json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


# ---------------------------------------------------------------------------------------------- many task instances


@dataclass(frozen=True)
class Filters:
    """The Sora 2 page's filters: one DAG, a date range (UTC days, inclusive) and a model."""
    dag_id: str | None = None
    since: date | None = None
    until: date | None = None
    model: str | None = None


def recent_generations(session: Session, dag_ids: set[str], filters: Filters, limit: int) -> list[Generation]:
    """The newest generation task instances of ``dag_ids`` (the DAGs the user may read) matching ``filters``."""
    readable = dag_ids if filters.dag_id is None else dag_ids & {filters.dag_id}
    if not readable:
        return []
    started = func.coalesce(TI.start_date, TI.queued_dttm, TI.updated_at)
    query = select(TI).where(TI.operator == OPERATOR, TI.dag_id.in_(readable))
    if filters.since is not None:
        query = query.where(started >= _day_start(filters.since))
    if filters.until is not None:
        query = query.where(started < _day_start(filters.until) + timedelta(days=1))
    # Read more rows than shown: the model filter applies to the XCom and rendered values, in Python.
    tis = session.scalars(query.order_by(started.desc()).limit(limit * 4 if filters.model else limit)).all()
    identities = [Identity(ti.dag_id, ti.run_id, ti.task_id, ti.map_index) for ti in tis]
    xcoms, rendered = _xcoms(session, identities), _rendered(session, identities)
    generations = []
    for ti, identity in zip(tis, identities, strict=True):
        generation = Generation(identity, ti.state, ti.start_date, ti.end_date, ti.try_number or 0)
        generation.result, generation.stored_at = xcoms.get((identity, RESULT_KEY), (None, None))
        generation.error = _one_line(xcoms.get((identity, ERROR_KEY), (None, None))[0])
        generation.rendered = rendered.get(identity, {})
        if filters.model is None or generation.fact("model") == filters.model:
            generations.append(generation)
    return generations[:limit]


def generation_dag_ids(session: Session, dag_ids: set[str]) -> list[str]:
    """The DAGs among ``dag_ids`` that have generation task instances (the page's DAG filter)."""
    if not dag_ids:
        return []
    query = select(TI.dag_id).where(TI.operator == OPERATOR, TI.dag_id.in_(dag_ids)).distinct()
    return sorted(session.scalars(query))


def spend_per_day(session: Session, dag_ids: set[str], today: date, days: int = 30) -> dict[date, float]:
    """Credits charged per UTC day over the last ``days`` days (today included), from the XCom ``cost`` of the
    generations of ``dag_ids``; every day is present, 0.0 when nothing was spent."""

    first = today - timedelta(days=days - 1)
    totals = {first + timedelta(days=n): 0.0 for n in range(days)}
    if not dag_ids:
        return totals
    query = (
        select(XComModel)
        .join(
            TI,
            and_(
                TI.dag_id == XComModel.dag_id,
                TI.run_id == XComModel.run_id,
                TI.task_id == XComModel.task_id,
                TI.map_index == XComModel.map_index,
            ),
        )
        .where(
            TI.operator == OPERATOR,
            XComModel.dag_id.in_(dag_ids),
            XComModel.key == RESULT_KEY,
            XComModel.timestamp >= _day_start(first),
        )
    )
    for row in session.execute(query).scalars():
        value = XComModel.deserialize_value(row)
        cost = value.get("cost") if isinstance(value, dict) else None
        day = row.timestamp.astimezone(timezone.utc).date()
        if isinstance(cost, (int, float)) and not isinstance(cost, bool) and day in totals:
            totals[day] += float(cost)
    return totals


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
