"""A strict fake of the itrx.io energy provider, on 127.0.0.1, for tests and `sweeper demo`.

Strict where the real service is documented, so a client that passes against it is right:
API-KEY wrong or missing → HTTP 403; stale or missing TIMESTAMP, a body that is not the canonical
(sorted, compact) JSON, or a bad SIGNATURE → errno 1; bad or missing receive_address → HTTP 400
field errors. A rejected request creates nothing and charges nothing.

Orders start in status 30 and complete after `delegation_delay` seconds (0: at once, before the
answer; None: only when a test calls `complete(serial)`). Completing an order activates the
deposit address, gives it bandwidth and delegates energy in the shared sandbox `World` (65k if
`to_address` already holds USDT or is omitted, 131k if not), then sends a signed callback from a
background thread, retried on the documented schedule scaled by `callback_time_scale`.

Switches (attributes of `SandboxProvider.switches`, or the helper methods) let tests produce each
failure the daemon must survive: a 5xx before or after the order was created, a POST held open,
the whole API down (`down_status`), low balance, orders ending 0/41/43 (41 refunding
`refund_percent`), duplicated, reordered, stale (`callback_age_seconds`) or missing callbacks.

Test-only routes (no auth; loopback only) expose the switches to another process, used through
`sweeper.sandbox.control.SandboxControl`: `POST /_sandbox/control {"op": ...}` (switches,
hold_posts, release_posts, release_callbacks, complete, delegation_delay, set_balance),
`GET /_sandbox/state` and `GET /_sandbox/orders[?out_trade_no=&serial=]`.

Start it: `provider = SandboxProvider(world); server = provider.start(); … provider.stop()`
(`server.url` is the base_url for `ProviderClient`), or `with SandboxProvider(world) as provider:`.

This module holds the fake's state and worker; its HTTP app (the API endpoints and the test-only
routes above) is in `sweeper.sandbox.provider_app`.
"""

from __future__ import annotations

import heapq
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import httpx
import structlog
from starlette.requests import Request

from sweeper.domain import Clock, utcnow
from sweeper.provider.signing import canonical_json, sign
from sweeper.sandbox.serve import RunningServer, serve_in_thread
from sweeper.sandbox.world import USDT_ENERGY_NEW_HOLDER, USDT_ENERGY_OLD_HOLDER, World

log = structlog.get_logger(__name__)

# What the fake delegates per collect-manual order: the docs' "~65k" / "~131k", which cover what a
# USDT transfer needs (world.USDT_ENERGY_*) with a margin.
COLLECT_ENERGY_OLD_HOLDER: Final = 65_000
COLLECT_ENERGY_NEW_HOLDER: Final = 131_000
assert COLLECT_ENERGY_OLD_HOLDER >= USDT_ENERGY_OLD_HOLDER
assert COLLECT_ENERGY_NEW_HOLDER >= USDT_ENERGY_NEW_HOLDER
SWEEP_BANDWIDTH: Final = 400  # a TRC20 transfer needs ~345 bytes
# The documented callback retry schedule (seconds after each failed attempt).
CALLBACK_RETRY_SCHEDULE: Final = (15.0, 15.0, 30.0, 180.0, 600.0, 1200.0, 1800.0)

# The fake's own credentials (not secrets: the fake only ever runs on 127.0.0.1).
SANDBOX_API_KEY: Final = "sandbox-api-key"
SANDBOX_API_SECRET: Final = "sandbox-api-secret"  # noqa: S105

MSG_NOT_FOUND: Final = "找不到订单"
MSG_LOW_BALANCE: Final = "余额不足"
MSG_BAD_SIGNATURE: Final = "签名错误"
MSG_BAD_TIMESTAMP: Final = "时间戳错误"
MSG_BAD_BODY: Final = "参数格式错误"
MSG_DUPLICATE_OUT_TRADE_NO: Final = "订单号重复"  # out_trade_no already used (the REFUSED reading)


class HoldPoint(StrEnum):
    BEFORE_CREATE = "before_create"  # the POST hangs before anything is created
    AFTER_CREATE = "after_create"  # the order exists (and is charged); the answer hangs


class RepeatedOutTradeNo(StrEnum):
    """What the provider does with an out_trade_no it has already seen: undocumented (design.md,
    "What is guessed about the provider", 2), so the fake can act out each reading."""

    NEWEST_WINS = "newest_wins"  # a second, charged order; the lookup by out_trade_no answers the newest
    FIRST_WINS = "first_wins"  # a second, charged order; the lookup answers the first
    REFUSED = "refused"  # errno 1 (the documented error form), nothing created or charged
    IDEMPOTENT = "idempotent"  # answered with the existing order again, nothing new charged


