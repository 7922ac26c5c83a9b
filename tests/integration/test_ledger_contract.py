"""The ledger contract, run against SQLite and real Postgres alike (the `db_url` fixture)."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from sweeper.domain import TRANSITIONS, IllegalTransition, SweepState
from sweeper.ledger import Ledger, LedgerError, NewAddress, OpenSweepExists, SweepNotFound
from tests.conftest import FakeClock
from tests.constants import USDT

S = SweepState
A1 = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
A2 = "TSeJkUh4Qv67VNFwY8LaAxERygNdy6NQZK"
A3 = "TYJPRrdB5APNeRs4R7fYZSwW3TcrTKw2gx"


@pytest.fixture
def known(ledger: Ledger) -> Ledger:
    ledger.upsert_addresses(NewAddress(a, "hd", hd_index=i) for i, a in enumerate([A1, A2, A3]))
    return ledger


def queue(ledger: Ledger, address: str = A1, amount: int = 15_000_000) -> int:
    sweep_id = ledger.queue_sweep(address, "USDT", USDT, amount)
    assert sweep_id is not None
    return sweep_id


# A path through the machine that reaches each source state, so every legal edge can be tested.
PATH_TO = {
    S.QUEUED: [],
    S.ORDERING: [S.ORDERING],
    S.ENERGY_ORDERED: [S.ORDERING, S.ENERGY_ORDERED],
    S.ENERGY_READY: [S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY],
    S.SIGNED: [S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.SIGNED],
    S.BROADCAST: [S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.SIGNED, S.BROADCAST],
    S.CONFIRMED: [S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.SIGNED, S.BROADCAST, S.CONFIRMED],
    S.FAILED: [S.ORDERING, S.FAILED],
    S.CANCELLED: [S.CANCELLED],
}


def drive(ledger: Ledger, sweep_id: int, to: S) -> None:
    current = S.QUEUED
    for step in PATH_TO[to]:
        ledger.transition(sweep_id, current, step, reason=f"test: {current.value} -> {step.value}")
        current = step


LEGAL = sorted(
    ((src, dst) for src, dsts in TRANSITIONS.items() if src is not None for dst in dsts),
    key=lambda p: (p[0], p[1]),
)


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=[f"{a.value}->{b.value}" for a, b in LEGAL])
def test_every_legal_transition_updates_state_and_writes_one_event(
    known: Ledger, source: S, target: S, clock: FakeClock
) -> None:
    sweep_id = queue(known)
    drive(known, sweep_id, source)
    before = len(known.events(sweep_id))
    clock.advance(7)
    record = known.transition(sweep_id, source, target, reason="why it moved", data={"k": 1})
    assert record.state is target
    assert known.get_sweep(sweep_id).state is target
    assert record.updated_at == clock()
    history = known.events(sweep_id)
    assert len(history) == before + 1
    last = history[-1]
    assert (last.from_state, last.to_state, last.reason, last.data) == (
        source.value,
        target.value,
        "why it moved",
        {"k": 1},
    )
    assert last.at == clock()


def test_birth_is_queued_with_event(known: Ledger, clock: FakeClock) -> None:
    sweep_id = queue(known, amount=123)
    sweep = known.get_sweep(sweep_id)
    assert (sweep.state, sweep.observed_amount, sweep.amount, sweep.attempts) == (S.QUEUED, 123, 123, 0)
    assert sweep.created_at == clock()
    [event] = known.events(sweep_id)
    assert (event.from_state, event.to_state) == (None, "queued")


ILLEGAL = [
    (S.QUEUED, S.ENERGY_ORDERED),
    (S.QUEUED, S.SIGNED),
    (S.QUEUED, S.CONFIRMED),
    (S.ORDERING, S.SIGNED),
    (S.ENERGY_ORDERED, S.QUEUED),
    (S.ENERGY_ORDERED, S.BROADCAST),
    (S.ENERGY_READY, S.BROADCAST),
    (S.SIGNED, S.CONFIRMED),
    (S.SIGNED, S.FAILED),
    (S.BROADCAST, S.SIGNED),
    (S.CONFIRMED, S.QUEUED),
    (S.FAILED, S.QUEUED),
    (S.CANCELLED, S.QUEUED),
    (S.CONFIRMED, S.FAILED),
]


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=[f"{a.value}->{b.value}" for a, b in ILLEGAL])
def test_illegal_transitions_raise_and_change_nothing(known: Ledger, source: S, target: S) -> None:
    sweep_id = queue(known)
    drive(known, sweep_id, source)
    before = (known.get_sweep(sweep_id), known.events(sweep_id))
    with pytest.raises(IllegalTransition):
        known.transition(sweep_id, source, target, reason="must not happen", changes={"txid": "ab" * 32})
    assert (known.get_sweep(sweep_id), known.events(sweep_id)) == before


def test_stale_source_state_is_refused(known: Ledger) -> None:
    """The caller saw `queued`, but the row moved on: the guarded UPDATE refuses."""
    sweep_id = queue(known)
    known.transition(sweep_id, S.QUEUED, S.ORDERING, reason="claimed")
    before = known.events(sweep_id)
    with pytest.raises(IllegalTransition, match="is ordering; expected queued"):
        known.transition(sweep_id, S.QUEUED, S.CANCELLED, reason="operator")
    assert known.get_sweep(sweep_id).state is S.ORDERING
    assert known.events(sweep_id) == before


def test_unknown_sweep_and_unknown_columns(known: Ledger) -> None:
    with pytest.raises(SweepNotFound):
        known.transition(9999, S.QUEUED, S.ORDERING, reason="x")
    sweep_id = queue(known)
    with pytest.raises(ValueError, match="cannot set"):
        known.transition(sweep_id, S.QUEUED, S.ORDERING, reason="x", changes={"state": "confirmed"})
    with pytest.raises(ValueError, match="cannot set"):
        known.transition(sweep_id, S.QUEUED, S.ORDERING, reason="x", changes={"observed_amount": 1})
    assert known.get_sweep(sweep_id).state is S.QUEUED


def test_transition_records_fields(known: Ledger) -> None:
    sweep_id = queue(known)
    drive(known, sweep_id, S.ORDERING)
    record = known.transition(
        sweep_id, S.ORDERING, S.ENERGY_ORDERED, reason="provider accepted",
        changes={"serial": "7297a8a2a9e39b86fc5bad0d2e9edda2", "scene": 0, "cost_sun": 4_000_000,
                 "provider_balance_sun": 813_900_029_257},
    )  # fmt: skip
    assert (record.serial, record.cost_sun, record.provider_balance_sun) == (
        "7297a8a2a9e39b86fc5bad0d2e9edda2",
        4_000_000,
        813_900_029_257,
    )


def test_partial_unique_index_allows_one_open_sweep_per_address_and_token(
    known: Ledger, engine: Engine
) -> None:
    first = queue(known, A1)
    assert known.queue_sweep(A1, "USDT", USDT, 20_000_000) is None  # open one exists
    assert known.queue_sweep(A2, "USDT", USDT, 20_000_000) is not None  # other address: fine
    assert known.queue_sweep(A1, "USDD", "TPYmHEhy5n8TCEfYGqW2rPxsghSfzghPDn", 5) is not None  # other token
    # Enforced by the database itself, not only by queue_sweep.
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sweeps (address, token, token_contract, state, observed_amount, amount, attempts,"
                " created_at, updated_at) VALUES (:a, 'USDT', :c, 'queued', 1, 1, 0, :t, :t)"
            ),
            {"a": A1, "c": USDT, "t": known.now()},
        )
    # Once final, a new sweep for the same money may be queued.
    drive(known, first, S.CONFIRMED)
    assert known.queue_sweep(A1, "USDT", USDT, 20_000_000) is not None


def test_database_checks_reject_bad_state_and_negative_amount(known: Ledger, engine: Engine) -> None:
    sweep_id = queue(known)
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE sweeps SET state = 'lost' WHERE id = :id"), {"id": sweep_id})
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(text("UPDATE sweeps SET amount = -1 WHERE id = :id"), {"id": sweep_id})
    with pytest.raises(IntegrityError):  # foreign key: only known deposit addresses
        known.queue_sweep("TT2X2yyubp7qpAWYYNE5JQWBtoZ7ikQFsY", "USDT", USDT, 1)


def test_sweep_events_are_append_only(known: Ledger, engine: Engine) -> None:
    sweep_id = queue(known)
    for statement in ("UPDATE sweep_events SET reason = 'rewritten'", "DELETE FROM sweep_events"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    assert known.events(sweep_id)[0].reason != "rewritten"


@pytest.mark.parametrize(
    "big", [2**63 - 1, 2**63, 2**63 + 1, 10**27, 10**27 + 1, 10**78 - 1], ids=lambda v: f"{v:.3g}"
)
def test_any_tokens_whole_supply_stays_exact(known: Ledger, big: int) -> None:
    """Issue 12: amounts are NUMERIC(78,0) / exact 78-digit text; the first wave's BigInteger
    overflowed above ~9.2 units of an 18-decimal token."""
    sweep_id = queue(known, amount=big)
    assert known.get_sweep(sweep_id).observed_amount == big
    known.transition(sweep_id, S.QUEUED, S.ORDERING, reason="claimed")
    known.transition(sweep_id, S.ORDERING, S.ENERGY_READY, reason="energy there", changes={"amount": big - 1})
    known.transition(sweep_id, S.ENERGY_READY, S.SIGNED, reason="signed")
    known.transition(sweep_id, S.SIGNED, S.BROADCAST, reason="sent")
    known.transition(sweep_id, S.BROADCAST, S.CONFIRMED, reason="confirmed", changes={"amount": big})
    other = queue(known, A2, amount=big)
    for source, target in [(S.QUEUED, S.ORDERING), (S.ORDERING, S.ENERGY_READY), (S.ENERGY_READY, S.SIGNED),
                           (S.SIGNED, S.BROADCAST), (S.BROADCAST, S.CONFIRMED)]:  # fmt: skip
        known.transition(other, source, target, reason="x")
    assert known.stats().swept_by_token["USDT"] == 2 * big  # exact, not a float


def test_amounts_outside_the_range_are_refused(known: Ledger, engine: Engine) -> None:
    with pytest.raises(ValueError, match="base-unit amount"):
        known.queue_sweep(A2, "USDT", USDT, 10**78)
    with pytest.raises(ValueError, match="base-unit amount"):
        known.queue_sweep(A2, "USDT", USDT, -5)
    sweep_id = queue(known)
    # The database refuses what the ledger would never write (text, negative, too long).
    for bad in ("abc", "-1", "1" * 79):
        with pytest.raises(DBAPIError), engine.begin() as conn:
            conn.execute(text("UPDATE sweeps SET amount = :v WHERE id = :id"), {"v": bad, "id": sweep_id})
    assert known.get_sweep(sweep_id).amount == 15_000_000


# --- leases --------------------------------------------------------------------------------------


def test_claim_moves_queued_to_ordering_with_lease(known: Ledger, clock: FakeClock) -> None:
    ids = [queue(known, a) for a in (A1, A2, A3)]
    claimed = known.claim("w1", [S.QUEUED], limit=2, lease_seconds=30)
    assert [c.id for c in claimed] == ids[:2]
    for c in claimed:
        assert (c.state, c.claimed_by, c.lease_until) == (
            S.ORDERING,
            "w1",
            clock.advance(0) + timedelta(seconds=30),
        )
        assert [(e.from_state, e.to_state, e.actor) for e in known.events(c.id)][-1] == (
            "queued",
            "ordering",
            "w1",
        )
    assert [c.id for c in known.claim("w2", [S.QUEUED], limit=10, lease_seconds=30)] == ids[2:]
    assert known.claim("w3", [S.QUEUED], limit=10, lease_seconds=30) == []


def test_lease_expires_exactly_at_lease_until(known: Ledger, clock: FakeClock) -> None:
    sweep_id = queue(known)
    drive(known, sweep_id, S.ENERGY_ORDERED)
    assert [c.id for c in known.claim("w1", [S.ENERGY_ORDERED], limit=5, lease_seconds=60)] == [sweep_id]
    clock.advance(59.999999)
    assert known.claim("w2", [S.ENERGY_ORDERED], limit=5, lease_seconds=60) == []  # still held
    clock.advance(0.000001)  # now == lease_until: the lease has run out
    taken = known.claim("w2", [S.ENERGY_ORDERED], limit=5, lease_seconds=60)
    assert [(c.id, c.claimed_by, c.state) for c in taken] == [(sweep_id, "w2", S.ENERGY_ORDERED)]
    # The old holder can no longer move the row; the new one can.
    with pytest.raises(IllegalTransition, match="claimed by w2"):
        known.transition(sweep_id, S.ENERGY_ORDERED, S.ENERGY_READY, reason="late", holder="w1")
    assert not known.renew_lease(sweep_id, "w1", 60)
    record = known.transition(sweep_id, S.ENERGY_ORDERED, S.ENERGY_READY, reason="delegated", holder="w2")
    assert record.claimed_by == "w2"


def test_next_attempt_at_defers_claims(known: Ledger, clock: FakeClock) -> None:
    sweep_id = queue(known)
    [claimed] = known.claim("w1", [S.QUEUED], limit=1, lease_seconds=60)
    known.transition(
        sweep_id, S.ORDERING, S.QUEUED, reason="provider down", holder="w1", release=True,
        changes={"next_attempt_at": clock() + timedelta(seconds=120), "attempts": claimed.attempts + 1, "last_error": "503"},
    )  # fmt: skip
    clock.advance(119)
    assert known.claim("w1", [S.QUEUED], limit=1, lease_seconds=60) == []
    clock.advance(1)
    [again] = known.claim("w1", [S.QUEUED], limit=1, lease_seconds=60)
    assert (again.id, again.attempts, again.last_error) == (sweep_id, 1, "503")


def test_final_states_drop_the_claim_and_release_works(known: Ledger) -> None:
    sweep_id = queue(known)
    known.claim("w1", [S.QUEUED], limit=1, lease_seconds=60)
    final = known.transition(sweep_id, S.ORDERING, S.FAILED, reason="rejected", holder="w1")
    assert (final.claimed_by, final.lease_until) == (None, None)
    other = queue(known, A2)
    known.claim("w1", [S.QUEUED], limit=1, lease_seconds=60)
    assert known.release(other, "w1")
    assert known.get_sweep(other).claimed_by is None
    assert not known.release(other, "w1")


# --- operator actions ------------------------------------------------------------------------------


def test_cancel_only_queued(known: Ledger) -> None:
    sweep_id = queue(known)
    assert known.cancel(sweep_id).state is S.CANCELLED
    other = queue(known, A2)
    drive(known, other, S.ORDERING)
    with pytest.raises(LedgerError, match="only a queued sweep"):
        known.cancel(other)
    assert known.get_sweep(other).state is S.ORDERING


def test_retry_creates_a_new_row_once(known: Ledger) -> None:
    sweep_id = queue(known, amount=77)
    with pytest.raises(LedgerError, match="only a failed sweep"):
        known.retry(sweep_id)
    drive(known, sweep_id, S.FAILED)
    new_id = known.retry(sweep_id)
    new = known.get_sweep(new_id)
    assert (new.state, new.retry_of, new.observed_amount, new.address) == (S.QUEUED, sweep_id, 77, A1)
    assert known.get_sweep(sweep_id).state is S.FAILED
    assert known.events(new_id)[0].reason == f"retry of sweep {sweep_id}"
    drive(known, new_id, S.FAILED)
    with pytest.raises(LedgerError, match=f"already retried as sweep {new_id}"):
        known.retry(sweep_id)


def test_retry_refused_while_address_has_a_sweep_in_progress(known: Ledger) -> None:
    failed = queue(known)
    drive(known, failed, S.FAILED)
    open_id = queue(known)
    known.claim("w", [S.QUEUED], limit=1, lease_seconds=60)  # ordering: being swept already
    with pytest.raises(OpenSweepExists, match=f"open USDT sweep \\({open_id}\\)"):
        known.retry(failed)
    assert known.get_sweep(open_id).state is S.ORDERING


def test_retry_takes_the_slot_of_a_row_the_scanner_queued_meanwhile(known: Ledger) -> None:
    """Whoever got there first, the operator's retry ends with exactly one open row: the retry's."""
    failed = queue(known)
    drive(known, failed, S.FAILED)
    scanned = queue(known)  # the scanner queued the address again before the operator acted
    new_id = known.retry(failed)
    assert known.get_sweep(scanned).state is S.CANCELLED
    assert "superseded by the operator's retry" in known.events(scanned)[-1].reason
    assert known.get_sweep(new_id).state is S.QUEUED
    assert [s.id for s in known.list_sweeps() if not s.is_final] == [new_id]


def test_stats_and_listing(known: Ledger) -> None:
    done = queue(known, A1, 10_000_000)
    drive(known, done, S.ENERGY_ORDERED)
    known.transition(done, S.ENERGY_ORDERED, S.ENERGY_READY, reason="x")
    known.transition(done, S.ENERGY_READY, S.SIGNED, reason="x", changes={"amount": 10_500_000})
    known.transition(done, S.SIGNED, S.BROADCAST, reason="x")
    known.transition(done, S.BROADCAST, S.CONFIRMED, reason="x")
    with known.engine.begin() as conn:  # cost recorded at ordering in real runs
        conn.execute(text("UPDATE sweeps SET cost_sun = 4000000 WHERE id = :id"), {"id": done})
    queue(known, A2)
    stats = known.stats()
    assert stats.by_state["confirmed"] == 1 and stats.by_state["queued"] == 1
    assert stats.swept_by_token == {"USDT": 10_500_000}
    assert stats.energy_cost_sun == 4_000_000
    assert stats.addresses == 3
    assert [s.id for s in known.list_sweeps()] == sorted([s.id for s in known.list_sweeps()], reverse=True)
    assert [s.state for s in known.list_sweeps(state=S.QUEUED)] == [S.QUEUED]


def test_upsert_addresses_is_idempotent(ledger: Ledger) -> None:
    assert ledger.upsert_addresses([NewAddress(A1, "hd", 0), NewAddress(A2, "file")]) == 2
    assert ledger.upsert_addresses([NewAddress(A1, "hd", 0), NewAddress(A3, "import", label="shop 3")]) == 1
    listed = ledger.list_addresses()
    assert [(a.address, a.source, a.label) for a in listed] == [
        (A1, "hd", None),
        (A2, "file", None),
        (A3, "import", "shop 3"),
    ]
    assert [a.address for a in ledger.list_addresses(after_id=listed[0].id, limit=1)] == [A2]


def test_event_data_is_json(known: Ledger, engine: Engine) -> None:
    sweep_id = queue(known)
    known.transition(sweep_id, S.QUEUED, S.ORDERING, reason="x", data={"serial": "abc", "n": 1})
    with engine.connect() as conn:
        raw = conn.execute(text("SELECT data FROM sweep_events WHERE to_state = 'ordering'")).scalar_one()
    assert json.loads(raw) == {"n": 1, "serial": "abc"}


# --- hints (verified provider callbacks) -----------------------------------------------------------


def _deferred_order(ledger: Ledger, clock: FakeClock, address: str, serial: str) -> int:
    """An energy_ordered sweep with `serial`, released by its worker until 10 minutes from now."""
    sweep_id = queue(ledger, address)
    [claimed] = ledger.claim("w1", [S.QUEUED], limit=1, lease_seconds=60)
    assert claimed.id == sweep_id
    ledger.transition(
        sweep_id, S.ORDERING, S.ENERGY_ORDERED, reason="ordered", holder="w1", changes={"serial": serial}
    )
    assert ledger.release(sweep_id, "w1", next_attempt_at=clock() + timedelta(seconds=600))
    return sweep_id


@pytest.mark.parametrize("by", ["sweep_id", "serial"])
def test_hint_makes_a_deferred_open_sweep_due_now(known: Ledger, clock: FakeClock, by: str) -> None:
    serial = "a1" * 16
    sweep_id = _deferred_order(known, clock, A1, serial)
    other = _deferred_order(known, clock, A2, "b2" * 16)
    clock.advance(5)
    assert known.claim("w2", [S.ENERGY_ORDERED], limit=5, lease_seconds=60) == []  # both deferred
    before, other_before = known.get_sweep(sweep_id), known.get_sweep(other)
    events_before = known.events(sweep_id)
    hinted = known.hint(sweep_id=sweep_id) if by == "sweep_id" else known.hint(serial=serial)
    assert hinted == sweep_id
    after = known.get_sweep(sweep_id)
    assert after.next_attempt_at is not None and after.next_attempt_at <= clock()
    # Only a hint: the state, the rest of the row and the history are unchanged.
    assert after == dataclasses.replace(before, next_attempt_at=after.next_attempt_at)
    assert known.events(sweep_id) == events_before
    assert known.get_sweep(other) == other_before  # another open sweep stays deferred
    [claimed] = known.claim("w2", [S.ENERGY_ORDERED], limit=5, lease_seconds=60)
    assert (claimed.id, claimed.state) == (sweep_id, S.ENERGY_ORDERED)


def test_hint_never_touches_a_final_sweep_and_ignores_unknown_ids(known: Ledger, clock: FakeClock) -> None:
    serial = "c3" * 16
    sweep_id = queue(known)
    known.transition(sweep_id, S.QUEUED, S.ORDERING, reason="claimed")
    known.transition(sweep_id, S.ORDERING, S.ENERGY_ORDERED, reason="ordered", changes={"serial": serial})
    known.transition(
        sweep_id, S.ENERGY_ORDERED, S.FAILED, reason="order ended 43",
        changes={"next_attempt_at": clock() + timedelta(seconds=600)},
    )  # fmt: skip
    clock.advance(5)
    before = (known.get_sweep(sweep_id), known.events(sweep_id))
    assert known.hint(sweep_id=sweep_id) is None
    assert known.hint(serial=serial) is None
    assert (known.get_sweep(sweep_id), known.events(sweep_id)) == before
    assert known.hint(sweep_id=sweep_id + 1000) is None
    assert known.hint(serial="ff" * 16) is None
    assert known.hint() is None
