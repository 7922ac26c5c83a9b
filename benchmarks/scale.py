"""Scale: sweeps per minute with 500 due at once in the sandbox, and the ledger's transitions per
second with 1 and 4 workers (issue 15).

    .venv-test/bin/python benchmarks/scale.py [--sweeps 500] [--rows 1000] [--part all|sweeps|ledger]

Sweeps: N deposit addresses credited above the threshold in the combined sandbox (its own process,
default block and delegation timing; half the addresses never activated), `sweeper scan` queues all
N (untimed: they are due at once), then `sweeper work --until-final` (timed) takes every row through
order, delegation, signing, broadcast and solidified confirmation, at the default
`pipeline.concurrency`. Baseline in the same run: 50 sweeps the same way, so the figure shows
whether the rate holds as the queue grows. Checked after: every row confirmed, one order each.

Ledger: `--rows` queued sweeps walked to `confirmed` by worker processes through the real ledger API
as the pipeline calls it, without the network: claim (batches of 16, lease), reserve_order (the
day's budget row locked), ordering -> energy_ordered (release: waiting on the delegation),
energy_ordered -> energy_ready -> signed -> broadcast (release: waiting on the chain), broadcast ->
confirmed, a get_sweep between steps as the pipeline re-reads the row. Six transitions per sweep,
each a transaction with its event row; the figure is the count of event rows with a source state
divided by the wall time of the walk. SQLite (`synchronous=FULL`, the ledger's default; one worker:
SQLite is a one-daemon backend) and Postgres with 1 and 4 workers (each its own process and
connection pool, claiming with SKIP LOCKED). Baseline in the same run: a bare
`UPDATE sweeps SET state = ...` per transition, one transaction each, one connection.
Postgres defaults to $SWEEPER_TEST_POSTGRES_URL; each measurement uses a fresh schema, dropped after.

Targets (issue 15): >= 100 sweeps/minute in the sandbox; >= 1,000 transitions/s with 4 workers on
Postgres. Printed PASS/FAIL, never asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Barrier
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, func, insert, select, text, update
from sqlalchemy.engine import make_url

from sweeper.domain import Secret, SweepState
from sweeper.keys import HdWallet
from sweeper.ledger import Ledger, NewAddress, make_engine, upgrade
from sweeper.ledger.ledger import events, sweeps
from sweeper.ledger.records import SweepRecord, new_order_nonce

S = SweepState
USDT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
WORK_STATES = (S.QUEUED, S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.SIGNED, S.BROADCAST)
SWEEPS_TARGET_PER_MINUTE = 100.0
TRANSITIONS_TARGET_PER_SECOND = 1000.0
PRICE_SUN = 4_000_000
CAP_SUN = 10**15  # the cap is not what is measured: never reached


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- sweeps per minute in the sandbox ------------------------------------------------------------


def sandbox_sweeps(db_url: str, n: int, folder: Path) -> tuple[float, int]:
    """Seconds for `sweeper work --until-final` to confirm n sweeps queued at once, and how many."""
    from tests.constants import WALLET
    from tests.e2e.harness import describe_open, ledger_for, run_sweeper, sandbox, write_config

    with sandbox() as box:
        for i in range(n):
            address = WALLET.address(i)
            box.control.credit_usdt(address, 20_000_000 + i)
            if i % 2:
                box.control.activate(address)
        config = write_config(folder, db_url, box, hd_count=n)
        # 500 sweeps at ~4 TRX each pass the default 500 TRX daily cap, which would (rightly) stop
        # ordering for the day: the cap is not what is measured here.
        with config.open("a") as file:
            file.write('\n[safety]\nmax_daily_spend_trx = "100000"\n')
        run_sweeper(config, box, "migrate")
        run_sweeper(config, box, "scan")
        ledger = ledger_for(db_url)
        queued = len(ledger.list_sweeps(state=S.QUEUED))
        started = time.monotonic()
        work = run_sweeper(
            config, box, "work", "--until-final", "--timeout", "1500", timeout=1800, check=False
        )
        wall = time.monotonic() - started
        rows = ledger.list_sweeps()
        ledger.engine.dispose()
        if work.returncode != 0 or queued != n:
            raise SystemExit(f"work exited {work.returncode}, {queued}/{n} queued:\n{describe_open(db_url)}")
        confirmed = sum(1 for r in rows if r.state is S.CONFIRMED)
        if confirmed != n or set(box.control.order_counts().values()) != {1}:
            raise SystemExit(
                f"{confirmed}/{n} confirmed or an order count is not 1:\n{describe_open(db_url)}"
            )
        return wall, confirmed


def run_sweeps(n: int, baseline_n: int) -> None:
    print(
        f"\nsweeps: {baseline_n} then {n} queued at once; `sweeper work --until-final` timed (SQLite ledger)"
    )
    print("| measure | result | target | |")
    print("|---|---|---|---|")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count in (baseline_n, n):
            folder = Path(tmp) / f"n{count}"
            folder.mkdir()
            wall, done = sandbox_sweeps(f"sqlite:///{folder / 'ledger.db'}", count, folder)
            rates[count] = done / wall * 60
            target = f"≥ {SWEEPS_TARGET_PER_MINUTE:.0f}" if count == n else ""
            mark = verdict(rates[count] >= SWEEPS_TARGET_PER_MINUTE) if count == n else ""
            print(
                f"| {done} sweeps due at once: sweeps/minute | {rates[count]:.0f} ({wall:.1f} s) | {target} | {mark} |",
                flush=True,
            )
    print(f"| rate at {n} / rate at {baseline_n} | {rates[n] / rates[baseline_n]:.2f} | | |")


# --- ledger transitions per second -----------------------------------------------------------------


def seed_rows(url: str, rows: int) -> None:
    engine = make_engine(url)
    upgrade(engine)
    ledger = Ledger(engine)
    wallet = HdWallet(Secret("abandon " * 11 + "about"))
    addresses = [wallet.address(i) for i in range(rows)]
    ledger.upsert_addresses(NewAddress(a, "hd", hd_index=i) for i, a in enumerate(addresses))
    now = ledger.now()
    with engine.begin() as conn:
        conn.execute(
            insert(sweeps),
            [
                {"address": a, "token": "USDT", "token_contract": USDT, "state": "queued", "observed_amount": 5,
                 "amount": 5, "attempts": 0, "order_nonce": new_order_nonce(), "created_at": now,
                 "updated_at": now}
                for a in addresses
            ],
        )  # fmt: skip
    engine.dispose()


def step(ledger: Ledger, worker: str, row: SweepRecord) -> None:
    """What the pipeline writes for the row's state, minus the provider and the node."""
    match row.state:
        case S.ORDERING:
            reservation = ledger.reserve_order(row.id, worker, price_sun=PRICE_SUN, cap_sun=CAP_SUN)
            assert reservation is not None and reservation.reserved, reservation
            ledger.transition(
                row.id, S.ORDERING, S.ENERGY_ORDERED, reason="order placed", holder=worker, release=True,
                changes={"serial": uuid.uuid4().hex, "cost_sun": PRICE_SUN, "provider_balance_sun": 10**12},
            )  # fmt: skip
        case S.ENERGY_ORDERED:
            ledger.transition(
                row.id, S.ENERGY_ORDERED, S.ENERGY_READY, reason="energy delegated", holder=worker,
                changes={"last_error": None, "next_attempt_at": None, "energy_needed": 64_285},
            )  # fmt: skip
            row = ledger.get_sweep(row.id)
            txid = uuid.uuid4().hex * 2
            ledger.transition(
                row.id, S.ENERGY_READY, S.SIGNED, reason=f"signed {txid}", holder=worker,
                changes={"txid": txid, "signed_tx": '{"txID": "' + txid + '"}', "expiration": ledger.now()},
            )  # fmt: skip
            row = ledger.get_sweep(row.id)
            ledger.transition(
                row.id, S.SIGNED, S.BROADCAST, reason=f"broadcast {txid}: accepted", holder=worker, release=True
            )  # fmt: skip
        case S.BROADCAST:
            ledger.transition(
                row.id, S.BROADCAST, S.CONFIRMED, reason="confirmed", holder=worker, changes={"amount": row.amount}
            )  # fmt: skip
        case _:  # pragma: no cover - claim() only returns rows in WORK_STATES, queued ones as ordering
            raise AssertionError(f"unexpected state {row.state}")


