"""Detection by polling: read every watched address's token balances and queue sweeps.

A pass streams deposit addresses from the ledger in pages (memory stays flat in the number of
addresses), reads balances concurrently under the node client's shared rate limit, and queues a
sweep for each (address, token) at or above `min_sweep` that has no open sweep. The partial unique
index decides races between scanners. Progress is recorded after each page, so a crash mid-pass
resumes where it stopped instead of starting over.

`scan_once` is `sweeper scan`: sync the configured addresses, one pass, and in a dry run the
provider's energy price; it returns everything the command prints (`sweeper.render` prints it).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import structlog

from sweeper.addresses import sync_addresses
from sweeper.clients import chain_from, provider_from
from sweeper.config import Settings, TokenSettings
from sweeper.errors import ChainError, ProviderError, RuntimeFailure
from sweeper.ledger import Ledger
from sweeper.progress import Progress
from sweeper.protocols import BalanceSource

log = structlog.get_logger("sweeper.scanner")

POLL_SCAN = "poll"
# Balance reads in flight. httpcore's pool costs grow with connections x queued requests: past ~16
# the client's CPU, not the node, limits a pass (benchmarks/scan_bench.py).
SCAN_CONCURRENCY = 16


class ScanError(RuntimeFailure):
    """A pass that could not read every address; progress stops before the failed page."""


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
        progress: Progress | None = None,
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
            if progress is not None:
                progress.advance(len(page))
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
                    if token.contract is None:  # native TRX: one `getaccount` per address
                        amount = await self.chain.trx_balance(address)
                    else:
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


# --- `sweeper scan` ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanReport:
    """One `sweeper scan`: everything the command prints."""

    dry_run: bool
    addresses_added: int
    scanned: PassReport  # with every candidate above threshold
    energy_price_sun: int | None = None  # a dry run with candidates: the provider's price, if it answered
    price_error: str | None = None  # … and why it did not


async def scan_once(settings: Settings, ledger: Ledger, *, dry_run: bool) -> ScanReport:
    """Sync the configured addresses, run one pass (queueing nothing in a dry run) and, in a dry run
    with candidates, ask the provider for the energy price. A node that fails the pass raises
    `ScanError` ("scan incomplete: ...", exit 1); a provider that fails the price is reported."""
    added = await asyncio.to_thread(sync_addresses, settings, ledger)
    total = await asyncio.to_thread(ledger.watched_count)
    try:
        async with chain_from(settings) as chain:
            with Progress("scan pass", total) as progress:
                report = await Scanner(ledger, chain, settings.tokens, concurrency=SCAN_CONCURRENCY).run_pass(
                    dry_run=dry_run, keep_candidates=True, progress=progress
                )
    except (ChainError, ScanError) as exc:
        raise ScanError(f"scan incomplete: {exc}") from None
    price_sun: int | None = None
    price_error = None
    if dry_run and report.candidates:
        try:
            async with provider_from(settings) as provider:
                quote = await provider.price(to_address=settings.wallet.destination)
            price_sun = quote.total_price_sun
        except ProviderError as exc:
            price_error = str(exc)
    return ScanReport(dry_run, added, report, price_sun, price_error)
