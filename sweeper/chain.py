"""TRON access on tronpy's `AsyncTron`: reads, safe transfer building and signing, broadcast, status.

Every node request goes through one provider of ours (a subclass of tronpy's
`AsyncHTTPProvider`), so the things tronpy does not do are done once, for all calls:
- the API key: tronpy sends one of its own hard-coded TronGrid keys (shared by every tronpy user)
  whenever the URL contains "trongrid" and no key is given. We switch that logic off entirely and
  add the configured key (`TRON-PRO-API-KEY`) ourselves, as an httpx auth flow so it never sits in
  a repr-able header dict;
- one client-side rate limiter (`RateLimiter`, shareable with the scanner);
- retries with exponential backoff and jitter on 429/5xx and transport errors (timeouts included);
  re-sending a broadcast is safe: the node answers DUP_TRANSACTION_ERROR for bytes it already has.

Money is integers (sun, token base units) throughout. Secrets never appear in errors or reprs.

Why the transfer is verified before signing: tronpy's online `build()` signs whatever txid the
node's `getsignweight` returns. A lying or compromised node could hand back the txid of a
different transaction (another destination) and get it signed. We recompute the txid from the
raw_data we are about to sign (`tronpy.proto.calculate_txid_from_raw_data`), compare it with the
node's, and decode owner, contract, destination, amount and fee_limit from that same raw_data.

The energy a transfer needs is never guessed here: `simulate_transfer` runs the exact transfer as
a constant call from the deposit address (`wallet/triggerconstantcontract`, read directly: tronpy's
helper raises on a revert and drops `energy_used`) and the caller passes what it measured to
`check_resources(energy_needed=)` and, through `fee_limit_for`, to `build_transfer(fee_limit_sun=)`.
java-tron's answer forms (tests/fixtures/constant-call-forms.json quotes the source): a revert is
`result.message` ("REVERT opcode executed") with `transaction.ret[0].ret == "FAILED"`;
`energy_used` already includes the dynamic-energy `energy_penalty`; a `result.code` means the call
did not run at all (CONTRACT_VALIDATE_ERROR, OTHER_ERROR).
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
import structlog
from tronpy import AsyncTron
from tronpy.exceptions import ApiError, BadSignature, NotFound, TransactionError, TvmError, UnknownError
from tronpy.exceptions import ValidationError as TronValidationError
from tronpy.keys import Signature
from tronpy.proto import calculate_txid_from_raw_data
from tronpy.providers.async_http import AsyncHTTPProvider

from sweeper.domain import (
    Clock,
    InvalidAddress,
    Secret,
    address_to_hex,
    check_tron_address,
    hex_to_address,
    utcnow,
)
from sweeper.keys import SigningKey

log = structlog.get_logger(__name__)

USDT_MAINNET: Final = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
TRANSFER_SELECTOR: Final = "a9059cbb"  # transfer(address,uint256)
TRANSFER_TOPIC: Final = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"

# 4-byte selectors = keccak256(signature)[:4] (checked by the tests against eth_utils' keccak).
IS_BLACKLISTED_SELECTOR: Final = "e47d6060"  # isBlackListed(address): Tether's public freeze list
ERROR_SELECTOR: Final = "08c379a0"  # Error(string): a revert with a reason
PANIC_SELECTOR: Final = "4e487b71"  # Panic(uint256): a failed assert in solc >= 0.8
# Bandwidth of a signed TRC20 transfer is ~345 bytes (serialized tx + 64); a little headroom.
TRANSFER_BANDWIDTH: Final = 350
DEFAULT_LIFETIME_MS: Final = 60_000
USER_AGENT: Final = "sweeper"
API_KEY_HEADER: Final = "TRON-PRO-API-KEY"

_RAW_KEYS: Final = frozenset(
    {"contract", "ref_block_bytes", "ref_block_hash", "expiration", "timestamp", "fee_limit"}
)
_VALUE_KEYS: Final = frozenset(
    {"owner_address", "contract_address", "data", "call_value", "call_token_value", "token_id"}
)
# Broadcast answers that mean "try the same bytes again later", not "this transaction is bad".
_TRANSIENT_CODES: Final = frozenset(
    {"SERVER_BUSY", "NO_CONNECTION", "NOT_ENOUGH_EFFECTIVE_CONNECTION", "BLOCK_UNSOLIDIFIED"}
)


# --- errors ------------------------------------------------------------------------------------


class ChainError(Exception):
    """Base of everything this module raises. Messages never contain keys or API keys."""


class ChainUnavailable(ChainError):
    """The node could not be reached or kept refusing (429/5xx/timeouts) after all retries: transient."""


class ChainResponseError(ChainError):
    """The node answered something we cannot use (error payload, malformed JSON, 4xx)."""


class UnsafeTransaction(ChainError):
    """The transaction is not exactly the transfer we meant (forged txid, other fields): never sign it."""


class TransactionExpired(ChainError):
    """The transaction's expiration has passed (or is too close): build a new one."""


