"""The sweep ledger: models, migrations runner, and the only code that writes a sweep's state."""

from sweeper.errors import LedgerError
from sweeper.ledger.db import SchemaNotReady, make_engine, require_head, upgrade
from sweeper.ledger.ledger import FOLLOW_BLOCKS, ORDERING_PAUSE, Ledger, token_pause_name, utc_day
from sweeper.ledger.lock import LedgerLocked, SqliteLedgerLock
from sweeper.ledger.records import (
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
)

__all__ = [
    "FOLLOW_BLOCKS",
    "ORDERING_PAUSE",
    "AddressBusy",
    "CooldownRecord",
    "CursorRefused",
    "DepositAddressRecord",
    "FollowCursorRecord",
    "FollowLease",
    "HoldRecord",
    "Ledger",
    "LedgerError",
    "LedgerLocked",
    "NewAddress",
    "OpenSweepExists",
    "PauseRecord",
    "Reservation",
    "ScanPassState",
    "SchemaNotReady",
    "SqliteLedgerLock",
    "Stats",
    "SweepEventRecord",
    "SweepNotFound",
    "SweepRecord",
    "make_engine",
    "require_head",
    "token_pause_name",
    "upgrade",
    "utc_day",
]
