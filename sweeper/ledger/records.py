"""What the ledger hands out: plain frozen records of its rows, and the errors it refuses with."""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row

from sweeper.domain import FINAL_STATES, AssetKind, SweepState
from sweeper.errors import LedgerError


class SweepNotFound(LedgerError):
    pass


class AddressBusy(LedgerError):
    """Another sweep of the deposit address is past `queued` (or queued before this one): this one
    waits. One sweep per address at a time: each counts on the address's bandwidth and energy."""


class OpenSweepExists(LedgerError):
    """(address, token) already has an open sweep: the partial unique index said no."""


@dataclass(frozen=True)
class SweepRecord:
    id: int
    address: str
    token: str
    asset_kind: AssetKind
    token_contract: str | None  # None: a TRX sweep
    state: SweepState
    observed_amount: int
    amount: int
    destination: str | None
    serial: str | None
    scene: int | None
    cost_sun: int | None
    provider_balance_sun: int | None
    txid: str | None
    fee_sun: int | None
    signed_tx: str | None
    expiration: datetime | None
    attempts: int
    next_attempt_at: datetime | None
    order_sent_at: datetime | None
    order_nonce: str | None
    energy_needed: int | None
    charge_sun: int | None
    charge_day: str | None
    refund_sun: int | None
    send_attempts: int
    first_claimed_at: datetime | None
    reverting_since: datetime | None
    claimed_by: str | None
    lease_until: datetime | None
    last_error: str | None
    retry_of: int | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> SweepRecord:
        data = dict(row._mapping)
        data["state"] = SweepState(data["state"])
        data["asset_kind"] = AssetKind(data["asset_kind"])
        return cls(**data)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def is_trx(self) -> bool:
        return self.asset_kind is AssetKind.TRX

    @property
    def out_trade_no(self) -> str:
        """The provider's key for this row's one energy order (compared as this exact string)."""
        return f"{self.id}-{self.order_nonce}" if self.order_nonce else str(self.id)


# "<id>-<nonce>" or, for a row made before migration 0005, the bare id.
OUT_TRADE_NO = re.compile(r"([0-9]{1,18})(?:-([A-Z2-7]{8}))?")


def new_order_nonce() -> str:
    """8 random base32 characters (40 bits): "<row id>-<nonce>" stays within 32 characters."""
    return base64.b32encode(secrets.token_bytes(5)).decode("ascii")


@dataclass(frozen=True)
class SweepEventRecord:
    id: int
    sweep_id: int
    at: datetime
    from_state: SweepState | None
    to_state: SweepState
    reason: str
    actor: str | None
    data: dict[str, Any] | None


@dataclass(frozen=True)
class DepositAddressRecord:
    id: int
    address: str
    hd_index: int | None
    label: str | None
    source: str
    watched: bool
    created_at: datetime


@dataclass(frozen=True)
class HoldRecord:
    id: int
    address: str
    token: str
    sweep_id: int | None
    reason: str
    held_at: datetime
    released_at: datetime | None = None
    released_by: str | None = None
    release_reason: str | None = None


@dataclass(frozen=True)
class CooldownRecord:
    address: str
    token: str
    failures: int
    until: datetime
    last_reason: str


@dataclass(frozen=True)
class PauseRecord:
    name: str
    reason: str
    since: datetime
    next_check_at: datetime | None


@dataclass(frozen=True)
class Reservation:
    """The outcome of `reserve_order`: reserved (and marked sent), or the cap said no."""

    reserved: bool
    spent_sun: int  # the day's charges (reservations included) before this one
    day: str
    paused: str | None = None  # not reserved because ordering is paused (why)


@dataclass(frozen=True)
class NewAddress:
    address: str
    source: str  # hd | file | keyfile | import
    hd_index: int | None = None
    label: str | None = None


@dataclass(frozen=True)
class ScanPassState:
    name: str
    pass_started_at: datetime
    last_address_id: int
    addresses_scanned: int
    sweeps_queued: int
    completed_at: datetime | None

    @property
    def resumed(self) -> bool:
        return self.last_address_id > 0


@dataclass(frozen=True)
class Stats:
    by_state: dict[str, int]
    swept_by_token: dict[str, int]  # base units moved by confirmed sweeps
    energy_cost_sun: int  # provider spend recorded on sweeps
    addresses: int
    held: int = 0  # (address, token) pairs held after a paid failure
    spent_today_sun: int = 0  # charges against today's (UTC) cap, reservations included
    ordering_paused: str | None = None  # why ordering is paused (a cost anomaly), if it is
    follow_next_block: int | None = None  # the block follower's cursor (None: not following yet)
    follow_advanced_at: datetime | None = None  # when the cursor last moved
    fee_burnt_sun: int = 0  # TRX burnt by the sweeps' own transactions (bandwidth, energy, new accounts)


class CursorRefused(LedgerError):
    """A cursor write that would skip, go back or come before its start: a bug, nothing written."""


@dataclass(frozen=True)
class FollowLease:
    """A lease just taken on a follower's cursor: present `token` with every write."""

    name: str
    holder: str
    token: str
    lease_until: datetime
    next_block: int | None  # the first block not yet processed; None: following never started
    start_block: int | None
    start_recorded_at: datetime | None  # a pass that began before this does not count as initial
    initial_poll_done: bool
    previous_holder: str | None  # whose lease ran out (or was released) before this take


@dataclass(frozen=True)
class FollowCursorRecord:
    """A follower's cursor as monitoring sees it (the lease token is not handed out)."""

    name: str
    next_block: int | None
    start_block: int | None
    start_recorded_at: datetime | None
    initial_poll_done_at: datetime | None
    holder: str | None
    lease_until: datetime | None
    advanced_at: datetime | None
    last_block_at: datetime | None  # the time of block next_block - 1, if the follower gave it
    started_at: datetime
    updated_at: datetime

    def leased_at(self, now: datetime) -> bool:
        return self.holder is not None and self.lease_until is not None and self.lease_until > now

    def lag_blocks(self, solid_head: int) -> int | None:
        """Solid blocks not yet processed (None before following started)."""
        return None if self.next_block is None else max(0, solid_head + 1 - self.next_block)


def _follow_cursor_record(row: Row[Any]) -> FollowCursorRecord:
    return FollowCursorRecord(
        name=row.name,
        next_block=None if row.next_block is None else int(row.next_block),
        start_block=None if row.start_block is None else int(row.start_block),
        start_recorded_at=row.start_recorded_at,
        initial_poll_done_at=row.initial_poll_done_at,
        holder=row.holder,
        lease_until=row.lease_until,
        advanced_at=row.advanced_at,
        last_block_at=row.last_block_at,
        started_at=row.started_at,
        updated_at=row.updated_at,
    )


def _pause_record(row: Row[Any]) -> PauseRecord:
    return PauseRecord(row.name, row.reason, row.since, row.next_check_at)


def _hold_record(row: Row[Any]) -> HoldRecord:
    return HoldRecord(
        id=int(row.id),
        address=row.address,
        token=row.token,
        sweep_id=row.sweep_id,
        reason=row.reason,
        held_at=row.held_at,
        released_at=row.released_at,
        released_by=row.released_by,
        release_reason=row.release_reason,
    )


def _scan_state(row: Row[Any]) -> ScanPassState:
    return ScanPassState(
        name=row.name,
        pass_started_at=row.pass_started_at,
        last_address_id=int(row.last_address_id),
        addresses_scanned=int(row.addresses_scanned),
        sweeps_queued=int(row.sweeps_queued),
        completed_at=row.completed_at,
    )