class CallbackForm(StrEnum):
    """How the fake serialises and signs a callback body (the docs disagree; the verifier takes all)."""

    COMPACT = "compact"  # body = compact sorted JSON, signed as sent
    DEFAULT = "default"  # body = sorted JSON with ", " / ": ", signed as sent
    PRETTY = "pretty"  # body = indented unsorted JSON; signature over the compact sorted form


@dataclass
class Switches:
    """Failure switches. Mutate under `SandboxProvider.lock` (or through the helper methods)."""

    error_after_create: int = 0  # the next N accepted orders answer HTTP 500 after being created
    error_status: int = 500
    hold: HoldPoint | None = None  # hold collect-manual POSTs open at this point until released
    outcome: int = 40  # the final status new orders will reach: 40, or 0 / 41 / 43
    callbacks_enabled: bool = True
    duplicate_callbacks: int = 0  # extra copies of every acknowledged callback
    hold_callbacks: bool = False  # buffer ready callbacks until `release_callbacks()`
    callback_form: CallbackForm = CallbackForm.COMPACT
    repeated_out_trade_no: RepeatedOutTradeNo = RepeatedOutTradeNo.NEWEST_WINS
    # The docs say index-data answers "empty data" (not 403) to a wrong key; emulate that reading.
    index_data_empty_on_bad_key: bool = False
    price_unavailable: bool = False  # order/price answers 503 (no quote to be had)
    # The next N collect-manual POSTs answer `error_status` BEFORE creating anything (a gateway
    # error in front of the service: the client cannot tell it from an error after creating).
    error_before_create: int = 0
    # Non-zero: the whole API (collect-manual, order/query, index-data, order/price) answers this
    # HTTP status and does nothing: the provider down behind its load balancer. Callbacks and the
    # delegation of orders already placed go on (they are the provider's own background work).
    down_status: int = 0
    refund_percent: int = 100  # an order ending 41 refunds this share of its amount (docs: a refund)
    # Callbacks carry a TIMESTAMP this many seconds old: a retried callback that keeps the TIMESTAMP
    # of its first delivery (undocumented; design.md "What is guessed", 9) arrives stale.
    callback_age_seconds: int = 0


@dataclass
class SandboxOrder:
    serial: str
    out_trade_no: str | None
    receive_address: str
    to_address: str | None
    callback_url: str | None
    scene: int
    energy_amount: int
    amount_sun: int
    status: int
    outcome: int
    create_time: datetime
    refund_amount_sun: int = 0
    delegated_energy: int = 0
    delegate_hash: str | None = None
    delegate_time: datetime | None = None
    active_hash: str = ""
    bandwidth_hash: str = ""

    def as_query(self) -> dict[str, Any]:
        """The order/query answer, shaped like the docs' example."""
        details = []
        if self.delegate_hash:
            details.append(
                {
                    "delegate_hash": self.delegate_hash,
                    "delegate_time": self.delegate_time.isoformat() if self.delegate_time else None,
                    "reclaim_hash": None,
                    "reclaim_time": None,
                    "status": 20,
                }
            )
        return {
            "errno": 0,
            "receive_address": self.receive_address,
            "order_no": self.serial,
            "energy_amount": self.energy_amount,
            "pay_amount": float(self.delegated_energy),
            "amount": self.amount_sun,
            "details": details,
            "create_time": self.create_time.isoformat(),
            "api_name": "sandbox",
            "period": 0,
            "status": self.status,
            "refund_amount": self.refund_amount_sun,
        }


@dataclass(frozen=True)
class CallbackAttempt:
    serial: str
    attempt: int  # 1 = first delivery; copies (duplicates) count on
    url: str
    status_code: int | None
    error: str | None
    suppressed: bool = False  # callbacks disabled: recorded, not sent

    @property
    def acknowledged(self) -> bool:
        return self.status_code == 200


@dataclass
class _Delivery:
    serial: str
    url: str
    body: dict[str, Any]
    attempt: int = 1
    copies_left: int = 0


def _tx_hash() -> str:
    return secrets.token_hex(32)


