"""The HTTP client of the energy provider (itrx.io): signed orders, order queries, index data, prices.

What each method returns or raises, and what that means for the order, is in `sweeper.provider`'s
docstring. The API key and secret are `Secret`s and are scrubbed from every text this module produces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, NoReturn

import httpx
import structlog

from sweeper.domain import Clock, Secret, check_tron_address, utcnow
from sweeper.errors import ProviderError
from sweeper.provider.callbacks import (
    DEFAULT_CALLBACK_MAX_AGE_SECONDS,
    CallbackRejected,
    ProviderCallback,
    verify_callback,
)
from sweeper.provider.errors import (
    InsufficientProviderBalance,
    OrderOutcomeUnknown,
    OrderRejected,
    ProviderAuthError,
    ProviderUnavailable,
    UnexpectedAnswer,
)
from sweeper.provider.fields import (
    _BadField,
    _opt_decimal,
    _opt_int,
    _opt_list,
    _opt_str,
    _opt_sun,
    _req_int,
    _req_str,
    _req_sun,
    parse_provider_time,
)
from sweeper.provider.models import (
    CollectOrder,
    Delegation,
    IndexData,
    Order,
    OrderNotFound,
    OrderStatus,
    PriceQuote,
    TieredPrice,
)
from sweeper.provider.signing import _scrub_secrets, canonical_json, sign
from sweeper.retry import PROVIDER_RETRY, RetryPolicy

log = structlog.get_logger("sweeper.provider")  # the name before the package split: log filters keep matching
# The level check asks the stdlib logger structlog writes through (sweeper.logs), so it also
# works where structlog is left unconfigured (tests, library use): then DEBUG is simply off.
_stdlib_log = logging.getLogger("sweeper.provider")

API_PREFIX: Final = "/api/v1/frontend"
# How much of a raw answer we keep (for the ledger and exception texts).
RAW_LIMIT: Final = 4000


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
        retry: RetryPolicy = PROVIDER_RETRY,
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
        self.retry = retry
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
        See `sweeper.provider`'s docstring for what each provider error means for the order.
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
        alternative_forms: bool = True,
    ) -> ProviderCallback | CallbackRejected:
        """`verify_callback` with this client's secret and clock."""
        return verify_callback(
            headers,
            raw_body,
            api_secret=self._api_secret,
            max_age_seconds=max_age_seconds,
            now=self._clock(),
            alternative_forms=alternative_forms,
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
        # DEBUG: one record per request and per answer, for diagnosing the provider. The headers
        # (API-KEY, SIGNATURE) are never logged; bodies and answers are scrubbed of our secrets.
        debug = _stdlib_log.isEnabledFor(logging.DEBUG)
        if debug:
            content = kwargs.get("content")
            log.debug(
                "provider.request",
                method=method,
                path=path,
                params=dict(kwargs.get("params") or {}),
                body=self._raw(content.decode("utf-8", "replace")) if isinstance(content, bytes) else None,
            )
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
        if debug:
            log.debug(
                "provider.response",
                method=method,
                path=path,
                status=response.status_code,
                body=self._raw(text),
            )
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
