"""Ledger throughput: claim + guarded transition (with its event row) per sweep, SQLite and Postgres.

Baseline in the same run: the naive way (a bare `UPDATE sweeps SET state = ... WHERE id = ...` per
row, no guard, no event, no lease), so the figure says what the exactly-once bookkeeping costs.

    .venv/bin/python benchmarks/ledger_bench.py [--rows 2000] [--postgres URL]

Postgres defaults to $SWEEPER_TEST_POSTGRES_URL; each run uses a fresh schema and drops it.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, insert, text, update
from sqlalchemy.engine import make_url

from sweeper.domain import Secret, SweepState
from sweeper.keys import HdWallet
from sweeper.ledger import Ledger, NewAddress, make_engine, upgrade
from sweeper.ledger.ledger import sweeps

USDT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"


def seed(ledger: Ledger, addresses: list[str]) -> None:
    ledger.upsert_addresses(NewAddress(a, "hd", hd_index=i) for i, a in enumerate(addresses))
    now = ledger.now()
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(sweeps),
            [
                {"address": a, "token": "USDT", "token_contract": USDT, "state": "queued", "observed_amount": 1,
                 "amount": 1, "attempts": 0, "created_at": now, "updated_at": now}
                for a in addresses
            ],
        )  # fmt: skip


def bench(url: str, addresses: list[str], *, synchronous: str = "FULL") -> tuple[float, float]:
    engine = make_engine(url, sqlite_synchronous=synchronous)
    upgrade(engine)
    ledger = Ledger(engine)
    seed(ledger, addresses)
    # Ours: claim in batches of 16 (queued -> ordering + event), then one guarded transition each.
    start = time.perf_counter()
    while batch := ledger.claim("bench", [SweepState.QUEUED], limit=16, lease_seconds=300):
        for sweep in batch:
            ledger.transition(
                sweep.id, SweepState.ORDERING, SweepState.ENERGY_ORDERED, reason="bench", holder="bench",
                changes={"serial": uuid.uuid4().hex, "cost_sun": 4_000_000},
            )  # fmt: skip
    ours = len(addresses) / (time.perf_counter() - start)
    # Baseline: bare UPDATEs, one transaction each, on the same rows. energy_ordered -> energy_ready
    # is a legal transition: since migration 0007 the database's trigger refuses any other.
    start = time.perf_counter()
    for i in range(1, len(addresses) + 1):
        with engine.begin() as conn:
            conn.execute(update(sweeps).where(sweeps.c.id == i).values(state="energy_ready"))
    naive = len(addresses) / (time.perf_counter() - start)
    engine.dispose()
    return ours, naive


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--postgres", default=os.environ.get("SWEEPER_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    wallet = HdWallet(Secret("abandon " * 11 + "about"))
    addresses = [wallet.address(i) for i in range(args.rows)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"rows: {args.rows}; ours = claim(batch 16) + guarded transition with event; naive = bare UPDATE")
    print(f"{'backend':<14} {'ours rows/s':>8} {'naive rows/s':>13} {'ours/naive':>11}")
    # SQLite with the synchronous setting the ledger uses (FULL: a power cut loses no commit) and,
    # for the cost of that durability, the NORMAL it used before (same run, same rows).
    for label, synchronous in (("sqlite", "FULL"), ("sqlite/NORMAL", "NORMAL")):
        with tempfile.TemporaryDirectory() as tmp:
            ours, naive = bench(f"sqlite:///{Path(tmp) / 'bench.db'}", addresses, synchronous=synchronous)
            print(f"{label:<14} {ours:>8.0f} {naive:>13.0f} {ours / naive:>11.2f}")
    if args.postgres:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            url = make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
            ours, naive = bench(url.render_as_string(hide_password=False), addresses)
            print(f"{'postgres':<14} {ours:>8.0f} {naive:>13.0f} {ours / naive:>11.2f}")
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    else:
        print("postgres: skipped (set SWEEPER_TEST_POSTGRES_URL or --postgres)")


if __name__ == "__main__":
    main()
