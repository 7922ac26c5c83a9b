"""The sandbox node behaves like java-tron where the sweeper can tell: checks, codes, execution, logs."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tronpy.keys import PrivateKey
from tronpy.proto import calculate_txid_from_raw_data

from sweeper.chain import TRANSFER_TOPIC, deposits_in_block, hex20, token_keys, transfer_data
from sweeper.domain import address_to_hex
from sweeper.sandbox.control import SandboxControl
from sweeper.sandbox.node_server import RunningNode, start_sandbox_node
from sweeper.sandbox.world import (
    OPERATOR,
    PAYOUT_CONTRACT,
    PAYOUT_EVENT_TOPIC,
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
BLOCK_INFOS = json.loads((FIXTURES / "tron-block-transaction-infos.json").read_text())
OWNER = VECTORS["derived"][0]["address"]
OWNER_KEY = PrivateKey(bytes.fromhex(VECTORS["derived"][0]["private_key"]))
OTHER_KEY = PrivateKey(bytes.fromhex(VECTORS["derived"][1]["private_key"]))
TO = VECTORS["derived"][2]["address"]
USDT = USDT_MAINNET


@pytest.fixture
def sandbox() -> Iterator[RunningNode]:
    running = start_sandbox_node(World(solid_lag=2))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def http(sandbox: RunningNode) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=5) as client:
        yield client


def post(http: httpx.Client, path: str, body: dict[str, Any] | None = None) -> Any:
    resp = http.post(path, json=body or {})
    assert resp.status_code == 200, resp.text
    return resp.json()


def signed_transfer(
    world: World,
    amount: int,
    *,
    key: PrivateKey = OWNER_KEY,
    fee_limit: int = 20_000_000,
    lifetime_ms: int = 60_000,
    ref_hash: str | None = None,
) -> dict[str, Any]:
    head = world.head
    now = world.now_ms()
    raw = {
        "contract": [
            {
                "parameter": {
                    "value": {
                        "owner_address": address_to_hex(OWNER),
                        "contract_address": address_to_hex(USDT),
                        "data": transfer_data(TO, amount),
                    },
                    "type_url": "type.googleapis.com/protocol.TriggerSmartContract",
                },
                "type": "TriggerSmartContract",
            }
        ],
        "ref_block_bytes": head.block_id[12:16],
        "ref_block_hash": ref_hash or head.block_id[16:32],
        "expiration": now + lifetime_ms,
        "timestamp": now,
        "fee_limit": fee_limit,
    }
    txid = calculate_txid_from_raw_data(raw)
    signature = key.sign_msg_hash(bytes.fromhex(txid)).hex()
    return {"txID": txid, "raw_data": raw, "signature": [signature], "visible": False}


def ready(world: World, amount: int = 1_000, *, energy: int = USDT_ENERGY_NEW_HOLDER) -> None:
    world.credit_token(USDT, OWNER, amount)
    world.activate(OWNER)
    world.delegate_energy(OWNER, energy)
    world.add_bandwidth(OWNER, 400)


def error_of(answer: dict[str, Any]) -> tuple[str, str]:
    return answer["code"], bytes.fromhex(answer["message"]).decode()


def test_broadcast_checks_use_java_trons_codes(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    world.credit_token(USDT, OWNER, 10)
    # Not activated: only received TRC20.
    code, _ = error_of(post(http, "/wallet/broadcasttransaction", signed_transfer(world, 10)))
    assert code == "CONTRACT_VALIDATE_ERROR"
    ready(world, 0)
    assert error_of(post(http, "/wallet/broadcasttransaction", signed_transfer(world, 10, key=OTHER_KEY)))[
        0
    ] == ("SIGERROR")
    bad_ref = signed_transfer(world, 10, ref_hash="00" * 8)
    assert error_of(post(http, "/wallet/broadcasttransaction", bad_ref))[0] == "TAPOS_ERROR"
    world.produce_block()
    stale = signed_transfer(world, 10, lifetime_ms=1_000)
    world.advance_time(5)
    world.produce_block()
    assert error_of(post(http, "/wallet/broadcasttransaction", stale))[0] == "TRANSACTION_EXPIRATION_ERROR"
    tx = signed_transfer(world, 10)
    tx["txID"] = "00" * 32  # the node computes the txid itself
    answer = post(http, "/wallet/broadcasttransaction", tx)
    assert answer["result"] is True and answer["txid"] == calculate_txid_from_raw_data(tx["raw_data"])
    assert error_of(post(http, "/wallet/broadcasttransaction", tx)) == (
        "DUP_TRANSACTION_ERROR",
        "Dup transaction.",
    )


@pytest.mark.parametrize(
    "signature",
    [["zz" * 65], ["abc"], ["0x" + "00" * 65], ["00" * 64], ["00" * 65], ["ok", "zz"]],
    ids=["not-hex", "odd-length", "0x-prefix", "short", "zero", "second-not-hex"],
)
def test_a_malformed_signature_is_a_sigerror(
    sandbox: RunningNode, http: httpx.Client, signature: list[str]
) -> None:
    world = sandbox.world
    ready(world)
    tx = signed_transfer(world, 1)
    tx["signature"] = [tx["signature"][0] if s == "ok" else s for s in signature]
    code, message = error_of(post(http, "/wallet/broadcasttransaction", tx))
    assert code == "SIGERROR" and "Validate signature error" in message
    assert not world.pending
    # The same transaction, well signed, is then accepted (nothing was recorded for it).
    assert post(http, "/wallet/broadcasttransaction", signed_transfer(world, 1))["result"] is True


def test_bandwidth_comes_from_delegation_then_free_then_trx_else_bandwith_error(
    sandbox: RunningNode, http: httpx.Client
) -> None:
    world = sandbox.world
    world.credit_token(USDT, OWNER, 100)
    world.activate(OWNER)
    world.free_bandwidth = 0
    code, message = error_of(post(http, "/wallet/broadcasttransaction", signed_transfer(world, 1)))
    assert code == "BANDWITH_ERROR" and "insufficient" in message
    world.credit_trx(OWNER, 1_000_000)
    assert post(http, "/wallet/broadcasttransaction", signed_transfer(world, 2))["result"] is True
    acct = world.account(OWNER)
    assert 1_000_000 - acct.trx_sun == 345 * world.bandwidth_fee_sun  # a TRC20 transfer is 345 bytes


def test_execution_takes_delegated_energy_first_then_burns_trx(
    sandbox: RunningNode, http: httpx.Client
) -> None:
    world = sandbox.world
    world.credit_token(USDT, TO, 1)  # an existing holder: 64,285 energy
    ready(world, 500, energy=60_000)
    world.credit_trx(OWNER, 1_000_000)
    answer = post(http, "/wallet/broadcasttransaction", signed_transfer(world, 500))
    world.produce_block()
    info = post(http, "/wallet/gettransactioninfobyid", {"value": answer["txid"]})
    assert info["receipt"]["result"] == "SUCCESS"
    assert info["receipt"]["energy_usage"] == 60_000
    assert info["receipt"]["energy_fee"] == (USDT_ENERGY_OLD_HOLDER - 60_000) * world.energy_fee_sun
    assert info["fee"] == info["receipt"]["energy_fee"]
    assert world.account(OWNER).trx_sun == 1_000_000 - info["fee"]
    assert world.token_balance(USDT, TO) == 501


def test_a_low_fee_limit_fails_out_of_energy_and_burns_the_limit(
    sandbox: RunningNode, http: httpx.Client
) -> None:
    world = sandbox.world
    ready(world, 500, energy=200_000)  # plenty of delegated energy …
    answer = post(http, "/wallet/broadcasttransaction", signed_transfer(world, 500, fee_limit=10_000_000))
    world.produce_block()
    info = post(http, "/wallet/gettransactioninfobyid", {"value": answer["txid"]})
    assert info["result"] == "FAILED"
    assert info["receipt"]["result"] == "OUT_OF_ENERGY"
    assert bytes.fromhex(info["resMessage"]).decode().startswith("Not enough energy")
    # … but the fee_limit caps the call at 10 TRX / 100 sun = 100,000 energy, all consumed.
    assert world.account(OWNER).energy_used == 100_000
    assert world.token_balance(USDT, OWNER) == 500 and world.token_balance(USDT, TO) == 0


def test_without_energy_or_trx_the_transfer_fails_out_of_energy(
    sandbox: RunningNode, http: httpx.Client
) -> None:
    world = sandbox.world
    ready(world, 500, energy=0)
    answer = post(http, "/wallet/broadcasttransaction", signed_transfer(world, 500))
    assert answer["result"] is True  # java-tron accepts it; the TVM fails it
    world.produce_block()
    info = post(http, "/wallet/gettransactioninfobyid", {"value": answer["txid"]})
    assert info["receipt"]["result"] == "OUT_OF_ENERGY"
    assert world.token_balance(USDT, TO) == 0


def test_logs_render_like_java_tron(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    ready(world, 1_000)
    txid = post(http, "/wallet/broadcasttransaction", signed_transfer(world, 1_000))["txid"]
    block = world.produce_block()
    hidden = post(http, "/wallet/gettransactioninfobyblocknum", {"num": block.number})
    shown = post(http, "/wallet/gettransactioninfobyblocknum", {"num": block.number, "visible": True})
    assert [i["id"] for i in hidden] == [txid]
    log_hidden, log_shown = hidden[0]["log"][0], shown[0]["log"][0]
    assert log_hidden["address"] == "a614f803b6fd780986a42c78ec9c7f77e6ded13c"  # bare 20 bytes, no 0x41
    # visible=true: the servlet puts 0x41 back first (Util.convertLogAddressToTronAddress): a T-address.
    assert log_shown["address"] == USDT
    by_id = post(http, "/wallet/gettransactioninfobyid", {"value": txid, "visible": True})
    assert by_id["log"][0]["address"] == USDT
    assert hidden[0]["contract_address"] == address_to_hex(USDT)
    assert shown[0]["contract_address"] == USDT
    assert log_hidden["topics"] == log_shown["topics"]
    assert log_hidden["topics"][0] == TRANSFER_TOPIC
    assert log_hidden["topics"][2] == "00" * 12 + address_to_hex(TO)[2:]
    assert int(log_hidden["data"], 16) == 1_000


def test_solidification_lags_and_can_be_held(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    ready(world, 5)
    txid = post(http, "/wallet/broadcasttransaction", signed_transfer(world, 5))["txid"]
    world.produce_block()
    assert post(http, "/wallet/gettransactioninfobyid", {"value": txid})["id"] == txid
    assert post(http, "/walletsolidity/gettransactioninfobyid", {"value": txid}) == {}
    assert post(http, "/walletsolidity/gettransactioninfobyblocknum", {"num": 1}) == []
    world.hold_solidification()
    world.produce_blocks(5)
    assert post(http, "/walletsolidity/gettransactioninfobyid", {"value": txid}) == {}
    info = post(http, "/wallet/getnodeinfo")
    assert info["block"].startswith("Num:6,") and info["solidityBlock"].startswith("Num:0,")
    world.hold_solidification(False)
    assert post(http, "/walletsolidity/gettransactioninfobyid", {"value": txid})["id"] == txid
    solid = post(http, "/walletsolidity/getnowblock")
    assert solid["block_header"]["raw_data"]["number"] == 6 - world.solid_lag


def test_accounts_look_like_java_tron(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    world.credit_token(USDT, OWNER, 7)
    assert post(http, "/wallet/getaccount", {"address": OWNER, "visible": True}) == {}
    assert post(http, "/wallet/getaccountresource", {"address": address_to_hex(OWNER)}) == {}
    world.activate(OWNER)
    world.delegate_energy(OWNER, 65_000)
    account = post(http, "/wallet/getaccount", {"address": OWNER, "visible": True})
    assert account["address"] == OWNER and "balance" not in account  # zero fields are omitted
    resource = post(http, "/wallet/getaccountresource", {"address": address_to_hex(OWNER)})
    assert resource["EnergyLimit"] == 65_000 and "EnergyUsed" not in resource and "NetLimit" not in resource
    assert resource["freeNetLimit"] == 600
    balance = post(
        http,
        "/wallet/triggerconstantcontract",
        {
            "owner_address": OWNER,
            "contract_address": USDT,
            "function_selector": "balanceOf(address)",
            "parameter": "00" * 12 + address_to_hex(OWNER)[2:],
            "visible": True,
        },
    )
    assert int(balance["constant_result"][0], 16) == 7
    estimate = post(
        http,
        "/wallet/estimateenergy",
        {"owner_address": OWNER, "contract_address": USDT, "data": transfer_data(TO, 1), "visible": True},
    )
    assert estimate["energy_required"] == USDT_ENERGY_NEW_HOLDER


def test_switches_429_5xx_and_the_control_endpoint(sandbox: RunningNode, http: httpx.Client) -> None:
    node = sandbox.node
    node.switches.fail_next = 2
    assert http.post("/wallet/getnodeinfo", json={}).status_code == 503
    assert http.post("/wallet/getnodeinfo", json={}).status_code == 503
    assert http.post("/wallet/getnodeinfo", json={}).status_code == 200
    # 429 on demand: deterministic, whatever the timing.
    node.switches.fail_status = 429
    node.switches.fail_next = 2
    statuses = [http.post("/wallet/getnodeinfo", json={}).status_code for _ in range(3)]
    assert statuses == [429, 429, 200]
    node.switches.fail_status = 503
    # The rate limit: the first 3 are always admitted; the rest are refused only if they came
    # within the same second, so the exact split is asserted only when the run was that fast.
    node.switches.max_rps = 3
    started = time.monotonic()
    statuses = [http.post("/wallet/getnodeinfo", json={}).status_code for _ in range(6)]
    elapsed = time.monotonic() - started
    assert statuses[:3] == [200, 200, 200] and set(statuses) <= {200, 429}
    if elapsed < 1.0:
        assert statuses[3:] == [429, 429, 429]
    node.switches.max_rps = None
    state = http.post("/_sandbox/control", json={"op": "produce_blocks", "count": 4}).json()
    assert state["head"] == 4 and state["solid"] == 2
    http.post("/_sandbox/control", json={"op": "switches", "latency_s": 0.0, "forge_txid": True})
    assert node.switches.forge_txid is True
    assert http.post("/_sandbox/control", json={"op": "nope"}).status_code == 400


# --- Tether's freeze list, pause and the energy penalty -----------------------------------------


def executed(http: httpx.Client, world: World, amount: int, **kwargs: Any) -> dict[str, Any]:
    """Broadcast a transfer from OWNER, mine it, and return its transaction info."""
    answer = post(http, "/wallet/broadcasttransaction", signed_transfer(world, amount, **kwargs))
    assert answer["result"] is True, answer
    world.produce_block()
    info: dict[str, Any] = post(http, "/wallet/gettransactioninfobyid", {"value": answer["txid"]})
    return info


def test_a_blacklisted_senders_transfer_reverts_on_chain_and_uses_its_energy(
    sandbox: RunningNode, http: httpx.Client
) -> None:
    world = sandbox.world
    ready(world, 500)
    world.blacklist(OWNER)
    info = executed(http, world, 500)
    assert info["result"] == "FAILED" and info["receipt"]["result"] == "REVERT"
    assert bytes.fromhex(info["resMessage"]).decode() == "REVERT opcode executed"
    assert info["receipt"]["energy_usage_total"] == USDT_ENERGY_REVERT_BLACKLISTED  # burnt, like any revert
    assert "log" not in info
    assert world.token_balance(USDT, OWNER) == 500 and world.token_balance(USDT, TO) == 0
    assert world.account(OWNER).energy_used == USDT_ENERGY_REVERT_BLACKLISTED
    # Off the list (and the spent energy topped up), the same transfer goes through.
    world.delegate_energy(OWNER, USDT_ENERGY_REVERT_BLACKLISTED)
    world.blacklist(OWNER, False)
    assert executed(http, world, 500)["receipt"]["result"] == "SUCCESS"
    assert world.token_balance(USDT, TO) == 500


def test_a_paused_token_reverts_every_transfer(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    ready(world, 500)
    world.pause_usdt()
    info = executed(http, world, 1)
    assert info["receipt"]["result"] == "REVERT"
    assert info["receipt"]["energy_usage_total"] == USDT_ENERGY_REVERT_PAUSED
    world.delegate_energy(OWNER, USDT_ENERGY_REVERT_PAUSED)
    world.pause_usdt(False)
    assert executed(http, world, 1)["receipt"]["result"] == "SUCCESS"


def test_the_energy_penalty_raises_the_executed_energy(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    world.credit_token(USDT, TO, 1)
    penalty = 30_000
    ready(world, 500, energy=USDT_ENERGY_OLD_HOLDER + penalty)
    world.set_energy_penalty(penalty)
    info = executed(http, world, 500, fee_limit=100_000_000)
    assert info["receipt"]["result"] == "SUCCESS"
    assert info["receipt"]["energy_usage_total"] == USDT_ENERGY_OLD_HOLDER + penalty
    assert info["receipt"]["energy_penalty_total"] == penalty
    assert "fee" not in info  # the delegation covered base + penalty exactly
    assert world.account(OWNER).energy_available == 0


# --- triggerconstantcontract in java-tron's forms -----------------------------------------------


def constant_transfer(http: httpx.Client, amount: int, *, owner: str = OWNER, visible: bool = True) -> Any:
    return post(
        http,
        "/wallet/triggerconstantcontract",
        {
            "owner_address": owner if visible else address_to_hex(owner),
            "contract_address": USDT if visible else address_to_hex(USDT),
            "function_selector": "transfer(address,uint256)",
            "parameter": transfer_data(TO, amount)[8:],
            "visible": visible,
        },
    )


def shape(answer: Any) -> Any:
    """The answer's structure: keys and value types, recursively (values themselves left out)."""
    if isinstance(answer, dict):
        return {k: shape(v) for k, v in answer.items()}
    if isinstance(answer, list):
        return [shape(v) for v in answer]
    return type(answer).__name__


