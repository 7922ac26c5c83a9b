"""`SandboxControl`: drive a running sandbox (node + provider) over HTTP only, from another process.

End-to-end tests start `python -m sweeper.sandbox`, read its JSON line, and use this client for
everything they do to the outside world: fund deposit addresses, read balances and resources,
produce blocks, record transactions to be found by following blocks (a deposit by an internal
call, a failed transfer with a log), hold broadcasts or solidification, switch the node's and the
provider's failures, and list the provider's orders. It talks to the node's and the provider's
`/_sandbox/*` routes (loopback only).

    control = SandboxControl(info["node_url"], info["provider_url"])
    control.credit_usdt(deposit, 25_000_000)
    control.wait_until(lambda: control.usdt_balance(deposit) == 0, timeout=30)

Every method raises `SandboxControlError` if the sandbox refuses the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

HoldPointName = Literal["before_create", "after_create"]
CallbackFormName = Literal["compact", "default", "pretty"]
RepeatedOutTradeNoName = Literal["newest_wins", "first_wins", "refused", "idempotent"]


class SandboxControlError(Exception):
    """The sandbox answered a control request with an error (or not at all)."""


@dataclass(frozen=True)
class NodeState:
    head: int
    solid: int
    pending: int
    held_broadcasts: int
    now_ms: int
    block_interval: float | None
    solid_lag: int
    solidification_held: bool
    inclusion_held: bool
    usdt_contract: str
    blacklisted: tuple[str, ...] = ()  # USDT's freeze list: these senders' transfers revert
    usdt_paused: bool = False
    usdt_energy_penalty: int = 0  # extra energy every USDT transfer uses

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeState:
        interval = data.get("block_interval")
        return cls(
            head=int(data["head"]),
            solid=int(data["solid"]),
            pending=int(data["pending"]),
            held_broadcasts=int(data["held_broadcasts"]),
            now_ms=int(data["now_ms"]),
            block_interval=None if interval is None else float(interval),
            solid_lag=int(data["solid_lag"]),
            solidification_held=bool(data["solidification_held"]),
            inclusion_held=bool(data["inclusion_held"]),
            usdt_contract=str(data["usdt_contract"]),
            blacklisted=tuple(str(a) for a in data.get("blacklisted") or ()),
            usdt_paused=bool(data.get("usdt_paused", False)),
            usdt_energy_penalty=int(data.get("usdt_energy_penalty", 0)),
        )


@dataclass(frozen=True)
class AccountState:
    """The world's record of an address (present even if never activated)."""

    address: str
    activated: bool
    usdt: int  # base units of the world's USDT (or of `contract` when asked for)
    trx_sun: int
    delegated_energy: int
    energy_used: int
    energy_available: int
    delegated_bandwidth: int
    bandwidth_used: int
    bandwidth_available: int
    free_bandwidth_used: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AccountState:
        return cls(
            address=str(data["address"]),
            activated=bool(data["activated"]),
            usdt=int(data["token_balance"]),
            trx_sun=int(data["trx_sun"]),
            delegated_energy=int(data["delegated_energy"]),
            energy_used=int(data["energy_used"]),
            energy_available=int(data["energy_available"]),
            delegated_bandwidth=int(data["delegated_bandwidth"]),
            bandwidth_used=int(data["bandwidth_used"]),
            bandwidth_available=int(data["bandwidth_available"]),
            free_bandwidth_used=int(data["free_bandwidth_used"]),
        )


@dataclass(frozen=True)
class ChainTransaction:
    """A transaction the node accepted (pending, mined or solid)."""

    txid: str
    owner: str
    to: str | None
    contract: str | None  # the token contract for TRC20 transfers, None for TRX
    contract_type: str
    amount: int
    fee_limit: int
    expiration_ms: int
    block_number: int | None  # None while pending
    solid: bool
    result: str | None  # SUCCESS / OUT_OF_ENERGY / REVERT once mined
    energy_usage: int
    energy_fee_sun: int
    net_usage: int
    net_fee_sun: int
    # TransactionInfo.fee: every sun burnt (energy, bandwidth, and a TRX transfer's 1 TRX for
    # creating its destination); 0 while pending for a token transfer (its energy is not run yet).
    fee_sun: int = 0

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChainTransaction:
        block = data.get("block_number")
        return cls(
            txid=str(data["txid"]),
            owner=str(data["owner"]),
            to=None if data.get("to") is None else str(data["to"]),
            contract=None if data.get("contract") is None else str(data["contract"]),
            contract_type=str(data["contract_type"]),
            amount=int(data["amount"]),
            fee_limit=int(data["fee_limit"]),
            expiration_ms=int(data["expiration_ms"]),
            block_number=None if block is None else int(block),
            solid=bool(data["solid"]),
            result=None if data.get("result") is None else str(data["result"]),
            energy_usage=int(data["energy_usage"]),
            energy_fee_sun=int(data["energy_fee_sun"]),
            net_usage=int(data["net_usage"]),
            net_fee_sun=int(data["net_fee_sun"]),
            fee_sun=int(data.get("fee_sun", 0)),
        )


