"""Provider callbacks, verified: a callback request becomes a `ProviderCallback` or a
`CallbackRejected`; `verify_callback` never raises. A verified callback is only a hint to query the
order now.

Cheap first (the listener faces the internet, and verification runs on the daemon's event loop):
the headers, then one HMAC over the raw body; only a body of at most
`ALTERNATIVE_FORMS_MAX_BYTES` whose raw signature failed is parsed and re-serialised for the two
sorted JSON forms, and then with the C encoder (a forged body costs well under a millisecond).

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
# Only bodies up to this size are parsed to try the sorted forms when the raw signature fails. A
# provider callback is a few hundred bytes; a bigger body is checked over its raw bytes only.
ALTERNATIVE_FORMS_MAX_BYTES: Final = 4 * 1024
# … and only if it holds at most this many of the characters `,` `:` `[` `{` (strings included):
# parsing and re-writing cost grows with the number of values and of nested containers (4 KiB of
# `0.1,0.1,…` would cost milliseconds). A real callback is one flat object of about a dozen fields
# (some 25 of them).
ALTERNATIVE_FORMS_MAX_STRUCTURE: Final = 64


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
    """A JSON number with a fraction or exponent, exact (a field read from a verified body)."""


class _JsonFloat(float):
    """A JSON number with a fraction or exponent as parsed: a float (the C JSON encoder writes it as
    `repr(float)`, as the signer's `json.dumps` does) that keeps its literal text."""

    __slots__ = ("literal",)
    literal: str


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey("duplicate key")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError("NaN and Infinity are not JSON")


class _NotAsSigned(ValueError):
    """A number not written the way the signer's `json.dumps` writes it (`12.500`, `1E5`)."""


@dataclass
class _Parsed:
    value: Any
    # Every fractional number is written as `repr(float)` would write it: only then can the C
    # encoder rebuild the sorted forms byte for byte (a body whose numbers differ from the signed
    # text in any digit, 12.50000000000000001 for 12.5, cannot match).
    numbers_as_signed: bool


def _parse_callback_json(body: bytes) -> _Parsed:
    """Strict JSON: UTF-8, no duplicate keys, no NaN/Infinity; fractional numbers as `_JsonFloat`.

    Raises ValueError (or RecursionError) for anything else.
    """
    as_signed = True

    def number(text: str) -> _JsonFloat:
        nonlocal as_signed
        value = _JsonFloat(text)
        value.literal = text
        if float.__repr__(value) != text:
            as_signed = False
        return value

    value = json.loads(
        body.decode("utf-8"),
        object_pairs_hook=_unique_object,
        parse_float=number,
        parse_constant=_reject_constant,
    )
    return _Parsed(value, as_signed)


def _structure(body: bytes) -> int:
    """How many `,` `:` `[` `{` the body holds: a bound on its values and containers (C speed)."""
    return body.count(b",") + body.count(b":") + body.count(b"[") + body.count(b"{")


def _sorted_form(value: Any, item_separator: str, key_separator: str) -> bytes:
    """What `json.dumps(value, sort_keys=True, separators=…)` gives on the signer's side (C speed)."""
    return json.dumps(
        value, sort_keys=True, separators=(item_separator, key_separator), allow_nan=False
    ).encode()


def _exact_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The top-level fields with fractional numbers exact, from their literal text (never a float)."""
    return {
        key: _JsonNumber(value.literal) if isinstance(value, _JsonFloat) else value
        for key, value in data.items()
    }


def verify_callback(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    raw_body: bytes | str,
    *,
    api_secret: Secret,
    max_age_seconds: int = DEFAULT_CALLBACK_MAX_AGE_SECONDS,
    now: datetime | None = None,
    alternative_forms: bool = True,
) -> ProviderCallback | CallbackRejected:
    """Check a callback's TIMESTAMP and SIGNATURE headers against its body. Never raises.

    Accepted: a valid HMAC over the raw body, or — for a body of at most
    `ALTERNATIVE_FORMS_MAX_BYTES`, unless `alternative_forms` is False — over the compact sorted
    JSON form or the default-separator sorted form (the provider's docs show both); nothing else.
    The sorted forms are rebuilt as Python's `json.dumps` writes them (the docs' signer), so a body
    whose fractional numbers are written otherwise (`12.500`) matches over its raw bytes only. The
    timestamp must be within `max_age_seconds` of `now`, either way. A body is parsed only when the
    headers pass and either its raw signature matched or the sorted forms are to be tried.
    """
    try:
        return _verify_callback(
            headers, raw_body, api_secret, max_age_seconds, now or utcnow(), alternative_forms
        )
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
    alternative_forms: bool = True,
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

    # The raw body first: one HMAC, no parse. It is the only form tried for a body over
    # ALTERNATIVE_FORMS_MAX_BYTES (or with more structure than ALTERNATIVE_FORMS_MAX_STRUCTURE),
    # and the only one when the caller allows no more (`alternative_forms=False`: the listener
    # under a flood of failures).
    matched: SignedForm | None = None
    if hmac.compare_digest(sign(api_secret, timestamp_text, body_bytes).encode("ascii"), provided_bytes):
        matched = SignedForm.RAW
    elif (
        not alternative_forms
        or len(body_bytes) > ALTERNATIVE_FORMS_MAX_BYTES
        or _structure(body_bytes) > ALTERNATIVE_FORMS_MAX_STRUCTURE
    ):
        return CallbackRejected(RejectionReason.BAD_SIGNATURE, "SIGNATURE does not match the body")

    # One parse of the body feeds both the re-serialised candidate forms and the fields returned,
    # so the fields are exactly what a matching signature covered: no duplicate keys (which
    # copy would the signer have meant?), no NaN/Infinity, and numbers as written in the body.
    parsed: Any = None
    numbers_as_signed = False
    parse_error = "signed body is not a JSON object"
    try:
        result = _parse_callback_json(body_bytes)
    except _DuplicateKey:
        parse_error = "signed body has a duplicate key"
    except (ValueError, RecursionError):  # not UTF-8, not JSON, NaN/Infinity, too deep
        pass
    else:
        parsed, numbers_as_signed = result.value, result.numbers_as_signed

    if matched is None:
        if isinstance(parsed, dict) and numbers_as_signed:
            try:
                candidates = [
                    (SignedForm.COMPACT_SORTED, _sorted_form(parsed, ",", ":")),
                    (SignedForm.DEFAULT_SORTED, _sorted_form(parsed, ", ", ": ")),
                ]
            except (ValueError, RecursionError):
                candidates = []
            for form, candidate in candidates:
                expected = sign(api_secret, timestamp_text, candidate).encode("ascii")
                # Compare both candidates (no early exit), constant time each.
                if hmac.compare_digest(expected, provided_bytes) and matched is None:
                    matched = form
        if matched is None:
            return CallbackRejected(RejectionReason.BAD_SIGNATURE, "SIGNATURE does not match the body")

    if not isinstance(parsed, dict):
        return CallbackRejected(RejectionReason.MALFORMED_BODY, parse_error)
    data = _exact_fields(parsed)
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
