"""TRX sweeps through the pipeline, on the in-process fakes (tests/fakes.py): the whole balance when
bandwidth is free, balance - the exact fee otherwise, dust left alone, a crash between the stored
signature and the broadcast, expiry and rebuild, one sweep per address with USDT beside TRX, and TRX
sweeping on while energy ordering is paused. The fee rules themselves: tests/unit/test_trx_fee.py;
the same against the sandbox node: tests/integration/test_trx_chain.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from sweeper.chain.trx import bandwidth_bytes
from sweeper.config import TokenSettings
from sweeper.domain import AssetKind, SweepState
from sweeper.keys import Keys
from sweeper.ledger import ORDERING_PAUSE, Ledger, NewAddress, SweepRecord
from sweeper.pipeline import Pipeline, PipelineOptions
from tests.constants import DESTINATION, USDT, WALLET
from tests.fakes import TRX_FEE_PER_BYTE, Crash, FakeChain, FakeClock, FakeProvider

S = SweepState
TOKENS = (
    TokenSettings(symbol="USDT", contract=USDT, decimals=6, min_sweep=Decimal("10")),
    TokenSettings(symbol="TRX", contract=None, decimals=6, min_sweep=Decimal("5")),
)
TRX_DEPOSIT = 12_345_678  # 12.345678 TRX


@dataclass
class Rig:
    clock: FakeClock
    chain: FakeChain
    provider: FakeProvider
    ledger: Ledger

    def address(self, index: int = 0) -> str:
        address = WALLET.address(index)
        self.ledger.upsert_addresses([NewAddress(address, "hd", hd_index=index)])
        return address

    def queue_trx(self, address: str) -> int:
        sweep_id = self.ledger.queue_sweep(address, "TRX", None, self.chain.trx[address])
        assert sweep_id is not None
        return sweep_id

    def pipeline(self, worker: str = "w1", lease_seconds: float = 60.0) -> Pipeline:
        opts = PipelineOptions(destination=DESTINATION, tokens=TOKENS, lease_seconds=lease_seconds)
        return Pipeline(
            self.ledger, self.provider, self.chain, Keys(self.ledger, WALLET), opts,  # type: ignore[arg-type]
            worker_id=worker, clock=self.clock, host_clock=self.clock,
        )  # fmt: skip

    def row(self, sweep_id: int) -> SweepRecord:
        return self.ledger.get_sweep(sweep_id)

    def on_chain(self, address: str) -> list[object]:
        return [t for t in self.chain.transfers_from(address) if t.block is not None]


@pytest.fixture
def rig(fast_engine: Engine) -> Iterator[Rig]:
    clock = FakeClock()
    chain = FakeChain(clock)
    chain.credit(USDT, DESTINATION, 1)
    chain.credit_trx(DESTINATION, 1)  # the destination account exists
    provider = FakeProvider(chain, DESTINATION, token=USDT)
    yield Rig(clock, chain, provider, Ledger(fast_engine, clock=clock))


def drive(rig: Rig, pipeline: Pipeline, *, max_seconds: float = 3_600) -> None:
    waited = 0.0

    async def go() -> None:
        nonlocal waited
        while not all(s.is_final for s in rig.ledger.list_sweeps()):
            # One sweep per address past queued, at every pass.
            busy = [s for s in rig.ledger.list_sweeps() if not s.is_final and s.state is not S.QUEUED]
            assert len({s.address for s in busy}) == len(busy), busy
            if await pipeline.run_once() == 0:
                assert waited < max_seconds, [(s.id, s.state, s.last_error) for s in rig.ledger.list_sweeps()]
                rig.clock.advance(2)
                waited += 2

    asyncio.run(go())


def test_free_bandwidth_moves_the_whole_balance(rig: Rig) -> None:
    address = rig.address()
    rig.chain.credit_trx(address, TRX_DEPOSIT)
    sweep_id = rig.queue_trx(address)
    drive(rig, rig.pipeline())
    row = rig.row(sweep_id)
    assert (row.state, row.asset_kind, row.amount, row.fee_sun) == (
        S.CONFIRMED,
        AssetKind.TRX,
        TRX_DEPOSIT,
        0,
    )
    assert rig.chain.trx[address] == 0
    assert rig.chain.trx[DESTINATION] == 1 + TRX_DEPOSIT
    assert [e.to_state for e in rig.ledger.events(sweep_id)] == [S.QUEUED, S.SIGNED, S.BROADCAST, S.CONFIRMED]
    assert rig.provider.orders == {}  # no energy ordered for TRX


def test_without_bandwidth_the_fee_comes_out_of_the_balance_exactly(rig: Rig) -> None:
    address = rig.address()
    rig.chain.credit_trx(address, TRX_DEPOSIT)
    rig.chain.use_free_bandwidth(address)  # today's 600 free bytes are gone
    sweep_id = rig.queue_trx(address)
    drive(rig, rig.pipeline())
    row = rig.row(sweep_id)
    assert row.signed_tx is not None
    from sweeper.chain import SignedTransfer

    size = bandwidth_bytes(SignedTransfer.from_json(row.signed_tx).raw_data)
    assert 250 < size < 300
    assert row.state is S.CONFIRMED
    assert row.fee_sun == size * TRX_FEE_PER_BYTE
    assert row.amount == TRX_DEPOSIT - size * TRX_FEE_PER_BYTE
    assert rig.chain.trx[address] == 0  # nothing left behind (no varint boundary here)
    assert rig.ledger.stats().fee_burnt_sun == row.fee_sun


def test_a_balance_below_min_sweep_once_the_fee_is_paid_is_left_alone(rig: Rig) -> None:
    address = rig.address()
    rig.chain.credit_trx(address, 5_100_000)  # 5.1 TRX: above min_sweep (5), below it after ~0.27 TRX
    rig.chain.use_free_bandwidth(address)
    sweep_id = rig.queue_trx(address)
    drive(rig, rig.pipeline())
    row = rig.row(sweep_id)
    assert row.state is S.CANCELLED
    assert "below min_sweep 5" in rig.ledger.events(sweep_id)[-1].reason
    assert rig.chain.transfers_from(address) == []
    assert rig.chain.trx[address] == 5_100_000
    assert rig.ledger.cooldown(address, "TRX") is not None  # the next pass does not queue it again
    assert rig.ledger.queue_sweep(address, "TRX", None, 5_100_000) is None


def test_a_crash_between_the_stored_signature_and_the_broadcast_sends_once(rig: Rig) -> None:
    address = rig.address()
    rig.chain.credit_trx(address, TRX_DEPOSIT)
    rig.chain.use_free_bandwidth(address)
    sweep_id = rig.queue_trx(address)
    rig.chain.fail("broadcast", Crash())
    with pytest.raises(Crash):
        asyncio.run(rig.pipeline("w1", lease_seconds=10).run_once())
    stored = rig.row(sweep_id)
    assert stored.state is S.SIGNED and stored.txid is not None and rig.chain.txs == {}
    drive(rig, rig.pipeline("w2", lease_seconds=10))  # w1's lease runs out well inside the lifetime
    row = rig.row(sweep_id)
    assert row.state is S.CONFIRMED and row.txid == stored.txid  # the stored bytes, not new ones
    assert len(rig.on_chain(address)) == 1
    assert rig.chain.trx[address] == 0


def test_an_expired_transfer_unknown_to_the_chain_is_rebuilt_from_queued(rig: Rig) -> None:
    address = rig.address()
    rig.chain.credit_trx(address, TRX_DEPOSIT)
    sweep_id = rig.queue_trx(address)
    rig.chain.auto_confirm = False
    asyncio.run(rig.pipeline().run_once())
    first = rig.row(sweep_id)
    assert first.state is S.BROADCAST and first.txid is not None
    del rig.chain.txs[first.txid]  # accepted, then lost by the node: never included
    rig.chain.auto_confirm = True
    rig.clock.advance(120)  # past the expiration and the margin
    drive(rig, rig.pipeline())
    row = rig.row(sweep_id)
    assert row.state is S.CONFIRMED and row.txid != first.txid and row.send_attempts == 1
    assert S.QUEUED in [e.to_state for e in rig.ledger.events(sweep_id)[1:]]  # broadcast -> queued
    assert len(rig.on_chain(address)) == 1 and rig.chain.trx[address] == 0


def test_usdt_and_trx_of_one_address_are_swept_one_after_the_other(rig: Rig) -> None:
    """Both above threshold: two sweeps, never both past queued (`drive` checks it at every pass),
    both confirmed, and the USDT transfer burns no TRX (its energy and bandwidth were ordered)."""
    address = rig.address()
    rig.chain.credit(USDT, address, 25_000_000)
    rig.chain.credit_trx(address, TRX_DEPOSIT)
    usdt = rig.ledger.queue_sweep(address, "USDT", USDT, 25_000_000)
    trx = rig.queue_trx(address)
    assert usdt is not None
    drive(rig, rig.pipeline())
    assert (rig.row(usdt).state, rig.row(trx).state) == (S.CONFIRMED, S.CONFIRMED)
    token_tx = [t for t in rig.chain.transfers_from(address) if t.signed.token == USDT]
    assert len(token_tx) == 1 and token_tx[0].burnt_sun == 0
    assert rig.chain.balances[USDT].get(address, 0) == 0
    assert rig.chain.trx[address] == 0
    # The older (USDT) finished before the TRX sweep was signed.
    usdt_done = rig.ledger.events(usdt)[-1].at
    trx_signed = next(e.at for e in rig.ledger.events(trx) if e.to_state is S.SIGNED)
    assert usdt_done <= trx_signed


def test_trx_sweeps_go_on_while_energy_ordering_is_paused(rig: Rig) -> None:
    address, other = rig.address(0), rig.address(1)
    rig.chain.credit_trx(address, TRX_DEPOSIT)
    rig.chain.credit(USDT, other, 25_000_000)
    trx = rig.queue_trx(address)
    usdt = rig.ledger.queue_sweep(other, "USDT", USDT, 25_000_000)
    assert usdt is not None
    rig.ledger.set_pause(ORDERING_PAUSE, "an order cost too much")
    pipeline = rig.pipeline()

    async def go() -> None:
        for _ in range(10):
            await pipeline.run_once()

    asyncio.run(go())
    assert rig.row(trx).state is S.CONFIRMED
    assert rig.row(usdt).state is S.QUEUED and rig.provider.orders == {}


def test_trx_on_the_destination_itself_is_cancelled_with_a_cool_down(rig: Rig) -> None:
    rig.ledger.upsert_addresses([NewAddress(DESTINATION, "import")])
    sweep_id = rig.ledger.queue_sweep(DESTINATION, "TRX", None, 50_000_000)
    assert sweep_id is not None
    drive(rig, rig.pipeline())
    assert rig.row(sweep_id).state is S.CANCELLED
    assert rig.ledger.cooldown(DESTINATION, "TRX") is not None
    assert rig.chain.transfers_from(DESTINATION) == []


def test_node_errors_back_off_and_never_fail_a_trx_row(rig: Rig) -> None:
    from sweeper.chain import ChainUnavailable

    address = rig.address()
    rig.chain.credit_trx(address, TRX_DEPOSIT)
    sweep_id = rig.queue_trx(address)
    rig.chain.fail("build_trx_sweep", *[ChainUnavailable("node down")] * 8)
    drive(rig, rig.pipeline())
    row = rig.row(sweep_id)
    assert row.state is S.CONFIRMED and row.attempts == 0 and row.amount == TRX_DEPOSIT
