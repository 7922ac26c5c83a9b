"""`sweeper status` on SQLite and Postgres: the one-screen answer, from the ledger when no daemon
answers (the daemon's side, /healthz and /metrics, is exercised by the demo: tests/e2e/test_demo.py);
`--watch` off a terminal prints one JSON document per refresh and ends on Ctrl-C with exit 0."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from sweeper.cli import main
from sweeper.domain import SweepState
from sweeper.ledger import Ledger, NewAddress, make_engine
from sweeper.ledger.ledger import utc_day
from tests.conftest import REPO, Tty
from tests.constants import USDT

S = SweepState
A = [
    "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH",
    "TSeJkUh4Qv67VNFwY8LaAxERygNdy6NQZK",
    "TYJPRrdB5APNeRs4R7fYZSwW3TcrTKw2gx",
]


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    text = (
        (REPO / "config.example.toml")
        .read_text()
        .replace('url = "sqlite:///sweeper.db"', f'url = "{db_url}"')
    )
    # Nothing listens there: the daemon is "not reachable".
    text = text.replace('listen = "127.0.0.1:9108"', 'listen = "127.0.0.1:9"')
    path = tmp_path / "sweeper.toml"
    path.write_text(text)
    assert main(["--config", str(path), "migrate"], out=io.StringIO()) == 0
    return path


def status(config: Path, *args: str) -> dict[str, object]:
    out = io.StringIO()
    assert main(["--config", str(config), "status", "--json", *args], out=out) == 0
    document: dict[str, object] = json.loads(out.getvalue())
    return document


def test_a_quiet_ledger_without_a_daemon(config: Path) -> None:
    doc = status(config)
    assert doc["ok"] is False  # the daemon does not answer: said, and judged from the ledger
    assert doc["problems"] == [
        "the daemon does not answer at http://127.0.0.1:9 (ConnectError): judged from the ledger only"
    ]
    daemon = doc["daemon"]
    assert isinstance(daemon, dict) and daemon["up"] is None and daemon["healthy"] is None
    sweeps = doc["sweeps"]
    assert isinstance(sweeps, dict) and set(sweeps) == {s.value for s in SweepState}
    assert doc["held"] == [] and doc["failing"] == [] and doc["stuck"] == 0


def test_every_trouble_is_named(config: Path, db_url: str) -> None:
    ledger = Ledger(make_engine(db_url))
    ledger.upsert_addresses([NewAddress(a, "import") for a in A])
    # A held address (a paid failure).
    held = ledger.queue_sweep(A[0], "USDT", USDT, 20_000_000)
    assert held is not None
    ledger.transition(held, S.QUEUED, S.ORDERING, reason="claimed")
    ledger.transition(held, S.ORDERING, S.FAILED, reason="the transfer reverts", hold=True)
    # An open sweep whose last step failed.
    failing = ledger.queue_sweep(A[1], "USDT", USDT, 30_000_000)
    assert failing is not None
    ledger.transition(
        failing, S.QUEUED, S.ORDERING, reason="claimed", changes={"last_error": "node down", "attempts": 1}
    )
    # A sweep that only waits (an order not found yet) leaves a last_error too: not a failure.
    ledger.upsert_addresses([NewAddress("TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMW", "import")])
    waiting = ledger.queue_sweep("TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMW", "USDT", USDT, 30_000_000)
    assert waiting is not None
    ledger.transition(
        waiting, S.QUEUED, S.ORDERING, reason="claimed", changes={"last_error": "not found (yet)"}
    )
    # Today's spend at 90 % of the 500 TRX cap; the last order saw a provider balance of 3 TRX.
    spender = ledger.queue_sweep(A[2], "USDT", USDT, 40_000_000)
    assert spender is not None
    ledger.transition(spender, S.QUEUED, S.ORDERING, reason="claimed")
    ledger.transition(
        spender, S.ORDERING, S.ENERGY_ORDERED, reason="ordered",
        changes={"cost_sun": 450_000_000, "charge_sun": 450_000_000, "charge_day": utc_day(ledger.now()),
                 "serial": "S1", "provider_balance_sun": 3_000_000},
    )  # fmt: skip
    ledger.set_pause("ordering", "an order cost 12 TRX")
    doc = status(config)
    problems = "\n".join(doc["problems"])  # type: ignore[arg-type]
    assert "1 address(es) held" in problems
    assert "1 open sweep(s) failing a step" in problems
    assert "today's spend is 90.0 % of the daily cap" in problems
    assert "energy ordering is paused: an order cost 12 TRX" in problems
    assert "provider balance 3 TRX is below one sweep's cap" in problems
    assert doc["held"] == [
        {"address": A[0], "token": "USDT", "sweep_id": held, "reason": "the transfer reverts",
         "since": doc["held"][0]["since"]}  # type: ignore[index]
    ]  # fmt: skip
    [fail] = doc["failing"]  # type: ignore[misc]
    assert (fail["sweep_id"], fail["state"], fail["last_error"]) == (failing, "ordering", "node down")
    assert doc["spend"] == {
        "today_sun": 450_000_000, "today_trx": "450", "cap_sun": 500_000_000, "cap_trx": "500", "used_percent": 90.0
    }  # fmt: skip
    assert doc["provider"]["balance_sun"] == 3_000_000 and doc["provider"]["source"] == "last order"  # type: ignore[index]
    sweeps = doc["sweeps"]
    assert sweeps["ordering"]["count"] == 2 and sweeps["energy_ordered"]["count"] == 1  # type: ignore[index]
    assert sweeps["failed"] == {"count": 1, "oldest_age_seconds": None}  # type: ignore[index]
    assert sweeps["ordering"]["oldest_age_seconds"] is not None  # type: ignore[index]
    ledger.engine.dispose()


def test_oldest_age_per_state_counts_from_the_ledgers_clock(config: Path, db_url: str) -> None:
    ledger = Ledger(make_engine(db_url))
    ledger.upsert_addresses([NewAddress(A[0], "import")])
    sweep_id = ledger.queue_sweep(A[0], "USDT", USDT, 20_000_000)
    assert sweep_id is not None
    with ledger.engine.begin() as conn:  # queued an hour ago
        from sqlalchemy import update

        from sweeper.ledger.ledger import sweeps

        conn.execute(update(sweeps).values(updated_at=ledger.now() - timedelta(hours=1)))
    age = status(config)["sweeps"]["queued"]["oldest_age_seconds"]  # type: ignore[index]
    assert 3590 <= age <= 3700
    ledger.engine.dispose()


def test_the_screen_on_a_terminal(config: Path) -> None:

    out = Tty()
    assert main(["--config", str(config), "status"], out=out) == 0
    text = out.getvalue()
    assert "problem(s)" in text and "not reachable (judged from the ledger)" in text and "SWEEPS" in text


def test_watch_off_a_terminal_is_one_json_document_per_refresh_and_ctrl_c_ends_it(config: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper", "--config", str(config), "status", "--watch", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert proc.stdout is not None
        first, second = json.loads(proc.stdout.readline()), json.loads(proc.stdout.readline())
        assert first["daemon"]["up"] is None and second["at"] > first["at"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_text_with_brackets_is_printed_as_it_is(config: Path, db_url: str) -> None:
    """Reasons and errors are plain text on a terminal, never rich markup: "[[tokens]]" stays, and
    "[/x]" does not crash the screen."""
    ledger = Ledger(make_engine(db_url))
    ledger.upsert_addresses([NewAddress(A[0], "import"), NewAddress(A[1], "import")])
    held = ledger.queue_sweep(A[0], "USDT", USDT, 20_000_000)
    assert held is not None
    ledger.transition(held, S.QUEUED, S.ORDERING, reason="claimed")
    ledger.transition(held, S.ORDERING, S.FAILED, reason="USDT is not in [[tokens]] [/x]", hold=True)
    failing = ledger.queue_sweep(A[1], "USDT", USDT, 20_000_000)
    assert failing is not None
    ledger.transition(
        failing,
        S.QUEUED,
        S.ORDERING,
        reason="claimed",
        changes={"last_error": "node said [bold]no[/bold]", "attempts": 1},
    )

    for command in (["status"], ["addresses", "list"], ["sweeps", "show", str(held)]):
        out = Tty()
        assert main(["--config", str(config), *command], out=out) == 0, command
        text = out.getvalue()
        assert "[[tokens]] [/x]" in text or (
            command == ["sweeps", "show", str(held)] and "[[tokens]]" in text
        )
    out = Tty()
    assert main(["--config", str(config), "status"], out=out) == 0
    assert "node said [bold]no[/bold]" in out.getvalue()
    ledger.engine.dispose()
