"""Detection by polling: read every watched address's token balances and queue sweeps.

A pass streams deposit addresses from the ledger in pages (memory stays flat in the number of
addresses), reads balances concurrently under the node client's shared rate limit, and queues a
sweep for each (address, token) at or above `min_sweep` that has no open sweep. The partial unique
index decides races between scanners. Progress is recorded after each page, so a crash mid-pass
resumes where it stopped instead of starting over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from sweeper.config import Settings, TokenSettings
from sweeper.errors import RuntimeFailure, UsageError
from sweeper.keys import HdWallet
from sweeper.ledger import Ledger, NewAddress

log = structlog.get_logger("sweeper.scanner")

POLL_SCAN = "poll"


class BalanceSource(Protocol):
    async def token_balance(self, holder: str, token: str) -> int: ...


class ScanError(RuntimeFailure):
    """A pass that could not read every address; progress stops before the failed page."""


class AddressConfigProblem(UsageError):
    """The configured deposit addresses cannot be used as they are (exit 2 on the command line)."""


class KeysDoNotMatchLedger(AddressConfigProblem):
    """The mnemonic derives other addresses than the ledger holds for the same hd indexes."""


def watched_address_problems(settings: Settings) -> list[str]:
    """The destination must not be one of the addresses we sweep from (derived ones included)."""
    destination = settings.wallet.destination
    if settings.keys.mnemonic is None or not settings.addresses.hd_indexes:
        return []
    from sweeper.errors import KeySourceError

    try:
        wallet = HdWallet(settings.keys.mnemonic)
    except KeySourceError as exc:
        return [f"{settings.path}: keys.mnemonic_env: ${settings.keys.mnemonic_env}: {exc}"]
    for indexes in settings.addresses.hd_indexes:
        for index in indexes:
            if wallet.address(index) == destination:
                return [
                    f"{settings.path}: wallet.destination: {destination} is the deposit address at hd index "
                    f"{index} (addresses.hd_indexes)"
                ]
    return []


@dataclass(frozen=True)
class Candidate:
    address: str
    token: TokenSettings
    amount: int  # base units
    sweep_id: int | None = None  # set when queued; None in a dry run or when another scan won


@dataclass
class PassReport:
    addresses: int = 0  # deposit addresses visited in this run
    balance_reads: int = 0
    candidate_count: int = 0  # (address, token) pairs at or above min_sweep
    candidates: list[Candidate] = field(default_factory=list)  # only when asked (memory stays flat)
    queued: int = 0
    skipped_open: int = 0  # (address, token) pairs not read because a sweep is already open
    skipped_held: int = 0  # … because the pair is held or cooling down
    # (address, token) pairs whose balance could not be read or queued this pass: logged and
    # skipped, so one bad address never stops the pass for the others (read again next pass)
    unreadable: int = 0
    resumed_after_id: int = 0
    completed: bool = False
    seconds: float = 0.0


# --- the configured addresses --------------------------------------------------------------------


def configured_addresses(settings: Settings, ledger: Ledger, *, batch: int = 1000) -> Iterator[NewAddress]:
    """Addresses named by the config that the ledger may not know yet.

    Derived addresses are computed only for hd indexes the ledger does not hold (derivation costs
    ~0.3 ms each); for the ones it holds, the first and last of each range are re-derived as a
    tripwire against a changed mnemonic, which would leave us watching addresses we cannot sign for.
    """
    if settings.addresses.hd_indexes:
        if settings.keys.mnemonic is None:
            raise KeysDoNotMatchLedger("addresses.hd_indexes needs the mnemonic (keys.mnemonic_env)")
        wallet = HdWallet(settings.keys.mnemonic)
        for indexes in settings.addresses.hd_indexes:
            known = ledger.hd_indexes_between(indexes.start, indexes.stop - 1)
            for index in sorted({min(known, default=-1), max(known, default=-1)} - {-1}):
                if wallet.address(index) != known[index]:
                    raise KeysDoNotMatchLedger(
                        f"hd index {index} derives {wallet.address(index)} but the ledger holds {known[index]}: "
                        "the mnemonic is not the one this ledger was built with"
                    )
            for index in indexes:
                if index not in known:
                    yield NewAddress(wallet.address(index), "hd", hd_index=index)
    for address in settings.addresses.file_addresses:
        yield NewAddress(address, "file")
    for address in settings.keys.keyfile_keys or {}:
        yield NewAddress(address, "keyfile")


def _not_the_destination(settings: Settings, addresses: Iterator[NewAddress]) -> Iterator[NewAddress]:
    # Sweeping the destination into itself would rent energy on every pass, forever.
    for new in addresses:
        if new.address == settings.wallet.destination:
            raise AddressConfigProblem(
                f"{settings.path}: wallet.destination: {new.address} is also a configured deposit address"
                f" ({new.source}); refusing to watch it"
            )
        yield new


def sync_addresses(settings: Settings, ledger: Ledger) -> int:
    """Upsert the configured deposit addresses; returns how many were new."""
    added = ledger.upsert_addresses(_not_the_destination(settings, configured_addresses(settings, ledger)))
    if added:
        log.info("deposit addresses added", added=added)
    return added


# --- the pass ------------------------------------------------------------------------------------


class Scanner:
    def __init__(
        self,
        ledger: Ledger,
        chain: BalanceSource,
        tokens: Sequence[TokenSettings],
        *,
        page_size: int = 500,
        concurrency: int = 16,
        name: str = POLL_SCAN,
    ) -> None:
        if page_size < 1 or concurrency < 1:
            raise ValueError("page_size and concurrency must be >= 1")
        self.ledger = ledger
        self.chain = chain
        self.tokens = tuple(tokens)
        self.page_size = page_size
        self.concurrency = concurrency
        self.name = name

    async def run_pass(
        self,
        *,
        dry_run: bool = False,
        keep_candidates: bool | None = None,
        on_page: Callable[[int], Awaitable[None]] | None = None,
    ) -> PassReport:
        """One pass over every watched address; resumes an interrupted pass (not in a dry run).

        `keep_candidates` (default: in dry runs) lists every (address, token) above threshold in the
        report, for `sweeper scan` to print; the daemon leaves it off so memory stays flat.
        `on_page(last_address_id)` runs after each page is recorded (tests use it to crash there).
        """
        keep = dry_run if keep_candidates is None else keep_candidates
        started = time.perf_counter()
        report = PassReport()
        after_id = 0
        if not dry_run:
            state = await asyncio.to_thread(self.ledger.begin_scan_pass, self.name)
            after_id = report.resumed_after_id = state.last_address_id
            if state.resumed:
                log.info("resuming scan pass", after_address_id=after_id, started_at=state.pass_started_at)
        semaphore = asyncio.Semaphore(self.concurrency)
        while True:
            page = await asyncio.to_thread(self.ledger.watched_page, after_id=after_id, limit=self.page_size)
            if not page:
                break
            queued_before = report.queued
            await self._scan_page([address for _, address in page], report, semaphore, dry_run, keep)
            after_id = page[-1][0]
            report.addresses += len(page)
            if not dry_run:
                await asyncio.to_thread(
                    self.ledger.advance_scan_pass,
                    self.name,
                    last_address_id=after_id,
                    scanned=len(page),
                    queued=report.queued - queued_before,
                )
            if on_page is not None:
                await on_page(after_id)
        if not dry_run:
            await asyncio.to_thread(self.ledger.complete_scan_pass, self.name)
        report.completed = True
        report.seconds = time.perf_counter() - started
        log.info(
            "scan pass done",
            addresses=report.addresses,
            reads=report.balance_reads,
            candidates=report.candidate_count,
            queued=report.queued,
            dry_run=dry_run,
            seconds=round(report.seconds, 3),
        )
        return report

    async def _scan_page(
        self,
        page: list[str],
        report: PassReport,
        semaphore: asyncio.Semaphore,
        dry_run: bool,
        keep: bool,
    ) -> None:
        failures: list[str] = []
        reads = 0

        async def read(address: str, token: TokenSettings) -> None:
            nonlocal reads
            reads += 1
            async with semaphore:
                try:
                    amount = await self.chain.token_balance(address, token.contract)
                except Exception as exc:  # the chain client already retried
                    failures.append(f"{address} {token.symbol}: balance unreadable: {exc}")
                    return
            report.balance_reads += 1
            if amount < token.min_sweep_base_units:
                return
            sweep_id = None
            if not dry_run:
                try:
                    sweep_id = await asyncio.to_thread(
                        self.ledger.queue_sweep, address, token.symbol, token.contract, amount
                    )
                except ValueError as exc:  # an amount the ledger cannot store: this address only
                    failures.append(f"{address} {token.symbol}: not queued: {exc}")
                    return
                if sweep_id is not None:
                    report.queued += 1
                    log.info(
                        "sweep queued", sweep_id=sweep_id, address=address, token=token.symbol, amount=amount
                    )
            report.candidate_count += 1
            if keep:
                report.candidates.append(Candidate(address, token, amount, sweep_id))

        jobs: list[Awaitable[None]] = []
        for token in self.tokens:
            open_already = await asyncio.to_thread(self.ledger.with_open_sweep, token.symbol, page)
            report.skipped_open += len(open_already)
            # Held (a paid failure) or cooling down (unpaid ones): not queued, so not read either.
            blocked = await asyncio.to_thread(self.ledger.blocked, token.symbol, page)
            report.skipped_held += len(blocked - open_already)
            skip = open_already | blocked
            jobs.extend(read(address, token) for address in page if address not in skip)
        await asyncio.gather(*jobs)
        if failures and len(failures) == reads:
            # Every read of the page failed: the node, not an address. Stop; the pass resumes here.
            raise ScanError(
                f"{len(failures)} balance reads failed in this page (first: {failures[0]}); "
                "the pass resumes from this page next time"
            )
        for failure in failures:
            log.warning("deposit address skipped in this pass; read again next pass", problem=failure[:300])
        report.unreadable += len(failures)
