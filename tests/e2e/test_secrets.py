"""Issue 16 item 4: secrets never leak.

A `sweeper run` at DEBUG against the sandbox sweeps several addresses with callbacks, through a
provider 5xx, node 5xx/4xx and a forged callback; then the API key and secret, the mnemonic (or ANY 3
consecutive words of it) and the private key of every address used must appear nowhere in its
stdout/stderr, the CLI's output, or the SQLite ledger (every table dumped, and the raw file bytes).
The DEBUG run must have captured request and response records, so the check can fail.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from sweeper.domain import Secret, SweepState
from sweeper.keys import HdWallet
from tests.conftest import REPO
from tests.e2e.harness import (
    free_port,
    ledger_for,
    sandbox,
    wait_until,
    write_config,
)

# Words that occur nowhere in the project's own text (checked below), so any 3 of them in a row
# can only come from the secret.
MNEMONIC = "prize thumb train lyrics similar great story adjust sheriff involve horror amused"
API_KEY = "leakcheck-ApiKey-7Qv2Zx"
API_SECRET = "leakcheck-ApiSecret-K9mW4pRt"
N = 4


def normalized(text: str) -> str:
    """Lowercase letters only, one space between words: "w1\\",\\n \\"w2" reads as "w1 w2"."""
    return " " + " ".join(re.findall(r"[a-z]+", text.lower())) + " "


def leaks(text: str, keys: list[str]) -> list[str]:
    found = [name for name, value in (("API key", API_KEY), ("API secret", API_SECRET)) if value in text]
    words = MNEMONIC.split()
    flat = normalized(text)
    found += [
        f"words {i}..{i + 2}" for i in range(len(words) - 2) if f" {' '.join(words[i : i + 3])} " in flat
    ]
    lowered = text.lower()
    found += [f"private key {i}" for i, key in enumerate(keys) if key in lowered]
    return found


def test_the_leak_finder_finds_what_it_looks_for() -> None:
    """The control: each kind of leak, even split across a line or quoted as a list, is found."""
    words = MNEMONIC.split()
    keys = [HdWallet(Secret(MNEMONIC)).private_key(0).reveal()]
    assert leaks(f'x ["{words[4]}",\n "{words[5]}", "{words[6]}"] y', keys) == ["words 4..6"]
    assert leaks(f"k={keys[0].upper()}", keys) == ["private key 0"]
    assert leaks(f"s={API_SECRET}", keys) == ["API secret"]
    assert leaks(f"{words[0]} {words[1]} and {words[2]}", keys) == []


def test_the_mnemonic_words_are_not_the_projects_own() -> None:
    text = " ".join(p.read_text(errors="ignore") for p in (REPO / "sweeper").rglob("*.py"))
    own = set(normalized(text).split())
    assert not own & set(MNEMONIC.split())


def _records(text: str) -> list[dict[str, object]]:
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def test_a_debug_run_leaks_no_secret(tmp_path: Path) -> None:
    wallet = HdWallet(Secret(MNEMONIC))
    addresses = [wallet.address(i) for i in range(N)]
    keys = [wallet.private_key(i).reveal().lower() for i in range(N)]
    db = tmp_path / "ledger.db"
    db_url = f"sqlite:///{db}"
    port = free_port()
    with sandbox("--api-key", API_KEY, "--api-secret", API_SECRET) as box:
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "SWEEPER_PROVIDER_API_KEY": API_KEY,
            "SWEEPER_PROVIDER_API_SECRET": API_SECRET,
            "SWEEPER_MNEMONIC": MNEMONIC,
            "SWEEPER_LOG_LEVEL": "DEBUG",
        }
        config = write_config(tmp_path, db_url, box, hd_count=N, listen_port=port)

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "sweeper", "--config", str(config), *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        outputs = [cli("migrate"), cli("config", "check")]
        box.control.error_after_create(1, 500)  # the first order: created, answered 500
        for i, address in enumerate(addresses):
            box.control.credit_usdt(address, 20_000_000 + i)
        stdout, stderr = tmp_path / "daemon.out", tmp_path / "daemon.err"
        with open(stdout, "w") as out, open(stderr, "w") as err:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "sweeper", "--config", str(config), "run"],
                env=env,
                stdout=out,
                stderr=err,
                text=True,
            )
        ledger = ledger_for(db_url)
        try:
            wait_until(
                lambda: (
                    (rows := ledger.list_sweeps())
                    and len(rows) == N
                    and all(r.state is SweepState.CONFIRMED for r in rows)
                ),
                timeout=120,
                what="every sweep confirmed",
            )
            # A forged callback (wrong signature) and node errors: the error paths log too.
            httpx.post(
                f"http://127.0.0.1:{port}/callback",
                content=b'{"out_trade_no": "1-x", "status": 40}',
                headers={"TIMESTAMP": "1", "SIGNATURE": "00" * 32, "Content-Type": "application/json"},
                timeout=5,
            )
            box.control.set_node_switches(fail_next=6, fail_status=503)
            wait_until(
                lambda: '"status": 503' in stderr.read_text(), timeout=60, what="a node 503 in the DEBUG log"
            )
            box.control.set_node_switches(fail_next=1, fail_status=400)
            wait_until(
                lambda: '"status": 400' in stderr.read_text(), timeout=60, what="a node 400 in the DEBUG log"
            )
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
            ledger.engine.dispose()
        assert box.control.provider_state().callback_attempts > 0
        outputs += [cli("sweeps", "list"), cli("sweeps", "show", "1"), cli("stats"), cli("addresses", "list")]
        # A mnemonic with a wrong checksum (11 words shared with the real one): its error path.
        bad = MNEMONIC.rsplit(" ", 1)[0] + " horror"
        env["SWEEPER_MNEMONIC"] = bad
        checked = cli("config", "check")
        assert checked.returncode == 2, checked.stderr
        outputs.append(checked)

    log = stdout.read_text() + stderr.read_text()
    records = _records(log)
    events = [str(r.get("event")) for r in records]
    # The DEBUG run did capture requests and answers, with their bodies, both ways.
    for event in ("tron.request", "tron.response", "provider.request", "provider.response"):
        assert events.count(event) > 0, event
    assert any(r.get("event") == "provider.response" and r.get("status") == 500 for r in records)
    assert any(r.get("event") == "tron.request" and "broadcast" in str(r.get("method")) for r in records)
    assert "sweeper_callbacks_total" in metrics

    dump = "\n".join(sqlite3.connect(db).iterdump())
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))
    texts = {
        "daemon stdout/stderr": log,
        "CLI output": "\n".join(r.stdout + r.stderr for r in outputs),
        "ledger tables": dump,
        "ledger file bytes": raw.decode("latin-1"),
    }
    for where, text in texts.items():
        assert leaks(text, keys) == [], where
    for i, key in enumerate(keys):
        assert bytes.fromhex(key) not in raw, f"private key {i} (binary) in the ledger file"
    assert "sweeps" in dump and addresses[0] in dump  # the dump is the real ledger
