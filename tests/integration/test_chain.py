"""TronChain against the sandbox node over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from eth_utils import keccak
from tronpy.providers.async_http import DEFAULT_API_KEYS

import sweeper.chain as chain_module
from sweeper.chain import (
    ERROR_SELECTOR,
    IS_BLACKLISTED_SELECTOR,
    BroadcastOutcome,
    BroadcastRejected,
    ChainResponseError,
    ChainUnavailable,
    SignedTransfer,
    Simulation,
    TronChain,
    TxState,
    UnsafeTransaction,
    deposits_in_block,
    hex20,
    token_keys,
    transfer_data,
)
from sweeper.domain import Secret, address_to_hex
from sweeper.keys import HdWallet, KeyRing
from sweeper.protocols import BlockSource
from sweeper.retry import RetryPolicy
from sweeper.sandbox import world as world_module
from sweeper.sandbox.node_server import RunningNode, start_sandbox_node
from sweeper.sandbox.world import (
    USDT_ENERGY_NEW_HOLDER,
    USDT_ENERGY_OLD_HOLDER,
    USDT_ENERGY_REVERT,
    USDT_ENERGY_REVERT_BLACKLISTED,
    USDT_ENERGY_REVERT_PAUSED,
    USDT_MAINNET,
    World,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VECTORS = json.loads((FIXTURES / "hd-tron-vectors.json").read_text())
FORMS = json.loads((FIXTURES / "constant-call-forms.json").read_text())
WALLET = HdWallet(Secret(VECTORS["mnemonic"]))
DEPOSIT = VECTORS["derived"][0]["address"]
OTHER_DEPOSIT = VECTORS["derived"][1]["address"]
DESTINATION = VECTORS["derived"][2]["address"]
USDT = USDT_MAINNET
FAST_RETRY = RetryPolicy(attempts=8, base_delay=0.02, max_delay=0.2)
# 30 TRX: covers a transfer to a new holder at the sandbox's 100 sun per energy.
FEE_LIMIT = 30_000_000

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
    world: World, address: str, amount: int, *, energy: int = USDT_ENERGY_NEW_HOLDER, bandwidth: int = 400
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
            sim = await chain.simulate_transfer(DEPOSIT, DESTINATION, amount, token=USDT)
            assert sim == Simulation(False, USDT_ENERGY_NEW_HOLDER, 0, "")  # the destination holds none yet
            check = await chain.check_resources(DEPOSIT, DESTINATION, USDT, energy_needed=sim.energy_used)
            assert check.ok, check.reasons
            assert check.energy_needed == USDT_ENERGY_NEW_HOLDER
            fee_limit = await chain.fee_limit_for(sim.energy_used)
            assert fee_limit == USDT_ENERGY_NEW_HOLDER * 100 * 120 // 100  # energy x getEnergyFee x margin
            unsigned = await chain.build_transfer(DEPOSIT, DESTINATION, amount, fee_limit_sun=fee_limit)
            assert unsigned.fee_limit_sun == fee_limit
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
            assert status.energy_used == sim.energy_used  # the simulation measured what it really used
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
                await chain.build_transfer(DEPOSIT, DESTINATION, 5_000_000, fee_limit_sun=FEE_LIMIT)

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
            need = (await chain.simulate_transfer(DEPOSIT, DESTINATION, 9_000_000, token=USDT)).energy_used
            assert need == USDT_ENERGY_OLD_HOLDER
            check = await chain.check_resources(DEPOSIT, DESTINATION, USDT, energy_needed=need)
            assert not check.ok
            assert check.energy_needed == need
            assert any("energy" in reason for reason in check.reasons)
            world.delegate_energy(DEPOSIT, need - 1)
            assert not (await chain.check_resources(DEPOSIT, DESTINATION, USDT, energy_needed=need)).ok
            world.delegate_energy(DEPOSIT, 1)
            # Free bandwidth covers it.
            assert (await chain.check_resources(DEPOSIT, DESTINATION, USDT, energy_needed=need)).ok
            # Never activated: nothing can be sent at all.
            fresh = await chain.check_resources(OTHER_DEPOSIT, DESTINATION, USDT, energy_needed=need)
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
                await chain.build_transfer(DEPOSIT, DESTINATION, 777, fee_limit_sun=FEE_LIMIT),
                ring.key_for(DEPOSIT),
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
                await chain.build_transfer(DEPOSIT, DESTINATION, 50, fee_limit_sun=FEE_LIMIT),
                ring.key_for(DEPOSIT),
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
                await chain.build_transfer(DEPOSIT, DESTINATION, 10, fee_limit_sun=FEE_LIMIT),
                ring.key_for(DEPOSIT),
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
            unsigned = await chain.build_transfer(DEPOSIT, DESTINATION, 99, fee_limit_sun=FEE_LIMIT)
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


# --- simulation before buying energy -------------------------------------------------------------


def test_the_simulation_measures_what_the_transfer_really_uses_holder_or_not(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    world.credit_token(USDT, DEPOSIT, 3_000)  # only received USDT: never activated, no TRX

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            # java-tron answers a constant call for an unactivated owner with 0 TRX like any other.
            assert not await chain.is_activated(DEPOSIT)
            to_new = await chain.simulate_transfer(DEPOSIT, DESTINATION, 1_000, token=USDT)
            assert to_new == Simulation(False, USDT_ENERGY_NEW_HOLDER, 0, "")
            world.credit_token(USDT, DESTINATION, 1)  # now a holder: the cheaper transfer
            to_holder = await chain.simulate_transfer(DEPOSIT, DESTINATION, 1_000, token=USDT)
            assert to_holder == Simulation(False, USDT_ENERGY_OLD_HOLDER, 0, "")
            # What the simulation said is what the executed transfer uses.
            world.activate(DEPOSIT)
            world.delegate_energy(DEPOSIT, to_holder.energy_used)
            world.add_bandwidth(DEPOSIT, 400)
            fee_limit = await chain.fee_limit_for(to_holder.energy_used)
            signed = chain.sign_transfer(
                await chain.build_transfer(DEPOSIT, DESTINATION, 1_000, fee_limit_sun=fee_limit),
                ring.key_for(DEPOSIT),
            )
            await chain.broadcast(signed)
            world.solidify_all()
            status = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms)
            assert status.state is TxState.CONFIRMED
            assert status.energy_used == to_holder.energy_used and status.fee_sun == 0

    run(scenario())
    assert world.token_balance(USDT, DESTINATION) == 1_001
    # Simulating sent nothing: one broadcast, the real one.
    assert len(sandbox.node.requests_to("wallet/broadcasttransaction")) == 1


def test_the_energy_penalty_is_counted_once(sandbox: RunningNode, ring: KeyRing) -> None:
    world = sandbox.world
    penalty = 21_500
    world.set_energy_penalty(penalty)
    world.credit_token(USDT, DESTINATION, 1)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            world.credit_token(USDT, DEPOSIT, 500)
            sim = await chain.simulate_transfer(DEPOSIT, DESTINATION, 500, token=USDT)
            assert not sim.reverted
            assert sim.energy_used == USDT_ENERGY_OLD_HOLDER + penalty  # not + 2 x penalty
            assert sim.energy_penalty == penalty
            # Exactly the simulated energy is delegated: the transfer succeeds paying nothing.
            fund(world, DEPOSIT, 0, energy=sim.energy_used)
            check = await chain.check_resources(DEPOSIT, DESTINATION, USDT, energy_needed=sim.energy_used)
            assert check.ok, check.reasons
            fee_limit = await chain.fee_limit_for(sim.energy_used)
            signed = chain.sign_transfer(
                await chain.build_transfer(DEPOSIT, DESTINATION, 500, fee_limit_sun=fee_limit),
                ring.key_for(DEPOSIT),
            )
            await chain.broadcast(signed)
            world.solidify_all()
            status = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms)
            assert status.state is TxState.CONFIRMED
            assert status.energy_used == sim.energy_used and status.fee_sun == 0

    run(scenario())
    assert world.account(DEPOSIT).energy_available == 0


def test_reverting_transfers_are_simulated_as_reverts(sandbox: RunningNode) -> None:
    world = sandbox.world
    world.credit_token(USDT, DEPOSIT, 1_000)
    world.credit_token(USDT, OTHER_DEPOSIT, 1_000)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            over = await chain.simulate_transfer(DEPOSIT, DESTINATION, 1_001, token=USDT)
            assert over == Simulation(True, USDT_ENERGY_REVERT, 0, "REVERT opcode executed")
            assert not await chain.is_blacklisted(DEPOSIT, token=USDT)
            world.blacklist(DEPOSIT)
            assert await chain.is_blacklisted(DEPOSIT, token=USDT)
            assert not await chain.is_blacklisted(OTHER_DEPOSIT, token=USDT)
            frozen = await chain.simulate_transfer(DEPOSIT, DESTINATION, 1_000, token=USDT)
            assert frozen == Simulation(True, USDT_ENERGY_REVERT_BLACKLISTED, 0, "REVERT opcode executed")
            # Another sender is not affected by the freeze list…
            assert not (await chain.simulate_transfer(OTHER_DEPOSIT, DESTINATION, 1_000, token=USDT)).reverted
            # …but a paused token reverts every transfer.
            world.pause_usdt()
            paused = await chain.simulate_transfer(OTHER_DEPOSIT, DESTINATION, 1_000, token=USDT)
            assert paused == Simulation(True, USDT_ENERGY_REVERT_PAUSED, 0, "REVERT opcode executed")
            world.pause_usdt(False)
            world.blacklist(DEPOSIT, False)
            assert not await chain.is_blacklisted(DEPOSIT, token=USDT)
            assert not (await chain.simulate_transfer(DEPOSIT, DESTINATION, 1_000, token=USDT)).reverted

    run(scenario())
    assert world.token_balance(USDT, DEPOSIT) == 1_000 and not world.transactions


def test_a_contract_the_node_does_not_know_is_an_error_not_a_revert(sandbox: RunningNode) -> None:
    other_token = VECTORS["derived"][1]["address"]  # a valid address with no contract behind it

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            with pytest.raises(
                ChainResponseError, match="CONTRACT_VALIDATE_ERROR Smart contract is not exist"
            ):
                await chain.simulate_transfer(DEPOSIT, DESTINATION, 1, token=other_token)
            with pytest.raises(ChainResponseError, match="CONTRACT_VALIDATE_ERROR"):
                await chain.is_blacklisted(DEPOSIT, token=other_token)

    run(scenario())


def test_node_failures_during_a_simulation_are_chain_errors(sandbox: RunningNode) -> None:
    sandbox.world.credit_token(USDT, DEPOSIT, 10)
    sandbox.node.switches.fail_next = 100

    async def scenario() -> None:
        async with chain_for(sandbox, retry=RetryPolicy(attempts=2, base_delay=0.01)) as chain:
            with pytest.raises(ChainUnavailable):
                await chain.simulate_transfer(DEPOSIT, DESTINATION, 10, token=USDT)
            with pytest.raises(ChainUnavailable):
                await chain.is_blacklisted(DEPOSIT, token=USDT)

    run(scenario())


def test_the_selectors_are_the_keccak_of_their_signatures() -> None:
    assert keccak(text="isBlackListed(address)")[:4].hex() == IS_BLACKLISTED_SELECTOR == "e47d6060"
    assert world_module.IS_BLACKLISTED_SELECTOR == IS_BLACKLISTED_SELECTOR
    assert keccak(text="Error(string)")[:4].hex() == ERROR_SELECTOR
    assert keccak(text="transfer(address,uint256)")[:4].hex() == transfer_data(DESTINATION, 1)[:8]


def test_no_energy_figure_is_guessed_by_the_client() -> None:
    assert not hasattr(chain_module, "ENERGY_TO_HOLDER") and not hasattr(chain_module, "ENERGY_TO_NEW_HOLDER")
    assert not hasattr(TronChain, "transfer_energy")
    for method, name in (
        (TronChain.check_resources, "energy_needed"),
        (TronChain.build_transfer, "fee_limit_sun"),
    ):
        parameter = inspect.signature(method).parameters[name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert parameter.default is inspect.Parameter.empty, f"{name} must be given by the caller"


# --- java-tron's answer forms (tests/fixtures/constant-call-forms.json), over a stubbed transport --


def stub_chain(answer: dict[str, Any], sent: list[dict[str, Any]]) -> TronChain:
    """A TronChain whose node always gives `answer` (and records what was asked)."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append({"path": request.url.path, **json.loads(request.content)})
        return httpx.Response(200, json=answer)

    return TronChain("http://node.invalid", transport=httpx.MockTransport(handler), retry=FAST_RETRY)


