"""The database's clock: the one clock leases, due times and the order-settle window compare against.

Several hosts have several clocks; two workers whose host clocks differ by minutes would otherwise
disagree about whether a lease ran out or whether an earlier order POST can still land (and then
order twice). Every worker reads the time from the one database instead: sampled now and then,
and carried forward between samples on the process's monotonic clock (which a wall-clock step
does not move), so reading it costs no query.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

RESYNC_SECONDS = 60.0


class DatabaseClock:
    """`now()` = the database's current time (+ `offset`, the seam tests use to move time)."""

    def __init__(
        self, engine: Engine, *, offset: timedelta = timedelta(0), resync_seconds: float = RESYNC_SECONDS
    ) -> None:
        self.engine = engine
        self.offset = offset
        self.resync_seconds = resync_seconds
        self._lock = threading.Lock()
        self._base: datetime | None = None
        self._sampled_at = 0.0

    def __call__(self) -> datetime:
        with self._lock:
            if self._base is None or time.monotonic() - self._sampled_at >= self.resync_seconds:
                self._base, self._sampled_at = self._sample(), time.monotonic()
            return self._base + timedelta(seconds=time.monotonic() - self._sampled_at) + self.offset

    def _sample(self) -> datetime:
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                value = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
            else:  # SQLite: the database file's host clock, in UTC
                value = conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
        if isinstance(value, str):
            value = datetime.fromisoformat(value).replace(tzinfo=UTC)
        if not isinstance(value, datetime):
            raise TypeError(f"the database answered {value!r} for its time")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def __repr__(self) -> str:
        return f"DatabaseClock(offset={self.offset})"
