"""Ledger side of money safety (docs/design.md, "Money safety"), on SQLite and Postgres alike:
holds after paid failures, cooldowns after unpaid ones, persistent pauses, and the daily budget."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, text

from sweeper.domain import SweepState
from sweeper.ledger import ORDERING_PAUSE, Ledger, LedgerError, NewAddress, make_engine, utc_day
from sweeper.ledger import clock as clock_module
from sweeper.ledger.clock import DatabaseClock
from sweeper.ledger.ledger import COOLDOWN_BASE_SECONDS, COOLDOWN_MAX_SECONDS
from sweeper.pipeline import worker_name
from tests.conftest import FakeClock
from tests.constants import USDT

S = SweepState
A1 = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
A2 = "TSeJkUh4Qv67VNFwY8LaAxERygNdy6NQZK"


@pytest.fixture
def known(ledger: Ledger) -> Ledger:
    ledger.upsert_addresses([NewAddress(A1, "hd", hd_index=0), NewAddress(A2, "hd", hd_index=1)])
    return ledger


def fail(ledger: Ledger, address: str = A1, *, hold: bool = False, cooldown: bool = False) -> int:
    sweep_id = ledger.queue_sweep(address, "USDT", USDT, 20_000_000)
    assert sweep_id is not None
    ledger.transition(sweep_id, S.QUEUED, S.ORDERING, reason="claimed")
    ledger.transition(sweep_id, S.ORDERING, S.FAILED, reason="it went wrong", hold=hold, cooldown=cooldown)
    return sweep_id


def test_a_paid_failure_holds_the_pair_until_released(known: Ledger) -> None:
    failed = fail(known, hold=True)
    hold = known.active_hold(A1, "USDT")
    assert hold is not None and (hold.sweep_id, hold.reason) == (failed, "it went wrong")
    assert known.queue_sweep(A1, "USDT", USDT, 30_000_000) is None  # not queued again
    assert known.blocked("USDT", [A1, A2]) == {A1}
    assert known.stats().held == 1
    assert known.queue_sweep(A2, "USDT", USDT, 30_000_000) is not None  # other addresses unaffected
    with pytest.raises(LedgerError, match="not held"):
        known.release_holds(A2, "USDT")
    [released] = known.release_holds(A1, "USDT", actor="alice")
    assert released.id == hold.id
    assert known.active_hold(A1, "USDT") is None
    [kept] = known.holds(active_only=False)
    assert (kept.released_by, kept.released_at is not None) == ("alice", True)  # the audit trail stays
    assert known.queue_sweep(A1, "USDT", USDT, 30_000_000) is not None


def test_retry_lifts_the_hold_and_takes_the_slot(known: Ledger) -> None:
    failed = fail(known, hold=True)
    new_id = known.retry(failed)
    assert known.active_hold(A1, "USDT") is None
    assert known.get_sweep(new_id).state is S.QUEUED
    assert known.queue_sweep(A1, "USDT", USDT, 30_000_000) is None  # the retry holds the one open slot


def test_unpaid_failures_cool_down_doubling_up_to_a_day_and_survive_new_rows(
    known: Ledger, clock: FakeClock
) -> None:
    fail(known, cooldown=True)
    first = known.cooldown(A1, "USDT")
    assert first is not None and first.failures == 1
    assert first.until == clock() + timedelta(seconds=COOLDOWN_BASE_SECONDS)
    assert known.queue_sweep(A1, "USDT", USDT, 30_000_000) is None
    clock.advance(COOLDOWN_BASE_SECONDS)
    fail(known, cooldown=True)  # the next row fails the same way: the wait doubles
    second = known.cooldown(A1, "USDT")
    assert second is not None and second.failures == 2
    assert second.until == clock() + timedelta(seconds=2 * COOLDOWN_BASE_SECONDS)
    for _ in range(20):
        clock.advance(COOLDOWN_MAX_SECONDS)
        fail(known, cooldown=True)
    capped = known.cooldown(A1, "USDT")
    assert capped is not None and capped.until == clock() + timedelta(seconds=COOLDOWN_MAX_SECONDS)
    assert known.active_hold(A1, "USDT") is None  # nothing was paid: never held


def test_a_confirmed_sweep_clears_the_cooldown(known: Ledger, clock: FakeClock) -> None:
    fail(known, cooldown=True)
    clock.advance(COOLDOWN_BASE_SECONDS)
    sweep_id = known.queue_sweep(A1, "USDT", USDT, 30_000_000)
    assert sweep_id is not None
    for source, target in [
        (S.QUEUED, S.ORDERING),
        (S.ORDERING, S.ENERGY_READY),
        (S.ENERGY_READY, S.SIGNED),
        (S.SIGNED, S.BROADCAST),
        (S.BROADCAST, S.CONFIRMED),
    ]:
        known.transition(sweep_id, source, target, reason="ok")
    assert known.cooldown(A1, "USDT") is None


def test_hold_and_cooldown_only_follow_a_failure(known: Ledger) -> None:
    sweep_id = known.queue_sweep(A1, "USDT", USDT, 30_000_000)
    assert sweep_id is not None
    with pytest.raises(ValueError, match="only follows a failure"):
        known.transition(sweep_id, S.QUEUED, S.CANCELLED, reason="x", hold=True)
    # A cool-down also follows a cancellation (a TRX balance below min_sweep once its fee is paid).
    with pytest.raises(ValueError, match="only follows a failure or a cancellation"):
        known.transition(sweep_id, S.QUEUED, S.ORDERING, reason="x", cooldown=True)
    assert known.get_sweep(sweep_id).state is S.QUEUED


def test_pauses_persist_and_are_set_once(known: Ledger, clock: FakeClock) -> None:
    assert known.set_pause(ORDERING_PAUSE, "order cost 12 TRX")
    assert not known.set_pause(ORDERING_PAUSE, "another")
    assert known.stats().ordering_paused == "order cost 12 TRX"
    due = clock() + timedelta(seconds=600)
    known.set_pause("token:USDT", "reverts", next_check_at=due)
    assert not known.take_pause_check("token:USDT", next_check_at=due + timedelta(seconds=600))
    clock.advance(600)
    assert known.take_pause_check("token:USDT", next_check_at=clock() + timedelta(seconds=600))
    assert not known.take_pause_check("token:USDT", next_check_at=clock() + timedelta(seconds=600))
    lifted = known.clear_pause(ORDERING_PAUSE)
    assert lifted is not None and lifted.reason == "order cost 12 TRX"
    assert known.clear_pause(ORDERING_PAUSE) is None and known.stats().ordering_paused is None


def test_reservations_count_against_the_day_and_are_replaced_by_real_amounts(
    known: Ledger, clock: FakeClock
) -> None:
    a = known.queue_sweep(A1, "USDT", USDT, 30_000_000)
    b = known.queue_sweep(A2, "USDT", USDT, 30_000_000)
    assert a is not None and b is not None
    rows = known.claim("w", [S.QUEUED], limit=2, lease_seconds=60)
    assert {r.id for r in rows} == {a, b}
    first = known.reserve_order(a, "w", price_sun=4_000_000, cap_sun=7_000_000)
    assert first is not None and first.reserved and first.spent_sun == 0
    assert known.get_sweep(a).order_sent_at == clock()  # committed together with the mark
    second = known.reserve_order(b, "w", price_sun=4_000_000, cap_sun=7_000_000)
    assert second is not None and not second.reserved and second.spent_sun == 4_000_000
    assert known.get_sweep(b).order_sent_at is None and known.get_sweep(b).charge_sun is None
    # A's order turns out cheaper; B fits now. A refund is credited back.
    known.transition(
        a, S.ORDERING, S.ENERGY_ORDERED, reason="ordered", holder="w", changes={"charge_sun": 3_000_000}
    )
    again = known.reserve_order(b, "w", price_sun=4_000_000, cap_sun=7_000_000)
    assert again is not None and again.reserved and again.spent_sun == 3_000_000
    assert known.spent_on(utc_day(clock())) == 7_000_000
    # A re-reservation of the same row replaces its own (never counted twice).
    assert (known.reserve_order(b, "w", price_sun=4_000_000, cap_sun=7_000_000) or first).reserved
    # The next UTC day starts from zero.
    clock.advance(86_400)
    assert known.spent_on(utc_day(clock())) == 0
    assert known.reserve_order(a, "nobody", price_sun=1, cap_sun=10) is None  # claim lost / wrong state


def test_sixteen_concurrent_reservations_against_a_budget_for_three(known: Ledger) -> None:
    """The budget decision is serialised: exactly three of sixteen racing rows get a reservation."""
    addresses = [f"T{i:033d}" for i in range(16)]  # ledger-only rows: the address format is not checked here
    known.upsert_addresses(NewAddress(a, "import") for a in addresses)
    ids = [known.queue_sweep(a, "USDT", USDT, 30_000_000) for a in addresses]
    rows = known.claim("w", [S.QUEUED], limit=16, lease_seconds=60)
    assert len(rows) == 16
    barrier = threading.Barrier(16)
    results: dict[int, bool] = {}

    def reserve(sweep_id: int) -> None:
        barrier.wait()
        outcome = known.reserve_order(sweep_id, "w", price_sun=5_000_000, cap_sun=15_000_000)
        results[sweep_id] = bool(outcome and outcome.reserved)

    threads = [threading.Thread(target=reserve, args=(i,)) for i in ids if i is not None]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(results.values()) == 3
    assert known.spent_on(utc_day(known.now())) == 15_000_000
    assert sum(1 for s in known.list_sweeps() if s.order_sent_at is not None) == 3


def test_one_sweep_per_address_at_a_time_past_queued(known: Ledger) -> None:
    """Two tokens' sweeps of one address must not share (and misjudge) the energy delegated to it."""
    usdt = known.queue_sweep(A1, "USDT", USDT, 20_000_000)
    other = known.queue_sweep(A1, "USDX", "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf", 20_000_000)
    assert usdt is not None and other is not None
    [first] = known.claim("w", [S.QUEUED], limit=10, lease_seconds=60)  # one per address per batch
    assert first.id == usdt
    assert known.claim("w2", [S.QUEUED], limit=10, lease_seconds=60) == []  # the address is busy
    assert known.address_busy(A1, other_than=other) == usdt
    known.transition(usdt, S.ORDERING, S.CANCELLED, reason="done", holder="w")
    [second] = known.claim("w2", [S.QUEUED], limit=10, lease_seconds=60)
    assert second.id == other


