"""Provider callbacks, verified: a callback request becomes a `ProviderCallback` or a
`CallbackRejected`; `verify_callback` never raises. A verified callback is only a hint to query the
order now.

Imports no HTTP client (the listener and tests import this module alone; a test checks it).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

from sweeper.domain import Secret, utcnow
from sweeper.provider.fields import _BadField, _opt_decimal, _opt_int, _opt_str
from sweeper.provider.models import OrderStatus
from sweeper.provider.signing import _scrub_secrets, sign

DEFAULT_CALLBACK_MAX_AGE_SECONDS: Final = 300


class RejectionReason(StrEnum):
    MISSING_TIMESTAMP = "missing_timestamp"
    MISSING_SIGNATURE = "missing_signature"
    BAD_TIMESTAMP = "bad_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED_BODY = "malformed_body"


@dataclass(frozen=True)
class CallbackRejected:
    reason: RejectionReason
    detail: str

    @property
    def ok(self) -> bool:
        return False


class SignedForm(StrEnum):
    """Which form of the body the valid signature covered (the docs disagree)."""

    RAW = "raw"
    COMPACT_SORTED = "compact_sorted"
    DEFAULT_SORTED = "default_sorted"


@dataclass(frozen=True)
class ProviderCallback:
    """A verified callback. A hint only: query the order and act on the query's answer."""

    serial: str | None
    out_trade_no: str | None
    status: OrderStatus | None  # 40 success, 41 failed (per the docs)
    type: str | None
    source: str | None
    receive_address: str | None
    energy_amount: int | None
    delegated_energy: Decimal | None  # `pay_amount`
    txid: str | None
    active_hash: str | None
    bandwidth_hash: str | None
    timestamp: int
    signed_form: SignedForm
    raw_body: bytes = field(repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return True


def _header(headers: Mapping[str, str] | Iterable[tuple[str, str]], name: str) -> str | None:
    items = headers.items() if isinstance(headers, Mapping) else headers
    wanted = name.lower()
    for key, value in items:
        if isinstance(key, bytes):
            key = key.decode("latin-1")
        if isinstance(key, str) and key.lower() == wanted:
            if isinstance(value, bytes):
                value = value.decode("latin-1")
            return value if isinstance(value, str) else None
    return None


class _DuplicateKey(ValueError):
    pass


class _JsonNumber(Decimal):
    """A JSON number with a fraction or exponent: its exact value, and its literal text for re-serialising."""

    __slots__ = ("literal",)
    literal: str


def _json_number(text: str) -> _JsonNumber:
    number = _JsonNumber(text)
    number.literal = text
    return number


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey("duplicate key")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


def _parse_callback_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity; fractional numbers as `_JsonNumber`.

    Raises ValueError (or RecursionError) for anything else.
    """
    return json.loads(
        body.decode("utf-8"),
        object_pairs_hook=_unique_object,
        parse_float=_json_number,
        parse_constant=_reject_constant,
    )


def _canonical_dump(value: Any, item_separator: str, key_separator: str) -> str:
    """What `json.dumps(value, sort_keys=True, separators=…)` gives for the signer's data.

    Fractional numbers are written as they appeared in the body (Python's float repr on the
    signer's side), so a body whose numbers differ from the signed text in any digit cannot match.
    """
    if isinstance(value, dict):
        items = (
            json.dumps(key) + key_separator + _canonical_dump(item, item_separator, key_separator)
            for key, item in sorted(value.items())
        )
        return "{" + item_separator.join(items) + "}"
    if isinstance(value, list):
        return (
            "[" + item_separator.join(_canonical_dump(v, item_separator, key_separator) for v in value) + "]"
        )
    if isinstance(value, _JsonNumber):
        return value.literal
    return json.dumps(value)  # str, int, bool, None


def verify_callback(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    raw_body: bytes | str,
    *,
    api_secret: Secret,
    max_age_seconds: int = DEFAULT_CALLBACK_MAX_AGE_SECONDS,
    now: datetime | None = None,
) -> ProviderCallback | CallbackRejected:
    """Check a callback's TIMESTAMP and SIGNATURE headers against its body. Never raises.

    Accepted: a valid HMAC over the raw body, over the compact sorted JSON form, or over the
    default-separator sorted form (the provider's docs show both) — nothing else. The timestamp
    must be within `max_age_seconds` of `now`, either way.
    """
    try:
        return _verify_callback(headers, raw_body, api_secret, max_age_seconds, now or utcnow())
    except Exception as exc:  # defence in depth: garbage must never crash the listener
        return CallbackRejected(
            RejectionReason.MALFORMED_BODY, f"unverifiable request ({type(exc).__name__})"
        )


def _body_bytes(raw_body: bytes | str) -> bytes:
    if not isinstance(raw_body, str):
        return bytes(raw_body)
    try:
        # A str decoded from bytes with surrogateescape gets its bytes back exactly.
        return raw_body.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates: kept (and then not valid UTF-8 JSON)
        return raw_body.encode("utf-8", "surrogatepass")


def _verify_callback(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    raw_body: bytes | str,
    api_secret: Secret,
    max_age_seconds: int,
    now: datetime,
) -> ProviderCallback | CallbackRejected:
    body_bytes = _body_bytes(raw_body)
    timestamp_text = _header(headers, "TIMESTAMP")
    signature_text = _header(headers, "SIGNATURE")
    if not timestamp_text:
        return CallbackRejected(RejectionReason.MISSING_TIMESTAMP, "no TIMESTAMP header")
    if not signature_text:
        return CallbackRejected(RejectionReason.MISSING_SIGNATURE, "no SIGNATURE header")
    timestamp_text = timestamp_text.strip()
    if not (timestamp_text.isascii() and timestamp_text.isdigit()) or len(timestamp_text) > 12:
        return CallbackRejected(RejectionReason.BAD_TIMESTAMP, "TIMESTAMP is not unix seconds")
    timestamp = int(timestamp_text)
    age = now.timestamp() - timestamp
    if abs(age) > max_age_seconds:
        return CallbackRejected(
            RejectionReason.STALE_TIMESTAMP, f"TIMESTAMP is {int(age)} s from now (limit {max_age_seconds} s)"
        )
    provided = signature_text.strip().lower()
    if not (provided.isascii() and len(provided) == 64):
        return CallbackRejected(RejectionReason.BAD_SIGNATURE, "SIGNATURE is not 64 hex characters")
    provided_bytes = provided.encode("ascii")

    # One parse of the body feeds both the re-serialised candidate forms and the fields returned,
    # so the fields are exactly what a matching signature covered: no duplicate keys (which
    # copy would the signer have meant?), no NaN/Infinity, and numbers kept as their literal text
    # (a float parse would turn 12.50000000000000001 into 12.5 and let it match a signature over 12.5).
    candidates: list[tuple[SignedForm, bytes]] = [(SignedForm.RAW, body_bytes)]
    parsed: Any = None
    parse_error = "signed body is not a JSON object"
    try:
        parsed = _parse_callback_json(body_bytes)
    except _DuplicateKey:
        parse_error = "signed body has a duplicate key"
    except (ValueError, RecursionError):  # not UTF-8, not JSON, NaN/Infinity, too deep
        pass
    if isinstance(parsed, dict):
        try:
            compact = _canonical_dump(parsed, ",", ":").encode()
            default = _canonical_dump(parsed, ", ", ": ").encode()
        except RecursionError:
            pass
        else:
            candidates.append((SignedForm.COMPACT_SORTED, compact))
            candidates.append((SignedForm.DEFAULT_SORTED, default))

    matched: SignedForm | None = None
    for form, candidate in candidates:
        expected = sign(api_secret, timestamp_text, candidate).encode("ascii")
        # Compare every candidate (no early exit), constant time each.
        if hmac.compare_digest(expected, provided_bytes) and matched is None:
            matched = form
    if matched is None:
        return CallbackRejected(RejectionReason.BAD_SIGNATURE, "SIGNATURE does not match the body")

    if not isinstance(parsed, dict):
        return CallbackRejected(RejectionReason.MALFORMED_BODY, parse_error)
    data: dict[str, Any] = parsed
    try:
        serial = _opt_str(data, "serial")
        out_trade_no = _opt_str(data, "out_trade_no")
        status_code = _opt_int(data, "status")
        callback = ProviderCallback(
            serial=serial or None,
            out_trade_no=out_trade_no or None,
            status=OrderStatus(status_code) if status_code is not None else None,
            type=_opt_str(data, "type"),
            source=_opt_str(data, "source"),
            receive_address=_opt_str(data, "receive_address"),
            energy_amount=_opt_int(data, "energy_amount"),
            delegated_energy=_opt_decimal(data, "pay_amount"),
            txid=_opt_str(data, "txid"),
            active_hash=_opt_str(data, "active_hash"),
            bandwidth_hash=_opt_str(data, "bandwidth_hash"),
            timestamp=timestamp,
            signed_form=matched,
            raw_body=body_bytes,
        )
    except _BadField as exc:
        detail = _scrub_secrets(str(exc), api_secret)
        return CallbackRejected(RejectionReason.MALFORMED_BODY, f"signed body has a bad field ({detail})")
    if callback.serial is None and callback.out_trade_no is None:
        return CallbackRejected(RejectionReason.MALFORMED_BODY, "signed body names no serial or out_trade_no")
    return callback
