"""When a Sora 2 job can plausibly be done: render times learned in this process, and the prior before that.

The history watcher (``_watcher.py``) reads Segmind's request history only once some watched job can be done,
so that a job costs about one read, not one read per poll interval. "Can be done" is judged per kind of job,
``(model, duration, size)``:

* **learned**: the lower quartile of the last :data:`SAMPLES` render times (``generation_seconds``, the history
  row's ``latency_ms``) of jobs of that kind this process saw complete, shared by every watcher of the process.
  The job is first read at that age; a slower one is read again every poll interval (a quartile reads a typical
  job a little early, which costs a read or two, rather than late, which would cost latency).
* **prior**, while nothing of that kind completed here: Segmind's typical render time of the model
  (``models.MODELS``: 180 s sora-2, 400 s sora-2-pro). A job is read one interval after its submit, at the
  prior's halves down to two intervals and at the prior (for sora-2 at 10 s: 10, 22.5, 45, 90 and 180 s), then
  every interval: a prior that is too high costs at most about half the render time once, a prior that is too
  low a few reads once.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from sora2_provider.models import MODELS

#: Render times kept per kind of job.
SAMPLES = 20
#: The quantile of them a job of that kind is first read at.
QUANTILE = 0.25
#: Prior of a model this provider does not know (sora-2's).
DEFAULT_PRIOR = 180.0

RenderKind = tuple[str, int, str]


def render_kind(model: str | None, duration: int | str | None, size: str | None) -> RenderKind | None:
    """The kind of a job, or None when the trigger was not told (a trigger serialized by an older version)."""
    if not model or duration in (None, "") or not size:
        return None
    try:
        return (model, int(duration), size)
    except (TypeError, ValueError):
        return None


@dataclass
class RenderTimes:
    """Render times of the jobs this process saw complete, per kind of job."""

    samples: dict[RenderKind, deque[float]] = field(default_factory=dict)

    def learn(self, kind: RenderKind | None, seconds: float | None) -> None:
        """Remember that a job of ``kind`` rendered in ``seconds`` (from submit to COMPLETED)."""
        if kind is None or seconds is None or not math.isfinite(seconds) or seconds <= 0:
            return
        self.samples.setdefault(kind, deque(maxlen=SAMPLES)).append(float(seconds))

    def learned(self, kind: RenderKind | None) -> float | None:
        """The age at which a job of ``kind`` is first read, once jobs of that kind completed here."""
        times = sorted(self.samples.get(kind, ())) if kind is not None else []
        if not times:
            return None
        return times[min(len(times) - 1, int(QUANTILE * len(times)))]

    def expected(self, kind: RenderKind | None, interval: float) -> float:
        """How long a job of ``kind`` is expected to render: learned, else the prior (one interval: unknown)."""
        if kind is None:
            return interval
        learned = self.learned(kind)
        return self.prior(kind) if learned is None else learned

    @staticmethod
    def prior(kind: RenderKind | None) -> float:
        """Segmind's typical render time of the model (models.py)."""
        spec = MODELS.get(kind[0]) if kind is not None else None
        return spec.typical_generation_seconds if spec is not None else DEFAULT_PRIOR

    def next_read_age(self, kind: RenderKind | None, interval: float, read_at_age: float | None) -> float:
        """The age (seconds since the submit) at which a job of ``kind`` should next be read, given the age at
        which the last history read covered it (None: never).

        ``kind`` None (unknown): every interval, as a job with no expectation. Learned: at the learned age, then
        every interval. Otherwise the prior ages (:func:`prior_ages`), then every interval. A read
        less than half an interval before one of those ages counts as the read at that age.
        """
        last = -math.inf if read_at_age is None else read_at_age
        if kind is None:
            return max(last + interval, interval)
        learned = self.learned(kind)
        ages = [learned] if learned is not None else prior_ages(self.prior(kind), interval)
        return next((age for age in ages if age > last + interval / 2), last + interval)

    def clear(self) -> None:
        self.samples.clear()


def prior_ages(prior: float, interval: float) -> list[float]:
    """One interval, the prior's halves down to two intervals, and the prior: 10, 22.5, 45, 90, 180."""
    ages = [prior]
    while ages[-1] / 2 >= 2 * interval:
        ages.append(ages[-1] / 2)
    return sorted({min(interval, prior), *ages})


#: One per process, shared by every watcher (a render time is Segmind's, not a connection's).
RENDER_TIMES = RenderTimes()