@pytest.mark.parametrize("form", ["success", "revert", "revert_with_reason"])
def test_each_java_tron_form_parses_to_the_expected_simulation(form: str) -> None:
    expected = FORMS["expected"][form]
    sent: list[dict[str, Any]] = []

    async def scenario() -> Simulation:
        async with stub_chain(FORMS[form], sent) as chain:
            return await chain.simulate_transfer(DEPOSIT, DESTINATION, 25_000_000, token=USDT)

    assert run(scenario()) == Simulation(**expected)
    assert sent == [
        {
            "path": "/wallet/triggerconstantcontract",
            "owner_address": DEPOSIT,
            "contract_address": USDT,
            "function_selector": "transfer(address,uint256)",
            "parameter": "00" * 12 + address_to_hex(DESTINATION)[2:] + f"{25_000_000:064x}",
            "visible": True,
        }
    ]


def test_the_success_forms_energy_already_includes_its_penalty() -> None:
    form = FORMS["success"]
    assert form["energy_penalty"] > 0  # the fixture exercises a penalty

    async def scenario() -> Simulation:
        async with stub_chain(form, []) as chain:
            return await chain.simulate_transfer(DEPOSIT, DESTINATION, 1, token=USDT)

    sim = run(scenario())
    assert sim.energy_used == form["energy_used"] and sim.energy_penalty == form["energy_penalty"]