class BroadcastRejected(ChainError):
    """The node refused the transaction; `code` is java-tron's response code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def expired(self) -> bool:
        """Expired or its reference block is unknown: the same bytes can never be accepted; rebuild."""
        return self.code in ("TRANSACTION_EXPIRATION_ERROR", "TAPOS_ERROR")


# --- rate limiting and retries -----------------------------------------------------------------


class RateLimiter:
    """At most `rate` acquisitions per second on average, `burst` at once (GCRA, no background task).

    One instance is shared by every request of a `TronChain` (and may be passed to the scanner so
    that polling and the pipeline together stay under the node's limit). Use from one event loop.
    A slot is reserved before sleeping, so concurrent waiters are spaced fairly.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0 requests per second")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate = rate
        self.burst = burst
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._tat = float("-inf")  # theoretical arrival time of the next request
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        # One waiter at a time. A waiter that wakes late by up to half an interval (timer jitter)
        # keeps the schedule, so the rate does not drift down; one woken later (a stalled loop, a
        # busy CPU) restarts the schedule from now, so the slots that passed are not all used at once.
        async with self._lock:
            now = self._monotonic()
            tat = max(self._tat, now)
            wait = tat - self._tolerance - now
            if wait > 0:
                await self._sleep(wait)
                tat = max(tat, self._monotonic() - self._interval / 2)
            self._tat = tat + self._interval

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate}, burst={self.burst})"


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay: float = 0.2  # seconds; doubled per attempt, full jitter
    max_delay: float = 5.0
    statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        jittered = ceiling / 2 + rng.random() * ceiling / 2
        if retry_after is not None:
            return min(self.max_delay, max(jittered, retry_after))
        return jittered


