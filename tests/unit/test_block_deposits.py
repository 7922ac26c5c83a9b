"""`deposits_in_block`: a block's transaction infos -> exactly the deposits to watched addresses."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

import sweeper.chain.transfers as transfers
from sweeper.chain import TRANSFER_TOPIC, TokenTransfer, deposits_in_block, hex20, token_keys
from sweeper.domain import address_to_hex

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BLOCK = json.loads((FIXTURES / "tron-block-transaction-infos.json").read_text())
INFOS: list[dict[str, Any]] = BLOCK["answer"]
USDT, USDC = BLOCK["tokens"]["USDT"], BLOCK["tokens"]["USDC"]
W0, W1, W2 = BLOCK["watched"]
WATCHED = {hex20(a) for a in BLOCK["watched"]}
ORDER = {info["id"]: n for n, info in enumerate(INFOS)}


def expected(*names: str) -> list[TokenTransfer]:
    rows = [row for name in names for row in BLOCK[name]]
    rows.sort(key=lambda r: (ORDER[r["txid"]], r["log_index"]))
    return [
        TokenTransfer(r["txid"], r["token"], r["sender"], r["recipient"], r["amount"], r["log_index"])
        for r in rows
    ]


def test_the_fixture_block_holds_exactly_its_usdt_deposits() -> None:
    assert deposits_in_block(INFOS, token_keys([USDT]), WATCHED) == expected("expected_usdt_deposits")


def test_every_configured_token_is_followed() -> None:
    found = deposits_in_block(INFOS, token_keys([USDT, USDC]), WATCHED)
    assert found == expected("expected_usdt_deposits", "expected_usdc_deposits")


def test_a_transfer_from_an_internal_call_is_a_deposit() -> None:
    payout = next(i for i in INFOS if i.get("contract_address") == address_to_hex(BLOCK["payout_contract"]))
    found = deposits_in_block([payout], token_keys([USDT]), WATCHED)
    assert [(t.sender, t.recipient, t.amount, t.log_index) for t in found] == [
        (BLOCK["payout_contract"], W1, 938_500_000, 0)
    ]


def test_failed_outgoing_zero_value_other_token_and_approvals_are_not_deposits() -> None:
    # W2 only: the block sends it a FAILED transfer with a log, a failed one without, a zero-value
    # Transfer, USDC (not configured), and W2 sends USDT out; W0 is named by an Approval only elsewhere.
    assert deposits_in_block(INFOS, token_keys([USDT]), {hex20(W2)}) == []
    assert deposits_in_block(INFOS, token_keys([USDT]), set()) == []
    assert deposits_in_block(INFOS, {}, WATCHED) == []
    assert deposits_in_block([], token_keys([USDT]), WATCHED) == []


def _info(log: dict[str, Any], **extra: Any) -> dict[str, Any]:
    info: dict[str, Any] = {"id": "ab" * 32, "receipt": {"result": "SUCCESS"}, "log": [log]}
    info.update(extra)
    return info


def _log(address: str, recipient: str = W0, amount: int = 5) -> dict[str, Any]:
    return {
        "address": address,
        "topics": [TRANSFER_TOPIC, "00" * 12 + hex20(W1), "00" * 12 + hex20(recipient)],
        "data": f"{amount:064x}",
    }


@pytest.mark.parametrize(
    ("address", "kept"),
    [
        (hex20(USDT), True),  # java-tron's visible=false form
        (address_to_hex(USDT), True),  # 0x41-prefixed
        (hex20(USDT).upper(), True),
        ("0x" + hex20(USDT), True),
        (USDT, False),  # visible=true rendering: not what we ask for, never guessed at
        ("G9AHnMvAgqKJ2eWErupYfdzu6hgWVUZqu", False),  # base58 of the 20 bytes (constant calls)
        (hex20(USDC), False),
        ("", False),
    ],
)
def test_the_log_address_is_compared_raw(address: str, kept: bool) -> None:
    found = deposits_in_block([_info(_log(address))], token_keys([USDT]), WATCHED)
    assert [(t.token, t.recipient, t.amount) for t in found] == ([(USDT, W0, 5)] if kept else [])


@pytest.mark.parametrize(
    ("extra", "kept"),
    [
        ({}, True),
        ({"receipt": {}}, True),  # no result rendered: DEFAULT (no VM) is no failure
        ({"receipt": {"result": "REVERT"}}, False),
        ({"receipt": {"result": "OUT_OF_ENERGY"}}, False),
        ({"result": "FAILED"}, False),
        ({"result": "FAILED", "receipt": {"result": "SUCCESS"}}, False),
    ],
)
def test_only_successful_transactions_count(extra: dict[str, Any], kept: bool) -> None:
    found = deposits_in_block([_info(_log(hex20(USDT)), **extra)], token_keys([USDT]), WATCHED)
    assert len(found) == (1 if kept else 0)


def _mangle(path: str, value: Any) -> dict[str, Any]:
    log = _log(hex20(USDT))
    if path == "topics":
        log["topics"] = value
    elif path.startswith("topic"):
        log["topics"][int(path[-1])] = value
    else:
        log[path] = value
    return log


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("topics", None),
        ("topics", [TRANSFER_TOPIC]),
        ("topics", [TRANSFER_TOPIC, "00" * 32, "00" * 12 + hex20(W0), "00" * 32]),  # TRC721 shape
        ("topic0", "8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"),  # Approval
        ("topic2", "11" * 12 + hex20(W0)),  # not an address word
        ("topic2", hex20(W0)),  # short
        ("topic1", "zz" * 32),
        ("topic1", None),
        ("data", ""),
        ("data", None),
        ("data", "not hex"),
        ("data", "00" * 32),  # a zero-value Transfer moves nothing
    ],
)
def test_malformed_or_foreign_logs_are_skipped_without_error(path: str, value: Any) -> None:
    assert deposits_in_block([_info(_mangle(path, value))], token_keys([USDT]), WATCHED) == []


def test_a_watched_recipient_is_matched_case_insensitively_in_the_topic() -> None:
    log = _log(hex20(USDT))
    log["topics"][2] = log["topics"][2].upper()
    log["topics"][0] = TRANSFER_TOPIC.upper()
    assert [t.recipient for t in deposits_in_block([_info(log)], token_keys([USDT]), WATCHED)] == [W0]


def test_only_kept_logs_pay_for_base58(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decoder's speed rests on this: a block of 100 transfers to strangers encodes nothing."""
    calls = []
    real = transfers.hex_to_address

    def counting(value: str) -> str:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(transfers, "hex_to_address", counting)
    strangers = [
        _info(_log(hex20(USDT), recipient=BLOCK["payout_contract"], amount=n + 1), id=f"{n:064x}")
        for n in range(100)
    ]
    mine = copy.deepcopy(strangers[42])
    mine["log"][0]["topics"][2] = "00" * 12 + hex20(W2)
    strangers[42] = mine
    found = deposits_in_block(strangers, token_keys([USDT]), WATCHED)
    assert [(t.txid, t.recipient, t.amount) for t in found] == [(f"{42:064x}", W2, 43)]
    assert len(calls) == 2  # sender and recipient of the one kept log


def test_the_key_helpers() -> None:
    assert hex20(USDT) == "a614f803b6fd780986a42c78ec9c7f77e6ded13c"
    assert token_keys([USDT, USDC]) == {hex20(USDT): USDT, hex20(USDC): USDC}
