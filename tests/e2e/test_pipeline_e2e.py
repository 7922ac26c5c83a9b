"""The pipeline as real processes against the combined sandbox, on SQLite and Postgres.

- 50 addresses: every one above threshold swept exactly once, exact amount, one order per row,
  no TRX burnt; none below threshold touched.
- kill -9 while a sweep is frozen in each state, then a restart: still one order and one on-chain
  transfer per row, all confirmed.
- two pipeline processes on one Postgres ledger: no row handled twice.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sweeper.domain import SweepState
from tests.constants import WALLET
from tests.e2e.harness import (
    DESTINATION,
    Sandbox,
    describe_open,
    kill9,
    ledger_for,
    run_sweeper,
    sandbox,
    start_sweeper,
    state_of,
    wait_until,
    write_config,
)
from tests.e2e.invariants import assert_invariants

S = SweepState
N = 50


def deposit(i: int) -> int:
    """Zero, below, and a spread of amounts above the 10 USDT threshold."""
    if i % 5 == 0:
        return 0
    if i % 5 == 1:
        return 5_000_000 + i
    return 10_000_000 + i * 1_234_567


def test_fifty_addresses_each_swept_exactly_once(tmp_path: Path, db_url: str) -> None:
    with sandbox() as box:
        control = box.control
        addresses = [WALLET.address(i) for i in range(N)]
        for i, address in enumerate(addresses):
            if deposit(i):
                control.credit_usdt(address, deposit(i))
            if i % 2 == 0:
                control.activate(address)
        config = write_config(tmp_path, db_url, box, hd_count=N)
        run_sweeper(config, box, "migrate")
        started = time.monotonic()
        run_sweeper(config, box, "scan")
        work = run_sweeper(config, box, "work", "--until-final", "--timeout", "200", check=False)
        assert work.returncode == 0, (
            f"work exited {work.returncode}: {work.stderr[-3000:]}\n{describe_open(db_url)}"
        )
        wall = time.monotonic() - started
        above = {a: deposit(i) for i, a in enumerate(addresses) if deposit(i) >= 10_000_000}
        ledger = ledger_for(db_url)
        rows = ledger.list_sweeps()
        assert {r.address for r in rows} == set(above), "one row per address above threshold, none below"
        counts = control.order_counts()
        for row in rows:
            assert row.state is S.CONFIRMED, (row.id, row.state, row.last_error)
            assert row.amount == above[row.address] and row.destination == DESTINATION
            assert row.serial and row.cost_sun and row.txid
            assert counts.get(row.out_trade_no) == 1, f"sweep {row.id}: {counts.get(row.out_trade_no)} orders"
            txs = control.transactions(owner=row.address)
            assert [t.txid for t in txs] == [row.txid]
            assert txs[0].result == "SUCCESS" and txs[0].energy_fee_sun == 0 and txs[0].net_fee_sun == 0
            assert control.usdt_balance(row.address) == 0
            assert control.trx_balance(row.address) == 0
        for i, address in enumerate(addresses):
            if address not in above:
                assert control.usdt_balance(address) == deposit(i)
                assert control.transactions(owner=address) == []
        assert control.usdt_balance(DESTINATION) == sum(above.values())
        assert len(control.orders()) == len(above)
        assert_invariants(db_url, control, destination=DESTINATION)
        print(
            f"\n50 addresses, {len(above)} sweeps: {wall:.1f} s wall (scan + work) on {db_url.split(':')[0]}"
        )
        ledger.engine.dispose()


def _one_sweep(tmp_path: Path, db_url: str, box: Sandbox, amount: int = 42_000_000) -> tuple[Path, int, str]:
    address = WALLET.address(0)
    box.control.credit_usdt(address, amount)
    config = write_config(tmp_path, db_url, box, hd_count=1)
    run_sweeper(config, box, "migrate")
    run_sweeper(config, box, "scan")
    ledger = ledger_for(db_url)
    [row] = ledger.list_sweeps()
    ledger.engine.dispose()
    return config, row.id, address


def _freeze(box: Sandbox, state: S) -> None:
    control = box.control
    match state:
        case S.ORDERING:
            control.hold_posts("after_create")  # the order exists; our answer never comes
        case S.ENERGY_ORDERED:
            control.set_delegation_delay(None)  # completes only when the test says so
        case S.ENERGY_READY:
            control.set_node_switches(forge_txid=True)  # nothing safe to sign
        case S.SIGNED:
            control.hold_broadcasts()
        case S.BROADCAST:
            control.hold_solidification()


def _thaw(box: Sandbox, state: S, serial: str | None) -> None:
    control = box.control
    match state:
        case S.ORDERING:
            control.release_posts()
            wait_until(
                lambda: control.provider_state().held_posts == 0, timeout=20, what="held POST finished"
            )
        case S.ENERGY_ORDERED:
            assert serial is not None
            control.set_delegation_delay(0)
            control.complete(serial)
        case S.ENERGY_READY:
            control.set_node_switches(forge_txid=False)
        case S.SIGNED:
            control.release_broadcasts()
        case S.BROADCAST:
            control.release_solidification()


def _frozen(box: Sandbox, state: S) -> bool:
    match state:
        case S.ORDERING:
            return box.control.provider_state().held_posts == 1
        case S.SIGNED:
            return box.control.node_state().held_broadcasts == 1
        case _:
            return True


FREEZE_STATES = [S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.SIGNED, S.BROADCAST]


@pytest.mark.parametrize("state", FREEZE_STATES, ids=[s.value for s in FREEZE_STATES])
def test_kill_9_in_each_state_then_restart_moves_money_once(tmp_path: Path, db_url: str, state: S) -> None:
    with sandbox() as box:
        config, sweep_id, address = _one_sweep(tmp_path, db_url, box)
        ledger = ledger_for(db_url)
        _freeze(box, state)
        worker = start_sweeper(config, box, "work", log=tmp_path / "worker-1.log")
        try:
            wait_until(
                lambda: state_of(ledger, sweep_id) is state and _frozen(box, state),
                timeout=60,
                what=f"sweep frozen in {state.value}",
            )
        finally:
            kill9(worker)
        serial = ledger.get_sweep(sweep_id).serial
        _thaw(box, state, serial)
        run_sweeper(config, box, "work", "--until-final", "--timeout", "120")
        row = ledger.get_sweep(sweep_id)
        assert row.state is S.CONFIRMED, (row.state, row.last_error)
        assert row.amount == 42_000_000
        assert box.control.order_counts() == {ledger.get_sweep(sweep_id).out_trade_no: 1}
        txs = box.control.transactions(owner=address)
        assert len(txs) == 1 and txs[0].txid == row.txid and txs[0].result == "SUCCESS"
        assert box.control.usdt_balance(DESTINATION) == 42_000_000
        history = [e.to_state for e in ledger.events(sweep_id)]
        assert history.count("confirmed") == 1 and history.count("energy_ordered") == 1
        assert_invariants(db_url, box.control, destination=DESTINATION)
        ledger.engine.dispose()


@pytest.mark.postgres
def test_two_pipeline_processes_on_one_postgres_ledger(tmp_path: Path, postgres_url: str) -> None:
    with sandbox() as box:
        n = 20
        for i in range(n):
            box.control.credit_usdt(WALLET.address(i), 11_000_000 + i)
        config = write_config(tmp_path, postgres_url, box, hd_count=n, concurrency=4)
        run_sweeper(config, box, "migrate")
        run_sweeper(config, box, "scan")
        workers = [start_sweeper(config, box, "work", "--until-final", "--timeout", "150") for _ in range(2)]
        for w in workers:
            assert w.wait(180) == 0
        ledger = ledger_for(postgres_url)
        rows = ledger.list_sweeps()
        assert len(rows) == n and all(r.state is S.CONFIRMED for r in rows)
        assert set(box.control.order_counts().values()) == {1} and len(box.control.orders()) == n
        for r in rows:
            assert len(box.control.transactions(owner=r.address)) == 1
        actors = {e.actor for r in rows for e in ledger.events(r.id) if e.to_state == "ordering"}
        assert len(actors) == 2, f"both workers should have claimed rows: {actors}"
        assert_invariants(postgres_url, box.control, destination=DESTINATION)
        ledger.engine.dispose()
