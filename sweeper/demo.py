"""`sweeper demo`: a walk through the sweeper on a throw-away sandbox, no keys, chain or network.

This first version shows the foundation: deposit addresses derived from the public BIP39 test
mnemonic, deposits credited in the sandbox world, sweeps queued for those at or above the
threshold, the ledger and its stats. The full cycle (energy order, delegation, signed transfer,
confirmation) joins when the pipeline and service issues land.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TextIO

from sweeper.domain import OPEN_STATES, Secret, SweepState, format_units
from sweeper.keys import HdWallet
from sweeper.ledger import Ledger, NewAddress, make_engine, upgrade
from sweeper.sandbox.world import World

# The standard public BIP39 test vector: never holds funds anywhere.
DEMO_MNEMONIC = (
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
)
DEMO_DEPOSITS_USDT = ["125.5", "0", "9.99", "10", "2500", "0.000001"]
MIN_SWEEP_USDT = "10"


def run_demo(out: TextIO) -> int:
    world = World()
    wallet = HdWallet(Secret(DEMO_MNEMONIC))
    decimals = 6
    threshold = int(MIN_SWEEP_USDT) * 10**decimals
    with tempfile.TemporaryDirectory(prefix="sweeper-demo-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'demo.db'}")
        try:
            before, after = upgrade(engine)
            out.write(f"ledger: throw-away SQLite in {tmp}, migrated {before or 'empty'} -> {after}\n")
            ledger = Ledger(engine)
            addresses = [wallet.address(i) for i in range(len(DEMO_DEPOSITS_USDT))]
            ledger.upsert_addresses(NewAddress(a, "hd", hd_index=i) for i, a in enumerate(addresses))
            out.write(
                f"watching {len(addresses)} deposit addresses derived at m/44'/195'/0'/0/0..{len(addresses) - 1}\n"
            )
            for address, deposit in zip(addresses, DEMO_DEPOSITS_USDT, strict=True):
                world.credit_token(world.usdt_contract, address, _units(deposit, decimals))
            out.write(f"scanning balances (sandbox world), min_sweep = {MIN_SWEEP_USDT} USDT\n")
            for address in addresses:
                balance = world.token_balance(world.usdt_contract, address)
                verdict = "below threshold"
                if balance >= threshold:
                    sweep_id = ledger.queue_sweep(address, "USDT", world.usdt_contract, balance)
                    again = ledger.queue_sweep(address, "USDT", world.usdt_contract, balance)
                    verdict = f"queued sweep {sweep_id} (second attempt refused: {again is None})"
                out.write(f"  {address}  {format_units(balance, decimals):>10} USDT  {verdict}\n")
            queued = ledger.list_sweeps(state=SweepState.QUEUED)
            if queued:
                ledger.cancel(queued[-1].id, reason="demo: operator cancels one sweep")
            out.write("\nledger (newest first):\n")
            for sweep in ledger.list_sweeps():
                out.write(
                    f"  #{sweep.id} {sweep.state.value:<10} {sweep.address} "
                    f"{format_units(sweep.amount, decimals)} {sweep.token}\n"
                )
            stats = ledger.stats()
            open_count = sum(stats.by_state[s.value] for s in OPEN_STATES)
            out.write(
                f"\nstats: {stats.addresses} addresses, {open_count} sweeps open, by state {stats.by_state}\n"
            )
            out.write(
                "\nThe energy order, delegation, signed transfer and confirmation steps join this demo with the\n"
                "pipeline and service issues (see README).\n"
            )
        finally:
            engine.dispose()
    return 0


def _units(text: str, decimals: int) -> int:
    from decimal import Decimal

    from sweeper.domain import to_base_units

    return to_base_units(Decimal(text), decimals)
