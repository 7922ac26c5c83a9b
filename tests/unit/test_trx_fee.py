"""Native TRX sweeps: the TransferContract built locally, its bandwidth, and the sweep plan."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from tronpy.proto import calculate_txid_from_raw_data
from tronpy.proto.transaction import _raw_data_to_protobuf

from sweeper.chain import ChainResponseError, UnsafeTransaction, decode_transfer, verify_transfer
from sweeper.chain.models import BlockRef, SignedTransfer, TrxSweepPlan, UnsignedTransfer
from sweeper.chain.transfers import sign_transfer, trx_transfer_of, trx_transfers_in_block
from sweeper.chain.trx import bandwidth_bytes, plan_trx_sweep, transfer_raw_data
from sweeper.domain import Secret, address_to_hex
from sweeper.keys import HdWallet, SigningKey

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TRX_TX = json.loads((FIXTURES / "tron-trx-transfer.json").read_text())
VECTORS = json.loads((FIXTURES / "hd-tron-vectors.json").read_text())
WALLET = HdWallet(Secret(VECTORS["mnemonic"]))
OWNER = VECTORS["derived"][0]["address"]
DESTINATION = VECTORS["derived"][2]["address"]

FEE_PER_BYTE = 1_000  # getTransactionFee on mainnet
CREATE_ACCOUNT_FEE = 100_000  # getCreateAccountFee
SYSTEM_FEE = 1_000_000  # getCreateNewAccountFeeInSystemContract
HEAD = BlockRef(0x163D, "000000000000163d" + "77ef4ace148b05ba" + "ab" * 16, 1_555_664_763_418)


def raw_for(amount: int) -> dict[str, Any]:
    return transfer_raw_data(
        OWNER,
        DESTINATION,
        amount,
        ref_block=HEAD,
        timestamp_ms=HEAD.timestamp_ms,
        expiration_ms=HEAD.timestamp_ms + 60_000,
    )


def size(amount: int) -> int:
    return bandwidth_bytes(raw_for(amount))


def plan(balance: int, *, net: int = 0, free: int = 0, exists: bool = True) -> TrxSweepPlan:
    return plan_trx_sweep(
        balance,
        bytes_for=size,
        net_available=net,
        free_net_available=free,
        destination_exists=exists,
        fee_per_byte=FEE_PER_BYTE,
        create_account_fee=CREATE_ACCOUNT_FEE,
        create_new_account_fee_in_system_contract=SYSTEM_FEE,
    )


# --- the raw_data and its size ----------------------------------------------------------------


def test_the_raw_data_reproduces_a_real_java_tron_transfer_byte_for_byte() -> None:
    fixture = TRX_TX["raw_data"]
    value = fixture["contract"][0]["parameter"]["value"]
    ref_bytes, ref_hash = fixture["ref_block_bytes"], fixture["ref_block_hash"]
    ref = BlockRef(int(ref_bytes, 16), "000000000000" + ref_bytes + ref_hash + "00" * 16, 0)
    raw = transfer_raw_data(
        value["owner_address"],
        value["to_address"],
        value["amount"],
        ref_block=ref,
        timestamp_ms=fixture["timestamp"],
        expiration_ms=fixture["expiration"],
    )
    assert raw["contract"][0]["parameter"]["value"] == {
        "amount": 1_000_000,
        "owner_address": address_to_hex(value["owner_address"]),
        "to_address": address_to_hex(value["to_address"]),
    }
    assert raw["contract"][0]["type"] == "TransferContract" and "fee_limit" not in raw
    proto = _raw_data_to_protobuf(raw)
    proto.contract[0].Permission_id = 2  # the fixture carries it (see test_txid_fixtures)
    assert proto.SerializeToString().hex() == TRX_TX["raw_data_hex"]
    assert hashlib.sha256(proto.SerializeToString()).hexdigest() == TRX_TX["txID"]


def test_tapos_takes_the_block_numbers_bytes_6_8_and_the_ids_bytes_8_16() -> None:
    ref = BlockRef(0x0123_4567_89AB, f"{0x0123_4567_89AB:016x}" + "fe" * 8 + "00" * 16, 1)
    raw = transfer_raw_data(OWNER, DESTINATION, 5, ref_block=ref, timestamp_ms=1, expiration_ms=2)
    assert (raw["ref_block_bytes"], raw["ref_block_hash"]) == ("89ab", "fe" * 8)


def test_bandwidth_is_the_signed_size_without_ret_plus_64_and_grows_with_the_amounts_varint() -> None:
    raw = raw_for(1_000_000)
    proto = _raw_data_to_protobuf(raw)
    # Transaction: field 1 (raw_data: tag, 2-byte length, 133 bytes) + field 2 (tag, length, 65 bytes).
    body = len(proto.SerializeToString())
    assert body == 133
    assert bandwidth_bytes(raw) == 1 + 2 + body + 1 + 1 + 65 + 64 == 267
    assert [size(a) for a in (1, 127, 128, 2**14, 2**21 - 1, 2**21, 2**28 - 1, 2**28)] == [
        265,
        265,
        266,
        267,
        267,
        268,
        268,
        269,
    ]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        transfer_raw_data(OWNER, DESTINATION, 0, ref_block=HEAD, timestamp_ms=1, expiration_ms=2)
    with pytest.raises(ValueError):
        transfer_raw_data(OWNER, "Tnot-an-address", 1, ref_block=HEAD, timestamp_ms=1, expiration_ms=2)
    with pytest.raises(ValueError):
        plan(-1)


# --- the plan ---------------------------------------------------------------------------------


def test_free_bandwidth_sends_the_whole_balance() -> None:
    got = plan(2_000_000, free=600)
    assert got == TrxSweepPlan(2_000_000, 2_000_000, 0, 267, "free", True, 0)


def test_staked_bandwidth_sends_the_whole_balance_and_comes_before_free() -> None:
    assert plan(2_000_000, net=267, free=600) == TrxSweepPlan(2_000_000, 2_000_000, 0, 267, "staked", True, 0)
    # All-or-nothing: 266 staked + 600 free do not add up; free alone covers it.
    assert plan(2_000_000, net=266, free=600).paid_by == "free"


def test_burning_sends_the_balance_less_the_exact_fee_and_leaves_nothing() -> None:
    got = plan(2_000_000, net=266, free=266)  # neither covers 267 bytes on its own
    assert got == TrxSweepPlan(2_000_000, 2_000_000 - 267_000, 267_000, 267, "burn", True, 0)
    assert size(got.amount_sun) == 267


@pytest.mark.parametrize("boundary", [2**21, 2**28, 2**35])
def test_at_a_varint_boundary_at_most_one_bytes_fee_stays_and_the_balance_is_never_exceeded(
    boundary: int,
) -> None:
    small = size(boundary - 1) * FEE_PER_BYTE
    large = size(boundary) * FEE_PER_BYTE
    assert large == small + FEE_PER_BYTE
    lefts = []
    for balance in range(boundary + small - 3_000, boundary + large + 3_000, 250):
        got = plan(balance)
        # What the chain would charge for the planned amount, recomputed independently.
        assert got.fee_sun == size(got.amount_sun) * FEE_PER_BYTE
        assert got.amount_sun + got.fee_sun <= balance
        assert got.left_sun == balance - got.amount_sun - got.fee_sun
        assert 0 <= got.left_sun < FEE_PER_BYTE
        # No larger amount is affordable: one sun more costs more than what is left.
        more = got.amount_sun + 1
        assert more + size(more) * FEE_PER_BYTE > balance
        lefts.append(got.left_sun)
    assert any(left > 0 for left in lefts) and lefts[0] == 0 and lefts[-1] == 0
    # In the gap the amount stops just below the boundary, paying the smaller fee.
    gap = plan(boundary + small + 500)
    assert (gap.amount_sun, gap.fee_sun, gap.left_sun) == (boundary - 1, small, 501)


def test_a_new_account_burns_the_create_account_fee_instead_of_bytes_plus_the_system_fee() -> None:
    got = plan(2_000_000, free=600, exists=False)  # free bandwidth is never used for it
    assert got == TrxSweepPlan(2_000_000, 900_000, 1_100_000, 267, "new-account", False, 0)


def test_a_new_account_with_staked_bandwidth_pays_only_the_system_fee() -> None:
    got = plan(2_000_000, net=400, exists=False)
    assert got == TrxSweepPlan(2_000_000, 1_000_000, 1_000_000, 267, "staked", False, 0)


def test_bandwidth_that_covers_only_the_smaller_size_stops_the_amount_below_the_boundary() -> None:
    boundary = 2**21
    balance = boundary + 100_000
    got = plan(balance, net=size(boundary - 1))  # 267 bytes: not the 268 of the whole balance
    assert got == TrxSweepPlan(balance, boundary - 1, 0, 267, "staked", True, 100_001)


@pytest.mark.parametrize(
    ("balance", "exists", "amount"),
    [
        (0, True, 0),
        (265_000, True, 0),  # exactly the fee of a 1-sun transfer: nothing left to send
        (265_001, True, 1),
        (1_100_000, False, 0),
        (1_100_001, False, 1),
    ],
)
def test_a_balance_too_small_for_the_fees_plans_nothing(balance: int, exists: bool, amount: int) -> None:
    got = plan(balance, exists=exists)
    assert got.amount_sun == amount
    if amount == 0:
        assert (got.fee_sun, got.left_sun) == (0, balance)
    else:
        assert got.left_sun == 0


# --- decoding, verifying and signing a TRX transfer -------------------------------------------


def test_a_trx_transfer_decodes_verifies_signs_and_round_trips() -> None:
    raw = raw_for(4_321)
    txid = str(calculate_txid_from_raw_data(raw))
    decoded = verify_transfer(
        raw, txid, owner=OWNER, token=None, destination=DESTINATION, amount=4_321, fee_limit_sun=0
    )
    assert (decoded.owner, decoded.token, decoded.destination, decoded.amount) == (
        OWNER,
        None,
        DESTINATION,
        4_321,
    )
    with pytest.raises(UnsafeTransaction, match="token contract"):
        verify_transfer(
            raw, txid, owner=OWNER, token=OWNER, destination=DESTINATION, amount=4_321, fee_limit_sun=0
        )
    unsigned = UnsignedTransfer(txid, raw, OWNER, DESTINATION, None, 4_321, 0, raw["expiration"])
    signed = sign_transfer(unsigned, SigningKey(OWNER, WALLET.private_key(0)))
    again = SignedTransfer.from_json(signed.to_json())
    assert again == signed and again.token is None and again.fee_limit_sun == 0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda raw: raw.__setitem__("fee_limit", 1),
        lambda raw: raw["contract"][0]["parameter"]["value"].__setitem__("memo", "x"),
        lambda raw: raw["contract"][0]["parameter"]["value"].pop("amount"),
        lambda raw: raw["contract"][0]["parameter"]["value"].__setitem__("amount", 0),
        lambda raw: raw["contract"][0]["parameter"]["value"].__setitem__("amount", True),
        lambda raw: raw["contract"][0]["parameter"].__setitem__(
            "type_url", "type.googleapis.com/protocol.TransferAssetContract"
        ),
        lambda raw: raw["contract"][0].__setitem__("Permission_id", 2),
        lambda raw: raw.__setitem__("data", "6d656d6f"),
    ],
    ids=["fee-limit", "extra-field", "no-amount", "zero", "bool", "type-url", "permission", "memo"],
)
def test_a_trx_transfer_is_decoded_strictly(mutate: Any) -> None:
    raw = raw_for(7)
    assert decode_transfer(copy.deepcopy(raw)).amount == 7
    raw["fee_limit"] = 0  # an explicit 0 is no fee limit
    assert decode_transfer(copy.deepcopy(raw)).fee_limit_sun == 0
    mutate(raw)
    with pytest.raises(UnsafeTransaction):
        decode_transfer(raw)


def _tx(
    txid: str, owner: str, to: str, amount: int, ret: str = "SUCCESS", ctype: str = "TransferContract"
) -> Any:
    return {
        "txID": txid,
        "raw_data": {
            "contract": [
                {
                    "parameter": {
                        "value": {
                            "amount": amount,
                            "owner_address": address_to_hex(owner),
                            "to_address": address_to_hex(to),
                        },
                        "type_url": f"type.googleapis.com/protocol.{ctype}",
                    },
                    "type": ctype,
                }
            ]
        },
        "ret": [{"contractRet": ret}],
    }


def test_a_blocks_trx_transfers_and_one_transactions_transfer_are_read_from_the_node_form() -> None:
    good = _tx("aa" * 32, OWNER, DESTINATION, 9)
    found = trx_transfers_in_block(
        [
            good,
            _tx("bb" * 32, OWNER, DESTINATION, 9, ret="REVERT"),
            _tx("cc" * 32, OWNER, DESTINATION, 9, ctype="TransferAssetContract"),
            {},
        ]
    )
    assert [(t.txid, t.token, t.sender, t.recipient, t.amount) for t in found] == [
        ("aa" * 32, None, OWNER, DESTINATION, 9)
    ]
    assert trx_transfer_of(good, "AA" * 32).amount == 9
    for bad in (
        {},
        _tx("bb" * 32, OWNER, DESTINATION, 9),
        _tx("aa" * 32, OWNER, DESTINATION, 9, ret="OUT_OF_TIME"),
    ):
        with pytest.raises(ChainResponseError):
            trx_transfer_of(bad, "aa" * 32)