class _ApiKeyAuth(httpx.Auth):
    """Adds the configured TronGrid key to each request; the key stays wrapped until then."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[API_KEY_HEADER] = self._key.reveal()
        yield request

    def __repr__(self) -> str:
        return "_ApiKeyAuth(***)"


def _safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment (they may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class _NodeProvider(AsyncHTTPProvider):  # type: ignore[misc]  # tronpy is untyped
    """tronpy's provider with our client, our key, the shared limiter and retries."""

    def __init__(
        self,
        endpoint_uri: str,
        *,
        client: httpx.AsyncClient,
        limiter: RateLimiter,
        retry: RetryPolicy,
        api_key: Secret | None,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        super().__init__(endpoint_uri, client=client)
        # Never tronpy's built-in keys, whatever the URL says.
        self.use_api_key = False
        self._api_keys: list[str] = []
        self._default_api_keys: list[str] = []
        self.jw_token = None
        self._auth: httpx.Auth | None = _ApiKeyAuth(api_key) if api_key else None
        self._limiter = limiter
        self._retry = retry
        self._sleep = sleep
        self._rng = random.Random()
        self.requests_sent = 0
        self.requests_failed = 0  # transport errors, retryable and error statuses (for /metrics)
        self.retries = 0

    @property
    def random_api_key(self) -> str:
        raise RuntimeError("tronpy's shared API keys are never used")

    async def make_request(self, method: str, params: Any = None) -> Any:
        url = urljoin(self.endpoint_uri, method)
        policy = self._retry
        problem = ""
        for attempt in range(1, policy.attempts + 1):
            await self._limiter.acquire()
            self.requests_sent += 1
            retry_after: float | None = None
            try:
                resp = await self.client.post(
                    url,
                    json=params if params is not None else {},
                    headers={"User-Agent": USER_AGENT},
                    auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:  # connect/read/write errors and timeouts
                self.requests_failed += 1
                problem = f"{type(exc).__name__}: {str(exc)[:200]}"
            else:
                if resp.status_code in policy.statuses:
                    self.requests_failed += 1
                    problem = f"HTTP {resp.status_code}"
                    retry_after = _retry_after(resp)
                elif resp.status_code >= 400:
                    self.requests_failed += 1
                    raise ChainResponseError(f"{method}: HTTP {resp.status_code}")
                else:
                    try:
                        return resp.json()
                    except ValueError:
                        raise ChainResponseError(f"{method}: the node's answer is not JSON") from None
            if attempt == policy.attempts:
                break
            self.retries += 1
            delay = policy.delay(attempt, self._rng, retry_after)
            log.warning("tron.retry", method=method, attempt=attempt, problem=problem, delay=round(delay, 3))
            await self._sleep(delay)
        raise ChainUnavailable(f"{method}: {problem} (gave up after {policy.attempts} attempts)")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# --- results -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockRef:
    number: int
    block_id: str
    timestamp_ms: int


@dataclass(frozen=True)
class AccountResources:
    address: str
    activated: bool
    trx_sun: int
    energy_limit: int  # delegated + staked energy
    energy_used: int
    net_limit: int  # delegated + staked bandwidth (bytes)
    net_used: int
    free_net_limit: int  # daily free bandwidth (activated accounts only)
    free_net_used: int

    @property
    def energy_available(self) -> int:
        return max(0, self.energy_limit - self.energy_used)

    @property
    def net_available(self) -> int:
        return max(0, self.net_limit - self.net_used)

    @property
    def free_net_available(self) -> int:
        return max(0, self.free_net_limit - self.free_net_used)

    def covers_bandwidth(self, needed: int) -> bool:
        # java-tron pays a transaction's bytes from staked/delegated bandwidth OR from the free
        # allowance, never from both together; otherwise it burns TRX.
        return self.net_available >= needed or self.free_net_available >= needed


@dataclass(frozen=True)
class ResourceCheck:
    """Whether `owner` can send the transfer now paying only with delegated energy and bandwidth."""

    ok: bool
    activated: bool
    energy_needed: int
    energy_available: int
    bandwidth_needed: int
    bandwidth_available: int  # the larger of delegated and free bandwidth left
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Simulation:
    """What a constant call of the exact transfer says it would do (nothing is sent or signed)."""

    reverted: bool
    energy_used: int  # as the node says; ALREADY includes any energy penalty (never add energy_penalty)
    energy_penalty: int  # informational only (0 when absent)
    message: str  # decoded revert reason / result message, "" on success


@dataclass(frozen=True)
class UnsignedTransfer:
    """A verified, not yet signed TRC20 transfer. `raw_data` is exactly what gets signed."""

    txid: str
    raw_data: dict[str, Any]
    owner: str
    destination: str
    token: str
    amount: int
    fee_limit_sun: int
    expiration_ms: int
    # When it was built (monotonic): its remaining lifetime is counted on this process's own clock
    # from the node's head-block stamp, never from the host's wall clock.
    built_monotonic: float = field(default_factory=time.monotonic, compare=False)

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expiration_ms / 1000, UTC)

    def remaining_ms(self) -> int:
        """Lifetime left: stamped lifetime (expiration - timestamp, both the node's head time at
        build) less the time spent since building."""
        lifetime = self.expiration_ms - int(self.raw_data.get("timestamp", self.expiration_ms))
        return lifetime - int((time.monotonic() - self.built_monotonic) * 1000)


@dataclass(frozen=True)
class SignedTransfer:
    """A signed transfer: store `to_json()` (with txid and expiration) BEFORE broadcasting it."""

    txid: str
    raw_data: dict[str, Any]
    signature: str  # 65 bytes hex
    owner: str
    destination: str
    token: str
    amount: int
    fee_limit_sun: int
    expiration_ms: int

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expiration_ms / 1000, UTC)

    def broadcast_payload(self) -> dict[str, Any]:
        return {"txID": self.txid, "raw_data": self.raw_data, "signature": [self.signature], "visible": False}

    def to_json(self) -> str:
        """The signed transaction as the ledger stores it (re-broadcast these exact bytes)."""
        return json.dumps(self.broadcast_payload(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SignedTransfer:
        """Load a stored transaction, re-deriving every field from raw_data and checking the signature."""
        try:
            data = json.loads(text)
            raw = data["raw_data"]
            signature = str(data["signature"][0])
            txid = str(data["txID"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise UnsafeTransaction("the stored transaction is not a signed TRON transaction") from None
        decoded = decode_transfer(raw)
        _check_txid(raw, txid)
        signer = _recover_signer(txid, signature)
        if signer != decoded.owner:
            raise UnsafeTransaction(f"the stored transaction's signature is by {signer}, not {decoded.owner}")
        return cls(
            txid=txid,
            raw_data=raw,
            signature=signature,
            owner=decoded.owner,
            destination=decoded.destination,
            token=decoded.token,
            amount=decoded.amount,
            fee_limit_sun=decoded.fee_limit_sun,
            expiration_ms=decoded.expiration_ms,
        )


class BroadcastOutcome(StrEnum):
    ACCEPTED = "accepted"
    ALREADY_KNOWN = "already_known"  # DUP_TRANSACTION_ERROR: the node has these bytes already


@dataclass(frozen=True)
class BroadcastResult:
    txid: str
    outcome: BroadcastOutcome


class TxState(StrEnum):
    CONFIRMED = "confirmed"  # in a solidified block, receipt SUCCESS
    FAILED = "failed"  # in a solidified block, receipt not SUCCESS (reason says why)
    PENDING = "pending"  # not solidified (yet): may still be included
    EXPIRED = "expired"  # can no longer be included anywhere: safe to rebuild


@dataclass(frozen=True)
class TokenTransfer:
    txid: str
    token: str
    sender: str
    recipient: str
    amount: int
    log_index: int


@dataclass(frozen=True)
class TransferStatus:
    txid: str
    state: TxState
    reason: str | None = None  # for FAILED: receipt result and the node's message
    block_number: int | None = None
    fee_sun: int = 0  # TRX burnt (energy + bandwidth)
    energy_used: int = 0  # total energy, delegated included
    net_usage: int = 0
    transfers: tuple[TokenTransfer, ...] = field(default=())


@dataclass(frozen=True)
class DecodedTransfer:
    owner: str
    token: str
    destination: str
    amount: int
    fee_limit_sun: int
    expiration_ms: int
    timestamp_ms: int


# --- pure helpers (also used by the tests and the scanner) --------------------------------------


def transfer_data(destination: str, amount: int) -> str:
    """The call data of `transfer(destination, amount)`."""
    return TRANSFER_SELECTOR + "00" * 12 + address_to_hex(destination)[2:] + f"{amount:064x}"


def _to_hex41(value: Any) -> str:
    text = str(value)
    if text.startswith("T"):
        return address_to_hex(text)
    text = text.lower().removeprefix("0x")
    return address_to_hex(hex_to_address(text))


def decode_transfer(raw_data: Any) -> DecodedTransfer:
    """Decode a TRC20 transfer's raw_data strictly; anything unexpected raises UnsafeTransaction."""
    try:
        if not isinstance(raw_data, dict) or not set(raw_data) <= _RAW_KEYS:
            raise UnsafeTransaction("raw_data has unexpected fields")
        contracts = raw_data["contract"]
        if not isinstance(contracts, list) or len(contracts) != 1:
            raise UnsafeTransaction("the transaction must hold exactly one contract call")
        contract = contracts[0]
        if set(contract) != {"parameter", "type"} or contract["type"] != "TriggerSmartContract":
            raise UnsafeTransaction("the transaction is not a plain TriggerSmartContract")
        parameter = contract["parameter"]
        if parameter.get("type_url") != "type.googleapis.com/protocol.TriggerSmartContract":
            raise UnsafeTransaction("the contract parameter has an unexpected type_url")
        value = parameter["value"]
        if not set(value) <= _VALUE_KEYS:
            raise UnsafeTransaction("the contract call has unexpected fields")
        for key in ("call_value", "call_token_value", "token_id"):
            if value.get(key, 0) not in (0, None):
                raise UnsafeTransaction(f"the contract call carries {key}")
        data = str(value["data"]).lower()
        # The address word is 12 zero bytes + 20 bytes; TronWeb writes the 0x41 prefix into the
        # 12th byte (the real fixture does), which the token ignores. Anything else is refused.
        if (
            len(data) != 8 + 128
            or not data.startswith(TRANSFER_SELECTOR)
            or data[8 : 8 + 24] not in ("0" * 24, "0" * 22 + "41")
        ):
            raise UnsafeTransaction("the call data is not transfer(address,uint256)")
        fee_limit = raw_data.get("fee_limit", 0)
        expiration = raw_data["expiration"]
        timestamp = raw_data.get("timestamp", 0)
        for number in (fee_limit, expiration, timestamp):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise UnsafeTransaction("fee_limit, expiration and timestamp must be integers")
        return DecodedTransfer(
            owner=hex_to_address(_to_hex41(value["owner_address"])),
            token=hex_to_address(_to_hex41(value["contract_address"])),
            destination=hex_to_address(data[8 + 24 : 8 + 64]),
            amount=int(data[8 + 64 :], 16),
            fee_limit_sun=fee_limit,
            expiration_ms=expiration,
            timestamp_ms=timestamp,
        )
    except UnsafeTransaction:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, InvalidAddress):
        raise UnsafeTransaction("raw_data is not a well-formed TRC20 transfer") from None


def _check_txid(raw_data: dict[str, Any], txid: str) -> None:
    try:
        local = str(calculate_txid_from_raw_data(raw_data))
    except (KeyError, TypeError, ValueError):
        raise UnsafeTransaction("cannot serialize raw_data to compute its txid") from None
    if local != txid.lower():
        raise UnsafeTransaction(
            f"the node's txid {txid} is not the hash of the transaction we built ({local}): refusing to sign"
        )


def _recover_signer(txid: str, signature: str) -> str:
    try:
        public_key = Signature.fromhex(signature).recover_public_key_from_msg_hash(bytes.fromhex(txid))
        return str(public_key.to_base58check_address())
    except (BadSignature, ValueError):
        raise UnsafeTransaction("the signature does not recover to any key") from None


def verify_transfer(
    raw_data: dict[str, Any],
    node_txid: str,
    *,
    owner: str,
    token: str,
    destination: str,
    amount: int,
    fee_limit_sun: int,
) -> DecodedTransfer:
    """Check that raw_data hashes to `node_txid` and is exactly transfer(destination, amount)."""
    _check_txid(raw_data, node_txid)
    decoded = decode_transfer(raw_data)
    expected = {
        "owner": (decoded.owner, owner),
        "token contract": (decoded.token, token),
        "destination": (decoded.destination, destination),
        "amount": (decoded.amount, amount),
        "fee_limit": (decoded.fee_limit_sun, fee_limit_sun),
    }
    for what, (got, wanted) in expected.items():
        if got != wanted:
            raise UnsafeTransaction(f"the built transaction's {what} is {got}, we asked for {wanted}")
    if decoded.expiration_ms <= decoded.timestamp_ms:
        raise UnsafeTransaction("the built transaction expires before it was made")
    return decoded


def decode_transfer_logs(info: dict[str, Any], token: str) -> list[TokenTransfer]:
    """The token's Transfer events in a transaction info fetched with visible=false.

    java-tron renders a log's address as the bare 20-byte hex (no 0x41), topics as 32-byte hex.
    """
    token20 = address_to_hex(token)[2:]
    txid = str(info.get("id", ""))
    out: list[TokenTransfer] = []
    for index, entry in enumerate(info.get("log") or []):
        address = str(entry.get("address", "")).lower().removeprefix("0x")
        if len(address) == 42 and address.startswith("41"):
            address = address[2:]
        topics = [str(t).lower() for t in entry.get("topics") or []]
        if address != token20 or len(topics) != 3 or topics[0] != TRANSFER_TOPIC:
            continue
        if topics[1][:24] != "0" * 24 or topics[2][:24] != "0" * 24:
            continue
        try:
            amount = int(str(entry.get("data") or "0"), 16)
            sender = hex_to_address(topics[1][24:])
            recipient = hex_to_address(topics[2][24:])
        except (ValueError, InvalidAddress):
            continue
        out.append(TokenTransfer(txid, token, sender, recipient, amount, index))
    return out


def _int(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ChainResponseError(f"the node's {key} is not an integer")
    return value


def _decode_message(value: Any) -> str:
    text = str(value or "")
    try:
        return bytes.fromhex(text).decode("utf-8", "replace")
    except ValueError:
        return text


def _revert_reason(output: str) -> str:
    """The reason in a revert's return data: Error(string) or Panic(uint256); "" for anything else."""
    try:
        data = bytes.fromhex(output)
    except ValueError:
        return ""
    selector, body = data[:4].hex(), data[4:]
    if selector == ERROR_SELECTOR and len(body) >= 64:
        offset = int.from_bytes(body[:32], "big")
        if offset > len(body) - 32:
            return ""
        length = int.from_bytes(body[offset : offset + 32], "big")
        text = body[offset + 32 : offset + 32 + length]
        return text.decode("utf-8", "replace")[:300] if len(text) == length else ""
    if selector == PANIC_SELECTOR and len(body) == 32:
        return f"Panic(0x{int.from_bytes(body, 'big'):x})"
    return ""


def _parse_constant_call(answer: dict[str, Any], what: str) -> tuple[Simulation, str]:
    """A `triggerconstantcontract` answer as (Simulation, first constant_result hex).

    java-tron's forms (framework/.../Wallet.java callConstantContract and
    TriggerConstantContractServlet): the call ran -> `result.result` true, `energy_used`,
    `energy_penalty` (omitted when 0), `constant_result`, and `transaction.ret[0]` `{}` (SUCESS is
    the default and is not rendered) or `{"ret": "FAILED"}` with `result.message` "REVERT opcode
    executed" on a revert. The call did not run -> `result.code` (CONTRACT_VALIDATE_ERROR,
    OTHER_ERROR) with a message and no `result.result`: that is no revert, we learnt nothing.
    """
    result = answer.get("result")
    if not isinstance(result, dict):
        raise ChainResponseError(f"{what}: the node's answer has no result")
    message = _decode_message(result.get("message"))[:300]
    code = result.get("code")
    if code is not None and code != "SUCCESS":
        raise ChainResponseError(f"{what}: {code} {message}".rstrip())
    if result.get("result") is not True:
        raise ChainResponseError(f"{what}: the call did not run: {message or 'no result'}")
    outputs = answer.get("constant_result", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ChainResponseError(f"{what}: malformed constant_result")
    output = outputs[0].lower() if outputs else ""
    ret = ""
    transaction = answer.get("transaction")
    if isinstance(transaction, dict):
        rets = transaction.get("ret")
        if isinstance(rets, list) and rets and isinstance(rets[0], dict):
            ret = str(rets[0].get("ret", ""))
    energy_used = _int(answer, "energy_used")
    energy_penalty = _int(answer, "energy_penalty")
    if energy_used < 0 or not 0 <= energy_penalty <= energy_used:
        raise ChainResponseError(
            f"{what}: energy_used {energy_used} / energy_penalty {energy_penalty} make no sense"
        )
    reverted = ret == "FAILED" or "message" in result
    if reverted:
        reason = _revert_reason(output)
        message = message or "FAILED"
        if reason:
            message = f"{message}: {reason}"
    return Simulation(reverted, energy_used, energy_penalty, message if reverted else ""), output


def _bool_word(output: str, what: str) -> bool:
    if len(output) != 64 or output.strip("0123456789abcdef") or int(output, 16) > 1:
        raise ChainResponseError(f"{what} returned {output[:80]!r}, not a bool word")
    return int(output, 16) == 1


# --- the client --------------------------------------------------------------------------------


class TronChain:
    """Everything the scanner and the pipeline ask the TRON node.

    Use as `async with TronChain(url, api_key=...) as chain:`; a client passed in is not closed.
    """

    def __init__(
        self,
        node_url: str,
        *,
        api_key: Secret | None = None,
        requests_per_second: float = 10.0,
        burst: int = 1,
        limiter: RateLimiter | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        max_connections: int = 20,
        clock: Clock = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fee_limit_margin_percent: int = 20,
        expiry_margin_ms: int = 6_000,
        chain_parameters_ttl: float = 600.0,
    ) -> None:
        if not node_url.startswith(("http://", "https://")):
            raise ValueError("node_url must be an http(s) URL")
        self.node_url = node_url.rstrip("/") + "/"
        self.limiter = limiter if limiter is not None else RateLimiter(requests_per_second, burst)
        self._owns_client = client is None
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
                transport=transport,
                follow_redirects=False,
            )
        self._client = client
        self._provider = _NodeProvider(
            self.node_url,
            client=client,
            limiter=self.limiter,
            retry=retry if retry is not None else RetryPolicy(),
            api_key=api_key,
            sleep=sleep,
        )
        self._has_key = bool(api_key)
        self.tron = AsyncTron(self._provider, conf={"fee_limit": 0, "timeout": timeout})
        self._clock = clock
        self._fee_margin = fee_limit_margin_percent
        self._expiry_margin_ms = expiry_margin_ms
        self._params_ttl = chain_parameters_ttl
        self._energy_fee: tuple[float, int] | None = None
        self._contracts: dict[str, Any] = {}
        self._contract_lock = asyncio.Lock()

    def __repr__(self) -> str:
        key = "***" if self._has_key else None
        return f"TronChain(node_url={_safe_url(self.node_url)!r}, api_key={key}, limiter={self.limiter!r})"

    async def __aenter__(self) -> TronChain:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    @property
    def requests_sent(self) -> int:
        return int(self._provider.requests_sent)

    @property
    def requests_failed(self) -> int:
        return int(self._provider.requests_failed)

    @property
    def retries(self) -> int:
        return int(self._provider.retries)

    async def _request(self, path: str, params: dict[str, Any]) -> Any:
        answer = await self._provider.make_request(path, params)
        if isinstance(answer, dict) and "Error" in answer:
            raise ChainResponseError(f"{path}: node error {str(answer['Error'])[:200]}")
        return answer

    async def _dict(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        answer = await self._request(path, params)
        if not isinstance(answer, dict):
            raise ChainResponseError(f"{path}: expected a JSON object")
        return answer

    # --- reads ---

    async def _contract(self, token: str) -> Any:
        """The token's contract object, ABI fetched once and cached."""
        contract = self._contracts.get(token)
        if contract is not None:
            return contract
        async with self._contract_lock:
            contract = self._contracts.get(token)
            if contract is None:
                check_tron_address(token)
                try:
                    contract = await self.tron.get_contract(token)
                except NotFound:
                    raise ChainResponseError(f"{token} is not a contract on this node") from None
                except ApiError as exc:
                    raise ChainResponseError(f"getcontract {token}: {exc}") from None
                names = {(e.get("name"), e.get("type", "").lower()) for e in contract.abi}
                if not {("balanceOf", "function"), ("transfer", "function")} <= names:
                    raise ChainResponseError(f"{token}'s ABI has no balanceOf/transfer: not a TRC20 token")
                self._contracts[token] = contract
        return contract

    async def token_balance(self, holder: str, token: str = USDT_MAINNET) -> int:
        """`balanceOf(holder)` in base units.

        The scanner's hot path: the call is encoded here (selector + one address word) rather than
        through tronpy's contract machinery, which costs about a millisecond of CPU per read. The
        contract's ABI is still fetched once to check that `token` is a TRC20 contract.
        """
        holder_hex = address_to_hex(holder)
        await self._contract(token)
        answer = await self._dict(
            "wallet/triggerconstantcontract",
            {
                "owner_address": holder,
                "contract_address": token,
                "function_selector": "balanceOf(address)",
                "parameter": holder_hex[2:].rjust(64, "0"),
                "visible": True,
            },
        )
        result = answer.get("result")
        if not isinstance(result, dict) or result.get("result") is not True:
            message = _decode_message(result.get("message")) if isinstance(result, dict) else ""
            raise ChainResponseError(f"balanceOf({holder}) failed: {message or 'no result'}")
        try:
            word = answer["constant_result"][0]
            value = int(word, 16)
        except (KeyError, IndexError, TypeError, ValueError):
            raise ChainResponseError(f"balanceOf({holder}): malformed answer") from None
        if len(word) != 64:
            raise ChainResponseError(f"balanceOf({holder}) returned {len(word)} hex digits, not one word")
        return value

    async def account_resources(self, address: str) -> AccountResources:
        """Activation, TRX, and energy/bandwidth left (node fields are omitted when 0)."""
        hex_address = address_to_hex(address)
        account = await self._dict("wallet/getaccount", {"address": hex_address, "visible": False})
        if not account:  # never activated: an address that only received TRC20 looks like this
            return AccountResources(address, False, 0, 0, 0, 0, 0, 0, 0)
        res = await self._dict("wallet/getaccountresource", {"address": hex_address, "visible": False})
        return AccountResources(
            address=address,
            activated=True,
            trx_sun=_int(account, "balance"),
            energy_limit=_int(res, "EnergyLimit"),
            energy_used=_int(res, "EnergyUsed"),
            net_limit=_int(res, "NetLimit"),
            net_used=_int(res, "NetUsed"),
            free_net_limit=_int(res, "freeNetLimit"),
            free_net_used=_int(res, "freeNetUsed"),
        )

    async def trx_balance(self, address: str) -> int:
        account = await self._dict(
            "wallet/getaccount", {"address": address_to_hex(address), "visible": False}
        )
        return _int(account, "balance")

    async def is_activated(self, address: str) -> bool:
        account = await self._dict(
            "wallet/getaccount", {"address": address_to_hex(address), "visible": False}
        )
        return bool(account)

    async def energy_fee(self) -> int:
        """Sun per energy unit (chain parameter getEnergyFee), cached for `chain_parameters_ttl`."""
        now = time.monotonic()
        if self._energy_fee is not None and now - self._energy_fee[0] < self._params_ttl:
            return self._energy_fee[1]
        params = await self._dict("wallet/getchainparameters", {})
        for entry in params.get("chainParameter") or []:
            if entry.get("key") == "getEnergyFee":
                fee = entry.get("value")
                if not isinstance(fee, int) or isinstance(fee, bool) or fee <= 0:
                    raise ChainResponseError(f"getEnergyFee is {fee!r}")
                self._energy_fee = (now, fee)
                return fee
        raise ChainResponseError("the node's chain parameters have no getEnergyFee")

    async def _block(self, path: str) -> BlockRef:
        block = await self._dict(path, {"visible": False})
        try:
            header = block["block_header"]["raw_data"]
            return BlockRef(int(header.get("number", 0)), str(block["blockID"]), int(header["timestamp"]))
        except (KeyError, TypeError, ValueError):
            raise ChainResponseError(f"{path}: malformed block") from None

    async def latest_solid_block(self) -> BlockRef:
        return await self._block("walletsolidity/getnowblock")

    async def latest_block(self) -> BlockRef:
        return await self._block("wallet/getnowblock")

    async def head_clock_skew_seconds(self) -> float:
        """The node's head-block time minus the host clock, in seconds (positive: the chain is ahead).

        Blocks come every 3 s: a healthy node is at most a few seconds "behind"; far off means a
        wrong host clock or a stalled node."""
        head = await self.latest_block()
        return head.timestamp_ms / 1000 - self._clock().timestamp()

    async def _constant_call(
        self, owner: str, contract: str, selector: str, parameter: str
    ) -> dict[str, Any]:
        """`wallet/triggerconstantcontract` as java-tron answers it (visible: T-addresses, plain text)."""
        return await self._dict(
            "wallet/triggerconstantcontract",
            {
                "owner_address": owner,
                "contract_address": contract,
                "function_selector": selector,
                "parameter": parameter,
                "visible": True,
            },
        )

    async def simulate_transfer(self, owner: str, destination: str, amount: int, *, token: str) -> Simulation:
        """Run `transfer(destination, amount)` from `owner` as a constant call: would it revert, and
        how much energy does it really use (dynamic-energy penalty included)?

        Nothing is signed or sent. java-tron answers for any owner, activated or not, with or without
        TRX (a constant call's energy limit does not come from the caller's account), so an address
        that only ever received the token is simulated like any other. A token whose `transfer`
        returns false instead of reverting is reported as reverted: the money would not move.
        Raises ChainResponseError when the call did not run (e.g. CONTRACT_VALIDATE_ERROR).
        """
        check_tron_address(owner)
        check_tron_address(destination)
        check_tron_address(token)
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 2**256:
            raise ValueError("amount must be a positive integer in base units")
        what = f"transfer simulation {owner} -> {destination}"
        answer = await self._constant_call(
            owner, token, "transfer(address,uint256)", transfer_data(destination, amount)[8:]
        )
        simulation, output = _parse_constant_call(answer, what)
        if simulation.reverted or not output:  # no return data: a token whose transfer returns nothing
            return simulation
        if not _bool_word(output, what):
            return Simulation(
                True, simulation.energy_used, simulation.energy_penalty, "transfer returned false"
            )
        return simulation

    async def is_blacklisted(self, address: str, *, token: str) -> bool:
        """Tether's `isBlackListed(address)`: a listed address's transfers revert (its funds are frozen)."""
        check_tron_address(address)
        check_tron_address(token)
        what = f"isBlackListed({address})"
        answer = await self._constant_call(
            address, token, "isBlackListed(address)", address_to_hex(address)[2:].rjust(64, "0")
        )
        simulation, output = _parse_constant_call(answer, what)
        if simulation.reverted:
            raise ChainResponseError(f"{what} reverted: {simulation.message}")
        return _bool_word(output, what)

    async def check_resources(
        self,
        owner: str,
        destination: str,
        token: str,
        *,
        energy_needed: int,
        bandwidth_needed: int = TRANSFER_BANDWIDTH,
    ) -> ResourceCheck:
        """Can `owner` send this transfer now without burning TRX? Broadcast only when `.ok`.

        `energy_needed` is what the caller measured (`simulate_transfer(...).energy_used`); nothing
        here guesses it. `destination` and `token` name the transfer being checked.
        """
        for number, name in ((energy_needed, "energy_needed"), (bandwidth_needed, "bandwidth_needed")):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        res = await self.account_resources(owner)
        reasons: list[str] = []
        if not res.activated:
            reasons.append("the address is not activated")
        if res.energy_available < energy_needed:
            reasons.append(f"energy {res.energy_available} < {energy_needed} needed")
        if not res.covers_bandwidth(bandwidth_needed):
            reasons.append(
                f"bandwidth {max(res.net_available, res.free_net_available)} < {bandwidth_needed} needed"
            )
        return ResourceCheck(
            ok=not reasons,
            activated=res.activated,
            energy_needed=energy_needed,
            energy_available=res.energy_available,
            bandwidth_needed=bandwidth_needed,
            bandwidth_available=max(res.net_available, res.free_net_available),
            reasons=tuple(reasons),
        )

    # --- transfers ---

    async def fee_limit_for(self, energy_needed: int) -> int:
        """fee_limit covering `energy_needed` plus the margin: java-tron caps the energy a call may
        use at fee_limit / energy fee even when the energy is delegated."""
        fee = await self.energy_fee()
        return -(-energy_needed * fee * (100 + self._fee_margin) // 100)

    async def build_transfer(
        self,
        owner: str,
        destination: str,
        amount: int,
        *,
        token: str = USDT_MAINNET,
        fee_limit_sun: int,
        lifetime_ms: int = DEFAULT_LIFETIME_MS,
    ) -> UnsignedTransfer:
        """Build `transfer(destination, amount)` from `owner` and verify it; nothing is signed.

        `fee_limit_sun` is the caller's: `fee_limit_for(simulation.energy_used)`.
        """
        check_tron_address(owner)
        check_tron_address(destination)
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise ValueError("amount must be a positive integer in base units")
        if not isinstance(fee_limit_sun, int) or isinstance(fee_limit_sun, bool) or fee_limit_sun <= 0:
            raise ValueError("fee_limit_sun must be a positive integer (fee_limit_for(energy_needed))")
        contract = await self._contract(token)
        # Stamped from the node's head-block time, not the host clock (tronpy stamps the host's): a
        # host clock that is off cannot make the transfer expired, or too far ahead, for the chain.
        started = time.monotonic()  # before the head read: the lifetime left is never overstated
        head = await self.latest_block()
        try:
            builder = await contract.functions.transfer(destination, amount)
            builder = builder.with_owner(owner).fee_limit(fee_limit_sun)
            builder._raw_data["timestamp"] = head.timestamp_ms
            builder._raw_data["expiration"] = head.timestamp_ms + lifetime_ms
            tx = await builder.build()
        except (ApiError, UnknownError, TronValidationError, TransactionError, TvmError) as exc:
            raise ChainResponseError(f"building the transfer failed: {exc}") from None
        raw_data = copy.deepcopy(tx.to_json()["raw_data"])
        node_txid = str(tx.txid)
        decoded = verify_transfer(
            raw_data,
            node_txid,
            owner=owner,
            token=token,
            destination=destination,
            amount=amount,
            fee_limit_sun=fee_limit_sun,
        )
        return UnsignedTransfer(
            txid=node_txid.lower(),
            raw_data=raw_data,
            owner=owner,
            destination=destination,
            token=token,
            amount=amount,
            fee_limit_sun=fee_limit_sun,
            expiration_ms=decoded.expiration_ms,
            built_monotonic=started,
        )

    def sign_transfer(
        self, unsigned: UnsignedTransfer, key: SigningKey, *, min_remaining_ms: int = 5_000
    ) -> SignedTransfer:
        """Sign after re-verifying; the key must belong to the transfer's owner."""
        if key.address != unsigned.owner:
            raise UnsafeTransaction(f"the key for {key.address} cannot sign a transfer from {unsigned.owner}")
        verify_transfer(
            unsigned.raw_data,
            unsigned.txid,
            owner=unsigned.owner,
            token=unsigned.token,
            destination=unsigned.destination,
            amount=unsigned.amount,
            fee_limit_sun=unsigned.fee_limit_sun,
        )
        if unsigned.remaining_ms() <= min_remaining_ms:
            raise TransactionExpired(
                f"transaction {unsigned.txid} expires at {unsigned.expires_at.isoformat()}"
            )
        signature = key.sign_digest(bytes.fromhex(unsigned.txid)).hex()
        if _recover_signer(unsigned.txid, signature) != unsigned.owner:
            raise UnsafeTransaction("the signature does not recover to the owner")
        return SignedTransfer(
            txid=unsigned.txid,
            raw_data=unsigned.raw_data,
            signature=signature,
            owner=unsigned.owner,
            destination=unsigned.destination,
            token=unsigned.token,
            amount=unsigned.amount,
            fee_limit_sun=unsigned.fee_limit_sun,
            expiration_ms=unsigned.expiration_ms,
        )

    async def broadcast(self, signed: SignedTransfer) -> BroadcastResult:
        """Send the signed bytes. DUP_TRANSACTION_ERROR means the node already has them (not a new tx)."""
        answer = await self._dict("wallet/broadcasttransaction", signed.broadcast_payload())
        if answer.get("result") is True:
            node_txid = str(answer.get("txid") or signed.txid).lower()
            if node_txid != signed.txid:
                raise ChainResponseError(f"the node accepted {signed.txid} under another txid {node_txid}")
            return BroadcastResult(signed.txid, BroadcastOutcome.ACCEPTED)
        code = str(answer.get("code", "UNKNOWN"))
        message = _decode_message(answer.get("message"))[:300]
        if code == "DUP_TRANSACTION_ERROR":
            return BroadcastResult(signed.txid, BroadcastOutcome.ALREADY_KNOWN)
        if code in _TRANSIENT_CODES:
            raise ChainUnavailable(f"broadcast of {signed.txid}: {code} {message}")
        raise BroadcastRejected(code, message)

    async def transaction_status(
        self, txid: str, *, expiration_ms: int, token: str = USDT_MAINNET
    ) -> TransferStatus:
        """The transaction's fate as the solidified chain tells it.

        EXPIRED is only said when no block can include it any more: java-tron refuses a transaction
        whose expiration is at or before the head block's time, so once the latest *solidified*
        block is `expiry_margin_ms` past the expiration (two 3-s blocks), every block that could hold
        it is solidified, and the solidity node does not know it.
        """
        # The solid head is read BEFORE the receipt: if the transaction solidified between two
        # calls made the other way round, "not found" + a late head would read as EXPIRED and
        # the pipeline would sign a second transfer while the first one lands.
        solid = await self.latest_solid_block()
        info = await self._dict("walletsolidity/gettransactioninfobyid", {"value": txid, "visible": False})
        if not info:
            if solid.timestamp_ms >= expiration_ms + self._expiry_margin_ms:
                # Behind a load balancer the two calls may reach different nodes: ask the full
                # node too, which knows every transaction it has seen, solid or not.
                if await self.transaction_known(txid):
                    return TransferStatus(txid, TxState.PENDING)
                return TransferStatus(txid, TxState.EXPIRED)
            return TransferStatus(txid, TxState.PENDING)
        if str(info.get("id", txid)).lower() != txid.lower():
            raise ChainResponseError(f"asked for {txid}, the node answered about {info.get('id')}")
        receipt = info.get("receipt") or {}
        # java-tron writes SUCCESS explicitly for a contract call; a missing result is no evidence.
        result = str(receipt.get("result", "MISSING_RESULT"))
        failed = info.get("result") == "FAILED" or result != "SUCCESS"
        reason = None
        if failed:
            reason = f"{result}: {_decode_message(info.get('resMessage'))}".rstrip(": ")
        return TransferStatus(
            txid=txid,
            state=TxState.FAILED if failed else TxState.CONFIRMED,
            reason=reason,
            block_number=_int(info, "blockNumber"),
            fee_sun=_int(info, "fee"),
            energy_used=_int(receipt, "energy_usage_total"),
            net_usage=_int(receipt, "net_usage"),
            transfers=tuple(decode_transfer_logs(info, token)) if not failed else (),
        )

    async def transaction_known(self, txid: str) -> bool:
        """Whether the full node has seen the transaction (in a block or in its pending pool)."""
        known = await self._dict("wallet/gettransactionbyid", {"value": txid, "visible": False})
        return bool(known)

    async def solid_transaction_infos(self, block_number: int) -> list[dict[str, Any]]:
        """All receipts of a solidified block (visible=false: log addresses are bare 20-byte hex)."""
        answer = await self._request(
            "walletsolidity/gettransactioninfobyblocknum", {"num": block_number, "visible": False}
        )
        if isinstance(answer, dict) and not answer:
            return []
        if not isinstance(answer, list):
            raise ChainResponseError("gettransactioninfobyblocknum: expected a JSON array")
        return [entry for entry in answer if isinstance(entry, dict)]

    async def token_transfers_in_block(
        self, block_number: int, token: str = USDT_MAINNET
    ) -> list[TokenTransfer]:
        """Successful Transfer events of `token` in a solidified block (the scanner's follow mode)."""
        out: list[TokenTransfer] = []
        for info in await self.solid_transaction_infos(block_number):
            receipt = info.get("receipt") or {}
            if info.get("result") == "FAILED" or receipt.get("result", "SUCCESS") != "SUCCESS":
                continue
            out.extend(decode_transfer_logs(info, token))
        return out
