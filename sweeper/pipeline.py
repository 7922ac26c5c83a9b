"""The exactly-once sweep pipeline: one step per state, each safe to re-run after a crash anywhere.

queued -> ordering (claimed) -> energy_ordered -> energy_ready -> signed -> broadcast -> confirmed.

The rules that make it exactly once (design.md):
- One energy order per row: `out_trade_no` is the row id; before any POST, and after any answer
  whose outcome is unknown, the order is looked up by out_trade_no and adopted if it is ours.
  A POST whose outcome is unknown is never repeated blindly: the row waits a grace period and the
  next attempt starts with that lookup again.
- One transfer per row: the signed transaction (txid, raw bytes, expiration) is stored BEFORE it is
  broadcast; a retry re-broadcasts the same bytes; a new transaction is built only after the old
  one has expired and the solidified chain does not know it.
- No TRX burnt: a transfer is broadcast only when the chain shows the energy and bandwidth for it.
- Every state change goes through the ledger with an event row that says why; a worker only moves
  rows it holds the lease of.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import structlog

from sweeper.chain import (
    BroadcastRejected,
    ChainError,
    SignedTransfer,
    TransactionExpired,
    TronChain,
    TxState,
    UnsafeTransaction,
)
from sweeper.config import Settings, TokenSettings
from sweeper.domain import Clock, IllegalTransition, SweepState, format_units, utcnow
from sweeper.keys import HdWallet, KeyRing, KeySourceError, SigningKey
from sweeper.ledger import Ledger, SweepRecord
from sweeper.provider import (
    InsufficientProviderBalance,
    Order,
    OrderOutcomeUnknown,
    OrderRejected,
    ProviderAuthError,
    ProviderClient,
    ProviderError,
    ProviderUnavailable,
)

log = structlog.get_logger("sweeper.pipeline")

S = SweepState
REJECTIONS_BEFORE_PAUSE = 3
WORK_STATES = (S.QUEUED, S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.SIGNED, S.BROADCAST)


@dataclass(frozen=True)
class PipelineOptions:
    destination: str
    tokens: tuple[TokenSettings, ...]
    concurrency: int = 16
    max_attempts: int = 5
    order_timeout_seconds: int = 900
    energy_ready_timeout_seconds: int = 600
    max_daily_spend_sun: int = 500_000_000
    max_cost_per_sweep_sun: int = 10_000_000
    scene: int = 0
    callback_url: str | None = None
    lease_seconds: float = 60.0
    # An order POST whose answer was lost may still be processed: look it up only after this,
    # and send no other order for the row until the POST is `order_settle_seconds` old (a provider
    # that has not created an order by then has dropped the request).
    order_grace_seconds: float = 10.0
    order_settle_seconds: float = 300.0
    low_balance_pause_seconds: float = 300.0
    backoff_base_seconds: float = 5.0
    backoff_max_seconds: float = 300.0
    poll_min_seconds: float = 2.0
    poll_max_seconds: float = 30.0
    # A re-created ledger reuses ids: an order created this long before its row is not ours.
    adopt_clock_skew_seconds: float = 120.0

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> PipelineOptions:
        values: dict[str, Any] = {
            "destination": settings.wallet.destination,
            "tokens": settings.tokens,
            "concurrency": settings.pipeline.concurrency,
            "max_attempts": settings.pipeline.max_attempts,
            "order_timeout_seconds": settings.pipeline.order_timeout_seconds,
            "energy_ready_timeout_seconds": settings.pipeline.energy_ready_timeout_seconds,
            "max_daily_spend_sun": settings.safety.max_daily_spend_sun,
            "max_cost_per_sweep_sun": settings.safety.max_cost_per_sweep_sun,
            "scene": settings.provider.scene,
            "callback_url": settings.provider.callback_url or None,
            "lease_seconds": float(settings.pipeline.lease_seconds),
            "low_balance_pause_seconds": float(max(60, settings.schedule.work_interval_seconds * 12)),
        }
        values.update(overrides)
        return cls(**values)


class Keys:
    """Signing keys for deposit addresses: keyfile entries, and HD keys derived on demand from the
    index the ledger holds for the address (the key's own address is checked before any use)."""

    def __init__(
        self, ledger: Ledger, wallet: HdWallet | None, keyfile: dict[str, Any] | None = None
    ) -> None:
        self._ledger = ledger
        self._wallet = wallet
        self._ring = KeyRing()
        if keyfile:
            self._ring.add_keyfile(dict(keyfile))

    @classmethod
    def from_settings(cls, settings: Settings, ledger: Ledger) -> Keys:
        wallet = HdWallet(settings.keys.mnemonic) if settings.keys.mnemonic is not None else None
        return cls(ledger, wallet, dict(settings.keys.keyfile_keys or {}))

    def key_for(self, address: str) -> SigningKey:
        if address not in self._ring and self._wallet is not None:
            record = self._ledger.deposit_address(address)
            if record is not None and record.hd_index is not None:
                self._ring.add_hd(self._wallet, record.hd_index, address)
        return self._ring.key_for(address)

    def __repr__(self) -> str:
        return "Keys(***)"


class Step(Enum):
    NEXT = "next"  # the row moved on and can take its next step now
    WAIT = "wait"  # released until its next_attempt_at (or final)


class _LostClaim(Exception):
    """Another worker holds the row now (our lease ran out): stop touching it."""


class Pipeline:
    def __init__(
        self,
        ledger: Ledger,
        provider: ProviderClient,
        chain: TronChain,
        keys: Keys,
        options: PipelineOptions,
        *,
        worker_id: str,
        clock: Clock = utcnow,
        dry_run: bool = False,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.ledger = ledger
        self.provider = provider
        self.chain = chain
        self.keys = keys
        self.options = options
        self.worker_id = worker_id
        self.now = clock
        self.dry_run = dry_run
        self._sleep = sleep
        self._rng = random.Random()
        self.ordering_paused_until: datetime | None = None
        self._last_pause_alert: float = 0.0
        self._price_cache: tuple[float, int] | None = None
        self.steps_done = 0
        self.stopping = False  # set by the daemon on SIGTERM: finish the current step, take no next one
        self._consecutive_rejections = 0

    # --- driving ----------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim what is due (up to `concurrency` rows) and advance each as far as it can go now.

        Returns the number of rows worked on (0: nothing was due).
        """
        if self.dry_run:
            return await self._dry_run_once()
        states: Sequence[SweepState] = WORK_STATES
        if self.ordering_paused_until is not None:
            if self.now() < self.ordering_paused_until:
                states = [s for s in WORK_STATES if s is not S.QUEUED]
            else:
                self.ordering_paused_until = None
                log.info("energy ordering resumed")
        rows = await asyncio.to_thread(
            self.ledger.claim,
            self.worker_id,
            states,
            limit=self.options.concurrency,
            lease_seconds=self.options.lease_seconds,
        )
        if rows:
            await asyncio.gather(*(self._advance(row) for row in rows))
        return len(rows)

    async def run_until_idle(self, *, timeout: float = 60.0, settle: float = 0.0) -> int:
        """Run passes until nothing is due (and, with `settle`, nothing became due for that long)."""
        deadline = time.monotonic() + timeout
        worked = 0
        idle_since: float | None = None
        while time.monotonic() < deadline:
            n = await self.run_once()
            worked += n
            if n:
                idle_since = None
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= settle:
                break
            await self._sleep(0.05)
        return worked

    async def _dry_run_once(self) -> int:
        due = await asyncio.to_thread(self.ledger.list_sweeps, state=S.QUEUED, limit=self.options.concurrency)
        for row in due:
            log.info(
                "dry run: would order energy and sweep",
                sweep_id=row.id,
                address=row.address,
                token=row.token,
                amount=self._units(row, row.observed_amount),
                destination=self.options.destination,
            )
        return 0

    async def _advance(self, row: SweepRecord) -> None:
        # Keep the lease fresh while we work on the row (a held POST can outlast a lease): a lease
        # only runs out when its worker died, which is when another worker may take the row.
        heartbeat = asyncio.create_task(self._heartbeat(row.id))
        try:
            await self._advance_steps(row)
        finally:
            heartbeat.cancel()

    async def _heartbeat(self, sweep_id: int) -> None:
        interval = max(0.5, self.options.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            held = await asyncio.to_thread(
                self.ledger.renew_lease, sweep_id, self.worker_id, self.options.lease_seconds
            )
            if not held:
                log.warning("lease renewal failed: the row is no longer ours", sweep_id=sweep_id)
                return

    async def _advance_steps(self, row: SweepRecord) -> None:
        try:
            while True:
                step = await self._step(row)
                self.steps_done += 1
                if step is Step.WAIT:
                    return
                row = await asyncio.to_thread(self.ledger.get_sweep, row.id)
                if row.is_final or row.claimed_by != self.worker_id:
                    return
                if self.stopping:  # shutting down: the row waits for the next run, step done
                    await self._release(row, None)
                    return
        except _LostClaim:
            log.warning("lease lost; another worker has the row", sweep_id=row.id)
        except Exception as exc:  # a bug or an unforeseen answer: keep the row, back off, alert
            log.exception("step failed unexpectedly", sweep_id=row.id, state=row.state.value)
            await self._retry_later(row, f"unexpected: {type(exc).__name__}: {exc}", count=True)

    async def _step(self, row: SweepRecord) -> Step:
        match row.state:
            case S.ORDERING:
                return await self._ordering(row)
            case S.ENERGY_ORDERED:
                return await self._energy_ordered(row)
            case S.ENERGY_READY:
                return await self._energy_ready(row)
            case S.SIGNED:
                return await self._signed(row)
            case S.BROADCAST:
                return await self._broadcast(row)
            case _:  # queued rows are claimed straight into ordering; final rows have no step
                await self._release(row, None)
                return Step.WAIT

    # --- helpers ----------------------------------------------------------------------------

    def _token(self, row: SweepRecord) -> TokenSettings | None:
        # Read from the options each time: SIGHUP swaps them (new thresholds) under a running pipeline.
        return next((t for t in self.options.tokens if t.symbol == row.token), None)

    def _units(self, row: SweepRecord, amount: int | None) -> str | None:
        token = self._token(row)
        return format_units(amount, token.decimals) if token else str(amount)

    async def _move(
        self,
        row: SweepRecord,
        target: SweepState,
        reason: str,
        *,
        changes: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        release: bool = False,
    ) -> Step:
        try:
            moved = await asyncio.to_thread(
                self.ledger.transition,
                row.id,
                row.state,
                target,
                reason=reason,
                holder=self.worker_id,
                changes=changes,
                data=data,
                release=release,
            )
        except IllegalTransition:
            raise _LostClaim from None
        log.info(
            "sweep moved",
            sweep_id=row.id,
            from_state=row.state.value,
            to_state=moved.state.value,
            reason=reason,
            address=row.address,
        )
        return Step.WAIT if release or moved.is_final else Step.NEXT

    async def _release(
        self, row: SweepRecord, delay: float | None, error: str | None = None, count: bool = False
    ) -> None:
        at = self.now() + timedelta(seconds=delay) if delay is not None else None
        held = await asyncio.to_thread(
            self.ledger.release,
            row.id,
            self.worker_id,
            next_attempt_at=at,
            last_error=error,
            count_attempt=count,
        )
        if not held:
            raise _LostClaim

    def _backoff(self, attempts: int) -> float:
        growth: float = 2.0 ** min(attempts, 16)
        base = min(self.options.backoff_max_seconds, self.options.backoff_base_seconds * growth)
        return base * (0.75 + self._rng.random() * 0.5)

    def _poll_delay(self, row: SweepRecord) -> float:
        in_state = (self.now() - row.updated_at).total_seconds()
        return max(self.options.poll_min_seconds, min(self.options.poll_max_seconds, in_state / 4))

    async def _retry_later(self, row: SweepRecord, error: str, *, count: bool = False) -> Step:
        """A transient problem: keep the state, record why, try again after a backoff."""
        log.warning("sweep step will be retried", sweep_id=row.id, state=row.state.value, error=error)
        with contextlib.suppress(_LostClaim):
            await self._release(row, self._backoff(row.attempts), error[:1000], count=count)
        return Step.WAIT

    def _seconds_in_state(self, row: SweepRecord) -> float:
        return (self.now() - row.updated_at).total_seconds()

    # --- ordering: one energy order per row ----------------------------------------------

    async def _ordering(self, row: SweepRecord) -> Step:
        out_trade_no = str(row.id)
        # 1. An order may already exist (a crash after the POST, or an answer that was lost).
        try:
            existing = await self.provider.query_order(out_trade_no=out_trade_no)
        except ProviderError as exc:
            # Unknown whether an order exists: stay in `ordering`, never POST blind.
            return await self._ordering_error(row, f"order lookup failed: {exc}")
        if isinstance(existing, Order):
            return await self._adopt(row, existing)
        # An earlier POST (its answer lost, or a crash mid-POST) may still create its order: keep
        # looking it up until it is old enough to have landed or died; only then send another.
        if row.order_sent_at is not None:
            settled_at = row.order_sent_at + timedelta(seconds=self.options.order_settle_seconds)
            left = (settled_at - self.now()).total_seconds()
            if left > 0:
                await self._release(
                    row,
                    max(0.05, min(self.options.order_grace_seconds, left)),
                    f"an order sent at {row.order_sent_at.isoformat()} may still land; no new order before "
                    f"{settled_at.isoformat()}",
                )
                return Step.WAIT

        if self.ordering_paused_until is not None and self.now() < self.ordering_paused_until:
            return await self._back_to_queue(row, "energy ordering is paused", delay=self._pause_left())
        if row.attempts >= self.options.max_attempts:
            return await self._move(
                row, S.FAILED, f"max attempts ({self.options.max_attempts}) reached: {row.last_error}"
            )

        # 2. Nothing ordered yet: is the sweep still worth it, and can we sign for it?
        if row.address == self.options.destination:
            # E.g. imported by hand: moving the destination into itself only burns rented energy.
            return await self._move(row, S.CANCELLED, "the deposit address is the destination wallet")
        token = self._token(row)
        try:
            balance = await self.chain.token_balance(row.address, row.token_contract)
        except ChainError as exc:
            return await self._back_to_queue(row, f"balance re-check failed: {exc}", count=True)
        minimum = token.min_sweep_base_units if token else 1
        if balance < minimum:
            return await self._move(
                row,
                S.CANCELLED,
                f"balance re-checked before ordering: {self._units(row, balance)} is below min_sweep",
            )
        try:
            await asyncio.to_thread(self.keys.key_for, row.address)
        except KeySourceError as exc:
            return await self._move(row, S.FAILED, f"no usable key for {row.address}: {exc}")

        # 3. Safety caps.
        price = await self._price()
        if price is not None and price > self.options.max_cost_per_sweep_sun:
            return await self._back_to_queue(
                row,
                f"energy price {format_units(price, 6)} TRX is above safety.max_cost_per_sweep_trx",
                delay=3600.0,
            )
        day_start = self.now().astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        spent = await asyncio.to_thread(self.ledger.energy_spent_since, day_start)
        if spent + (price or 0) > self.options.max_daily_spend_sun:
            tomorrow = day_start + timedelta(days=1)
            log.warning(
                "daily energy spend cap reached", spent_sun=spent, cap_sun=self.options.max_daily_spend_sun
            )
            return await self._back_to_queue(
                row,
                f"daily spend cap reached ({format_units(spent, 6)} TRX spent today)",
                delay=(tomorrow - self.now()).total_seconds() + 1,
            )

        # 4. Order. Written down first: whatever happens next (a lost answer, a crash), the lookup
        # in step 1 and the settle wait above guard the following attempt.
        if not await asyncio.to_thread(self.ledger.mark_order_sent, row.id, self.worker_id, self.now()):
            raise _LostClaim
        try:
            order = await self.provider.collect_manual(
                row.address,
                to_address=self.options.destination,
                out_trade_no=out_trade_no,
                callback_url=self.options.callback_url,
                scene=self.options.scene,
            )
        except OrderOutcomeUnknown as exc:
            # The order may exist: look it up after a grace period, never POST again before that.
            log.warning("energy order outcome unknown; will look it up", sweep_id=row.id, error=str(exc))
            await self._release(
                row, self.options.order_grace_seconds, f"order outcome unknown: {exc}", count=True
            )
            return Step.WAIT
        except InsufficientProviderBalance as exc:
            self._pause_ordering(f"provider balance too low ({format_units(exc.balance_sun, 6)} TRX)")
            return await self._back_to_queue(
                row, f"provider balance too low: {exc}", delay=self._pause_left()
            )
        except ProviderAuthError as exc:
            self._pause_ordering(f"provider refused our API key: {exc}")
            return await self._back_to_queue(row, f"provider auth error: {exc}", delay=self._pause_left())
        except OrderRejected as exc:
            if exc.field_errors:  # the request itself names what is wrong with this sweep
                self._consecutive_rejections = 0
                return await self._move(
                    row, S.FAILED, f"provider rejected the order: {exc}", data={"raw": exc.raw}
                )
            # A bare errno with a healthy balance may be this order, or a wrong api secret or a
            # skewed clock that refuses every order: retry with backoff (max_attempts fails the
            # row), and pause ordering for all rows when several in a row are refused.
            self._consecutive_rejections += 1
            if self._consecutive_rejections >= REJECTIONS_BEFORE_PAUSE:
                self._pause_ordering(
                    f"{self._consecutive_rejections} orders in a row refused ({exc}); check the API secret "
                    "and the clock"
                )
            return await self._back_to_queue(row, f"provider refused the order: {exc}", count=True)
        except ProviderUnavailable as exc:  # provably not sent: nothing was ordered
            return await self._back_to_queue(row, f"provider unavailable: {exc}", count=True)
        except ProviderError as exc:
            await self._release(row, self.options.order_grace_seconds, f"provider error: {exc}", count=True)
            return Step.WAIT
        self._consecutive_rejections = 0
        return await self._move(
            row,
            S.ENERGY_ORDERED,
            f"energy ordered: serial {order.serial}, {format_units(order.amount_sun, 6)} TRX",
            changes={
                "serial": order.serial,
                "scene": order.scene,
                "cost_sun": order.amount_sun,
                "provider_balance_sun": order.balance_sun,
                "last_error": None,
                "next_attempt_at": None,
            },
        )

    async def _adopt(self, row: SweepRecord, order: Order) -> Step:
        skew = timedelta(seconds=self.options.adopt_clock_skew_seconds)
        # Without a creation time we cannot tell our order from an old ledger's: not adoptable.
        foreign = (
            order.receive_address != row.address
            or order.create_time is None
            or order.create_time < row.created_at - skew
        )
        if foreign:
            log.error(
                "ALERT: an order with this out_trade_no is not ours; refusing to adopt it",
                sweep_id=row.id,
                serial=order.serial,
                order_address=order.receive_address,
                order_created=order.create_time,
            )
            return await self._move(
                row,
                S.FAILED,
                f"order {order.serial} found for out_trade_no {row.id} belongs to {order.receive_address} "
                f"created {order.create_time}: not this sweep's; not adopted",
            )
        return await self._move(
            row,
            S.ENERGY_ORDERED,
            f"adopted existing order {order.serial} for out_trade_no {row.id}",
            changes={
                "serial": order.serial,
                "cost_sun": order.amount_sun,
                "last_error": None,
                "next_attempt_at": None,
            },
        )

    async def _ordering_error(self, row: SweepRecord, error: str) -> Step:
        return await self._retry_later(row, error, count=True)

    async def _back_to_queue(
        self, row: SweepRecord, reason: str, *, delay: float | None = None, count: bool = False
    ) -> Step:
        """Nothing was ordered (the lookup said so): back to `queued` with a later next attempt.

        Only reached once no earlier POST can still land (the settle wait) or after the provider
        answered this one: the order-sent mark is cleared.
        """
        wait = delay if delay is not None else self._backoff(row.attempts)
        changes: dict[str, Any] = {
            "next_attempt_at": self.now() + timedelta(seconds=wait),
            "last_error": reason[:1000],
            "order_sent_at": None,
        }
        if count:
            changes["attempts"] = row.attempts + 1
        return await self._move(row, S.QUEUED, reason, changes=changes, release=True)

    def _pause_ordering(self, why: str) -> None:
        self.ordering_paused_until = self.now() + timedelta(seconds=self.options.low_balance_pause_seconds)
        if time.monotonic() - self._last_pause_alert >= self.options.low_balance_pause_seconds:
            self._last_pause_alert = time.monotonic()
            log.error(
                "ALERT: energy ordering paused for every sweep", reason=why, until=self.ordering_paused_until
            )

    def _pause_left(self) -> float:
        if self.ordering_paused_until is None:
            return self.options.low_balance_pause_seconds
        return max(1.0, (self.ordering_paused_until - self.now()).total_seconds())

    async def _price(self) -> int | None:
        """The provider's price for one sweep to our destination (cached for a minute)."""
        cached = self._price_cache
        if cached is not None and time.monotonic() - cached[0] < 60:
            return cached[1]
        try:
            quote = await self.provider.price(to_address=self.options.destination)
        except ProviderError as exc:
            log.warning("energy price unavailable; the daily cap uses recorded costs only", error=str(exc))
            return None
        self._price_cache = (time.monotonic(), quote.total_price_sun)
        return quote.total_price_sun

    # --- energy ordered: wait for the delegation ---------------------------------------

    async def _energy_ordered(self, row: SweepRecord) -> Step:
        if self._seconds_in_state(row) > self.options.order_timeout_seconds:
            return await self._move(
                row,
                S.FAILED,
                f"energy order {row.serial} not completed within {self.options.order_timeout_seconds} s",
            )
        try:
            order = await self.provider.query_order(serial=row.serial, out_trade_no=str(row.id))
        except ProviderError as exc:
            return await self._retry_later(row, f"order query failed: {exc}")
        if not isinstance(order, Order):
            await self._release(row, self._poll_delay(row), f"order {row.serial} not found (yet)")
            return Step.WAIT
        if order.status.is_final and not order.status.is_success:
            return await self._move(
                row, S.FAILED, f"energy order {order.serial} ended with status {order.status.value}"
            )
        if not order.status.is_success:
            await self._release(row, self._poll_delay(row))
            return Step.WAIT
        try:
            check = await self.chain.check_resources(
                row.address, self.options.destination, row.token_contract
            )
        except ChainError as exc:
            return await self._retry_later(row, f"resource check failed: {exc}")
        if not check.ok:
            await self._release(
                row, self._poll_delay(row), "order complete, chain not yet: " + "; ".join(check.reasons)
            )
            return Step.WAIT
        return await self._move(
            row,
            S.ENERGY_READY,
            f"order {order.serial} completed; chain shows {check.energy_available} energy, "
            f"{check.bandwidth_available} bandwidth",
            changes={"last_error": None, "next_attempt_at": None},
        )

    # --- energy ready: build, verify, sign, store -------------------------------------

    async def _energy_ready(self, row: SweepRecord) -> Step:
        token = row.token_contract
        try:
            balance = await self.chain.token_balance(row.address, token)
        except ChainError as exc:
            return await self._retry_later(row, f"balance read failed: {exc}")
        if balance == 0:
            return await self._move(row, S.FAILED, "the address's balance is now zero: nothing to sweep")
        try:
            check = await self.chain.check_resources(row.address, self.options.destination, token)
        except ChainError as exc:
            return await self._retry_later(row, f"resource check failed: {exc}")
        if not check.ok:
            if self._seconds_in_state(row) > self.options.energy_ready_timeout_seconds:
                return await self._move(
                    row,
                    S.FAILED,
                    f"energy/bandwidth gone for over {self.options.energy_ready_timeout_seconds} s: "
                    + "; ".join(check.reasons),
                )
            await self._release(row, self._poll_delay(row), "resources missing: " + "; ".join(check.reasons))
            return Step.WAIT
        try:
            key = await asyncio.to_thread(self.keys.key_for, row.address)
            unsigned = await self.chain.build_transfer(
                row.address,
                self.options.destination,
                balance,
                token=token,
                energy_needed=check.energy_needed,
            )
            signed = self.chain.sign_transfer(unsigned, key)
        except UnsafeTransaction as exc:
            log.error(
                "ALERT: the node offered an unsafe transaction; nothing signed",
                sweep_id=row.id,
                error=str(exc),
            )
            return await self._retry_later(row, f"unsafe transaction refused: {exc}", count=True)
        except KeySourceError as exc:
            return await self._move(row, S.FAILED, f"no usable key: {exc}")
        except (ChainError, TransactionExpired) as exc:
            return await self._retry_later(row, f"building the transfer failed: {exc}")
        # Stored BEFORE broadcasting: a crash after this line re-broadcasts these exact bytes.
        return await self._move(
            row,
            S.SIGNED,
            f"transfer of {self._units(row, balance)} {row.token} to {self.options.destination} signed: {signed.txid}",
            changes={
                "txid": signed.txid,
                "signed_tx": signed.to_json(),
                "expiration": signed.expires_at,
                "amount": balance,
                "destination": self.options.destination,
                "last_error": None,
            },
        )

    # --- signed: broadcast the stored bytes -------------------------------------------

    async def _signed(self, row: SweepRecord) -> Step:
        assert row.signed_tx is not None and row.expiration is not None and row.txid is not None
        signed = SignedTransfer.from_json(row.signed_tx)
        if signed.destination != self.options.destination:
            # The config changed since signing: the stored bytes pay the old destination.
            log.error(
                "ALERT: stored transfer pays another destination than wallet.destination", sweep_id=row.id
            )
        if self.now() >= row.expiration:
            return await self._rebuild_if_unknown(row, signed)
        try:
            check = await self.chain.check_resources(row.address, signed.destination, row.token_contract)
        except ChainError as exc:
            return await self._retry_later(row, f"resource check failed: {exc}")
        if not check.ok:
            # The usual reason once the energy was there: our own broadcast used it (a crash or a
            # stop after sending, before recording). The node then knows the transaction; confirm
            # it instead of waiting for its expiration to prove it.
            try:
                known = await self.chain.transaction_known(signed.txid)
            except ChainError as exc:
                return await self._retry_later(row, f"lookup of {signed.txid} failed: {exc}")
            if known:
                return await self._move(
                    row, S.BROADCAST, f"transaction {signed.txid} already known to the node: it was broadcast"
                )
            await self._release(
                row, self.options.poll_min_seconds, "resources missing: " + "; ".join(check.reasons)
            )
            return Step.WAIT
        try:
            result = await self.chain.broadcast(signed)
        except BroadcastRejected as exc:
            if exc.expired and self.now() >= row.expiration:
                return await self._rebuild_if_unknown(row, signed)
            # Expired for the node while our clock says it is not: our clock is behind the chain's,
            # and a rebuilt transfer would be expired too. Back off (no rebuild loop) until it expires.
            return await self._retry_later(row, f"broadcast rejected: {exc.code} {exc.message}")
        except ChainError as exc:
            return await self._retry_later(row, f"broadcast failed: {exc}")
        return await self._move(row, S.BROADCAST, f"broadcast {signed.txid}: {result.outcome.value}")

    async def _rebuild_if_unknown(self, row: SweepRecord, signed: SignedTransfer) -> Step:
        """The stored transaction expired: rebuild only if the chain can no longer include it."""
        try:
            status = await self.chain.transaction_status(
                signed.txid, expiration_ms=signed.expiration_ms, token=row.token_contract
            )
        except ChainError as exc:
            return await self._retry_later(row, f"status of {signed.txid} unknown: {exc}")
        if status.state is TxState.EXPIRED:
            return await self._move(
                row,
                S.ENERGY_READY,
                f"transaction {signed.txid} expired and is unknown to the chain: rebuild",
                changes={"txid": None, "signed_tx": None, "expiration": None},
            )
        if status.state is TxState.PENDING:
            await self._release(row, self.options.poll_min_seconds)
            return Step.WAIT
        # The chain has it (confirmed or failed): it was broadcast after all.
        return await self._move(
            row, S.BROADCAST, f"transaction {signed.txid} found on chain ({status.state.value})"
        )

    # --- broadcast: confirm on a solidified block -------------------------------------

    async def _broadcast(self, row: SweepRecord) -> Step:
        assert row.txid is not None and row.expiration is not None
        expiration_ms = int(row.expiration.timestamp() * 1000)
        try:
            status = await self.chain.transaction_status(
                row.txid, expiration_ms=expiration_ms, token=row.token_contract
            )
        except ChainError as exc:
            return await self._retry_later(row, f"status query failed: {exc}")
        if status.state is TxState.PENDING:
            await self._release(row, self.options.poll_min_seconds)
            return Step.WAIT
        if status.state is TxState.EXPIRED:
            return await self._move(
                row,
                S.ENERGY_READY,
                f"transaction {row.txid} was never included and has expired: rebuild",
                changes={"txid": None, "signed_tx": None, "expiration": None},
            )
        if status.state is TxState.FAILED:
            return await self._move(
                row,
                S.FAILED,
                f"transaction {row.txid} failed on chain: {status.reason}",
                data={"fee_sun": status.fee_sun},
            )
        moved = sum(
            t.amount for t in status.transfers if t.sender == row.address and t.recipient == row.destination
        )
        if moved != row.amount:
            log.error(
                "ALERT: confirmed amount differs from the signed amount",
                sweep_id=row.id,
                moved=moved,
                signed=row.amount,
            )
        return await self._move(
            row,
            S.CONFIRMED,
            f"confirmed in block {status.block_number}: {self._units(row, moved)} {row.token} moved",
            changes={"amount": moved},
            data={"block": status.block_number, "fee_sun": status.fee_sun, "energy_used": status.energy_used},
        )


def worker_name() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"
