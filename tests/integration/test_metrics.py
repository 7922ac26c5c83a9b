"""Metrics from a real ledger (SQLite and Postgres): gauges, and the stuck-sweep boundary, exactly."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from sweeper.domain import SweepState
from sweeper.ledger import Ledger, NewAddress
from sweeper.ledger.queries import last_completed_scan, stuck_sweeps
from sweeper.metrics import Metrics
from tests.conftest import FakeClock
from tests.constants import USDT

S = SweepState
A1 = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
A2 = "TSeJkUh4Qv67VNFwY8LaAxERygNdy6NQZK"
A3 = "TYJPRrdB5APNeRs4R7fYZSwW3TcrTKw2gx"
STUCK = 1800
TINY = timedelta(microseconds=1)


@pytest.fixture
def known(ledger: Ledger) -> Ledger:
    ledger.upsert_addresses(NewAddress(a, "hd", hd_index=i) for i, a in enumerate([A1, A2, A3]))
    return ledger


def queue(ledger: Ledger, address: str, amount: int) -> int:
    sweep_id = ledger.queue_sweep(address, "USDT", USDT, amount)
    assert sweep_id is not None
    return sweep_id


def step(ledger: Ledger, sweep_id: int, source: S, target: S, **changes: object) -> None:
    ledger.transition(
        sweep_id, source, target, reason=f"test: {source.value} -> {target.value}", changes=changes
    )


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_fresh_metrics_are_zero_or_unknown() -> None:
    metrics = Metrics()
    for state in SweepState:
        assert value(metrics, "sweeper_sweeps", state=state.value) == 0
    assert math.isnan(value(metrics, "sweeper_provider_balance_sun") or 0.0)
    assert math.isnan(value(metrics, "sweeper_detection_lag_seconds") or 0.0)
    assert value(metrics, "sweeper_stuck_sweeps") == 0
    assert value(metrics, "sweeper_node_errors_total") == 0
    assert value(metrics, "sweeper_provider_errors_total") == 0


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # a global registry would refuse the second
    first.node_errors.inc()
    assert value(first, "sweeper_node_errors_total") == 1
    assert value(second, "sweeper_node_errors_total") == 0


def test_refresh_from_ledger_gauges(known: Ledger, clock: FakeClock) -> None:
    confirmed = queue(known, A1, 15_000_000)
    path = [S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.SIGNED, S.BROADCAST, S.CONFIRMED]
    current = S.QUEUED
    for target in path:
        changes: dict[str, object] = {}
        if target is S.ENERGY_ORDERED:
            changes = {"cost_sun": 2_500_000, "serial": "S1"}
        if target is S.SIGNED:
            changes = {"amount": 14_000_000}
        step(known, confirmed, current, target, **changes)
        current = target
    failed = queue(known, A2, 20_000_000)
    step(known, failed, S.QUEUED, S.ORDERING)
    step(known, failed, S.ORDERING, S.ENERGY_ORDERED, cost_sun=1_000_000, serial="S2")
    step(known, failed, S.ENERGY_ORDERED, S.FAILED)
    queue(known, A3, 30_000_000)

    metrics = Metrics()
    snapshot = metrics.refresh_from_ledger(known, stuck_after_seconds=STUCK, now=clock())
    assert value(metrics, "sweeper_sweeps", state="confirmed") == 1
    assert value(metrics, "sweeper_sweeps", state="failed") == 1
    assert value(metrics, "sweeper_sweeps", state="queued") == 1
    assert value(metrics, "sweeper_sweeps", state="ordering") == 0
    assert value(metrics, "sweeper_swept_base_units_total", token="USDT") == 14_000_000  # what moved
    assert value(metrics, "sweeper_energy_spend_sun_total") == 3_500_000  # failed orders were paid too
    assert value(metrics, "sweeper_deposit_addresses") == 3
    assert value(metrics, "sweeper_stuck_sweeps") == 0
    assert snapshot.stats.by_state["confirmed"] == 1
    assert not snapshot.stuck
    text = metrics.render().decode()
    assert 'sweeper_swept_base_units_total{token="USDT"} 1.4e+07' in text
    assert 'sweeper_sweeps{state="queued"} 1.0' in text
    # Native TRX beside USDT (issue 17): swept per asset, and what the sweeps' own transactions burnt.
    trx = known.queue_sweep(A3, "TRX", None, 20_000_000)
    assert trx is not None
    known.transition(trx, S.QUEUED, S.SIGNED, reason="signed", exclusive=True, changes={"amount": 19_732_000})
    step(known, trx, S.SIGNED, S.BROADCAST)
    step(known, trx, S.BROADCAST, S.CONFIRMED, fee_sun=268_000)
    metrics.refresh_from_ledger(known, stuck_after_seconds=STUCK, now=clock())
    assert value(metrics, "sweeper_swept_base_units_total", token="TRX") == 19_732_000
    assert value(metrics, "sweeper_swept_base_units_total", token="USDT") == 14_000_000
    assert value(metrics, "sweeper_fee_burnt_sun_total") == 268_000


def test_stuck_boundary_is_exact(known: Ledger, clock: FakeClock) -> None:
    """Stuck = in one open state for MORE than stuck_after_seconds; at exactly the limit, not yet."""
    t0 = clock()
    queued = queue(known, A1, 15_000_000)
    clock.advance(100)
    ordering = queue(known, A2, 15_000_000)
    step(known, ordering, S.QUEUED, S.ORDERING)  # entered ordering at t0 + 100
    done = queue(known, A3, 15_000_000)
    step(known, done, S.QUEUED, S.CANCELLED)  # final states are never stuck
    metrics = Metrics()

    def stuck_at(now_offset: timedelta) -> float | None:
        metrics.refresh_from_ledger(known, stuck_after_seconds=STUCK, now=t0 + now_offset)
        return value(metrics, "sweeper_stuck_sweeps")

    limit = timedelta(seconds=STUCK)
    assert stuck_at(limit) == 0
    assert stuck_at(limit + TINY) == 1
    assert metrics.stuck_count == 1
    assert metrics.last_snapshot is not None
    assert metrics.last_snapshot.stuck.by_state == {"queued": 1}
    assert [(s.id, s.state, s.since) for s in metrics.last_snapshot.stuck.oldest] == [(queued, "queued", t0)]
    assert stuck_at(limit + timedelta(seconds=100)) == 1
    assert stuck_at(limit + timedelta(seconds=100) + TINY) == 2
    snapshot = metrics.last_snapshot
    assert snapshot.stuck.by_state == {"queued": 1, "ordering": 1}
    assert [s.id for s in snapshot.stuck.oldest] == [queued, ordering]  # longest stuck first


def test_a_row_cycling_between_states_still_counts_from_its_first_claim(
    known: Ledger, clock: FakeClock
) -> None:
    """Issue 11: the stuck clock starts at the first claim and no transition restarts it, so a row
    that keeps going ordering -> queued -> ordering, or signed -> energy_ready, still alerts."""
    t0 = clock()
    sweep = queue(known, A1, 15_000_000)
    [claimed] = known.claim("worker-1", [S.QUEUED], limit=1, lease_seconds=60)
    assert claimed.first_claimed_at == t0
    for _ in range(3):  # back to the queue and claimed again, each time a little later
        clock.advance(STUCK / 4)
        known.transition(sweep, S.ORDERING, S.QUEUED, reason="back off", holder="worker-1", release=True)
        known.claim("worker-1", [S.QUEUED], limit=1, lease_seconds=60)
    clock.advance(STUCK / 4)
    assert known.get_sweep(sweep).first_claimed_at == t0
    assert stuck_sweeps(known.engine, entered_before=t0).count == 0  # exactly at the limit: not yet
    stuck = stuck_sweeps(known.engine, entered_before=t0 + TINY)
    assert stuck.count == 1 and stuck.oldest[0].since == t0 and stuck.by_state == {"ordering": 1}


def test_a_released_claim_does_not_restart_the_stuck_clock(known: Ledger, clock: FakeClock) -> None:
    t0 = clock()
    sweep = queue(known, A1, 15_000_000)
    [claimed] = known.claim("worker-1", [S.QUEUED], limit=1, lease_seconds=60)
    assert claimed.id == sweep
    clock.advance(STUCK)
    known.release(sweep, "worker-1", last_error="provider unreachable", count_attempt=True)
    stuck = stuck_sweeps(known.engine, entered_before=t0 + TINY)
    assert stuck.count == 1
    assert stuck.by_state == {"ordering": 1}


def test_detection_lag_from_the_last_completed_scan_pass(known: Ledger, clock: FakeClock) -> None:
    metrics = Metrics()
    assert last_completed_scan(known.engine) is None
    metrics.refresh_from_ledger(known, stuck_after_seconds=STUCK, now=clock())
    assert math.isnan(value(metrics, "sweeper_detection_lag_seconds") or 0.0)

    known.begin_scan_pass("poll")
    clock.advance(5)
    known.complete_scan_pass("poll")
    completed = clock()
    assert last_completed_scan(known.engine) == completed
    clock.advance(60)
    metrics.refresh_from_ledger(known, stuck_after_seconds=STUCK, now=clock())
    assert value(metrics, "sweeper_detection_lag_seconds") == 60

    # A new pass in progress clears completed_at: the gauge keeps its last value (the daemon,
    # which knows when its own passes completed, sets it too).
    known.begin_scan_pass("poll")
    clock.advance(30)
    metrics.refresh_from_ledger(known, stuck_after_seconds=STUCK, now=clock())
    assert value(metrics, "sweeper_detection_lag_seconds") == 60
    metrics.set_detection_lag(completed, clock())
    assert value(metrics, "sweeper_detection_lag_seconds") == 90


def test_held_addresses_spend_today_and_the_ordering_pause_are_gauges(
    known: Ledger, clock: FakeClock
) -> None:
    metrics = Metrics()
    sweep = queue(known, A1, 15_000_000)
    assert len(known.claim("w", [S.QUEUED], limit=1, lease_seconds=60)) == 1
    reservation = known.reserve_order(sweep, "w", price_sun=4_000_000, cap_sun=10_000_000)
    assert reservation is not None and reservation.reserved
    known.transition(sweep, S.ORDERING, S.FAILED, reason="paid, then failed", holder="w", hold=True)
    known.set_pause("ordering", "an order cost too much")
    metrics.refresh_from_ledger(known, stuck_after_seconds=STUCK, now=clock())
    assert value(metrics, "sweeper_held_addresses") == 1
    assert value(metrics, "sweeper_spent_today_sun") == 4_000_000
    assert value(metrics, "sweeper_ordering_paused") == 1
    known.release_holds(A1)
    known.clear_pause("ordering")
    metrics.refresh_from_ledger(known, stuck_after_seconds=STUCK, now=clock())
    assert value(metrics, "sweeper_held_addresses") == 0 and value(metrics, "sweeper_ordering_paused") == 0
