from __future__ import annotations

import contextlib
import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sweeper.domain import (
    FINAL_STATES,
    OPEN_STATES,
    TRANSITIONS,
    IllegalTransition,
    InvalidAddress,
    InvalidAmount,
    Secret,
    SweepState,
    address_to_hex,
    check_transition,
    check_tron_address,
    format_units,
    hex_to_address,
    is_legal,
    is_tron_address,
    parse_decimal,
    to_base_units,
)
from tests.constants import USDT

S = SweepState

# docs/design.md's transition table, written out independently of the code.
DESIGN_TABLE = {
    (None, S.QUEUED),
    (S.QUEUED, S.ORDERING),
    (S.QUEUED, S.CANCELLED),
    (S.ORDERING, S.QUEUED),
    (S.ORDERING, S.CANCELLED),
    (S.ORDERING, S.ENERGY_ORDERED),
    (S.ORDERING, S.ENERGY_READY),  # energy already on the address: nothing ordered
    (S.ORDERING, S.FAILED),
    (S.ENERGY_ORDERED, S.ENERGY_READY),
    (S.ENERGY_ORDERED, S.FAILED),
    (S.ENERGY_READY, S.SIGNED),
    (S.ENERGY_READY, S.FAILED),
    (S.SIGNED, S.BROADCAST),
    (S.SIGNED, S.ENERGY_READY),
    (S.BROADCAST, S.CONFIRMED),
    (S.BROADCAST, S.FAILED),
    (S.BROADCAST, S.ENERGY_READY),
}


def test_transition_table_is_exactly_the_design() -> None:
    defined = {(src, dst) for src, targets in TRANSITIONS.items() for dst in targets}
    assert defined == DESIGN_TABLE


def test_every_pair_outside_the_table_is_illegal() -> None:
    for src in [None, *SweepState]:
        for dst in SweepState:
            assert is_legal(src, dst) == ((src, dst) in DESIGN_TABLE), (src, dst)


def test_check_transition_raises_exactly_outside_the_table() -> None:
    for src in [None, *SweepState]:
        for dst in SweepState:
            if (src, dst) in DESIGN_TABLE:
                check_transition(src, dst)
            else:
                with pytest.raises(
                    IllegalTransition, match=re.escape(f"{src.value if src else '(none)'} -> {dst.value}")
                ):
                    check_transition(src, dst)


def test_state_names_are_the_contract() -> None:
    assert [s.value for s in SweepState] == [
        "queued", "ordering", "energy_ordered", "energy_ready", "signed", "broadcast",
        "confirmed", "failed", "cancelled",
    ]  # fmt: skip
    assert {s.value for s in FINAL_STATES} == {"confirmed", "failed", "cancelled"}
    assert set(SweepState) == OPEN_STATES | FINAL_STATES
    for final in FINAL_STATES:
        assert TRANSITIONS[final] == frozenset()


def test_address_validation_accepts_real_addresses() -> None:
    assert check_tron_address(USDT) == USDT
    assert address_to_hex(USDT) == "41a614f803b6fd780986a42c78ec9c7f77e6ded13c"
    assert hex_to_address("41a614f803b6fd780986a42c78ec9c7f77e6ded13c") == USDT
    assert hex_to_address("a614f803b6fd780986a42c78ec9c7f77e6ded13c") == USDT  # log form, no 0x41


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6T", "checksum"),  # last char changed
        ("TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6", "33 characters"),
        ("1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "start with 'T'"),  # a bitcoin address, 34 chars
        ("T0000000000000000000000000000000000"[:34], "checksum"),  # '0' is not base58
        (12345, "expected a string"),
        ("", "0 characters"),
    ],
)
def test_address_validation_rejects_with_reason(value: object, why: str) -> None:
    with pytest.raises(InvalidAddress, match=why):
        check_tron_address(value)
    assert not is_tron_address(value)


def test_address_with_wrong_prefix_byte_is_rejected() -> None:
    import base58

    # 21 bytes with a valid checksum but prefix 0x42: tronpy would accept it, we don't.
    forged = base58.b58encode_check(b"\x42" + bytes(20)).decode()
    assert len(forged) == 34
    with pytest.raises(InvalidAddress):
        check_tron_address(forged)


@given(st.text(max_size=40))
def test_address_validation_never_raises_anything_else(value: str) -> None:
    with contextlib.suppress(InvalidAddress):
        check_tron_address(value)


@pytest.mark.parametrize(
    ("text", "decimals", "base"),
    [("10", 6, 10_000_000), ("0.000001", 6, 1), ("125.5", 6, 125_500_000), ("1", 18, 10**18)],
)
def test_amounts_are_exact(text: str, decimals: int, base: int) -> None:
    assert to_base_units(parse_decimal(text), decimals) == base
    assert format_units(base, decimals) == text


def test_amounts_refuse_floats_and_excess_precision() -> None:
    with pytest.raises(InvalidAmount):
        parse_decimal(10.5)
    with pytest.raises(InvalidAmount):
        parse_decimal(True)
    with pytest.raises(InvalidAmount):
        parse_decimal("ten")
    with pytest.raises(InvalidAmount):
        parse_decimal("NaN")
    with pytest.raises(InvalidAmount, match="more than 6 decimal places"):
        to_base_units(Decimal("0.0000001"), 6)


@given(st.integers(min_value=0, max_value=2**63 - 1), st.integers(min_value=0, max_value=18))
def test_format_and_parse_round_trip(base: int, decimals: int) -> None:
    text = format_units(base, decimals)
    assert text is not None
    assert to_base_units(Decimal(text), decimals) == base


def test_secret_never_shows_itself() -> None:
    secret = Secret("hunter2-very-secret")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert "hunter2" not in repr({"k": secret})
    assert secret.reveal() == "hunter2-very-secret"


def test_format_units_is_exact_beyond_28_digits() -> None:
    from sweeper.domain import format_units

    assert (
        format_units(123456789012345678901234567890123456789, 18)
        == "123456789012345678901.234567890123456789"
    )
    assert format_units(10**78 - 1, 18) == "9" * 60 + "." + "9" * 18