@pytest.mark.parametrize("form", ["validate_error", "other_error"])
def test_a_call_that_did_not_run_raises_instead_of_reading_as_a_revert(form: str) -> None:
    assert FORMS["expected"][form] == "ChainResponseError"

    async def scenario() -> None:
        async with stub_chain(FORMS[form], []) as chain:
            with pytest.raises(ChainResponseError, match=FORMS[form]["result"]["code"]):
                await chain.simulate_transfer(DEPOSIT, DESTINATION, 1, token=USDT)
            with pytest.raises(ChainResponseError, match=FORMS[form]["result"]["code"]):
                await chain.is_blacklisted(DEPOSIT, token=USDT)

    run(scenario())


def test_only_the_ret_field_marks_a_revert_when_the_message_is_missing() -> None:
    answer = json.loads(json.dumps(FORMS["revert"]))
    del answer["result"]["message"]

    async def scenario() -> Simulation:
        async with stub_chain(answer, []) as chain:
            return await chain.simulate_transfer(DEPOSIT, DESTINATION, 1, token=USDT)

    sim = run(scenario())
    assert sim.reverted and sim.energy_used == FORMS["revert"]["energy_used"]


def test_a_transfer_returning_false_counts_as_reverted() -> None:
    answer = json.loads(json.dumps(FORMS["success"]))
    answer["constant_result"] = ["00" * 32]

    async def scenario() -> Simulation:
        async with stub_chain(answer, []) as chain:
            return await chain.simulate_transfer(DEPOSIT, DESTINATION, 1, token=USDT)

    assert run(scenario()) == Simulation(
        True, FORMS["success"]["energy_used"], FORMS["success"]["energy_penalty"], "transfer returned false"
    )


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({"Error": "class java.lang.NullPointerException : null"}, "node error"),
        ({}, "no result"),
        ({"result": {}}, "did not run"),
        ({"result": {"result": True}, "energy_used": "many"}, "energy_used"),
        ({"result": {"result": True}, "energy_used": 10, "energy_penalty": 11}, "make no sense"),
        ({"result": {"result": True}, "energy_used": 10, "constant_result": "01"}, "constant_result"),
        ({"result": {"result": True}, "energy_used": 10, "constant_result": ["02".rjust(64, "0")]}, "bool"),
    ],
    ids=[
        "node-error",
        "no-result",
        "not-run",
        "energy-not-int",
        "penalty-above-total",
        "result-not-list",
        "not-bool",
    ],
)
def test_malformed_answers_raise(answer: dict[str, Any], match: str) -> None:
    async def scenario() -> None:
        async with stub_chain(answer, []) as chain:
            with pytest.raises(ChainResponseError, match=match):
                await chain.simulate_transfer(DEPOSIT, DESTINATION, 1, token=USDT)

    run(scenario())


