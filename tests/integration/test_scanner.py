"""Detection by polling against the sandbox node over real HTTP, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from sweeper.addresses import KeysDoNotMatchLedger, configured_addresses, sync_addresses
from sweeper.chain import TronChain
from sweeper.config import Settings, load_settings
from sweeper.domain import Secret, SweepState
from sweeper.keys import HdWallet
from sweeper.ledger import Ledger
from sweeper.sandbox.node_server import RunningNode, start_sandbox_node
from sweeper.sandbox.world import World
from sweeper.scanner import Scanner
from tests.conftest import REPO
from tests.constants import MNEMONIC, WALLET

N = 60
ADDRESSES = [WALLET.address(i) for i in range(N)]
MIN = 10_000_000  # 10 USDT


def balance_for(i: int) -> int:
    # A spread around the threshold: zero, dust, just below, exactly at, above.
    return [0, 1, MIN - 1, MIN, MIN + 1, 2_500_000_000][i % 6]


EXPECTED = {a for i, a in enumerate(ADDRESSES) if balance_for(i) >= MIN}


@pytest.fixture
def node() -> Iterator[RunningNode]:
    world = World()
    for i, address in enumerate(ADDRESSES):
        if balance_for(i):
            world.credit_token(world.usdt_contract, address, balance_for(i))
    with start_sandbox_node(world) as running:
        yield running


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    text = (
        (REPO / "config.example.toml")
        .read_text()
        .replace('hd_indexes = "0-999"', f'hd_indexes = "0-{N - 1}"')
    )
    path = tmp_path / "sweeper.toml"
    path.write_text(text)
    env = {
        "TRONGRID_API_KEY": "k" * 10,
        "SWEEPER_PROVIDER_API_KEY": "k" * 10,
        "SWEEPER_PROVIDER_API_SECRET": "s" * 10,
        "SWEEPER_MNEMONIC": MNEMONIC,
    }
    return load_settings(path, environ=env)


def test_sync_adds_file_and_keyfile_addresses_with_their_source(ledger: Ledger, tmp_path: Path) -> None:
    wallet = HdWallet(Secret(MNEMONIC))
    listed = [wallet.address(500), wallet.address(501)]
    (tmp_path / "addresses.txt").write_text("\n".join(listed) + "\n")
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(json.dumps({wallet.address(600): wallet.private_key(600).reveal()}))
    os.chmod(keyfile, 0o600)
    text = (
        (REPO / "config.example.toml")
        .read_text()
        .replace('hd_indexes = "0-999"', 'hd_indexes = ""\nfile = "addresses.txt"')
        .replace('source = "mnemonic"', 'source = "keyfile"\nkeyfile = "keys.json"')
    )
    path = tmp_path / "sweeper.toml"
    path.write_text(text)
    env = {
        "TRONGRID_API_KEY": "k" * 10,
        "SWEEPER_PROVIDER_API_KEY": "k" * 10,
        "SWEEPER_PROVIDER_API_SECRET": "s" * 10,
    }
    settings = load_settings(path, environ=env)
    assert sync_addresses(settings, ledger) == 3
    assert sync_addresses(settings, ledger) == 0  # idempotent
    sources = {a.address: a.source for a in ledger.list_addresses()}
    assert sources == {listed[0]: "file", listed[1]: "file", wallet.address(600): "keyfile"}
    assert str(wallet.private_key(600).reveal()) not in repr(ledger.list_addresses())


def scanner(ledger: Ledger, chain: TronChain, settings: Settings, **kw: int) -> Scanner:
    return Scanner(ledger, chain, settings.tokens, **kw)


def test_sync_addresses_derives_once_and_detects_a_changed_mnemonic(
    ledger: Ledger, settings: Settings
) -> None:
    assert sync_addresses(settings, ledger) == N
    assert sync_addresses(settings, ledger) == 0
    assert list(configured_addresses(settings, ledger)) == []  # nothing left to derive
    assert [a.address for a in ledger.list_addresses()] == ADDRESSES
    other = Settings(**{**settings.__dict__, "keys": settings.keys.__class__(
        **{**settings.keys.__dict__, "mnemonic": Secret("legal winner thank year wave sausage worth useful legal winner thank yellow")}
    )})  # fmt: skip
    with pytest.raises(KeysDoNotMatchLedger, match="not the one this ledger was built with"):
        list(configured_addresses(other, ledger))


def test_pass_queues_every_candidate_once_and_none_below(
    ledger: Ledger, settings: Settings, node: RunningNode
) -> None:
    sync_addresses(settings, ledger)

    async def go() -> None:
        async with TronChain(node.url, requests_per_second=1000, burst=50) as chain:
            report = await scanner(ledger, chain, settings, page_size=7, concurrency=16).run_pass()
            assert report.completed and report.addresses == N and report.balance_reads == N
            assert report.queued == len(EXPECTED) == report.candidate_count
            # A second pass reads only the addresses without an open sweep and queues nothing.
            again = await scanner(ledger, chain, settings, page_size=7).run_pass()
            assert again.queued == 0 and again.skipped_open == len(EXPECTED)
            assert again.balance_reads == N - len(EXPECTED)

    asyncio.run(go())
    rows = ledger.list_sweeps()
    assert {r.address for r in rows} == EXPECTED and len(rows) == len(EXPECTED)
    index = {a: i for i, a in enumerate(ADDRESSES)}
    for row in rows:
        assert row.state is SweepState.QUEUED and row.token == "USDT"
        assert row.observed_amount == row.amount == balance_for(index[row.address])
    progress = ledger.scan_pass("poll")
    assert progress is not None and progress.completed_at is not None


def test_two_racing_scans_queue_each_candidate_once(
    ledger: Ledger, settings: Settings, node: RunningNode
) -> None:
    sync_addresses(settings, ledger)

    async def go() -> tuple[int, int]:
        async with (
            TronChain(node.url, requests_per_second=1000, burst=50) as one,
            TronChain(node.url, requests_per_second=1000, burst=50) as two,
        ):
            a, b = await asyncio.gather(
                scanner(ledger, one, settings, page_size=5, concurrency=8).run_pass(),
                Scanner(ledger, two, settings.tokens, page_size=5, concurrency=8, name="poll-2").run_pass(),
            )
            return a.queued, b.queued

    queued_a, queued_b = asyncio.run(go())
    rows = ledger.list_sweeps()
    assert len(rows) == len(EXPECTED) == queued_a + queued_b
    assert {r.address for r in rows} == EXPECTED


def test_a_crashed_pass_resumes_after_the_last_recorded_page(
    ledger: Ledger, settings: Settings, node: RunningNode
) -> None:
    sync_addresses(settings, ledger)

    class Crash(Exception):
        pass

    pages_done: list[int] = []

    async def crash_after_two_pages(last_id: int) -> None:
        pages_done.append(last_id)
        if len(pages_done) == 2:
            raise Crash

    async def go() -> None:
        async with TronChain(node.url, requests_per_second=1000, burst=50) as chain:
            with pytest.raises(Crash):
                await scanner(ledger, chain, settings, page_size=10).run_pass(on_page=crash_after_two_pages)
            reads_before = node.node.requests_to("wallet/triggerconstantcontract")
            resumed = await scanner(ledger, chain, settings, page_size=10).run_pass()
            assert resumed.resumed_after_id == pages_done[-1]
            assert resumed.addresses == N - 20  # the two recorded pages are not read again
            assert len(node.node.requests_to("wallet/triggerconstantcontract")) - len(reads_before) == (
                resumed.balance_reads
            )

    asyncio.run(go())
    assert {r.address for r in ledger.list_sweeps()} == EXPECTED
    progress = ledger.scan_pass("poll")
    assert progress is not None and progress.completed_at is not None and progress.addresses_scanned == N


def test_dry_run_queues_nothing_and_records_no_progress(
    ledger: Ledger, settings: Settings, node: RunningNode
) -> None:
    sync_addresses(settings, ledger)

    async def go() -> None:
        async with TronChain(node.url, requests_per_second=1000, burst=50) as chain:
            report = await scanner(ledger, chain, settings).run_pass(dry_run=True)
            assert {c.address for c in report.candidates} == EXPECTED
            assert all(c.sweep_id is None for c in report.candidates)

    asyncio.run(go())
    assert ledger.list_sweeps() == []
    assert ledger.scan_pass("poll") is None


def test_the_rate_limit_holds_under_concurrency(
    ledger: Ledger, settings: Settings, node: RunningNode
) -> None:
    """64 concurrent readers, 25 req/s: no one-second window of sent requests exceeds the limit."""
    sync_addresses(settings, ledger)
    sent: list[float] = []

    async def record(request: httpx.Request) -> None:
        sent.append(time.monotonic())

    async def go() -> None:
        client = httpx.AsyncClient(event_hooks={"request": [record]}, timeout=10)
        chain = TronChain(node.url, requests_per_second=25, client=client)
        try:
            await scanner(ledger, chain, settings, page_size=N, concurrency=64).run_pass()
        finally:
            await client.aclose()

    asyncio.run(go())
    assert len(sent) >= N
    worst = max(sum(1 for t in sent if start <= t < start + 1.0) for start in sent)
    assert worst <= 25 + 1, f"{worst} requests in one second"
    span = sent[-1] - sent[0]
    assert len(sent) / span <= 25 * 1.05


def test_amount_at_threshold_boundary_uses_exact_decimals(settings: Settings) -> None:
    token = settings.tokens[0]
    assert token.min_sweep == Decimal("10") and token.min_sweep_base_units == MIN


class _Flaky:
    """The chain, except that some addresses' balances cannot be read."""

    def __init__(self, inner: TronChain, failing: set[str]) -> None:
        self.inner = inner
        self.failing = failing

    async def token_balance(self, holder: str, token: str) -> int:
        if holder in self.failing:
            raise RuntimeError("node keeps failing for this one")
        return await self.inner.token_balance(holder, token)


