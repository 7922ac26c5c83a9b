"""Prometheus metrics for `GET /metrics`, in a registry of their own.

The registry is never prometheus_client's global one: two daemons in one test process (or a
daemon next to the CLI) must not share or double-register series. Ledger-derived values are
gauges re-read from the database (`refresh_from_ledger`), so they are right after a restart and
agree with `sweeper stats`; only errors and callbacks are counted in process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from sweeper.domain import SweepState
from sweeper.ledger import Ledger, Stats
from sweeper.ledger.queries import StuckSweeps, last_completed_scan, stuck_sweeps

# The classic text format `generate_latest` writes; every Prometheus version reads it.
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# The `result` label of sweeper_callbacks_total, besides the verifier's rejection reasons
# (`sweeper.provider.callbacks.RejectionReason` values: bad_signature, stale_timestamp, …).
CALLBACK_HINTED: Final = "hinted"  # verified, and it matched an open sweep
CALLBACK_UNMATCHED: Final = "unmatched"  # verified, no open sweep matched (logged, still 200)
CALLBACK_TOO_LARGE: Final = "too_large"  # body over the limit (413)
CALLBACK_ERROR: Final = "error"  # verified, but making the sweep due failed (503)
CALLBACK_RATE_LIMITED: Final = "rate_limited"  # failed beyond [callback] max_failed_per_second (429)


@dataclass(frozen=True)
class LedgerSnapshot:
    """What one `refresh_from_ledger` read: the daemon logs its stuck-sweep alert from this."""

    stats: Stats
    stuck: StuckSweeps
    last_completed_scan: datetime | None


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sweeps = Gauge("sweeper_sweeps", "Sweeps in the ledger, by state", ["state"], registry=r)
        self.swept_base_units = Gauge(
            "sweeper_swept_base_units_total",
            "Base units moved by confirmed sweeps, per token (sun for TRX; from the ledger)",
            ["token"],
            registry=r,
        )
        self.fee_burnt_sun = Gauge(
            "sweeper_fee_burnt_sun_total",
            "TRX burnt by the sweeps' own transactions (bandwidth, energy, new accounts), in sun "
            "(from the ledger)",
            registry=r,
        )
        self.energy_spend_sun = Gauge(
            "sweeper_energy_spend_sun_total",
            "Provider spend on energy orders recorded on sweeps, in sun (from the ledger)",
            registry=r,
        )
        self.provider_balance_sun = Gauge(
            "sweeper_provider_balance_sun",
            "The energy provider account's balance at the last check, in sun (NaN until known)",
            registry=r,
        )
        self.detection_lag_seconds = Gauge(
            "sweeper_detection_lag_seconds",
            "Seconds since the last completed detection pass (NaN until one completed)",
            registry=r,
        )
        self.node_errors = Counter(
            "sweeper_node_errors",
            "Failed TRON node requests (transport errors and error statuses)",
            registry=r,
        )
        self.provider_errors = Counter(
            "sweeper_provider_errors",
            "Failed energy provider requests (transport errors, 5xx and 429 answers)",
            registry=r,
        )
        self.scan_address_errors = Counter(
            "sweeper_scan_address_errors",
            "Deposit addresses (per token) whose balance could not be read or queued in a scan pass; "
            "skipped, read again next pass",
            registry=r,
        )
        self.callbacks = Counter(
            "sweeper_callbacks",
            "Provider callbacks received, by result (hinted, unmatched, too_large, error, or the rejection reason)",
            ["result"],
            registry=r,
        )
        self.stuck_sweeps = Gauge(
            "sweeper_stuck_sweeps",
            "Open sweeps first claimed longer than pipeline.stuck_alert_seconds ago",
            registry=r,
        )
        self.deposit_addresses = Gauge(
            "sweeper_deposit_addresses", "Deposit addresses in the ledger", registry=r
        )
        self.held_addresses = Gauge(
            "sweeper_held_addresses",
            "(address, token) pairs held after a failure that cost money; released by an operator",
            registry=r,
        )
        self.spent_today_sun = Gauge(
            "sweeper_spent_today_sun",
            "Charges against today's (UTC) daily spend cap: orders paid less refunds, plus reservations",
            registry=r,
        )
        self.daily_cap_sun = Gauge(
            "sweeper_daily_cap_sun",
            "The daily spend cap (safety.max_daily_spend_trx) in sun, as configured (reloads included)",
            registry=r,
        )
        self.ordering_paused = Gauge(
            "sweeper_ordering_paused",
            "1 while energy ordering is paused until `sweeper ordering resume`, else 0",
            registry=r,
        )
        # Block following ([detect] mode = "follow" / "both"), as this daemon sees it (NaN: not the
        # daemon that follows, or not known yet).
        self.follow_next_block = Gauge(
            "sweeper_follow_next_block",
            "The follower's cursor: the first block not yet processed",
            registry=r,
        )
        self.follow_solid_head = Gauge(
            "sweeper_follow_solid_head",
            "The node's latest solidified block at the follower's last look",
            registry=r,
        )
        self.follow_lag_blocks = Gauge(
            "sweeper_follow_lag_blocks", "Solidified blocks the follower has not processed yet", registry=r
        )
        self.follow_lag_seconds = Gauge(
            "sweeper_follow_lag_seconds",
            "The follower's lag behind the solid head in seconds (blocks x 3 s)",
            registry=r,
        )
        self.reconcile_queued = Counter(
            "sweeper_reconcile_queued",
            "Sweeps the safety-net poll pass queued that following had not (expected 0 after the first pass)",
            registry=r,
        )
        for gauge in (
            self.follow_next_block,
            self.follow_solid_head,
            self.follow_lag_blocks,
            self.follow_lag_seconds,
        ):
            gauge.set(math.nan)
        # Unknown is not zero: a balance of 0 sun would page someone, "not checked yet" should not.
        self.provider_balance_sun.set(math.nan)
        self.detection_lag_seconds.set(math.nan)
        for state in SweepState:
            self.sweeps.labels(state=state.value).set(0)
        self.stuck_count = 0
        self.last_snapshot: LedgerSnapshot | None = None
        # Cheap, non-blocking updates run at every scrape (error counters, detection lag), so
        # /metrics is current without waiting for the next housekeeping run.
        self.before_render: list[Callable[[], None]] = []
        self._counted: dict[int, int] = {}

    # --- updates ----------------------------------------------------------------------------

    def refresh_from_ledger(
        self, ledger: Ledger, *, stuck_after_seconds: float, now: datetime
    ) -> LedgerSnapshot:
        """Re-read the ledger-derived gauges. Blocking (SQL): call it via `asyncio.to_thread`."""
        stats = ledger.stats()
        stuck = stuck_sweeps(ledger.engine, entered_before=now - timedelta(seconds=stuck_after_seconds))
        completed = last_completed_scan(ledger.engine)
        for state, count in stats.by_state.items():
            self.sweeps.labels(state=state).set(count)
        for token, total in stats.swept_by_token.items():
            self.swept_base_units.labels(token=token).set(total)
        self.energy_spend_sun.set(stats.energy_cost_sun)
        self.fee_burnt_sun.set(stats.fee_burnt_sun)
        self.deposit_addresses.set(stats.addresses)
        self.held_addresses.set(stats.held)
        self.spent_today_sun.set(stats.spent_today_sun)
        self.ordering_paused.set(1 if stats.ordering_paused else 0)
        self.stuck_sweeps.set(stuck.count)
        self.stuck_count = stuck.count
        if completed is not None:
            self.set_detection_lag(completed, now)
        snapshot = LedgerSnapshot(stats=stats, stuck=stuck, last_completed_scan=completed)
        self.last_snapshot = snapshot
        return snapshot

    def set_detection_lag(self, last_completed: datetime, now: datetime) -> None:
        self.detection_lag_seconds.set(max(0.0, (now - last_completed).total_seconds()))

    def set_follow(
        self,
        next_block: int | None,
        solid_head: int | None,
        lag_blocks: int | None,
        lag_seconds: float | None,
    ) -> None:
        for gauge, value in (
            (self.follow_next_block, next_block),
            (self.follow_solid_head, solid_head),
            (self.follow_lag_blocks, lag_blocks),
            (self.follow_lag_seconds, lag_seconds),
        ):
            gauge.set(math.nan if value is None else value)

    def count_callback(self, result: str) -> None:
        self.callbacks.labels(result=result).inc()

    # --- exposition -------------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in Prometheus text format (`CONTENT_TYPE`)."""
        for update in self.before_render:
            update()
        return generate_latest(self.registry)

    def count_up_to(self, counter: Counter, total: int) -> None:
        """Raise `counter` to `total` (a running count kept elsewhere); counters never go down."""
        current = self._counted.get(id(counter), 0)
        if total > current:
            counter.inc(total - current)
            self._counted[id(counter)] = total