def test_is_blacklisted_reads_the_bool_word_and_refuses_a_revert() -> None:
    sent: list[dict[str, Any]] = []
    listed = {"result": {"result": True}, "energy_used": 605, "constant_result": [f"{1:064x}"]}

    async def scenario() -> None:
        async with stub_chain(listed, sent) as chain:
            assert await chain.is_blacklisted(DEPOSIT, token=USDT) is True
        async with stub_chain(FORMS["revert"], []) as chain:
            with pytest.raises(ChainResponseError, match="reverted"):
                await chain.is_blacklisted(DEPOSIT, token=USDT)

    run(scenario())
    assert sent[0]["function_selector"] == "isBlackListed(address)"
    assert sent[0]["parameter"] == "00" * 12 + address_to_hex(DEPOSIT)[2:]
    assert sent[0]["owner_address"] == DEPOSIT and sent[0]["visible"] is True


def test_the_revert_reason_is_decoded_from_error_string() -> None:
    word = FORMS["revert_with_reason"]["constant_result"][0]
    assert word.startswith(ERROR_SELECTOR)
    assert FORMS["expected"]["revert_with_reason"]["message"].endswith(
        bytes.fromhex(word[8 + 128 :]).rstrip(b"\0").decode()
    )


def test_a_result_message_alone_marks_a_revert() -> None:
    answer = json.loads(json.dumps(FORMS["revert"]))
    del answer["transaction"]  # e.g. a proxy that drops it: the message still says REVERT

    async def scenario() -> Simulation:
        async with stub_chain(answer, []) as chain:
            return await chain.simulate_transfer(DEPOSIT, DESTINATION, 1, token=USDT)

    assert run(scenario()) == Simulation(True, FORMS["revert"]["energy_used"], 0, "REVERT opcode executed")


