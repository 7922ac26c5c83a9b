"""Detection by following blocks: the cost grows with the chain's traffic, not with the addresses.

From a cursor in the ledger, each new solidified block's transaction infos are read with ONE
request (`walletsolidity/gettransactioninfobyblocknum`); the token `Transfer` logs of successful
transactions whose recipient is watched are kept (internal calls included: the log's own address is
the token); each such recipient's balance is read once per batch and queued at or above its
threshold, exactly as a poll pass would. Then the cursor moves past the batch.

Never a skipped block:
- only blocks at or below the solid head just read are requested;
- that endpoint answers `[]` both for an empty block and for one the node cannot serve (not yet
  solid on this backend of a load balancer, or a node without the transaction-info store): a `[]` is
  trusted only after `walletsolidity/getblockbynum` shows the block has no transactions (almost
  never on mainnet); otherwise the batch stops before that block and it is asked again;
- at start and hourly the node must prove it keeps transaction infos (a recent solid block with
  transactions answers non-empty, several blocks tried): else following is refused, naming the node
  setting;
- a crash between queueing and moving the cursor replays the batch: queueing is idempotent (an open
  sweep, a hold or a cooldown refuse a second row), balances are read again.

One daemon follows at a time: the cursor's lease (`Ledger.take_follow_lease`) hands out a token
that every cursor write presents; a daemon whose lease ran out cannot move the cursor, and another
takes over after `[detect] lease_seconds`. A fresh ledger first runs one full poll pass (balances that
were already there), then follows from the solid head read BEFORE that pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog

from sweeper.chain.errors import ChainResponseError
from sweeper.chain.models import BlockRef, TokenTransfer
from sweeper.chain.transfers import deposits_in_block, hex20, token_keys
from sweeper.config import TRX_SYMBOL, TokenSettings
from sweeper.errors import StartupError
from sweeper.faults import crash_point
from sweeper.ledger import Ledger
from sweeper.ledger.ledger import FOLLOW_BLOCKS
from sweeper.ledger.records import CursorRefused, FollowLease
from sweeper.protocols import BlockSource
from sweeper.scanner import Scanner

log = structlog.get_logger("sweeper.follower")

BLOCK_SECONDS: Final = 3.0  # TRON's block interval: lag in seconds is estimated from lag in blocks
PROOF_BLOCKS: Final = 20  # recent solid blocks looked at to prove the node keeps transaction infos
PROOF_WITH_TRANSACTIONS: Final = 5  # … of which this many with transactions must all answer [] to refuse
PROOF_INTERVAL_SECONDS: Final = 3600.0
REFUSED_RETRY_SECONDS: Final = 300.0  # a node that refused following is asked again this often
IN_LIST_CHUNK: Final = 1000  # addresses per ledger query (Postgres takes at most 65,535 parameters)
# An address registered this long before following last moved may have missed that batch's read.
ADDED_MARGIN: Final = timedelta(minutes=10)
# `addresses unwatch`/`watch` looked for this far before the last look (commits that land late).
WATCH_MARGIN: Final = timedelta(seconds=60)
NODE_SETTING: Final = (
    'the node must keep transaction infos: java-tron\'s `storage.transHistory.switch = "on"` '
    '(the default) on a full node that serves /walletsolidity; or set [detect] mode = "poll"'
)


class NodeCannotFollow(StartupError):
    """The node answers no transaction infos for blocks that have transactions: following would
    see no deposit at all."""


class LeaseLost(Exception):
    """Our lease on the cursor ran out or was taken: stop following at once."""


@dataclass
class FollowStatus:
    """What /metrics, /healthz and the log show about following."""

    following: bool = False  # this daemon holds the lease
    next_block: int | None = None  # the first block not yet processed
    solid_head: int | None = None
    solid_head_at: datetime | None = None
    refused: str | None = None  # why following is off (a node without transaction infos)
    blocks_done: int = 0
    deposits_seen: int = 0
    queued: int = 0
    held_deposits: int = 0  # deposits to held addresses (each logged as an ALERT)

    @property
    def lag_blocks(self) -> int | None:
        if self.next_block is None or self.solid_head is None:
            return None
        return max(0, self.solid_head + 1 - self.next_block)

    @property
    def lag_seconds(self) -> float | None:
        lag = self.lag_blocks
        return None if lag is None else lag * BLOCK_SECONDS


@dataclass
class _Batch:
    first: int
    end: int  # exclusive: the cursor after the batch
    deposits: list[tuple[int, TokenTransfer]] = field(default_factory=list)  # (block, deposit)
    unserved: int | None = None  # a block the node could not serve yet (the batch ends before it)


class Follower:
    def __init__(
        self,
        ledger: Ledger,
        chain: BlockSource,
        tokens: Sequence[TokenSettings],
        *,
        worker_id: str,
        scanner: Scanner,
        lease_seconds: float = 60.0,
        concurrency: int = 8,
        batch_blocks: int = 1000,
        name: str = FOLLOW_BLOCKS,
    ) -> None:
        self.ledger = ledger
        self.chain = chain
        self.tokens = tuple(tokens)  # the daemon swaps it on SIGHUP
        self.worker_id = worker_id
        self.scanner = scanner
        self.lease_seconds = lease_seconds
        self.concurrency = concurrency
        self.batch_blocks = batch_blocks
        self.name = name
        self.status = FollowStatus()
        self._lease: FollowLease | None = None
        self._refused_until = float("-inf")
        # (address, token contract) -> the solid head read before its balance was last read: deposits
        # in blocks up to there are in that read. Entries below the cursor are dropped each step.
        self._read_at: dict[tuple[str, str], int] = {}
        self._head_before_reads = -1
        # (address, token contract): deposits seen while the pair had an open sweep, a hold or a
        # cooldown; read again once that is over (the open sweep may have read the balance before
        # this deposit landed). In memory: after a restart the safety-net pass covers them.
        self._recheck: set[tuple[str, str]] = set()
        self._next_block: int | None = None  # the cursor as we left it, while we hold the lease
        self._proved_at = float("-inf")
        # hex20 of every watched deposit address. New ones come by id (`watched_page`); `addresses
        # unwatch` / `watch` by `watch_changes_since` (the address's updated_at): an unwatched one
        # leaves the set (and `_recheck`), one watched again joins it and its balance is read once.
        self._watched: set[str] = set()
        self._changes_since: datetime | None = None  # the ledger's clock, read before the last look
        # address -> the (updated_at, watched) already acted on
        self._changes_seen: dict[str, tuple[datetime, bool]] = {}
        self._watched_after_id = 0
        self._watched_loaded = False
        self.initial_pass_running = False  # the daemon's safety-net pass waits while this runs

    # --- one tick --------------------------------------------------------------------------

    async def step(self) -> int:
        """Hold the lease, make sure following has a start, and catch up to the solid head.
        Returns the number of blocks processed (0: not ours, or nothing new). Raises
        NodeCannotFollow when the node keeps no transaction infos, ChainError on node trouble."""
        if time.monotonic() < self._refused_until:
            return 0  # the node keeps no transaction infos: asked again after a pause
        token = await self._hold_lease()
        if token is None:
            return 0
        # The lease is renewed in the background while the step runs (a long catch-up, a big import's
        # balance reads, the initial pass): a step never outlives its lease unnoticed.
        work = asyncio.ensure_future(self._follow(token))
        renewer = asyncio.ensure_future(self._keep_renewed(token, work))
        try:
            return await work
        except asyncio.CancelledError:
            if self._lease is None:  # our renewer cancelled it: the lease was lost
                return 0
            raise
        except LeaseLost:
            log.warning("follower lease lost; another daemon follows now", worker=self.worker_id)
            self._drop_lease()
            return 0
        except NodeCannotFollow:
            # Let another daemon (perhaps with another node) follow, and do not re-prove every tick.
            self._refused_until = time.monotonic() + REFUSED_RETRY_SECONDS
            await self.release()
            raise
        finally:
            renewer.cancel()

    async def _keep_renewed(self, token: str, work: asyncio.Future[int]) -> None:
        interval = max(0.5, self.lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            if not await asyncio.to_thread(
                self.ledger.renew_follow_lease, self.name, token, self.lease_seconds
            ):
                log.warning("follower lease lost mid-step; stopping the step", worker=self.worker_id)
                self._drop_lease()
                work.cancel()
                return

    async def release(self) -> None:
        """Clean shutdown: give the lease up so another daemon takes over at once."""
        if self._lease is not None:
            await asyncio.to_thread(self.ledger.release_follow_lease, self.name, self._lease.token)
            self._drop_lease()

    def _drop_lease(self) -> None:
        self._lease = None
        self._next_block = None
        self._watched_loaded = False  # a later take reads what was added meanwhile
        self.status.following = False

    async def _hold_lease(self) -> str | None:
        if self._lease is not None:
            if await asyncio.to_thread(
                self.ledger.renew_follow_lease, self.name, self._lease.token, self.lease_seconds
            ):
                return self._lease.token
            log.warning("follower lease lost; another daemon follows now", worker=self.worker_id)
            self._drop_lease()
        lease = await asyncio.to_thread(
            self.ledger.take_follow_lease, self.name, self.worker_id, self.lease_seconds
        )
        if lease is None:
            return None
        self._lease = lease
        self.status.following = True
        self._proved_at = float("-inf")  # a new holder proves the node first
        log.info(
            "following blocks",
            worker=self.worker_id,
            next_block=lease.next_block,
            taken_over_from=lease.previous_holder,
        )
        return lease.token

    async def _renew(self, token: str) -> None:
        if not await asyncio.to_thread(self.ledger.renew_follow_lease, self.name, token, self.lease_seconds):
            raise LeaseLost

    # --- following ---------------------------------------------------------------------------

    async def _follow(self, token: str) -> int:
        head = await self.chain.solid_head()
        self._head_before_reads = head.number
        self._saw_head(head)
        if time.monotonic() - self._proved_at >= PROOF_INTERVAL_SECONDS:
            await self.prove_node(head)
        cursor = await self._start(token, head)
        self._read_at = {pair: at for pair, at in self._read_at.items() if at >= cursor}
        if not self._watched_loaded:
            await self._read_added_while_away(token)
        await self._refresh_watched()
        await self._check_pending()
        done = 0
        started = time.perf_counter()
        while cursor <= head.number:
            end = min(head.number + 1, cursor + self.batch_blocks)
            batch = await self._read_batch(cursor, end)
            crash_point("follow-batch-read")
            await self._queue(batch.deposits)
            if batch.end > cursor:
                crash_point("follow-batch-queued")
                moved = await asyncio.to_thread(
                    self.ledger.advance_cursor, self.name, token, batch.end, expected_next=cursor
                )
                if not moved:
                    raise LeaseLost
                done += batch.end - cursor
                cursor = self._next_block = batch.end
                self.status.next_block = cursor
                self.status.blocks_done += batch.end - batch.first
            if batch.unserved is not None:
                log.info("a solid block was not served yet; asked again next tick", block=batch.unserved)
                break
            await self._renew(token)
        if done:
            seconds = time.perf_counter() - started
            log.info(
                "blocks followed",
                blocks=done,
                next_block=cursor,
                solid_head=head.number,
                blocks_per_second=round(done / seconds, 1) if seconds > 0 else None,
            )
        return done

    def _saw_head(self, head: BlockRef) -> None:
        self.status.solid_head = head.number
        self.status.solid_head_at = datetime.fromtimestamp(head.timestamp_ms / 1000, UTC)

    async def _start(self, token: str, head: BlockRef) -> int:
        """The first block to process. A fresh ledger: record the start (the solid head read before
        the first full poll pass, plus one), run that pass, then follow from the start."""
        if self._next_block is not None:  # ours since we took the lease: we moved it last
            return self._next_block
        lease = self._lease
        assert lease is not None
        if lease.next_block is not None and lease.initial_poll_done:
            self.status.next_block = self._next_block = lease.next_block
            return lease.next_block
        record = await asyncio.to_thread(self.ledger.set_follow_start, self.name, token, head.number + 1)
        if record is None:
            raise LeaseLost
        assert record.next_block is not None
        if record.initial_poll_done_at is None:
            log.info(
                "a fresh ledger: one full poll pass first (balances already there), then following "
                "from the solid head read before it",
                follow_from=record.next_block,
            )
            while True:
                self.initial_pass_running = True
                try:
                    await self.scanner.run_pass(on_page=lambda _: self._renew(token))
                finally:
                    self.initial_pass_running = False
                state = await asyncio.to_thread(self.ledger.scan_pass, self.scanner.name)
                assert state is not None
                try:
                    if not await asyncio.to_thread(
                        self.ledger.mark_initial_poll_done,
                        self.name,
                        token,
                        pass_started_at=state.pass_started_at,
                    ):
                        raise LeaseLost
                    break
                except CursorRefused:
                    # A pass resumed from before the start was recorded: an address it read early
                    # may have received a deposit below the start. Run a fresh one.
                    log.info("the poll pass began before following's start; running a fresh one")
        self._lease = FollowLease(
            name=lease.name,
            holder=lease.holder,
            token=lease.token,
            lease_until=lease.lease_until,
            next_block=record.next_block,
            start_block=record.start_block,
            start_recorded_at=record.start_recorded_at,
            initial_poll_done=True,
            previous_holder=lease.previous_holder,
        )
        self.status.next_block = self._next_block = record.next_block
        return record.next_block

    async def _read_batch(self, first: int, end: int) -> _Batch:
        """Transaction infos of blocks [first, end), at most `concurrency` requests in flight; the
        batch ends before the first block whose `[]` the node cannot vouch for."""
        semaphore = asyncio.Semaphore(self.concurrency)
        tokens = token_keys(t.contract for t in self.tokens if t.contract is not None)
        follow_trx = any(t.is_trx for t in self.tokens)
        watched = self._watched

        async def read(number: int) -> list[TokenTransfer] | None:
            async with semaphore:
                if follow_trx:
                    return await read_with_block(number)
                infos = await self.chain.solid_transaction_infos(number)
                if not infos:
                    try:
                        if await self.chain.solid_block_transaction_count(number) > 0:
                            return None  # this backend cannot serve it (yet): never skip it
                    except ChainResponseError:
                        return None  # the node does not have this block solidified
                    return []
                return deposits_in_block(infos, tokens, watched)

        async def read_with_block(number: int) -> list[TokenTransfer] | None:
            # TRX configured: the block itself first (its TransferContracts; ONE request), then its
            # transaction infos only when it has transactions and a token is configured. The count
            # vouches for an empty answer as before.
            try:
                count, trx = await self.chain.solid_block_trx_transfers(number)
            except ChainResponseError:
                return None  # the node does not have this block solidified
            found = [
                replace(t, token=TRX_SYMBOL)  # keyed like a token's contract from here on
                for t in trx
                if hex20(t.recipient) in watched
            ]
            if count == 0 or not tokens:
                return found
            infos = await self.chain.solid_transaction_infos(number)
            if not infos:
                return None  # this backend cannot serve its infos (yet): never skip it
            return found + deposits_in_block(infos, tokens, watched)

        results = await asyncio.gather(*(read(n) for n in range(first, end)))
        batch = _Batch(first, end)
        for offset, found in enumerate(results):
            if found is None:
                batch.end = first + offset
                batch.unserved = first + offset
                break
            batch.deposits.extend((first + offset, deposit) for deposit in found)
        return batch

    async def _queue(self, deposits: list[tuple[int, TokenTransfer]]) -> None:
        """Read each recipient's balance once per (address, token) and queue it at or above the
        token's threshold; a deposit to a held address is an ALERT, never a sweep.

        A balance read answers the node's latest state, which includes every block up to the solid
        head read before it: a deposit in such a block is already in that read (`_read_at`), so it
        costs no second read. While catching up, each recipient is read about once in all."""
        if not deposits:
            return
        self.status.deposits_seen += len(deposits)
        by_token: dict[str, set[str]] = {}
        for block, deposit in deposits:
            key = deposit.token or TRX_SYMBOL
            if block <= self._read_at.get((deposit.recipient, key), -1):
                continue
            by_token.setdefault(key, set()).add(deposit.recipient)
        await self._check(by_token)

    async def _check(
        self,
        by_token: dict[str, set[str]],
        *,
        alert_held: bool = True,
        reason: str = "deposit seen in a followed block; balance at or above min_sweep",
    ) -> None:
        """Read these (address, token) balances once each and queue those at or above threshold. A
        pair with an open sweep, a hold or a cooldown is not read now but remembered (`_recheck`)."""
        semaphore = asyncio.Semaphore(self.concurrency)
        for token in self.tokens:
            recipients = sorted(by_token.get(token.asset_key, ()))
            for start in range(0, len(recipients), IN_LIST_CHUNK):
                chunk = set(recipients[start : start + IN_LIST_CHUNK])
                await self._check_chunk(token, chunk, semaphore, alert_held=alert_held, reason=reason)

    async def _check_chunk(
        self,
        token: TokenSettings,
        recipients: set[str],
        semaphore: asyncio.Semaphore,
        *,
        alert_held: bool,
        reason: str,
    ) -> None:
        open_already = await asyncio.to_thread(self.ledger.with_open_sweep, token.symbol, recipients)
        blocked = await asyncio.to_thread(self.ledger.blocked, token.symbol, recipients)
        self._recheck.update((address, token.asset_key) for address in open_already | blocked)
        for address in sorted(blocked - open_already) if alert_held else ():
            hold = await asyncio.to_thread(self.ledger.active_hold, address, token.symbol)
            if hold is not None:
                self.status.held_deposits += 1
                log.error(
                    "ALERT: a new deposit to a held address; it stays held until "
                    "`sweeper addresses release` or `sweeper sweeps retry`",
                    address=address,
                    token=token.symbol,
                    held_since=hold.held_at,
                    reason=hold.reason,
                )

        async def check(address: str) -> None:
            # The head this read covers, taken before the read: a check left running by a failed
            # step may finish after the next step moved `_head_before_reads` on, and must not claim
            # to cover blocks its read may have missed.
            covered = self._head_before_reads
            async with semaphore:
                if token.contract is None:
                    amount = await self.chain.trx_balance(address)
                else:
                    amount = await self.chain.token_balance(address, token.contract)
            if amount >= token.min_sweep_base_units:
                sweep_id = await asyncio.to_thread(
                    self.ledger.queue_sweep, address, token.symbol, token.contract, amount, reason=reason
                )
            else:
                sweep_id = None
            # Only once the decision is recorded: a queue_sweep that failed (the database away)
            # must leave the pair unread, or the batch read again would skip its deposit.
            self._read_at[(address, token.asset_key)] = covered
            if sweep_id is not None:
                self.status.queued += 1
                log.info(
                    "sweep queued", sweep_id=sweep_id, address=address, token=token.symbol, amount=amount
                )

        await asyncio.gather(*(check(a) for a in sorted(recipients - open_already - blocked)))

    async def _check_pending(self) -> None:
        """Pairs remembered while they had an open sweep, a hold or a cooldown: read again once
        nothing stands in the way any more (`_check` remembers them again if something still does)."""
        if not self._recheck:
            return
        pending, self._recheck = self._recheck, set()
        # An address unwatched meanwhile is forgotten: watched again, its balance is read then.
        pending = {(a, k) for a, k in pending if hex20(a) in self._watched}
        by_token: dict[str, set[str]] = {}
        for address, contract in pending:
            by_token.setdefault(contract, set()).add(address)
        try:
            await self._check(
                by_token,
                alert_held=False,
                reason="a deposit seen while a sweep was open; balance at or above min_sweep",
            )
        except BaseException:
            self._recheck |= pending  # read again next step
            raise

    async def _read_added_while_away(self, token: str) -> None:
        """Taking the lease: addresses registered since following last moved (plus a margin for an
        address added while that batch was being read) may hold deposits from blocks read before
        they were watched: their balances are read once."""
        cursor = await asyncio.to_thread(self.ledger.follow_cursor, self.name)
        if cursor is None or cursor.initial_poll_done_at is None:
            return  # a fresh start: the initial poll pass reads every address
        since = (cursor.advanced_at or cursor.initial_poll_done_at) - ADDED_MARGIN
        added = set(await asyncio.to_thread(self.ledger.watched_added_since, since))
        if added:
            log.info(
                "deposit addresses added since following last moved: their balances are read once",
                addresses=len(added),
            )
            await self._check(
                {t.asset_key: added for t in self.tokens},
                alert_held=False,
                reason="a deposit address added while following; balance at or above min_sweep",
            )
        await self._renew(token)

    async def _refresh_watched(self) -> None:
        """Add deposit addresses registered since the last look (streamed by id; cheap when none).
        An address added while we follow (`addresses import`, a reload) may already hold a balance
        that no block we read will show: its balance is read once, as a poll pass would."""
        first_load = not self._watched_loaded
        self._watched_loaded = True
        while True:
            page = await asyncio.to_thread(
                self.ledger.watched_page, after_id=self._watched_after_id, limit=10_000
            )
            if not page:
                break
            self._watched.update(hex20(address) for _, address in page)
            if not first_load:
                added = {address for _, address in page}
                log.info("new deposit addresses: their balances are read once", addresses=len(added))
                await self._check(
                    {t.asset_key: added for t in self.tokens},
                    alert_held=False,
                    reason="a deposit address added while following; balance at or above min_sweep",
                )
            # Only once they were read: a failed read is retried with the same page next step.
            self._watched_after_id = page[-1][0]
        await self._follow_watch_changes()

    async def _follow_watch_changes(self) -> None:
        """`addresses unwatch` / `watch` since the last look. The look goes back WATCH_MARGIN before
        the ledger time read before the previous one (a change committed late is not missed); what
        was already acted on (same updated_at) is skipped, so a change is acted on once."""
        now = await asyncio.to_thread(self.ledger.now)
        if self._changes_since is None:  # this process's first load just read the set as it is
            self._changes_since = now
            return
        since = self._changes_since - WATCH_MARGIN
        changes = await asyncio.to_thread(self.ledger.watch_changes_since, since)
        rewatched: set[str] = set()
        for address, watched, updated_at in changes:
            if self._changes_seen.get(address) == (updated_at, watched):
                continue
            key = hex20(address)
            if not watched:
                self._watched.discard(key)
            elif key not in self._watched:
                rewatched.add(address)
        if rewatched:
            log.info(
                "deposit addresses watched again: their balances are read once", addresses=len(rewatched)
            )
            await self._check(
                {t.asset_key: rewatched for t in self.tokens},
                alert_held=False,
                reason="a deposit address watched again; balance at or above min_sweep",
            )
            self._watched.update(hex20(a) for a in rewatched)
        # Only once acted on (a failed read is retried next step, the changes read again).
        self._changes_seen = {a: (at, watched) for a, watched, at in changes}
        self._changes_since = now

    # --- proving the node ----------------------------------------------------------------------

    async def prove_node(self, head: BlockRef) -> None:
        """A recent solid block that has transactions must answer non-empty transaction infos.
        Several are tried (a load balancer may answer `[]` from a backend that is behind); only when
        every one of them answers `[]` is following refused."""
        empty_with_transactions = 0
        for number in range(head.number, max(0, head.number - PROOF_BLOCKS), -1):
            try:
                if await self.chain.solid_block_transaction_count(number) == 0:
                    continue
            except ChainResponseError:
                continue
            if await self.chain.solid_transaction_infos(number):
                self._proved_at = time.monotonic()
                self.status.refused = None
                return
            empty_with_transactions += 1
            if empty_with_transactions >= PROOF_WITH_TRANSACTIONS:
                break
        if empty_with_transactions == 0:
            # No recent block with transactions (a quiet test chain): nothing to prove yet.
            self._proved_at = time.monotonic() - PROOF_INTERVAL_SECONDS + 60.0
            return
        self.status.refused = (
            f"{empty_with_transactions} blocks with transactions answered no transaction infos"
        )
        raise NodeCannotFollow(
            f"following refused: {empty_with_transactions} recent solid blocks with transactions "
            f"(up to {head.number}) answered no transaction infos; {NODE_SETTING}"
        )


def lag_detail(status: FollowStatus, now: datetime, max_lag_seconds: float) -> dict[str, Any]:
    """The follower's lag for /healthz: healthy while within `max_lag_seconds`."""
    lag = status.lag_seconds
    return {
        "ok": status.refused is None and (lag is None or lag <= max_lag_seconds),
        "lag_seconds": lag,
        "lag_blocks": status.lag_blocks,
        "checked_at": now,
        "refused": status.refused,
    }
