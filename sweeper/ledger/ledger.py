"""The only code that changes a sweep's state.

Every transition is one guarded UPDATE (`WHERE id = :id AND state IN (:from)`) plus one row in
the append-only `sweep_events`, in one transaction. An illegal or stale transition raises and
changes nothing. Work is claimed with leases (`claimed_by`, `lease_until`): a lease that ran out
means its worker died, and the row is picked up again (a row is claimable at `now >= lease_until`).
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from sweeper.domain import (
    FINAL_STATES,
    AssetKind,
    Clock,
    IllegalTransition,
    SweepState,
    check_transition,
    is_legal,
)
from sweeper.errors import LedgerError
from sweeper.ledger.clock import DatabaseClock
from sweeper.ledger.models import (
    MAX_BASE_UNITS,
    MAX_TOKEN_UNITS,
    AddressCooldown,
    AddressHold,
    BudgetDay,
    DepositAddress,
    FollowCursor,
    Pause,
    ScanProgress,
    Sweep,
    SweepEvent,
)
from sweeper.ledger.records import (
    OUT_TRADE_NO,
    AddressBusy,
    CooldownRecord,
    CursorRefused,
    DepositAddressRecord,
    FollowCursorRecord,
    FollowLease,
    HoldRecord,
    NewAddress,
    OpenSweepExists,
    PauseRecord,
    Reservation,
    ScanPassState,
    Stats,
    SweepEventRecord,
    SweepNotFound,
    SweepRecord,
    _follow_cursor_record,
    _hold_record,
    _pause_record,
    _scan_state,
    new_order_nonce,
)

sweeps = cast(Table, Sweep.__table__)
events = cast(Table, SweepEvent.__table__)
addresses = cast(Table, DepositAddress.__table__)
scan_progress = cast(Table, ScanProgress.__table__)
holds = cast(Table, AddressHold.__table__)
cooldowns = cast(Table, AddressCooldown.__table__)
pauses = cast(Table, Pause.__table__)
budget_days = cast(Table, BudgetDay.__table__)
follow_cursor = cast(Table, FollowCursor.__table__)

# Unpaid failures space the next attempt for the (address, token): 5 min, doubling, at most a day.
COOLDOWN_BASE_SECONDS = 300
COOLDOWN_MAX_SECONDS = 86_400
ORDERING_PAUSE = "ordering"
# The block follower's row in `follow_cursor` (what `stats()` reports).
FOLLOW_BLOCKS = "blocks"
# States in which a sweep has (or is getting) energy on its address.
BUSY_STATES = (
    SweepState.ORDERING,
    SweepState.ENERGY_ORDERED,
    SweepState.ENERGY_READY,
    SweepState.SIGNED,
    SweepState.BROADCAST,
)


def token_pause_name(token: str) -> str:
    return f"token:{token}"


# Columns a transition may set besides the state. Anything else (ids, address, token,
# observed_amount, created_at) is fixed when the row is born.
MUTABLE_COLUMNS = frozenset(
    {
        "amount", "destination", "serial", "scene", "cost_sun", "provider_balance_sun", "txid",
        "signed_tx", "expiration", "attempts", "next_attempt_at", "claimed_by", "lease_until",
        "last_error", "order_sent_at", "energy_needed", "charge_sun", "charge_day", "refund_sun",
        "send_attempts", "reverting_since", "fee_sun",
    }
)  # fmt: skip


def utc_day(at: datetime) -> str:
    """The budget day (UTC) an instant belongs to: 'YYYY-MM-DD'."""
    return at.astimezone(UTC).strftime("%Y-%m-%d")


def _check_amount(name: str, value: int, *, limit: int = MAX_BASE_UNITS) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"{name}={value!r} is not an integer base-unit amount in 0..{limit}")


def _check_token_amount(name: str, value: int) -> None:
    _check_amount(name, value, limit=MAX_TOKEN_UNITS)


def _check_lease_seconds(value: float) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value > 0):
        raise ValueError(f"lease_seconds={value!r} must be a positive number of seconds")


def _check_block(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BASE_UNITS:
        raise ValueError(f"{name}={value!r} is not a block number")


class Ledger:
    def __init__(self, engine: Engine, clock: Clock | None = None) -> None:
        self.engine = engine
        # The database's clock by default: every worker, on every host, compares against one time.
        self.now: Clock = clock if clock is not None else DatabaseClock(engine)

    # --- sweeps: birth ----------------------------------------------------------------------

    def queue_sweep(
        self,
        address: str,
        token: str,
        token_contract: str | None,
        observed_amount: int,
        *,
        reason: str = "balance at or above min_sweep",
        retry_of: int | None = None,
        actor: str | None = None,
    ) -> int | None:
        """Queue a sweep; None when (address, token) already has an open one (the index decides),
        is held after a paid failure, is cooling down after unpaid ones, or the address is unwatched
        (`addresses unwatch`). `token_contract` None: a native TRX sweep (asset kind 'trx'), else a
        TRC20 token's."""
        _check_token_amount("observed_amount", observed_amount)
        now = self.now()
        try:
            with self.engine.begin() as conn:
                if self._blocked(conn, address, token, now):
                    return None
                return self._insert_queued(
                    conn, address, token, token_contract, observed_amount, reason, retry_of, actor, now
                )
        except IntegrityError as exc:
            if _is_open_sweep_conflict(exc):
                return None
            raise

    def _blocked(self, conn: Connection, address: str, token: str, now: datetime) -> bool:
        # The address row read FOR SHARE (Postgres): an `unwatch` committing meanwhile waits for
        # this insert, or this read waits for it; once `set_watched` returns, nothing new is queued.
        watched = conn.execute(
            select(addresses.c.watched).where(addresses.c.address == address).with_for_update(read=True)
        ).scalar()
        if watched is not None and not watched:
            return True
        held = conn.execute(
            select(holds.c.id).where(
                holds.c.address == address, holds.c.token == token, holds.c.released_at.is_(None)
            )
        ).first()
        if held is not None:
            return True
        until = conn.execute(
            select(cooldowns.c.until).where(cooldowns.c.address == address, cooldowns.c.token == token)
        ).scalar()
        return until is not None and until > now

    def _insert_queued(
        self,
        conn: Connection,
        address: str,
        token: str,
        token_contract: str | None,
        observed_amount: int,
        reason: str,
        retry_of: int | None,
        actor: str | None,
        now: datetime,
    ) -> int:
        kind = AssetKind.TRX if token_contract is None else AssetKind.TOKEN
        check_transition(None, SweepState.QUEUED, kind=kind)
        sweep_id = conn.execute(
            insert(sweeps)
            .values(
                address=address,
                token=token,
                asset_kind=kind.value,
                token_contract=token_contract,
                state=SweepState.QUEUED.value,
                observed_amount=observed_amount,
                amount=observed_amount,
                attempts=0,
                order_nonce=new_order_nonce(),
                retry_of=retry_of,
                created_at=now,
                updated_at=now,
            )
            .returning(sweeps.c.id)
        ).scalar_one()
        self._event(conn, sweep_id, None, SweepState.QUEUED, reason, actor, None, now)
        return int(sweep_id)

    # --- sweeps: transitions ----------------------------------------------------------------

    def transition(
        self,
        sweep_id: int,
        source: SweepState | Iterable[SweepState],
        target: SweepState,
        *,
        reason: str,
        holder: str | None = None,
        changes: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        release: bool = False,
        hold: bool = False,
        cooldown: bool = False,
        exclusive: bool = False,
    ) -> SweepRecord:
        """Move a sweep from `source` (the state the caller saw) to `target`, with its event row.

        `exclusive`: the move takes the row past `queued` (a TRX sweep's queued -> signed): under a
        lock on its deposit address row, refused with AddressBusy (nothing changes) while another
        sweep of the address is past `queued`, or an older one is still queued (it goes first).

        `holder`: the worker's id; the UPDATE then also requires `claimed_by = holder`, so a worker
        whose lease was taken over cannot move the row. `release` drops the claim (final states
        always do). Raises IllegalTransition, changing nothing, if the transition is not in the
        table or the row is no longer in `source`.

        A failure says what follows, in the same transaction: `hold` (money was spent: the
        (address, token) is not queued again until an operator releases it) or `cooldown` (nothing
        was spent: the next sweep of the pair waits, doubling per failure). A confirmed sweep clears
        its pair's cooldown.
        """
        if hold and target is not SweepState.FAILED:
            raise ValueError("a hold only follows a failure")
        if cooldown and target not in (SweepState.FAILED, SweepState.CANCELLED):
            raise ValueError("a cool-down only follows a failure or a cancellation")
        if hold and cooldown:
            raise ValueError("a failure either holds or cools down, not both")
        sources = frozenset({source} if isinstance(source, SweepState) else source)
        if not sources:
            raise IllegalTransition("no source state given")
        for s in sources:  # legal for some kind; the row's own kind is checked once it is read
            if not any(is_legal(s, target, kind) for kind in AssetKind):
                check_transition(s, target, subject=f"sweep {sweep_id}")
        values = dict(changes or {})
        unknown = set(values) - MUTABLE_COLUMNS
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} in a transition")
        if "amount" in values:
            _check_token_amount("amount", values["amount"])
        for name in ("cost_sun", "charge_sun", "refund_sun", "energy_needed", "fee_sun"):
            if values.get(name) is not None:
                _check_amount(name, values[name])
        now = self.now()
        if release or target in FINAL_STATES:
            values.update(claimed_by=None, lease_until=None)
        if target in FINAL_STATES:
            values.setdefault("next_attempt_at", None)
        with self.engine.begin() as conn:
            # Lock the row and read the state it is really in, so the event names it exactly.
            current = conn.execute(
                select(sweeps.c.state, sweeps.c.claimed_by, sweeps.c.asset_kind, sweeps.c.address)
                .where(sweeps.c.id == sweep_id)
                .with_for_update()
            ).first()
            if current is None:
                raise SweepNotFound(f"sweep {sweep_id} does not exist")
            expected = "/".join(sorted(s.value for s in sources))
            if current.state not in expected.split("/"):
                raise IllegalTransition(
                    f"sweep {sweep_id} is {current.state}; expected {expected} for -> {target.value}"
                )
            check_transition(
                SweepState(current.state),
                target,
                subject=f"sweep {sweep_id}",
                kind=AssetKind(current.asset_kind),
            )
            if holder is not None and current.claimed_by != holder:
                raise IllegalTransition(
                    f"sweep {sweep_id} is claimed by {current.claimed_by or 'nobody'}, not {holder}; "
                    f"{current.state} -> {target.value} refused"
                )
            if exclusive:
                # Which queued row goes first was decided by the claim; here only "is another sweep
                # of the address past queued?", under the address row's lock like the claim's.
                self._lock_addresses(conn, [current.address])
                blocker = self._address_blocker(conn, current.address, sweep_id, now=now, kinds=None)
                if blocker is not None:
                    raise AddressBusy(
                        f"sweep {sweep_id}: {current.address} has sweep {blocker.id} ({blocker.state}) "
                        f"past queued; {current.state} -> {target.value} waits"
                    )
            guard = [sweeps.c.id == sweep_id, sweeps.c.state == current.state]
            if holder is not None:
                guard.append(sweeps.c.claimed_by == holder)
            result = conn.execute(
                update(sweeps)
                .where(and_(*guard))
                .values(state=target.value, updated_at=now, **values)
                .returning(*sweeps.c)
            ).first()
            if result is None:  # pragma: no cover - the row lock above makes this unreachable
                raise IllegalTransition(f"sweep {sweep_id} changed under us; nothing changed")
            self._event(conn, sweep_id, current.state, target, reason, holder, data, now)
            if hold:
                self._hold(conn, result.address, result.token, sweep_id, reason, now)
            elif cooldown:
                self._cool_down(conn, result.address, result.token, reason, now)
            elif target is SweepState.CONFIRMED:
                conn.execute(
                    delete(cooldowns).where(
                        cooldowns.c.address == result.address, cooldowns.c.token == result.token
                    )
                )
        return SweepRecord.from_row(result)

    def _hold(
        self, conn: Connection, address: str, token: str, sweep_id: int | None, reason: str, now: datetime
    ) -> None:
        active = conn.execute(
            select(holds.c.id).where(
                holds.c.address == address, holds.c.token == token, holds.c.released_at.is_(None)
            )
        ).first()
        if active is None:
            conn.execute(
                insert(holds).values(
                    address=address, token=token, sweep_id=sweep_id, reason=reason[:1000], held_at=now
                )
            )

    def _cool_down(self, conn: Connection, address: str, token: str, reason: str, now: datetime) -> None:
        known = conn.execute(
            select(cooldowns.c.failures)
            .where(cooldowns.c.address == address, cooldowns.c.token == token)
            .with_for_update()
        ).scalar()
        failures = (known or 0) + 1
        wait = min(COOLDOWN_MAX_SECONDS, COOLDOWN_BASE_SECONDS * 2 ** min(failures - 1, 20))
        values = {
            "failures": failures,
            "until": now + timedelta(seconds=wait),
            "last_reason": reason[:1000],
            "updated_at": now,
        }
        if known is None:
            conn.execute(insert(cooldowns).values(address=address, token=token, **values))
        else:
            conn.execute(
                update(cooldowns)
                .where(cooldowns.c.address == address, cooldowns.c.token == token)
                .values(**values)
            )

    def _event(
        self,
        conn: Connection,
        sweep_id: int,
        from_state: SweepState | str | None,
        to_state: SweepState,
        reason: str,
        actor: str | None,
        data: dict[str, Any] | None,
        now: datetime,
    ) -> None:
        conn.execute(
            insert(events).values(
                sweep_id=sweep_id,
                at=now,
                from_state=from_state.value if isinstance(from_state, SweepState) else from_state,
                to_state=to_state.value,
                reason=reason,
                actor=actor,
                data=json.dumps(data, sort_keys=True, default=str) if data else None,
            )
        )

    # --- claims -----------------------------------------------------------------------------

    @staticmethod
    def _blocks(other: Any, sweep_id: Any, now: datetime, kinds: Sequence[str]) -> Any:
        """`other` (a sweeps row of the same address) keeps `sweep_id` in `queued`: it is past
        `queued`, or it is an older queued row that could start now (due, and of a kind that may
        start: ordering paused lets TRX rows start). An older row that waits (a back-off, a price
        above the cap, a paused token) does not hold a younger one back: it starts once that one is
        final."""
        return or_(
            other.c.state.in_([s.value for s in BUSY_STATES]),
            and_(
                other.c.state == SweepState.QUEUED.value,
                other.c.id < sweep_id,
                or_(other.c.next_attempt_at.is_(None), other.c.next_attempt_at <= now),
                other.c.asset_kind.in_(kinds),
            ),
        )

    def _claimable(self, states: Sequence[SweepState], now: datetime, kinds: Sequence[str]) -> Any:
        # One sweep per deposit address at a time past `queued`: two tokens' sweeps of one address
        # would otherwise share (and misjudge) the energy and bandwidth on it.
        other = sweeps.alias("other")
        address_busy = (
            select(other.c.id)
            .where(
                other.c.address == sweeps.c.address,
                other.c.id != sweeps.c.id,
                self._blocks(other, sweeps.c.id, now, kinds),
            )
            .exists()
        )
        return and_(
            sweeps.c.state.in_([s.value for s in states]),
            or_(sweeps.c.next_attempt_at.is_(None), sweeps.c.next_attempt_at <= now),
            or_(sweeps.c.lease_until.is_(None), sweeps.c.lease_until <= now),
            or_(sweeps.c.state != SweepState.QUEUED.value, ~address_busy),
        )

    def claim(
        self,
        worker: str,
        states: Sequence[SweepState],
        *,
        limit: int,
        lease_seconds: float,
        queued_kinds: Iterable[AssetKind] = tuple(AssetKind),
    ) -> list[SweepRecord]:
        """Lease up to `limit` due rows in `states` to `worker`, oldest first.

        Queued TOKEN rows move to `ordering` (a transition, with its event); queued TRX rows and
        rows in later states keep their state and only get the lease. `queued_kinds`: the kinds
        whose queued rows may start (ordering paused: TRX only). A queued row starts only while no
        other sweep of its address is past `queued` and no older one is queued, decided under a
        lock on the deposit address row. Postgres: FOR UPDATE SKIP LOCKED, so concurrent claimers
        never wait on or double-claim a row. SQLite: the transaction is IMMEDIATE.
        """
        kinds = [k.value for k in queued_kinds]
        if limit <= 0:
            return []
        now = self.now()
        lease_until = now + timedelta(seconds=lease_seconds)
        with self.engine.begin() as conn:
            due = conn.execute(
                select(sweeps.c.id, sweeps.c.address, sweeps.c.state)
                .where(
                    self._claimable(states, now, kinds),
                    or_(sweeps.c.state != SweepState.QUEUED.value, sweeps.c.asset_kind.in_(kinds)),
                )
                .order_by(sweeps.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=sweeps)
            ).all()
            queued_due = [r for r in due if r.state == SweepState.QUEUED.value]
            if queued_due:
                # The address rows, locked in one order (no deadlock between claimers); then the
                # check again, now that a concurrent claimer of the same address has committed.
                self._lock_addresses(conn, (r.address for r in queued_due))
            ids: list[int] = []
            starting: set[str] = set()
            for row in due:  # at most one queued row per address starts in one batch
                if row.state == SweepState.QUEUED.value:
                    if row.address in starting or self._address_blocker(
                        conn, row.address, int(row.id), now=now, kinds=kinds
                    ):
                        continue
                    starting.add(row.address)
                ids.append(int(row.id))
            if not ids:
                return []
            # The same legality check as `transition` (and the database's trigger) for the one
            # transition a claim makes.
            check_transition(SweepState.QUEUED, SweepState.ORDERING, subject="claim")
            conn.execute(
                update(sweeps)
                .where(sweeps.c.id.in_(ids))
                .values(
                    claimed_by=worker,
                    lease_until=lease_until,
                    # The stuck alert counts from here; a return to `queued` never resets it.
                    first_claimed_at=func.coalesce(sweeps.c.first_claimed_at, now),
                )
            )
            queued = list(
                conn.execute(
                    update(sweeps)
                    .where(
                        sweeps.c.id.in_(ids),
                        sweeps.c.state == SweepState.QUEUED.value,
                        sweeps.c.asset_kind == AssetKind.TOKEN.value,
                    )
                    .values(state=SweepState.ORDERING.value, updated_at=now)
                    .returning(sweeps.c.id)
                ).scalars()
            )
            for sweep_id in queued:
                self._event(
                    conn, sweep_id, SweepState.QUEUED, SweepState.ORDERING, "claimed", worker, None, now
                )
            rows = conn.execute(select(sweeps).where(sweeps.c.id.in_(ids)).order_by(sweeps.c.id)).all()
        return [SweepRecord.from_row(r) for r in rows]

    def _address_blocker(
        self, conn: Connection, address: str, sweep_id: int, *, now: datetime, kinds: Sequence[str] | None
    ) -> Any:
        """What keeps `sweep_id` in `queued` (`_blocks`; `kinds` None: only a sweep past `queued`):
        (id, state), or None. Read with the address row locked: what concurrent claimers and
        transitions committed is seen."""
        blocking = (
            sweeps.c.state.in_([s.value for s in BUSY_STATES])
            if kinds is None
            else self._blocks(sweeps, sweep_id, now, kinds)
        )
        return conn.execute(
            select(sweeps.c.id, sweeps.c.state)
            .where(sweeps.c.address == address, sweeps.c.id != sweep_id, blocking)
            .order_by(sweeps.c.id)
            .limit(1)
        ).first()

    @staticmethod
    def _lock_addresses(conn: Connection, wanted: Iterable[str]) -> None:
        """Lock these deposit address rows, in address order (two lockers never deadlock). Postgres:
        FOR UPDATE; SQLite: the IMMEDIATE transaction already serialises every writer."""
        conn.execute(
            select(addresses.c.id)
            .where(addresses.c.address.in_(sorted(set(wanted))))
            .order_by(addresses.c.address)
            .with_for_update()
        ).all()

    def renew_lease(self, sweep_id: int, worker: str, lease_seconds: float) -> bool:
        """Extend a lease we still hold; False if it was lost (another worker took the row)."""
        now = self.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(sweeps)
                .where(sweeps.c.id == sweep_id, sweeps.c.claimed_by == worker)
                .values(lease_until=now + timedelta(seconds=lease_seconds))
            )
            return result.rowcount == 1

    def release(
        self,
        sweep_id: int,
        worker: str,
        *,
        next_attempt_at: datetime | None = None,
        last_error: str | None = None,
        count_attempt: bool = False,
    ) -> bool:
        """Give a row back without changing its state: nothing to do until `next_attempt_at`.

        `last_error` records why (a transient failure); `count_attempt` adds one to `attempts`.
        False if the claim was lost (another worker holds the row now).
        """
        values: dict[str, Any] = {"claimed_by": None, "lease_until": None, "next_attempt_at": next_attempt_at}
        if last_error is not None:
            values["last_error"] = last_error
        if count_attempt:
            values["attempts"] = sweeps.c.attempts + 1
        with self.engine.begin() as conn:
            result = conn.execute(
                update(sweeps).where(sweeps.c.id == sweep_id, sweeps.c.claimed_by == worker).values(**values)
            )
            return result.rowcount == 1

    def count_send_attempt(
        self, sweep_id: int, worker: str, last_error: str, next_attempt_at: datetime
    ) -> bool:
        """A rejected broadcast: one more against pipeline.max_attempts, and give the row back
        until `next_attempt_at`. Not a state change. False if the claim was lost."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(sweeps)
                .where(sweeps.c.id == sweep_id, sweeps.c.claimed_by == worker)
                .values(
                    send_attempts=sweeps.c.send_attempts + 1,
                    last_error=last_error,
                    next_attempt_at=next_attempt_at,
                    claimed_by=None,
                    lease_until=None,
                )
            )
            return result.rowcount == 1

    def mark_order_sent(self, sweep_id: int, worker: str, at: datetime | None) -> bool:
        """Record (before sending it) that an energy order POST goes out for this `ordering` row.

        None clears it once the provider has answered that nothing was ordered. Not a state change:
        no event row. False if the claim was lost or the row is no longer in `ordering`.
        """
        with self.engine.begin() as conn:
            result = conn.execute(
                update(sweeps)
                .where(
                    sweeps.c.id == sweep_id,
                    sweeps.c.claimed_by == worker,
                    sweeps.c.state == SweepState.ORDERING.value,
                )
                .values(order_sent_at=at, updated_at=self.now())
            )
            return result.rowcount == 1

    def reserve_order(
        self, sweep_id: int, worker: str, *, price_sun: int, cap_sun: int
    ) -> Reservation | None:
        """Reserve `price_sun` against the UTC day's cap and mark the order as sent, in one transaction.

        The budget decision and the order are serialised: the day's `budget_days` row is locked
        (SELECT … FOR UPDATE on Postgres; SQLite transactions are IMMEDIATE, one writer at a time),
        the day's charges (orders paid, less refunds, plus open reservations; this row's own earlier
        reservation excluded) are summed, and only if `spent + price <= cap` is the reservation
        written together with `order_sent_at`. The caller sends the order after this returns,
        outside any transaction. None: the claim was lost (nothing written).
        """
        _check_amount("price_sun", price_sun)
        now = self.now()
        day = utc_day(now)
        with self.engine.begin() as conn:
            if conn.execute(select(budget_days.c.day).where(budget_days.c.day == day)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(budget_days).values(day=day, created_at=now))
                except IntegrityError:  # another worker made it first: fine, lock theirs
                    pass
            conn.execute(select(budget_days.c.day).where(budget_days.c.day == day).with_for_update()).one()
            # Under the same lock as the budget: an over-cost answer that paused ordering a moment
            # ago stops every reservation after it, in any worker.
            paused = conn.execute(select(pauses.c.reason).where(pauses.c.name == ORDERING_PAUSE)).scalar()
            if paused is not None:
                return Reservation(False, 0, day, paused=paused)
            spent = int(
                conn.execute(
                    select(func.coalesce(func.sum(sweeps.c.charge_sun), 0)).where(
                        sweeps.c.charge_day == day, sweeps.c.id != sweep_id
                    )
                ).scalar_one()
            )
            if spent + price_sun > cap_sun:
                return Reservation(False, spent, day)
            result = conn.execute(
                update(sweeps)
                .where(
                    sweeps.c.id == sweep_id,
                    sweeps.c.claimed_by == worker,
                    sweeps.c.state == SweepState.ORDERING.value,
                )
                .values(charge_sun=price_sun, charge_day=day, order_sent_at=now, updated_at=now)
            )
            if result.rowcount != 1:  # the claim was lost: no reservation (the day row is harmless)
                return None
        return Reservation(True, spent, day)

    def spent_on(self, day: str) -> int:
        """The UTC day's charges: orders paid that day less refunds, plus open reservations."""
        with self.engine.connect() as conn:
            total = conn.execute(
                select(func.coalesce(func.sum(sweeps.c.charge_sun), 0)).where(sweeps.c.charge_day == day)
            ).scalar_one()
        return int(total)

    # --- holds, cooldowns and pauses --------------------------------------------------------

    def active_hold(self, address: str, token: str) -> HoldRecord | None:
        with self.engine.connect() as conn:
            return self._active_hold(conn, address, token)

    @staticmethod
    def _active_hold(conn: Connection, address: str, token: str) -> HoldRecord | None:
        row = conn.execute(
            select(holds).where(
                holds.c.address == address, holds.c.token == token, holds.c.released_at.is_(None)
            )
        ).first()
        return _hold_record(row) if row is not None else None

    def holds(self, *, active_only: bool = True) -> list[HoldRecord]:
        query = select(holds).order_by(holds.c.id)
        if active_only:
            query = query.where(holds.c.released_at.is_(None))
        with self.engine.connect() as conn:
            return [_hold_record(r) for r in conn.execute(query)]

    def held_count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(holds).where(holds.c.released_at.is_(None))
                ).scalar_one()
            )

    def release_holds(
        self, address: str, token: str | None = None, *, actor: str = "operator", reason: str = "released"
    ) -> list[HoldRecord]:
        """Lift the active hold(s) of `address` (one token, or all) and its cooldowns; returns them.

        Raises LedgerError, changing nothing, when nothing is held.
        """
        now = self.now()
        with self.engine.begin() as conn:
            return self._release_holds(conn, address, token, actor, reason, now, required=True)

    def _release_holds(
        self,
        conn: Connection,
        address: str,
        token: str | None,
        actor: str,
        reason: str,
        now: datetime,
        *,
        required: bool,
    ) -> list[HoldRecord]:
        match = [holds.c.address == address, holds.c.released_at.is_(None)]
        if token is not None:
            match.append(holds.c.token == token)
        released = [
            _hold_record(r)
            for r in conn.execute(
                update(holds)
                .where(*match)
                .values(released_at=now, released_by=actor, release_reason=reason[:1000])
                .returning(*holds.c)
            )
        ]
        if required and not released:
            what = f"{address} ({token})" if token else address
            raise LedgerError(f"{what} is not held; nothing changed")
        cool = [cooldowns.c.address == address]
        if token is not None:
            cool.append(cooldowns.c.token == token)
        conn.execute(delete(cooldowns).where(*cool))
        return released

    def cooldown(self, address: str, token: str) -> CooldownRecord | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                select(cooldowns).where(cooldowns.c.address == address, cooldowns.c.token == token)
            ).first()
        if r is None:
            return None
        return CooldownRecord(r.address, r.token, int(r.failures), r.until, r.last_reason)

    def blocked(self, token: str, candidates: Iterable[str]) -> set[str]:
        """Which of these addresses may not be queued for `token` now (held, cooling down, or
        unwatched: detection does not even read their balances)."""
        wanted = list(candidates)
        if not wanted:
            return set()
        now = self.now()
        with self.engine.connect() as conn:
            held = set(
                conn.execute(
                    select(holds.c.address).where(
                        holds.c.token == token, holds.c.address.in_(wanted), holds.c.released_at.is_(None)
                    )
                ).scalars()
            )
            cooling = set(
                conn.execute(
                    select(cooldowns.c.address).where(
                        cooldowns.c.token == token, cooldowns.c.address.in_(wanted), cooldowns.c.until > now
                    )
                ).scalars()
            )
            unwatched = set(
                conn.execute(
                    select(addresses.c.address).where(
                        addresses.c.address.in_(wanted), addresses.c.watched.is_(False)
                    )
                ).scalars()
            )
        return held | cooling | unwatched

    def pause(self, name: str) -> PauseRecord | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(pauses).where(pauses.c.name == name)).first()
        return _pause_record(r) if r is not None else None

    def set_pause(self, name: str, reason: str, *, next_check_at: datetime | None = None) -> bool:
        """Pause `name` (kept across restarts); False if it was paused already (reason unchanged)."""
        now = self.now()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(pauses).values(
                        name=name, reason=reason[:1000], since=now, next_check_at=next_check_at
                    )
                )
        except IntegrityError:
            return False
        return True

    def clear_pause(self, name: str) -> PauseRecord | None:
        """Lift a pause; returns what it was (None: it was not paused)."""
        with self.engine.begin() as conn:
            r = conn.execute(delete(pauses).where(pauses.c.name == name).returning(*pauses.c)).first()
        return _pause_record(r) if r is not None else None

    def take_pause_check(self, name: str, *, next_check_at: datetime) -> bool:
        """Atomically take the due re-check of a pause (one worker wins), pushing the next one out."""
        now = self.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(pauses)
                .where(
                    pauses.c.name == name,
                    or_(pauses.c.next_check_at.is_(None), pauses.c.next_check_at <= now),
                )
                .values(next_check_at=next_check_at)
            )
            return result.rowcount == 1

    def release_claims(self, worker: str) -> int:
        """Drop every lease `worker` holds (a clean shutdown), so a restart need not wait them out."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(sweeps).where(sweeps.c.claimed_by == worker).values(claimed_by=None, lease_until=None)
            )
            return int(result.rowcount)

    def hint(
        self, *, sweep_id: int | None = None, serial: str | None = None, out_trade_no: str | None = None
    ) -> int | None:
        """Make an open sweep due now (a verified provider callback); returns its id if one matched.

        `out_trade_no` must be exactly the row's ("<id>-<nonce>", or the bare id of a row made before
        the nonce): another ledger's order never hints our row. Only a hint: the worker re-queries
        the provider and acts on that answer, never on this.
        """
        match: Any
        if out_trade_no is not None:
            parsed = OUT_TRADE_NO.fullmatch(out_trade_no)
            if parsed is None:  # not one of ours (nor a legacy bare id)
                return None
            id_text, nonce = parsed.group(1), parsed.group(2)
            match = and_(
                sweeps.c.id == int(id_text),
                sweeps.c.order_nonce == nonce if nonce else sweeps.c.order_nonce.is_(None),
            )
        elif serial is not None:
            match = sweeps.c.serial == serial
        elif sweep_id is not None:
            match = sweeps.c.id == sweep_id
        else:
            return None
        with self.engine.begin() as conn:
            row = conn.execute(
                update(sweeps)
                .where(match, sweeps.c.state.not_in([s.value for s in FINAL_STATES]))
                .values(next_attempt_at=self.now())
                .returning(sweeps.c.id)
            ).first()
        return int(row.id) if row is not None else None

    def deposit_address(self, address: str) -> DepositAddressRecord | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(addresses).where(addresses.c.address == address)).first()
        if r is None:
            return None
        return DepositAddressRecord(
            id=r.id,
            address=r.address,
            hd_index=r.hd_index,
            label=r.label,
            source=r.source,
            watched=bool(r.watched),
            created_at=r.created_at,
        )

    # --- operator actions -------------------------------------------------------------------

    def cancel(
        self, sweep_id: int, *, reason: str = "cancelled by operator", actor: str = "operator"
    ) -> SweepRecord:
        """Cancel a sweep nothing has been ordered for yet (state queued)."""
        current = self.get_sweep(sweep_id)
        if current.state is not SweepState.QUEUED:
            raise LedgerError(
                f"sweep {sweep_id} is {current.state.value}: only a queued sweep (nothing ordered yet) can be "
                "cancelled"
            )
        try:
            return self.transition(
                sweep_id, SweepState.QUEUED, SweepState.CANCELLED, reason=reason, data={"actor": actor}
            )
        except IllegalTransition as exc:  # claimed by a worker between our read and the update
            raise LedgerError(f"{exc}; nothing changed") from None

    def retry(self, sweep_id: int, *, actor: str = "operator") -> int:
        """A failed sweep gets a NEW queued row (retry_of = ID); the failed row stays as it was.

        In one transaction: the (address, token)'s hold and cooldown are lifted, and a row the
        scanner queued meanwhile (still `queued`: nothing ordered) is cancelled in favour of the
        retry, so the retry takes the one open slot whoever got there first. A row already past
        `queued` is being swept: the retry is refused (OpenSweepExists), nothing changes.
        """
        original = self.get_sweep(sweep_id)
        if original.state is not SweepState.FAILED:
            raise LedgerError(
                f"sweep {sweep_id} is {original.state.value}: only a failed sweep can be retried"
            )
        now = self.now()
        try:
            with self.engine.begin() as conn:
                active = self._active_hold(conn, original.address, original.token)
                if active is not None and active.sweep_id != sweep_id:
                    raise LedgerError(
                        f"{original.address} ({original.token}) is held by sweep {active.sweep_id} "
                        f"({active.reason}); retry that sweep, or `sweeper addresses release` it"
                    )
                self._release_holds(
                    conn, original.address, original.token, actor, f"retry of sweep {sweep_id}", now,
                    required=False,
                )  # fmt: skip
                check_transition(SweepState.QUEUED, SweepState.CANCELLED, subject="superseded by a retry")
                superseded = (
                    conn.execute(
                        update(sweeps)
                        .where(
                            sweeps.c.address == original.address,
                            sweeps.c.token == original.token,
                            sweeps.c.state == SweepState.QUEUED.value,
                            sweeps.c.claimed_by.is_(None),
                        )
                        .values(state=SweepState.CANCELLED.value, updated_at=now, next_attempt_at=None)
                        .returning(sweeps.c.id)
                    )
                    .scalars()
                    .all()
                )
                for other in superseded:
                    self._event(
                        conn, other, SweepState.QUEUED, SweepState.CANCELLED,
                        f"superseded by the operator's retry of sweep {sweep_id}", actor, None, now,
                    )  # fmt: skip
                new_id = self._insert_queued(
                    conn,
                    original.address,
                    original.token,
                    original.token_contract,
                    original.observed_amount,
                    f"retry of sweep {sweep_id}",
                    sweep_id,
                    actor,
                    now,
                )
                # A sweep of the pair that failed (and held) while we worked: its hold stands, and
                # this retry is rolled back (Postgres: the insert above waited for that commit).
                late = self._active_hold(conn, original.address, original.token)
                if late is not None:
                    raise LedgerError(
                        f"sweep {late.sweep_id} of {original.address} failed meanwhile and holds it; "
                        "nothing changed"
                    )
                return new_id
        except IntegrityError as exc:
            with self.engine.connect() as conn:
                retried = conn.execute(select(sweeps.c.id).where(sweeps.c.retry_of == sweep_id)).scalar()
                open_id = conn.execute(
                    select(sweeps.c.id).where(
                        sweeps.c.address == original.address,
                        sweeps.c.token == original.token,
                        sweeps.c.state.not_in([s.value for s in FINAL_STATES]),
                    )
                ).scalar()
            if retried is not None:
                raise LedgerError(f"sweep {sweep_id} was already retried as sweep {retried}") from None
            if open_id is not None:
                raise OpenSweepExists(
                    f"{original.address} already has an open {original.token} sweep ({open_id})"
                ) from None
            raise LedgerError(f"cannot retry sweep {sweep_id}: {exc.orig}") from None

    # --- reads ------------------------------------------------------------------------------

    def get_sweep(self, sweep_id: int) -> SweepRecord:
        with self.engine.connect() as conn:
            row = conn.execute(select(sweeps).where(sweeps.c.id == sweep_id)).first()
        if row is None:
            raise SweepNotFound(f"sweep {sweep_id} does not exist")
        return SweepRecord.from_row(row)

    def list_sweeps(
        self, *, state: SweepState | None = None, limit: int | None = None, offset: int = 0
    ) -> list[SweepRecord]:
        query = select(sweeps).order_by(sweeps.c.id.desc()).offset(offset)
        if state is not None:
            query = query.where(sweeps.c.state == state.value)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [SweepRecord.from_row(r) for r in conn.execute(query)]

    def events(self, sweep_id: int) -> list[SweepEventRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(events).where(events.c.sweep_id == sweep_id).order_by(events.c.id)
            ).all()
        return [
            SweepEventRecord(
                id=r.id,
                sweep_id=r.sweep_id,
                at=r.at,
                from_state=_event_state(r.from_state) if r.from_state is not None else None,
                to_state=_event_state(r.to_state),
                reason=r.reason,
                actor=r.actor,
                data=json.loads(r.data) if r.data else None,
            )
            for r in rows
        ]

    def stats(self) -> Stats:
        with self.engine.connect() as conn:
            by_state = {s.value: 0 for s in SweepState}
            for state, count in conn.execute(select(sweeps.c.state, func.count()).group_by(sweeps.c.state)):
                by_state[state] = int(count)
            swept: dict[str, int] = {}
            if conn.dialect.name == "postgresql":  # NUMERIC sums exactly
                for token, total in conn.execute(
                    select(sweeps.c.token, func.sum(sweeps.c.amount))
                    .where(sweeps.c.state == SweepState.CONFIRMED.value)
                    .group_by(sweeps.c.token)
                ):
                    swept[token] = int(total)
            else:  # SQLite's SUM() of the 78-digit text would be a float: add them up exactly here
                for token, amount in conn.execute(
                    select(sweeps.c.token, sweeps.c.amount).where(
                        sweeps.c.state == SweepState.CONFIRMED.value
                    )
                ):
                    swept[token] = swept.get(token, 0) + amount
            cost = conn.execute(select(func.coalesce(func.sum(sweeps.c.cost_sun), 0))).scalar_one()
            burnt = conn.execute(select(func.coalesce(func.sum(sweeps.c.fee_sun), 0))).scalar_one()
            count = conn.execute(select(func.count()).select_from(addresses)).scalar_one()
            held = conn.execute(
                select(func.count()).select_from(holds).where(holds.c.released_at.is_(None))
            ).scalar_one()
            spent = conn.execute(
                select(func.coalesce(func.sum(sweeps.c.charge_sun), 0)).where(
                    sweeps.c.charge_day == utc_day(self.now())
                )
            ).scalar_one()
            paused = conn.execute(select(pauses.c.reason).where(pauses.c.name == ORDERING_PAUSE)).scalar()
            following = conn.execute(
                select(follow_cursor.c.next_block, follow_cursor.c.advanced_at).where(
                    follow_cursor.c.name == FOLLOW_BLOCKS
                )
            ).first()
        return Stats(
            by_state=by_state,
            swept_by_token=swept,
            energy_cost_sun=int(cost),
            fee_burnt_sun=int(burnt),
            addresses=int(count),
            held=int(held),
            spent_today_sun=int(spent),
            ordering_paused=paused,
            follow_next_block=None
            if following is None or following.next_block is None
            else int(following.next_block),
            follow_advanced_at=None if following is None else following.advanced_at,
        )

    # --- deposit addresses ------------------------------------------------------------------

    def upsert_addresses(self, new: Iterable[NewAddress], *, batch: int = 1000) -> int:
        """Add addresses not yet known (existing rows are left as they are); returns how many were added."""
        added = 0
        pending: list[NewAddress] = []
        for item in new:
            pending.append(item)
            if len(pending) >= batch:
                added += self._add_batch(pending)
                pending = []
        if pending:
            added += self._add_batch(pending)
        return added

    def _add_batch(self, items: list[NewAddress]) -> int:
        now = self.now()
        unique: dict[str, NewAddress] = {}
        for item in items:
            unique.setdefault(item.address, item)
        with self.engine.begin() as conn:
            known = set(
                conn.execute(
                    select(addresses.c.address).where(addresses.c.address.in_(list(unique)))
                ).scalars()
            )
            rows = [
                {
                    "address": a.address,
                    "hd_index": a.hd_index,
                    "label": a.label,
                    "source": a.source,
                    "watched": True,
                    "created_at": now,
                    "updated_at": now,
                }
                for a in unique.values()
                if a.address not in known
            ]
            if rows:
                conn.execute(insert(addresses), rows)
        return len(rows)

    def list_addresses(self, *, limit: int | None = None, after_id: int = 0) -> list[DepositAddressRecord]:
        query = select(addresses).where(addresses.c.id > after_id).order_by(addresses.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            return [
                DepositAddressRecord(
                    id=r.id,
                    address=r.address,
                    hd_index=r.hd_index,
                    label=r.label,
                    source=r.source,
                    watched=bool(r.watched),
                    created_at=r.created_at,
                )
                for r in conn.execute(query)
            ]

    def known_addresses(self, candidates: Iterable[str]) -> set[str]:
        wanted = list(candidates)
        with self.engine.connect() as conn:
            return set(
                conn.execute(select(addresses.c.address).where(addresses.c.address.in_(wanted))).scalars()
            )

    def hd_indexes_between(self, low: int, high: int) -> dict[int, str]:
        """hd_index -> address for the ledger's derived addresses with low <= hd_index <= high."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(addresses.c.hd_index, addresses.c.address).where(
                    addresses.c.hd_index >= low, addresses.c.hd_index <= high
                )
            )
            return {int(r.hd_index): str(r.address) for r in rows}

    def hd_index_owner(self, hd_index: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(addresses.c.address).where(addresses.c.hd_index == hd_index)).scalar()

    def set_watched(self, wanted: Iterable[str], watched: bool) -> tuple[list[str], list[str]]:
        """`addresses unwatch` / `watch`, in one transaction: (changed, already) in the order given,
        duplicates dropped. An address the ledger does not know raises LedgerError naming it, and
        nothing changes. Unwatched: detection skips it and `queue_sweep` refuses it; its open sweeps
        go on to their end. The choice is kept: `upsert_addresses` never touches an existing row."""
        unique = list(dict.fromkeys(wanted))
        now = self.now()
        changed: set[str] = set()
        with self.engine.begin() as conn:
            known: set[str] = set()
            for start in range(0, len(unique), 1000):
                chunk = unique[start : start + 1000]
                known.update(
                    conn.execute(select(addresses.c.address).where(addresses.c.address.in_(chunk))).scalars()
                )
            unknown = [a for a in unique if a not in known]
            if unknown:
                raise LedgerError(
                    f"not a deposit address in the ledger: {', '.join(unknown)}; nothing changed"
                )
            ordered = sorted(unique)  # rows locked in address order, as the claim does: no deadlock
            for start in range(0, len(ordered), 1000):
                chunk = ordered[start : start + 1000]
                self._lock_addresses(conn, chunk)
                # Only rows this transaction flips count as changed (a concurrent twin finds none).
                changed.update(
                    conn.execute(
                        update(addresses)
                        .where(addresses.c.address.in_(chunk), addresses.c.watched.is_(not watched))
                        .values(watched=watched, updated_at=now)
                        .returning(addresses.c.address)
                    ).scalars()
                )
        return [a for a in unique if a in changed], [a for a in unique if a not in changed]

    # --- detection: watched pages and pass progress ------------------------------------------

    def address_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(addresses)).scalar_one())

    def watched_count(self) -> int:
        """How many deposit addresses are watched (a detection pass's total, for its progress)."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(addresses).where(addresses.c.watched.is_(True))
                ).scalar_one()
            )

    def watched_page(self, *, after_id: int, limit: int) -> list[tuple[int, str]]:
        """(id, address) of watched deposit addresses with id > after_id, in id order (streaming)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(addresses.c.id, addresses.c.address)
                .where(addresses.c.id > after_id, addresses.c.watched.is_(True))
                .order_by(addresses.c.id)
                .limit(limit)
            ).all()
        return [(int(r.id), str(r.address)) for r in rows]

    def watched_added_since(self, since: datetime) -> list[str]:
        """Watched deposit addresses registered, or watched again, at or after `since` (the block
        follower reads their balances once: deposits made before are in blocks it never looked at
        for them). `updated_at` changes at creation and with `set_watched` only."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(addresses.c.address)
                .where(addresses.c.updated_at >= since, addresses.c.watched.is_(True))
                .order_by(addresses.c.id)
            ).all()
        return [str(r.address) for r in rows]

    def watch_changes_since(self, since: datetime) -> list[tuple[str, bool, datetime]]:
        """(address, watched, updated_at) of deposit addresses created, watched or unwatched at or
        after `since` (indexed, 0010): the block follower's set follows `addresses unwatch`/`watch`."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(addresses.c.address, addresses.c.watched, addresses.c.updated_at)
                .where(addresses.c.updated_at >= since)
                .order_by(addresses.c.id)
            ).all()
        return [(str(r.address), bool(r.watched), r.updated_at) for r in rows]

    def address_busy(self, address: str, *, other_than: int) -> int | None:
        """Another sweep of `address` past `queued` (it has, or is getting, energy there): its id."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(sweeps.c.id).where(
                    sweeps.c.address == address,
                    sweeps.c.id != other_than,
                    sweeps.c.state.in_([s.value for s in BUSY_STATES]),
                )
            ).scalar()
        return int(found) if found is not None else None

    def with_open_sweep(self, token: str, candidates: Iterable[str]) -> set[str]:
        """Which of these addresses already have an open sweep of `token` (no need to read them)."""
        wanted = list(candidates)
        if not wanted:
            return set()
        with self.engine.connect() as conn:
            return set(
                conn.execute(
                    select(sweeps.c.address).where(
                        sweeps.c.token == token,
                        sweeps.c.address.in_(wanted),
                        sweeps.c.state.not_in([s.value for s in FINAL_STATES]),
                    )
                ).scalars()
            )

    def begin_scan_pass(self, name: str) -> ScanPassState:
        """The pass to work on: the unfinished one if a crash interrupted it, else a new one."""
        now = self.now()
        with self.engine.begin() as conn:
            row = conn.execute(
                select(scan_progress).where(scan_progress.c.name == name).with_for_update()
            ).first()
            if row is None:
                conn.execute(insert(scan_progress).values(name=name, pass_started_at=now, updated_at=now))
            elif row.completed_at is not None:
                conn.execute(
                    update(scan_progress)
                    .where(scan_progress.c.name == name)
                    .values(
                        pass_started_at=now,
                        last_address_id=0,
                        addresses_scanned=0,
                        sweeps_queued=0,
                        completed_at=None,
                        updated_at=now,
                    )
                )
            state = conn.execute(select(scan_progress).where(scan_progress.c.name == name)).one()
        return _scan_state(state)

    def advance_scan_pass(self, name: str, *, last_address_id: int, scanned: int, queued: int) -> None:
        """Record that every address up to `last_address_id` was read in the current pass."""
        with self.engine.begin() as conn:
            conn.execute(
                update(scan_progress)
                .where(scan_progress.c.name == name, scan_progress.c.last_address_id < last_address_id)
                .values(
                    last_address_id=last_address_id,
                    addresses_scanned=scan_progress.c.addresses_scanned + scanned,
                    sweeps_queued=scan_progress.c.sweeps_queued + queued,
                    updated_at=self.now(),
                )
            )

    def complete_scan_pass(self, name: str) -> ScanPassState:
        now = self.now()
        with self.engine.begin() as conn:
            conn.execute(
                update(scan_progress)
                .where(scan_progress.c.name == name, scan_progress.c.completed_at.is_(None))
                .values(completed_at=now, updated_at=now)
            )
            return _scan_state(conn.execute(select(scan_progress).where(scan_progress.c.name == name)).one())

    def scan_pass(self, name: str) -> ScanPassState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(scan_progress).where(scan_progress.c.name == name)).first()
        return _scan_state(row) if row is not None else None

    # --- block following: the cursor and its lease -------------------------------------------
    #
    # One `follow_cursor` row per follower ("blocks"). Exactly one daemon moves it: the holder of
    # the lease. A take writes a NEW random token, and every write (renew, advance, start, initial
    # pass done) presents the token and requires `lease_until > now` in the same transaction, so a
    # holder that stalled past its lease and was taken over changes nothing, whatever its own view
    # of time or of its connection. (A pooled connection's advisory lock can vanish with the
    # connection and nobody notices; a token in the row cannot.) All times are the database's.
    # Postgres: the row is locked (SELECT ... FOR UPDATE); SQLite: transactions are IMMEDIATE.

    def take_follow_lease(self, name: str, holder: str, lease_seconds: float) -> FollowLease | None:
        """Take the lease on `name`'s cursor (the row is created if missing): when it is free,
        released or run out, or already `holder`'s. Every take issues a NEW token, so taking again
        as the same holder fences off any earlier task of ours still holding the old one. None: another
        holder's lease is still running (try again after its `lease_until`)."""
        _check_lease_seconds(lease_seconds)
        if not holder:
            raise ValueError("a lease holder must be named")
        now = self.now()
        token = secrets.token_hex(8)
        lease_until = now + timedelta(seconds=lease_seconds)
        with self.engine.begin() as conn:
            if conn.execute(select(follow_cursor.c.name).where(follow_cursor.c.name == name)).first() is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(follow_cursor).values(name=name, started_at=now, updated_at=now))
                except IntegrityError:  # another daemon made it first: fine, lock theirs
                    pass
            row = conn.execute(
                select(follow_cursor).where(follow_cursor.c.name == name).with_for_update()
            ).one()
            running = row.lease_token is not None and row.lease_until > now
            if running and row.holder != holder:
                return None
            conn.execute(
                update(follow_cursor)
                .where(
                    follow_cursor.c.name == name,
                    follow_cursor.c.lease_token.is_not_distinct_from(row.lease_token),
                )
                .values(holder=holder, lease_token=token, lease_until=lease_until, updated_at=now)
            )
        return FollowLease(
            name=name,
            holder=holder,
            token=token,
            lease_until=lease_until,
            next_block=None if row.next_block is None else int(row.next_block),
            start_block=None if row.start_block is None else int(row.start_block),
            start_recorded_at=row.start_recorded_at,
            initial_poll_done=row.initial_poll_done_at is not None,
            previous_holder=row.holder,
        )

    def renew_follow_lease(self, name: str, token: str, lease_seconds: float) -> bool:
        """Extend our lease to now + `lease_seconds`. False: it was lost (taken over, released, or
        already run out): the caller must stop following at once and take the lease again."""
        _check_lease_seconds(lease_seconds)
        now = self.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(follow_cursor)
                .where(
                    follow_cursor.c.name == name,
                    follow_cursor.c.lease_token == token,
                    follow_cursor.c.lease_until > now,
                )
                .values(lease_until=now + timedelta(seconds=lease_seconds), updated_at=now)
            )
            return result.rowcount == 1

    def advance_cursor(
        self,
        name: str,
        token: str,
        next_block: int,
        *,
        expected_next: int | None = None,
        block_time: datetime | None = None,
    ) -> bool:
        """Every block before `next_block` is processed: move the cursor there.

        False, nothing written: the lease was lost (token not current, or run out). Forward only:
        raises CursorRefused, nothing written, for a move backwards, for a cursor whose start was
        never recorded (`set_follow_start`), or when `expected_next` (the cursor the batch started
        from) is not the cursor any more (a skip). `next_block` equal to the cursor is a no-op.
        `block_time`: the time of block `next_block - 1` (for the lag in seconds).
        """
        _check_block("next_block", next_block)
        if block_time is not None and block_time.tzinfo is None:
            raise ValueError("block_time must be an aware UTC datetime")
        now = self.now()
        with self.engine.begin() as conn:
            row = self._leased_cursor(conn, name, token, now)
            if row is None:
                return False
            current = row.next_block
            if current is None:
                raise CursorRefused(f"follower {name!r} has no start block yet: set_follow_start first")
            if expected_next is not None and current != expected_next:
                raise CursorRefused(
                    f"follower {name!r} is at block {current}, not {expected_next} where this batch "
                    f"started; moving it to {next_block} could skip blocks; nothing written"
                )
            if next_block < current:
                raise CursorRefused(
                    f"follower {name!r} is at block {current}; it never goes back (to {next_block})"
                )
            if next_block == current:
                return True
            values: dict[str, Any] = {"next_block": next_block, "advanced_at": now, "updated_at": now}
            if block_time is not None:
                values["last_block_at"] = block_time
            result = conn.execute(
                update(follow_cursor)
                .where(
                    follow_cursor.c.name == name,
                    follow_cursor.c.lease_token == token,
                    follow_cursor.c.next_block == current,
                )
                .values(**values)
            )
            # The row lock above makes a miss unreachable; the guard keeps it so without the lock.
            return bool(result.rowcount == 1)

    def set_follow_start(self, name: str, token: str, block: int) -> FollowCursorRecord | None:
        """A fresh ledger: record `block` (the solid head read just now, BEFORE the first full poll
        pass begins) as the first block to follow, with the time it was recorded. Set once: if the
        cursor already has a start (a restart, a take-over mid-pass), nothing changes and the
        record shows the one kept. None: the lease was lost, nothing written."""
        _check_block("block", block)
        now = self.now()
        with self.engine.begin() as conn:
            row = self._leased_cursor(conn, name, token, now)
            if row is None:
                return None
            if row.next_block is None:
                conn.execute(
                    update(follow_cursor)
                    .where(
                        follow_cursor.c.name == name,
                        follow_cursor.c.lease_token == token,
                        follow_cursor.c.next_block.is_(None),
                    )
                    .values(next_block=block, start_block=block, start_recorded_at=now, updated_at=now)
                )
            return _follow_cursor_record(
                conn.execute(select(follow_cursor).where(follow_cursor.c.name == name)).one()
            )

    def mark_initial_poll_done(self, name: str, token: str, *, pass_started_at: datetime) -> bool:
        """The first full poll pass, begun at `pass_started_at`, is complete (idempotent).

        Refuses (CursorRefused, nothing written) a pass that began before the start block was
        recorded: an address it read before then could have received a deposit in a block before
        the start, which following never reads; run a new pass. False: the lease was lost.
        """
        if pass_started_at.tzinfo is None:
            raise ValueError("pass_started_at must be an aware UTC datetime")
        now = self.now()
        with self.engine.begin() as conn:
            row = self._leased_cursor(conn, name, token, now)
            if row is None:
                return False
            if row.start_recorded_at is None:
                raise CursorRefused(
                    f"follower {name!r} has no start block: record it (set_follow_start) before the "
                    "initial poll pass"
                )
            if pass_started_at < row.start_recorded_at:
                raise CursorRefused(
                    f"that poll pass began at {pass_started_at.isoformat()}, before follower {name!r} "
                    f"recorded its start block at {row.start_recorded_at.isoformat()}: it does not "
                    "cover the blocks before the start; run a new pass"
                )
            if row.initial_poll_done_at is None:
                conn.execute(
                    update(follow_cursor)
                    .where(follow_cursor.c.name == name, follow_cursor.c.lease_token == token)
                    .values(initial_poll_done_at=now, updated_at=now)
                )
        return True

    def release_follow_lease(self, name: str, token: str) -> bool:
        """Give the lease up (clean shutdown), so another daemon takes over at once. False: it was
        not ours any more (nothing changed). The cursor stays where it is."""
        now = self.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(follow_cursor)
                .where(follow_cursor.c.name == name, follow_cursor.c.lease_token == token)
                .values(holder=None, lease_token=None, lease_until=None, updated_at=now)
            )
            return result.rowcount == 1

    def follow_cursor(self, name: str = FOLLOW_BLOCKS) -> FollowCursorRecord | None:
        """The follower's cursor and lease as stored (None: no daemon ever tried to follow)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(follow_cursor).where(follow_cursor.c.name == name)).first()
        return _follow_cursor_record(row) if row is not None else None

    def _leased_cursor(self, conn: Connection, name: str, token: str, now: datetime) -> Any:
        """The cursor row, locked, if `token` holds its lease and the lease runs past `now`."""
        row = conn.execute(
            select(follow_cursor).where(follow_cursor.c.name == name).with_for_update()
        ).first()
        if row is None or row.lease_token != token or row.lease_until is None or row.lease_until <= now:
            return None
        return row


def _is_open_sweep_conflict(exc: IntegrityError) -> bool:
    text = str(exc.orig)
    return "uq_sweeps_open_address_token" in text or (
        "UNIQUE constraint failed: sweeps.address, sweeps.token" in text
    )


def _event_state(value: str) -> SweepState:
    """A history row's state. `sweep_events` has no CHECK on its states (history is never rewritten,
    and a state may be renamed later): a value that is no SweepState is shown as it is, not a crash."""
    try:
        return SweepState(value)
    except ValueError:
        return cast(SweepState, value)
