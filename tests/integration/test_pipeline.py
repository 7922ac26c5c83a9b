"""The sweep pipeline in-process against the sandbox node and provider, on SQLite and Postgres.

The subprocess / kill -9 suite is tests/e2e/; these cover each step's decisions directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
from sqlalchemy import Engine

from sweeper.chain import TronChain
from sweeper.config import TokenSettings
from sweeper.domain import Secret, SweepState
from sweeper.keys import HdWallet
from sweeper.ledger import Ledger, NewAddress
from sweeper.pipeline import Keys, Pipeline, PipelineOptions
from sweeper.provider import ProviderClient, Timeouts
from sweeper.sandbox.node_server import RunningNode, start_sandbox_node
from sweeper.sandbox.provider_server import SANDBOX_API_KEY, SANDBOX_API_SECRET, HoldPoint, SandboxProvider
from sweeper.sandbox.world import World

S = SweepState
MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
WALLET = HdWallet(Secret(MNEMONIC))
DESTINATION = "TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMW"
USDT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
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

    async def run(self, timeout: float = 30.0, **options: object) -> Pipeline:
        opts = PipelineOptions(
            destination=DESTINATION, tokens=TOKENS, order_grace_seconds=0.2, poll_min_seconds=0.05,
            backoff_base_seconds=0.05, backoff_max_seconds=0.2, **options,  # type: ignore[arg-type]
        )  # fmt: skip
        async with (
            TronChain(self.node.url, requests_per_second=1000, burst=100) as chain,
            ProviderClient(self.provider.url, Secret(SANDBOX_API_KEY), Secret(SANDBOX_API_SECRET)) as client,
        ):
            pipeline = Pipeline(
                self.ledger, client, chain, Keys(self.ledger, WALLET), opts, worker_id="test-worker"
            )
            await wait_final(pipeline, self.ledger, timeout)
            return pipeline


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
        assert len(env.provider.orders_by_out_trade_no(str(sweep_id))) == 1
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
            await c.collect_manual(a, to_address=DESTINATION, out_trade_no=str(sweep_id))

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
            await c.collect_manual(other, out_trade_no=str(sweep_id))

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
    assert len(env.provider.orders_by_out_trade_no(str(sweep_id))) == 1


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
        async with (
            TronChain(env.node.url, requests_per_second=1000, burst=100) as chain,
            ProviderClient(
                env.provider.url,
                Secret(SANDBOX_API_KEY),
                Secret(SANDBOX_API_SECRET),
                timeouts=Timeouts(read=0.3, total=0.5),
            ) as client,
        ):
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
    assert len(env.provider.orders_by_out_trade_no(str(sweep_id))) == 1
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
