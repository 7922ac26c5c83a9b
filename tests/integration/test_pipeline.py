"""The sweep pipeline in-process against the sandbox node and provider, on SQLite and Postgres.

The subprocess / kill -9 suite is tests/e2e/; these cover each step's decisions directly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
import tronpy.async_tron
from sqlalchemy import Engine

from sweeper.chain import DEFAULT_LIFETIME_MS, TronChain
from sweeper.config import TokenSettings
from sweeper.domain import Secret, SweepState
from sweeper.keys import Keys
from sweeper.ledger import Ledger, NewAddress
from sweeper.pipeline import Pipeline, PipelineOptions
from sweeper.provider.client import ProviderClient, Timeouts
from sweeper.sandbox.node_server import RunningNode, start_sandbox_node
from sweeper.sandbox.provider_server import SANDBOX_API_KEY, SANDBOX_API_SECRET, HoldPoint, SandboxProvider
from sweeper.sandbox.world import TxRecord, World
from tests.constants import DESTINATION, USDT, WALLET

S = SweepState
TOKENS = (TokenSettings(symbol="USDT", contract=USDT, decimals=6, min_sweep=Decimal("10")),)


@dataclass
class Env:
    world: World
    node: RunningNode
    provider: SandboxProvider
    ledger: Ledger

    def fund(self, index: int, amount: int, *, activated: bool = False) -> str:
        address = WALLET.address(index)
        self.world.credit_token(USDT, address, amount)
        if activated:
            self.world.activate(address)
        self.ledger.upsert_addresses([NewAddress(address, "hd", hd_index=index)])
        return address

    def queue(self, address: str) -> int:
        sweep_id = self.ledger.queue_sweep(address, "USDT", USDT, self.world.token_balance(USDT, address))
        assert sweep_id is not None
        return sweep_id

    @contextlib.asynccontextmanager
    async def pipeline(self, **options: object) -> AsyncIterator[Pipeline]:
        """A pipeline over the sandbox with fast test timings (`options` override PipelineOptions)."""
        values: dict[str, object] = dict(
            destination=DESTINATION, tokens=TOKENS, order_grace_seconds=0.2, poll_min_seconds=0.05,
            backoff_base_seconds=0.05, backoff_max_seconds=0.2,
        )  # fmt: skip
        opts = PipelineOptions(**{**values, **options})  # type: ignore[arg-type]
        async with (
            TronChain(self.node.url, requests_per_second=1000, burst=100) as chain,
            ProviderClient(self.provider.url, Secret(SANDBOX_API_KEY), Secret(SANDBOX_API_SECRET)) as client,
        ):
            yield Pipeline(
                self.ledger, client, chain, Keys(self.ledger, WALLET), opts, worker_id="test-worker"
            )

    async def run(self, timeout: float = 30.0, **options: object) -> Pipeline:
        async with self.pipeline(**options) as pipeline:
            await wait_final(pipeline, self.ledger, timeout)
            return pipeline

    def transfers_from(self, address: str) -> list[TxRecord]:
        """Every transaction from `address` the sandbox chain holds (pending or mined)."""
        with self.world.lock:
            return [tx for tx in self.world.transactions.values() if tx.owner == address]


@contextlib.asynccontextmanager
async def short_timeout_clients(env: Env) -> AsyncIterator[tuple[TronChain, ProviderClient]]:
    """A chain client and a provider client whose POST gives up after 0.5 s (a held POST becomes an
    unknown outcome quickly)."""
    async with (
        TronChain(env.node.url, requests_per_second=1000, burst=100) as chain,
        ProviderClient(
            env.provider.url,
            Secret(SANDBOX_API_KEY),
            Secret(SANDBOX_API_SECRET),
            timeouts=Timeouts(read=0.3, total=0.5),
        ) as client,
    ):
        yield chain, client


async def wait_final(pipeline: Pipeline, ledger: Ledger, timeout: float) -> None:
    """Drive the pipeline until every sweep is final (deadline, not sleeps, decides failure)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        await pipeline.run_once()
        if all(s.is_final for s in ledger.list_sweeps()):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(
        f"not final after {timeout}s: {[(s.id, s.state.value, s.last_error) for s in ledger.list_sweeps()]}"
    )