# --- following blocks: the BlockSource methods, each one request --------------------------------


def test_the_block_source_methods_read_solid_blocks_in_one_request_each(sandbox: RunningNode) -> None:
    world = sandbox.world
    deposit = world.token_transfer(DEPOSIT, 25_000_000)
    payout = world.internal_deposit(OTHER_DEPOSIT, 938_500_000)
    world.failed_transfer_with_log(DEPOSIT, 50_000_000)
    world.trx_transfer(DEPOSIT, 1_000)
    full = world.produce_block()
    empty = world.produce_block()
    world.solidify_all()
    watched = {hex20(DEPOSIT), hex20(OTHER_DEPOSIT)}

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            source: BlockSource = chain  # the follower's protocol
            before = chain.requests_sent
            head = await source.solid_head()
            assert (head.number, head.block_id) == (world.solid_number, world.solid_head.block_id)
            assert await source.solid_block_transaction_count(full.number) == 4
            assert await source.solid_block_transaction_count(empty.number) == 0  # no `transactions` key
            infos = await source.solid_transaction_infos(full.number)
            assert await source.solid_transaction_infos(empty.number) == []
            assert await source.solid_transaction_infos(0) == []  # java-tron answers `{}` for num <= 0
            assert chain.requests_sent - before == 6
            found = deposits_in_block(infos, token_keys([USDT]), watched)
            assert [(t.txid, t.recipient, t.amount) for t in found] == [
                (deposit.txid, DEPOSIT, 25_000_000),
                (payout.txid, OTHER_DEPOSIT, 938_500_000),  # emitted by the payout contract's call
            ]
            assert await source.token_balance(OTHER_DEPOSIT, USDT) == 938_500_000

    run(scenario())
    for path in ("walletsolidity/getblockbynum", "walletsolidity/gettransactioninfobyblocknum"):
        assert all(r.status == 200 for r in sandbox.node.requests_to(path))


