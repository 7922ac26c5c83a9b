"""The exactly-once sweep pipeline: one step per state, each safe to re-run after a crash anywhere.

queued -> ordering (claimed) -> energy_ordered -> energy_ready -> signed -> broadcast -> confirmed.

The rules that make it exactly once, and that keep a failure that cost money from repeating
(docs/design.md, "Exactly once" and "Money safety"):
- One energy order per row: `out_trade_no` is "<row id>-<nonce>" (the bare id for rows made before
  migration 0005), so no other ledger's order ever matches it; before any POST, and after any answer
  whose outcome is unknown, the order is looked up by out_trade_no and adopted if it is ours.
  A POST whose outcome is unknown is never repeated blindly: the row waits a grace period and the
  next attempt starts with that lookup again.
- One transfer per row: the signed transaction (txid, raw bytes, expiration) is stored BEFORE it is
  broadcast; a retry re-broadcasts the same bytes; a new transaction is built only after the old
  one has expired and the solidified chain does not know it.
- No TRX burnt: a transfer is broadcast only when the chain shows the energy and bandwidth for it.
- Measured before bought: the exact transfer is simulated (a constant call from the deposit
  address) before ordering and again before signing; a revert, or a need above what the order
  delivers, orders nothing. Energy already on the address is used without an order.
- A failure after money was spent holds the (address, token) until an operator releases it; an
  unpaid failure cools the pair down (doubling). Rebuilds and rejected broadcasts are bounded.
- Caps fail closed: no quote, no order; each order is reserved against the UTC day's cap in the
  same transaction as its order-sent mark; an order that cost more than the per-sweep cap pauses
  all ordering (in the ledger) until `sweeper ordering resume`.
- Every state change goes through the ledger with an event row that says why; a worker only moves
  rows it holds the lease of.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import socket
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
    ChainResponseError,
    SignedTransfer,
    Simulation,
    TransactionExpired,
    TxState,
    UnsafeTransaction,
)
from sweeper.config import Settings, TokenSettings
from sweeper.domain import AssetKind, Clock, IllegalTransition, SweepState, format_units, utcnow
from sweeper.errors import KeySourceError, ProviderError
from sweeper.faults import crash_point
from sweeper.keys import Keys
from sweeper.ledger import ORDERING_PAUSE, AddressBusy, Ledger, SweepRecord, token_pause_name, utc_day
from sweeper.protocols import EnergyProvider, SweepChain
from sweeper.provider.errors import (
    InsufficientProviderBalance,
    OrderOutcomeUnknown,
    OrderRejected,
    ProviderAuthError,
    ProviderUnavailable,
)
from sweeper.provider.models import (
    COLLECT_MANUAL_ENERGY_TO_HOLDER,
    COLLECT_MANUAL_ENERGY_TO_NEW_HOLDER,
    Order,
)
from sweeper.retry import SWEEP_BACKOFF, Backoff

log = structlog.get_logger("sweeper.pipeline")

S = SweepState
REJECTIONS_BEFORE_PAUSE = 3
# A token is paused (one ALERT) instead of holding each address once this many different deposit
# addresses' transfers revert with no successful simulation of the token in between.
TOKEN_PAUSE_AFTER_ADDRESSES = 3
# What the chain charges to create (activate) an account: reserved on top of the quote for a
# deposit address that is not activated yet, until the order's real amount replaces it
# (getCreateNewAccountFeeInSystemContract 1 TRX + getCreateAccountFee 0.1 TRX on mainnet).
ACTIVATION_RESERVE_SUN = 1_100_000
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
    backoff_base_seconds: float = SWEEP_BACKOFF.base
    backoff_max_seconds: float = SWEEP_BACKOFF.maximum
    poll_min_seconds: float = 2.0
    poll_max_seconds: float = 30.0
    # A re-created ledger reuses ids: an order created this long before its row is not ours.
    adopt_clock_skew_seconds: float = 120.0
    max_fee_limit_sun: int = 30_000_000
    # A transfer whose simulation keeps reverting (not a frozen owner) is held after this long.
    revert_hold_seconds: float = 600.0
    revert_retry_seconds: float = 60.0
    # A paused token: one of its rows is simulated again this often; it resumes when one passes.
    token_recheck_seconds: float = 600.0
    no_quote_alert_seconds: float = 3600.0
    no_quote_retry_seconds: float = 60.0
    index_data_ttl_seconds: float = 600.0
    # Nothing is ordered while the node's head-block time is further than this from the host clock.
    chain_clock_check: bool = True
    max_chain_clock_skew_seconds: float = 30.0
    chain_clock_check_ttl_seconds: float = 10.0
    chain_clock_retry_seconds: float = 60.0
    # An order complete for this long without its energy on chain is logged once (WARNING).
    energy_wait_warn_seconds: float = 60.0

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
            "max_fee_limit_sun": settings.safety.max_fee_limit_sun,
            "scene": settings.provider.scene,
            "callback_url": settings.provider.callback_url or None,
            "lease_seconds": float(settings.pipeline.lease_seconds),
            "low_balance_pause_seconds": float(max(60, settings.schedule.work_interval_seconds * 12)),
        }
        values.update(overrides)
        return cls(**values)


class Step(Enum):
    NEXT = "next"  # the row moved on and can take its next step now
    WAIT = "wait"  # released until its next_attempt_at (or final)


class _LostClaim(Exception):
    """Another worker holds the row now (our lease ran out): stop touching it."""


def _contract(row: SweepRecord) -> str:
    """A token sweep's contract (the energy-ordering path never sees a TRX row)."""
    if row.token_contract is None:
        raise AssertionError(f"sweep {row.id} is a TRX sweep on the token path")
    return row.token_contract


