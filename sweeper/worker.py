"""Drive the pipeline: `sweeper work` (and the daemon's worker job) on top of `Pipeline.run_once`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

import structlog

from sweeper.clients import chain_from, provider_from
from sweeper.config import Settings
from sweeper.domain import OPEN_STATES
from sweeper.ledger import Ledger, SqliteLedgerLock
from sweeper.ledger.db import sqlite_path
from sweeper.pipeline import Pipeline

log = structlog.get_logger("sweeper.worker")


class Until(Enum):
    IDLE = "idle"  # nothing due now (`--once`)
    FINAL = "final"  # every sweep final (`--until-final`)
    STOPPED = "stopped"  # forever, until SIGTERM/SIGINT


@dataclass
class WorkResult:
    rows_worked: int
    open_left: int
    timed_out: bool


@contextlib.contextmanager
def ledger_lock(settings: Settings) -> Iterator[None]:
    """SQLite is a one-daemon backend: hold `<db>.lock` while working (LedgerLocked if taken)."""
    path = sqlite_path(settings.database.url)
    if path is None:
        yield
        return
    with SqliteLedgerLock(path):
        yield


def _open_count(ledger: Ledger) -> int:
    stats = ledger.stats()
    return sum(stats.by_state[s.value] for s in OPEN_STATES)


async def work(
    settings: Settings,
    ledger: Ledger,
    *,
    until: Until,
    timeout: float | None = None,
    dry_run: bool = False,
    stop: asyncio.Event | None = None,
) -> WorkResult:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    deadline = time.monotonic() + timeout if timeout else None
    worked = 0
    idle_sleep = min(1.0, float(settings.schedule.work_interval_seconds))
    async with chain_from(settings) as chain, provider_from(settings) as provider:
        pipeline = Pipeline.from_settings(settings, ledger, chain=chain, provider=provider, dry_run=dry_run)
        log.info("worker started", worker=pipeline.worker_id, until=until.value, dry_run=dry_run)
        while not stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return WorkResult(worked, await asyncio.to_thread(_open_count, ledger), True)
            n = await pipeline.run_once()
            worked += n
            if n:
                continue
            if until is Until.IDLE or dry_run:
                break
            if until is Until.FINAL and await asyncio.to_thread(_open_count, ledger) == 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    stop.wait(),
                    idle_sleep if until is Until.FINAL else settings.schedule.work_interval_seconds,
                )
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    return WorkResult(worked, await asyncio.to_thread(_open_count, ledger), False)
