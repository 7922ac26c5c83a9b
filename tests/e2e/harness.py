"""Real processes for end-to-end tests: the combined sandbox, `sweeper` commands, kill -9.

Nothing here sleeps to synchronise: every wait polls observable state (the ledger, the sandbox)
against a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sweeper.domain import FINAL_STATES, SweepState
from sweeper.ledger import Ledger, make_engine
from sweeper.sandbox.control import SandboxControl
from tests.conftest import REPO
from tests.constants import DESTINATION, MNEMONIC


@dataclass
class Sandbox:
    process: subprocess.Popen[str]
    info: dict[str, Any]
    control: SandboxControl

    @property
    def node_url(self) -> str:
        return str(self.info["node_url"])

    @property
    def provider_url(self) -> str:
        return str(self.info["provider_url"])


@contextmanager
def sandbox(*extra: str) -> Iterator[Sandbox]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper.sandbox", "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = _readline(proc.stdout, 60)
        info = json.loads(line)
        with SandboxControl(info["node_url"], info["provider_url"]) as control:
            yield Sandbox(proc, info, control)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _readline(stream: IO[str], timeout: float) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise TimeoutError("the sandbox did not announce itself")
    return stream.readline()


def write_config(
    folder: Path,
    db_url: str,
    box: Sandbox,
    *,
    hd_count: int,
    listen_port: int | None = None,
    min_sweep: str = "10",
    detect_mode: str | None = None,
    follow_lease_seconds: int | None = None,
    trx_min_sweep: str | None = None,
    **pipeline: int,
) -> Path:
    """A config for the sandbox; with `listen_port`, the listener there receives the callbacks."""
    provider = f'[provider]\nbase_url = "{box.provider_url}"'
    if listen_port is not None:
        provider += f'\ncallback_url = "http://127.0.0.1:{listen_port}/callback"'
        provider += f'\n\n[callback]\nlisten = "127.0.0.1:{listen_port}"'
    lines = [
        f'[database]\nurl = "{db_url}"',
        f'[tron]\nnode_url = "{box.node_url}"\nrequests_per_second = 500',
        provider,
        f'[keys]\nsource = "mnemonic"\n[addresses]\nhd_indexes = "0-{hd_count - 1}"',
        f'[wallet]\ndestination = "{DESTINATION}"',
        "[schedule]\nscan_interval_seconds = 2\nwork_interval_seconds = 1",
        # [detect] gets its own header whenever one of its keys is set (a lease alone included).
        "[detect]"
        + (f'\nmode = "{detect_mode}"' if detect_mode else "")
        + (f"\nlease_seconds = {follow_lease_seconds}" if follow_lease_seconds else ""),
        "[pipeline]\n" + "\n".join(f"{k} = {v}" for k, v in {"lease_seconds": 3, **pipeline}.items()),
        f'[[tokens]]\nsymbol = "USDT"\ncontract = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"\ndecimals = 6\nmin_sweep = "{min_sweep}"',
    ]
    if trx_min_sweep is not None:  # native TRX swept too
        lines.append(f'[[tokens]]\nsymbol = "TRX"\ndecimals = 6\nmin_sweep = "{trx_min_sweep}"')
    path = folder / "sweeper.toml"
    path.write_text("\n\n".join(lines) + "\n")
    return path


def sweeper_env(box: Sandbox) -> dict[str, str]:
    return {
        **os.environ,
        "SWEEPER_PROVIDER_API_KEY": str(box.info["api_key"]),
        "SWEEPER_PROVIDER_API_SECRET": str(box.info["api_secret"]),
        "SWEEPER_MNEMONIC": MNEMONIC,
        # SWEEPER_TEST_DAEMON_LOG_LEVEL=INFO (or DEBUG) to see what a daemon under test did.
        "SWEEPER_LOG_LEVEL": os.environ.get("SWEEPER_TEST_DAEMON_LOG_LEVEL", "WARNING"),
        "PYTHONPATH": str(REPO),
    }


def run_sweeper(
    config: Path, box: Sandbox, *args: str, timeout: float = 240, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "sweeper", "--config", str(config), *args],
        env=sweeper_env(box),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"sweeper {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def start_sweeper(config: Path, box: Sandbox, *args: str, log: Path | None = None) -> subprocess.Popen[str]:
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper", "--config", str(config), *args],
        env=sweeper_env(box),
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        text=True,
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kill9(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def ledger_for(db_url: str) -> Ledger:
    return Ledger(make_engine(db_url))


def state_of(ledger: Ledger, sweep_id: int) -> SweepState:
    return ledger.get_sweep(sweep_id).state


def describe_open(db_url: str) -> str:
    """Every sweep not yet final with its events: what a failed `--until-final` run left behind."""
    ledger = ledger_for(db_url)
    try:
        lines = []
        for row in ledger.list_sweeps():
            if row.state in FINAL_STATES:
                continue
            lines.append(f"sweep {row.id} {row.address} {row.state.value} last_error={row.last_error!r}")
            lines += [
                f"  {e.at.isoformat()} {e.from_state}->{e.to_state} {e.reason} {e.data or ''}"
                for e in ledger.events(row.id)
            ]
        return "\n".join(lines) or "no open sweep"
    finally:
        ledger.engine.dispose()