def test_retry_of_an_older_row_does_not_lift_a_newer_rows_hold(known: Ledger) -> None:
    old = fail(known, hold=True)
    known.release_holds(A1, "USDT")
    newer = fail(known, hold=True)  # failed again, paid: a new hold the operator has not seen
    with pytest.raises(LedgerError, match=f"held by sweep {newer}"):
        known.retry(old)
    hold = known.active_hold(A1, "USDT")
    assert hold is not None and hold.sweep_id == newer
    assert known.retry(newer) > newer and known.active_hold(A1, "USDT") is None


def test_no_reservation_while_ordering_is_paused(known: Ledger) -> None:
    sweep_id = known.queue_sweep(A1, "USDT", USDT, 20_000_000)
    assert sweep_id is not None
    known.claim("w", [S.QUEUED], limit=1, lease_seconds=60)
    known.set_pause(ORDERING_PAUSE, "an order cost 12 TRX")
    refused = known.reserve_order(sweep_id, "w", price_sun=1, cap_sun=10)
    assert refused is not None and not refused.reserved and refused.paused == "an order cost 12 TRX"
    assert known.get_sweep(sweep_id).order_sent_at is None


def test_sqlite_ledger_syncs_every_commit(sqlite_url: str) -> None:
    """WAL with synchronous=NORMAL may lose the last commits on a power cut; a lost `signed` row
    whose transaction was then broadcast would be rebuilt and sent again. FULL syncs each commit."""
    engine = make_engine(sqlite_url)
    try:
        for _ in range(2):  # every pooled connection, not only the first
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
                assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        engine.dispose()
    with pytest.raises(ValueError, match="sqlite_synchronous"):
        make_engine(sqlite_url, sqlite_synchronous="OFF")


