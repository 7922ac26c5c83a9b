"""The fault matrix, process and environment faults (issue 15, item 1): `sweeper run` as a real
process against the sandbox, each case ending with THE invariant checker (tests/e2e/invariants.py).

- kill -9 at every crash point (sweeper/faults.py: SWEEPER_CRASH_AT), i.e. between each guarded
  ledger write and the outside call it guards, then a restart: one order and one transfer per row;
- kill -9 at seeded random moments: the seed picks a sequence of crash points and passes;
- SIGTERM during every step: exit 0 within the grace, the restart finishes the sweep;
- two daemons on one Postgres ledger, one of them killed mid-sweep;
- the database unreachable for 30 s behind a TCP proxy the test cuts: the daemon stays up, says so
  in /healthz, and sweeps once it is back;
- a host clock 10 minutes off (SWEEPER_TEST_CLOCK_OFFSET_FILE): nothing ordered, an ALERT, /healthz
  503; sweeps complete once the clock is right again.

Nothing sleeps to synchronise: every wait polls the ledger, the sandbox, the process or /healthz.
One thing is shortened rather than waited out: after a crash between the order-sent mark and the
POST, the daemon rightly sends nothing for `order_settle` (300 s, not configurable); the test then
moves the row's `order_sent_at` back 300 s (`_age_order_mark`), which is what waiting would do.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from sweeper.domain import FINAL_STATES, SweepState
from sweeper.faults import CLOCK_OFFSET_ENV, CRASH_ENV
from sweeper.ledger import Ledger, make_engine, upgrade
from sweeper.ledger.models import Sweep
from sweeper.ledger.records import SweepRecord
from tests.constants import DESTINATION, WALLET
from tests.e2e.harness import Sandbox, free_port, sandbox, sweeper_env, wait_until, write_config
from tests.e2e.invariants import assert_invariants
from tests.e2e.matrix.cases import TcpProxy

S = SweepState
STOP_LIMIT_SECONDS = 10.0  # SIGTERM: exit 0 within this (design.md "How it runs")
ORDER_SETTLE = timedelta(seconds=300)  # PipelineOptions.order_settle_seconds


def _amount(i: int) -> int:
    return 20_000_000 + i * 1_111_111


# --- the daemon as a process --------------------------------------------------------------------


@dataclass
class Setup:
    tmp_path: Path
    db_url: str
    box: Sandbox
    config: Path
    port: int
    ledger: Ledger
    starts: int = 0

    def start(self, *, crash_at: str | None = None, env: dict[str, str] | None = None) -> Daemon:
        self.starts += 1
        log = self.tmp_path / f"daemon-{self.starts}.log"
        extra = {CRASH_ENV: crash_at} if crash_at else {}
        environ = {**sweeper_env(self.box), **extra, **(env or {})}
        if not crash_at:
            environ.pop(CRASH_ENV, None)
        out = open(log, "w")  # noqa: SIM115 - closed in Daemon.close
        proc = subprocess.Popen(
            [sys.executable, "-m", "sweeper", "--config", str(self.config), "run"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return Daemon(proc, log, out, self.port)

    def rows(self) -> list[SweepRecord]:
        return sorted(self.ledger.list_sweeps(), key=lambda r: r.id)


@dataclass
class Daemon:
    proc: subprocess.Popen[str]
    log: Path
    out: Any
    port: int

    def text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def wait_crashed(self, point: str, timeout: float = 60) -> None:
        wait_until(lambda: self.proc.poll() is not None, timeout=timeout, what=f"the crash at {point}")
        assert self.proc.returncode == -signal.SIGKILL, (self.proc.returncode, self.text()[-3000:])
        assert f"crash point {point}" in self.text(), self.text()[-3000:]
        self.out.close()

    def stop(self) -> float:
        """SIGTERM; asserts exit 0 within STOP_LIMIT_SECONDS and no traceback. Returns the time taken."""
        # Started: its listener answers (a SIGTERM while Python is still importing, before the
        # handler is installed, would kill it with -15: not what this checks).
        wait_until(
            lambda: self.proc.poll() is not None or _healthz(self.port) is not None,
            timeout=60,
            what="the daemon listening",
        )
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_LIMIT_SECONDS + 5)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the daemon did not stop after SIGTERM") from None
        took = time.monotonic() - started
        self.out.close()
        assert code == 0, self.text()[-3000:]
        assert took < STOP_LIMIT_SECONDS, f"stopped in {took:.1f} s"
        assert "Traceback" not in self.text(), self.text()[-3000:]
        return took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.out.close()


@contextmanager
def setup(
    tmp_path: Path,
    db_url: str,
    n: int,
    *,
    funded: int | None = None,
    daemon_db_url: str | None = None,
    **config: Any,
) -> Iterator[Setup]:
    """The sandbox, the first `funded` (default: all `n`) deposit addresses funded, a migrated
    ledger (the test reads it at `db_url`; the daemon's config may name another way there,
    `daemon_db_url`: a proxy) and a config with a listener; no daemon started yet."""
    with sandbox() as box:
        for i in range(n if funded is None else funded):
            box.control.credit_usdt(WALLET.address(i), _amount(i))
        port = free_port()
        path = write_config(tmp_path, daemon_db_url or db_url, box, hd_count=n, listen_port=port, **config)
        engine = make_engine(db_url)
        upgrade(engine)
        ledger = Ledger(engine)
        try:
            yield Setup(tmp_path, db_url, box, path, port, ledger)
        finally:
            engine.dispose()


def _healthz(port: int) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    except httpx.TransportError:
        return None


def _age_order_mark(ledger: Ledger, row: SweepRecord) -> None:
    """Stand-in for waiting out `order_settle` (300 s): the mark moves back, the row is due now."""
    assert row.order_sent_at is not None
    with ledger.engine.begin() as conn:
        conn.execute(
            update(Sweep)
            .where(Sweep.id == row.id, Sweep.state == S.ORDERING.value)
            .values(order_sent_at=row.order_sent_at - ORDER_SETTLE - timedelta(seconds=1))
        )
    ledger.hint(sweep_id=row.id)


def _waiting_out_a_lost_post(s: Setup, row: SweepRecord) -> bool:
    """The row waits for an earlier POST that never created an order (a crash before or during it)."""
    return (
        row.state is S.ORDERING
        and row.order_sent_at is not None
        and "may still land" in (row.last_error or "")
        and not s.box.control.orders(row.out_trade_no)
    )


def settle(s: Setup, expected: int, *, timeout: float = 90) -> list[SweepRecord]:
    """Wait until `expected` rows exist and all are final (ageing the marks of rows waiting out a
    POST that never landed: see the module docstring)."""
    return run_until(s, expected, timeout=timeout)[1]


def run_until(
    s: Setup, expected: int, *, timeout: float = 90, daemon: Daemon | None = None
) -> tuple[bool, list[SweepRecord]]:
    """`settle`, or until `daemon` exits (killed at its crash point): (settled?, the rows)."""
    aged: set[int] = set()

    def done() -> tuple[bool, list[SweepRecord]] | None:
        rows = s.rows()
        for row in rows:
            if row.id not in aged and _waiting_out_a_lost_post(s, row):
                aged.add(row.id)
                _age_order_mark(s.ledger, row)
        if len(rows) == expected and all(r.state in FINAL_STATES for r in rows):
            return True, rows
        if daemon is not None and daemon.proc.poll() is not None:
            return False, rows
        return None

    result: tuple[bool, list[SweepRecord]] = wait_until(
        done, timeout=timeout, what=f"{expected} sweeps final"
    )
    return result


def assert_all_swept(s: Setup, n: int) -> None:
    rows = s.rows()
    assert len(rows) == n
    for row in rows:
        assert row.state is S.CONFIRMED, (row.id, row.state, row.last_error)
    assert sorted(r.amount for r in rows) == sorted(_amount(i) for i in range(n))
    assert s.box.control.usdt_balance(DESTINATION) == sum(_amount(i) for i in range(n))
    assert_invariants(s.db_url, s.box.control, destination=DESTINATION)


# --- kill -9 at each crash point ---------------------------------------------------------------


def _only(s: Setup) -> SweepRecord:
    [row] = s.rows()
    return row


def _at_claimed(s: Setup) -> None:
    row = _only(s)
    assert row.state is S.ORDERING and row.claimed_by is not None, row  # a dead worker's lease
    assert row.order_sent_at is None and s.box.control.orders() == []


def _at_order_sent(s: Setup) -> None:
    row = _only(s)
    assert row.state is S.ORDERING and row.order_sent_at is not None and row.charge_sun, row
    assert s.box.control.orders() == [], "the POST was never sent"


def _at_order_answered(s: Setup) -> None:
    row = _only(s)
    assert row.state is S.ORDERING and row.serial is None, row
    [order] = s.box.control.orders(row.out_trade_no)  # the order exists; our ledger does not know it
    assert order.receive_address == row.address


def _at_order_complete(s: Setup) -> None:
    row = _only(s)
    assert row.state is S.ENERGY_ORDERED and row.serial is not None, row
    assert s.box.control.account(row.address).energy_available > 0


def _at_signed(s: Setup) -> None:
    row = _only(s)
    assert row.state is S.SIGNED and row.txid is not None, row
    assert s.box.control.transactions(owner=row.address) == [], "nothing was broadcast"


def _at_broadcast_answered(s: Setup) -> None:
    rows = s.rows()
    sent = [r for r in rows if r.state is S.SIGNED and s.box.control.transactions(owner=r.address)]
    assert sent, [(r.id, r.state) for r in rows]  # the node has the bytes; the ledger says `signed`
    for row in sent:
        assert [t.txid for t in s.box.control.transactions(owner=row.address)] == [row.txid]


def _at_confirm_read(s: Setup) -> None:
    row = _only(s)
    assert row.state is S.BROADCAST, row
    [tx] = s.box.control.transactions(owner=row.address)
    assert tx.txid == row.txid and tx.result == "SUCCESS" and tx.solid


WALK = [
    ("claimed", _at_claimed),
    ("order-sent", _at_order_sent),
    ("order-answered", _at_order_answered),
    ("order-complete", _at_order_complete),
    ("signed", _at_signed),
    ("broadcast-answered", _at_broadcast_answered),
    ("confirm-read", _at_confirm_read),
]


def test_kill_9_between_each_ledger_write_and_its_outside_call(tmp_path: Path, sqlite_url: str) -> None:
    """One sweep, killed at every crash point of the pipeline in turn (each restart crashes at the
    next one): after each kill the ledger and the sandbox show exactly the half-done step; the last
    restart finishes with one order and one transfer. One process per point, one sandbox for all
    (each sandbox start costs seconds of the matrix's budget)."""
    with setup(tmp_path, sqlite_url, 1, detect_mode="poll") as s:
        for point, check in WALK:
            daemon = s.start(crash_at=point)
            if point == "order-answered":
                # Restarted after the kill between the order-sent mark and the POST: no order exists,
                # and the daemon must NOT post at once (the lost POST could land for 300 s).
                row = wait_until(
                    lambda: (r := _only(s)) and "may still land" in (r.last_error or "") and r,
                    timeout=30,
                    what="the restarted daemon waiting out the lost POST",
                )
                assert s.box.control.orders() == [], "a second POST inside the settle window"
                _age_order_mark(s.ledger, row)
            daemon.wait_crashed(point)
            try:
                check(s)
            except AssertionError as exc:
                raise AssertionError(f"after the kill at {point}: {exc}") from None
        last = s.start()
        try:
            settle(s, 1)
            last.stop()
        finally:
            last.kill()
        assert_all_swept(s, 1)
        history = [e.to_state for e in s.ledger.events(_only(s).id)]
        assert history.count(S.ENERGY_ORDERED) == 1 and history.count(S.SIGNED) == 1, history


def test_kill_9_on_the_nth_pass_of_a_crash_point(tmp_path: Path, sqlite_url: str) -> None:
    """SWEEPER_CRASH_AT="broadcast-answered:2": two sweeps broadcast side by side; the process dies
    when the second answer arrives, the first recorded as broadcast or not yet."""
    with setup(tmp_path, sqlite_url, 2, detect_mode="poll") as s:
        s.start(crash_at="broadcast-answered:2").wait_crashed("broadcast-answered")
        # Both passed the point (the second pass killed the process): both sets of bytes are on the
        # node, whether or not the first was recorded as broadcast before the kill.
        for row in s.rows():
            assert row.state in (S.SIGNED, S.BROADCAST), (row.id, row.state)
            assert [t.txid for t in s.box.control.transactions(owner=row.address)] == [row.txid]
        restarted = s.start()
        try:
            settle(s, 2)
            restarted.stop()
        finally:
            restarted.kill()
        assert_all_swept(s, 2)


def test_kill_9_between_a_followed_batch_and_the_cursor_write(tmp_path: Path, sqlite_url: str) -> None:
    """A deposit in the first batch a restarted follower reads: killed after reading it (nothing
    queued), then after queueing it (the cursor not moved); each restart replays the batch, and
    queueing it twice makes one row."""
    with setup(tmp_path, sqlite_url, 1, funded=0, detect_mode="follow", follow_lease_seconds=6) as s:
        first = s.start()
        try:
            wait_until(
                lambda: (c := s.ledger.follow_cursor()) is not None and (c.next_block or 0) > 0,
                timeout=60,
                what="following started",
            )
        finally:
            first.stop()
        cursor = s.ledger.follow_cursor()
        assert cursor is not None and cursor.next_block is not None
        before = cursor.next_block
        txid = s.box.control.token_transfer(WALLET.address(0), _amount(0))
        s.box.control.solidify()  # the deposit's block is solid: the next batch covers it
        [tx] = [t for t in s.box.control.transactions() if t.txid == txid]
        assert tx.block_number is not None and tx.block_number >= before

        for point in ("follow-batch-read", "follow-batch-queued"):
            s.start(crash_at=point).wait_crashed(point)
            after = s.ledger.follow_cursor()
            assert after is not None and after.next_block == before, f"{point}: the cursor moved"
            # (After the first kill a row may exist already: a lease taker reads the balances of
            # addresses registered within 10 min of the cursor's last move, design.md "Following".)
        assert len(s.rows()) == 1, s.rows()  # queued by the replayed batch, once

        restarted = s.start()
        try:
            settle(s, 1)
            block = tx.block_number
            wait_until(
                lambda: (c := s.ledger.follow_cursor()) is not None and (c.next_block or 0) > block,
                timeout=30,
                what="the cursor past the deposit's block",
            )
            restarted.stop()
        finally:
            restarted.kill()
        assert_all_swept(s, 1)


# --- kill -9 at seeded random moments ------------------------------------------------------------

PIPELINE_POINTS = [
    "claimed",
    "order-sent",
    "order-answered",
    "order-complete",
    "signed",
    "broadcast-answered",
    "confirm-read",
    "follow-batch-read",
    "follow-batch-queued",
]


SEEDS = [1, 2, 3]


@pytest.mark.parametrize("seed", SEEDS, ids=[f"kill9-random-seed-{seed}" for seed in SEEDS])
def test_kill_9_at_seeded_random_moments(tmp_path: Path, sqlite_url: str, seed: int) -> None:
    """The seed picks three kills: a crash point and the pass it fires on (reproducible, unlike a
    wall-clock moment, and it lands between a write and its outside call by construction). A point
    a run never reaches leaves it running until everything is final."""
    rng = random.Random(seed)
    kills = [f"{rng.choice(PIPELINE_POINTS)}:{rng.randint(1, 3)}" for _ in range(3)]
    n = 3
    with setup(tmp_path, sqlite_url, n) as s:
        fired = []
        for spec in kills:
            if len(s.rows()) == n and all(r.state in FINAL_STATES for r in s.rows()):
                break  # every sweep done: the remaining kills have nothing left to hit
            daemon = s.start(crash_at=spec)
            try:
                run_until(s, n, timeout=120, daemon=daemon)
            finally:
                if daemon.proc.poll() is None:
                    daemon.stop()
                else:
                    daemon.wait_crashed(spec.split(":")[0])
                    fired.append(spec)
        last = s.start()
        try:
            settle(s, n, timeout=120)
            last.stop()
        finally:
            last.kill()
        print(f"\nseed {seed}: kills {kills}, fired {fired}")
        assert_all_swept(s, n)


# --- SIGTERM during every step --------------------------------------------------------------------


def _held_in(s: Setup, state: S, frozen: Callable[[SweepRecord], bool]) -> Callable[[], bool]:
    def check() -> bool:
        rows = s.rows()
        return bool(rows) and rows[0].state is state and frozen(rows[0])

    return check


def test_sigterm_during_every_step_exits_0_and_a_restart_finishes(tmp_path: Path, sqlite_url: str) -> None:
    """One sweep held in each step in turn (a request in flight where the sandbox can hold one: the
    order POST, the broadcast), SIGTERM there: exit 0 within 10 s, the lease released, the step
    re-run by the next start, which is held in the next step. The last start finishes the sweep."""
    control = None
    with setup(tmp_path, sqlite_url, 1, detect_mode="poll") as s:
        control = s.box.control
        control.hold_posts("after_create")  # the order is created, its answer hangs
        control.set_delegation_delay(None)  # and it completes only when the test says so
        steps: list[tuple[S, Callable[[SweepRecord], bool], Callable[[SweepRecord], object]]] = [
            (
                S.ORDERING,
                lambda r: control.provider_state().held_posts == 1,
                lambda r: control.release_posts(),
            ),
            (
                S.ENERGY_ORDERED,
                lambda r: r.serial is not None,
                lambda r: (
                    control.set_node_switches(forge_txid=True),  # next: nothing safe to sign
                    control.set_delegation_delay(0),
                    control.complete(str(r.serial)),
                ),
            ),
            (
                S.ENERGY_READY,
                lambda r: "unsafe" in (r.last_error or ""),
                lambda r: (control.set_node_switches(forge_txid=False), control.hold_broadcasts()),
            ),
            (
                S.SIGNED,
                lambda r: control.node_state().held_broadcasts == 1,
                lambda r: (control.hold_solidification(), control.release_broadcasts()),
            ),
            (S.BROADCAST, lambda r: True, lambda r: control.release_solidification()),
        ]
        for state, frozen, thaw in steps:
            daemon = s.start()
            try:
                if state is S.SIGNED:  # the unsafe-transaction backoff: due now, as a callback would
                    s.ledger.hint(sweep_id=_only(s).id)
                wait_until(
                    _held_in(s, state, frozen),
                    timeout=60,
                    what=f"the sweep held in {state.value}",
                )
                daemon.stop()
            finally:
                daemon.kill()
            row = _only(s)
            assert row.state is state and row.claimed_by is None, (state, row.state, row.claimed_by)
            thaw(row)
        restarted = s.start()
        try:
            settle(s, 1)
            restarted.stop()
        finally:
            restarted.kill()
        assert_all_swept(s, 1)


# --- two daemons on one Postgres ledger ----------------------------------------------------------


@pytest.mark.postgres
def test_two_daemons_on_one_postgres_one_killed_mid_sweep(tmp_path: Path, postgres_url: str) -> None:
    """Both claim rows (SKIP LOCKED) and one follows; the first dies at `signed` on its second pass;
    the survivor takes its rows (and the follow lease) once the leases run out."""
    n = 6
    with setup(tmp_path, postgres_url, n, concurrency=2, detect_mode="both", follow_lease_seconds=6) as s:
        other = tmp_path / "second"
        other.mkdir()
        second_port = free_port()
        second_config = write_config(
            other,
            postgres_url,
            s.box,
            hd_count=n,
            listen_port=second_port,
            concurrency=2,
            detect_mode="both",
            follow_lease_seconds=6,
        )
        first = s.start(crash_at="signed:2")
        second = Setup(other, postgres_url, s.box, second_config, second_port, s.ledger).start()
        try:
            first.wait_crashed("signed", timeout=90)
            rows = settle(s, n, timeout=120)
            second.stop()
        finally:
            first.kill()
            second.kill()
        actors = {e.actor for r in rows for e in s.ledger.events(r.id) if e.to_state is S.ORDERING}
        assert len(actors) == 2, f"both daemons should have claimed rows: {actors}"

        def finished_by_the_other(row: SweepRecord) -> bool:
            by_state = {e.to_state: e.actor for e in s.ledger.events(row.id)}
            return by_state.get(S.SIGNED) != by_state.get(S.BROADCAST)

        assert any(finished_by_the_other(r) for r in rows), "the killed daemon's signed row was taken over"
        assert_all_swept(s, n)


# --- the database unreachable for 30 s -----------------------------------------------------------

OUTAGE_SECONDS = 30.0


@pytest.mark.postgres
def test_database_unreachable_for_30_s(tmp_path: Path, postgres_url: str) -> None:
    """Every connection to Postgres goes through a proxy the test cuts for 30 s (open connections
    dropped, new ones refused) while a sweep waits for its energy; meanwhile the energy arrives and
    a second deposit lands. The daemon stays up and /healthz says the database is unreachable; once
    it is back, both sweeps complete."""
    url = make_url(postgres_url)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        with setup(tmp_path, postgres_url, 2, funded=1, daemon_db_url=proxied) as s:
            s.box.control.set_delegation_delay(None)  # the order completes when the test says so
            daemon = s.start()
            try:
                row = wait_until(
                    lambda: (rows := s.rows()) and rows[0].state is S.ENERGY_ORDERED and rows[0],
                    timeout=60,
                    what="the sweep waiting for its energy",
                )
                wait_until(
                    lambda: (r := _healthz(s.port)) and r.json()["checks"]["database"] == "ok",
                    timeout=30,
                    what="/healthz: database ok",
                )
                proxy.cut()
                cut_at = time.monotonic()
                down = wait_until(
                    lambda: (r := _healthz(s.port)) and r.status_code == 503 and r.json()["checks"],
                    timeout=20,
                    what="/healthz 503 while the database is unreachable",
                )
                assert down["database"].startswith("unreachable"), down
                s.box.control.set_delegation_delay(0)
                assert row.serial is not None
                s.box.control.complete(row.serial)  # its callback reaches a daemon without a ledger
                # A deposit in a block (the follower must see it; a bare credit is visible to polls only).
                s.box.control.token_transfer(WALLET.address(1), _amount(1))

                def outage_over() -> bool:
                    assert daemon.proc.poll() is None, f"the daemon exited:\n{daemon.text()[-3000:]}"
                    return time.monotonic() - cut_at >= OUTAGE_SECONDS

                wait_until(outage_over, timeout=OUTAGE_SECONDS + 10, what="the outage to end")
                assert _only(s).state is S.ENERGY_ORDERED, "nothing moved while the ledger was unreachable"
                still = _healthz(s.port)
                assert still is not None and still.json()["checks"]["database"].startswith("unreachable")
                proxy.restore()
                wait_until(
                    lambda: (r := _healthz(s.port)) and r.json()["checks"]["database"] == "ok",
                    timeout=30,
                    what="/healthz: database ok again",
                )
                settle(s, 2, timeout=120)
                daemon.stop()
            finally:
                daemon.kill()
            assert_all_swept(s, 2)


# --- a host clock 10 minutes off -----------------------------------------------------------------


def test_a_host_clock_10_minutes_off_orders_nothing_until_fixed(tmp_path: Path, sqlite_url: str) -> None:
    """The model: no libfaketime here, so the daemon's own wall clock is moved 10 minutes back
    through the test seam SWEEPER_TEST_CLOCK_OFFSET_FILE (sweeper/faults.py), which every host-clock
    read goes through (`domain.utcnow`; SQLite's clock is this host's, so the ledger's too); the
    sandbox chain keeps true time. Fixing the clock = writing 0 to that file, read by the running
    daemon. While it is off: nothing ordered, an ALERT, /healthz 503 (chain_clock); then it sweeps."""
    clock_file = tmp_path / "clock-offset"
    clock_file.write_text("-600")
    with setup(tmp_path, sqlite_url, 1, detect_mode="poll") as s:
        daemon = s.start(env={CLOCK_OFFSET_ENV: str(clock_file)})
        try:
            wait_until(
                lambda: (rows := s.rows()) and "this host's clock" in (rows[0].last_error or ""),
                timeout=60,
                what="ordering refused over the clocks",
            )
            unhealthy = wait_until(
                lambda: (r := _healthz(s.port)) and "chain_clock" in r.json()["checks"] and r,
                timeout=30,
                what="/healthz naming the clocks",
            )
            assert unhealthy.status_code == 503
            assert s.box.control.orders() == [], "an order was placed with the host clock 10 min off"
            assert "ALERT" in daemon.text() and "clock" in daemon.text()
            row = _only(s)
            assert row.state is S.QUEUED and row.order_sent_at is None and row.charge_sun is None, row

            clock_file.write_text("0")  # NTP fixed it
            settle(s, 1)
            wait_until(
                lambda: (r := _healthz(s.port)) and "chain_clock" not in r.json()["checks"],
                timeout=30,
                what="/healthz without the clock problem",
            )
            daemon.stop()
        finally:
            daemon.kill()
        assert_all_swept(s, 1)
