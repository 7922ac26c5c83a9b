"""Field parsing, defensive: the provider's types are documented loosely.

Each helper reads one field of a parsed JSON object (numbers as `Decimal`, never floats) and raises
only `_BadField`, whatever the input; `parse_provider_time` never raises. Shared by the client (its
answers) and callback verification (the signed body).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final


class _BadField(ValueError):
    pass


# Numbers as text: ASCII digits only (str.isdigit() and int() also take "²", "١", " 5", "1_0").
_INT_TEXT: Final = re.compile(r"-?[0-9]+")
_DECIMAL_TEXT: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
# No field of this API needs more digits; bounding them keeps int() cheap and inside its limits.
_MAX_DIGITS: Final = 30


def _show(value: object) -> str:
    """A provider value for an error text: repr, truncated (the caller scrubs secrets)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _opt_int(data: Mapping[str, Any], key: str, *, non_negative: bool = False) -> int | None:
    """An integer field: a JSON integer, a whole JSON number, or a string of ASCII digits.

    Raises only `_BadField`, whatever the input. `non_negative` for money (sun amounts, balances).
    """
    value = data.get(key)
    if value is None or value == "":
        return None
    result: int
    if isinstance(value, bool):
        raise _BadField(f"{key} is a boolean")
    if isinstance(value, int):
        result = value
    elif isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() >= _MAX_DIGITS:
            raise _BadField(f"{key}={_show(value)} is not a usable number")
        if value != value.to_integral_value():
            raise _BadField(f"{key}={_show(value)} is not a whole number")
        result = int(value)
    elif isinstance(value, str) and _INT_TEXT.fullmatch(value) and len(value) <= _MAX_DIGITS:
        result = int(value)
    else:
        raise _BadField(f"{key}={_show(value)} is not an integer")
    if abs(result) >= 10**_MAX_DIGITS:
        raise _BadField(f"{key} is out of range")
    if non_negative and result < 0:
        raise _BadField(f"{key}={result} is negative")
    return result


def _req_int(data: Mapping[str, Any], key: str, *, non_negative: bool = False) -> int:
    value = _opt_int(data, key, non_negative=non_negative)
    if value is None:
        raise _BadField(f"{key} is missing")
    return value


def _opt_sun(data: Mapping[str, Any], key: str) -> int | None:
    """A money field in sun: an integer, never negative."""
    return _opt_int(data, key, non_negative=True)


def _req_sun(data: Mapping[str, Any], key: str) -> int:
    return _req_int(data, key, non_negative=True)


def _opt_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise _BadField(f"{key} is a boolean")
    if isinstance(value, str | int):
        return str(value)
    raise _BadField(f"{key}={_show(value)} is not a string")


def _req_str(data: Mapping[str, Any], key: str) -> str:
    value = _opt_str(data, key)
    if not value:
        raise _BadField(f"{key} is missing")
    return value


def _opt_decimal(data: Mapping[str, Any], key: str) -> Decimal | None:
    """A fractional field: a finite JSON number or a plain decimal string ("12.5"). Raises only `_BadField`."""
    value = data.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _BadField(f"{key} is a boolean")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, Decimal):
        if value.is_finite():
            return Decimal(value)
        raise _BadField(f"{key}={_show(value)} is not a finite number")
    if isinstance(value, str) and len(value) <= 2 * _MAX_DIGITS + 2 and _DECIMAL_TEXT.fullmatch(value):
        return Decimal(value)
    raise _BadField(f"{key}={_show(value)} is not a number")


def _opt_list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise _BadField(f"{key} is not a list")
    return value


# itrx.io is a China-based service; its documented times carry +08:00.
PROVIDER_DEFAULT_OFFSET: Final = timezone(timedelta(hours=8))


def parse_provider_time(value: object) -> datetime | None:
    """The provider's times: ISO 8601 ('2023-06-15T21:42:13.200565+08:00', '…Z') or unix seconds.

    Returns None for an absent or unreadable time; never raises.

    A time without a UTC offset is read as China time (UTC+08:00), not UTC. itrx.io runs on China
    time, so that is the likely meaning; and of the plausible readings it is the earliest instant
    (12:00 at +08:00 is 04:00Z, eight hours before 12:00Z). The pipeline adopts an order found by
    out_trade_no only if it was created after our ledger row: reading an ambiguous time as early
    as possible can only make an order look older, so it errs towards "not ours, not adopted".
    """
    if value is None or value == "" or isinstance(value, bool):
        return None
    seconds: int
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, Decimal):
        if not value.is_finite() or value.adjusted() > 12:
            return None
        seconds = int(value)
    elif isinstance(value, str):
        if _INT_TEXT.fullmatch(value):
            if len(value) > 13:
                return None
            seconds = int(value)
        else:
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                return None
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=PROVIDER_DEFAULT_OFFSET)
    else:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None