class Pipeline:
    def __init__(
        self,
        ledger: Ledger,
        provider: EnergyProvider,
        chain: SweepChain,
        keys: Keys,
        options: PipelineOptions,
        *,
        worker_id: str,
        clock: Clock | None = None,
        host_clock: Clock = utcnow,
        dry_run: bool = False,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self.ledger = ledger
        self.provider = provider
        self.chain = chain
        self.keys = keys
        self.options = options
        self.worker_id = worker_id
        # The ledger's clock (the database's) unless a test injects one: leases, due times and the
        # order-settle window must not depend on this host's clock.
        self.now: Clock = clock if clock is not None else ledger.now
        # A transaction's expiration is the chain's (stamped from its head block): it is compared
        # with this host's clock, which the chain-clock check keeps within seconds of the chain's,
        # never with the database's (nothing bounds how far that is from the chain).
        self.host_now: Clock = host_clock
        self.dry_run = dry_run
        self._sleep = sleep
        self._rng = random.Random()
        self.ordering_paused_until: datetime | None = None
        self._last_pause_alert: float = 0.0
        self._price_cache: tuple[float, int] | None = None
        self.steps_done = 0
        self.stopping = False  # set by the daemon on SIGTERM: finish the current step, take no next one
        self._consecutive_rejections = 0
        self._no_quote_since: float | None = None
        self._last_no_quote_alert: float = 0.0
        self._index_cache: tuple[float, tuple[int | None, int | None]] | None = None
        # token symbol -> {deposit address: when its simulation last reverted (monotonic)}, since the
        # token's last passing simulation; only reverts within `revert_hold_seconds` count.
        self._reverting: dict[str, dict[str, float]] = {}
        # sweep id -> consecutive node errors before ordering: the back-off grows (never fails a row)
        self._node_errors: dict[int, int] = {}
        self.ordering_paused_reason: str | None = None  # the persisted pause, for /healthz
        self.chain_clock_problem: str | None = None  # set while the chain-clock check fails (/healthz)
        self._clock_checked: tuple[float, str | None] | None = None
        self._last_clock_alert: float = float("-inf")
        # sweep id -> when its order was first seen complete without the energy on chain (monotonic;
        # None once the long wait was logged). Dropped when the row leaves `energy_ordered`.
        self._complete_since: dict[int, float | None] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        ledger: Ledger,
        *,
        chain: SweepChain,
        provider: EnergyProvider,
        worker_id: str | None = None,
        clock: Clock | None = None,
        dry_run: bool = False,
    ) -> Pipeline:
        """The one place a pipeline is built from the config (`run`, `work` and the demo)."""
        return cls(
            ledger,
            provider,
            chain,
            Keys.from_settings(settings, ledger),
            PipelineOptions.from_settings(settings),
            worker_id=worker_id or worker_name(),
            clock=clock,
            dry_run=dry_run,
        )

    # --- driving ----------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim what is due (up to `concurrency` rows) and advance each as far as it can go now.

        Returns the number of rows worked on (0: nothing was due).
        """
        if self.dry_run:
            return await self._dry_run_once()
        states: Sequence[SweepState] = WORK_STATES
        # Which kinds' queued rows may start: a TRX sweep orders no energy, so a pause of energy
        # ordering does not stop it.
        starting: tuple[AssetKind, ...] = tuple(AssetKind)
        paused = await asyncio.to_thread(self.ledger.pause, ORDERING_PAUSE)
        self.ordering_paused_reason = paused.reason if paused is not None else None
        if paused is not None:
            starting = (AssetKind.TRX,)
        if self.ordering_paused_until is not None:
            if self.now() < self.ordering_paused_until:
                starting = (AssetKind.TRX,)
            else:
                self.ordering_paused_until = None
                log.info("energy ordering resumed")
        rows = await asyncio.to_thread(
            self.ledger.claim,
            self.worker_id,
            states,
            limit=self.options.concurrency,
            lease_seconds=self.options.lease_seconds,
            queued_kinds=starting,
        )
        if rows:
            crash_point("claimed")
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
                # A TRX sweep orders no energy: its fee comes out of the swept TRX.
                "dry run: would sweep" if row.is_trx else "dry run: would order energy and sweep",
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
            case S.QUEUED if row.is_trx:
                return await self._trx_queued(row)
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
        hold: bool = False,
        cooldown: bool = False,
        exclusive: bool = False,
    ) -> Step:
        if row.state is S.ORDERING and target is not S.ENERGY_ORDERED:
            # Leaving `ordering` without an order of ours: whatever was reserved against the day's
            # cap was for an order proven never placed (the lookup found none): release it.
            changes = {"charge_sun": None, **(changes or {})}
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
                hold=hold,
                cooldown=cooldown,
                exclusive=exclusive,
            )
        except IllegalTransition:
            raise _LostClaim from None
        if moved.state is not S.ENERGY_ORDERED:
            self._complete_since.pop(row.id, None)
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
        policy = Backoff(self.options.backoff_base_seconds, self.options.backoff_max_seconds)
        return policy.delay(attempts, self._rng)

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

    # --- failures: hold or cool down ---------------------------------------------------------

    async def _fail(
        self,
        row: SweepRecord,
        reason: str,
        *,
        paid: bool,
        changes: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
    ) -> Step:
        """Fail the row. `paid`: money was spent (or would be lost again by retrying on its own):
        the (address, token) is held until an operator releases it. Otherwise the pair cools down
        (doubling, up to a day) so an unpaid failure cannot loop either. Same transaction."""
        step = await self._move(
            row, S.FAILED, reason, changes=changes, data=data, hold=paid, cooldown=not paid
        )
        if paid:
            log.error(
                "ALERT: deposit address held after a failed sweep; `sweeper addresses release` or "
                "`sweeper sweeps retry` lifts it",
                sweep_id=row.id,
                address=row.address,
                token=row.token,
                reason=reason,
            )
        return step

    # --- ordering: one energy order per row ----------------------------------------------

    async def _ordering(self, row: SweepRecord) -> Step:
        out_trade_no = row.out_trade_no
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
            return await self._fail(
                row, f"max attempts ({self.options.max_attempts}) reached: {row.last_error}", paid=False
            )

        # 2. Nothing ordered yet: is the sweep still worth it, and can we sign for it?
        if row.address == self.options.destination:
            # E.g. imported by hand: moving the destination into itself only burns rented energy.
            return await self._move(row, S.CANCELLED, "the deposit address is the destination wallet")
        token = self._token(row)
        try:
            balance = await self.chain.token_balance(row.address, _contract(row))
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
            return await self._fail(row, f"no usable key for {row.address}: {exc}", paid=False)

        # 3. Simulate the exact transfer before buying anything for it.
        token_pause = token_pause_name(row.token)
        probe = False
        if await asyncio.to_thread(self.ledger.pause, token_pause) is not None:
            next_check = self.now() + timedelta(seconds=self.options.token_recheck_seconds)
            probe = await asyncio.to_thread(
                self.ledger.take_pause_check, token_pause, next_check_at=next_check
            )
            if not probe:
                return await self._back_to_queue(
                    row,
                    f"{row.token} is paused: every transfer reverted; re-simulated every "
                    f"{int(self.options.token_recheck_seconds)} s",
                    delay=self.options.token_recheck_seconds,
                )
        try:
            sim = await self.chain.simulate_transfer(
                row.address, self.options.destination, balance, token=_contract(row)
            )
        except ChainError as exc:  # node errors and timeouts back off; they never hold
            return await self._node_error(row, f"transfer simulation failed: {exc}")
        if sim.reverted:
            return await self._reverted(row, sim, probe=probe)
        if sim.energy_used <= 0:  # a passing transfer always uses energy: the answer is unusable
            return await self._node_error(row, "the simulation answered no energy_used")
        self._node_errors.pop(row.id, None)
        # It passes now: a revert seen earlier no longer counts toward holding the address.
        passed: dict[str, Any] = {"reverting_since": None}
        if probe:
            await asyncio.to_thread(self.ledger.clear_pause, token_pause)
            log.info("token resumed: a simulated transfer passes again", token=row.token, sweep_id=row.id)
        self._reverting.pop(row.token, None)
        need = sim.energy_used

        # 4. Would collect-manual deliver enough? (It decides 65k/131k by whether the destination
        # holds the token; index-data's figures, when present, must agree.)
        try:
            destination_holds = await self.chain.token_balance(self.options.destination, _contract(row)) > 0
            energy_fee = await self.chain.energy_fee()
        except ChainError as exc:
            return await self._node_error(row, f"chain read before ordering failed: {exc}", changes=passed)
        delivered = await self._delivered_energy(destination_holds)
        if need > delivered:
            return await self._fail(
                row,
                f"the transfer needs {need} energy; collect-manual delivers {delivered}: nothing ordered",
                paid=True,  # it would fail the same way every time: hold for the operator
                changes={"energy_needed": need, "order_sent_at": None},
            )
        if need * energy_fee > self.options.max_fee_limit_sun:
            log.error(
                "ALERT: a transfer's fee_limit would exceed safety.max_fee_limit_trx; nothing ordered",
                sweep_id=row.id,
                energy=need,
                energy_fee_sun=energy_fee,
                max_fee_limit_trx=format_units(self.options.max_fee_limit_sun, 6),
            )
            return await self._back_to_queue(
                row,
                f"fee_limit for {need} energy at {energy_fee} sun is {format_units(need * energy_fee, 6)} TRX, "
                "above safety.max_fee_limit_trx",
                delay=3600.0,
                changes=passed,
            )

        # 5. The energy (and the bandwidth) may already be there: then nothing is bought.
        try:
            check = await self.chain.check_resources(
                row.address, self.options.destination, _contract(row), energy_needed=need
            )
        except ChainError as exc:
            return await self._node_error(row, f"resource check failed: {exc}", changes=passed)
        busy = await asyncio.to_thread(self.ledger.address_busy, row.address, other_than=row.id)
        if busy is not None:
            # Another token's sweep of this address has energy coming or in use: its energy is
            # not ours to count, nor to spend. Wait for it to finish.
            return await self._back_to_queue(
                row, f"sweep {busy} of the same address is in progress", delay=30.0, changes=passed
            )
        if check.ok:
            return await self._move(
                row,
                S.ENERGY_READY,
                f"{check.energy_available} energy and {check.bandwidth_available} bandwidth already on the "
                f"address for a transfer needing {need}: nothing ordered",
                changes={
                    "energy_needed": need,
                    "order_sent_at": None,
                    "charge_sun": None,
                    "reverting_since": None,
                    "last_error": None,
                    "next_attempt_at": None,
                },
            )

        # 6. One clock: a host clock far from the chain's (or a stalled node) would pay for
        # transfers the node already considers expired. Nothing is ordered until they agree.
        try:
            clock_problem = await self._chain_clock_problem()
        except ChainError as exc:
            return await self._node_error(
                row, f"head block read for the clock check failed: {exc}", changes=passed
            )
        if clock_problem is not None:
            return await self._back_to_queue(
                row, clock_problem, delay=self.options.chain_clock_retry_seconds, changes=passed
            )

        # 7. Caps, failing closed: no quote, no order; the reservation and the order-sent mark are
        # one transaction against the UTC day's locked budget row.
        price = await self._price()
        if price is None:
            return await self._back_to_queue(
                row,
                "no energy price quote: nothing is ordered without one",
                delay=self.options.no_quote_retry_seconds,
                changes=passed,
            )
        # What the order may cost, activation included (the provider activates the address).
        reserve = price + (0 if check.activated else ACTIVATION_RESERVE_SUN)
        if reserve > self.options.max_cost_per_sweep_sun:
            what = "energy price" if reserve == price else "energy price with the activation"
            return await self._back_to_queue(
                row,
                f"{what} {format_units(reserve, 6)} TRX is above safety.max_cost_per_sweep_trx",
                delay=3600.0,
                changes=passed,
            )
        # Taken before the mark: the POST must follow it closely. Both clocks: the monotonic one
        # stands still through a host suspend or a VM pause, the ledger's follows the wall clock.
        marked, marked_at = time.monotonic(), self.now()
        reservation = await asyncio.to_thread(
            self.ledger.reserve_order,
            row.id,
            self.worker_id,
            price_sun=reserve,
            cap_sun=self.options.max_daily_spend_sun,
        )
        if reservation is None:
            raise _LostClaim
        if reservation.paused is not None:
            return await self._back_to_queue(
                row, f"energy ordering is paused: {reservation.paused}", delay=60.0, changes=passed
            )
        if not reservation.reserved:
            day_start = datetime.strptime(reservation.day, "%Y-%m-%d").replace(tzinfo=UTC)
            tomorrow = day_start + timedelta(days=1)
            log.warning(
                "daily energy spend cap reached",
                spent_sun=reservation.spent_sun,
                cap_sun=self.options.max_daily_spend_sun,
                day=reservation.day,
            )
            return await self._back_to_queue(
                row,
                f"daily spend cap reached ({format_units(reservation.spent_sun, 6)} TRX charged on "
                f"{reservation.day} UTC)",
                delay=(tomorrow - self.now()).total_seconds() + 1,
                changes=passed,
            )

        # A worker stalled between the mark and the POST (a frozen VM, a stopped process, a starved
        # loop) may have lost the row meanwhile: another worker looks the order up and, finding none,
        # sends its own once the settle window has passed since the mark. A POST this late could
        # land after that one: not sent. The row is looked up, and ordered after the window if absent.
        stalled = max(time.monotonic() - marked, (self.now() - marked_at).total_seconds())
        if stalled > self.options.order_settle_seconds / 2:
            log.warning(
                "energy order not sent: stalled after marking it", sweep_id=row.id, seconds=round(stalled)
            )
            await self._release(
                row,
                self.options.order_grace_seconds,
                f"order not sent: this worker stalled {stalled:.0f} s after marking it (over half of the "
                f"{self.options.order_settle_seconds:.0f} s settle window); looked up, then ordered once "
                "the window has passed",
            )
            return Step.WAIT

        # 8. Order, outside any transaction. Whatever happens next (a lost answer, a crash), the
        # lookup in step 1 and the settle wait guard the following attempt.
        crash_point("order-sent")
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
            if "out_trade_no" in exc.field_errors:
                # Refused because of our out_trade_no (e.g. already used): an order with it may
                # exist after all. Keep the reservation and keep looking it up; never fail unpaid.
                log.warning(
                    "order refused over its out_trade_no; looking it up", sweep_id=row.id, error=str(exc)
                )
                await self._release(
                    row, self.options.order_grace_seconds, f"order refused: {exc}", count=True
                )
                return Step.WAIT
            if exc.field_errors:  # the request itself names what is wrong with this sweep
                self._consecutive_rejections = 0
                return await self._fail(
                    row,
                    f"provider rejected the order: {exc}",
                    paid=False,
                    changes={"charge_sun": None, "order_sent_at": None},
                    data={"raw": exc.raw},
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
            return await self._back_to_queue(row, f"provider unavailable: {exc}", count=True, changes=passed)
        except ProviderError as exc:
            await self._release(row, self.options.order_grace_seconds, f"provider error: {exc}", count=True)
            return Step.WAIT
        crash_point("order-answered")
        self._consecutive_rejections = 0
        await asyncio.to_thread(self._check_real_cost, row, order.amount_sun, order.serial)
        return await self._move(
            row,
            S.ENERGY_ORDERED,
            f"energy ordered: serial {order.serial}, {format_units(order.amount_sun, 6)} TRX",
            changes={
                "serial": order.serial,
                "scene": order.scene,
                "cost_sun": order.amount_sun,
                "charge_sun": order.amount_sun,  # the reservation becomes the real amount
                "provider_balance_sun": order.balance_sun,
                "energy_needed": need,
                "reverting_since": None,
                "last_error": None,
                "next_attempt_at": None,
            },
        )

    async def _reverted(self, row: SweepRecord, sim: Simulation, *, probe: bool) -> Step:
        """The simulated transfer reverted: nothing is ordered. Frozen owner: fail and hold now.
        Another reason: back off and simulate again; hold if it still reverts after
        `revert_hold_seconds`; pause the whole token when its transfers revert everywhere."""
        what = f"the simulated transfer reverts ({sim.message or 'no reason given'})"
        try:
            frozen = await self.chain.is_blacklisted(row.address, token=_contract(row))
        except ChainResponseError:
            frozen = False  # the token has no freeze list (no isBlackListed): not frozen by it
        except ChainError as exc:
            return await self._node_error(row, f"{what}; freeze check failed: {exc}")
        if frozen:
            return await self._fail(
                row,
                f"{what}: {row.address} is frozen by the {row.token} contract (isBlackListed); nothing ordered",
                paid=True,
                changes={"order_sent_at": None, "charge_sun": None},
            )
        token_pause = token_pause_name(row.token)
        if probe:
            return await self._back_to_queue(
                row, f"{what}; {row.token} stays paused", delay=self.options.token_recheck_seconds
            )
        reverting = self._reverting.setdefault(row.token, {})
        now = time.monotonic()
        reverting[row.address] = now
        for address, at in list(reverting.items()):  # only recent reverts count
            if now - at > self.options.revert_hold_seconds:
                del reverting[address]
        if len(reverting) >= TOKEN_PAUSE_AFTER_ADDRESSES:
            next_check = self.now() + timedelta(seconds=self.options.token_recheck_seconds)
            if await asyncio.to_thread(
                self.ledger.set_pause,
                token_pause,
                f"{what} for {len(reverting)} addresses",
                next_check_at=next_check,
            ):
                log.error(
                    "ALERT: every transfer of this token reverts (token paused, or the destination frozen?); "
                    "its sweeps are paused and one is re-simulated periodically",
                    token=row.token,
                    addresses=len(reverting),
                    reason=sim.message,
                    recheck_seconds=self.options.token_recheck_seconds,
                )
            reverting.clear()
        if await asyncio.to_thread(self.ledger.pause, token_pause) is not None:
            return await self._back_to_queue(
                row,
                f"{what}; {row.token} is paused",
                delay=self.options.token_recheck_seconds,
                changes={"reverting_since": None},
            )
        since = row.reverting_since or self.now()
        if (self.now() - since).total_seconds() >= self.options.revert_hold_seconds:
            return await self._fail(
                row,
                f"{what} since {since.isoformat()}: nothing ordered",
                paid=True,
                changes={"order_sent_at": None, "charge_sun": None},
            )
        return await self._back_to_queue(
            row, what, delay=self.options.revert_retry_seconds, changes={"reverting_since": since}
        )

    async def _delivered_energy(self, destination_holds: bool) -> int:
        """What collect-manual delegates for this destination: the documented figure, lowered by
        index-data's when the provider states one (a missing value means unknown, not a failure)."""
        documented = (
            COLLECT_MANUAL_ENERGY_TO_HOLDER if destination_holds else COLLECT_MANUAL_ENERGY_TO_NEW_HOLDER
        )
        cached = self._index_cache
        if cached is None or time.monotonic() - cached[0] >= self.options.index_data_ttl_seconds:
            try:
                index = await self.provider.index_data()
                figures = (index.usdt_energy_need_old, index.usdt_energy_need_new)
            except ProviderError as exc:
                log.warning("provider index-data unavailable; using the documented energy", error=str(exc))
                figures = (None, None)
            cached = self._index_cache = (time.monotonic(), figures)
        stated = cached[1][0] if destination_holds else cached[1][1]
        return min(documented, stated) if stated else documented

    def _check_real_cost(self, row: SweepRecord, amount_sun: int | None, serial: str) -> None:
        """An order that cost more than max_cost_per_sweep pauses ALL ordering until an operator
        resumes it (stored in the ledger: a restart does not lift it)."""
        if amount_sun is None or amount_sun <= self.options.max_cost_per_sweep_sun:
            return
        reason = (
            f"energy order {serial} for sweep {row.id} cost {format_units(amount_sun, 6)} TRX, above "
            f"safety.max_cost_per_sweep_trx ({format_units(self.options.max_cost_per_sweep_sun, 6)} TRX)"
        )
        if self.ledger.set_pause(ORDERING_PAUSE, reason):
            log.error("ALERT: energy ordering paused until `sweeper ordering resume`", reason=reason)

    async def _adopt(self, row: SweepRecord, order: Order) -> Step:
        skew = timedelta(seconds=self.options.adopt_clock_skew_seconds)
        # Without a creation time we cannot tell our order from an old ledger's: not adoptable.
        # With a nonce, our out_trade_no is unique to this row: found by it (and echoed exactly when
        # the provider echoes it), the order is ours. A legacy row (bare id, before migration 0005)
        # could meet an old ledger's order: it also needs a creation time no earlier than the row's.
        echoed = order.out_trade_no
        foreign = (
            order.receive_address != row.address
            or (echoed is not None and echoed != "" and echoed != row.out_trade_no)
            or (
                row.order_nonce is None
                and (order.create_time is None or order.create_time < row.created_at - skew)
            )
        )
        if foreign:
            log.error(
                "ALERT: an order with this out_trade_no is not ours; refusing to adopt it",
                sweep_id=row.id,
                serial=order.serial,
                order_address=order.receive_address,
                order_created=order.create_time,
            )
            return await self._fail(
                row,
                f"order {order.serial} found for out_trade_no {row.out_trade_no} belongs to {order.receive_address} "
                f"created {order.create_time}: not this sweep's; not adopted",
                paid=False,
                changes={"charge_sun": None},
            )
        changes: dict[str, Any] = {
            "serial": order.serial,
            "cost_sun": order.amount_sun,
            "last_error": None,
            "next_attempt_at": None,
        }
        if order.amount_sun is not None:
            changes["charge_sun"] = order.amount_sun
            if row.charge_sun is None:  # no live reservation (released, or from before 0004): today
                changes["charge_day"] = utc_day(self.now())
        await asyncio.to_thread(self._check_real_cost, row, order.amount_sun, order.serial)
        return await self._move(
            row,
            S.ENERGY_ORDERED,
            f"adopted existing order {order.serial} for out_trade_no {row.out_trade_no}",
            changes=changes,
        )

    async def _ordering_error(self, row: SweepRecord, error: str) -> Step:
        return await self._retry_later(row, error, count=True)

    async def _back_to_queue(
        self,
        row: SweepRecord,
        reason: str,
        *,
        delay: float | None = None,
        count: bool = False,
        changes: dict[str, Any] | None = None,
    ) -> Step:
        """Nothing was ordered (the lookup said so): back to `queued` with a later next attempt.

        Only reached once no earlier POST can still land (the settle wait) or after the provider
        answered this one: the order-sent mark is cleared, and so is any reservation against the
        day's cap (an order proven never placed costs nothing).
        """
        wait = delay if delay is not None else self._backoff(row.attempts)
        values: dict[str, Any] = {
            "next_attempt_at": self.now() + timedelta(seconds=wait),
            "last_error": reason[:1000],
            "order_sent_at": None,
            "charge_sun": None,
            **(changes or {}),
        }
        if count:
            values["attempts"] = row.attempts + 1
        return await self._move(row, S.QUEUED, reason, changes=values, release=True)

    async def _chain_clock_problem(self) -> str | None:
        """Why ordering must wait because of the clocks (None: they agree); checked at most every
        `chain_clock_check_ttl_seconds`. Raises ChainError when the head block cannot be read."""
        if not self.options.chain_clock_check:
            return None
        cached = self._clock_checked
        if cached is not None and time.monotonic() - cached[0] < self.options.chain_clock_check_ttl_seconds:
            return cached[1]
        return await self.check_chain_clock()

    async def check_chain_clock(self) -> str | None:
        """Compare the node's head-block time with this host's clock now (the daemon also calls this
        from housekeeping, so `/healthz` follows the clocks when nothing is being ordered)."""
        skew = await self.chain.head_clock_skew_seconds()
        problem = None
        if abs(skew) > self.options.max_chain_clock_skew_seconds:
            problem = (
                f"the node's head block is {skew:+.0f} s from this host's clock (limit "
                f"{self.options.max_chain_clock_skew_seconds:.0f} s): either the host clock is wrong "
                "(check NTP) or the node is stalled; nothing is ordered until they agree"
            )
            now = time.monotonic()
            if now - self._last_clock_alert >= 600:
                self._last_clock_alert = now
                log.error(
                    "ALERT: host clock and chain disagree (a wrong host clock, or a stalled node); "
                    "energy ordering waits",
                    skew_seconds=round(skew),
                )
        self._clock_checked = (time.monotonic(), problem)
        if problem is None and self.chain_clock_problem is not None:
            log.info("host clock and chain agree again; energy ordering resumes")
        self.chain_clock_problem = problem
        return problem

    async def _node_error(
        self, row: SweepRecord, reason: str, *, changes: dict[str, Any] | None = None
    ) -> Step:
        """A node error or timeout before ordering: back to the queue with a back-off that grows
        per consecutive error of the row (never counted toward max_attempts: it never fails nor holds)."""
        errors = self._node_errors[row.id] = self._node_errors.get(row.id, 0) + 1
        return await self._back_to_queue(row, reason, delay=self._backoff(errors), changes=changes)

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
        """The provider's price for one sweep to our destination (cached for a minute).

        None: no quote, and then nothing is ordered (the caps fail closed); an ALERT after
        `no_quote_alert_seconds` without one.
        """
        cached = self._price_cache
        if cached is not None and time.monotonic() - cached[0] < 60:
            return cached[1]
        try:
            quote = await self.provider.price(to_address=self.options.destination)
        except ProviderError as exc:
            now = time.monotonic()
            self._no_quote_since = self._no_quote_since or now
            if (
                now - self._no_quote_since >= self.options.no_quote_alert_seconds
                and now - self._last_no_quote_alert >= self.options.no_quote_alert_seconds
            ):
                self._last_no_quote_alert = now
                log.error(
                    "ALERT: no energy price quote for no_quote_alert_seconds; nothing is being ordered",
                    since_seconds=round(now - self._no_quote_since),
                    error=str(exc),
                )
            else:
                log.warning("energy price unavailable; nothing is ordered without a quote", error=str(exc))
            return None
        self._no_quote_since = None
        self._price_cache = (time.monotonic(), quote.total_price_sun)
        return quote.total_price_sun

    async def _need(self, row: SweepRecord, *, fresh: bool = False) -> int | None:
        """The measured energy of the row's transfer (simulated now for rows from before 0004, or
        with `fresh`: what the transfer needs now, which may be less than what was measured)."""
        if row.energy_needed is not None and not fresh:
            return row.energy_needed
        amount = row.amount if row.amount > 0 else row.observed_amount
        sim = await self.chain.simulate_transfer(
            row.address, self.options.destination, amount, token=_contract(row)
        )
        return None if sim.reverted else sim.energy_used

    # --- energy ordered: wait for the delegation ---------------------------------------

    async def _energy_ordered(self, row: SweepRecord) -> Step:
        # The order is asked first, even past the timeout (after a long outage, say): a final
        # answer (delegated, or refunded) decides, not the clock.
        try:
            order = await self.provider.query_order(serial=row.serial, out_trade_no=row.out_trade_no)
        except ProviderError as exc:
            return await self._retry_later(row, f"order query failed: {exc}")
        timed_out = self._seconds_in_state(row) > self.options.order_timeout_seconds
        timeout_reason = (
            f"energy order {row.serial} not completed within {self.options.order_timeout_seconds} s"
        )
        if not isinstance(order, Order):
            if timed_out:
                return await self._fail(row, timeout_reason + " (the provider does not know it)", paid=True)
            await self._release(row, self._poll_delay(row), f"order {row.serial} not found (yet)")
            return Step.WAIT
        if order.status.is_final and not order.status.is_success:
            amount = order.amount_sun if order.amount_sun is not None else (row.cost_sun or 0)
            refund = order.refund_amount_sun
            paid = refund < amount
            return await self._fail(
                row,
                f"energy order {order.serial} ended with status {order.status.value}"
                f" (cost {format_units(amount, 6)} TRX, refunded {format_units(refund, 6)} TRX)",
                paid=paid,
                # A refund is credited back against the day's cap.
                changes={"refund_sun": refund, "charge_sun": max(0, amount - refund)},
            )
        if not order.status.is_success:
            if timed_out:
                return await self._fail(row, f"{timeout_reason} (status {order.status.value})", paid=True)
            await self._release(row, self._poll_delay(row))
            return Step.WAIT
        try:
            need = await self._need(row)
            if need is None:
                return await self._fail(row, "the transfer now reverts in simulation", paid=True)
            check = await self.chain.check_resources(
                row.address, self.options.destination, _contract(row), energy_needed=need
            )
            if not check.ok and check.energy_available < need:
                # The need stored when ordering may be stale: measured while the destination held
                # none of the token (~130k), it drops to ~64k once another sweep's transfer lands
                # there, which is also when the provider starts delegating the holder figure (65k).
                # Measure the transfer as it is now before waiting for energy that never comes.
                now_need = await self._need(row, fresh=True)
                if now_need is not None and now_need < need:
                    need = now_need
                    check = await self.chain.check_resources(
                        row.address, self.options.destination, _contract(row), energy_needed=need
                    )
        except ChainError as exc:
            return await self._retry_later(row, f"resource check failed: {exc}")
        if not check.ok:
            # The one wait that is otherwise silent until order_timeout_seconds: said once, counted
            # from when the order was first seen complete (a slow delegation is normal, not this).
            since = self._complete_since.setdefault(row.id, time.monotonic())
            if since is not None and time.monotonic() - since >= self.options.energy_wait_warn_seconds:
                self._complete_since[row.id] = None
                log.warning(
                    "energy order complete but the chain does not show the energy yet",
                    sweep_id=row.id,
                    serial=row.serial,
                    reasons="; ".join(check.reasons),
                )
            if timed_out:
                return await self._fail(
                    row, f"{timeout_reason} on chain: " + "; ".join(check.reasons), paid=True
                )
            await self._release(
                row, self._poll_delay(row), "order complete, chain not yet: " + "; ".join(check.reasons)
            )
            return Step.WAIT
        crash_point("order-complete")
        return await self._move(
            row,
            S.ENERGY_READY,
            f"order {order.serial} completed; chain shows {check.energy_available} energy, "
            f"{check.bandwidth_available} bandwidth",
            changes={"last_error": None, "next_attempt_at": None, "energy_needed": need},
        )

    # --- energy ready: simulate again, build, verify, sign, store ----------------------

    async def _energy_ready(self, row: SweepRecord) -> Step:
        token = _contract(row)
        if row.send_attempts > self.options.max_attempts:
            return await self._fail(
                row,
                f"gave up after {row.send_attempts} rebuilds / rejected broadcasts "
                f"(pipeline.max_attempts = {self.options.max_attempts}): {row.last_error}",
                paid=True,
            )
        try:
            balance = await self.chain.token_balance(row.address, token)
        except ChainError as exc:
            return await self._retry_later(row, f"balance read failed: {exc}")
        if balance == 0:
            return await self._fail(row, "the address's balance is now zero: nothing to sweep", paid=True)
        # Simulated again right before signing: the need may have grown since the order (the
        # destination emptied of the token) or the transfer may revert now.
        try:
            sim = await self.chain.simulate_transfer(
                row.address, self.options.destination, balance, token=token
            )
            if sim.reverted:
                return await self._fail(
                    row,
                    f"the transfer reverts in simulation before signing: {sim.message or 'no reason'}",
                    paid=True,
                )
            check = await self.chain.check_resources(
                row.address, self.options.destination, token, energy_needed=sim.energy_used
            )
            energy_fee = await self.chain.energy_fee()
        except ChainError as exc:
            return await self._retry_later(row, f"simulation / resource check failed: {exc}")
        ordered_for = row.energy_needed or 0
        if sim.energy_used > check.energy_available and sim.energy_used > ordered_for:
            return await self._fail(
                row,
                f"the transfer now needs {sim.energy_used} energy (measured {ordered_for} when ordering); "
                f"the address has {check.energy_available}: not broadcast",
                paid=True,
            )
        if not check.ok:
            if self._seconds_in_state(row) > self.options.energy_ready_timeout_seconds:
                return await self._fail(
                    row,
                    f"energy/bandwidth gone for over {self.options.energy_ready_timeout_seconds} s: "
                    + "; ".join(check.reasons),
                    paid=True,
                )
            await self._release(row, self._poll_delay(row), "resources missing: " + "; ".join(check.reasons))
            return Step.WAIT
        if sim.energy_used * energy_fee > self.options.max_fee_limit_sun:
            return await self._fail(
                row,
                f"fee_limit for {sim.energy_used} energy at {energy_fee} sun exceeds safety.max_fee_limit_trx",
                paid=True,
            )
        try:
            fee_limit = min(await self.chain.fee_limit_for(sim.energy_used), self.options.max_fee_limit_sun)
            key = await asyncio.to_thread(self.keys.key_for, row.address)
            unsigned = await self.chain.build_transfer(
                row.address,
                self.options.destination,
                balance,
                token=token,
                fee_limit_sun=fee_limit,
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
            return await self._fail(row, f"no usable key: {exc}", paid=True)
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
                "energy_needed": sim.energy_used,
                "last_error": None,
            },
        )

    # --- TRX: no energy; the fee is worked out and the transfer signed in one step ----

    async def _trx_queued(self, row: SweepRecord) -> Step:
        """A TRX sweep: read the balance and the bandwidth, work out the exact fee, sign the whole
        balance less that fee, and store it (`signed`) under the address lock: one sweep of an
        address at a time, so no other sweep spends the bandwidth this one counted on."""
        token = self._token(row)
        if token is None:
            return await self._move(row, S.CANCELLED, f"{row.token} is no longer configured in [[tokens]]")
        if row.address == self.options.destination:
            return await self._move(
                row, S.CANCELLED, "the address is wallet.destination: nothing to sweep", cooldown=True
            )
        if row.attempts >= self.options.max_attempts:
            return await self._fail(
                row,
                f"gave up after {row.attempts} failed tries (pipeline.max_attempts = "
                f"{self.options.max_attempts}): {row.last_error}",
                paid=False,
            )
        if row.send_attempts > self.options.max_attempts:
            # Nothing was ever burnt by a rejected or expired TRX transfer: a cool-down, no hold.
            return await self._fail(
                row,
                f"gave up after {row.send_attempts} rebuilds / rejected broadcasts "
                f"(pipeline.max_attempts = {self.options.max_attempts}): {row.last_error}",
                paid=False,
            )
        try:
            sweep = await self.chain.build_trx_sweep(row.address, self.options.destination)
        except ChainError as exc:
            # The node, not the row: a back-off that grows per consecutive error, never counted.
            errors = self._node_errors[row.id] = self._node_errors.get(row.id, 0) + 1
            error = f"reading the TRX balance and bandwidth failed: {exc}"
            log.warning("sweep step will be retried", sweep_id=row.id, state=row.state.value, error=error)
            await self._release(row, self._backoff(errors), error[:1000])
            return Step.WAIT
        self._node_errors.pop(row.id, None)
        plan = sweep.plan
        if sweep.unsigned is None or plan.amount_sun < token.min_sweep_base_units:
            # Left alone, with a cool-down (doubling, up to a day) so the next pass does not queue
            # it again at once; a later deposit that lifts it over the line is swept then.
            return await self._move(
                row,
                S.CANCELLED,
                f"{self._units(row, plan.balance_sun)} TRX less a fee of {self._units(row, plan.fee_sun)} "
                f"({plan.paid_by}) is below min_sweep {token.min_sweep}: left alone",
                data={"balance_sun": plan.balance_sun, "fee_sun": plan.fee_sun},
                cooldown=True,
            )
        try:
            key = await asyncio.to_thread(self.keys.key_for, row.address)
            signed = self.chain.sign_transfer(sweep.unsigned, key)
        except UnsafeTransaction as exc:
            log.error(
                "ALERT: an unsafe TRX transfer was built; nothing signed", sweep_id=row.id, error=str(exc)
            )
            return await self._retry_later(row, f"unsafe transaction refused: {exc}", count=True)
        except KeySourceError as exc:
            return await self._fail(row, f"no usable key: {exc}", paid=False)
        except TransactionExpired as exc:
            return await self._retry_later(row, f"building the transfer failed: {exc}")
        crash_point("trx-signed-unstored")
        fee = f"fee {self._units(row, plan.fee_sun)} TRX ({plan.paid_by}, {plan.bandwidth_bytes} bytes)"
        try:
            # Stored BEFORE broadcasting: a crash after this line re-broadcasts these exact bytes.
            return await self._move(
                row,
                S.SIGNED,
                f"transfer of {self._units(row, plan.amount_sun)} TRX to {self.options.destination} "
                f"signed, {fee}: {signed.txid}",
                changes={
                    "txid": signed.txid,
                    "signed_tx": signed.to_json(),
                    "expiration": signed.expires_at,
                    "amount": plan.amount_sun,
                    "destination": self.options.destination,
                    "last_error": None,
                },
                data={
                    "balance_sun": plan.balance_sun,
                    "fee_sun": plan.fee_sun,
                    "bandwidth": plan.paid_by,
                    "bytes": plan.bandwidth_bytes,
                    "left_sun": plan.left_sun,
                },
                exclusive=True,
            )
        except AddressBusy as exc:
            await self._release(row, self.options.poll_max_seconds, str(exc)[:1000])
            return Step.WAIT

    # --- signed: broadcast the stored bytes -------------------------------------------

    async def _signed(self, row: SweepRecord) -> Step:
        assert row.signed_tx is not None and row.expiration is not None and row.txid is not None
        signed = SignedTransfer.from_json(row.signed_tx)
        if self.host_now() >= row.expiration:
            return await self._rebuild_if_unknown(row, signed)
        if signed.destination != self.options.destination:
            return await self._old_destination(row, signed)
        if row.send_attempts > self.options.max_attempts:
            # Out of broadcast attempts: no more sends; once the transaction has expired unknown to
            # the chain, the row fails (and holds).
            wait = (row.expiration - self.host_now()).total_seconds() + self.options.poll_min_seconds
            await self._release(row, max(self.options.poll_min_seconds, wait))
            return Step.WAIT
        if row.token_contract is not None:  # a token transfer: its energy and bandwidth must be there
            step = await self._resources_before_broadcast(row, signed, row.token_contract)
            if step is not None:
                return step
        crash_point("signed")
        return await self._broadcast_signed(row, signed)

    async def _resources_before_broadcast(
        self, row: SweepRecord, signed: SignedTransfer, token: str
    ) -> Step | None:
        """None when the token transfer's energy and bandwidth are on the address; else the step."""
        try:
            need = await self._need(row)
            check = await self.chain.check_resources(
                row.address, signed.destination, token, energy_needed=need or 0
            )
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
        return None

    async def _broadcast_signed(self, row: SweepRecord, signed: SignedTransfer) -> Step:
        assert row.expiration is not None
        try:
            result = await self.chain.broadcast(signed)
        except BroadcastRejected as exc:
            if exc.expired and self.host_now() >= row.expiration:
                return await self._rebuild_if_unknown(row, signed)
            # Counted: past pipeline.max_attempts no more sends; the row fails once the stored
            # transaction has expired unknown to the chain. (Expired for the node while our clock
            # says it is not: our clock is behind the chain's, and a rebuilt transfer would be
            # expired too: back off, no rebuild loop.)
            error = f"broadcast rejected: {exc.code} {exc.message}"
            await self._move_counted(row, error)
            return Step.WAIT
        except ChainError as exc:
            return await self._retry_later(row, f"broadcast failed: {exc}")
        crash_point("broadcast-answered")
        return await self._move(row, S.BROADCAST, f"broadcast {signed.txid}: {result.outcome.value}")

    async def _old_destination(self, row: SweepRecord, signed: SignedTransfer) -> Step:
        """wallet.destination changed since this transfer was signed: its bytes pay the old one.

        Never broadcast: it is left to expire, then rebuilt to the new destination (energy_ready
        simulates again first, and holds if the energy ordered for the old one no longer fits).
        Unless the node already has it (we sent it before a crash): then it is on its way.
        """
        try:
            known = await self.chain.transaction_known(signed.txid)
        except ChainError as exc:
            return await self._retry_later(row, f"lookup of {signed.txid} failed: {exc}")
        if known:
            log.error(
                "ALERT: a transfer to the previous wallet.destination was already broadcast; it is "
                "confirmed as sent",
                sweep_id=row.id,
                txid=signed.txid,
                paid_to=signed.destination,
            )
            return await self._move(
                row,
                S.BROADCAST,
                f"transaction {signed.txid} to {signed.destination} already known to the node",
            )
        assert row.expiration is not None
        wait = (row.expiration - self.host_now()).total_seconds() + self.options.poll_min_seconds
        reason = (
            f"signed to {signed.destination}, but wallet.destination is now {self.options.destination}: "
            f"not broadcast; rebuilt once it expires at {row.expiration.isoformat()}"
        )
        log.warning("stored transfer pays the previous destination; not broadcast", sweep_id=row.id)
        await self._release(row, max(self.options.poll_min_seconds, wait), reason)
        return Step.WAIT

    async def _move_counted(self, row: SweepRecord, error: str) -> None:
        """A rejected broadcast: count it against pipeline.max_attempts and back off."""
        log.warning("sweep step will be retried", sweep_id=row.id, state=row.state.value, error=error)
        with contextlib.suppress(_LostClaim):
            moved = await asyncio.to_thread(
                self.ledger.count_send_attempt, row.id, self.worker_id, error[:1000],
                self.now() + timedelta(seconds=self._backoff(row.send_attempts)),
            )  # fmt: skip
            if not moved:
                raise _LostClaim

    async def _rebuild_if_unknown(self, row: SweepRecord, signed: SignedTransfer) -> Step:
        """The stored transaction expired: rebuild only if the chain can no longer include it."""
        try:
            status = await self.chain.transaction_status(
                signed.txid, expiration_ms=signed.expiration_ms, token=row.token_contract
            )
        except ChainError as exc:
            return await self._retry_later(row, f"status of {signed.txid} unknown: {exc}")
        if status.state is TxState.EXPIRED:
            return await self._expired(row, f"transaction {signed.txid} expired and is unknown to the chain")
        if status.state is TxState.PENDING:
            await self._release(row, self.options.poll_min_seconds)
            return Step.WAIT
        # The chain has it (confirmed or failed): it was broadcast after all.
        return await self._move(
            row, S.BROADCAST, f"transaction {signed.txid} found on chain ({status.state.value})"
        )

    async def _expired(self, row: SweepRecord, what: str) -> Step:
        """Rebuild: a new transaction, counted against pipeline.max_attempts (energy_ready fails the
        row, held, once they are used up; a signed row itself never fails while its bytes could land).
        A TRX sweep goes back to `queued`, where its fee is worked out again."""
        return await self._move(
            row,
            S.QUEUED if row.is_trx else S.ENERGY_READY,
            f"{what}: rebuild",
            changes={
                "txid": None,
                "signed_tx": None,
                "expiration": None,
                "send_attempts": row.send_attempts + 1,
                "last_error": what[:1000],
            },
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
            return await self._expired(row, f"transaction {row.txid} was never included and has expired")
        if status.state is TxState.FAILED:
            return await self._fail(
                row,
                f"transaction {row.txid} failed on chain: {status.reason}",
                paid=True,
                changes={"fee_sun": status.fee_sun},
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
        crash_point("confirm-read")
        return await self._move(
            row,
            S.CONFIRMED,
            f"confirmed in block {status.block_number}: {self._units(row, moved)} {row.token} moved",
            changes={"amount": moved, "fee_sun": status.fee_sun},
            data={"block": status.block_number, "fee_sun": status.fee_sun, "energy_used": status.energy_used},
        )


def worker_name() -> str:
    """`host:pid:random`. The random part: two containers with the same hostname and PID (both PID 1,
    say) must never share leases, nor release each other's on shutdown."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
