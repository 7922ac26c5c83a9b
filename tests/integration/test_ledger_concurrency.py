"""Concurrent claimers on Postgres never double-claim; the SQLite daemon lock refuses a second holder."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import insert

from sweeper.domain import SweepState
from sweeper.ledger import Ledger, LedgerLocked, NewAddress, SqliteLedgerLock, make_engine, upgrade
from sweeper.ledger.ledger import sweeps
from sweeper.ledger.models import Base
from tests.constants import USDT

CLAIMERS = 8
ROWS = 1000


def _seed(ledger: Ledger, rows: int) -> None:
    from sweeper.domain import Secret
    from sweeper.keys import HdWallet

    wallet = HdWallet(Secret("abandon " * 11 + "about"))
    addrs = [wallet.address(i) for i in range(rows)]
    ledger.upsert_addresses(NewAddress(a, "hd", hd_index=i) for i, a in enumerate(addrs))
    now = ledger.now()
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(sweeps),
            [
                {"address": a, "token": "USDT", "token_contract": USDT, "state": "queued", "observed_amount": 1,
                 "amount": 1, "attempts": 0, "created_at": now, "updated_at": now}
                for a in addrs
            ],
        )  # fmt: skip


@pytest.mark.postgres
def test_concurrent_claimers_never_claim_a_row_twice(postgres_url: str) -> None:
    setup = make_engine(postgres_url)
    upgrade(setup)
    _seed(Ledger(setup), ROWS)
    setup.dispose()

    claimed: dict[str, list[int]] = {f"w{i}": [] for i in range(CLAIMERS)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(CLAIMERS)

    def claimer(name: str) -> None:
        engine = make_engine(postgres_url, pool_size=1, max_overflow=0)  # its own connection
        ledger = Ledger(engine)
        try:
            barrier.wait()
            while batch := ledger.claim(name, [SweepState.QUEUED], limit=7, lease_seconds=300):
                claimed[name].extend(s.id for s in batch)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=claimer, args=(name,)) for name in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    all_ids = [i for ids in claimed.values() for i in ids]
    duplicates = [i for i, n in Counter(all_ids).items() if n > 1]
    assert duplicates == []
    assert len(all_ids) == ROWS
    assert sum(1 for ids in claimed.values() if ids) > 1, "expected the work to be spread over claimers"
    check = make_engine(postgres_url)
    ledger = Ledger(check)
    assert ledger.stats().by_state["ordering"] == ROWS
    # one queued->ordering event per row, no more
    from sqlalchemy import func, select

    from sweeper.ledger.ledger import events

    with check.connect() as conn:
        assert (
            conn.execute(
                select(func.count()).select_from(events).where(events.c.to_state == "ordering")
            ).scalar()
            == ROWS
        )
    check.dispose()


def test_sqlite_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    with SqliteLedgerLock(db) as lock:
        assert lock.path == tmp_path / "ledger.db.lock"
        # A second holder in this process (another open file description) ...
        with pytest.raises(LedgerLocked, match=r"held by pid \d+ on "):
            SqliteLedgerLock(db).acquire()
        # ... and in another process.
        code = (
            "import sys; from pathlib import Path; from sweeper.ledger import SqliteLedgerLock, LedgerLocked\n"
            "try:\n    SqliteLedgerLock(Path(sys.argv[1])).acquire()\nexcept LedgerLocked as e:\n"
            "    print(e); sys.exit(2)\nsys.exit(0)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, result.stderr
        assert "another sweeper daemon" in result.stdout
    # Released: the next holder gets it.
    with SqliteLedgerLock(db):
        pass


def test_sqlite_lock_is_released_when_the_holder_dies(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    code = (
        "import os, sys; from pathlib import Path; from sweeper.ledger import SqliteLedgerLock\n"
        "SqliteLedgerLock(Path(sys.argv[1])).acquire(); print('held', flush=True); os._exit(9)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "held"
    with SqliteLedgerLock(db):  # the kernel dropped the dead process's lock
        pass


def test_sqlite_is_in_wal_mode(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    Base.metadata.create_all(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()
