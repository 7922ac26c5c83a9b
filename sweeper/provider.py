"""The energy provider (itrx.io) client: signed orders, order queries, and callbacks as verified hints.

What the pipeline relies on (design.md, "The sweep state machine"):

* `collect_manual` either returns a typed `CollectOrder` or raises exactly one of the error
  classes below, each of which says what is known about the order:
  - `ProviderUnavailable`: nothing was ordered (the request provably never reached the provider,
    or the provider refused it and the account could not be checked): release the row, retry later.
  - `OrderOutcomeUnknown`: the POST was sent and its answer lost (timeout, 5xx, garbage). The order
    MAY exist: wait a grace period and `query_order(out_trade_no=…)` before ever ordering again.
    This client never retries such a POST by itself.
  - `InsufficientProviderBalance`: refused, and the account balance is below `low_balance_sun`.
  - `OrderRejected`: refused for this order (bad address …), with the provider's raw message.
  - `ProviderAuthError`: the API key is not accepted.
* `query_order` returns an `Order` or `OrderNotFound` (a value, not an exception).
* `verify_callback` turns a callback request into a `ProviderCallback` or a `CallbackRejected`; it
  never raises. A verified callback is only a hint to query the order now.

Money is integer sun everywhere. Fractional numbers from the provider (e.g. `pay_amount`, which is
an energy figure) are parsed as `Decimal`, never as floats. The API key and secret are `Secret`s and
are scrubbed from every text this module produces.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import IntEnum, StrEnum
from typing import Any, Final, NoReturn

import httpx
import structlog

from sweeper.domain import Clock, Secret, check_tron_address, utcnow

log = structlog.get_logger(__name__)

API_PREFIX: Final = "/api/v1/frontend"
# How much of a raw answer we keep (for the ledger and exception texts).
RAW_LIMIT: Final = 4000
DEFAULT_CALLBACK_MAX_AGE_SECONDS: Final = 300


# --- signing -----------------------------------------------------------------------------------


def canonical_json(data: Mapping[str, Any]) -> str:
    """The provider's request form: keys sorted, compact separators (the seed page's sample)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _secret_bytes(secret: Secret | str) -> bytes:
    return (secret.reveal() if isinstance(secret, Secret) else secret).encode()