def test_one_unreadable_address_never_stops_the_pass_for_the_others(
    ledger: Ledger, settings: Settings, node: RunningNode
) -> None:
    """Issue 12: the first wave stopped the whole pass at the page of one bad address, for ever."""
    sync_addresses(settings, ledger)
    bad = sorted(EXPECTED, key=ADDRESSES.index)[3]

    async def go() -> None:
        async with TronChain(node.url, requests_per_second=1000, burst=50) as chain:
            report = await Scanner(ledger, _Flaky(chain, {bad}), settings.tokens, page_size=10).run_pass()
            assert report.completed and report.unreadable == 1 and report.addresses == N
            assert report.queued == len(EXPECTED) - 1

    asyncio.run(go())
    assert {r.address for r in ledger.list_sweeps()} == EXPECTED - {bad}
    progress = ledger.scan_pass("poll")
    assert progress is not None and progress.completed_at is not None


def test_an_unreadable_page_stops_the_pass_without_skipping_it(
    ledger: Ledger, settings: Settings, node: RunningNode
) -> None:
    """Every read of a page failing means the node, not the addresses: the pass stops there and
    resumes from that page next time."""
    from sweeper.scanner import ScanError

    sync_addresses(settings, ledger)
    page3 = set(ADDRESSES[20:30])

    async def go() -> None:
        async with TronChain(node.url, requests_per_second=1000, burst=50) as chain:
            with pytest.raises(ScanError, match="10 balance reads failed"):
                await Scanner(ledger, _Flaky(chain, page3), settings.tokens, page_size=10).run_pass()

    asyncio.run(go())
    progress = ledger.scan_pass("poll")
    assert progress is not None and progress.completed_at is None
    assert progress.last_address_id == ledger.list_addresses()[19].id  # page 3 (ids 21-30) not recorded