def test_each_row_has_its_own_out_trade_no_and_hints_match_it_exactly(known: Ledger, engine: Engine) -> None:
    first = known.queue_sweep(A1, "USDT", USDT, 20_000_000)
    second = known.queue_sweep(A2, "USDT", USDT, 20_000_000)
    assert first is not None and second is not None
    row, other = known.get_sweep(first), known.get_sweep(second)
    assert row.order_nonce and other.order_nonce and row.order_nonce != other.order_nonce
    assert row.out_trade_no == f"{first}-{row.order_nonce}" and len(row.out_trade_no) <= 32
    assert re.fullmatch(r"[A-Z2-7]{8}", row.order_nonce)  # base32
    assert known.hint(out_trade_no=str(first)) is None  # the bare id: another ledger's order
    assert known.hint(out_trade_no=f"{first}-AAAAAAAA") is None  # another nonce
    assert known.hint(out_trade_no=f"{second}-{row.order_nonce}") is None
    assert known.hint(out_trade_no="x-y") is None
    assert known.hint(out_trade_no=row.out_trade_no) == first
    # A row made before migration 0005 keeps its bare id.
    with engine.begin() as conn:
        conn.execute(text("UPDATE sweeps SET order_nonce = NULL WHERE id = :id"), {"id": second})
    legacy = known.get_sweep(second)
    assert legacy.out_trade_no == str(second) and known.hint(out_trade_no=str(second)) == second