def walker(url: str, worker: str, barrier: Barrier) -> None:
    """One worker process: claim and walk rows until none is left open."""
    ledger = Ledger(make_engine(url))
    ledger.now()  # the clock's first measurement, before the start line
    barrier.wait()
    while True:
        batch = ledger.claim(worker, WORK_STATES, limit=16, lease_seconds=300)
        for row in batch:
            step(ledger, worker, row)
        if not batch:
            with ledger.engine.connect() as conn:
                left = conn.execute(
                    select(func.count()).select_from(sweeps).where(sweeps.c.state != S.CONFIRMED.value)
                ).scalar_one()
            if left == 0:
                break
            time.sleep(0.005)  # the rest is claimed by other workers: wait for them to finish or release
    ledger.engine.dispose()


def transitions_per_second(url: str, rows: int, workers: int) -> tuple[float, int]:
    seed_rows(url, rows)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    procs = [ctx.Process(target=walker, args=(url, f"bench-{i}", barrier)) for i in range(workers)]
    for p in procs:
        p.start()
    barrier.wait()
    started = time.perf_counter()
    for p in procs:
        p.join()
    wall = time.perf_counter() - started
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"a worker failed: exit codes {[p.exitcode for p in procs]}")
    engine = make_engine(url)
    with engine.connect() as conn:
        moved = conn.execute(select(func.count()).select_from(events).where(events.c.from_state.is_not(None)))
        count = int(moved.scalar_one())
        confirmed = conn.execute(
            select(func.count()).select_from(sweeps).where(sweeps.c.state == S.CONFIRMED.value)
        ).scalar_one()
    engine.dispose()
    if confirmed != rows or count != rows * 6:
        raise SystemExit(f"{confirmed}/{rows} confirmed, {count} transitions (expected {rows * 6})")
    return count / wall, count


