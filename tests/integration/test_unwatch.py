"""`sweeper addresses unwatch` / `watch` (issue 18, item 5), on SQLite and Postgres: an unwatched
address is neither read nor queued by a poll pass or the block follower, `queue_sweep` refuses it,
its open sweep still goes to its end, the choice survives the configured-address re-sync and an
import, and `watch` undoes it (the follower picks it up at once, even one it never saw watched)."""

from __future__ import annotations

import asyncio
import itertools
import json
from decimal import Decimal
from pathlib import Path

import pytest

from sweeper.addresses import sync_addresses
from sweeper.cli import main
from sweeper.config import TokenSettings, load_settings
from sweeper.domain import SweepState as S
from sweeper.follower import Follower
from sweeper.ledger import Ledger, NewAddress, make_engine
from sweeper.scanner import Scanner
from tests.conftest import REPO, Tty
from tests.constants import MNEMONIC, USDT, WALLET
from tests.fakes import FakeBlocks

TOKENS = (TokenSettings(symbol="USDT", contract=USDT, decimals=6, min_sweep=Decimal("10")),)
A = [WALLET.address(i) for i in range(6)]
STRANGER = WALLET.address(900)  # a valid address the ledger does not hold
PAYER = "TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMW"


@pytest.fixture
def known(ledger: Ledger) -> Ledger:
    ledger.upsert_addresses(NewAddress(a, "hd", hd_index=i) for i, a in enumerate(A))
    return ledger


def watched(ledger: Ledger) -> dict[str, bool]:
    return {r.address: r.watched for r in ledger.list_addresses()}


# --- the ledger ------------------------------------------------------------------------------------


def test_unwatch_refuses_queueing_and_an_open_sweep_still_finishes(known: Ledger) -> None:
    open_id = known.queue_sweep(A[0], "USDT", USDT, 20_000_000)
    assert open_id is not None
    assert known.set_watched([A[0], A[1], A[0]], False) == ([A[0], A[1]], [])
    assert known.set_watched([A[1], A[2]], False) == ([A[2]], [A[1]])
    assert watched(known) == {a: a not in A[:3] for a in A}

    assert known.queue_sweep(A[1], "USDT", USDT, 20_000_000) is None
    assert known.queue_sweep(A[1], "TRX", None, 5_000_000) is None
    assert known.blocked("USDT", A) == set(A[:3])

    # Nothing cancels the sweep that was open: it is claimed and goes to its end.
    claimed = known.claim("w1", [S.QUEUED], limit=10, lease_seconds=30)
    assert [c.id for c in claimed] == [open_id]
    path = [S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.SIGNED, S.BROADCAST, S.CONFIRMED]
    for source, target in itertools.pairwise(path):
        known.transition(open_id, source, target, reason="test", holder="w1")
    assert known.get_sweep(open_id).state is S.CONFIRMED
    assert known.queue_sweep(A[0], "USDT", USDT, 20_000_000) is None, "still unwatched: no new sweep"

    assert known.set_watched([A[0]], True) == ([A[0]], [])
    assert known.set_watched([A[0], A[3]], True) == ([], [A[0], A[3]])
    assert known.queue_sweep(A[0], "USDT", USDT, 20_000_000) is not None
    assert known.blocked("USDT", A) == {A[1], A[2]}


def test_an_unknown_address_changes_nothing(known: Ledger) -> None:
    before = watched(known)
    with pytest.raises(Exception, match=f"not a deposit address in the ledger: {STRANGER}"):
        known.set_watched([A[0], STRANGER], False)
    assert watched(known) == before


def test_unwatched_survives_the_hd_resync_and_an_import(ledger: Ledger, tmp_path: Path) -> None:
    text = (REPO / "config.example.toml").read_text().replace('hd_indexes = "0-999"', 'hd_indexes = "0-5"')
    path = tmp_path / "sweeper.toml"
    path.write_text(text)
    env = {
        "TRONGRID_API_KEY": "k" * 10,
        "SWEEPER_PROVIDER_API_KEY": "k" * 10,
        "SWEEPER_PROVIDER_API_SECRET": "s" * 10,
        "SWEEPER_MNEMONIC": MNEMONIC,
    }
    settings = load_settings(path, environ=env)
    assert sync_addresses(settings, ledger) == 6  # the start: the configured range registered
    ledger.set_watched([A[2]], False)
    assert sync_addresses(settings, ledger) == 0  # a restart or SIGHUP: the same range again
    assert ledger.upsert_addresses([NewAddress(A[2], "import", label="again")]) == 0
    assert watched(ledger) == {a: a != A[2] for a in A}


# --- detection -------------------------------------------------------------------------------------


def test_a_poll_pass_neither_reads_nor_queues_an_unwatched_address(known: Ledger) -> None:
    chain = FakeBlocks()
    for a in A:
        chain.balances[USDT][a] = 50_000_000
    known.set_watched([A[1], A[4]], False)
    report = asyncio.run(Scanner(known, chain, TOKENS, page_size=2).run_pass())
    assert report.addresses == 4
    assert {r.address for r in known.list_sweeps()} == {A[0], A[2], A[3], A[5]}
    assert {address for address, _ in chain.balance_reads} == {A[0], A[2], A[3], A[5]}

    known.set_watched([A[1]], True)
    asyncio.run(Scanner(known, chain, TOKENS).run_pass())
    assert {r.address for r in known.list_sweeps()} == {A[0], A[1], A[2], A[3], A[5]}


