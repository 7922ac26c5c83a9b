"""TRX sweeps in the ledger, on SQLite and Postgres alike (docs/design.md, "TRX sweeps"): the asset
kind decides the path; one sweep per deposit address past `queued`, the older queued one first,
decided under a lock on the address row."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from sweeper.domain import AssetKind, IllegalTransition, SweepState
from sweeper.ledger import AddressBusy, Ledger, NewAddress
from tests.conftest import FakeClock
from tests.constants import USDT

S = SweepState
A1 = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
A2 = "TSeJkUh4Qv67VNFwY8LaAxERygNdy6NQZK"
WORK = (S.QUEUED, S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.SIGNED, S.BROADCAST)


@pytest.fixture
def known(ledger: Ledger) -> Ledger:
    ledger.upsert_addresses([NewAddress(A1, "hd", hd_index=0), NewAddress(A2, "hd", hd_index=1)])
    return ledger


def test_a_trx_row_has_its_own_path(known: Ledger) -> None:
    trx = known.queue_sweep(A1, "TRX", None, 5_000_000)
    assert trx is not None
    row = known.get_sweep(trx)
    assert (row.asset_kind, row.token_contract, row.is_trx) == (AssetKind.TRX, None, True)
    with pytest.raises(IllegalTransition, match="for a trx sweep"):
        known.transition(trx, S.QUEUED, S.ORDERING, reason="no energy for TRX")
    known.transition(trx, S.QUEUED, S.SIGNED, reason="signed", exclusive=True)
    known.transition(trx, S.SIGNED, S.BROADCAST, reason="sent")
    known.transition(trx, S.BROADCAST, S.QUEUED, reason="expired unknown: rebuild")
    with pytest.raises(IllegalTransition):
        known.transition(trx, S.QUEUED, S.ENERGY_READY, reason="no")
    known.transition(trx, S.QUEUED, S.SIGNED, reason="signed again", exclusive=True)
    known.transition(trx, S.SIGNED, S.BROADCAST, reason="sent")
    done = known.transition(trx, S.BROADCAST, S.CONFIRMED, reason="ok", changes={"fee_sun": 268_000})
    assert done.fee_sun == 268_000
    assert known.stats().swept_by_token == {"TRX": 5_000_000}
    assert known.stats().fee_burnt_sun == 268_000


def test_a_token_row_can_never_go_queued_to_signed(known: Ledger) -> None:
    usdt = known.queue_sweep(A1, "USDT", USDT, 20_000_000)
    assert usdt is not None
    with pytest.raises(IllegalTransition, match="queued -> signed"):
        known.transition(usdt, S.QUEUED, S.SIGNED, reason="skipping the energy")
    assert known.get_sweep(usdt).state is S.QUEUED


def test_the_claim_leases_trx_rows_in_queued_and_moves_only_token_rows(known: Ledger) -> None:
    trx = known.queue_sweep(A1, "TRX", None, 5_000_000)
    usdt = known.queue_sweep(A2, "USDT", USDT, 20_000_000)
    claimed = {r.id: r for r in known.claim("w1", WORK, limit=10, lease_seconds=60)}
    assert claimed[trx].state is S.QUEUED and claimed[trx].claimed_by == "w1"
    assert claimed[usdt].state is S.ORDERING
    assert [e.to_state for e in known.events(trx)] == [S.QUEUED]  # no event: only a lease


def test_ordering_paused_still_starts_trx_rows(known: Ledger) -> None:
    trx = known.queue_sweep(A1, "TRX", None, 5_000_000)
    usdt = known.queue_sweep(A2, "USDT", USDT, 20_000_000)
    claimed = known.claim("w1", WORK, limit=10, lease_seconds=60, queued_kinds=(AssetKind.TRX,))
    assert [r.id for r in claimed] == [trx]
    assert known.get_sweep(usdt).claimed_by is None


@pytest.mark.parametrize("first", ["USDT", "TRX"])
def test_one_sweep_per_address_and_the_older_goes_first(known: Ledger, clock: FakeClock, first: str) -> None:
    """USDT and TRX of one address: only the older one starts; the other waits until it is final."""
    queue = {
        "USDT": lambda: known.queue_sweep(A1, "USDT", USDT, 20_000_000),
        "TRX": lambda: known.queue_sweep(A1, "TRX", None, 5_000_000),
    }
    older = queue[first]()
    newer = queue["TRX" if first == "USDT" else "USDT"]()
    assert older is not None and newer is not None
    claimed = known.claim("w1", WORK, limit=10, lease_seconds=60)
    assert [r.id for r in claimed] == [older]
    # Another worker, the older one's lease still held: the newer stays put.
    assert known.claim("w2", WORK, limit=10, lease_seconds=60) == []
    older_row = known.get_sweep(older)
    if older_row.is_trx:
        known.transition(older, S.QUEUED, S.SIGNED, reason="signed", holder="w1", exclusive=True)
    else:
        known.transition(older, S.ORDERING, S.ENERGY_READY, reason="ready", holder="w1")
    clock.advance(120)  # the lease ran out: the row is claimable again, the newer one still not
    assert [r.id for r in known.claim("w2", WORK, limit=10, lease_seconds=60)] == [older]
    # The newer TRX row cannot be moved past queued by hand either while the other one is busy.
    if not known.get_sweep(newer).is_trx:
        known.transition(older, S.SIGNED, S.BROADCAST, reason="sent", holder="w2")
        known.transition(older, S.BROADCAST, S.CONFIRMED, reason="ok", holder="w2")
    else:
        with pytest.raises(AddressBusy, match=f"has sweep {older}"):
            known.transition(newer, S.QUEUED, S.SIGNED, reason="too early", exclusive=True)
        assert known.get_sweep(newer).state is S.QUEUED
        known.transition(older, S.ENERGY_READY, S.SIGNED, reason="signed", holder="w2")
        known.transition(older, S.SIGNED, S.BROADCAST, reason="sent", holder="w2")
        known.transition(older, S.BROADCAST, S.CONFIRMED, reason="ok", holder="w2")
    [next_one] = known.claim("w3", WORK, limit=10, lease_seconds=60)
    assert next_one.id == newer


def test_an_older_queued_row_goes_first_unless_it_cannot_start_now(known: Ledger, clock: FakeClock) -> None:
    """The older queued sweep of an address starts first; but one that waits (a back-off, a price
    above the cap, a paused token) or cannot start (energy ordering paused) does not hold a younger
    TRX sweep back. Past queued, only one at a time: a younger TRX row's queued -> signed is refused
    while the older is in ordering."""
    usdt = known.queue_sweep(A1, "USDT", USDT, 20_000_000)
    trx = known.queue_sweep(A1, "TRX", None, 5_000_000)
    assert usdt is not None and trx is not None
    # Ordering paused: only TRX rows may start, so the older USDT row does not block.
    [claimed] = known.claim("w1", WORK, limit=10, lease_seconds=60, queued_kinds=(AssetKind.TRX,))
    assert claimed.id == trx
    known.release(trx, "w1")
    # Both kinds may start: the older goes first.
    [claimed] = known.claim("w1", WORK, limit=10, lease_seconds=60)
    assert claimed.id == usdt and claimed.state is S.ORDERING
    with pytest.raises(AddressBusy, match=f"has sweep {usdt} \\(ordering\\) past queued"):
        known.transition(trx, S.QUEUED, S.SIGNED, reason="jumping the queue", exclusive=True)
    # The USDT row goes back to wait an hour (a price above the cap): the TRX row may go now.
    known.transition(
        usdt, S.ORDERING, S.QUEUED, reason="price above the cap", holder="w1", release=True,
        changes={"next_attempt_at": clock() + timedelta(hours=1)},
    )  # fmt: skip
    [claimed] = known.claim("w2", WORK, limit=10, lease_seconds=60)
    assert claimed.id == trx
    known.transition(trx, S.QUEUED, S.SIGNED, reason="now", holder="w2", exclusive=True)
    clock.advance(3700)  # the USDT row is due again, but the TRX sweep is past queued
    assert [r.id for r in known.claim("w3", WORK, limit=10, lease_seconds=60)] == [trx]  # not usdt


def test_a_cancellation_may_cool_the_pair_down(known: Ledger) -> None:
    trx = known.queue_sweep(A1, "TRX", None, 1_000_000)
    assert trx is not None
    known.transition(trx, S.QUEUED, S.CANCELLED, reason="below min_sweep once the fee is paid", cooldown=True)
    assert known.cooldown(A1, "TRX") is not None
    assert known.queue_sweep(A1, "TRX", None, 1_000_000) is None  # not queued again while it lasts
    assert known.queue_sweep(A1, "USDT", USDT, 20_000_000) is not None  # the token is not affected


def test_concurrent_claimers_never_start_two_sweeps_of_one_address(engine: Engine, clock: FakeClock) -> None:
    """Many addresses, each with a USDT and a TRX sweep queued; eight threads claim at once (SKIP
    LOCKED on Postgres): at no point are two sweeps of one address past queued or leased together."""
    ledger = Ledger(engine, clock=clock)
    addresses = [A1, A2]
    ledger.upsert_addresses([NewAddress(a, "import") for a in addresses])
    for address in addresses:
        ledger.queue_sweep(address, "TRX", None, 5_000_000)
        ledger.queue_sweep(address, "USDT", USDT, 20_000_000)
    results: list[list[int]] = []
    lock = threading.Lock()

    def claim(worker: str) -> None:
        rows = ledger.claim(worker, WORK, limit=10, lease_seconds=60)
        with lock:
            results.append([r.id for r in rows])

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    started = [ledger.get_sweep(i) for batch in results for i in batch]
    assert sorted(r.address for r in started) == sorted(addresses)  # one per address, no more
    assert all(r.is_trx for r in started)  # the TRX rows were queued first
