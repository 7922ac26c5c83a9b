"""Test seams for the fault matrix (tests/e2e/matrix/test_process.py). Inert in production.

Both are read from the environment ONCE, at import; unset (production), `crash_point` returns at
once and the host clock is the plain wall clock (`domain.utcnow` is not even wrapped).

- `SWEEPER_CRASH_AT="name"` (or `"name:N"`): the process kills itself with SIGKILL the first (N-th)
  time it passes `crash_point("name")`: a kill -9 at an exact point, e.g. after the order-sent mark
  is committed and before the POST it guards. The points are listed in `CRASH_POINTS`; an unknown
  name is refused at start-up (a typo would otherwise test nothing). One line goes to stderr first,
  written unbuffered, so a test can tell which point fired.
- `SWEEPER_TEST_CLOCK_OFFSET_FILE=/path`: the host's wall clock is off by the number of seconds
  written in that file (read again at most every 0.2 s, so a test can "fix" the clock of a running
  daemon). There is no libfaketime here; this is how a host clock 10 minutes off is acted out.

Imports nothing of ours: `domain` and `ledger/clock` use it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final

CRASH_ENV: Final = "SWEEPER_CRASH_AT"
CLOCK_OFFSET_ENV: Final = "SWEEPER_TEST_CLOCK_OFFSET_FILE"

# Every point a `crash_point()` call names; each sits between a ledger write and the outside call it
# guards (or between an outside answer and the ledger write that records it).
CRASH_POINTS: Final = frozenset(
    {
        "claimed",  # pipeline: rows claimed (lease + queued -> ordering committed), no step run yet
        "order-sent",  # pipeline: reservation + order_sent_at committed, the POST not sent
        "order-answered",  # pipeline: collect-manual answered with an order, not yet recorded
        "order-complete",  # pipeline: the order is complete and on chain, energy_ready not recorded
        "trx-signed-unstored",  # pipeline: a TRX transfer is signed, not yet stored (nothing sent)
        "signed",  # pipeline: the signed transfer is committed, not yet broadcast
        "broadcast-answered",  # pipeline: the node accepted the bytes, `broadcast` not recorded
        "confirm-read",  # pipeline: the solidified receipt says SUCCESS, `confirmed` not recorded
        "follow-batch-read",  # follower: a batch of blocks read, nothing queued from it yet
        "follow-batch-queued",  # follower: the batch's deposits queued, the cursor not moved
    }
)


def _parse_crash_at(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, nth = value.partition(":")
    if name not in CRASH_POINTS:
        raise SystemExit(
            f"{CRASH_ENV}={value!r}: unknown crash point; known: {', '.join(sorted(CRASH_POINTS))}"
        )
    if nth and not (nth.isdigit() and int(nth) >= 1):
        raise SystemExit(f"{CRASH_ENV}={value!r}: the pass after ':' must be a whole number >= 1")
    return name, int(nth) if nth else 1


_CRASH_AT: Final = _parse_crash_at(os.environ.get(CRASH_ENV))
_passes: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process here when SWEEPER_CRASH_AT names this point (and this is the N-th pass)."""
    if _CRASH_AT is None:
        return
    _crash_if_due(name)


def _crash_if_due(name: str) -> None:
    assert _CRASH_AT is not None
    if name not in CRASH_POINTS:  # a call site with a name the tests cannot ask for: a bug
        raise ValueError(f"unknown crash point {name!r}")
    target, nth = _CRASH_AT
    if name != target:
        return
    _passes[name] = count = _passes.get(name, 0) + 1
    if count < nth:
        return
    os.write(sys.stderr.fileno(), f"crash point {name}:{count} reached: SIGKILL\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


# --- a wrong host clock ---------------------------------------------------------------------

_CLOCK_FILE: Final = os.environ.get(CLOCK_OFFSET_ENV) or None
_offset: tuple[float, timedelta] = (float("-inf"), timedelta(0))  # (read at, monotonic; offset)


def host_clock_offset() -> timedelta:
    """How far the (test) host clock is off: the file's seconds, re-read at most every 0.2 s."""
    global _offset
    if _CLOCK_FILE is None:
        return timedelta(0)
    read_at, offset = _offset
    if time.monotonic() - read_at >= 0.2:
        try:
            with open(_CLOCK_FILE) as f:
                offset = timedelta(seconds=float(f.read().strip() or 0))
        except (OSError, ValueError):
            pass  # a file being rewritten: keep the last offset
        _offset = (time.monotonic(), offset)
    return offset


def skewed(clock: Callable[[], datetime]) -> Callable[[], datetime]:
    """`clock` as a host with a wrong clock would read it, when the seam is on; else `clock` itself."""
    if _CLOCK_FILE is None:
        return clock

    def wrong_clock() -> datetime:
        return clock() + host_clock_offset()

    return wrong_clock
