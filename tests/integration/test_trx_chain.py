"""Native TRX sweeps: TronChain.build_trx_sweep / transaction_status(token=None) /
solid_block_trx_transfers against the sandbox node over real HTTP, whose TransferContract follows
java-tron's BandwidthProcessor and TransferActuator."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from tronpy.keys import PrivateKey
from tronpy.proto import calculate_txid_from_raw_data

from sweeper.chain import (
    BroadcastOutcome,
    BroadcastRejected,
    ChainResponseError,
    SignedTransfer,
    TokenTransfer,
    TronChain,
    TxState,
    UnsignedTransfer,
)
from sweeper.chain.models import TrxSweep, TrxSweepPlan
from sweeper.chain.transfers import sign_transfer
from sweeper.chain.trx import bandwidth_bytes, transfer_raw_data
from sweeper.domain import Secret, address_to_hex
from sweeper.keys import HdWallet, KeyRing
from sweeper.protocols import BlockSource, SweepChain
from sweeper.retry import RetryPolicy
from sweeper.sandbox.node_server import RunningNode, start_sandbox_node
from sweeper.sandbox.world import World

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VECTORS = json.loads((FIXTURES / "hd-tron-vectors.json").read_text())
WALLET = HdWallet(Secret(VECTORS["mnemonic"]))
DEPOSIT = VECTORS["derived"][0]["address"]
OTHER_DEPOSIT = VECTORS["derived"][1]["address"]
DESTINATION = VECTORS["derived"][2]["address"]
# An address no one ever sent anything to: its account does not exist.
FRESH = str(
    PrivateKey(hashlib.sha256(b"trx sweep fresh destination").digest()).public_key.to_base58check_address()
)
FAST_RETRY = RetryPolicy(attempts=8, base_delay=0.02, max_delay=0.2)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


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


def chain_for(sandbox: RunningNode) -> TronChain:
    return TronChain(sandbox.url, requests_per_second=500, retry=FAST_RETRY)


def post(sandbox: RunningNode, path: str, body: dict[str, Any]) -> Any:
    return httpx.post(f"{sandbox.url}/{path}", json=body, timeout=10).json()


def account_state(world: World, address: str) -> tuple[int, bool, int, int]:
    with world.lock:
        acct = world.accounts.get(address)
        if acct is None:
            return (0, False, 0, 0)
        return (acct.trx_sun, acct.activated, acct.bandwidth_used, acct.free_bandwidth_used)


async def sweep_and_confirm(
    chain: TronChain, world: World, ring: KeyRing, owner: str, destination: str
) -> tuple[TrxSweep, Any]:
    """build_trx_sweep + sign + broadcast + solidify + transaction_status(token=None)."""
    sweep = await chain.build_trx_sweep(owner, destination)
    assert sweep.unsigned is not None
    signed = chain.sign_transfer(sweep.unsigned, ring.key_for(owner))
    stored = SignedTransfer.from_json(signed.to_json())  # what the ledger keeps: a TRX transfer too
    assert stored == signed and stored.token is None and stored.fee_limit_sun == 0
    assert (await chain.broadcast(stored)).outcome is BroadcastOutcome.ACCEPTED
    pending = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms, token=None)
    assert pending.state is TxState.PENDING
    world.solidify_all()
    status = await chain.transaction_status(signed.txid, expiration_ms=signed.expiration_ms, token=None)
    assert status.state is TxState.CONFIRMED, status
    assert status.transfers == (
        TokenTransfer(signed.txid, None, owner, destination, sweep.plan.amount_sun, 0),
    )
    assert status.fee_sun == sweep.plan.fee_sun
    return sweep, status


def test_with_free_bandwidth_the_whole_balance_arrives_and_nothing_is_burnt(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    world.credit_trx(DEPOSIT, 2_000_000)
    world.credit_trx(DESTINATION, 5)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            source: SweepChain = chain
            assert await source.trx_balance(DEPOSIT) == 2_000_000
            sweep, status = await sweep_and_confirm(chain, world, ring, DEPOSIT, DESTINATION)
            assert sweep.plan == TrxSweepPlan(2_000_000, 2_000_000, 0, 267, "free", True, 0)
            assert (status.fee_sun, status.net_usage) == (0, 267)
            assert await chain.trx_balance(DEPOSIT) == 0
            assert await chain.trx_balance(DESTINATION) == 2_000_005

    run(scenario())
    assert account_state(world, DEPOSIT) == (0, True, 0, 267)
    assert post(sandbox, "wallet/getaccount", {"address": address_to_hex(DEPOSIT)}).get("balance") is None


def test_with_the_free_bandwidth_used_up_the_balance_less_the_exact_fee_arrives(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    world.credit_trx(DEPOSIT, 2_000_000)
    world.credit_trx(DESTINATION, 5)
    world.use_free_bandwidth(DEPOSIT, 400)  # 200 left: all-or-nothing, not enough for 267

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            sweep, status = await sweep_and_confirm(chain, world, ring, DEPOSIT, DESTINATION)
            assert sweep.plan == TrxSweepPlan(2_000_000, 1_733_000, 267_000, 267, "burn", True, 0)
            info = post(sandbox, "walletsolidity/gettransactioninfobyid", {"value": status.txid})
            assert info["fee"] == 267_000 and info["receipt"] == {"net_fee": 267_000}
            assert status.block_number is not None
            count, found = await chain.solid_block_trx_transfers(status.block_number)
            assert (count, found) == (1, list(status.transfers))

    run(scenario())
    assert account_state(world, DEPOSIT) == (0, True, 0, 400)
    assert account_state(world, DESTINATION)[0] == 5 + 1_733_000


def test_at_a_varint_boundary_less_than_one_bytes_fee_stays_and_the_fee_is_the_infos(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    balance = 2**21 + 267_500  # the whole balance less 268 bytes' fee is below 2**21: 267 bytes
    world.credit_trx(DEPOSIT, balance)
    world.credit_trx(DESTINATION, 5)
    world.use_free_bandwidth(DEPOSIT)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            sweep, _ = await sweep_and_confirm(chain, world, ring, DEPOSIT, DESTINATION)
            assert sweep.plan == TrxSweepPlan(balance, 2**21 - 1, 267_000, 267, "burn", True, 501)

    run(scenario())
    assert account_state(world, DEPOSIT)[0] == 501


def test_to_a_destination_that_does_not_exist_the_create_account_fees_are_burnt(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    world.credit_trx(DEPOSIT, 3_000_000)  # free bandwidth untouched: it is never used for this
    assert not world.exists(FRESH)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            sweep, status = await sweep_and_confirm(chain, world, ring, DEPOSIT, FRESH)
            assert sweep.plan == TrxSweepPlan(3_000_000, 1_900_000, 1_100_000, 267, "new-account", False, 0)
            info = post(sandbox, "walletsolidity/gettransactioninfobyid", {"value": status.txid})
            # TransactionInfo.fee = the actuator's 1 TRX + the 0.1 TRX burnt for the bandwidth.
            assert info["fee"] == 1_100_000 and info["receipt"] == {"net_fee": 100_000}
            assert await chain.trx_balance(FRESH) == 1_900_000

    run(scenario())
    assert account_state(world, DEPOSIT) == (0, True, 0, 0)
    assert account_state(world, FRESH) == (1_900_000, True, 0, 0)


def test_to_a_new_account_staked_bandwidth_pays_the_bytes_and_only_the_system_fee_is_burnt(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    world.credit_trx(DEPOSIT, 3_000_000)
    world.add_bandwidth(DEPOSIT, 300)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            sweep, status = await sweep_and_confirm(chain, world, ring, DEPOSIT, FRESH)
            assert sweep.plan == TrxSweepPlan(3_000_000, 2_000_000, 1_000_000, 267, "staked", False, 0)
            assert status.net_usage == 267

    run(scenario())
    assert account_state(world, DEPOSIT) == (0, True, 267, 0)


def _transfer(chain_head: Any, owner: str, to: str, amount: int, ring: KeyRing) -> SignedTransfer:
    raw = transfer_raw_data(
        owner,
        to,
        amount,
        ref_block=chain_head,
        timestamp_ms=chain_head.timestamp_ms,
        expiration_ms=chain_head.timestamp_ms + 60_000,
    )
    txid = str(calculate_txid_from_raw_data(raw))
    unsigned = UnsignedTransfer(txid, raw, owner, to, None, amount, 0, raw["expiration"])
    return sign_transfer(unsigned, ring.key_for(owner))


@pytest.mark.parametrize("destination", [DESTINATION, FRESH], ids=["existing", "new-account"])
def test_one_sun_more_than_planned_is_refused_and_changes_nothing(
    sandbox: RunningNode, ring: KeyRing, destination: str
) -> None:
    world = sandbox.world
    world.credit_trx(DEPOSIT, 2_000_000)
    world.credit_trx(DESTINATION, 5)
    world.use_free_bandwidth(DEPOSIT)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            sweep = await chain.build_trx_sweep(DEPOSIT, destination)
            assert sweep.plan.left_sun == 0
            head = await chain.latest_block()
            before = (account_state(world, DEPOSIT), account_state(world, destination))
            too_big = _transfer(head, DEPOSIT, destination, sweep.plan.amount_sun + 1, ring)
            assert bandwidth_bytes(too_big.raw_data) == sweep.plan.bandwidth_bytes
            with pytest.raises(BroadcastRejected) as refused:
                await chain.broadcast(too_big)
            assert refused.value.code == "CONTRACT_VALIDATE_ERROR"
            assert refused.value.message == (
                "Contract validate error : Validate TransferContract error, balance is not sufficient."
            )
            assert (account_state(world, DEPOSIT), account_state(world, destination)) == before
            assert not world.pending and too_big.txid not in world.transactions
            exact = _transfer(head, DEPOSIT, destination, sweep.plan.amount_sun, ring)
            assert (await chain.broadcast(exact)).outcome is BroadcastOutcome.ACCEPTED
            world.solidify_all()
            status = await chain.transaction_status(exact.txid, expiration_ms=exact.expiration_ms, token=None)
            assert status.state is TxState.CONFIRMED and status.fee_sun == sweep.plan.fee_sun

    run(scenario())
    assert account_state(world, DEPOSIT)[0] == 0


def test_java_trons_other_refusals_leave_the_account_untouched(sandbox: RunningNode, ring: KeyRing) -> None:
    world = sandbox.world
    world.credit_trx(DEPOSIT, 200_000)
    world.credit_trx(DESTINATION, 5)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            head = await chain.latest_block()
            before = account_state(world, DEPOSIT)
            with pytest.raises(BroadcastRejected) as refused:  # bandwidth charged, then refused: undone
                await chain.broadcast(_transfer(head, DEPOSIT, DEPOSIT, 1, ring))
            assert (refused.value.code, refused.value.message) == (
                "CONTRACT_VALIDATE_ERROR",
                "Contract validate error : Cannot transfer TRX to yourself.",
            )
            assert account_state(world, DEPOSIT) == before
            world.use_free_bandwidth(DEPOSIT)
            before = account_state(world, DEPOSIT)
            # 265 bytes x 1,000 sun > 200,000: the bandwidth cannot be paid at all.
            sweep = await chain.build_trx_sweep(DEPOSIT, DESTINATION)
            assert sweep.unsigned is None
            assert sweep.plan == TrxSweepPlan(200_000, 0, 0, 265, "burn", True, 200_000)
            with pytest.raises(BroadcastRejected) as refused:
                await chain.broadcast(_transfer(head, DEPOSIT, DESTINATION, 1, ring))
            assert (refused.value.code, refused.value.message) == (
                "BANDWITH_ERROR",
                "Account resource insufficient error.",
            )
            assert account_state(world, DEPOSIT) == before
            # An account that does not exist: BandwidthProcessor's own refusal.
            with pytest.raises(BroadcastRejected) as refused:
                await chain.broadcast(_transfer(head, OTHER_DEPOSIT, DESTINATION, 1, ring))
            assert (
                refused.value.message == f"Contract validate error : account [{OTHER_DEPOSIT}] does not exist"
            )

    run(scenario())


def test_an_unmined_transfer_that_expires_gives_the_owner_everything_back(
    sandbox: RunningNode, ring: KeyRing
) -> None:
    world = sandbox.world
    world.credit_trx(DEPOSIT, 2_000_000)
    world.use_free_bandwidth(DEPOSIT)

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            before = account_state(world, DEPOSIT)
            sweep = await chain.build_trx_sweep(DEPOSIT, FRESH)
            assert sweep.unsigned is not None
            signed = chain.sign_transfer(sweep.unsigned, ring.key_for(DEPOSIT))
            world.hold_inclusion()
            await chain.broadcast(signed)
            assert account_state(world, DEPOSIT)[0] == 0  # java-tron's pending state: taken at once
            world.advance_time(120)
            world.produce_block()  # held: the head's time passes the expiration without it
            world.hold_inclusion(False)
            world.produce_blocks(4)  # java-tron drops it: expired against the head's time
            status = await chain.transaction_status(
                signed.txid, expiration_ms=signed.expiration_ms, token=None
            )
            assert status.state is TxState.EXPIRED
            assert account_state(world, DEPOSIT) == before
            assert not world.exists(FRESH)

    run(scenario())


def test_a_blocks_trx_transfers_come_with_its_count_in_one_request(sandbox: RunningNode) -> None:
    world = sandbox.world
    world.token_transfer(DEPOSIT, 25_000_000)
    deposit = world.trx_transfer(DEPOSIT, 7_000_000)
    other = world.trx_transfer(OTHER_DEPOSIT, 1)
    full = world.produce_block()
    empty = world.produce_block()
    world.solidify_all()

    async def scenario() -> None:
        async with chain_for(sandbox) as chain:
            source: BlockSource = chain
            before = chain.requests_sent
            count, found = await source.solid_block_trx_transfers(full.number)
            assert chain.requests_sent - before == 1
            operator = world.transaction(deposit.txid).owner  # type: ignore[union-attr]
            assert count == 3
            assert found == [
                TokenTransfer(deposit.txid, None, operator, DEPOSIT, 7_000_000, 0),
                TokenTransfer(other.txid, None, operator, OTHER_DEPOSIT, 1, 0),
            ]
            assert await source.solid_block_trx_transfers(empty.number) == (0, [])
            assert await source.solid_block_transaction_count(full.number) == 3
            with pytest.raises(ChainResponseError, match="no solidified block"):
                await source.solid_block_trx_transfers(world.head.number + 5)

    run(scenario())


@pytest.mark.parametrize(
    ("transaction", "match"),
    [
        ({}, "does not have"),
        (
            {"txID": "ab" * 32, "raw_data": {"contract": []}, "ret": [{"contractRet": "SUCCESS"}]},
            "well-formed",
        ),
        ("refused", "not a JSON object|expected a JSON object"),
    ],
    ids=["missing", "malformed", "not-an-object"],
)
def test_a_confirmed_trx_transfer_without_a_usable_transaction_is_an_error(
    transaction: Any, match: str
) -> None:
    answers = {
        "walletsolidity/getnowblock": {
            "blockID": "00" * 32,
            "block_header": {"raw_data": {"number": 9, "timestamp": 1}},
        },
        "walletsolidity/gettransactioninfobyid": {
            "id": "ab" * 32,
            "blockNumber": 9,
            "receipt": {"net_usage": 267},
        },
        "walletsolidity/gettransactionbyid": transaction,
    }

    def handler(request: httpx.Request) -> httpx.Response:
        path = "/".join(request.url.path.strip("/").split("/")[-2:])
        return httpx.Response(200, json=answers[path])

    async def scenario() -> None:
        stub = TronChain("http://node.invalid", transport=httpx.MockTransport(handler), retry=FAST_RETRY)
        async with stub as chain:
            with pytest.raises(ChainResponseError, match=match):
                await chain.transaction_status("ab" * 32, expiration_ms=10, token=None)

    run(scenario())