def test_constant_transfers_answer_like_java_tron(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    world.credit_token(USDT, OWNER, 1_000)  # never activated, no TRX: answered all the same
    world.set_energy_penalty(49_650)
    ok = constant_transfer(http, 1_000)
    assert shape(ok) == shape(FORMS["success"])
    assert ok["result"] == {"result": True} and ok["transaction"]["ret"] == [{}]
    assert ok["energy_used"] == USDT_ENERGY_NEW_HOLDER + 49_650 and ok["energy_penalty"] == 49_650
    assert int(ok["constant_result"][0], 16) == 1
    assert ok["logs"][0]["address"] == FORMS["success"]["logs"][0]["address"]  # base58 of the 20 bytes
    tx = ok["transaction"]
    assert tx["txID"] == hashlib.sha256(bytes.fromhex(tx["raw_data_hex"])).hexdigest()
    value = tx["raw_data"]["contract"][0]["parameter"]["value"]
    assert value == {"data": transfer_data(TO, 1_000), "owner_address": OWNER, "contract_address": USDT}

    world.set_energy_penalty(0)
    over = constant_transfer(http, 1_001)
    assert shape(over) == shape(FORMS["revert"])
    assert over["result"] == FORMS["revert"]["result"] and over["transaction"]["ret"] == [{"ret": "FAILED"}]
    assert over["energy_used"] == USDT_ENERGY_REVERT and over["constant_result"] == [""]
    # visible=false: the message is hex, addresses are 41… hex.
    hidden = constant_transfer(http, 1_001, visible=False)
    assert bytes.fromhex(hidden["result"]["message"]).decode() == "REVERT opcode executed"
    assert hidden["transaction"]["raw_data"]["contract"][0]["parameter"]["value"]["owner_address"] == (
        address_to_hex(OWNER)
    )

    world.blacklist(OWNER)
    frozen = constant_transfer(http, 1)
    assert frozen["result"]["message"] == "REVERT opcode executed"
    assert frozen["energy_used"] == USDT_ENERGY_REVERT_BLACKLISTED
    assert world.token_balance(USDT, OWNER) == 1_000 and not world.transactions  # nothing executed

    unknown = post(
        http,
        "/wallet/triggerconstantcontract",
        {
            "owner_address": OWNER,
            "contract_address": TO,
            "function_selector": "transfer(address,uint256)",
            "parameter": transfer_data(TO, 1)[8:],
            "visible": True,
        },
    )
    assert unknown == FORMS["validate_error"]


def test_is_blacklisted_and_estimateenergy_follow_the_world(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    world.credit_token(USDT, OWNER, 10)

    def listed(address: str) -> bool:
        answer = post(
            http,
            "/wallet/triggerconstantcontract",
            {
                "owner_address": address,
                "contract_address": USDT,
                "function_selector": "isBlackListed(address)",
                "parameter": "00" * 12 + address_to_hex(address)[2:],
                "visible": True,
            },
        )
        assert answer["result"] == {"result": True} and answer["transaction"]["ret"] == [{}]
        return bool(int(answer["constant_result"][0], 16))

    def estimate(amount: int) -> Any:
        return post(
            http,
            "/wallet/estimateenergy",
            {
                "owner_address": OWNER,
                "contract_address": USDT,
                "data": transfer_data(TO, amount),
                "visible": True,
            },
        )

    assert not listed(OWNER)
    world.set_energy_penalty(1_000)
    assert estimate(10) == {"result": {"result": True}, "energy_required": USDT_ENERGY_NEW_HOLDER + 1_000}
    world.blacklist(OWNER)
    assert listed(OWNER) and not listed(TO)
    assert estimate(10) == {"result": {"code": "CONTRACT_EXE_ERROR", "message": "REVERT opcode executed"}}


def test_chain_parameters_carry_the_fees(sandbox: RunningNode, http: httpx.Client) -> None:
    params = {p["key"]: p["value"] for p in post(http, "/wallet/getchainparameters")["chainParameter"]}
    world = sandbox.world
    assert params["getEnergyFee"] == world.energy_fee_sun == 100
    assert params["getTransactionFee"] == world.bandwidth_fee_sun == 1_000
    assert params["getCreateAccountFee"] == 100_000
    assert params["getCreateNewAccountFeeInSystemContract"] == 1_000_000
    assert params["getFreeNetLimit"] == 600


def test_the_contract_state_control_ops(sandbox: RunningNode) -> None:
    world = sandbox.world
    with SandboxControl(sandbox.url, "http://127.0.0.1:9") as control:
        state = control.blacklist(OWNER)
        assert state.blacklisted == (OWNER,) and world.is_blacklisted(OWNER)
        state = control.pause_usdt()
        assert state.usdt_paused and world.usdt_paused
        state = control.set_energy_penalty(12_345)
        assert state.usdt_energy_penalty == 12_345 == world.usdt_energy_penalty
        control.blacklist(OWNER, held=False)
        state = control.pause_usdt(held=False)
        assert state.blacklisted == () and not state.usdt_paused
        assert control.node_state().usdt_energy_penalty == 12_345
    with httpx.Client(base_url=sandbox.url) as http:
        assert http.post("/_sandbox/control", json={"op": "energy_penalty", "amount": -1}).status_code == 400


# --- following blocks: gettransactioninfobyblocknum and getblockbynum -----------------------------


def infos(http: httpx.Client, num: int, *, visible: bool = False, solid: bool = True) -> Any:
    prefix = "walletsolidity" if solid else "wallet"
    return post(http, f"/{prefix}/gettransactioninfobyblocknum", {"num": num, "visible": visible})


def block_by_num(http: httpx.Client, num: int, *, visible: bool = False, solid: bool = True) -> Any:
    prefix = "walletsolidity" if solid else "wallet"
    return post(http, f"/{prefix}/getblockbynum", {"num": num, "visible": visible})


def test_a_blocks_infos_render_like_java_tron_in_both_modes(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    deposit = world.token_transfer(TO, 7_000_000)
    payout = world.internal_deposit(OWNER, 938_500_000)
    failed = world.failed_transfer_with_log(TO, 50_000_000)
    trx = world.trx_transfer(TO, 1_000_000)
    block = world.produce_block()
    empty = world.produce_block()
    world.solidify_all()
    hidden, shown = infos(http, block.number), infos(http, block.number, visible=True)
    assert [i["id"] for i in hidden] == [deposit.txid, payout.txid, failed.txid, trx.txid]
    assert all(i["blockNumber"] == block.number and i["blockTimeStamp"] == block.timestamp_ms for i in hidden)

    # A direct transfer: the fixture's form (same keys, java-tron's proto3 omissions).
    assert hidden[0]["contract_address"] == address_to_hex(USDT) and shown[0]["contract_address"] == USDT
    assert hidden[0]["log"][0]["address"] == hex20(USDT) and shown[0]["log"][0]["address"] == USDT
    assert set(hidden[0]) <= set(BLOCK_INFOS["answer"][0]) | {"fee"}
    assert hidden[0]["receipt"]["result"] == "SUCCESS" and "result" not in hidden[0]

    # The payout: the transaction calls the payout contract; USDT emits the Transfer, then the payout.
    assert hidden[1]["contract_address"] == address_to_hex(PAYOUT_CONTRACT)
    transfer_log, payout_log = hidden[1]["log"]
    assert transfer_log["address"] == hex20(USDT) and payout_log["address"] == hex20(PAYOUT_CONTRACT)
    assert transfer_log["topics"] == [
        TRANSFER_TOPIC,
        "00" * 12 + hex20(PAYOUT_CONTRACT),
        "00" * 12 + hex20(OWNER),
    ]
    assert payout_log["topics"][0] == PAYOUT_EVENT_TOPIC
    assert [log["address"] for log in shown[1]["log"]] == [USDT, PAYOUT_CONTRACT]
    assert shown[1]["log"][0]["topics"] == transfer_log["topics"]  # topics stay hex in both modes

    # The failed one keeps its (impossible on java-tron) log; resMessage is hex, or text when visible.
    assert hidden[2]["result"] == "FAILED" and hidden[2]["receipt"]["result"] == "REVERT"
    assert bytes.fromhex(hidden[2]["resMessage"]).decode() == "REVERT opcode executed"
    assert shown[2]["resMessage"] == "REVERT opcode executed"
    assert hidden[2]["log"][0]["topics"][2] == "00" * 12 + hex20(TO)

    # A TRX transfer: no VM, so no log, no contract_address, a receipt without result.
    assert hidden[3]["contractResult"] == [""] and "contract_address" not in hidden[3]
    assert "log" not in hidden[3] and "result" not in hidden[3]["receipt"]

    # What the follower keeps: the direct deposit and the internal-call one, nothing else.
    found = deposits_in_block(hidden, token_keys([USDT]), {hex20(TO), hex20(OWNER)})
    assert [(t.txid, t.sender, t.recipient, t.amount) for t in found] == [
        (deposit.txid, OPERATOR, TO, 7_000_000),
        (payout.txid, PAYOUT_CONTRACT, OWNER, 938_500_000),
    ]
    assert world.token_balance(USDT, TO) == 7_000_000  # the failed one moved nothing
    assert world.token_balance(USDT, OWNER) == 938_500_000
    assert world.account(TO).trx_sun == 1_000_000

    # An empty block is `[]`; num <= 0 is `{}` (GetTransactionInfoByBlockNumServlet).
    assert infos(http, empty.number) == [] and infos(http, 0) == {} and infos(http, -1) == {}


def test_unsolidified_blocks_are_empty_on_walletsolidity_and_served_on_wallet(
    sandbox: RunningNode, http: httpx.Client
) -> None:
    world = sandbox.world
    tx = world.token_transfer(TO, 1)
    block = world.produce_block()
    assert world.solid_number < block.number
    assert infos(http, block.number) == []  # not solid: exactly like an empty block
    assert block_by_num(http, block.number) == {}  # ... but getblockbynum tells them apart
    assert [i["id"] for i in infos(http, block.number, solid=False)] == [tx.txid]
    assert infos(http, block.number + 50) == [] and block_by_num(http, block.number + 50, solid=False) == {}
    world.solidify_all()
    assert [i["id"] for i in infos(http, block.number)] == [tx.txid]


def test_blocks_render_like_java_tron(sandbox: RunningNode, http: httpx.Client) -> None:
    world = sandbox.world
    tx = world.token_transfer(TO, 1)
    trx = world.trx_transfer(TO, 5)
    full = world.produce_block()
    empty = world.produce_block()
    world.solidify_all()
    hidden, shown = block_by_num(http, full.number), block_by_num(http, full.number, visible=True)
    assert hidden["blockID"] == full.block_id
    header = hidden["block_header"]["raw_data"]
    assert header["number"] == full.number and header["timestamp"] == full.timestamp_ms
    assert header["parentHash"] == full.parent_id and header["witness_address"].startswith("41")
    assert shown["block_header"]["raw_data"]["witness_address"].startswith("T")
    assert [t["txID"] for t in hidden["transactions"]] == [tx.txid, trx.txid]
    first = hidden["transactions"][0]
    assert "visible" not in first  # Util.printTransactionToJSON adds none inside a block
    assert first["ret"] == [{"contractRet": "SUCCESS"}]
    assert calculate_txid_from_raw_data(first["raw_data"]) == tx.txid
    assert hashlib.sha256(bytes.fromhex(first["raw_data_hex"])).hexdigest() == tx.txid
    value = first["raw_data"]["contract"][0]["parameter"]["value"]
    assert value["contract_address"] == address_to_hex(USDT)
    assert (
        shown["transactions"][0]["raw_data"]["contract"][0]["parameter"]["value"]["contract_address"] == USDT
    )
    no_txs = block_by_num(http, empty.number)
    assert "transactions" not in no_txs and no_txs["blockID"] == empty.block_id  # no key, not []
    assert post(http, "/walletsolidity/getnowblock")["blockID"] == world.solid_head.block_id
    assert post(http, "/wallet/getnowblock")["blockID"] == world.head.block_id


def test_a_node_without_the_transaction_info_store_answers_empty(
    sandbox: RunningNode, http: httpx.Client
) -> None:
    world = sandbox.world
    tx = world.token_transfer(TO, 1)
    block = world.produce_block()
    world.solidify_all()
    sandbox.node.switches.no_transaction_info = True
    assert infos(http, block.number) == [] and infos(http, block.number, solid=False) == []
    assert post(http, "/walletsolidity/gettransactioninfobyid", {"value": tx.txid}) == {}
    assert len(block_by_num(http, block.number)["transactions"]) == 1  # the block itself is there
    sandbox.node.switches.no_transaction_info = False
    assert [i["id"] for i in infos(http, block.number)] == [tx.txid]


def test_a_lagging_load_balanced_node_answers_empty_the_first_n_times(
    sandbox: RunningNode, http: httpx.Client
) -> None:
    world = sandbox.world
    tx = world.token_transfer(TO, 1)
    block = world.produce_block()
    empty = world.produce_block()
    world.solidify_all()
    sandbox.node.switches.lagging_infos = 2
    assert [infos(http, block.number) for _ in range(2)] == [[], []]
    assert [i["id"] for i in infos(http, block.number)] == [tx.txid]
    assert [i["id"] for i in infos(http, block.number)] == [tx.txid]
    assert infos(http, empty.number) == []  # an empty block is empty whatever the switch


def test_the_following_control_ops(sandbox: RunningNode) -> None:
    world = sandbox.world
    with SandboxControl(sandbox.url, "http://127.0.0.1:9") as control:
        deposit = control.internal_deposit(TO, 5_000_000)
        failed = control.failed_transfer_with_log(TO, 9)
        direct = control.token_transfer(OWNER, 3)
        trx = control.trx_transfer(OWNER, 4)
        assert control.node_state().pending == 4
        control.set_node_switches(no_transaction_info=True, lagging_infos=3)
        assert sandbox.node.switches.no_transaction_info and sandbox.node.switches.lagging_infos == 3
        control.set_node_switches(no_transaction_info=False, lagging_infos=0)
        control.solidify()
    results = {tx.txid: tx.receipt.result for tx in world.transactions.values()}
    assert results == {deposit: "SUCCESS", failed: "REVERT", direct: "SUCCESS", trx: "SUCCESS"}
    assert world.transactions[deposit].contract == PAYOUT_CONTRACT
    assert world.token_balance(USDT, TO) == 5_000_000 and world.token_balance(USDT, OWNER) == 3