@dataclass(frozen=True)
class CallbackAttemptView:
    attempt: int
    status_code: int | None
    error: str | None
    suppressed: bool


@dataclass(frozen=True)
class ProviderOrder:
    serial: str
    out_trade_no: str | None
    receive_address: str
    to_address: str | None
    callback_url: str | None
    scene: int
    status: int  # 30 until finished; then 40 (delegated), 0, 41 or 43
    outcome: int  # the status it will reach
    energy_amount: int
    amount_sun: int
    delegated_energy: int
    refund_amount_sun: int
    create_time: str
    callback_attempts: tuple[CallbackAttemptView, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProviderOrder:
        return cls(
            serial=str(data["serial"]),
            out_trade_no=None if data.get("out_trade_no") is None else str(data["out_trade_no"]),
            receive_address=str(data["receive_address"]),
            to_address=None if data.get("to_address") is None else str(data["to_address"]),
            callback_url=None if data.get("callback_url") is None else str(data["callback_url"]),
            scene=int(data["scene"]),
            status=int(data["status"]),
            outcome=int(data["outcome"]),
            energy_amount=int(data["energy_amount"]),
            amount_sun=int(data["amount_sun"]),
            delegated_energy=int(data["delegated_energy"]),
            refund_amount_sun=int(data["refund_amount_sun"]),
            create_time=str(data["create_time"]),
            callback_attempts=tuple(
                CallbackAttemptView(
                    attempt=int(a["attempt"]),
                    status_code=None if a.get("status_code") is None else int(a["status_code"]),
                    error=None if a.get("error") is None else str(a["error"]),
                    suppressed=bool(a["suppressed"]),
                )
                for a in data.get("callback_attempts") or []
            ),
        )


@dataclass(frozen=True)
class ProviderSwitches:
    error_after_create: int
    error_status: int
    hold: str | None  # "before_create" / "after_create" while POSTs are held
    outcome: int
    callbacks_enabled: bool
    duplicate_callbacks: int
    hold_callbacks: bool
    callback_form: str
    index_data_empty_on_bad_key: bool
    repeated_out_trade_no: str  # newest_wins / first_wins / refused / idempotent


@dataclass(frozen=True)
class ProviderState:
    balance_sun: int
    post_count: int  # collect-manual POSTs received, accepted or not
    held_posts: int  # POSTs being held open right now
    orders: int
    orders_by_status: dict[int, int]
    callback_attempts: int
    held_callbacks: int
    idle: bool  # nothing scheduled or being delivered
    delegation_delay: float | None
    switches: ProviderSwitches

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProviderState:
        sw = data["switches"]
        delay = data.get("delegation_delay")
        return cls(
            balance_sun=int(data["balance_sun"]),
            post_count=int(data["post_count"]),
            held_posts=int(data["held_posts"]),
            orders=int(data["orders"]),
            orders_by_status={int(k): int(v) for k, v in dict(data["orders_by_status"]).items()},
            callback_attempts=int(data["callback_attempts"]),
            held_callbacks=int(data["held_callbacks"]),
            idle=bool(data["idle"]),
            delegation_delay=None if delay is None else float(delay),
            switches=ProviderSwitches(
                error_after_create=int(sw["error_after_create"]),
                error_status=int(sw["error_status"]),
                hold=None if sw.get("hold") is None else str(sw["hold"]),
                outcome=int(sw["outcome"]),
                callbacks_enabled=bool(sw["callbacks_enabled"]),
                duplicate_callbacks=int(sw["duplicate_callbacks"]),
                hold_callbacks=bool(sw["hold_callbacks"]),
                callback_form=str(sw["callback_form"]),
                index_data_empty_on_bad_key=bool(sw["index_data_empty_on_bad_key"]),
                repeated_out_trade_no=str(sw.get("repeated_out_trade_no", "newest_wins")),
            ),
        )


class SandboxControl:
    """Synchronous HTTP client for the sandbox's control routes. Close it (or use `with`)."""

    def __init__(self, node_url: str, provider_url: str, *, timeout: float = 10.0) -> None:
        self.node_url = node_url.rstrip("/")
        self.provider_url = provider_url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, trust_env=False, follow_redirects=False)

    def __repr__(self) -> str:
        return f"SandboxControl(node_url={self.node_url!r}, provider_url={self.provider_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------

    def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise SandboxControlError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise SandboxControlError(f"{method} {url}: HTTP {resp.status_code}: {resp.text[:300]}")
        data = resp.json()
        if not isinstance(data, dict):
            raise SandboxControlError(f"{method} {url}: expected a JSON object")
        return data

    def _node(self, op: str, **params: Any) -> NodeState:
        return NodeState.from_json(
            self._call("POST", f"{self.node_url}/_sandbox/control", json={"op": op, **params})
        )

    def _provider(self, op: str, **params: Any) -> ProviderState:
        return ProviderState.from_json(
            self._call("POST", f"{self.provider_url}/_sandbox/control", json={"op": op, **params})
        )

    # --- waiting -----------------------------------------------------------------------------

    @staticmethod
    def wait_until(
        predicate: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.02, what: str = ""
    ) -> None:
        """Poll `predicate` until true; TimeoutError at the deadline (waits on state, not on time)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"sandbox: {what or 'condition'} not reached within {timeout} s")
            time.sleep(interval)

    # --- node: the world's accounts ---------------------------------------------------------

    def credit_usdt(self, address: str, amount: int) -> NodeState:
        """A USDT deposit (base units) arriving at `address` (it does not activate the address)."""
        return self._node("credit_token", address=address, amount=amount)

    def credit_token(self, address: str, amount: int, contract: str | None = None) -> NodeState:
        """A TRC20 deposit; `contract` defaults to the world's USDT."""
        params: dict[str, Any] = {"address": address, "amount": amount}
        if contract is not None:
            params["contract"] = contract
        return self._node("credit_token", **params)

    def credit_trx(self, address: str, sun: int) -> NodeState:
        """TRX arriving (activates the address, as on chain)."""
        return self._node("credit_trx", address=address, sun=sun)

    def activate(self, address: str) -> NodeState:
        return self._node("activate", address=address)

    def delegate_energy(self, address: str, amount: int) -> NodeState:
        return self._node("delegate_energy", address=address, amount=amount)

    def add_bandwidth(self, address: str, amount: int) -> NodeState:
        return self._node("add_bandwidth", address=address, amount=amount)

    def use_free_bandwidth(self, address: str, amount: int | None = None) -> NodeState:
        """Spend `amount` bytes of the address's daily free bandwidth (all of it by default)."""
        if amount is None:
            return self._node("use_free_bandwidth", address=address)
        return self._node("use_free_bandwidth", address=address, amount=amount)

    def reset_free_bandwidth(self, address: str) -> NodeState:
        return self._node("reset_free_bandwidth", address=address)

    def blacklist(self, address: str, held: bool = True) -> NodeState:
        """Put `address` on (or, held=False, take it off) USDT's freeze list: its transfers revert."""
        return self._node("blacklist", address=address, held=held)

    def pause_usdt(self, held: bool = True) -> NodeState:
        """Pause (held=False: unpause) the USDT contract: every transfer reverts."""
        return self._node("pause_usdt", held=held)

    def reclaim_energy(self, address: str) -> NodeState:
        """The provider takes its delegation to `address` back (only what is already used stays)."""
        return self._node("reclaim_energy", address=address)

    def set_energy_penalty(self, amount: int) -> NodeState:
        """Extra energy every USDT transfer uses from now on (the dynamic-energy penalty)."""
        return self._node("energy_penalty", amount=amount)

    def account(self, address: str, contract: str | None = None) -> AccountState:
        params = {"address": address}
        if contract is not None:
            params["contract"] = contract
        return AccountState.from_json(self._call("GET", f"{self.node_url}/_sandbox/account", params=params))

    def usdt_balance(self, address: str) -> int:
        return self.account(address).usdt

    def trx_balance(self, address: str) -> int:
        return self.account(address).trx_sun

    def transactions(self, *, owner: str | None = None, to: str | None = None) -> list[ChainTransaction]:
        """Transactions the node accepted (pending included), oldest first, filtered by owner / to."""
        params = {k: v for k, v in (("owner", owner), ("to", to)) if v is not None}
        data = self._call("GET", f"{self.node_url}/_sandbox/transactions", params=params)
        return [ChainTransaction.from_json(t) for t in data["transactions"]]

    # --- node: transactions the sweeper does not send (pending until the next block) -----------

    def _recorded(self, op: str, **params: Any) -> str:
        data = self._call("POST", f"{self.node_url}/_sandbox/control", json={"op": op, **params})
        return str(data["txid"])

    def token_transfer(self, address: str, amount: int, contract: str | None = None) -> str:
        """A successful token transfer (USDT unless `contract`) to `address`; returns its txid."""
        return self._recorded("token_transfer", address=address, amount=amount, contract=contract)

    def internal_deposit(self, address: str, amount: int, contract: str | None = None) -> str:
        """A payout contract's call whose token Transfer to `address` comes from an internal call."""
        return self._recorded("internal_deposit", address=address, amount=amount, contract=contract)

    def failed_transfer_with_log(self, address: str, amount: int, contract: str | None = None) -> str:
        """A REVERTed transfer whose info still carries a Transfer log to `address` (nothing moves)."""
        return self._recorded("failed_transfer_with_log", address=address, amount=amount, contract=contract)

    def trx_transfer(self, address: str, sun: int) -> str:
        """A TRX transfer to `address` (no logs)."""
        return self._recorded("trx_transfer", address=address, sun=sun)

    # --- node: blocks and broadcasts --------------------------------------------------------

    def node_state(self) -> NodeState:
        return NodeState.from_json(self._call("GET", f"{self.node_url}/_sandbox/state"))

    def produce_blocks(self, count: int = 1) -> NodeState:
        return self._node("produce_blocks", count=count)

    def solidify(self) -> NodeState:
        """Mine what is pending, then produce blocks until all of it is solid (unless held)."""
        return self._node("solidify")

    def set_block_interval(self, seconds: float) -> NodeState:
        """Run the block ticker every `seconds`; 0 stops it (blocks only on demand)."""
        return self._node("block_interval", seconds=seconds)

    def advance_time(self, seconds: float) -> NodeState:
        """Move the chain's clock forward (expires transactions without waiting)."""
        return self._node("advance_time", seconds=seconds)

    def hold_broadcasts(self) -> NodeState:
        """broadcasttransaction requests stay open, unprocessed, until `release_broadcasts()`."""
        return self._node("hold_broadcasts", held=True)

    def release_broadcasts(self) -> NodeState:
        return self._node("hold_broadcasts", held=False)

    def hold_solidification(self, held: bool = True) -> NodeState:
        return self._node("hold_solidification", held=held)

    def release_solidification(self) -> NodeState:
        return self._node("hold_solidification", held=False)

    def hold_inclusion(self, held: bool = True) -> NodeState:
        """Accepted transactions stay pending (never mined) while held."""
        return self._node("hold_inclusion", held=held)

    def set_node_switches(
        self,
        *,
        latency_s: float | None = None,
        max_rps: float | None = None,
        error_rate: float | None = None,
        fail_next: int | None = None,
        fail_status: int | None = None,
        forge_txid: bool | None = None,
        drop_broadcasts: bool | None = None,
        no_transaction_info: bool | None = None,
        lagging_infos: int | None = None,
        fail_after_broadcast: int | None = None,
    ) -> NodeState:
        """Set the node's failure switches (None = leave unchanged; `max_rps=0` removes the limit).

        no_transaction_info: a node without the transaction-info store (gettransactioninfobyblocknum
        always `[]`); lagging_infos: each block with transactions answers `[]` to its first N
        gettransactioninfobyblocknum requests (a load-balanced endpoint with a backend behind);
        fail_after_broadcast: the next N broadcasts are accepted, then answered `fail_status`.
        """
        changes: dict[str, Any] = {
            k: v
            for k, v in (
                ("latency_s", latency_s),
                ("error_rate", error_rate),
                ("fail_next", fail_next),
                ("fail_status", fail_status),
                ("forge_txid", forge_txid),
                ("drop_broadcasts", drop_broadcasts),
                ("no_transaction_info", no_transaction_info),
                ("lagging_infos", lagging_infos),
                ("fail_after_broadcast", fail_after_broadcast),
            )
            if v is not None
        }
        if max_rps is not None:
            changes["max_rps"] = max_rps if max_rps > 0 else None
        return self._node("switches", **changes)

    # --- provider ---------------------------------------------------------------------------

    def provider_state(self) -> ProviderState:
        return ProviderState.from_json(self._call("GET", f"{self.provider_url}/_sandbox/state"))

    def orders(self, out_trade_no: str | None = None, *, serial: str | None = None) -> list[ProviderOrder]:
        """The provider's orders, oldest first (all, or those with this out_trade_no / serial)."""
        params = {k: v for k, v in (("out_trade_no", out_trade_no), ("serial", serial)) if v is not None}
        data = self._call("GET", f"{self.provider_url}/_sandbox/orders", params=params)
        return [ProviderOrder.from_json(o) for o in data["orders"]]

    def order_counts(self) -> dict[str | None, int]:
        """How many orders each out_trade_no has (exactly-once checks: every value should be 1)."""
        counts: dict[str | None, int] = {}
        for order in self.orders():
            counts[order.out_trade_no] = counts.get(order.out_trade_no, 0) + 1
        return counts

    def set_provider_switches(
        self,
        *,
        error_after_create: int | None = None,
        error_status: int | None = None,
        outcome: int | None = None,
        callbacks_enabled: bool | None = None,
        duplicate_callbacks: int | None = None,
        hold_callbacks: bool | None = None,
        callback_form: CallbackFormName | None = None,
        index_data_empty_on_bad_key: bool | None = None,
        repeated_out_trade_no: RepeatedOutTradeNoName | None = None,
        error_before_create: int | None = None,
        down_status: int | None = None,
        refund_percent: int | None = None,
        callback_age_seconds: int | None = None,
    ) -> ProviderState:
        """Set the provider's switches (None = leave unchanged).

        error_after_create: the next N accepted orders answer `error_status` (500) after being
        created; outcome: the final status new orders reach (40, or 0 / 41 / 43); callbacks_*:
        suppress, duplicate or buffer callbacks (buffered ones go out on `release_callbacks`);
        error_before_create: the next N POSTs answer `error_status` with nothing created;
        down_status: non-zero, the whole API answers it (0: back up); refund_percent: what an
        order ending 41 refunds; callback_age_seconds: callbacks carry a TIMESTAMP this old;
        repeated_out_trade_no: what a POST with a used out_trade_no does and which order the lookup
        by out_trade_no answers (undocumented; sandbox.provider_server.RepeatedOutTradeNo).
        """
        changes: dict[str, Any] = {
            k: v
            for k, v in (
                ("error_after_create", error_after_create),
                ("error_status", error_status),
                ("outcome", outcome),
                ("callbacks_enabled", callbacks_enabled),
                ("duplicate_callbacks", duplicate_callbacks),
                ("hold_callbacks", hold_callbacks),
                ("callback_form", callback_form),
                ("index_data_empty_on_bad_key", index_data_empty_on_bad_key),
                ("repeated_out_trade_no", repeated_out_trade_no),
                ("error_before_create", error_before_create),
                ("down_status", down_status),
                ("refund_percent", refund_percent),
                ("callback_age_seconds", callback_age_seconds),
            )
            if v is not None
        }
        return self._provider("switches", **changes)

    def error_after_create(self, count: int = 1, status: int = 500) -> ProviderState:
        return self.set_provider_switches(error_after_create=count, error_status=status)

    def set_outcome(self, status: int) -> ProviderState:
        return self.set_provider_switches(outcome=status)

    def hold_posts(self, point: HoldPointName = "after_create") -> ProviderState:
        """Hold collect-manual POSTs open at `point` until `release_posts()`."""
        return self._provider("hold_posts", point=point)

    def release_posts(self) -> ProviderState:
        return self._provider("release_posts")

    def hold_callbacks(self) -> ProviderState:
        return self.set_provider_switches(hold_callbacks=True)

    def release_callbacks(self, *, reverse: bool = False) -> ProviderState:
        """Send the buffered callbacks (reverse=True: in reverse order) and stop buffering."""
        return self._provider("release_callbacks", reverse=reverse)

    def set_delegation_delay(self, seconds: float | None) -> ProviderState:
        """Delay before new orders delegate; None = only on `complete(serial)`."""
        return self._provider("delegation_delay", seconds=seconds)

    def complete(self, serial: str, status: int | None = None) -> ProviderState:
        """Finish an order now with `status` (default: its planned outcome)."""
        params: dict[str, Any] = {"serial": serial}
        if status is not None:
            params["status"] = status
        return self._provider("complete", **params)

    def set_provider_balance(self, sun: int) -> ProviderState:
        return self._provider("set_balance", sun=sun)
