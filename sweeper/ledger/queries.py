"""Read-only ledger queries for monitoring (metrics, alerts). Nothing here writes.

Kept apart from `ledger.py`, the only module that changes a sweep's state: these functions take
the engine and read the same tables, so the monitoring side can grow without touching the code
that guards transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, func, literal, select

from sweeper.domain import OPEN_STATES
from sweeper.ledger.ledger import scan_progress, sweeps
from sweeper.ledger.models import UTCDateTime


@dataclass(frozen=True)
class StuckSweep:
    id: int
    state: str
    since: datetime  # when a worker first claimed the row (its creation if never claimed)


@dataclass(frozen=True)
class StuckSweeps:
    """Open sweeps in progress (first claimed) since before a cut-off, whatever state they are in now."""

    count: int
    by_state: dict[str, int]
    oldest: tuple[StuckSweep, ...]  # up to `examples` of them, longest stuck first

    def __bool__(self) -> bool:
        return self.count > 0


def _stuck_since() -> ColumnElement[datetime]:
    """Since when each open sweep counts as "in progress": when a worker first claimed it.

    Never reset by a return to `queued` or by any later transition, so a row cycling between
    states (ordering -> queued -> ordering …, signed -> energy_ready …) still raises the stuck
    alert. A row never claimed counts from its creation.
    """
    return func.coalesce(sweeps.c.first_claimed_at, sweeps.c.created_at, type_=UTCDateTime())


def stuck_sweeps(engine: Engine, *, entered_before: datetime, examples: int = 10) -> StuckSweeps:
    """Open sweeps first claimed strictly before `entered_before` (= now - stuck_alert_seconds).

    A row that entered its state exactly at the cut-off is not stuck yet; one microsecond earlier is.
    """
    if entered_before.tzinfo is None:
        raise ValueError("entered_before must be an aware UTC datetime")
    since = _stuck_since().label("since")
    cutoff = literal(entered_before, type_=UTCDateTime())
    inner = (
        select(sweeps.c.id, sweeps.c.state, since)
        .where(sweeps.c.state.in_(sorted(s.value for s in OPEN_STATES)))
        .subquery("open_sweeps")
    )
    stuck = inner.c.since < cutoff
    with engine.connect() as conn:
        by_state = {
            str(state): int(count)
            for state, count in conn.execute(
                select(inner.c.state, func.count()).where(stuck).group_by(inner.c.state)
            )
        }
        oldest: tuple[StuckSweep, ...] = ()
        if examples > 0 and by_state:
            oldest = tuple(
                StuckSweep(id=int(r.id), state=str(r.state), since=r.since)
                for r in conn.execute(
                    select(inner.c.id, inner.c.state, inner.c.since)
                    .where(stuck)
                    .order_by(inner.c.since, inner.c.id)
                    .limit(examples)
                )
            )
    return StuckSweeps(count=sum(by_state.values()), by_state=by_state, oldest=oldest)


def last_completed_scan(engine: Engine) -> datetime | None:
    """When the most recent completed detection pass (of any kind) finished; None if none has.

    A pass in progress has cleared its row's `completed_at`, so while the first pass after a start
    runs this may be None even though an earlier process completed passes.
    """
    with engine.connect() as conn:
        value: datetime | None = conn.execute(select(func.max(scan_progress.c.completed_at))).scalar()
    return value