async def drive_until(pipeline: Pipeline, done: Callable[[], bool], timeout: float, what: str) -> None:
    """Run passes until `done()` holds (deadline, not sleeps, decides failure)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() >= deadline:
            rows = [(s.id, s.state.value, s.last_error) for s in pipeline.ledger.list_sweeps()]
            raise AssertionError(f"{what}: not reached after {timeout}s: {rows}")
        await pipeline.run_once()
        await asyncio.sleep(0.02)


@pytest.fixture
def env(engine: Engine) -> Iterator[Env]:
    ledger = Ledger(engine)  # the real clock: the pipeline's timeouts and the chain's expiry use it
    world = World()
    world.credit_trx(DESTINATION, 1)  # an activated destination that holds no USDT yet
    with start_sandbox_node(world, solid_lag=1, block_interval=0.05) as node:
        provider = SandboxProvider(world, delegation_delay=0.0)
        provider.start()
        try:
            yield Env(world, node, provider, ledger)
        finally:
            provider.stop()


def test_full_sweep_moves_exact_amount_once_with_rented_energy(env: Env) -> None:
    a = env.fund(0, 125_500_000)  # never activated: collect-manual activates it
    b = env.fund(1, 10_000_000, activated=True)
    ids = [env.queue(a), env.queue(b)]
    asyncio.run(env.run())
    for sweep_id, address, amount in zip(ids, (a, b), (125_500_000, 10_000_000), strict=True):
        row = env.ledger.get_sweep(sweep_id)
        assert row.state is S.CONFIRMED, (row.state, row.last_error)
        assert (row.amount, row.destination) == (amount, DESTINATION)
        assert row.serial and row.cost_sun and row.cost_sun > 0 and row.txid
        assert env.world.token_balance(USDT, address) == 0
        assert len(env.provider.orders_by_out_trade_no(env.ledger.get_sweep(sweep_id).out_trade_no)) == 1
        assert env.world.account(address).trx_sun == 0  # no TRX was needed nor burnt
        states = [e.to_state for e in env.ledger.events(sweep_id)]
        assert states == [
            "queued",
            "ordering",
            "energy_ordered",
            "energy_ready",
            "signed",
            "broadcast",
            "confirmed",
        ]
    assert env.world.token_balance(USDT, DESTINATION) == 135_500_000


def test_balance_below_threshold_at_ordering_time_cancels_without_ordering(env: Env) -> None:
    a = env.fund(0, 50_000_000)
    sweep_id = env.queue(a)
    env.world.credit_token(USDT, a, -45_000_000)  # spent elsewhere before we got to it
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CANCELLED and "below min_sweep" in env.ledger.events(sweep_id)[-1].reason
    assert env.provider.post_count == 0


def test_a_sweep_of_the_destination_itself_is_cancelled_without_ordering(env: Env) -> None:
    env.world.credit_token(USDT, DESTINATION, 30_000_000)
    env.ledger.upsert_addresses([NewAddress(DESTINATION, "import")])  # e.g. imported by mistake
    sweep_id = env.queue(DESTINATION)
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CANCELLED and "is the destination" in env.ledger.events(sweep_id)[-1].reason
    assert env.provider.post_count == 0 and env.world.token_balance(USDT, DESTINATION) == 30_000_000


def test_existing_order_for_the_row_is_adopted_not_reordered(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)

    async def order_first() -> None:
        async with ProviderClient(env.provider.url, Secret(SANDBOX_API_KEY), Secret(SANDBOX_API_SECRET)) as c:
            await c.collect_manual(
                a, to_address=DESTINATION, out_trade_no=env.ledger.get_sweep(sweep_id).out_trade_no
            )

    asyncio.run(order_first())  # as if we crashed after the POST, before storing the serial
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CONFIRMED
    assert env.provider.post_count == 1
    assert any("adopted existing order" in e.reason for e in env.ledger.events(sweep_id))


def test_foreign_order_with_same_out_trade_no_is_not_adopted(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    other = WALLET.address(7)
    sweep_id = env.queue(a)

    async def foreign() -> None:
        async with ProviderClient(env.provider.url, Secret(SANDBOX_API_KEY), Secret(SANDBOX_API_SECRET)) as c:
            await c.collect_manual(other, out_trade_no=env.ledger.get_sweep(sweep_id).out_trade_no)

    asyncio.run(foreign())  # e.g. an old ledger's row with the same id
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED and "not this sweep's" in env.ledger.events(sweep_id)[-1].reason
    assert row.txid is None and env.world.token_balance(USDT, a) == 20_000_000


def test_order_ending_43_fails_the_row_and_retry_sweeps(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.provider.set_switches(outcome=43)
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED and "status 43" in env.ledger.events(sweep_id)[-1].reason
    assert row.txid is None
    env.provider.set_switches(outcome=40)
    new_id = env.ledger.retry(sweep_id)
    asyncio.run(env.run())
    assert env.ledger.get_sweep(new_id).state is S.CONFIRMED
    assert len(env.provider.orders) == 2


def test_5xx_after_order_created_does_not_order_twice(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.provider.set_switches(error_after_create=1)
    asyncio.run(env.run())
    assert env.ledger.get_sweep(sweep_id).state is S.CONFIRMED
    assert len(env.provider.orders_by_out_trade_no(env.ledger.get_sweep(sweep_id).out_trade_no)) == 1


def test_a_post_that_lands_late_after_a_lost_answer_is_adopted_not_ordered_again(env: Env) -> None:
    """The POST hangs BEFORE the provider creates anything; we give up on it (outcome unknown),
    our lookups find nothing, and only later does the provider create the order. No second POST
    may go out meanwhile, or the row would have two orders."""
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.provider.hold_posts(HoldPoint.BEFORE_CREATE)
    opts = PipelineOptions(
        destination=DESTINATION, tokens=TOKENS, order_grace_seconds=0.1, order_settle_seconds=3.0,
        poll_min_seconds=0.05, backoff_base_seconds=0.05, backoff_max_seconds=0.2,
    )  # fmt: skip

    async def go() -> None:
        async with short_timeout_clients(env) as (chain, client):
            pipeline = Pipeline(env.ledger, client, chain, Keys(env.ledger, WALLET), opts, worker_id="w")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while "outcome unknown" not in (env.ledger.get_sweep(sweep_id).last_error or ""):
                assert loop.time() < deadline, "the first POST should time out"
                await pipeline.run_once()
                await asyncio.sleep(0.02)
            # Inside the settle period: lookups only, however often the worker runs.
            lookups_until = loop.time() + 1.0
            while loop.time() < lookups_until:
                await pipeline.run_once()
                await asyncio.sleep(0.02)
            assert env.provider.post_count == 1, "a second order POST went out while the first may land"
            env.provider.release_posts()  # now the provider creates the first order, late
            await wait_final(pipeline, env.ledger, 30)

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CONFIRMED, (row.state, row.last_error)
    assert len(env.provider.orders_by_out_trade_no(env.ledger.get_sweep(sweep_id).out_trade_no)) == 1
    assert any("adopted existing order" in e.reason for e in env.ledger.events(sweep_id))


def test_low_provider_balance_pauses_ordering_and_keeps_rows_queued(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.provider.set_balance(1_000)

    async def go() -> Pipeline:
        opts = PipelineOptions(destination=DESTINATION, tokens=TOKENS, low_balance_pause_seconds=600)
        async with (
            TronChain(env.node.url, requests_per_second=1000, burst=100) as chain,
            ProviderClient(env.provider.url, Secret(SANDBOX_API_KEY), Secret(SANDBOX_API_SECRET)) as client,
        ):
            p = Pipeline(env.ledger, client, chain, Keys(env.ledger, WALLET), opts, worker_id="w")
            await p.run_once()
            await p.run_once()
            return p

    pipeline = asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.QUEUED and "balance too low" in (row.last_error or "")
    assert pipeline.ordering_paused_until is not None
    assert env.provider.orders == {}


def test_daily_spend_cap_defers_ordering(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)

    async def go() -> None:
        opts = PipelineOptions(destination=DESTINATION, tokens=TOKENS, max_daily_spend_sun=1_000_000)
        async with (
            TronChain(env.node.url, requests_per_second=1000, burst=100) as chain,
            ProviderClient(env.provider.url, Secret(SANDBOX_API_KEY), Secret(SANDBOX_API_SECRET)) as client,
        ):
            await Pipeline(
                env.ledger, client, chain, Keys(env.ledger, WALLET), opts, worker_id="w"
            ).run_once()

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.QUEUED and "daily spend cap" in (row.last_error or "")
    assert row.next_attempt_at is not None and env.provider.post_count == 0


def test_address_without_a_key_fails_before_ordering(env: Env) -> None:
    stranger = "TT2X2yyubp7qpAWYYNE5JQWBtoZ7ikQFsY"  # imported without hd index or keyfile entry
    env.world.credit_token(USDT, stranger, 30_000_000)
    env.ledger.upsert_addresses([NewAddress(stranger, "import")])
    sweep_id = env.queue(stranger)
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED and "no usable key" in env.ledger.events(sweep_id)[-1].reason
    assert env.provider.post_count == 0


def test_orders_refused_for_a_wrong_secret_pause_ordering_instead_of_failing_rows(env: Env) -> None:
    ids = [env.queue(env.fund(i, 20_000_000)) for i in range(3)]

    async def go() -> Pipeline:
        opts = PipelineOptions(destination=DESTINATION, tokens=TOKENS, max_attempts=5)
        async with (
            TronChain(env.node.url, requests_per_second=1000, burst=100) as chain,
            ProviderClient(env.provider.url, Secret(SANDBOX_API_KEY), Secret("not-the-secret")) as client,
        ):
            p = Pipeline(env.ledger, client, chain, Keys(env.ledger, WALLET), opts, worker_id="w")
            await p.run_once()
            return p

    pipeline = asyncio.run(go())
    rows = [env.ledger.get_sweep(i) for i in ids]
    assert all(r.state is S.QUEUED and r.attempts == 1 for r in rows), [(r.state, r.attempts) for r in rows]
    assert pipeline.ordering_paused_until is not None
    assert env.provider.orders == {}


def _state_is(env: Env, sweep_id: int, state: SweepState) -> Callable[[], bool]:
    return lambda: env.ledger.get_sweep(sweep_id).state is state


def test_a_transfer_that_expired_unincluded_is_rebuilt_with_a_new_txid_and_confirmed(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tronpy stamps a transaction's expiration from the local clock: keep that clock on the
    # chain's, which this test moves forward (as waiting would) to expire the first transfer.
    monkeypatch.setattr(tronpy.async_tron, "current_timestamp", env.world.now_ms)
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.world.hold_inclusion()  # the node accepts the transfer, no block includes it

    async def go() -> str:
        async with env.pipeline() as pipeline:
            await drive_until(pipeline, _state_is(env, sweep_id, S.BROADCAST), 15, "first broadcast")
            first = env.ledger.get_sweep(sweep_id).txid
            assert first is not None and first in env.world.pending
            with env.world.lock:  # no block from the ticker in between
                env.world.advance_time(DEFAULT_LIFETIME_MS / 1000 + 10)
                env.world.produce_block()  # a head past the expiration; the transfer still pending
                env.world.hold_inclusion(False)  # the next block drops it, expired, never included
            await wait_final(pipeline, env.ledger, 20)
            return first

    first = asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CONFIRMED, (row.state, row.last_error)
    assert row.txid is not None and row.txid != first
    assert (row.amount, row.destination) == (20_000_000, DESTINATION)
    history = env.ledger.events(sweep_id)
    assert [e.to_state for e in history][-5:] == [
        "broadcast",
        "energy_ready",
        "signed",
        "broadcast",
        "confirmed",
    ]
    rebuild = history[-4]
    assert first in rebuild.reason and "expired" in rebuild.reason
    assert row.txid in history[-3].reason  # the new transfer is the one signed after the rebuild
    # The chain holds exactly one transfer from the address: the rebuilt one, executed.
    [tx] = env.transfers_from(a)
    assert (tx.txid, tx.receipt.result, tx.amount) == (row.txid, "SUCCESS", 20_000_000)
    assert tx.block_number is not None and env.world.transaction(first) is None
    assert env.world.token_balance(USDT, a) == 0
    assert env.world.token_balance(USDT, DESTINATION) == 20_000_000
    assert env.world.account(a).trx_sun == 0  # the same rented energy served the rebuilt transfer
    assert (
        len(env.provider.orders_by_out_trade_no(env.ledger.get_sweep(sweep_id).out_trade_no)) == 1
        and env.provider.post_count == 1
    )


def test_a_transfer_that_fails_on_chain_fails_the_row_with_the_reason_and_is_not_resent(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.world.hold_inclusion()

    async def go() -> None:
        async with env.pipeline() as pipeline:
            await drive_until(pipeline, _state_is(env, sweep_id, S.BROADCAST), 15, "broadcast")
            assert env.ledger.get_sweep(sweep_id).txid in env.world.pending
            with env.world.lock:
                # The provider takes its delegation back before the transfer runs: the call has no
                # energy (and the address no TRX), so it fails OUT_OF_ENERGY on chain.
                env.world.reclaim_energy(a)
                env.world.hold_inclusion(False)
            await wait_final(pipeline, env.ledger, 20)
            # A failed row is final: further passes take nothing and send nothing.
            for _ in range(3):
                assert await pipeline.run_once() == 0

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED, (row.state, row.last_error)
    last = env.ledger.events(sweep_id)[-1]
    assert last.to_state == "failed" and f"transaction {row.txid} failed on chain" in last.reason
    assert "OUT_OF_ENERGY: Not enough energy" in last.reason  # the chain's own reason
    [tx] = env.transfers_from(a)  # one transfer, the failed one; no second attempt
    assert (tx.txid, tx.receipt.result) == (row.txid, "OUT_OF_ENERGY")
    assert [e.to_state for e in env.ledger.events(sweep_id)].count("signed") == 1
    assert env.world.token_balance(USDT, a) == 20_000_000 and env.world.token_balance(USDT, DESTINATION) == 0
    assert (
        len(env.provider.orders_by_out_trade_no(env.ledger.get_sweep(sweep_id).out_trade_no)) == 1
        and env.provider.post_count == 1
    )


def test_an_order_never_delegated_fails_after_order_timeout(env: Env) -> None:
    env.provider.delegation_delay = None  # orders stay in status 30 until a test completes them
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    asyncio.run(env.run(timeout=15, order_timeout_seconds=1))
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED, (row.state, row.last_error)
    history = env.ledger.events(sweep_id)
    ordered = next(e for e in history if e.to_state == "energy_ordered")
    failed = history[-1]
    assert failed.to_state == "failed"
    assert failed.reason == f"energy order {row.serial} not completed within 1 s (status 30)"
    assert (failed.at - ordered.at).total_seconds() > 1  # not before the timeout
    order = env.provider.order(str(row.serial))
    assert order is not None and order.status == 30  # still pending at the provider
    assert row.txid is None and env.transfers_from(a) == []
    assert env.provider.post_count == 1 and env.world.token_balance(USDT, a) == 20_000_000


def test_energy_gone_in_energy_ready_fails_after_energy_ready_timeout(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)

    async def go() -> None:
        async with env.pipeline(energy_ready_timeout_seconds=1) as pipeline:
            pipeline.stopping = True  # as on SIGTERM: each pass takes one step per row, then releases it
            await drive_until(pipeline, _state_is(env, sweep_id, S.ENERGY_READY), 15, "energy_ready")
            env.world.reclaim_energy(a)  # the delegation is gone before the transfer is built
            pipeline.stopping = False
            await wait_final(pipeline, env.ledger, 15)

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED, (row.state, row.last_error)
    history = env.ledger.events(sweep_id)
    ready = next(e for e in history if e.to_state == "energy_ready")
    failed = history[-1]
    assert failed.to_state == "failed" and failed.from_state == "energy_ready"
    assert failed.reason.startswith("energy/bandwidth gone for over 1 s: ")
    assert "energy 0 < " in failed.reason
    assert (failed.at - ready.at).total_seconds() > 1
    assert row.txid is None and env.transfers_from(a) == []  # nothing signed, nothing sent
    assert env.provider.post_count == 1 and env.world.token_balance(USDT, a) == 20_000_000


def test_a_price_above_the_per_sweep_cap_requeues_without_ordering(env: Env) -> None:
    # Activated (no activation reserve on top); the destination holds no USDT: the sandbox quotes 8 TRX.
    a = env.fund(0, 20_000_000, activated=True)
    sweep_id = env.queue(a)

    async def go() -> None:
        async with env.pipeline(max_cost_per_sweep_sun=5_000_000) as pipeline:
            assert await pipeline.run_once() == 1
            assert await pipeline.run_once() == 0  # deferred: not due again right away

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.QUEUED, (row.state, row.last_error)
    assert "energy price 8 TRX is above safety.max_cost_per_sweep_trx" in (row.last_error or "")
    assert row.next_attempt_at is not None
    assert (row.next_attempt_at - env.ledger.now()).total_seconds() > 3000
    assert env.provider.post_count == 0 and env.provider.orders == {}
    assert row.serial is None and row.order_sent_at is None


def test_ordering_resumes_after_the_low_balance_pause_once_the_balance_is_back(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.provider.set_balance(1_000)

    async def go() -> Pipeline:
        async with env.pipeline(low_balance_pause_seconds=0.5) as pipeline:
            await pipeline.run_once()
            row = env.ledger.get_sweep(sweep_id)
            assert row.state is S.QUEUED and "balance too low" in (row.last_error or "")
            assert pipeline.ordering_paused_until is not None
            assert env.provider.post_count == 1 and env.provider.orders == {}
            env.provider.set_balance(1_000_000_000)  # topped up
            await wait_final(pipeline, env.ledger, 15)
            return pipeline

    pipeline = asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CONFIRMED, (row.state, row.last_error)
    assert pipeline.ordering_paused_until is None  # the pause ended
    [order] = env.provider.orders_by_out_trade_no(env.ledger.get_sweep(sweep_id).out_trade_no)
    assert row.serial == order.serial and env.provider.post_count == 2
    assert env.world.token_balance(USDT, DESTINATION) == 20_000_000


def test_a_chain_clock_ahead_of_ours_orders_nothing_and_transfers_are_stamped_from_the_head(env: Env) -> None:
    """The node's clock is past a transfer's lifetime ahead of ours. The first wave built transfers
    already expired for that node (stamped from our clock) and paid for their energy; now nothing is
    ordered while the clocks disagree, and a transfer is stamped from the node's head-block time, so
    even with the check switched off it is accepted and confirmed, built once."""
    env.world.advance_time(DEFAULT_LIFETIME_MS / 1000 + 10)
    env.world.produce_block()
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)

    async def go() -> None:
        async with env.pipeline(chain_clock_retry_seconds=0.05) as pipeline:
            for _ in range(3):
                await asyncio.wait_for(pipeline.run_once(), 5)
                await asyncio.sleep(0.06)
            row = env.ledger.get_sweep(sweep_id)
            assert row.state is S.QUEUED and "from this host's clock" in (row.last_error or "")
            assert pipeline.chain_clock_problem is not None and env.provider.post_count == 0
        async with env.pipeline(chain_clock_check=False) as pipeline:
            await wait_final(pipeline, env.ledger, 30)

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CONFIRMED, (row.state, row.last_error)
    assert [e.to_state for e in env.ledger.events(sweep_id)].count("signed") == 1  # built once
    [tx] = env.transfers_from(a)
    assert tx.receipt.result == "SUCCESS" and env.provider.post_count == 1