def test_scan_command_dry_run_then_real(
    tmp_path: Path,
    db_url: str,
    node: RunningNode,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from sweeper.cli import main
    from sweeper.sandbox.provider_server import SANDBOX_API_KEY, SANDBOX_API_SECRET, SandboxProvider

    with SandboxProvider(node.world) as provider:
        text = (
            (REPO / "config.example.toml")
            .read_text()
            .replace('hd_indexes = "0-999"', f'hd_indexes = "0-{N - 1}"')
            .replace('url = "sqlite:///sweeper.db"', f'url = "{db_url}"')
            .replace('node_url = "https://api.trongrid.io"', f'node_url = "{node.url}"')
            .replace('base_url = "https://itrx.io"', f'base_url = "{provider.url}"')
            .replace("requests_per_second = 10", "requests_per_second = 500")
        )
        config = tmp_path / "sweeper.toml"
        config.write_text(text)
        for key, value in {
            "TRONGRID_API_KEY": "k" * 10,
            "SWEEPER_PROVIDER_API_KEY": SANDBOX_API_KEY,
            "SWEEPER_PROVIDER_API_SECRET": SANDBOX_API_SECRET,
            "SWEEPER_MNEMONIC": MNEMONIC,
        }.items():
            monkeypatch.setenv(key, value)
        assert main(["--config", str(config), "migrate"]) == 0
        capsys.readouterr()
        assert main(["--config", str(config), "scan", "--dry-run", "--json"]) == 0
        dry = json.loads(capsys.readouterr().out)
        assert {c["address"] for c in dry["candidates"]} == EXPECTED
        assert dry["queued"] == 0 and dry["addresses_added"] == N
        assert all(c["energy_price_sun"] and c["energy_price_sun"] > 0 for c in dry["candidates"])
        assert provider.post_count == 0  # a dry run orders nothing

        assert main(["--config", str(config), "scan", "--json"]) == 0
        real = json.loads(capsys.readouterr().out)
        assert real["queued"] == len(EXPECTED)
        # Without --dry-run, scan still prints what is above threshold, with the sweep it queued.
        assert {c["address"] for c in real["candidates"]} == EXPECTED
        assert main(["--config", str(config), "sweeps", "list", "--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert {r["address"] for r in listed} == EXPECTED
        assert {(c["address"], c["sweep_id"]) for c in real["candidates"]} == {
            (r["address"], r["id"]) for r in listed
        }


def test_held_and_cooling_down_addresses_are_neither_read_nor_queued(
    ledger: Ledger, settings: Settings, node: RunningNode
) -> None:
    """Issue 11: the first wave queued a failed address again on the next pass (and paid again)."""
    sync_addresses(settings, ledger)
    held, cooling = sorted(EXPECTED)[:2]
    for address, hold in ((held, True), (cooling, False)):
        sweep_id = ledger.queue_sweep(address, "USDT", node.world.usdt_contract, MIN)
        assert sweep_id is not None
        ledger.transition(sweep_id, SweepState.QUEUED, SweepState.ORDERING, reason="claimed")
        ledger.transition(
            sweep_id, SweepState.ORDERING, SweepState.FAILED, reason="failed", hold=hold, cooldown=not hold
        )

    async def go() -> None:
        async with TronChain(node.url, requests_per_second=1000, burst=50) as chain:
            report = await scanner(ledger, chain, settings, page_size=7).run_pass()
            assert report.skipped_held == 2 and report.balance_reads == N - 2
            assert report.queued == len(EXPECTED) - 2

    asyncio.run(go())
    open_rows = {r.address for r in ledger.list_sweeps() if not r.is_final}
    assert open_rows == EXPECTED - {held, cooling}
