"""Block following through an in-process chain of blocks (tests/fakes.py `FakeBlocks`), on a real
SQLite ledger: exactly the deposits to watched addresses are found — none missed, none invented —
no block is skipped when the node answers `[]` for a block it cannot serve, a fresh ledger polls
first, held addresses stay held, a crash before the cursor moves replays without a second sweep,
and only the lease holder moves the cursor."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest
import structlog.testing
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from sweeper.config import TokenSettings
from sweeper.domain import SweepState
from sweeper.follower import Follower, NodeCannotFollow
from sweeper.ledger import Ledger, NewAddress
from sweeper.scanner import Scanner
from tests.constants import USDT, WALLET
from tests.fakes import Crash, FakeBlocks, FakeClock

OTHER_TOKEN = "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf"
TOKENS = (TokenSettings(symbol="USDT", contract=USDT, decimals=6, min_sweep=Decimal("10")),)
PAYER = "TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMW"  # an exchange's hot wallet paying customers
WATCHED = [WALLET.address(i) for i in range(6)]
STRANGER = WALLET.address(100)  # not a deposit address of ours


@dataclass
class Rig:
    clock: FakeClock
    chain: FakeBlocks
    ledger: Ledger

    def follower(self, worker: str = "daemon-a") -> Follower:
        scanner = Scanner(self.ledger, self.chain, TOKENS, concurrency=4)
        return Follower(self.ledger, self.chain, TOKENS, worker_id=worker, scanner=scanner, batch_blocks=10)

    def queued(self) -> dict[str, int]:
        return {r.address: r.observed_amount for r in self.ledger.list_sweeps()}


@pytest.fixture
def rig(fast_engine: Engine) -> Iterator[Rig]:
    clock = FakeClock()
    ledger = Ledger(fast_engine, clock=clock)
    ledger.upsert_addresses([NewAddress(a, "hd", hd_index=i) for i, a in enumerate(WATCHED)])
    chain = FakeBlocks()
    chain.balances[USDT][PAYER] = 10**15
    chain.mine_empty(5, transactions=3)  # history before the ledger existed
    yield Rig(clock, chain, ledger)


def step(follower: Follower) -> int:
    return asyncio.run(follower.step())


def test_a_fresh_ledger_polls_first_then_follows_from_the_head_read_before(rig: Rig) -> None:
    rig.chain.balances[USDT][WATCHED[0]] = 50_000_000  # already there before the daemon started
    follower = rig.follower()
    step(follower)
    assert rig.queued() == {WATCHED[0]: 50_000_000}, "the first poll pass found the old balance"
    cursor = rig.ledger.follow_cursor()
    assert cursor is not None and cursor.start_block == 6 and cursor.next_block == 6
    assert cursor.initial_poll_done_at is not None


def test_exactly_the_deposits_to_watched_addresses_are_queued(rig: Rig) -> None:
    follower = rig.follower()
    step(follower)  # the fresh-ledger pass: nothing there yet
    rig.chain.balance_reads.clear()
    rig.chain.mine((USDT, PAYER, WATCHED[1], 25_000_000), (USDT, PAYER, STRANGER, 99_000_000))
    rig.chain.mine((OTHER_TOKEN, PAYER, WATCHED[2], 77_000_000))  # a token we do not sweep
    rig.chain.mine((USDT, PAYER, WATCHED[3], 30_000_000), failed=True)  # reverted: no money moved
    rig.chain.mine((USDT, PAYER, WATCHED[4], 12_000_000), internal=True)  # a payout contract's call
    rig.chain.mine((USDT, PAYER, WATCHED[5], 4_000_000))  # below the 10 USDT threshold …
    rig.chain.mine_empty(3, transactions=2)
    rig.chain.mine((USDT, PAYER, WATCHED[5], 7_000_000))  # … until a second deposit adds up
    done = step(follower)
    assert done == 9
    assert rig.queued() == {WATCHED[1]: 25_000_000, WATCHED[4]: 12_000_000, WATCHED[5]: 11_000_000}
    cursor = rig.ledger.follow_cursor()
    assert cursor is not None and cursor.next_block == rig.chain.solid + 1
    assert (STRANGER, USDT) not in rig.chain.balance_reads and (
        WATCHED[2],
        USDT,
    ) not in rig.chain.balance_reads


def test_a_recipient_with_several_deposits_in_a_batch_is_read_once(rig: Rig) -> None:
    follower = rig.follower()
    step(follower)
    rig.chain.balance_reads.clear()
    for _ in range(5):
        rig.chain.mine((USDT, PAYER, WATCHED[1], 3_000_000))
    step(follower)
    assert rig.chain.balance_reads.count((WATCHED[1], USDT)) == 1
    assert rig.queued() == {WATCHED[1]: 15_000_000}


def test_a_block_the_node_cannot_serve_yet_is_never_skipped(rig: Rig) -> None:
    follower = rig.follower()
    step(follower)
    first = rig.chain.mine((USDT, PAYER, WATCHED[1], 20_000_000))
    second = rig.chain.mine((USDT, PAYER, WATCHED[2], 20_000_000))
    rig.chain.unserved[second] = 2  # a backend behind the balancer answers [] twice
    step(follower)
    cursor = rig.ledger.follow_cursor()
    assert cursor is not None and cursor.next_block == second, "stopped before the unserved block"
    assert set(rig.queued()) == {WATCHED[1]}
    step(follower)  # still unserved once more
    step(follower)
    assert set(rig.queued()) == {WATCHED[1], WATCHED[2]}
    cursor = rig.ledger.follow_cursor()
    assert cursor is not None and cursor.next_block == second + 1 and first < second


def test_an_empty_answer_is_trusted_only_for_a_block_without_transactions(rig: Rig) -> None:
    follower = rig.follower()
    step(follower)
    rig.chain.mine_empty(4)  # truly empty blocks
    assert step(follower) == 4


def test_a_node_without_transaction_infos_is_refused(rig: Rig) -> None:
    rig.chain.no_infos = True
    with pytest.raises(NodeCannotFollow, match="transHistory"):
        step(rig.follower())
    assert rig.ledger.follow_cursor() is None or rig.ledger.follow_cursor().next_block is None  # type: ignore[union-attr]


def test_a_deposit_to_a_held_address_is_an_alert_not_a_sweep(rig: Rig) -> None:
    follower = rig.follower()
    step(follower)
    sweep_id = rig.ledger.queue_sweep(WATCHED[1], "USDT", USDT, 20_000_000)
    assert sweep_id is not None
    [claimed] = rig.ledger.claim("w", [SweepState.QUEUED], limit=1, lease_seconds=60)
    rig.ledger.transition(
        claimed.id, SweepState.ORDERING, SweepState.FAILED, reason="a paid failure", holder="w", hold=True
    )
    rig.chain.mine((USDT, PAYER, WATCHED[1], 20_000_000))
    with structlog.testing.capture_logs() as logs:
        step(follower)
    assert [r.state.value for r in rig.ledger.list_sweeps()] == ["failed"]
    assert any(e["event"].startswith("ALERT: a new deposit to a held address") for e in logs)


def test_a_crash_before_the_cursor_moves_replays_without_a_second_sweep(rig: Rig) -> None:
    follower = rig.follower()
    step(follower)
    rig.chain.mine((USDT, PAYER, WATCHED[1], 20_000_000))
    original = rig.ledger.advance_cursor

    def die(*args: object, **kwargs: object) -> bool:
        raise Crash()

    rig.ledger.advance_cursor = die  # type: ignore[method-assign]
    with pytest.raises(Crash):
        step(follower)
    rig.ledger.advance_cursor = original  # type: ignore[method-assign]
    assert set(rig.queued()) == {WATCHED[1]}
    restarted = rig.follower("daemon-a")  # the same host after a restart: a new process
    rig.clock.advance(61)  # the dead process's lease runs out
    step(restarted)
    assert len(rig.ledger.list_sweeps()) == 1
    cursor = rig.ledger.follow_cursor()
    assert cursor is not None and cursor.next_block == rig.chain.solid + 1


def test_only_the_lease_holder_follows_and_another_takes_over_after_it_dies(rig: Rig) -> None:
    a, b = rig.follower("daemon-a"), rig.follower("daemon-b")
    step(a)
    rig.chain.mine((USDT, PAYER, WATCHED[1], 20_000_000))
    assert step(b) == 0 and a.status.following and not b.status.following
    step(a)
    rig.chain.mine((USDT, PAYER, WATCHED[2], 20_000_000))
    rig.clock.advance(61)  # a died: its lease runs out
    assert step(b) == 1 and b.status.following
    assert set(rig.queued()) == {WATCHED[1], WATCHED[2]}
    assert step(a) == 0 and not a.status.following, "a's old token can no longer move the cursor"


def test_an_address_added_while_following_has_its_balance_read_once(rig: Rig) -> None:
    follower = rig.follower()
    step(follower)
    newcomer = WALLET.address(50)
    rig.chain.balances[USDT][newcomer] = 40_000_000  # deposited before we watched it
    rig.ledger.upsert_addresses([NewAddress(newcomer, "import")])
    step(follower)
    assert rig.queued() == {newcomer: 40_000_000}


def test_an_address_added_while_no_daemon_followed_has_its_balance_read_at_takeover(rig: Rig) -> None:
    step(rig.follower("daemon-a"))
    rig.chain.mine_empty(2)
    step(rig.follower("daemon-a"))  # following moved: advanced_at is set
    rig.clock.advance(3600)  # the daemon is down for an hour; an import happens meanwhile
    newcomer = WALLET.address(51)
    rig.chain.balances[USDT][newcomer] = 40_000_000
    rig.ledger.upsert_addresses([NewAddress(newcomer, "import")])
    step(rig.follower("daemon-b"))
    assert rig.queued() == {newcomer: 40_000_000}


def test_a_deposit_while_a_sweep_is_open_is_read_again_once_it_is_final(rig: Rig) -> None:
    follower = rig.follower()
    step(follower)
    rig.chain.mine((USDT, PAYER, WATCHED[1], 20_000_000))
    step(follower)
    [row] = rig.ledger.list_sweeps()
    rig.chain.mine((USDT, PAYER, WATCHED[1], 15_000_000))  # lands after the open sweep read its balance
    step(follower)
    assert len(rig.ledger.list_sweeps()) == 1, "one open sweep per pair"
    rig.ledger.cancel(row.id)  # the first sweep ends (here: cancelled); 35 USDT still there
    step(follower)
    assert sorted(r.observed_amount for r in rig.ledger.list_sweeps()) == [20_000_000, 35_000_000]


def test_a_failed_balance_read_of_a_new_address_is_retried(rig: Rig) -> None:
    from sweeper.chain import ChainUnavailable

    follower = rig.follower()
    step(follower)
    newcomer = WALLET.address(52)
    rig.chain.balances[USDT][newcomer] = 40_000_000
    rig.ledger.upsert_addresses([NewAddress(newcomer, "import")])
    rig.chain.fail("token_balance", ChainUnavailable("timeout"))
    with pytest.raises(ChainUnavailable):
        step(follower)
    step(follower)
    assert rig.queued() == {newcomer: 40_000_000}


def test_a_lease_lost_mid_step_stops_the_step_before_the_cursor_moves(rig: Rig) -> None:
    follower = rig.follower()
    follower.lease_seconds = 1.5  # renewed every 0.5 s in the background
    step(follower)
    rig.chain.mine((USDT, PAYER, WATCHED[1], 20_000_000))
    original = rig.chain.solid_transaction_infos

    async def slow(number: int) -> list[dict[str, object]]:
        rig.clock.advance(5)  # another daemon's clock view: our lease has run out meanwhile
        rig.ledger.take_follow_lease("blocks", "daemon-b", 60)
        await asyncio.sleep(1.0)
        return await original(number)

    rig.chain.solid_transaction_infos = slow  # type: ignore[method-assign]
    before = rig.ledger.follow_cursor()
    assert step(follower) == 0 and not follower.status.following
    after = rig.ledger.follow_cursor()
    assert before is not None and after is not None and after.next_block == before.next_block
    assert after.holder == "daemon-b"


def test_a_deposit_whose_sweep_could_not_be_written_is_queued_when_the_database_is_back(rig: Rig) -> None:
    """The database goes away between the balance read and queue_sweep: the step fails, the cursor
    stays, and the same process reading the batch again must still queue the deposit (it once
    remembered the pair as read and skipped it until the hourly safety net)."""
    follower = rig.follower()
    step(follower)
    rig.chain.mine((USDT, PAYER, WATCHED[1], 20_000_000))
    original = rig.ledger.queue_sweep

    def unreachable(*args: object, **kwargs: object) -> int | None:
        raise OperationalError("INSERT INTO sweeps", {}, Exception("connection refused"))

    rig.ledger.queue_sweep = unreachable  # type: ignore[method-assign]
    with pytest.raises(OperationalError):
        step(follower)
    rig.ledger.queue_sweep = original  # type: ignore[method-assign]
    assert rig.queued() == {}
    step(follower)  # the same follower, the database back
    assert rig.queued() == {WATCHED[1]: 20_000_000}
    cursor = rig.ledger.follow_cursor()
    assert cursor is not None and cursor.next_block == rig.chain.solid + 1


# --- native TRX (issue 17) ----------------------------------------------------------------------

TRX_TOKENS = (*TOKENS, TokenSettings(symbol="TRX", contract=None, decimals=6, min_sweep=Decimal("5")))


def test_trx_deposits_come_from_each_blocks_transfer_contracts(rig: Rig) -> None:
    """With TRX configured each block is read whole (its TransferContracts) besides its infos:
    exactly the TRX deposits to watched addresses at or above min_sweep are queued, USDT as before;
    an unserved block is still never skipped."""
    scanner = Scanner(rig.ledger, rig.chain, TRX_TOKENS, concurrency=4)
    follower = Follower(
        rig.ledger, rig.chain, TRX_TOKENS, worker_id="daemon-a", scanner=scanner, batch_blocks=10
    )
    step(follower)  # the fresh-ledger pass reads every address once
    rig.chain.trx_balance_reads.clear()
    rig.chain.trx_balances[PAYER] = 10**12
    rig.chain.mine_trx((PAYER, WATCHED[1], 12_000_000), (PAYER, STRANGER, 50_000_000))
    rig.chain.mine_trx((PAYER, WATCHED[2], 4_000_000))  # below 5 TRX: read, not queued
    rig.chain.mine((USDT, PAYER, WATCHED[3], 25_000_000))
    unserved = rig.chain.mine((USDT, PAYER, WATCHED[4], 25_000_000))
    rig.chain.unserved[unserved] = 1
    step(follower)
    assert {(r.address, r.token): r.observed_amount for r in rig.ledger.list_sweeps()} == {
        (WATCHED[1], "TRX"): 12_000_000,
        (WATCHED[3], "USDT"): 25_000_000,
    }
    assert sorted(rig.chain.trx_balance_reads) == sorted([WATCHED[1], WATCHED[2]])  # never the stranger
    trx_row = next(r for r in rig.ledger.list_sweeps() if r.token == "TRX")
    assert trx_row.token_contract is None and trx_row.is_trx
    step(follower)  # the unserved block, served now
    assert (WATCHED[4], "USDT") in {(r.address, r.token) for r in rig.ledger.list_sweeps()}


def test_trx_in_a_poll_pass_is_one_balance_read_per_address(rig: Rig) -> None:
    rig.chain.trx_balances[WATCHED[0]] = 9_000_000
    report = asyncio.run(Scanner(rig.ledger, rig.chain, TRX_TOKENS, concurrency=4).run_pass())
    assert sorted(rig.chain.trx_balance_reads) == sorted(WATCHED)
    assert report.queued == 1
    [row] = rig.ledger.list_sweeps()
    assert (row.address, row.token, row.observed_amount, row.is_trx) == (WATCHED[0], "TRX", 9_000_000, True)
