"""The sweep state machine and the value types every other module shares.

This is the one place that says which states exist and which transitions are legal
(docs/design.md, "The sweep state machine"). The ledger enforces it; the database's CHECK
constraint is generated from it; a test asserts the two agree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation, localcontext
from enum import StrEnum
from typing import Final

import base58

from sweeper import faults
from sweeper.errors import LedgerError, UsageError


class SweepState(StrEnum):
    QUEUED = "queued"
    ORDERING = "ordering"
    ENERGY_ORDERED = "energy_ordered"
    ENERGY_READY = "energy_ready"
    SIGNED = "signed"
    BROADCAST = "broadcast"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES: Final = frozenset({SweepState.CONFIRMED, SweepState.FAILED, SweepState.CANCELLED})
OPEN_STATES: Final = frozenset(s for s in SweepState if s not in FINAL_STATES)


class AssetKind(StrEnum):
    """What a sweep moves: a TRC20 token (energy ordered, then `transfer`) or native TRX (a plain
    TransferContract, no energy order). Each kind has its own path through the states."""

    TOKEN = "token"  # noqa: S105 - an asset kind, not a secret
    TRX = "trx"


S = SweepState
# Every transition the ledger allows for a TOKEN sweep; anything else raises and changes nothing.
# `None` is the "no row yet" source: a sweep is born queued.
TRANSITIONS: Final[dict[SweepState | None, frozenset[SweepState]]] = {
    None: frozenset({S.QUEUED}),
    S.QUEUED: frozenset({S.ORDERING, S.CANCELLED}),
    # ordering -> energy_ready: the measured energy and the bandwidth are already on the address
    # (a late delegation, an earlier order still delegated): nothing is ordered.
    S.ORDERING: frozenset({S.QUEUED, S.CANCELLED, S.ENERGY_ORDERED, S.ENERGY_READY, S.FAILED}),
    S.ENERGY_ORDERED: frozenset({S.ENERGY_READY, S.FAILED}),
    S.ENERGY_READY: frozenset({S.SIGNED, S.FAILED}),
    S.SIGNED: frozenset({S.BROADCAST, S.ENERGY_READY}),
    S.BROADCAST: frozenset({S.CONFIRMED, S.FAILED, S.ENERGY_READY}),
    S.CONFIRMED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
# A TRX sweep: no energy, so no ordering states. queued -> signed is decided under a lock on the
# deposit address (one sweep per address past `queued`); a transfer that expired unknown to the
# chain goes back to `queued` to be rebuilt (the token path's return to energy_ready); queued ->
# cancelled also covers "below min_sweep once the fee is paid" (with a cool-down).
TRX_TRANSITIONS: Final[dict[SweepState | None, frozenset[SweepState]]] = {
    None: frozenset({S.QUEUED}),
    S.QUEUED: frozenset({S.SIGNED, S.CANCELLED, S.FAILED}),
    S.ORDERING: frozenset(),
    S.ENERGY_ORDERED: frozenset(),
    S.ENERGY_READY: frozenset(),
    S.SIGNED: frozenset({S.BROADCAST, S.QUEUED}),
    S.BROADCAST: frozenset({S.CONFIRMED, S.FAILED, S.QUEUED}),
    S.CONFIRMED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}
TRANSITIONS_BY_KIND: Final[dict[AssetKind, dict[SweepState | None, frozenset[SweepState]]]] = {
    AssetKind.TOKEN: TRANSITIONS,
    AssetKind.TRX: TRX_TRANSITIONS,
}
del S


def is_legal(source: SweepState | None, target: SweepState, kind: AssetKind = AssetKind.TOKEN) -> bool:
    return target in TRANSITIONS_BY_KIND[kind].get(source, frozenset())


def sources_of(target: SweepState, kind: AssetKind = AssetKind.TOKEN) -> frozenset[SweepState]:
    """The states a row may be in for a transition to `target` (excluding row creation)."""
    table = TRANSITIONS_BY_KIND[kind]
    return frozenset(s for s, targets in table.items() if s is not None and target in targets)


class IllegalTransition(LedgerError):
    """A transition the state machine does not allow, or a row no longer in the expected state."""


def check_transition(
    source: SweepState | None,
    target: SweepState,
    *,
    subject: str = "sweep",
    kind: AssetKind = AssetKind.TOKEN,
) -> None:
    """Raise IllegalTransition unless `source -> target` is in the table of the sweep's asset kind.
    Every state the ledger writes (birth, claim, transition, retry) passes here first; the
    database's trigger (migrations 0007, 0009) refuses the same pairs whatever code path writes them."""
    if not is_legal(source, target, kind):
        name = "(none)" if source is None else source.value
        what = "" if kind is AssetKind.TOKEN else f" for a {kind.value} sweep"
        raise IllegalTransition(f"{subject}: {name} -> {target.value} is not allowed{what}")


