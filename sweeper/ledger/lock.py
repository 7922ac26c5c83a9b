"""The single-daemon lock for a SQLite ledger: an exclusive flock on `<db file>.lock`.

SQLite has no SKIP LOCKED; the design makes it a one-daemon backend, and this lock is how a
second `sweeper run` on the same file finds out and exits 2 naming the holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import IO

from sweeper.errors import LedgerError


class LedgerLocked(LedgerError):
    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder}: another sweeper daemon uses this SQLite ledger")
        self.path = path
        self.holder = holder


class SqliteLedgerLock:
    """Hold with `with SqliteLedgerLock(db_path):` for the daemon's lifetime; released on exit or death."""

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the daemon's lifetime
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "an unknown process"
            handle.close()
            raise LedgerLocked(self.path, _describe(holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> SqliteLedgerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(holder: str) -> str:
    try:
        info = json.loads(holder)
        return f"pid {info['pid']} on {info['host']}"
    except (ValueError, KeyError, TypeError):
        return holder