def test_a_block_the_node_does_not_have_is_an_error_not_an_empty_block(sandbox: RunningNode) -> None:
    world = sandbox.world
    world.token_transfer(DEPOSIT, 1)
    block = world.produce_block()
    assert block.number > world.solid_number  # mined, not solid yet

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            assert await chain.solid_transaction_infos(block.number) == []  # looks empty ...
            with pytest.raises(ChainResponseError, match="no solidified block"):
                await chain.solid_block_transaction_count(block.number)  # ... but is not there

    run(scenario())


def test_a_node_without_infos_and_a_lagging_node_are_told_apart_from_empty_blocks(
    sandbox: RunningNode,
) -> None:
    world = sandbox.world
    tx = world.token_transfer(DEPOSIT, 1)
    block = world.produce_block()
    world.solidify_all()

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            sandbox.node.switches.no_transaction_info = True
            assert await chain.solid_transaction_infos(block.number) == []
            assert await chain.solid_block_transaction_count(block.number) == 1  # so: not trusted
            sandbox.node.switches.no_transaction_info = False
            sandbox.node.switches.lagging_infos = 1
            assert await chain.solid_transaction_infos(block.number) == []
            assert [i["id"] for i in await chain.solid_transaction_infos(block.number)] == [tx.txid]

    run(scenario())


def _stub(answer: Any) -> TronChain:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer)

    return TronChain("http://node.invalid", transport=httpx.MockTransport(handler), retry=FAST_RETRY)


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ([{"id": "ab", "blockNumber": 8}], "block 8"),
        (["not an object"], "not a JSON object"),
        ({"id": "ab"}, "expected a JSON array"),
        ({"Error": "class java.lang.NumberFormatException"}, "node error"),
    ],
    ids=["another-block", "not-an-object", "an-object", "node-error"],
)
def test_unusable_infos_raise(answer: Any, match: str) -> None:
    async def scenario() -> None:
        async with _stub(answer) as chain:
            with pytest.raises(ChainResponseError, match=match):
                await chain.solid_transaction_infos(7)

    run(scenario())


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        ({"blockID": "00", "block_header": {"raw_data": {"number": 6}}}, "answered block 6"),
        ({"blockID": "00"}, "malformed"),
        ({"blockID": "00", "block_header": {"raw_data": {"number": 7}}, "transactions": {}}, "not a list"),
    ],
    ids=["another-block", "no-header", "transactions-not-a-list"],
)
def test_unusable_blocks_raise(answer: Any, match: str) -> None:
    async def scenario() -> None:
        async with _stub(answer) as chain:
            with pytest.raises(ChainResponseError, match=match):
                await chain.solid_block_transaction_count(7)

    run(scenario())