def test_two_workers_with_the_same_hostname_and_pid_never_share_leases(known: Ledger) -> None:
    """Two containers, both PID 1 on hosts named alike: their worker ids still differ, so one never
    takes over, nor releases, the other's leases."""
    first, second = worker_name(), worker_name()
    assert first != second and first.rsplit(":", 1)[0] == second.rsplit(":", 1)[0]
    sweep_id = known.queue_sweep(A1, "USDT", USDT, 20_000_000)
    assert sweep_id is not None
    [claimed] = known.claim(first, [S.QUEUED], limit=1, lease_seconds=60)
    assert claimed.claimed_by == first
    assert known.release_claims(second) == 0  # the other's shutdown leaves our lease alone
    assert not known.renew_lease(sweep_id, second, 60)
    assert known.get_sweep(sweep_id).claimed_by == first


def test_the_database_clock_is_the_databases_time_plus_the_test_offset(engine: Engine) -> None:
    clock = DatabaseClock(engine, offset=timedelta(minutes=5))
    first = clock()
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            db_now = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        else:
            db_now = datetime.fromisoformat(
                conn.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
            ).replace(tzinfo=UTC)
    assert first.tzinfo is not None
    assert abs((first - timedelta(minutes=5) - db_now).total_seconds()) < 2
    assert clock() >= first  # carried forward on the monotonic clock between samples
    assert isinstance(Ledger(engine).now, DatabaseClock)  # the ledger's default clock


@pytest.mark.postgres
def test_the_postgres_clock_compensates_a_wrong_host_clock_and_survives_an_outage(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(postgres_url)
    try:
        host_ahead = lambda: datetime.now(UTC) + timedelta(minutes=10)  # noqa: E731
        monkeypatch.setattr(clock_module, "_host_now", host_ahead)  # this host's clock: 10 min ahead
        clock = DatabaseClock(engine, resync_seconds=0.0)
        with engine.connect() as conn:
            server = conn.execute(text("SELECT clock_timestamp()")).scalar_one()
        assert abs((clock() - server).total_seconds()) < 2  # the database's time, not the host's
        skew = clock.database_minus_host
        assert skew is not None and abs((skew + timedelta(minutes=10)).total_seconds()) < 2
        # The database becomes unreachable: the last offset is kept, reading the time never raises.
        clock.engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=1")
        for _ in range(3):
            assert abs((clock() - server).total_seconds()) < 10
            time.sleep(0.3)
        assert clock.database_minus_host == skew
    finally:
        engine.dispose()
