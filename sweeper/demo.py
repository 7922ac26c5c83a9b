"""`sweeper demo`: a complete sweep cycle on the built-in sandbox — no config, keys, chain or network.

A sandbox TRON node and energy provider run in this process over one fake world; deposit
addresses derived from the public BIP39 test mnemonic receive USDT (some above the threshold, some
below, some never activated); the real daemon (scanner, pipeline, callback listener) sweeps them
into a destination wallet with rented energy, on a throw-away SQLite ledger. Progress is shown
live, then the ledger and its stats.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from sweeper import render
from sweeper.config import load_settings
from sweeper.daemon import Daemon
from sweeper.domain import FINAL_STATES, Secret, SweepState, format_units, to_base_units
from sweeper.keys import HdWallet
from sweeper.ledger import Ledger, make_engine, upgrade
from sweeper.logs import configure_logging
from sweeper.sandbox.combined import start_sandbox

# The standard public BIP39 test vector: never holds funds anywhere.
DEMO_MNEMONIC = (
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
)
# (USDT deposited, activated on chain?) per derived address m/44'/195'/0'/0/i
DEMO_DEPOSITS = [
    ("125.5", False),
    ("0", True),
    ("9.99", True),
    ("10", True),
    ("2500", False),
    ("0.000001", False),
]
MIN_SWEEP = "10"
# Native TRX too: a deposit beside the 10 USDT of address 3 (two sweeps of one address, one after
# the other; the TRX one rides on the address's free daily bandwidth: the whole balance moves).
TRX_DEPOSIT_INDEX = 3
TRX_DEPOSIT = "3.5"
TRX_MIN_SWEEP = "1"
# After the first sweeps: a deposit only block following sees (the safety-net poll pass is daily).
FOLLOW_DEPOSIT_INDEX = 1
FOLLOW_DEPOSIT = "42"
DESTINATION_INDEX = 1000  # a derived address outside the watched range plays the cold wallet
TIMEOUT_SECONDS = 120.0


def run_demo(out: TextIO) -> int:
    return asyncio.run(_demo(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _demo(out: TextIO) -> int:
    tty = out.isatty()
    configure_logging(level="ERROR")  # the demo narrates itself
    wallet = HdWallet(Secret(DEMO_MNEMONIC))
    destination = wallet.address(DESTINATION_INDEX)
    threshold = to_base_units(Decimal(MIN_SWEEP), 6)
    with (
        tempfile.TemporaryDirectory(prefix="sweeper-demo-") as tmp,
        start_sandbox(block_interval=0.3, solid_lag=2, delegation_delay=1.0) as box,
    ):
        world = box.world
        out.write(f"sandbox: TRON node {box.node_url}, energy provider {box.provider_url}\n")
        world.credit_trx(destination, 1_000_000)  # an activated cold wallet holding no USDT yet
        expected = 0
        for i, (amount, activated) in enumerate(DEMO_DEPOSITS):
            address = wallet.address(i)
            units = to_base_units(Decimal(amount), 6)
            if units:
                world.credit_token(world.usdt_contract, address, units)
            if activated:
                world.activate(address)
            expected += units >= threshold
            note = "activated" if activated else "never activated"
            out.write(f"  deposit {amount:>9} USDT -> {address} ({note})\n")
            if i == TRX_DEPOSIT_INDEX:
                world.credit_trx(address, to_base_units(Decimal(TRX_DEPOSIT), 6))
                expected += 1
                out.write(
                    f"  deposit {TRX_DEPOSIT:>9} TRX  -> {address} (native TRX, min_sweep {TRX_MIN_SWEEP})\n"
                )
        out.write(f"destination wallet: {destination}; min_sweep = {MIN_SWEEP} USDT\n\n")

        port = _free_port()
        config = Path(tmp) / "sweeper.toml"
        config.write_text(
            f'[database]\nurl = "sqlite:///{Path(tmp) / "demo.db"}"\n'
            f'[tron]\nnode_url = "{box.node_url}"\nrequests_per_second = 200\n'
            f'[provider]\nbase_url = "{box.provider_url}"\ncallback_url = "http://127.0.0.1:{port}/callback"\n'
            f'[callback]\nlisten = "127.0.0.1:{port}"\n'
            f'[addresses]\nhd_indexes = "0-{len(DEMO_DEPOSITS) - 1}"\n'
            f'[wallet]\ndestination = "{destination}"\n'
            "[schedule]\nscan_interval_seconds = 5\nwork_interval_seconds = 1\n"
            '[[tokens]]\nsymbol = "USDT"\ncontract = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"\n'
            f'decimals = 6\nmin_sweep = "{MIN_SWEEP}"\n'
            f'[[tokens]]\nsymbol = "TRX"\ndecimals = 6\nmin_sweep = "{TRX_MIN_SWEEP}"\n'
        )
        environ = {
            "SWEEPER_PROVIDER_API_KEY": box.api_key,
            "SWEEPER_PROVIDER_API_SECRET": box.api_secret,
            "SWEEPER_MNEMONIC": DEMO_MNEMONIC,
        }
        settings = load_settings(config, environ=environ)
        engine = make_engine(settings.database.url)
        try:
            before, after = upgrade(engine)
            out.write(f"ledger: throw-away SQLite, migrated {before or 'empty'} -> {after}\n")
            ledger = Ledger(engine)
            daemon = Daemon(settings, ledger)
            await daemon.start()
            out.write("daemon running: scanning, ordering energy, signing, broadcasting, confirming...\n")
            ok = await _watch(out, ledger, daemon, expected, tty)
            if ok:
                # Found by following: a new deposit paid by an exchange's payout contract (an
                # internal call) lands in a block; the daemon reads that block's Transfer logs.
                address = wallet.address(FOLLOW_DEPOSIT_INDEX)
                units = to_base_units(Decimal(FOLLOW_DEPOSIT), 6)
                world.internal_deposit(address, units)
                out.write(
                    f"\nnew deposit {FOLLOW_DEPOSIT} USDT -> {address}, paid in a block by an exchange's payout "
                    "contract: block following finds it (one node request per block, however many addresses)\n"
                )
                ok = await _watch(out, ledger, daemon, expected + 1, tty)
            # The operator's one screen (`sweeper status`), asked of the running daemon.
            from sweeper.status import ask_daemon, gather

            answer = await asyncio.to_thread(ask_daemon, settings)
            status = await asyncio.to_thread(gather, settings, ledger, answer)
            await daemon.shutdown()
            burnt = sum(
                tx.receipt.fee_sun
                for row in ledger.list_sweeps()
                if row.txid and (tx := world.transaction(row.txid)) is not None
            )
            _report(
                out,
                ledger,
                world.token_balance(world.usdt_contract, destination),
                world.account(destination).trx_sun,
                len(box.provider.orders),
                burnt,
            )
            out.write("\n$ sweeper status\n")
            render.console(out).print(render.status_renderable(status))
        finally:
            engine.dispose()
    if not ok:
        out.write(f"demo: not every sweep finished within {TIMEOUT_SECONDS:.0f} s\n")
        return 1
    return 0


async def _watch(out: TextIO, ledger: Ledger, daemon: Daemon, expected: int, tty: bool) -> bool:
    deadline = time.monotonic() + TIMEOUT_SECONDS
    last = ""
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(ledger.list_sweeps)
        counts = {s.value: 0 for s in SweepState}
        for row in rows:
            counts[row.state.value] += 1
        line = (
            "  sweeps: " + "  ".join(f"{k} {v}" for k, v in counts.items() if v) if rows else "  scanning..."
        )
        if line != last:
            out.write(("\r" + line.ljust(100)) if tty else line + "\n")
            out.flush()
            last = line
        done = daemon.last_scan_completed is not None and len(rows) >= expected
        if done and all(r.state in FINAL_STATES for r in rows):
            if tty:
                out.write("\n")
            return True
        await asyncio.sleep(0.25)
    if tty:
        out.write("\n")
    return False


def _report(
    out: TextIO, ledger: Ledger, destination_balance: int, destination_trx: int, orders: int, burnt_sun: int
) -> None:
    out.write("\nledger (newest first):\n")
    header = f"  {'id':>3}  {'state':<10} {'address':<34} {'amount':>17}  {'energy':>9}  txid"
    out.write(header + "\n")
    for s in ledger.list_sweeps():
        cost = format_units(s.cost_sun, 6)
        amount = f"{format_units(s.amount, 6)} {s.token}"
        out.write(
            f"  {s.id:>3}  {s.state.value:<10} {s.address:<34} {amount:>17}  "
            f"{(cost + ' TRX') if cost else '-':>9}  {s.txid or '-'}\n"
        )
    stats = ledger.stats()
    swept = ", ".join(
        f"{format_units(v, 6)} {k}" for k, v in sorted(stats.swept_by_token.items(), reverse=True)
    )
    out.write(
        f"\nstats: swept {swept or 'nothing'} in {stats.by_state['confirmed']} sweeps; energy cost "
        f"{format_units(stats.energy_cost_sun, 6)} TRX for {orders} provider orders (none for TRX); "
        f"destination now holds {format_units(destination_balance, 6)} USDT and "
        f"{format_units(destination_trx, 6)} TRX\n"
    )
    out.write(
        f"TRX burnt by the sweep transfers: {format_units(burnt_sun, 6)} (rented energy and bandwidth paid for them)\n"
    )
