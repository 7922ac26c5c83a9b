"""Read-only ledger queries for monitoring (metrics, alerts). Nothing here writes.

Kept apart from `ledger.py`, the only module that changes a sweep's state: these functions take
the engine and read the same tables, so the monitoring side can grow without touching the code
that guards transitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

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


# --- `sweeper status` ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSweep:
    id: int
    address: str
    token: str
    state: str
    attempts: int
    send_attempts: int
    last_error: str | None
    updated_at: datetime


def oldest_by_state(engine: Engine) -> dict[str, datetime]:
    """For each open state: when its longest-waiting sweep last changed (entered it, or was released
    with a reason). Open states with no sweep are absent."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(sweeps.c.state, func.min(sweeps.c.updated_at).label("oldest"))
            .where(sweeps.c.state.in_(sorted(s.value for s in OPEN_STATES)))
            .group_by(sweeps.c.state)
        ).all()
    return {str(r.state): _aware(r.oldest) for r in rows}


def failing_sweeps(engine: Engine, *, limit: int = 20) -> list[OpenSweep]:
    """Open sweeps with a counted failure (`attempts` or `send_attempts`) and its last error,
    longest-failing first."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                sweeps.c.id,
                sweeps.c.address,
                sweeps.c.token,
                sweeps.c.state,
                sweeps.c.attempts,
                sweeps.c.send_attempts,
                sweeps.c.last_error,
                sweeps.c.updated_at,
            )
            .where(
                sweeps.c.state.in_(sorted(s.value for s in OPEN_STATES)),
                sweeps.c.last_error.is_not(None),
                # A counted failure, not a wait ("order not found (yet)", "resources missing"),
                # which also leaves a last_error behind.
                (sweeps.c.attempts + sweeps.c.send_attempts) > 0,
            )
            .order_by(sweeps.c.updated_at, sweeps.c.id)
            .limit(limit)
        ).all()
    return [
        OpenSweep(
            id=int(r.id),
            address=str(r.address),
            token=str(r.token),
            state=str(r.state),
            attempts=int(r.attempts),
            send_attempts=int(r.send_attempts),
            last_error=r.last_error,
            updated_at=r.updated_at,
        )
        for r in rows
    ]


def last_provider_balance(engine: Engine) -> tuple[int, datetime] | None:
    """The provider balance the newest order recorded (sun) and when: `status` without a daemon."""
    with engine.connect() as conn:
        row = conn.execute(
            select(sweeps.c.provider_balance_sun, sweeps.c.updated_at)
            .where(sweeps.c.provider_balance_sun.is_not(None))
            .order_by(sweeps.c.id.desc())
            .limit(1)
        ).first()
    return None if row is None else (int(row.provider_balance_sun), row.updated_at)


def last_activity(engine: Engine) -> datetime | None:
    """When the ledger last changed a sweep (a daemon at work leaves this recent)."""
    with engine.connect() as conn:
        value = conn.execute(select(func.max(sweeps.c.updated_at))).scalar()
    return None if value is None else _aware(value)


def _aware(value: datetime) -> datetime:
    # min()/max() over a TypeDecorator column come back through its type on both backends; a naive
    # value (SQLite aggregate) is UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
