"""The daemon in-process: SIGHUP reloads apply whole or not at all, dry-run callbacks change
nothing, error counters follow the clients, the destination is never watched.

The daemon as a real process (signals, exit codes, the full loop) is in tests/e2e/test_daemon_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog.testing
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from sweeper.addresses import AddressConfigProblem, sync_addresses
from sweeper.chain import BlockRef, ChainUnavailable
from sweeper.config import Settings, load_settings
from sweeper.daemon import Daemon
from sweeper.errors import ConfigError, StartupError
from sweeper.ledger import Ledger
from sweeper.provider.callbacks import ProviderCallback, SignedForm
from sweeper.provider.errors import ProviderUnavailable
from tests.constants import MNEMONIC, WALLET

DESTINATION = WALLET.address(1000)
ENV = {
    "SWEEPER_PROVIDER_API_KEY": "key",
    "SWEEPER_PROVIDER_API_SECRET": "secret",
    "SWEEPER_MNEMONIC": MNEMONIC,
}


def config_text(db_url: str, *, hd: str = "0-4", min_sweep: str = "10", extra: str = "") -> str:
    return (
        f'[database]\nurl = "{db_url}"\n'
        '[tron]\nnode_url = "http://127.0.0.1:9"\n'
        '[provider]\nbase_url = "http://127.0.0.1:9"\n'
        f'[addresses]\nhd_indexes = "{hd}"\n{extra}'
        f'[wallet]\ndestination = "{DESTINATION}"\n'
        '[[tokens]]\nsymbol = "USDT"\ncontract = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"\ndecimals = 6\n'
        f'min_sweep = "{min_sweep}"\n'
    )


class StubChain:
    """Only what the daemon itself touches outside its jobs."""

    def __init__(self) -> None:
        self.requests_failed = 0

    async def aclose(self) -> None:
        return None

    async def latest_block(self) -> None:
        raise ChainUnavailable("the stub node is never reachable")


class StubProvider(StubChain):
    async def index_data(self) -> None:
        raise ProviderUnavailable("the stub provider is never reachable")


@pytest.fixture
def setup(tmp_path: Path, engine: Engine) -> Iterator[tuple[Path, Settings, Ledger, str]]:
    db_url = engine.url.render_as_string(hide_password=False)
    path = tmp_path / "sweeper.toml"
    path.write_text(config_text(db_url))
    settings = load_settings(path, environ=ENV)
    ledger = Ledger(engine)
    sync_addresses(settings, ledger)
    yield path, settings, ledger, db_url


def daemon_for(settings: Settings, ledger: Ledger, path: Path, **kw: object) -> Daemon:
    return Daemon(
        settings,
        ledger,
        chain=StubChain(),  # type: ignore[arg-type]
        provider=StubProvider(),  # type: ignore[arg-type]
        reload=lambda: load_settings(path, environ=ENV),
        **kw,  # type: ignore[arg-type]
    )


def test_reload_applies_a_new_threshold_to_scanner_and_pipeline(
    setup: tuple[Path, Settings, Ledger, str],
) -> None:
    path, settings, ledger, db_url = setup
    daemon = daemon_for(settings, ledger, path)
    path.write_text(config_text(db_url, min_sweep="2.5", hd="0-9"))
    asyncio.run(daemon.reload())
    assert daemon.settings.tokens[0].min_sweep_base_units == 2_500_000
    assert daemon.scanner.tokens[0].min_sweep_base_units == 2_500_000
    assert daemon.pipeline.options.tokens[0].min_sweep_base_units == 2_500_000
    assert len(ledger.list_addresses()) == 10


@pytest.mark.parametrize(
    "hd",
    [
        "0-1000",  # the destination is hd index 1000: watching it would sweep it into itself forever
        "0-",  # malformed
    ],
)
def test_a_refused_reload_keeps_the_running_config_whole(
    setup: tuple[Path, Settings, Ledger, str], hd: str
) -> None:
    path, settings, ledger, db_url = setup
    daemon = daemon_for(settings, ledger, path)
    before = (daemon.settings, daemon.pipeline.options, daemon.pipeline.keys, daemon.scanner.tokens)
    path.write_text(config_text(db_url, min_sweep="1", hd=hd))
    asyncio.run(daemon.reload())
    after = (daemon.settings, daemon.pipeline.options, daemon.pipeline.keys, daemon.scanner.tokens)
    assert after == before
    assert DESTINATION not in {a.address for a in ledger.list_addresses()}
    assert len(ledger.list_addresses()) == 5


def test_a_reload_that_fails_midway_changes_nothing(setup: tuple[Path, Settings, Ledger, str]) -> None:
    path, settings, ledger, db_url = setup
    other = "legal winner thank year wave sausage worth useful legal winner thank yellow"
    daemon = daemon_for(settings, ledger, path)
    before = (daemon.settings, daemon.pipeline.options, daemon.pipeline.keys)
    path.write_text(config_text(db_url, min_sweep="1"))
    # Another mnemonic derives other addresses for the hd indexes the ledger already holds.
    daemon._reload_settings = lambda: load_settings(path, environ={**ENV, "SWEEPER_MNEMONIC": other})
    asyncio.run(daemon.reload())
    assert (daemon.settings, daemon.pipeline.options, daemon.pipeline.keys) == before


def test_the_destination_listed_as_a_deposit_address_is_refused(
    tmp_path: Path, setup: tuple[Path, Settings, Ledger, str]
) -> None:
    path, settings, ledger, db_url = setup
    listed = tmp_path / "addresses.txt"
    listed.write_text(f"{DESTINATION}\n")
    path.write_text(config_text(db_url, extra=f'file = "{listed}"\n'))
    with pytest.raises(ConfigError, match=r"wallet\.destination"):  # the config check catches it first
        load_settings(path, environ=ENV)
    # ... and should a list reach the ledger sync anyway, the sync refuses it too.
    sneaked = replace(settings, addresses=replace(settings.addresses, file_addresses=(DESTINATION,)))
    with pytest.raises(AddressConfigProblem, match=r"wallet\.destination"):
        sync_addresses(sneaked, ledger)
    assert DESTINATION not in {a.address for a in ledger.list_addresses()}
    daemon = daemon_for(sneaked, ledger, path)
    with pytest.raises(StartupError, match=r"wallet\.destination"):
        asyncio.run(daemon.start())


def test_a_dry_run_callback_changes_no_sweep(setup: tuple[Path, Settings, Ledger, str]) -> None:
    path, settings, ledger, _ = setup
    sweep_id = ledger.queue_sweep(WALLET.address(0), "USDT", settings.tokens[0].contract, 20_000_000)
    assert sweep_id is not None
    before = ledger.get_sweep(sweep_id)
    daemon = daemon_for(settings, ledger, path, dry_run=True)
    callback = ProviderCallback(
        serial="S1", out_trade_no=before.out_trade_no, status=None, type=None, source=None, receive_address=None,
        energy_amount=None, delegated_energy=None, txid=None, active_hash=None, bandwidth_hash=None,
        timestamp=0, signed_form=SignedForm.COMPACT_SORTED, raw_body=b"",
    )  # fmt: skip
    assert asyncio.run(daemon._on_hint(callback)) is None
    assert ledger.get_sweep(sweep_id) == before


def test_error_counters_follow_the_clients_at_every_scrape(setup: tuple[Path, Settings, Ledger, str]) -> None:
    path, settings, ledger, _ = setup
    daemon = daemon_for(settings, ledger, path)
    daemon.chain.requests_failed = 3  # type: ignore[misc]
    daemon.provider.requests_failed = 1  # type: ignore[misc]
    text = daemon.metrics.render().decode()
    assert "sweeper_node_errors_total 3.0" in text and "sweeper_provider_errors_total 1.0" in text
    daemon.chain.requests_failed = 5  # type: ignore[misc]
    text = daemon.metrics.render().decode()
    assert "sweeper_node_errors_total 5.0" in text and "sweeper_provider_errors_total 1.0" in text


@pytest.mark.parametrize(("skew_seconds", "alerted"), [(70.0, True), (-70.0, True), (2.0, False)])
def test_a_clock_that_disagrees_with_the_chain_is_alerted_at_start(
    setup: tuple[Path, Settings, Ledger, str], skew_seconds: float, alerted: bool
) -> None:
    path, settings, ledger, _ = setup
    daemon = daemon_for(settings, ledger, path)
    head_ms = int((daemon.now().timestamp() - skew_seconds) * 1000)

    async def latest_block() -> BlockRef:
        return BlockRef(number=7, block_id="00" * 32, timestamp_ms=head_ms)

    daemon.chain.latest_block = latest_block  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        asyncio.run(daemon._check_clock())
    alerts = [e for e in logs if "clock" in e["event"] and e["log_level"] == "error"]
    assert bool(alerts) is alerted
    if alerted:
        assert abs(alerts[0]["skew_seconds"] - skew_seconds) < 2


def _db_error() -> OperationalError:
    return OperationalError("UPDATE sweeps", {}, Exception("database is locked"))


def test_a_database_error_while_the_database_answers_is_loud_and_an_outage_is_one_warning_a_minute(
    setup: tuple[Path, Settings, Ledger, str],
) -> None:
    """A job failing with an OperationalError: if the database still answers (locked, disk full, a
    schema problem) it is an error with its traceback every time; if it does not answer (an outage)
    it is one warning per job a minute, not a traceback per tick."""
    path, settings, ledger, _ = setup
    daemon = daemon_for(settings, ledger, path)

    async def failing_job() -> None:
        raise _db_error()

    job = daemon._job(failing_job)
    with structlog.testing.capture_logs() as logs:
        asyncio.run(job())
        asyncio.run(job())
    assert [(e["log_level"], e["event"]) for e in logs] == [("error", "job failed")] * 2
    assert all(isinstance(e.get("exc_info"), OperationalError) for e in logs)

    def unreachable() -> None:
        raise _db_error()

    daemon._ping_db = unreachable  # type: ignore[method-assign]

    async def twice() -> None:  # one event loop: the minute is counted on its clock
        await job()
        await job()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(twice())
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("warning", "database unreachable; the job runs again next tick")
    ]
    assert logs[0]["error"] == "database is locked" and "exc_info" not in logs[0]
