"""The ledger's tables. Migrations in migrations/ create exactly these (a test compares them).

Amounts are integers in base units (BigInteger): SQLite's NUMERIC would silently turn big values
into floats. Times are stored in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from sweeper.domain import OPEN_STATES, SweepState

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY; Postgres gets a real 64-bit id.
BigId = BigInteger().with_variant(Integer(), "sqlite")

MAX_BASE_UNITS = 2**63 - 1  # sun columns (BigInteger): far beyond any TRX amount
# Token amounts in base units: any token's whole supply fits (uint256 has 78 decimal digits).
TOKEN_DIGITS = 78
MAX_TOKEN_UNITS = 10**TOKEN_DIGITS - 1


def state_check_sql(column: str = "state") -> str:
    values = ", ".join(f"'{s.value}'" for s in SweepState)
    return f"{column} IN ({values})"


def open_states_sql(column: str = "state") -> str:
    values = ", ".join(f"'{s.value}'" for s in sorted(OPEN_STATES))
    return f"{column} IN ({values})"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (naive text) and Postgres alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class TokenUnits(TypeDecorator[int]):
    """A token amount in base units, exact up to 10^78 - 1, as a Python int.

    Postgres: NUMERIC(78, 0). SQLite has no exact type that wide (its NUMERIC and INTEGER turn big
    values into floats): zero-padded decimal TEXT of 78 digits, so text order is number order and
    `CHECK (length(x) = 78 AND x NOT GLOB '*[^0-9]*')` keeps anything else out. Sums over it must
    be computed in Python (SQLite's SUM() of text is a float).
    """

    impl = Numeric(TOKEN_DIGITS, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(TOKEN_DIGITS))
        return dialect.type_descriptor(Numeric(TOKEN_DIGITS, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKEN_UNITS:
            raise ValueError(f"{value!r} is not a token amount in 0..10^{TOKEN_DIGITS}-1 base units")
        return f"{value:0{TOKEN_DIGITS}d}" if dialect.name == "sqlite" else Decimal(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> int | None:
        return None if value is None else int(value)


def token_units_check_sql(*columns: str) -> str:
    """The SQLite CHECK that keeps TokenUnits columns exact (78 digits, nothing else)."""
    return " AND ".join(f"length({c}) = {TOKEN_DIGITS} AND {c} NOT GLOB '*[^0-9]*'" for c in columns)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DepositAddress(Base):
    __tablename__ = "deposit_addresses"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(34), nullable=False, unique=True)
    hd_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True, unique=True)
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Where we learnt of it: hd (derived from the mnemonic), file, keyfile, import.
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    watched: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint("source IN ('hd', 'file', 'keyfile', 'import')", name="source"),
        # `watch_changes_since`, every follow step (0010).
        Index("ix_deposit_addresses_updated_at", "updated_at"),
    )


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(
        String(34), ForeignKey("deposit_addresses.address", ondelete="RESTRICT"), nullable=False
    )
    token: Mapped[str] = mapped_column(String(16), nullable=False)
    # 'token' (TRC20: energy ordered, then transfer) or 'trx' (native, a TransferContract; 0009).
    asset_kind: Mapped[str] = mapped_column(String(8), nullable=False, server_default=text("'token'"))
    token_contract: Mapped[str | None] = mapped_column(String(34), nullable=True)  # NULL: TRX
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    observed_amount: Mapped[int] = mapped_column(TokenUnits, nullable=False)
    amount: Mapped[int] = mapped_column(TokenUnits, nullable=False)
    destination: Mapped[str | None] = mapped_column(String(34), nullable=True)
    serial: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    scene: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cost_sun: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    provider_balance_sun: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    txid: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    # TRX burnt by the sweep's own transaction (TransactionInfo `fee`), once it is on chain (0009).
    fee_sun: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    signed_tx: Mapped[str | None] = mapped_column(Text, nullable=True)
    expiration: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # out_trade_no = "<id>-<order_nonce>" (0005): 8 random base32 characters, so another ledger's
    # (or a re-created ledger's) orders never match this row. NULL for rows made before 0005.
    order_nonce: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # When an energy order POST was last sent for this row; written before the POST (see 0003).
    order_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Money safety (0004): the measured energy need, the row's charge against the UTC day's cap
    # (quote while reserved, the real amount once known, less refunds; 0 when proven never placed).
    energy_needed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    charge_sun: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    charge_day: Mapped[str | None] = mapped_column(String(10), nullable=True, index=True)
    refund_sun: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # Rebuilds and rejected broadcasts: past pipeline.max_attempts the row fails (and holds).
    send_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    first_claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reverting_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # A retry is a new row; each failed row can be retried once (unique), so each row has at
    # most one energy order and the chain of retries stays readable.
    retry_of: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("sweeps.id", ondelete="RESTRICT"), nullable=True, unique=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(state_check_sql(), name="state"),
        CheckConstraint(
            "asset_kind IN ('token', 'trx') AND ((asset_kind = 'trx') = (token_contract IS NULL))",
            name="asset_kind",
        ),
        # The same rule in each database's terms (0006): non-negative numbers / 78-digit text.
        CheckConstraint("observed_amount >= 0 AND amount >= 0", name="amounts").ddl_if(dialect="postgresql"),
        CheckConstraint(token_units_check_sql("observed_amount", "amount"), name="amounts").ddl_if(
            dialect="sqlite"
        ),
        CheckConstraint("attempts >= 0", name="attempts"),
        # At most one open sweep per (address, token): two scanners, a restart or two daemons
        # can never queue the same money twice.
        Index(
            "uq_sweeps_open_address_token",
            "address",
            "token",
            unique=True,
            sqlite_where=text(open_states_sql()),
            postgresql_where=text(open_states_sql()),
        ),
        Index("ix_sweeps_state_next_attempt_at", "state", "next_attempt_at"),
        # The claim's "another sweep of this address past queued?" check (0004).
        Index("ix_sweeps_address_state", "address", "state"),
    )


class SweepEvent(Base):
    """Append-only history of every transition (DB triggers refuse UPDATE and DELETE)."""

    __tablename__ = "sweep_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    sweep_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("sweeps.id", ondelete="RESTRICT"), nullable=False, index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    actor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    data: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON details


class ScanProgress(Base):
    """One row per detection pass kind ("poll"): where the current pass is, by deposit address id."""

    __tablename__ = "scan_progress"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    pass_started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_address_id: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    addresses_scanned: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    sweeps_queued: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class AddressHold(Base):
    """An (address, token) that failed after money was spent: not queued again until released.

    Rows are kept after release (released_at set) as the audit trail; at most one active hold per
    (address, token).
    """

    __tablename__ = "address_holds"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(
        String(34), ForeignKey("deposit_addresses.address", ondelete="RESTRICT"), nullable=False
    )
    token: Mapped[str] = mapped_column(String(16), nullable=False)
    sweep_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("sweeps.id", ondelete="RESTRICT"), nullable=True
    )
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    held_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    released_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    release_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        Index(
            "uq_address_holds_active",
            "address",
            "token",
            unique=True,
            sqlite_where=text("released_at IS NULL"),
            postgresql_where=text("released_at IS NULL"),
        ),
    )


class AddressCooldown(Base):
    """Unpaid failures of an (address, token): the next sweep waits until `until` (doubling)."""

    __tablename__ = "address_cooldowns"

    address: Mapped[str] = mapped_column(String(34), primary_key=True)
    token: Mapped[str] = mapped_column(String(16), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False)
    until: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    last_reason: Mapped[str] = mapped_column(Text, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (CheckConstraint("failures > 0", name="failures"),)


class Pause(Base):
    """A pause that must survive restarts: "ordering" (a cost anomaly) or "token:SYMBOL"."""

    __tablename__ = "pauses"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(Text, nullable=False)
    since: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # A token pause: when one of its rows is next simulated to see whether it passes again.
    next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class BudgetDay(Base):
    """One row per UTC day: locked while an order's reservation against the daily cap is decided."""

    __tablename__ = "budget_days"

    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class FollowCursor(Base):
    """Block following (0008): one row per follower ("blocks"): where it is, and who may move it.

    `next_block` is the first block NOT yet processed (NULL: following never started). Only the
    holder of the lease moves it, presenting `lease_token` (random per take) while `lease_until`
    (the database's clock) has not passed; a take writes a new token, fencing off the last holder.
    `start_block` / `start_recorded_at`: where following began on a fresh ledger and when that was
    written; `initial_poll_done_at`: the full poll pass that covers the balances before it ended.
    """

    __tablename__ = "follow_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    start_block: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    start_recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    initial_poll_done_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the cursor last moved, and the time of the last block processed (next_block - 1).
    advanced_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_block_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)

    __table_args__ = (
        CheckConstraint(
            "(next_block IS NULL AND start_block IS NULL AND start_recorded_at IS NULL) OR "
            "(next_block IS NOT NULL AND start_block IS NOT NULL AND start_recorded_at IS NOT NULL "
            "AND start_block >= 0 AND next_block >= start_block)",
            name="blocks",
        ),
        CheckConstraint("initial_poll_done_at IS NULL OR start_block IS NOT NULL", name="initial_poll"),
        CheckConstraint(
            "(holder IS NULL AND lease_token IS NULL AND lease_until IS NULL) OR "
            "(holder IS NOT NULL AND lease_token IS NOT NULL AND lease_until IS NOT NULL)",
            name="lease",
        ),
    )
