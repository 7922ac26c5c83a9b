"""The sweep ledger: models, migrations runner, and the only code that writes a sweep's state."""

from sweeper.ledger.db import SchemaNotReady, make_engine, require_head, upgrade
from sweeper.ledger.ledger import (
    DepositAddressRecord,
    Ledger,
    LedgerError,
    NewAddress,
    OpenSweepExists,
    ScanPassState,
    Stats,
    SweepEventRecord,
    SweepNotFound,
    SweepRecord,
)
from sweeper.ledger.lock import LedgerLocked, SqliteLedgerLock

__all__ = [
    "DepositAddressRecord",
    "Ledger",
    "LedgerError",
    "LedgerLocked",
    "NewAddress",
    "OpenSweepExists",
    "ScanPassState",
    "SchemaNotReady",
    "SqliteLedgerLock",
    "Stats",
    "SweepEventRecord",
    "SweepNotFound",
    "SweepRecord",
    "make_engine",
    "require_head",
    "upgrade",
]