# --- time --------------------------------------------------------------------------------------

Clock = Callable[[], datetime]


def _wall_clock() -> datetime:
    return datetime.now(UTC)


# The one clock seam: production code takes a `Clock`, tests inject their own. The fault matrix's
# wrong host clock (sweeper/faults.py, test-only, off unless its env var is set) wraps it here.
utcnow: Clock = faults.skewed(_wall_clock)


# --- secrets -----------------------------------------------------------------------------------


class Secret:
    """A secret value that never shows itself in reprs, str(), logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", hashlib.sha256(self._value.encode()).digest()))

    def __bool__(self) -> bool:
        return bool(self._value)


# --- TRON addresses ----------------------------------------------------------------------------


class InvalidAddress(UsageError, ValueError):
    """Not a TRON base58check address (34 chars, 0x41 prefix, valid checksum)."""


def check_tron_address(value: object) -> str:
    """Return `value` if it is a mainnet-form TRON address, else raise InvalidAddress with why.

    `tronpy.keys.is_address` raises on malformed input and accepts 21-byte payloads with any
    prefix, so we check the bytes ourselves.
    """
    if not isinstance(value, str):
        raise InvalidAddress(f"expected a string, got {type(value).__name__}")
    if len(value) != 34:
        raise InvalidAddress(f"{value!r} is {len(value)} characters long, a TRON address has 34")
    if not value.startswith("T"):
        raise InvalidAddress(f"{value!r} does not start with 'T'")
    try:
        raw = base58.b58decode_check(value)
    except ValueError as exc:
        raise InvalidAddress(f"{value!r} has a bad base58 checksum") from exc
    if len(raw) != 21 or raw[0] != 0x41:
        raise InvalidAddress(f"{value!r} does not decode to 21 bytes starting with 0x41")
    return value


def is_tron_address(value: object) -> bool:
    try:
        check_tron_address(value)
    except InvalidAddress:
        return False
    return True


def address_to_hex(address: str) -> str:
    """'T…' -> '41…' (21 bytes hex), the form the node uses with visible=false."""
    return bytes(base58.b58decode_check(check_tron_address(address))).hex()


def hex_to_address(hex_address: str) -> str:
    """'41…' (21 bytes) or bare 20-byte hex -> 'T…'."""
    raw = bytes.fromhex(hex_address.removeprefix("0x"))
    if len(raw) == 20:
        raw = b"\x41" + raw
    if len(raw) != 21 or raw[0] != 0x41:
        raise InvalidAddress(f"{hex_address!r} is not a 20/21-byte TRON address")
    return base58.b58encode_check(raw).decode()


# --- token amounts -----------------------------------------------------------------------------


class InvalidAmount(UsageError, ValueError):
    pass


def parse_decimal(value: object) -> Decimal:
    """A decimal from a TOML string or int (never a float: floats are not exact)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidAmount(f'expected a decimal string like "10.5", got {type(value).__name__}')
    try:
        result = Decimal(value)
    except InvalidOperation as exc:
        raise InvalidAmount(f"{value!r} is not a decimal number") from exc
    if not result.is_finite():
        raise InvalidAmount(f"{value!r} is not a finite number")
    return result


def to_base_units(amount: Decimal, decimals: int) -> int:
    """Token units -> integer base units, exactly; refuses amounts finer than the token allows."""
    with localcontext() as context:  # exact: scaleb would round to 28 digits by default
        context.prec = max(28, len(amount.as_tuple().digits) + abs(decimals) + 2)
        scaled = amount.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise InvalidAmount(f"{amount} has more than {decimals} decimal places")
    return int(scaled)


def format_units(base_units: int | None, decimals: int) -> str | None:
    """Integer base units -> a decimal string in token units ("12.5"), exactly."""
    if base_units is None:
        return None
    # scaleb rounds to the context's precision (28 digits by default): a 78-digit amount needs more.
    with localcontext() as context:
        context.prec = max(28, len(str(abs(base_units))) + 2)
        text = format(Decimal(base_units).scaleb(-decimals), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
