"""What every case of the fault matrix shares: a ledger, the sandbox and `sweeper run` as a real
process, waits on observable state (the ledger, the sandbox, the daemon's /metrics), and the end of a
case: stop the daemon (SIGTERM: exit 0), then THE invariant checker (tests/e2e/invariants.py).

    with daemon_case(tmp_path, sqlite_url, deposits={0: 25_000_000}) as case:
        case.box.control.error_after_create(1)      # the fault
        case.start()
        case.wait_final(1)                           # the daemon settles
        case.finish()                                # stop + invariants
"""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from sweeper.domain import FINAL_STATES, SweepState
from sweeper.ledger import Ledger, make_engine, upgrade
from sweeper.ledger.records import SweepRecord
from tests.constants import DESTINATION, WALLET
from tests.e2e.harness import Sandbox, free_port, sandbox, start_sweeper, wait_until, write_config
from tests.e2e.invariants import Expect, assert_invariants

S = SweepState
T = TypeVar("T")
USDT = 1_000_000  # base units per USDT (6 decimals)
SETTLE_TIMEOUT = 90.0  # seconds a case may take to settle after its fault healed
STOP_LIMIT = 15.0  # SIGTERM -> exit 0 within 10 s (operator contract), with a margin


@dataclass
class DaemonCase:
    """One case: the sandbox, a migrated ledger, a config and (once started) the daemon."""

    box: Sandbox
    db_url: str
    config: Path
    port: int
    folder: Path
    ledger: Ledger
    deposits: dict[str, int]
    proc: subprocess.Popen[str] | None = None
    runs: int = 0
    logs: list[Path] = field(default_factory=list)

    # --- the daemon -------------------------------------------------------------------------

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "the daemon is already running"
        self.runs += 1
        log = self.folder / f"daemon-{self.runs}.log"
        self.logs.append(log)
        self.proc = start_sweeper(self.config, self.box, "run", log=log)

    def stop(self) -> int:
        """SIGTERM; the exit code (the contract: 0 within 10 s)."""
        proc = self.proc
        assert proc is not None
        if proc.poll() is not None:
            return proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"the daemon did not stop on SIGTERM:\n{self.log_text()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        return "".join(p.read_text() for p in self.logs if p.exists())

    # --- what the daemon says over HTTP ----------------------------------------------------

    def _get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)
        except httpx.TransportError:
            return None

    def metric(self, name: str) -> float | None:
        """A sample of /metrics (`name` with its labels, e.g. 'sweeper_callbacks_total{result="hinted"}'),
        None while the daemon does not answer or does not show it."""
        resp = self._get("/metrics")
        if resp is None:
            return None
        for line in resp.text.splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait_metric(self, name: str, at_least: float, *, timeout: float = 60.0) -> float:
        return float(
            wait_until(
                lambda: (v := self.metric(name)) is not None and v >= at_least and v,
                timeout=timeout,
                what=f"{name} >= {at_least}",
            )
        )

    def healthz(self) -> tuple[int, dict[str, Any]] | None:
        resp = self._get("/healthz")
        return None if resp is None else (resp.status_code, resp.json())

    # --- the ledger -------------------------------------------------------------------------

    def rows(self) -> list[SweepRecord]:
        return sorted(self.ledger.list_sweeps(), key=lambda r: r.id)

    def wait_row(
        self, predicate: Callable[[SweepRecord], bool], *, what: str, timeout: float = 60.0
    ) -> SweepRecord:
        """The first row (oldest first) the predicate accepts."""

        def found() -> SweepRecord | None:
            return next((r for r in self.rows() if predicate(r)), None)

        row: SweepRecord = wait_until(found, timeout=timeout, what=what)
        return row

    def wait_state(self, state: SweepState, *, timeout: float = 60.0) -> SweepRecord:
        return self.wait_row(lambda r: r.state is state, what=f"a sweep in {state.value}", timeout=timeout)

    def wait_final(self, count: int, *, timeout: float = SETTLE_TIMEOUT) -> list[SweepRecord]:
        """`count` rows, every one final (confirmed, failed or cancelled)."""

        def settled() -> list[SweepRecord] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            rows = self.rows()
            return rows if len(rows) == count and all(r.state in FINAL_STATES for r in rows) else None

        try:
            rows: list[SweepRecord] = wait_until(settled, timeout=timeout, what=f"{count} final sweeps")
        except AssertionError as exc:
            states = [(r.id, r.state.value, r.last_error) for r in self.rows()]
            raise AssertionError(f"{exc}; sweeps now: {states}") from None
        return rows

    def events(self, sweep_id: int) -> list[str]:
        """The sweep's history as 'from->to: reason' lines (oldest first)."""
        return [f"{e.from_state}->{e.to_state}: {e.reason}" for e in self.ledger.events(sweep_id)]

    def held_addresses(self) -> set[str]:
        return {h.address for h in self.ledger.holds()}

    # --- the end of a case ------------------------------------------------------------------

    def finish(self, expect: Expect | None = None) -> None:
        """Stop the daemon (exit 0 on SIGTERM), then check every invariant over ledger, chain and
        provider; the log never shows the provider's API secret."""
        if self.proc is not None:
            code = self.stop()
            assert code == 0, f"the daemon exited {code} on SIGTERM:\n{self.log_text()[-3000:]}"
        assert str(self.box.info["api_secret"]) not in self.log_text(), "the API secret is in the log"
        assert_invariants(self.db_url, self.box.control, destination=DESTINATION, expect=expect)

    def assert_swept(self, rows: list[SweepRecord]) -> None:
        """Every deposit arrived at the destination, once: each row confirmed with the deposit's amount."""
        by_address = {r.address: r for r in rows}
        for address, amount in self.deposits.items():
            row = by_address.get(address)
            assert row is not None, f"no sweep of {address}"
            assert row.state is S.CONFIRMED, (row.id, row.state, self.events(row.id))
            assert row.amount == amount
            assert self.box.control.usdt_balance(address) == 0
        assert self.box.control.usdt_balance(DESTINATION) == sum(self.deposits.values())


