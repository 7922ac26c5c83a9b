"""TronChain against the sandbox node over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tronpy.providers.async_http import DEFAULT_API_KEYS

from sweeper.chain import (
    ENERGY_TO_HOLDER,
    ENERGY_TO_NEW_HOLDER,
    BroadcastOutcome,
    BroadcastRejected,
    ChainUnavailable,
    RetryPolicy,
    SignedTransfer,
    TronChain,
    TxState,
    UnsafeTransaction,
)
from sweeper.domain import Secret
from sweeper.keys import HdWallet, KeyRing
from sweeper.sandbox.node_server import RunningNode, start_sandbox_node
from sweeper.sandbox.world import USDT_MAINNET, World

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VECTORS = json.loads((FIXTURES / "hd-tron-vectors.json").read_text())
WALLET = HdWallet(Secret(VECTORS["mnemonic"]))
DEPOSIT = VECTORS["derived"][0]["address"]
OTHER_DEPOSIT = VECTORS["derived"][1]["address"]
DESTINATION = VECTORS["derived"][2]["address"]
USDT = USDT_MAINNET
FAST_RETRY = RetryPolicy(attempts=8, base_delay=0.02, max_delay=0.2)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait on observable state with a deadline (not a sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.002)


@pytest.fixture
def sandbox() -> Iterator[RunningNode]:
    running = start_sandbox_node(World(solid_lag=3))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def ring() -> KeyRing:
    keys = KeyRing()
    keys.add_hd(WALLET, 0)
    keys.add_hd(WALLET, 1)
    return keys


def chain_for(sandbox: RunningNode, **kwargs: Any) -> TronChain:
    options: dict[str, Any] = {"requests_per_second": 500, "retry": FAST_RETRY}
    options.update(kwargs)
    url = options.pop("url", sandbox.url)
    return TronChain(url, **options)


def fund(
    world: World, address: str, amount: int, *, energy: int = ENERGY_TO_NEW_HOLDER, bandwidth: int = 400
) -> None:
    """What a deposit plus a completed collect-manual order leave on chain."""
    world.credit_token(USDT, address, amount)
    world.activate(address)
    world.delegate_energy(address, energy)
    world.add_bandwidth(address, bandwidth)


def test_full_sweep_from_a_mnemonic_address_confirms_and_moves_the_exact_amount(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    amount = 123_456_789
    fund(world, DEPOSIT, amount)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            assert await chain.token_balance(DEPOSIT) == amount
            check = await chain.check_resources(DEPOSIT, DESTINATION)
            assert check.ok, check.reasons
            assert check.energy_needed == ENERGY_TO_NEW_HOLDER  # the destination holds no USDT yet
            unsigned = await chain.build_transfer(DEPOSIT, DESTINATION, amount)
            assert unsigned.fee_limit_sun >= ENERGY_TO_NEW_HOLDER * 100
            signed = chain.sign_transfer(unsigned, ring.key_for(DEPOSIT))
            stored = signed.to_json()  # what the ledger keeps before broadcasting
            assert (
                await chain.broadcast(SignedTransfer.from_json(stored))
            ).outcome is BroadcastOutcome.ACCEPTED

            status = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms)
            assert status.state is TxState.PENDING
            world.produce_block()  # mined but not yet solidified (lag 3)
            status = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms)
            assert status.state is TxState.PENDING
            world.solidify_all()
            status = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms)
            assert status.state is TxState.CONFIRMED
            assert status.fee_sun == 0  # paid with delegated energy and bandwidth only
            assert status.energy_used == ENERGY_TO_NEW_HOLDER
            assert [(t.sender, t.recipient, t.amount) for t in status.transfers] == [
                (DEPOSIT, DESTINATION, amount)
            ]
            assert await chain.token_balance(DEPOSIT) == 0
            assert await chain.token_balance(DESTINATION) == amount
            assert status.block_number is not None
            follow = await chain.token_transfers_in_block(status.block_number)
            assert [(t.txid, t.amount) for t in follow] == [(signed.txid, amount)]

    run(scenario())
    assert world.token_balance(USDT, DESTINATION) == amount
    assert world.account(DEPOSIT).trx_sun == 0


def test_a_forged_txid_is_caught_before_signing(sandbox: RunningNode) -> None:
    fund(sandbox.world, DEPOSIT, 5_000_000)
    sandbox.node.switches.forge_txid = True

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            with pytest.raises(UnsafeTransaction, match="not the hash"):
                await chain.build_transfer(DEPOSIT, DESTINATION, 5_000_000)

    run(scenario())
    assert sandbox.node.requests_to("wallet/getsignweight")
    assert not sandbox.node.requests_to("wallet/broadcasttransaction")


def test_the_resource_check_refuses_a_transfer_without_energy(sandbox: RunningNode, ring: KeyRing) -> None:
    world = sandbox.world
    world.credit_token(USDT, DEPOSIT, 9_000_000)
    world.credit_token(USDT, DESTINATION, 1)  # an existing holder: the cheaper case
    world.credit_trx(DEPOSIT, 50_000_000)  # the address's own TRX must never be burnt

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            check = await chain.check_resources(DEPOSIT, DESTINATION)
            assert not check.ok
            assert check.energy_needed == ENERGY_TO_HOLDER
            assert any("energy" in reason for reason in check.reasons)
            world.delegate_energy(DEPOSIT, ENERGY_TO_HOLDER - 1)
            assert not (await chain.check_resources(DEPOSIT, DESTINATION)).ok
            world.delegate_energy(DEPOSIT, 1)
            assert (await chain.check_resources(DEPOSIT, DESTINATION)).ok  # free bandwidth covers it
            # Never activated: nothing can be sent at all.
            fresh = await chain.check_resources(OTHER_DEPOSIT, DESTINATION)
            assert not fresh.ok and not fresh.activated and "not activated" in fresh.reasons[0]

    run(scenario())
    assert not sandbox.node.requests_to("wallet/broadcasttransaction")
    assert world.account(DEPOSIT).trx_sun == 50_000_000


def test_rebroadcast_is_already_known_and_moves_money_once(sandbox: RunningNode, ring: KeyRing) -> None:
    world = sandbox.world
    fund(world, DEPOSIT, 777)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            signed = chain.sign_transfer(
                await chain.build_transfer(DEPOSIT, DESTINATION, 777), ring.key_for(DEPOSIT)
            )
            assert (await chain.broadcast(signed)).outcome is BroadcastOutcome.ACCEPTED
            assert (await chain.broadcast(signed)).outcome is BroadcastOutcome.ALREADY_KNOWN
            world.solidify_all()
            assert (await chain.broadcast(signed)).outcome is BroadcastOutcome.ALREADY_KNOWN
            status = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms)
            assert status.state is TxState.CONFIRMED

    run(scenario())
    assert world.token_balance(USDT, DESTINATION) == 777
    assert len(world.transactions) == 1


def test_a_low_fee_limit_fails_out_of_energy_even_with_rented_energy(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    fund(world, DEPOSIT, 1_000)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            # 10 TRX (tronpy's default) caps the call at 100,000 energy < 130,285 needed.
            unsigned = await chain.build_transfer(DEPOSIT, DESTINATION, 1_000, fee_limit_sun=10_000_000)
            signed = chain.sign_transfer(unsigned, ring.key_for(DEPOSIT))
            await chain.broadcast(signed)
            world.solidify_all()
            status = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms)
            assert status.state is TxState.FAILED
            assert status.reason is not None and status.reason.startswith("OUT_OF_ENERGY")
            assert status.transfers == ()

    run(scenario())
    assert world.token_balance(USDT, DEPOSIT) == 1_000


def test_a_transaction_never_included_becomes_expired_and_cannot_be_rebroadcast(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    fund(world, DEPOSIT, 50)
    sandbox.node.switches.drop_broadcasts = True  # "accepted", then lost by the node

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            signed = chain.sign_transfer(
                await chain.build_transfer(DEPOSIT, DESTINATION, 50), ring.key_for(DEPOSIT)
            )
            assert (await chain.broadcast(signed)).outcome is BroadcastOutcome.ACCEPTED
            world.solidify_all()
            assert (
                await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms)
            ).state is (TxState.PENDING)
            world.advance_time(61)  # past the 60-s expiration
            world.produce_block()
            world.solidify_all()
            # The solidified head just passed the expiration: within the margin, still pending.
            world.advance_time(10)
            world.produce_blocks(world.solid_lag + 1)
            status = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms)
            assert status.state is TxState.EXPIRED
            sandbox.node.switches.drop_broadcasts = False
            with pytest.raises(BroadcastRejected) as err:
                await chain.broadcast(signed)
            assert err.value.code == "TRANSACTION_EXPIRATION_ERROR" and err.value.expired

    run(scenario())
    assert world.token_balance(USDT, DEPOSIT) == 50


def test_a_held_broadcast_completes_when_released(sandbox: RunningNode, ring: KeyRing) -> None:
    fund(sandbox.world, DEPOSIT, 10)
    node = sandbox.node

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            signed = chain.sign_transfer(
                await chain.build_transfer(DEPOSIT, DESTINATION, 10), ring.key_for(DEPOSIT)
            )
            node.hold_broadcasts()
            task = asyncio.create_task(chain.broadcast(signed))
            await wait_until(lambda: node.held_broadcasts == 1)
            assert not task.done() and not sandbox.world.pending
            node.release_broadcasts()
            assert (await task).outcome is BroadcastOutcome.ACCEPTED

    run(scenario())


def test_a_429_storm_is_retried_within_the_limit(sandbox: RunningNode) -> None:
    sandbox.world.credit_token(USDT, DEPOSIT, 42)
    storm = 10  # the next 10 requests answer 429, whatever the timing

    async def scenario() -> int:
        storm_retry = RetryPolicy(attempts=8, base_delay=0.05, max_delay=1.0)
        async with chain_for(sandbox, requests_per_second=1_000, retry=storm_retry) as chain:
            assert await chain.token_balance(DEPOSIT) == 42  # the contract's ABI is now cached
            before = chain.retries
            sandbox.node.switches.fail_status = 429
            sandbox.node.switches.fail_next = storm
            balances = await asyncio.gather(*(chain.token_balance(DEPOSIT) for _ in range(20)))
            assert balances == [42] * 20
            return chain.retries - before

    retries = run(scenario())
    calls = sandbox.node.requests_to("wallet/triggerconstantcontract")
    assert sum(1 for r in calls if r.status == 429) == storm
    assert sum(1 for r in calls if r.status == 200) == 21
    assert sandbox.node.switches.fail_next == 0
    assert retries == storm  # each 429 retried once, none given up


def test_the_client_rate_limiter_keeps_under_the_nodes_limit(sandbox: RunningNode) -> None:
    sandbox.node.switches.max_rps = 10

    async def scenario() -> float:
        # Half the node's limit: jitter in request arrival can never crowd 10 into one second.
        async with chain_for(sandbox, requests_per_second=5) as chain:
            start = time.monotonic()
            await asyncio.gather(*(chain.trx_balance(DEPOSIT) for _ in range(8)))
            return time.monotonic() - start

    elapsed = run(scenario())
    assert sandbox.node.counters.rejected_429 == 0
    assert elapsed >= 7 / 5 * 0.95


def test_retries_give_up_with_a_clean_error(sandbox: RunningNode) -> None:
    sandbox.node.switches.fail_next = 100
    key = Secret("k-0123456789-secret")

    async def scenario() -> None:
        async with chain_for(sandbox, api_key=key, retry=RetryPolicy(attempts=3, base_delay=0.01)) as chain:
            with pytest.raises(ChainUnavailable) as err:
                await chain.trx_balance(DEPOSIT)
            assert "HTTP 503" in str(err.value) and "3 attempts" in str(err.value)
            assert key.reveal() not in str(err.value) and key.reveal() not in repr(chain)

    run(scenario())
    assert len(sandbox.node.requests_to("wallet/getaccount")) == 3


def test_a_trongrid_url_without_a_key_sends_no_tronpy_builtin_key(sandbox: RunningNode) -> None:
    async def scenario() -> None:
        async with chain_for(sandbox, url=f"{sandbox.url}/trongrid/") as chain:
            await chain.token_balance(DEPOSIT)
            await chain.latest_solid_block()

    run(scenario())
    assert sandbox.node.requests  # the requests did reach the sandbox through the /trongrid/ prefix
    for record in sandbox.node.requests:
        assert "tron-pro-api-key" not in record.headers
        assert not set(record.headers.values()) & set(DEFAULT_API_KEYS)


def test_a_configured_key_is_sent_on_every_request_and_never_shown(sandbox: RunningNode) -> None:
    key = Secret("d6f1b3c4-our-own-key")

    async def scenario() -> None:
        async with chain_for(sandbox, url=f"{sandbox.url}/trongrid", api_key=key) as chain:
            await chain.token_balance(DEPOSIT)
            await chain.energy_fee()
            assert key.reveal() not in repr(chain)

    run(scenario())
    assert len(sandbox.node.requests) >= 3
    for record in sandbox.node.requests:
        assert record.headers["tron-pro-api-key"] == key.reveal()
        assert not set(record.headers.values()) & set(DEFAULT_API_KEYS)


def test_signing_refuses_another_addresses_key_and_stored_tampering(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    fund(sandbox.world, DEPOSIT, 99)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            unsigned = await chain.build_transfer(DEPOSIT, DESTINATION, 99)
            with pytest.raises(UnsafeTransaction):
                chain.sign_transfer(unsigned, ring.key_for(OTHER_DEPOSIT))
            signed = chain.sign_transfer(unsigned, ring.key_for(DEPOSIT))
            assert SignedTransfer.from_json(signed.to_json()) == signed
            tampered = json.loads(signed.to_json())
            data = tampered["raw_data"]["contract"][0]["parameter"]["value"]["data"]
            tampered["raw_data"]["contract"][0]["parameter"]["value"]["data"] = data[:-1] + "2"
            with pytest.raises(UnsafeTransaction):
                SignedTransfer.from_json(json.dumps(tampered))

    run(scenario())