class SandboxProvider:
    """The fake provider's state, switches and background worker. Thread-safe."""

    def __init__(
        self,
        world: World,
        *,
        api_key: str = SANDBOX_API_KEY,
        api_secret: str = SANDBOX_API_SECRET,
        balance_sun: int = 1_000_000_000,
        price_old_holder_sun: int = 4_000_000,
        price_new_holder_sun: int = 8_000_000,
        delegation_delay: float | None = 0.0,
        callback_time_scale: float = 1.0,
        callback_timeout: float = 2.0,
        max_timestamp_skew_seconds: int = 60,
        default_callback_url: str | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self.world = world
        self.api_key = api_key
        self.api_secret = api_secret
        self.balance_sun = balance_sun
        self.price_old_holder_sun = price_old_holder_sun
        self.price_new_holder_sun = price_new_holder_sun
        self.delegation_delay = delegation_delay
        self.callback_time_scale = callback_time_scale
        self.callback_timeout = callback_timeout
        self.max_timestamp_skew_seconds = max_timestamp_skew_seconds
        self.default_callback_url = default_callback_url
        self.clock = clock
        self.switches = Switches()
        self.lock = threading.RLock()
        self.orders: dict[str, SandboxOrder] = {}
        self.callback_attempts: list[CallbackAttempt] = []
        self.post_count = 0  # collect-manual POSTs received (accepted or not)
        self.held_count = 0  # POSTs currently held open
        self._held_callbacks: list[_Delivery] = []
        self._release = threading.Event()
        self._cond = threading.Condition(self.lock)
        self._schedule: list[tuple[float, int, str, Any]] = []  # (due monotonic, seq, kind, payload)
        self._seq = itertools.count()
        self._inflight = 0
        self._stopping = False
        self._worker: threading.Thread | None = None
        self._server: RunningServer | None = None
        # Imported here, not at the top: provider_app imports this module (the types and constants
        # its endpoints use), so a top-level import would be circular.
        from sweeper.sandbox.provider_app import create_app

        self.app = create_app(self)

    # --- lifecycle -------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
        """Start the background worker and serve the app; returns the server (`.url`)."""
        self.start_worker()
        self._server = serve_in_thread(self.app, host=host, port=port)
        return self._server

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the sandbox provider is not started")
        return self._server.url

    def start_worker(self) -> None:
        with self.lock:
            if self._worker is not None:
                return
            self._stopping = False
            self._worker = threading.Thread(
                target=self._run_worker, daemon=True, name="sandbox-provider-worker"
            )
            self._worker.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._release.set()  # let held POSTs finish
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._worker is not None:
            self._worker.join(5)
            self._worker = None

    def __enter__(self) -> SandboxProvider:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- switches and controls -------------------------------------------------------------

    def set_balance(self, balance_sun: int) -> None:
        with self.lock:
            self.balance_sun = balance_sun

    def set_switches(self, **changes: Any) -> None:
        with self.lock:
            self.switches = replace(self.switches, **changes)

    def hold_posts(self, point: HoldPoint = HoldPoint.AFTER_CREATE) -> None:
        with self.lock:
            self._release.clear()
            self.switches.hold = point

    def release_posts(self) -> None:
        with self.lock:
            self.switches.hold = None
            self._release.set()

    def complete(self, serial: str, status: int | None = None) -> None:
        """Finish an order now with `status` (default: its planned outcome). Idempotent on final orders."""
        self._finish(serial, status)

    def release_callbacks(self, *, reverse: bool = False) -> None:
        """Send the callbacks buffered by `hold_callbacks` (in reverse order: reordered delivery)."""
        with self._cond:
            pending = self._held_callbacks
            self._held_callbacks = []
            self.switches.hold_callbacks = False
            if reverse:
                pending.reverse()
            for delivery in pending:
                self._schedule_locked(0.0, "callback", delivery)

    def order(self, serial: str) -> SandboxOrder | None:
        with self.lock:
            order = self.orders.get(serial)
            return replace(order) if order else None

    def orders_by_out_trade_no(self, out_trade_no: str) -> list[SandboxOrder]:
        with self.lock:
            return [replace(o) for o in self.orders.values() if o.out_trade_no == out_trade_no]

    def attempts_for(self, serial: str) -> list[CallbackAttempt]:
        with self.lock:
            return [a for a in self.callback_attempts if a.serial == serial]

    def idle(self) -> bool:
        """No scheduled work and nothing being delivered (buffered callbacks do not count)."""
        with self.lock:
            return not self._schedule and self._inflight == 0

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait for observable state (not for time). Raises TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("sandbox provider: condition not reached before the deadline")
            time.sleep(0.005)

    # --- request checks --------------------------------------------------------------------

    def key_ok(self, request: Request) -> bool:
        return request.headers.get("API-KEY") == self.api_key

    def check_signature(self, request: Request, body: bytes) -> str | None:
        """None if TIMESTAMP, body form and SIGNATURE are right, else the errno-1 message."""
        timestamp = request.headers.get("TIMESTAMP", "")
        if not (timestamp.isascii() and timestamp.isdigit()):
            return MSG_BAD_TIMESTAMP
        if abs(self.clock().timestamp() - int(timestamp)) > self.max_timestamp_skew_seconds:
            return MSG_BAD_TIMESTAMP
        try:
            data = json.loads(body)
        except ValueError:
            return MSG_BAD_BODY
        if not isinstance(data, dict) or canonical_json(data).encode() != body:
            return MSG_BAD_BODY
        expected = sign(self.api_secret, timestamp, body)
        provided = request.headers.get("SIGNATURE", "")
        if not provided.isascii() or not secrets.compare_digest(expected, provided):
            return MSG_BAD_SIGNATURE
        return None

    # --- orders ----------------------------------------------------------------------------

    def create_order(self, data: dict[str, Any]) -> SandboxOrder | str:
        """Charge and create, or return the errno-1 message (nothing created). A repeated
        out_trade_no is handled as `switches.repeated_out_trade_no` says (an IDEMPOTENT repeat
        returns the existing order, charging nothing)."""
        receive_address: str = data["receive_address"]
        to_address: str | None = data.get("to_address")
        new_holder = to_address is not None and not self.world.holds_token(
            self.world.usdt_contract, to_address
        )
        energy = COLLECT_ENERGY_NEW_HOLDER if new_holder else COLLECT_ENERGY_OLD_HOLDER
        price = self.price_new_holder_sun if new_holder else self.price_old_holder_sun
        with self.lock:
            out_trade_no = data.get("out_trade_no")
            reading = self.switches.repeated_out_trade_no
            seen = [o for o in self.orders.values() if out_trade_no and o.out_trade_no == out_trade_no]
            if seen and reading is RepeatedOutTradeNo.REFUSED:
                return MSG_DUPLICATE_OUT_TRADE_NO
            if seen and reading is RepeatedOutTradeNo.IDEMPOTENT:
                return replace(seen[0])
            if self.balance_sun < price:
                return MSG_LOW_BALANCE
            self.balance_sun -= price
            order = SandboxOrder(
                serial=secrets.token_hex(16),
                out_trade_no=data.get("out_trade_no"),
                receive_address=receive_address,
                to_address=to_address,
                callback_url=data.get("callback_url") or self.default_callback_url,
                scene=int(data.get("scene", 0)),
                energy_amount=energy,
                amount_sun=price,
                status=30,
                outcome=self.switches.outcome,
                create_time=self.clock(),
            )
            self.orders[order.serial] = order
            delay = self.delegation_delay
        log.info("sandbox_provider.order_created", serial=order.serial, out_trade_no=order.out_trade_no)
        if delay == 0:
            self._finish(order.serial, None)
        elif delay is not None:
            with self._cond:
                self._schedule_locked(delay, "complete", order.serial)
        return order

    def find_order(self, serial: str | None, out_trade_no: str | None) -> SandboxOrder | None:
        with self.lock:
            if serial:
                return self.orders.get(serial)
            # Several orders may share an out_trade_no (nothing forbids it): which one the lookup
            # answers is the switch's reading. Dicts keep insertion order: oldest first (creation
            # times can be equal, so they do not order the orders).
            matches = [o for o in self.orders.values() if o.out_trade_no == out_trade_no]
            if not matches:
                return None
            first = self.switches.repeated_out_trade_no is RepeatedOutTradeNo.FIRST_WINS
            return matches[0] if first else matches[-1]

    def _finish(self, serial: str, status: int | None) -> None:
        with self.lock:
            order = self.orders.get(serial)
            if order is None or order.status in (0, 40, 41, 43):
                return
            final = order.outcome if status is None else status
            if final == 40:
                if not self.world.account(order.receive_address).activated:
                    self.world.activate(order.receive_address)
                    order.active_hash = _tx_hash()
                self.world.add_bandwidth(order.receive_address, SWEEP_BANDWIDTH)
                order.bandwidth_hash = _tx_hash()
                self.world.delegate_energy(order.receive_address, order.energy_amount)
                order.delegated_energy = order.energy_amount
                order.delegate_hash = _tx_hash()
                order.delegate_time = self.clock()
            elif final == 41:
                refund = order.amount_sun * self.switches.refund_percent // 100
                order.refund_amount_sun = refund
                self.balance_sun += refund
            order.status = final
            url = order.callback_url
            body = {
                "serial": order.serial,
                "out_trade_no": order.out_trade_no,
                "status": 40 if final == 40 else 41,  # the docs: 40 success, 41 failed
                "type": "energy",
                "source": "api",
                "receive_address": order.receive_address,
                "energy_amount": order.energy_amount,
                "pay_amount": float(order.delegated_energy),
                "txid": order.delegate_hash or "",
                "active_hash": order.active_hash,
                "bandwidth_hash": order.bandwidth_hash,
            }
        log.info("sandbox_provider.order_finished", serial=serial, status=final)
        if url:
            self._enqueue_callback(_Delivery(serial=serial, url=url, body=body))

    # --- callbacks -------------------------------------------------------------------------

    def _enqueue_callback(self, delivery: _Delivery) -> None:
        with self._cond:
            delivery.copies_left = self.switches.duplicate_callbacks
            if not self.switches.callbacks_enabled:
                self.callback_attempts.append(
                    CallbackAttempt(
                        delivery.serial, delivery.attempt, delivery.url, None, None, suppressed=True
                    )
                )
                return
            if self.switches.hold_callbacks:
                self._held_callbacks.append(delivery)
                return
            self._schedule_locked(0.0, "callback", delivery)

    def _schedule_locked(self, delay: float, kind: str, payload: Any) -> None:
        heapq.heappush(self._schedule, (time.monotonic() + delay, next(self._seq), kind, payload))
        self._cond.notify_all()

    def encode_callback(self, body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        timestamp = str(int(self.clock().timestamp()) - self.switches.callback_age_seconds)
        form = self.switches.callback_form
        compact = canonical_json(body).encode()
        if form is CallbackForm.COMPACT:
            sent = signed = compact
        elif form is CallbackForm.DEFAULT:
            sent = signed = json.dumps(body, sort_keys=True).encode()
        else:
            sent, signed = json.dumps(dict(reversed(list(body.items()))), indent=2).encode(), compact
        headers = {
            "Content-Type": "application/json",
            "TIMESTAMP": timestamp,
            "SIGNATURE": sign(self.api_secret, timestamp, signed),
        }
        return sent, headers

    def _deliver(self, http: httpx.Client, delivery: _Delivery) -> None:
        content, headers = self.encode_callback(delivery.body)
        status: int | None = None
        error: str | None = None
        try:
            status = http.post(delivery.url, content=content, headers=headers).status_code
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        with self._cond:
            self.callback_attempts.append(
                CallbackAttempt(delivery.serial, delivery.attempt, delivery.url, status, error)
            )
            if status == 200:
                if delivery.copies_left > 0:
                    copy = replace(
                        delivery, attempt=delivery.attempt + 1, copies_left=delivery.copies_left - 1
                    )
                    self._schedule_locked(0.0, "callback", copy)
                return
            retry_index = delivery.attempt - 1
            if retry_index < len(CALLBACK_RETRY_SCHEDULE):
                delay = CALLBACK_RETRY_SCHEDULE[retry_index] * self.callback_time_scale
                self._schedule_locked(delay, "callback", replace(delivery, attempt=delivery.attempt + 1))

    def _run_worker(self) -> None:
        with httpx.Client(timeout=self.callback_timeout, trust_env=False) as http:
            while True:
                with self._cond:
                    while True:
                        if self._stopping:
                            return
                        if self._schedule:
                            due = self._schedule[0][0]
                            wait = due - time.monotonic()
                            if wait <= 0:
                                _, _, kind, payload = heapq.heappop(self._schedule)
                                self._inflight += 1
                                break
                            self._cond.wait(wait)
                        else:
                            self._cond.wait()
                try:
                    if kind == "complete":
                        self._finish(payload, None)
                    else:
                        self._deliver(http, payload)
                except Exception:  # the fake must keep running whatever a test does
                    log.exception("sandbox_provider.worker_error", kind=kind)
                finally:
                    with self._cond:
                        self._inflight -= 1
