"""Real transactions reproduce their txids; transfer verification; log decoding; rate limiting."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from tronpy.proto import calculate_txid_from_raw_data
from tronpy.proto.transaction import _raw_data_to_protobuf

from sweeper.chain import (
    TRANSFER_TOPIC,
    UnsafeTransaction,
    decode_transfer,
    decode_transfer_logs,
    transfer_data,
    verify_transfer,
)
from sweeper.domain import address_to_hex, hex_to_address
from sweeper.ratelimit import RateLimiter
from sweeper.retry import RetryPolicy
from tests.constants import USDT

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
USDT_TX = json.loads((FIXTURES / "tron-usdt-transfer.json").read_text())
TRX_TX = json.loads((FIXTURES / "tron-trx-transfer.json").read_text())


def test_the_real_usdt_transfer_txid_reproduces_from_its_json() -> None:
    assert hashlib.sha256(bytes.fromhex(USDT_TX["raw_data_hex"])).hexdigest() == USDT_TX["txID"]
    assert calculate_txid_from_raw_data(USDT_TX["raw_data"]) == USDT_TX["txID"]
    assert _raw_data_to_protobuf(USDT_TX["raw_data"]).SerializeToString().hex() == USDT_TX["raw_data_hex"]


def test_the_real_trx_transfer_txid_reproduces_with_its_permission_id() -> None:
    """The TRX fixture's JSON omits `Permission_id: 2` that its raw_data_hex carries (field 5 of the
    contract, bytes 28 02): tronpy's JSON->protobuf ignores that field, so the JSON alone does not
    hash to the txID. This is why decode_transfer refuses any contract key it does not know."""
    assert hashlib.sha256(bytes.fromhex(TRX_TX["raw_data_hex"])).hexdigest() == TRX_TX["txID"]
    assert calculate_txid_from_raw_data(TRX_TX["raw_data"]) != TRX_TX["txID"]
    raw = _raw_data_to_protobuf(TRX_TX["raw_data"])
    raw.contract[0].Permission_id = 2
    assert raw.SerializeToString().hex() == TRX_TX["raw_data_hex"]
    assert hashlib.sha256(raw.SerializeToString()).hexdigest() == TRX_TX["txID"]
    with_permission = copy.deepcopy(TRX_TX["raw_data"])
    with_permission["contract"][0]["Permission_id"] = 2
    with pytest.raises(UnsafeTransaction):
        decode_transfer(with_permission)


# The fixture's "decoded" note calls the contract TR7NH… (mainnet USDT), but its hex
# 41eca9bc… is TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf (Nile testnet USDT); we trust the bytes.
FIXTURE_TOKEN = hex_to_address(USDT_TX["raw_data"]["contract"][0]["parameter"]["value"]["contract_address"])


def _expected() -> dict[str, Any]:
    decoded = USDT_TX["decoded"]
    return {
        "owner": hex_to_address(USDT_TX["raw_data"]["contract"][0]["parameter"]["value"]["owner_address"]),
        "token": FIXTURE_TOKEN,
        "destination": hex_to_address(decoded["to_hex"]),
        "amount": decoded["amount"],
        "fee_limit_sun": 100_000_000,
    }


def test_the_real_usdt_transfer_decodes_and_verifies() -> None:
    decoded = verify_transfer(copy.deepcopy(USDT_TX["raw_data"]), USDT_TX["txID"], **_expected())
    assert decoded.token == FIXTURE_TOKEN
    assert decoded.amount == 1
    assert address_to_hex(decoded.destination) == USDT_TX["decoded"]["to_hex"]
    assert decoded.expiration_ms == USDT_TX["raw_data"]["expiration"]
    # TronWeb wrote 0x41 into the address word; ours is zero-padded; both decode to the same call.
    fixture_data = USDT_TX["raw_data"]["contract"][0]["parameter"]["value"]["data"]
    ours = transfer_data(decoded.destination, 1)
    assert ours[:30] == fixture_data[:30] and ours[30:32] == "00" and ours[32:] == fixture_data[32:]
    dirty = copy.deepcopy(USDT_TX["raw_data"])
    dirty["contract"][0]["parameter"]["value"]["data"] = fixture_data[:8] + "ff" + fixture_data[10:]
    with pytest.raises(UnsafeTransaction):
        decode_transfer(dirty)


def test_a_forged_txid_is_refused() -> None:
    forged = "00" + USDT_TX["txID"][2:]
    with pytest.raises(UnsafeTransaction, match="not the hash"):
        verify_transfer(copy.deepcopy(USDT_TX["raw_data"]), forged, **_expected())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("destination", "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL"),
        ("amount", 2),
        ("fee_limit_sun", 1),
        ("owner", USDT),
        ("token", USDT),
    ],
)
def test_a_transaction_other_than_the_one_meant_is_refused(field: str, value: Any) -> None:
    expected = _expected() | {field: value}
    with pytest.raises(UnsafeTransaction):
        verify_transfer(copy.deepcopy(USDT_TX["raw_data"]), USDT_TX["txID"], **expected)


def test_unexpected_fields_are_refused_even_when_the_hash_ignores_them() -> None:
    raw = copy.deepcopy(USDT_TX["raw_data"])
    raw["data"] = "6d656d6f"  # a memo: not part of what we meant to sign
    with pytest.raises(UnsafeTransaction, match="unexpected"):
        decode_transfer(raw)
    raw = copy.deepcopy(USDT_TX["raw_data"])
    raw["contract"][0]["parameter"]["value"]["call_value"] = 5
    with pytest.raises(UnsafeTransaction):
        decode_transfer(raw)
    # A plain TransferContract decodes as native TRX (issue 17) — and is refused where a token
    # transfer was meant, and with a memo.
    trx = decode_transfer(TRX_TX["raw_data"])
    assert trx.token is None
    with pytest.raises(UnsafeTransaction, match="token contract"):
        verify_transfer(
            copy.deepcopy(TRX_TX["raw_data"]), str(calculate_txid_from_raw_data(TRX_TX["raw_data"])), owner=trx.owner, token=USDT,
            destination=trx.destination, amount=trx.amount, fee_limit_sun=0,
        )  # fmt: skip
    raw = copy.deepcopy(TRX_TX["raw_data"])
    raw["data"] = "6d656d6f"
    with pytest.raises(UnsafeTransaction, match="unexpected"):
        decode_transfer(raw)


def _log(address: str, sender: str, recipient: str, amount: int) -> dict[str, Any]:
    return {
        "address": address,
        "topics": [
            TRANSFER_TOPIC,
            "00" * 12 + address_to_hex(sender)[2:],
            "00" * 12 + address_to_hex(recipient)[2:],
        ],
        "data": f"{amount:064x}",
    }


def test_transfer_logs_are_matched_on_java_trons_bare_20_byte_address() -> None:
    a, b = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH", "TSeJkUh4Qv67VNFwY8LaAxERygNdy6NQZK"
    bare = address_to_hex(USDT)[2:]
    info = {
        "id": "ab" * 32,
        "log": [
            _log(bare, a, b, 7),
            _log("G9AHnMvAgqKJ2eWErupYfdzu6hgWVUZqu", a, b, 8),  # visible=true rendering: not ours
            _log(address_to_hex("TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL")[2:], a, b, 9),  # another token
        ],
    }
    transfers = decode_transfer_logs(info, USDT)
    assert [(t.sender, t.recipient, t.amount, t.log_index) for t in transfers] == [(a, b, 7, 0)]


def test_rate_limiter_spaces_requests_and_allows_a_burst() -> None:
    now = [0.0]
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    async def scenario() -> list[float]:
        limiter = RateLimiter(4, burst=2, monotonic=lambda: now[0], sleep=fake_sleep)
        starts = []
        for _ in range(6):
            await limiter.acquire()
            starts.append(now[0])
        return starts

    starts = asyncio.run(scenario())
    assert starts[:2] == [0.0, 0.0]  # the burst
    assert starts[2:] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    with pytest.raises(ValueError):
        RateLimiter(0)


def test_concurrent_waiters_share_one_limiter_fairly() -> None:
    async def scenario() -> float:
        limiter = RateLimiter(50)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(*(limiter.acquire() for _ in range(11)))
        return loop.time() - start

    elapsed = asyncio.run(scenario())
    assert 0.18 <= elapsed < 1.0  # 10 intervals of 20 ms after the first


def test_retry_delays_grow_and_stay_bounded() -> None:
    policy = RetryPolicy(attempts=6, base_delay=0.1, max_delay=1.0)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 7)]
    assert all(0.05 <= d <= 1.0 for d in delays)
    assert delays[-1] >= 0.5
    assert policy.delay(1, rng, retry_after=0.7) == pytest.approx(0.7)
    assert policy.delay(1, rng, retry_after=60) == 1.0
