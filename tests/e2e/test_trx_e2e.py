"""TRX sweeps as real processes against the sandbox node (which charges bandwidth as java-tron does),
on SQLite and Postgres: free bandwidth moves the whole balance; without it the balance less the
exact fee arrives and 0 is left; dust below min_sweep + fee is left alone; an address with USDT and
TRX gets two sweeps, one after the other, and the USDT transfer burns nothing; kill -9 between the
stored signature and the broadcast sends once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sweeper.domain import AssetKind, SweepState
from sweeper.faults import CRASH_ENV
from tests.constants import WALLET
from tests.e2e.harness import (
    DESTINATION,
    Sandbox,
    describe_open,
    ledger_for,
    run_sweeper,
    sandbox,
    sweeper_env,
    write_config,
)
from tests.e2e.invariants import assert_invariants

S = SweepState
FREE, PAID, DUST, BOTH = (WALLET.address(i) for i in range(4))


def _work(config: Path, box: Sandbox, db_url: str) -> None:
    work = run_sweeper(config, box, "work", "--until-final", "--timeout", "120", check=False)
    assert work.returncode == 0, (
        f"work exited {work.returncode}: {work.stderr[-3000:]}\n{describe_open(db_url)}"
    )


def test_trx_sweeps_whole_balance_exact_fee_dust_and_beside_usdt(tmp_path: Path, db_url: str) -> None:
    with sandbox() as box:
        control = box.control
        control.credit_trx(DESTINATION, 1_000_000)  # the hot wallet exists (a new one: test_trx_chain.py)
        control.credit_trx(FREE, 12_345_678)  # today's free bandwidth covers the transfer
        control.credit_trx(PAID, 20_000_000)
        control.use_free_bandwidth(PAID)  # spent: the fee comes out of the balance
        control.credit_trx(DUST, 5_100_000)  # 5.1 TRX: above min_sweep, below it once ~0.27 TRX is paid
        control.use_free_bandwidth(DUST)
        control.credit_usdt(BOTH, 25_000_000)
        control.credit_trx(BOTH, 8_000_000)
        config = write_config(tmp_path, db_url, box, hd_count=4, detect_mode="poll", trx_min_sweep="5")
        run_sweeper(config, box, "migrate")
        run_sweeper(config, box, "scan")
        _work(config, box, db_url)

        ledger = ledger_for(db_url)
        rows = {(r.address, r.token): r for r in ledger.list_sweeps()}
        assert set(rows) == {(FREE, "TRX"), (PAID, "TRX"), (DUST, "TRX"), (BOTH, "USDT"), (BOTH, "TRX")}

        free = rows[FREE, "TRX"]
        assert (free.state, free.asset_kind, free.amount, free.fee_sun) == (
            S.CONFIRMED,
            AssetKind.TRX,
            12_345_678,
            0,
        )
        [tx] = control.transactions(owner=FREE)
        assert (tx.to, tx.amount, tx.net_fee_sun, tx.contract_type) == (
            DESTINATION,
            12_345_678,
            0,
            "TransferContract",
        )
        assert control.trx_balance(FREE) == 0

        paid = rows[PAID, "TRX"]
        [tx] = control.transactions(owner=PAID)
        assert paid.state is S.CONFIRMED and tx.net_fee_sun > 0 and tx.net_usage == 0
        assert tx.net_fee_sun % 1_000 == 0 and 250_000 < tx.net_fee_sun < 300_000  # bytes x 1,000 sun
        assert paid.fee_sun == tx.net_fee_sun
        assert paid.amount == tx.amount == 20_000_000 - tx.net_fee_sun
        assert control.trx_balance(PAID) == 0

        dust = rows[DUST, "TRX"]
        assert dust.state is S.CANCELLED and "below min_sweep" in ledger.events(dust.id)[-1].reason
        assert control.transactions(owner=DUST) == [] and control.trx_balance(DUST) == 5_100_000

        usdt, trx = rows[BOTH, "USDT"], rows[BOTH, "TRX"]
        assert (usdt.state, trx.state) == (S.CONFIRMED, S.CONFIRMED)
        txs = {t.txid: t for t in control.transactions(owner=BOTH)}
        assert set(txs) == {usdt.txid, trx.txid}
        assert txs[usdt.txid].energy_fee_sun == 0 and txs[usdt.txid].net_fee_sun == 0  # no TRX burnt
        assert txs[trx.txid].amount == 8_000_000 - (trx.fee_sun or 0)
        assert control.usdt_balance(BOTH) == 0 and control.trx_balance(BOTH) == 0
        # One after the other: the second was signed after the first was final.
        first, second = sorted((usdt, trx), key=lambda r: r.id)
        first_final = ledger.events(first.id)[-1].at
        second_signed = next(e.at for e in ledger.events(second.id) if e.to_state is S.SIGNED)
        assert first_final <= second_signed
        assert control.trx_balance(DESTINATION) == 1_000_000 + 12_345_678 + paid.amount + trx.amount
        assert_invariants(db_url, control, destination=DESTINATION)


def test_kill_9_between_the_stored_trx_transfer_and_its_broadcast_sends_once(
    tmp_path: Path, db_url: str
) -> None:
    with sandbox() as box:
        control = box.control
        control.credit_trx(DESTINATION, 1_000_000)
        control.credit_trx(PAID, 20_000_000)
        control.use_free_bandwidth(PAID)
        config = write_config(tmp_path, db_url, box, hd_count=2, detect_mode="poll", trx_min_sweep="5")
        run_sweeper(config, box, "migrate")
        run_sweeper(config, box, "scan")
        crashed = subprocess.run(
            [
                sys.executable,
                "-m",
                "sweeper",
                "--config",
                str(config),
                "work",
                "--until-final",
                "--timeout",
                "60",
            ],
            env={**sweeper_env(box), CRASH_ENV: "signed"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert crashed.returncode == -9 and "crash point signed" in crashed.stderr, crashed.stderr[-3000:]
        ledger = ledger_for(db_url)
        [row] = ledger.list_sweeps()
        assert row.state is S.SIGNED and control.transactions(owner=PAID) == []  # stored, never sent
        _work(config, box, db_url)
        [row] = ledger.list_sweeps()
        [tx] = control.transactions(owner=PAID)
        assert row.state is S.CONFIRMED and tx.txid == row.txid  # the stored bytes, sent once
        assert row.amount == 20_000_000 - tx.net_fee_sun and control.trx_balance(PAID) == 0
        assert_invariants(db_url, control, destination=DESTINATION)
