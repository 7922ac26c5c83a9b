"""End-to-end sweep benchmark: N deposit addresses swept by real `sweeper` processes in the sandbox.

    .venv-test/bin/python benchmarks/sweep_bench.py [--sweeps 50] [--postgres URL]

The combined sandbox (node + provider, at its default block and delegation timing) runs in its own
process; every address holds more than the threshold (half of them never activated, so the
provider's order also activates them). Timed: `sweeper scan` then `sweeper work --until-final`,
i.e. detection, energy orders, delegation, signing, broadcast and solidified confirmation of all
N sweeps. Checked after the run: every row confirmed with one order and one transfer each.
Postgres runs too when a URL is given (default: $SWEEPER_TEST_POSTGRES_URL), in a schema of its own
(`sweep_bench`, dropped and re-created).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text

from sweeper.domain import SweepState
from tests.constants import WALLET
from tests.e2e.harness import ledger_for, run_sweeper, sandbox, write_config

SCHEMA = "sweep_bench"


def bench_schema(url: str) -> str:
    """A fresh schema of its own (dropped and re-created), as the URL the sweeper processes use."""
    ledger = ledger_for(url)
    with ledger.engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    ledger.engine.dispose()
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{SCHEMA}"


def one_run(db_url: str, n: int, folder: Path) -> tuple[float, int]:
    with sandbox() as box:
        for i in range(n):
            address = WALLET.address(i)
            box.control.credit_usdt(address, 20_000_000 + i)
            if i % 2:
                box.control.activate(address)
        config = write_config(folder, db_url, box, hd_count=n, concurrency=16)
        run_sweeper(config, box, "migrate")
        started = time.monotonic()
        run_sweeper(config, box, "scan")
        run_sweeper(config, box, "work", "--until-final", "--timeout", "600", timeout=900)
        wall = time.monotonic() - started
        ledger = ledger_for(db_url)
        rows = ledger.list_sweeps()
        ledger.engine.dispose()
        assert len(rows) == n and all(r.state is SweepState.CONFIRMED for r in rows)
        assert set(box.control.order_counts().values()) == {1}
        return wall, len(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sweeps", type=int, default=50)
    parser.add_argument("--postgres", default=os.environ.get("SWEEPER_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.sweeps} sweeps: sweeper scan + sweeper work --until-final against the sandbox")
    with tempfile.TemporaryDirectory() as tmp:
        backends = [("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}")]
        if args.postgres:
            backends.append(("postgres", bench_schema(args.postgres)))
        for name, url in backends:
            folder = Path(tmp) / name
            folder.mkdir()
            wall, done = one_run(url, args.sweeps, folder)
            print(f"{name:<9} {done} sweeps confirmed in {wall:.1f} s wall ({done / wall:.2f} sweeps/s)")


if __name__ == "__main__":
    main()
