"""The block follower's cursor and its lease (issue 14), on SQLite and Postgres alike (`db_url`).

One daemon follows at a time: it holds the lease, and every cursor write presents the token its
take issued. A lease that ran out is taken over, and the old token then changes nothing. The
cursor only moves forward, from where the writer's batch started. Time is the database's: tests
move it with the clock seam (`Ledger(engine, clock)`, `DatabaseClock(offset=...)`), never sleep.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from sweeper.ledger import FOLLOW_BLOCKS, CursorRefused, FollowLease, Ledger, make_engine
from sweeper.ledger.clock import DatabaseClock
from tests.conftest import FakeClock

NAME = FOLLOW_BLOCKS
LEASE = 30.0


def take(ledger: Ledger, holder: str, lease_seconds: float = LEASE) -> FollowLease:
    lease = ledger.take_follow_lease(NAME, holder, lease_seconds)
    assert lease is not None, f"{holder} could not take the lease"
    return lease


def started(ledger: Ledger, holder: str, block: int = 1000) -> FollowLease:
    """A lease on a cursor that follows from `block` (the fresh-ledger start recorded)."""
    lease = take(ledger, holder)
    assert ledger.set_follow_start(NAME, lease.token, block) is not None
    return lease


def test_a_take_creates_the_row_and_a_running_lease_keeps_others_out(
    ledger: Ledger, clock: FakeClock
) -> None:
    assert ledger.follow_cursor() is None
    a = take(ledger, "daemon-a")
    assert re.fullmatch(r"[0-9a-f]{16}", a.token)
    assert (a.holder, a.next_block, a.start_block, a.initial_poll_done) == ("daemon-a", None, None, False)
    assert a.lease_until == clock.current + timedelta(seconds=LEASE) and a.previous_holder is None

    clock.advance(LEASE - 0.001)  # not run out yet
    assert ledger.take_follow_lease(NAME, "daemon-b", LEASE) is None
    cursor = ledger.follow_cursor()
    assert cursor is not None and cursor.holder == "daemon-a" and cursor.lease_until == a.lease_until
    assert cursor.leased_at(clock.current) and cursor.next_block is None
    assert ledger.stats().follow_next_block is None


def test_taking_again_as_the_same_holder_issues_a_new_token_and_fences_the_old(
    ledger: Ledger, clock: FakeClock
) -> None:
    first = started(ledger, "daemon-a")
    again = take(ledger, "daemon-a")  # e.g. the follower task restarted inside the same process
    assert again.token != first.token and again.previous_holder == "daemon-a" and again.next_block == 1000
    assert not ledger.advance_cursor(NAME, first.token, 1010)
    assert not ledger.renew_follow_lease(NAME, first.token, LEASE)
    assert not ledger.release_follow_lease(NAME, first.token)
    assert ledger.advance_cursor(NAME, again.token, 1010, expected_next=1000)


def test_renewal_extends_the_lease_and_a_run_out_lease_is_lost(ledger: Ledger, clock: FakeClock) -> None:
    a = started(ledger, "daemon-a")
    clock.advance(20)
    assert ledger.renew_follow_lease(NAME, a.token, LEASE)
    cursor = ledger.follow_cursor()
    assert cursor is not None and cursor.lease_until == clock.current + timedelta(seconds=LEASE)
    clock.advance(LEASE - 1)  # 49 s after the take: only the renewal keeps it
    assert ledger.take_follow_lease(NAME, "daemon-b", LEASE) is None
    assert ledger.advance_cursor(NAME, a.token, 1001)

    clock.advance(1)  # exactly lease_until: run out
    assert not ledger.renew_follow_lease(NAME, a.token, LEASE)
    assert not ledger.advance_cursor(NAME, a.token, 1002)
    assert ledger.set_follow_start(NAME, a.token, 5) is None
    cursor = ledger.follow_cursor()
    assert cursor is not None and cursor.next_block == 1001 and not cursor.leased_at(clock.current)
    with pytest.raises(ValueError, match="lease_seconds"):
        ledger.renew_follow_lease(NAME, a.token, 0)
    with pytest.raises(ValueError, match="lease_seconds"):
        ledger.take_follow_lease(NAME, "daemon-a", float("inf"))


def test_a_run_out_lease_is_taken_over_and_the_old_token_changes_nothing(
    ledger: Ledger, clock: FakeClock
) -> None:
    a = started(ledger, "daemon-a", 100)
    assert ledger.advance_cursor(NAME, a.token, 110, expected_next=100)
    clock.advance(LEASE)  # daemon-a stalled (or died)
    b = take(ledger, "daemon-b")
    assert (b.previous_holder, b.next_block, b.start_block, b.initial_poll_done) == (
        "daemon-a",
        110,
        100,
        False,
    )

    # daemon-a wakes up: whatever it believes, none of its writes lands.
    assert not ledger.renew_follow_lease(NAME, a.token, LEASE)
    assert not ledger.advance_cursor(NAME, a.token, 120, expected_next=110)
    assert ledger.set_follow_start(NAME, a.token, 5) is None
    assert not ledger.mark_initial_poll_done(NAME, a.token, pass_started_at=clock.current)
    assert not ledger.release_follow_lease(NAME, a.token)
    assert ledger.take_follow_lease(NAME, "daemon-a", LEASE) is None  # b's lease runs

    assert ledger.advance_cursor(NAME, b.token, 120, expected_next=110)
    cursor = ledger.follow_cursor()
    assert cursor is not None and (cursor.holder, cursor.next_block) == ("daemon-b", 120)
    assert cursor.advanced_at == clock.current
    assert ledger.stats().follow_next_block == 120


def test_the_cursor_never_goes_back_never_skips_and_needs_a_start(ledger: Ledger, clock: FakeClock) -> None:
    a = take(ledger, "daemon-a")
    with pytest.raises(CursorRefused, match="no start block"):
        ledger.advance_cursor(NAME, a.token, 10)
    assert ledger.set_follow_start(NAME, a.token, 500) is not None
    block_time = datetime(2026, 1, 1, 11, 59, 0, tzinfo=UTC)
    assert ledger.advance_cursor(NAME, a.token, 510, expected_next=500, block_time=block_time)

    with pytest.raises(CursorRefused, match="never goes back"):
        ledger.advance_cursor(NAME, a.token, 509)
    with pytest.raises(CursorRefused, match="could skip blocks"):  # the batch did not start here
        ledger.advance_cursor(NAME, a.token, 530, expected_next=520)
    with pytest.raises(CursorRefused, match="could skip blocks"):
        ledger.advance_cursor(NAME, a.token, 505, expected_next=500)
    assert ledger.advance_cursor(NAME, a.token, 510, expected_next=510)  # nothing to move: a no-op
    with pytest.raises(ValueError, match="not a block number"):
        ledger.advance_cursor(NAME, a.token, -1)
    cursor = ledger.follow_cursor()
    assert cursor is not None and (cursor.next_block, cursor.last_block_at) == (510, block_time)
    assert cursor.lag_blocks(509) == 0 and cursor.lag_blocks(519) == 10
    assert ledger.advance_cursor(NAME, a.token, 511)  # forward without expected_next: fine


def test_release_lets_another_take_over_at_once(ledger: Ledger, clock: FakeClock) -> None:
    a = started(ledger, "daemon-a", 7)
    assert ledger.release_follow_lease(NAME, a.token)
    assert not ledger.release_follow_lease(NAME, a.token)
    cursor = ledger.follow_cursor()
    assert cursor is not None and (cursor.holder, cursor.lease_until, cursor.next_block) == (None, None, 7)
    b = take(ledger, "daemon-b")  # no waiting for the lease to run out
    assert b.previous_holder is None and b.next_block == 7
    assert not ledger.advance_cursor(NAME, a.token, 8)


def test_a_fresh_ledger_records_its_start_once_and_the_initial_pass_must_begin_after_it(
    ledger: Ledger, clock: FakeClock
) -> None:
    a = take(ledger, "daemon-a")
    early_pass = clock.current  # a poll pass already running when the follower started
    with pytest.raises(CursorRefused, match="set_follow_start"):
        ledger.mark_initial_poll_done(NAME, a.token, pass_started_at=early_pass)

    clock.advance(1)
    record = ledger.set_follow_start(NAME, a.token, 70_000_000)  # the solid head just read
    assert record is not None and (record.next_block, record.start_block) == (70_000_000, 70_000_000)
    assert record.start_recorded_at == clock.current and record.initial_poll_done_at is None
    assert ledger.stats().follow_next_block == 70_000_000
    with pytest.raises(CursorRefused, match="before follower"):
        ledger.mark_initial_poll_done(NAME, a.token, pass_started_at=early_pass)

    # A crash during the pass; another daemon takes over: the start stays where it was.
    clock.advance(LEASE)
    b = take(ledger, "daemon-b")
    assert (b.next_block, b.initial_poll_done, b.start_recorded_at) == (
        70_000_000,
        False,
        record.start_recorded_at,
    )
    kept = ledger.set_follow_start(NAME, b.token, 70_000_100)  # a later head: ignored
    assert kept is not None and (kept.next_block, kept.start_recorded_at) == (
        70_000_000,
        record.start_recorded_at,
    )

    assert ledger.mark_initial_poll_done(NAME, b.token, pass_started_at=record.start_recorded_at)
    done = ledger.follow_cursor()
    assert done is not None and done.initial_poll_done_at == clock.current
    clock.advance(5)
    assert ledger.mark_initial_poll_done(NAME, b.token, pass_started_at=clock.current)  # idempotent
    again = ledger.follow_cursor()
    assert again is not None and again.initial_poll_done_at == done.initial_poll_done_at
    assert take(ledger, "daemon-b").initial_poll_done


def test_the_lease_runs_on_the_database_clock(engine: Engine, db_url: str) -> None:
    """Daemon A reads the database's time; daemon B's clock is the same one moved forward (the
    DatabaseClock offset seam): B sees A's lease run out only once the database's time has passed it."""
    a = Ledger(engine)
    lease = a.take_follow_lease(NAME, "daemon-a", LEASE)
    assert lease is not None
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            db_now = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        else:
            db_now = datetime.fromisoformat(
                conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
            ).replace(tzinfo=UTC)
    assert abs((lease.lease_until - timedelta(seconds=LEASE) - db_now).total_seconds()) < 2
    assert a.set_follow_start(NAME, lease.token, 42) is not None

    other = make_engine(db_url)
    try:
        early = Ledger(other, DatabaseClock(other, offset=timedelta(seconds=LEASE - 5)))
        assert early.take_follow_lease(NAME, "daemon-b", LEASE) is None
        late = Ledger(other, DatabaseClock(other, offset=timedelta(seconds=LEASE + 1)))
        b = late.take_follow_lease(NAME, "daemon-b", LEASE)
        assert b is not None and b.previous_holder == "daemon-a" and b.next_block == 42
        assert not a.renew_follow_lease(NAME, lease.token, LEASE)
        assert not a.advance_cursor(NAME, lease.token, 50, expected_next=42)
        assert late.advance_cursor(NAME, b.token, 50, expected_next=42)
    finally:
        other.dispose()
    assert a.stats().follow_next_block == 50


class SharedClock:
    """One moving time for several threads (the database's, in effect): each step moves it on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


def test_two_followers_racing_never_both_advance(engine: Engine, db_url: str) -> None:
    """Two daemons, each with its own engine on one database, take and advance in a loop until a
    deadline while time moves on (leases run out, holders stall past them): every block is covered
    by exactly one successful advance, and a token, once superseded, never writes again."""
    clock = SharedClock()
    setup = Ledger(engine, clock)
    first = setup.take_follow_lease(NAME, "setup", 1.0)
    assert first is not None and setup.set_follow_start(NAME, first.token, 0) is not None
    assert setup.release_follow_lease(NAME, first.token)

    advances: list[tuple[str, str, int, int]] = []  # (holder, token, from, to)
    takes: list[tuple[str, str]] = []
    errors: list[BaseException] = []
    record = threading.Lock()
    deadline = time.monotonic() + 4.0

    def follower(holder: str, seed: int) -> None:
        rng = random.Random(seed)
        own = (
            make_engine(db_url, pool_size=1, max_overflow=0)
            if "postgresql" in db_url
            else make_engine(db_url)
        )
        ledger = Ledger(own, clock)
        try:
            while time.monotonic() < deadline:
                lease = ledger.take_follow_lease(NAME, holder, 1.0)
                clock.advance(0.05)
                if lease is None:
                    continue
                with record:
                    takes.append((holder, lease.token))
                assert lease.next_block is not None
                cursor = lease.next_block
                while time.monotonic() < deadline:
                    step = rng.randint(1, 5)
                    if not ledger.advance_cursor(NAME, lease.token, cursor + step, expected_next=cursor):
                        break  # lost: stop following at once
                    with record:
                        advances.append((holder, lease.token, cursor, cursor + step))
                    cursor += step
                    clock.advance(rng.choice((0.05, 0.1, 0.2, 1.5)))  # 1.5: this holder stalls
                    if rng.random() < 0.3 and not ledger.renew_follow_lease(NAME, lease.token, 1.0):
                        break
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            own.dispose()

    threads = [threading.Thread(target=follower, args=(f"daemon-{n}", n)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    final = setup.follow_cursor()
    assert final is not None and final.next_block is not None

    # The cursor's history, in order: strictly increasing, contiguous, from the start to the end.
    chain = sorted(advances, key=lambda a: a[2])
    assert [a[2] for a in chain] == [0] + [a[3] for a in chain[:-1]], "two advances overlapped or left a gap"
    assert all(a[2] < a[3] for a in chain)
    assert chain[-1][3] == final.next_block
    # Each token wrote one unbroken run of the history, in the order the tokens were issued.
    runs: list[str] = []
    for _, token, _, _ in chain:
        if not runs or runs[-1] != token:
            runs.append(token)
    assert len(runs) == len(set(runs)), "a superseded token advanced the cursor again"
    issued = [token for _, token in takes]
    assert runs == [t for t in issued if t in set(runs)], "a token wrote after a later take"
    holders = {h for h, *_ in advances}
    assert holders == {"daemon-a", "daemon-b"}, f"expected take-overs both ways, got {holders}"
    assert len(runs) >= 4


@pytest.mark.parametrize(
    "crash_after",
    ["take", "set_follow_start", "initial pass started", "initial pass done", "batch queued", "advance"],
)
def test_a_restart_after_a_crash_at_any_step_neither_skips_nor_needs_a_human(
    ledger: Ledger, clock: FakeClock, crash_after: str
) -> None:
    """A follower's start-up and first batch, cut after each step (kill -9: no release). The next
    daemon, after the lease runs out, starts from the stored state: it follows from a block no later
    than the first one not processed, and the initial pass it needs began after the start."""
    head = 1000
    processed: set[int] = set()  # blocks whose deposits were queued
    lease = take(ledger, "daemon-a")
    pass_started: dict[str, datetime] = {}

    def start_pass() -> None:
        clock.advance(1)
        pass_started["a"] = clock.current

    steps: list[tuple[str, Callable[[], object]]] = [
        ("take", lambda: None),
        ("set_follow_start", lambda: ledger.set_follow_start(NAME, lease.token, head)),
        ("initial pass started", start_pass),
        (
            "initial pass done",
            lambda: ledger.mark_initial_poll_done(NAME, lease.token, pass_started_at=pass_started["a"]),
        ),
        ("batch queued", lambda: processed.update(range(head, head + 10))),
        ("advance", lambda: ledger.advance_cursor(NAME, lease.token, head + 10, expected_next=head)),
    ]
    for name, step in steps:
        step()
        if name == crash_after:
            break
    clock.advance(LEASE)  # daemon-a is gone; its lease runs out

    b = take(ledger, "daemon-b")
    if b.next_block is None:  # never started: record a start from the head it reads now
        later_head = head + 50
        record = ledger.set_follow_start(NAME, b.token, later_head)
        assert record is not None and record.start_recorded_at is not None
        follows_from, needs_pass_after = later_head, record.start_recorded_at
    else:
        follows_from = b.next_block
        needs_pass_after = None if b.initial_poll_done else b.start_recorded_at
    first_unprocessed = min(set(range(head, head + 100)) - processed)
    if b.next_block is not None:
        assert follows_from <= first_unprocessed, "a block would be skipped"
    if needs_pass_after is not None:  # a's pass, resumed (scan_progress), or a new one
        clock.advance(1)
        pass_start = pass_started.get("a", clock.current)
        assert pass_start >= needs_pass_after
        assert ledger.mark_initial_poll_done(NAME, b.token, pass_started_at=pass_start)
    cursor = ledger.follow_cursor()
    assert (
        cursor is not None and cursor.initial_poll_done_at is not None and cursor.next_block == follows_from
    )