def test_the_follower_skips_an_unwatched_address_and_picks_it_up_when_watched_again(known: Ledger) -> None:
    chain = FakeBlocks()
    chain.balances[USDT][PAYER] = 10**15
    chain.mine_empty(5, transactions=3)
    # Unwatched before the follower ever loaded its set: watching it again must still be seen.
    known.set_watched([A[1], A[2]], False)
    chain.balances[USDT][A[1]] = 30_000_000  # there before the daemon started
    follower = Follower(
        known,
        chain,
        TOKENS,
        worker_id="daemon-a",
        scanner=Scanner(known, chain, TOKENS, concurrency=4),
        batch_blocks=10,
    )
    asyncio.run(follower.step())  # a fresh ledger: the first poll pass (watched addresses only)
    assert known.list_sweeps() == []
    chain.balance_reads.clear()

    chain.mine((USDT, PAYER, A[1], 20_000_000), (USDT, PAYER, A[3], 25_000_000))
    asyncio.run(follower.step())
    assert {r.address: r.observed_amount for r in known.list_sweeps()} == {A[3]: 25_000_000}
    assert (A[1], USDT) not in chain.balance_reads, "an unwatched address's balance is not read"
    assert not follower._recheck, "an unwatched address is not remembered step after step"

    # Watched again: the deposit seen meanwhile is read once; a later deposit to A[2] (never
    # watched while the follower ran) is followed.
    known.set_watched([A[1], A[2]], True)
    chain.mine((USDT, PAYER, A[2], 15_000_000))
    asyncio.run(follower.step())
    assert {r.address: r.observed_amount for r in known.list_sweeps()} == {
        A[3]: 25_000_000,
        A[1]: 50_000_000,
        A[2]: 15_000_000,
    }


# --- the commands ----------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    text = (
        (REPO / "config.example.toml")
        .read_text()
        .replace('url = "sqlite:///sweeper.db"', f'url = "{db_url}"')
    )
    path = tmp_path / "sweeper.toml"
    path.write_text(text)
    return path


def run(config: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--config", str(config), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listed(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, bool]:
    code, out, _ = run(config, "addresses", "list", "--json", capsys=capsys)
    assert code == 0
    return {row["address"]: row["watched"] for row in json.loads(out)}


def test_unwatch_and_watch_commands(
    config: Path, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "migrate", capsys=capsys)[0] == 0
    file = tmp_path / "deposits.txt"
    file.write_text("".join(f"{a}\n" for a in A[:3]))
    assert run(config, "addresses", "import", str(file), capsys=capsys)[0] == 0

    code, out, _ = run(config, "addresses", "unwatch", A[0], A[1], "--json", capsys=capsys)
    assert (code, json.loads(out)) == (0, {"unwatched": [A[0], A[1]], "already": []})
    code, out, _ = run(config, "addresses", "unwatch", A[1], A[2], "--json", capsys=capsys)
    assert (code, out) == (0, json.dumps({"unwatched": [A[2]], "already": [A[1]]}, indent=2) + "\n")
    assert listed(config, capsys) == {A[0]: False, A[1]: False, A[2]: False}

    # All or nothing: an address the ledger does not hold, or not an address at all, is exit 2.
    code, out, err = run(config, "addresses", "watch", A[0], STRANGER, capsys=capsys)
    assert (code, out) == (2, "")
    assert STRANGER in err and "not a deposit address in the ledger" in err and "nothing changed" in err
    code, _, err = run(config, "addresses", "unwatch", "TNotAnAddress", capsys=capsys)
    assert code == 2 and "ADDRESS:" in err
    with pytest.raises(SystemExit) as exited:  # ADDRESS… is required
        main(["--config", str(config), "addresses", "watch"])
    assert exited.value.code == 2
    assert listed(config, capsys) == {A[0]: False, A[1]: False, A[2]: False}

    # Importing the same file again keeps the choice.
    assert run(config, "addresses", "import", str(file), capsys=capsys)[0] == 0
    assert listed(config, capsys) == {A[0]: False, A[1]: False, A[2]: False}

    code, out, _ = run(config, "addresses", "watch", A[0], A[0], "--json", capsys=capsys)
    assert (code, json.loads(out)) == (0, {"watched": [A[0]], "already": []})

    # On a terminal: a short text.
    terminal = Tty()
    assert main(["--config", str(config), "addresses", "watch", A[0], A[1]], out=terminal) == 0
    assert terminal.getvalue() == f"{A[1]} watched\n{A[0]} was already watched\n"
    terminal = Tty()
    assert main(["--config", str(config), "addresses", "list"], out=terminal) == 0
    table = terminal.getvalue()
    assert "watched" in table.lower()
    rows = {line.split()[1]: line.split() for line in table.splitlines() if A[2] in line or A[0] in line}
    assert "no" in rows[A[2]] and "yes" in rows[A[0]]

    engine = make_engine(db_url)
    try:
        ledger = Ledger(engine)
        assert ledger.queue_sweep(A[2], "USDT", USDT, 20_000_000) is None
        assert ledger.queue_sweep(A[1], "USDT", USDT, 20_000_000) is not None
    finally:
        engine.dispose()
