"""The database's clock: the one clock leases, due times and the order-settle window compare against.

Several hosts have several clocks; two workers whose host clocks differ by minutes would otherwise
disagree about whether a lease ran out or whether an earlier order POST can still land (and then
order twice). Every worker reads the time of the one database instead.

- SQLite runs on this host: its clock is the host clock; nothing to measure.
- Postgres: the server's `clock_timestamp()` is sampled and kept as an offset from the host's wall
  clock (half the round trip corrected), so reading the time costs no query and follows the wall
  clock through a suspend or a VM pause. The offset is re-measured every minute in a background
  thread (never inside a caller's transaction, never blocking the event loop); a failed measurement
  keeps the last offset and is logged. The first measurement happens on first use.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Engine, text

from sweeper import faults

log = structlog.get_logger(__name__)

RESYNC_SECONDS = 60.0


def _host_now() -> datetime:
    """This host's wall clock (a seam: tests give the host a wrong clock)."""
    return _wall_clock()


# The fault matrix's wrong host clock (sweeper/faults.py; the plain wall clock unless its env var is
# set): SQLite's clock is this host's, so it is off too; Postgres's offset is measured against it.
_wall_clock = faults.skewed(lambda: datetime.now(UTC))


class DatabaseClock:
    """`now()` = the database's current time (+ `offset`, the seam tests use to move time)."""

    def __init__(
        self, engine: Engine, *, offset: timedelta = timedelta(0), resync_seconds: float = RESYNC_SECONDS
    ) -> None:
        self.engine = engine
        self.offset = offset
        self.resync_seconds = resync_seconds
        self._local = engine.dialect.name != "postgresql"
        self._lock = threading.Lock()
        self._db_minus_host: timedelta | None = None  # None: never measured
        self._measured_at = float("-inf")
        self._measuring = False

    def __call__(self) -> datetime:
        if not self._local:
            self._keep_measured()
        with self._lock:
            skew = self._db_minus_host or timedelta(0)
        return _host_now() + skew + self.offset

    @property
    def database_minus_host(self) -> timedelta | None:
        """The last measured difference (None for SQLite, or before the first measurement)."""
        return None if self._local else self._db_minus_host

    def _keep_measured(self) -> None:
        with self._lock:
            due = time.monotonic() - self._measured_at >= self.resync_seconds
            first = self._measured_at == float("-inf")  # never tried: the caller waits for it
            if not due or self._measuring:
                return
            self._measuring = True
        if first:
            self._measure()
        else:
            threading.Thread(target=self._measure, name="sweeper-db-clock", daemon=True).start()

    def _measure(self) -> None:
        try:
            before = _host_now()
            with self.engine.connect() as conn:
                value = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
            after = _host_now()
            if not isinstance(value, datetime):
                raise TypeError(f"the database answered {value!r} for its time")
            server = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
            skew = server - (before + (after - before) / 2)
            with self._lock:
                self._db_minus_host = skew
                self._measured_at = time.monotonic()
        except Exception as exc:  # keep the last offset; try again soon
            log.warning("the database clock could not be read; keeping the last offset", error=str(exc)[:200])
            with self._lock:
                self._measured_at = time.monotonic() - self.resync_seconds + 5.0
        finally:
            with self._lock:
                self._measuring = False

    def __repr__(self) -> str:
        return f"DatabaseClock(offset={self.offset})"