def sign(secret: Secret | str, timestamp: str, body: str | bytes) -> str:
    """hex(HMAC-SHA256(key=secret, msg=f"{timestamp}&{body}")), as the provider's docs define it."""
    body_bytes = body.encode() if isinstance(body, str) else body
    message = timestamp.encode() + b"&" + body_bytes
    return hmac.new(_secret_bytes(secret), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class SignedBody:
    """A request body and its signature: `body` is exactly what was signed and must be sent as is."""

    body: str
    timestamp: str
    signature: str


def sign_request(secret: Secret | str, timestamp: str, data: Mapping[str, Any]) -> SignedBody:
    body = canonical_json(data)
    return SignedBody(body=body, timestamp=timestamp, signature=sign(secret, timestamp, body))


# --- typed results -----------------------------------------------------------------------------


class OrderStatus(IntEnum):
    """Order status as the provider's order/query reports it.

    Values the docs do not list become pseudo-members named `UNKNOWN_<n>`: not final, not success
    (the docs say: anything else, poll again).
    """

    CLOSED = 0  # closed / timed out (final, failed)
    AWAITING_PAYMENT = 10
    PAID = 20
    PREPARING = 30  # preparing delegation (one doc example calls it "fully delegated": not trusted)
    PARTLY_DELEGATED = 31
    ERROR_RETRYING = 32
    COMPLETED = 40  # final, success
    REFUNDED = 41  # ended with refund (final, failed)
    ABNORMAL = 43  # ended abnormally (final, failed)

    @classmethod
    def _missing_(cls, value: object) -> OrderStatus | None:
        if isinstance(value, int) and not isinstance(value, bool):
            pseudo = int.__new__(cls, value)
            pseudo._name_ = f"UNKNOWN_{value}"
            pseudo._value_ = value
            return pseudo
        return None

    @property
    def is_known(self) -> bool:
        return self._name_ in type(self).__members__

    @property
    def is_final(self) -> bool:
        return int(self) in _FINAL_STATUSES

    @property
    def is_success(self) -> bool:
        return int(self) == 40


_FINAL_STATUSES: Final = frozenset({0, 40, 41, 43})


@dataclass(frozen=True)
class CollectOrder:
    """The provider accepted a collect-manual order."""

    serial: str
    scene: int
    amount_sun: int  # what this order cost
    balance_sun: int  # the provider account's balance left
    out_trade_no: str | None  # what we sent (the provider echoes it in callbacks)
    raw: str = field(repr=False, compare=False)


@dataclass(frozen=True)
class Delegation:
    """One delegation of an order (large orders may be split)."""

    delegate_hash: str | None
    delegate_time: datetime | None
    reclaim_hash: str | None
    reclaim_time: datetime | None
    status: int | None  # 20 delegating, 30 reclaimed


@dataclass(frozen=True)
class Order:
    """An order as order/query reports it."""

    serial: str
    status: OrderStatus
    receive_address: str
    create_time: datetime | None  # timezone-aware
    energy_amount: int | None
    delegated_energy: Decimal | None  # the docs' `pay_amount`: energy actually delegated
    amount_sun: int | None
    refund_amount_sun: int
    period: str | None
    out_trade_no: str | None  # only if the provider includes it (undocumented)
    details: tuple[Delegation, ...]
    raw: str = field(repr=False, compare=False)

    @property
    def found(self) -> bool:
        return True


@dataclass(frozen=True)
class OrderNotFound:
    """order/query answered errno 404: there is no such order (for this API key)."""

    serial: str | None
    out_trade_no: str | None
    message: str
    raw: str = field(repr=False, compare=False)

    @property
    def found(self) -> bool:
        return False


@dataclass(frozen=True)
class TieredPrice:
    period: int
    price_sun: int  # per energy unit


# The energy collect-manual delegates for one USDT transfer, per the provider's docs (the seed
# page): ~65k when the `to_address` already holds the token, ~131k when it holds none. The
# pipeline orders nothing when the measured need is above what would be delivered.
COLLECT_MANUAL_ENERGY_TO_HOLDER = 65_000
COLLECT_MANUAL_ENERGY_TO_NEW_HOLDER = 131_000


@dataclass(frozen=True)
class IndexData:
    balance_sun: int
    usdt_energy_need_old: int | None  # energy for a USDT transfer to an address that holds USDT
    usdt_energy_need_new: int | None  # … to an address that holds none
    minimum_order_energy: int | None
    platform_avail_energy: int | None
    tiered_pricing: tuple[TieredPrice, ...]
    raw: str = field(repr=False, compare=False)


@dataclass(frozen=True)
class PriceQuote:
    period: str | None
    energy_amount: int | None
    price_sun: int | None  # per energy unit
    total_price_sun: int
    addition_sun: int  # small-order surcharge
    raw: str = field(repr=False, compare=False)


# --- errors ------------------------------------------------------------------------------------


class ProviderError(Exception):
    """Base of every error this client raises. Texts never contain the API key or secret.

    `raw` is the provider's answer (truncated, secrets scrubbed) for the ledger; `message` the
    provider's own message when it gave one (often Chinese; kept verbatim, never interpreted).
    """

    def __init__(
        self,
        summary: str,
        *,
        message: str | None = None,
        errno: int | None = None,
        http_status: int | None = None,
        raw: str | None = None,
    ) -> None:
        self.summary = summary
        self.message = message
        self.errno = errno
        self.http_status = http_status
        self.raw = raw
        parts = [summary]
        if http_status is not None:
            parts.append(f"http={http_status}")
        if errno is not None:
            parts.append(f"errno={errno}")
        if message:
            parts.append(f"message={message!r}")
        super().__init__(" ".join(parts))


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or answered 5xx; for a POST: nothing was ordered."""


class OrderOutcomeUnknown(ProviderError):
    """A POST was sent and its answer lost: the order may or may not exist. Query by out_trade_no."""


class InsufficientProviderBalance(ProviderError):
    """The provider refused the order and the account balance is too low: pause ordering."""

    def __init__(self, summary: str, *, balance_sun: int, **kwargs: Any) -> None:
        self.balance_sun = balance_sun
        super().__init__(f"{summary} balance_sun={balance_sun}", **kwargs)


class OrderRejected(ProviderError):
    """The provider refused this order (bad address …). Nothing was ordered."""

    def __init__(
        self, summary: str, *, field_errors: Mapping[str, tuple[str, ...]] | None = None, **kwargs: Any
    ) -> None:
        self.field_errors: Mapping[str, tuple[str, ...]] = dict(field_errors or {})
        super().__init__(summary, **kwargs)


class ProviderAuthError(ProviderError):
    """The API key (or secret) is not accepted."""


class UnexpectedAnswer(ProviderError):
    """A read (GET) got an answer this client cannot interpret; `raw` keeps it. Back off, retry later."""


# --- policy ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """Seconds. `total` bounds one attempt end to end (httpx's own timeouts are per operation)."""

    connect: float = 5.0
    read: float = 20.0
    write: float = 10.0
    pool: float = 5.0
    total: float = 30.0

    def as_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for GETs and for POSTs that provably never left. Exponential backoff, equal jitter."""

    attempts: int = 4  # tries in all, including the first
    base_delay: float = 0.5
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def delay(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number `retry` (1-based): half fixed, half random."""
        cap = min(self.max_delay, self.base_delay * float(2 ** (retry - 1)))
        return cap / 2 + rng.uniform(0, cap / 2)


# Transport failures that happen before a single byte of the request was sent.
_NEVER_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# A base URL httpx cannot use (no http:// or https://, malformed): configuration, never retried.
_BAD_URL: Final = (httpx.UnsupportedProtocol, httpx.InvalidURL)


@dataclass(frozen=True)
class _Answer:
    status: int
    text: str
    data: Any  # parsed JSON (floats as Decimal), or None if the body is not JSON


def _parse_json(text: str) -> Any:
    def _no_constants(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    try:
        return json.loads(text, parse_float=Decimal, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None


# --- field parsing (defensive: the provider's types are documented loosely) ---------------------


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


def _errno(data: Mapping[str, Any]) -> int | None:
    """errno as an int; absent counts as success (index-data and price answers carry none)."""
    return _opt_int(data, "errno") if "errno" in data else 0


def _field_errors(data: Any) -> dict[str, tuple[str, ...]]:
    """A Django-REST 400 body: {"field": ["why", …]} (or {"detail": "why"})."""
    if not isinstance(data, dict):
        return {}
    errors: dict[str, tuple[str, ...]] = {}
    for key, value in data.items():
        if isinstance(value, list):
            errors[str(key)] = tuple(str(v) for v in value)
        elif isinstance(value, str):
            errors[str(key)] = (value,)
    return errors


def _describe_field_errors(errors: Mapping[str, tuple[str, ...]]) -> str:
    return "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())


def _scrub_secrets(text: str, *secrets: Secret) -> str:
    for secret in secrets:
        value = secret.reveal()
        if value:
            text = text.replace(value, "***")
    return text


# --- the client --------------------------------------------------------------------------------

Sleep = Callable[[float], Awaitable[None]]


class ProviderClient:
    """Async client for the itrx.io API under `{base_url}/api/v1/frontend`.

    One instance per daemon; safe to share between tasks of one event loop. Pass `http_client` to
    reuse a pool (then this client does not close it) or `transport` for tests.
    """

    def __init__(
        self,
        base_url: str,
        api_key: Secret,
        api_secret: Secret,
        *,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        low_balance_sun: int = 20_000_000,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = utcnow,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(api_key, Secret) or not isinstance(api_secret, Secret):
            raise TypeError("api_key and api_secret must be sweeper.domain.Secret")
        if http_client is not None and transport is not None:
            raise ValueError("pass either http_client or transport, not both")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._api_secret = api_secret
        self.timeouts = timeouts or Timeouts()
        self.retry = retry or RetryPolicy()
        self.low_balance_sun = low_balance_sun
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()  # jitter only; not security-relevant
        self.requests_failed = 0  # transport errors, 5xx and 429 answers (for /metrics)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            transport=transport, timeout=self.timeouts.as_httpx(), follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"ProviderClient(base_url={self.base_url!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> ProviderClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- public API ------------------------------------------------------------------------

    async def collect_manual(
        self,
        receive_address: str,
        *,
        to_address: str | None = None,
        out_trade_no: str | None = None,
        callback_url: str | None = None,
        scene: int = 0,
    ) -> CollectOrder:
        """Order energy (and activation, bandwidth) for one sweep from `receive_address`.

        Raises `domain.InvalidAddress` before sending anything if an address is malformed.
        See the module docstring for what each provider error means for the order.
        """
        check_tron_address(receive_address)
        data: dict[str, Any] = {"scene": scene, "receive_address": receive_address}
        if to_address is not None:
            data["to_address"] = check_tron_address(to_address)
        if out_trade_no is not None:
            data["out_trade_no"] = out_trade_no
        if callback_url is not None:
            data["callback_url"] = callback_url

        answer = await self._post("/order/collect-manual", data)
        raw = self._raw(answer.text)
        if answer.status in (401, 403):
            raise ProviderAuthError("API key refused", http_status=answer.status, raw=raw)
        if answer.status == 400:
            errors = _field_errors(answer.data)
            if errors and "detail" not in errors:
                raise OrderRejected(
                    "order refused: invalid request",
                    field_errors=errors,
                    message=self._scrub(_describe_field_errors(errors)),
                    http_status=400,
                    raw=raw,
                )
            detail = " ".join(errors.get("detail", ())) or None
            await self._raise_refusal(detail, errno=None, http_status=400, raw=raw)
        if answer.status != 200 or not isinstance(answer.data, dict):
            raise OrderOutcomeUnknown(
                "order answer not understood: the order may exist", http_status=answer.status, raw=raw
            )
        body = answer.data
        try:
            errno = _errno(body)
        except Exception:  # _BadField; anything else would be a bug, and the order may exist
            errno = None
        if errno is None:
            raise OrderOutcomeUnknown("order answer has no usable errno", http_status=200, raw=raw)
        if errno != 0:
            message = body.get("message")
            await self._raise_refusal(
                message if isinstance(message, str) else None, errno=errno, http_status=200, raw=raw
            )
        try:
            order = CollectOrder(
                serial=_req_str(body, "serial"),
                scene=_opt_int(body, "scene") or 0,
                amount_sun=_req_sun(body, "amount"),
                balance_sun=_req_sun(body, "balance"),
                out_trade_no=out_trade_no,
                raw=raw,
            )
        except Exception as exc:  # errno 0: the order exists, whatever went wrong reading it
            raise OrderOutcomeUnknown(
                f"order accepted but its answer is malformed ({self._why(exc)})",
                errno=0,
                http_status=200,
                raw=raw,
            ) from None
        log.info(
            "provider.order_accepted",
            serial=order.serial,
            out_trade_no=out_trade_no,
            scene=order.scene,
            amount_sun=order.amount_sun,
            balance_sun=order.balance_sun,
        )
        return order

    async def query_order(
        self, *, serial: str | None = None, out_trade_no: str | None = None
    ) -> Order | OrderNotFound:
        """One order by serial (wins if both are given) or by out_trade_no."""
        if not serial and not out_trade_no:
            raise ValueError("query_order needs serial or out_trade_no")
        params = {"serial": serial} if serial else {"out_trade_no": str(out_trade_no)}
        answer = await self._get("/order/query", params)
        body = self._expect_json_object(answer)
        errno = self._errno_or_raise(body, answer)
        raw = self._raw(answer.text)
        if errno == 404:
            message = body.get("message")
            return OrderNotFound(
                serial=serial,
                out_trade_no=out_trade_no,
                message=self._scrub(message) if isinstance(message, str) else "",
                raw=raw,
            )
        if errno != 0:
            self._raise_unexpected("order query failed", answer, body, errno)
        try:
            return self._parse_order(body, raw)
        except Exception as exc:  # _BadField, or any surprise: never a bare exception to the caller
            raise UnexpectedAnswer(
                f"order query answer malformed ({self._why(exc)})", http_status=200, raw=raw
            ) from None

    async def index_data(self) -> IndexData:
        """Platform data and the account balance (the start-up check and the balance gauge)."""
        answer = await self._get("/index-data", {})
        body = self._expect_json_object(answer)
        errno = self._errno_or_raise(body, answer)
        raw = self._raw(answer.text)
        if errno != 0:
            self._raise_unexpected("index-data failed", answer, body, errno)
        if body.get("balance") is None:
            # The docs: "with a wrong API-KEY this endpoint returns empty data".
            raise ProviderAuthError(
                "index-data has no balance: API key not accepted", http_status=200, raw=raw
            )
        try:
            tiered = tuple(
                TieredPrice(period=_req_int(t, "period"), price_sun=_req_sun(t, "price"))
                for t in _opt_list(body, "tiered_pricing")
                if isinstance(t, dict)
            )
            return IndexData(
                balance_sun=_req_sun(body, "balance"),
                usdt_energy_need_old=_opt_int(body, "usdt_energy_need_old"),
                usdt_energy_need_new=_opt_int(body, "usdt_energy_need_new"),
                minimum_order_energy=_opt_int(body, "minimum_order_energy"),
                platform_avail_energy=_opt_int(body, "platform_avail_energy"),
                tiered_pricing=tiered,
                raw=raw,
            )
        except Exception as exc:  # _BadField, or any surprise: never a bare exception to the caller
            raise UnexpectedAnswer(
                f"index-data answer malformed ({self._why(exc)})", http_status=200, raw=raw
            ) from None

    async def price(
        self, *, period: str = "1H", energy_amount: int | None = None, to_address: str | None = None
    ) -> PriceQuote:
        """A price estimate in sun, by energy amount or by the destination of a USDT transfer."""
        if energy_amount is None and to_address is None:
            raise ValueError("price needs energy_amount or to_address")
        params: dict[str, str] = {"period": period}
        if energy_amount is not None:
            params["energy_amount"] = str(int(energy_amount))
        if to_address is not None:
            params["to_address"] = check_tron_address(to_address)
        answer = await self._get("/order/price", params)
        body = self._expect_json_object(answer)
        errno = self._errno_or_raise(body, answer)
        raw = self._raw(answer.text)
        if errno != 0:
            self._raise_unexpected("price failed", answer, body, errno)
        try:
            return PriceQuote(
                period=_opt_str(body, "period"),
                energy_amount=_opt_int(body, "energy_amount"),
                price_sun=_opt_sun(body, "price"),
                total_price_sun=_req_sun(body, "total_price"),
                addition_sun=_opt_sun(body, "addition") or 0,
                raw=raw,
            )
        except Exception as exc:  # _BadField, or any surprise: never a bare exception to the caller
            raise UnexpectedAnswer(
                f"price answer malformed ({self._why(exc)})", http_status=200, raw=raw
            ) from None

    def verify_callback(
        self,
        headers: Mapping[str, str] | Iterable[tuple[str, str]],
        raw_body: bytes | str,
        *,
        max_age_seconds: int = DEFAULT_CALLBACK_MAX_AGE_SECONDS,
    ) -> ProviderCallback | CallbackRejected:
        """`verify_callback` with this client's secret and clock."""
        return verify_callback(
            headers, raw_body, api_secret=self._api_secret, max_age_seconds=max_age_seconds, now=self._clock()
        )

    # --- refusals --------------------------------------------------------------------------

    async def _raise_refusal(
        self, message: str | None, *, errno: int | None, http_status: int, raw: str
    ) -> NoReturn:
        """The provider refused an order (nothing was created): low balance, auth, or rejection?

        We have no table of messages, so the account balance decides.
        """
        message = self._scrub(message) if message else message
        try:
            info = await self.index_data()
        except ProviderAuthError:
            raise ProviderAuthError(
                "order refused and index-data refuses the API key",
                message=message,
                errno=errno,
                http_status=http_status,
                raw=raw,
            ) from None
        except ProviderError as exc:
            raise ProviderUnavailable(
                f"order refused; account balance could not be checked ({exc.summary})",
                message=message,
                errno=errno,
                http_status=http_status,
                raw=raw,
            ) from None
        if info.balance_sun < self.low_balance_sun:
            raise InsufficientProviderBalance(
                "order refused with a low provider balance",
                balance_sun=info.balance_sun,
                message=message,
                errno=errno,
                http_status=http_status,
                raw=raw,
            )
        raise OrderRejected(
            "order refused by the provider", message=message, errno=errno, http_status=http_status, raw=raw
        )

    # --- answers ---------------------------------------------------------------------------

    def _expect_json_object(self, answer: _Answer) -> dict[str, Any]:
        raw = self._raw(answer.text)
        if answer.status in (401, 403):
            raise ProviderAuthError("API key refused", http_status=answer.status, raw=raw)
        if answer.status != 200:
            errors = _field_errors(answer.data)
            raise UnexpectedAnswer(
                "request refused",
                message=self._scrub(_describe_field_errors(errors)) or None,
                http_status=answer.status,
                raw=raw,
            )
        if not isinstance(answer.data, dict):
            raise UnexpectedAnswer("answer is not a JSON object", http_status=answer.status, raw=raw)
        return answer.data

    def _errno_or_raise(self, body: Mapping[str, Any], answer: _Answer) -> int:
        try:
            errno = _errno(body)
        except Exception:  # _BadField (anything else would be a bug): no usable errno
            errno = None
        if errno is None:
            raise UnexpectedAnswer(
                "answer has no usable errno", http_status=answer.status, raw=self._raw(answer.text)
            )
        return errno

    def _raise_unexpected(
        self, summary: str, answer: _Answer, body: Mapping[str, Any], errno: int
    ) -> NoReturn:
        message = body.get("message")
        raise UnexpectedAnswer(
            summary,
            message=self._scrub(message) if isinstance(message, str) else None,
            errno=errno,
            http_status=answer.status,
            raw=self._raw(answer.text),
        )

    @staticmethod
    def _parse_order(body: Mapping[str, Any], raw: str) -> Order:
        serial = _opt_str(body, "order_no") or _req_str(body, "serial")
        status_code = _req_int(body, "status")
        details: list[Delegation] = []
        for item in _opt_list(body, "details"):
            if not isinstance(item, dict):
                continue
            details.append(
                Delegation(
                    delegate_hash=_opt_str(item, "delegate_hash"),
                    delegate_time=parse_provider_time(item.get("delegate_time")),
                    reclaim_hash=_opt_str(item, "reclaim_hash"),
                    reclaim_time=parse_provider_time(item.get("reclaim_time")),
                    status=_opt_int(item, "status"),
                )
            )
        return Order(
            serial=serial,
            status=OrderStatus(status_code),
            receive_address=_req_str(body, "receive_address"),
            create_time=parse_provider_time(body.get("create_time")),
            energy_amount=_opt_int(body, "energy_amount"),
            delegated_energy=_opt_decimal(body, "pay_amount"),
            amount_sun=_opt_sun(body, "amount"),
            refund_amount_sun=_opt_sun(body, "refund_amount") or 0,
            period=_opt_str(body, "period"),
            out_trade_no=_opt_str(body, "out_trade_no"),
            details=tuple(details),
            raw=raw,
        )

    # --- transport -------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return _scrub_secrets(text, self._api_key, self._api_secret)

    def _why(self, exc: Exception) -> str:
        """What went wrong reading an answer: a `_BadField`'s text (scrubbed), else only the type."""
        return self._scrub(str(exc)) if isinstance(exc, _BadField) else f"unexpected {type(exc).__name__}"

    def _raw(self, text: str) -> str:
        return self._scrub(text)[:RAW_LIMIT]

    def _url(self, path: str) -> str:
        return f"{self.base_url}{API_PREFIX}{path}"

    def _timestamp(self) -> str:
        return str(int(self._clock().timestamp()))

    async def _send(self, method: str, path: str, **kwargs: Any) -> _Answer:
        try:
            async with asyncio.timeout(self.timeouts.total):
                response = await self._http.request(
                    method, self._url(path), timeout=self.timeouts.as_httpx(), **kwargs
                )
        except Exception:
            self.requests_failed += 1
            raise
        if response.status_code >= 500 or response.status_code == 429:
            self.requests_failed += 1
        text = response.text
        return _Answer(status=response.status_code, text=text, data=_parse_json(text))

    def _bad_url(self, exc: Exception) -> ProviderUnavailable:
        log.error("provider.bad_base_url", error=type(exc).__name__)
        return ProviderUnavailable(
            f"provider base URL {self._scrub(self.base_url)!r} is not usable ({type(exc).__name__}): "
            "it must start with http:// or https://; a configuration error, not retried"
        )

    async def _backoff(self, retry: int) -> None:
        await self._sleep(self.retry.delay(retry, self._rng))

    async def _get(self, path: str, params: Mapping[str, str]) -> _Answer:
        """GETs are idempotent: retried on any transport failure, 5xx and 429."""
        last: str = ""
        for attempt in range(1, self.retry.attempts + 1):
            headers = {"API-KEY": self._api_key.reveal()}
            try:
                answer = await self._send("GET", path, params=params, headers=headers)
            except _BAD_URL as exc:
                raise self._bad_url(exc) from None
            except (httpx.TransportError, TimeoutError) as exc:
                last = f"{type(exc).__name__}"
                log.warning("provider.get_failed", path=path, attempt=attempt, error=last)
            else:
                if answer.status < 500 and answer.status != 429:
                    log.debug("provider.get", path=path, status=answer.status, attempt=attempt)
                    return answer
                last = f"HTTP {answer.status}"
                log.warning("provider.get_failed", path=path, attempt=attempt, status=answer.status)
            if attempt < self.retry.attempts:
                await self._backoff(attempt)
        raise ProviderUnavailable(f"GET {path} failed after {self.retry.attempts} attempts: {last}")

    async def _post(self, path: str, data: Mapping[str, Any]) -> _Answer:
        """A signed POST. Retried only while the request provably never left this host."""
        body = canonical_json(data)
        content = body.encode()
        last = ""
        for attempt in range(1, self.retry.attempts + 1):
            timestamp = self._timestamp()
            headers = {
                "API-KEY": self._api_key.reveal(),
                "TIMESTAMP": timestamp,
                "SIGNATURE": sign(self._api_secret, timestamp, content),
                "Content-Type": "application/json",
            }
            try:
                answer = await self._send("POST", path, content=content, headers=headers)
            except _BAD_URL as exc:
                raise self._bad_url(exc) from None
            except _NEVER_SENT as exc:
                last = type(exc).__name__
                log.warning("provider.post_not_sent", path=path, attempt=attempt, error=last)
            except (httpx.TransportError, TimeoutError) as exc:
                log.warning(
                    "provider.post_outcome_unknown", path=path, attempt=attempt, error=type(exc).__name__
                )
                raise OrderOutcomeUnknown(f"POST {path} sent, answer lost ({type(exc).__name__})") from None
            else:
                log.info("provider.post", path=path, status=answer.status, attempt=attempt)
                if answer.status >= 500:
                    raise OrderOutcomeUnknown(
                        f"POST {path} answered HTTP {answer.status}: the order may exist",
                        http_status=answer.status,
                        raw=self._raw(answer.text),
                    )
                return answer
            if attempt < self.retry.attempts:
                await self._backoff(attempt)
        raise ProviderUnavailable(
            f"POST {path} could not be sent after {self.retry.attempts} attempts: {last}"
        )


# --- callbacks ---------------------------------------------------------------------------------


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