def naive_per_second(url: str, transitions: int) -> float:
    """A bare UPDATE of the state per transition, one transaction each (legal moves: the trigger)."""
    seed_rows(url, transitions // 2)
    engine = make_engine(url)
    walk = [(S.QUEUED, S.ORDERING), (S.ORDERING, S.ENERGY_ORDERED)]
    started = time.perf_counter()
    for _, target in walk:
        for i in range(1, transitions // 2 + 1):
            with engine.begin() as conn:
                conn.execute(update(sweeps).where(sweeps.c.id == i).values(state=target.value))
    rate = (transitions // 2) * len(walk) / (time.perf_counter() - started)
    engine.dispose()
    return rate


@contextmanager
def postgres_schema(base: str) -> Iterator[str]:
    schema = f"scale_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield (
            make_url(base)
            .update_query_dict({"options": f"-csearch_path={schema}"})
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def run_ledger(rows: int, postgres: str) -> None:
    print(f"\nledger: {rows} sweeps walked queued -> confirmed (6 transitions each) by worker processes")
    print("| backend | workers | transitions/s | naive bare UPDATEs/s | target | |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        rate, _ = transitions_per_second(f"sqlite:///{Path(tmp) / 'walk.db'}", rows, 1)
        naive = naive_per_second(f"sqlite:///{Path(tmp) / 'naive.db'}", min(rows * 2, 2000))
        print(f"| SQLite (WAL, synchronous=FULL) | 1 | {rate:.0f} | {naive:.0f} | | |", flush=True)
    if not postgres:
        print("postgres: skipped (set SWEEPER_TEST_POSTGRES_URL or --postgres)")
        return
    with postgres_schema(postgres) as url:
        naive = naive_per_second(url, min(rows * 2, 2000))
    for workers in (1, 4):
        with postgres_schema(postgres) as url:
            rate, _ = transitions_per_second(url, rows, workers)
        target = f"≥ {TRANSITIONS_TARGET_PER_SECOND:,.0f}" if workers == 4 else ""
        mark = verdict(rate >= TRANSITIONS_TARGET_PER_SECOND) if workers == 4 else ""
        print(f"| PostgreSQL | {workers} | {rate:.0f} | {naive:.0f} | {target} | {mark} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", "sweeps", "ledger"), default="all")
    parser.add_argument("--sweeps", type=int, default=500, help="sweeps due at once in the sandbox")
    parser.add_argument("--baseline-sweeps", type=int, default=50)
    parser.add_argument("--rows", type=int, default=1000, help="sweeps walked by the ledger workers")
    parser.add_argument("--postgres", default=os.environ.get("SWEEPER_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    if args.sweeps < 1 or args.baseline_sweeps < 1 or args.rows < 1:
        parser.error("--sweeps, --baseline-sweeps and --rows must be >= 1")
    load = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"load average at start: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    if args.part in ("all", "ledger"):
        run_ledger(args.rows, args.postgres)
    if args.part in ("all", "sweeps"):
        run_sweeps(args.sweeps, args.baseline_sweeps)
    load = os.getloadavg()
    print(f"load average at end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