@contextmanager
def daemon_case(
    tmp_path: Path,
    db_url: str,
    *,
    deposits: Mapping[int, int],
    hd_count: int | None = None,
    sandbox_args: tuple[str, ...] = (),
    detect_mode: str | None = None,
    **pipeline: Any,  # [pipeline] keys (int values)
) -> Iterator[DaemonCase]:
    """The sandbox with USDT deposits (HD index -> base units) already on chain, a migrated ledger
    and a config with a listener (callbacks, /metrics, /healthz); the daemon is not started yet, so
    a case can switch its fault on first. On the way out a daemon still running is killed."""
    with sandbox(*sandbox_args) as box:
        addresses = {WALLET.address(i): amount for i, amount in deposits.items()}
        for address, amount in addresses.items():
            box.control.credit_usdt(address, amount)
        port = free_port()
        count = hd_count if hd_count is not None else max(deposits, default=0) + 1
        config = write_config(
            tmp_path, db_url, box, hd_count=count, listen_port=port, detect_mode=detect_mode, **pipeline
        )
        engine = make_engine(db_url)
        upgrade(engine)
        case = DaemonCase(
            box=box,
            db_url=db_url,
            config=config,
            port=port,
            folder=tmp_path,
            ledger=Ledger(engine),
            deposits=addresses,
        )
        try:
            yield case
        finally:
            case.kill()
            engine.dispose()


def poll(predicate: Callable[[], T | None], *, what: str, timeout: float = 60.0) -> T:
    """`wait_until` with a typed result (polls state, never sleeps to synchronise)."""
    value: T = wait_until(predicate, timeout=timeout, what=what)
    return value


class TcpProxy:
    """A TCP proxy on loopback between the daemon and a server (Postgres) that the test controls:
    `cut()` drops every connection through it and refuses new ones (the listening socket is closed:
    a connect is refused at once, as when the database host is down); `restore()` listens again on
    the same port. Threads only: one acceptor, two pumps per connection.

        with TcpProxy("127.0.0.1", 5432) as proxy:   # proxy.port: point the daemon's URL here
            proxy.cut(); ...; proxy.restore()
    """

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.accepted = 0  # connections accepted so far (a test can see the daemon reconnect)

    def __enter__(self) -> TcpProxy:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cut()

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(64)
            self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, set()
        if listener is not None:
            listener.close()
        for conn in conns:
            _close(conn)
        if self._acceptor is not None:
            self._acceptor.join(5)
            self._acceptor = None

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns) // 2

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut()
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _close(client)
                    _close(server)
                    return
                self._conns |= {client, server}
                self.accepted += 1
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns -= {src, dst}
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
