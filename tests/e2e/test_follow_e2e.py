"""Block following as real processes against the sandbox: deposits made in blocks (plain transfers
and a payout contract's internal call) are swept; the cursor survives kill -9 and a deposit made
while the daemon was down is found after the restart; two daemons on one Postgres ledger never both
follow, and the second takes over after the first is killed. Every wait polls a deadline."""

from __future__ import annotations

import subprocess
from pathlib import Path

from sweeper.domain import SweepState
from sweeper.ledger import Ledger
from tests.constants import WALLET
from tests.e2e.harness import (
    Sandbox,
    free_port,
    kill9,
    ledger_for,
    run_sweeper,
    sandbox,
    start_sweeper,
    wait_until,
    write_config,
)

S = SweepState


def _config(tmp_path: Path, db_url: str, box: Sandbox, n: int, *, migrate: bool = True) -> Path:
    port = free_port()
    config = write_config(
        tmp_path, db_url, box, hd_count=n, listen_port=port, detect_mode="follow", follow_lease_seconds=6
    )
    if migrate:
        run_sweeper(config, box, "migrate")
    return config


def _confirmed(ledger: Ledger, address: str) -> bool:
    return any(r.address == address and r.state is S.CONFIRMED for r in ledger.list_sweeps())


def _cursor(ledger: Ledger) -> int:
    cursor = ledger.follow_cursor()
    return -1 if cursor is None or cursor.next_block is None else cursor.next_block


def test_deposits_in_blocks_are_swept_and_the_cursor_survives_kill_9(tmp_path: Path, sqlite_url: str) -> None:
    with sandbox() as box:
        config = _config(tmp_path, sqlite_url, box, 4)
        ledger = ledger_for(sqlite_url)
        daemon = start_sweeper(config, box, "run", log=tmp_path / "first.log")
        try:
            wait_until(lambda: _cursor(ledger) > 0, timeout=60, what="following started")
            box.control.token_transfer(WALLET.address(0), 21_000_000)
            box.control.internal_deposit(WALLET.address(1), 33_000_000)  # an exchange payout contract
            wait_until(
                lambda: _confirmed(ledger, WALLET.address(0)) and _confirmed(ledger, WALLET.address(1)),
                timeout=90,
                what="both block deposits swept",
            )
            before = _cursor(ledger)
            kill9(daemon)
            box.control.token_transfer(WALLET.address(2), 44_000_000)  # while no daemon runs
            daemon = start_sweeper(config, box, "run", log=tmp_path / "second.log")
            wait_until(
                lambda: _confirmed(ledger, WALLET.address(2)), timeout=90, what="the deposit made while down"
            )
            assert _cursor(ledger) >= before
            rows = ledger.list_sweeps()
            assert sorted(r.address for r in rows) == sorted(WALLET.address(i) for i in range(3))
            assert all(len(box.control.transactions(owner=r.address)) == 1 for r in rows)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
            ledger.engine.dispose()


def test_two_daemons_on_postgres_one_follows_and_the_other_takes_over(
    tmp_path: Path, postgres_url: str
) -> None:
    with sandbox() as box:
        first_dir, second_dir = tmp_path / "a", tmp_path / "b"
        first_dir.mkdir()
        second_dir.mkdir()
        config_a = _config(first_dir, postgres_url, box, 3)
        config_b = _config(second_dir, postgres_url, box, 3, migrate=False)
        ledger = ledger_for(postgres_url)
        daemons: list[subprocess.Popen[str]] = []
        try:
            daemons.append(start_sweeper(config_a, box, "run", log=first_dir / "daemon.log"))
            wait_until(lambda: _cursor(ledger) > 0, timeout=60, what="the first daemon following")
            daemons.append(start_sweeper(config_b, box, "run", log=second_dir / "daemon.log"))
            cursor = ledger.follow_cursor()
            assert cursor is not None
            leader = cursor.holder
            wait_until(lambda: _cursor(ledger) > cursor.next_block + 3, timeout=60, what="following going on")  # type: ignore[operator]
            assert ledger.follow_cursor().holder == leader  # type: ignore[union-attr]
            kill9(daemons.pop(0))
            wait_until(
                lambda: (c := ledger.follow_cursor()) is not None and c.holder not in (None, leader),
                timeout=60,
                what="the second daemon taking over",
            )
            box.control.token_transfer(WALLET.address(0), 21_000_000)
            wait_until(
                lambda: _confirmed(ledger, WALLET.address(0)),
                timeout=90,
                what="a deposit swept after takeover",
            )
            assert len(box.control.transactions(owner=WALLET.address(0))) == 1
        finally:
            for daemon in daemons:
                if daemon.poll() is None:
                    daemon.kill()
                    daemon.wait(10)
            ledger.engine.dispose()
