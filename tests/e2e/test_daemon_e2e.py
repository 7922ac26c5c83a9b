"""`sweeper run` as a real process against the combined sandbox (issue 7).

- the full loop on SQLite and Postgres: scan, order, callback, sign, broadcast, confirm; /healthz and
  /metrics answer; SIGTERM → exit 0;
- SIGTERM while a broadcast is in flight → exit 0 within 10 s, lease released, nothing lost; a
  restart finishes the row with one order and one transfer;
- SIGHUP picks up a lowered threshold;
- a second daemon on the same SQLite ledger exits 2 naming the lock; a taken listen address exits 2
  naming `[callback] listen`; an un-migrated ledger exits 2 naming `sweeper migrate`.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from sweeper.domain import SweepState
from sweeper.ledger.queries import last_completed_scan
from tests.constants import WALLET
from tests.e2e.harness import (
    DESTINATION,
    Sandbox,
    free_port,
    ledger_for,
    run_sweeper,
    sandbox,
    start_sweeper,
    sweeper_env,
    wait_until,
    write_config,
)

S = SweepState
STOP_LIMIT_SECONDS = 10.0


def _get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.TransportError:
        return None


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        code = proc.wait(STOP_LIMIT_SECONDS + 5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError("the daemon did not stop after SIGTERM") from None
    return code, time.monotonic() - started


def _log(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _start_daemon(tmp_path: Path, db_url: str, box: Sandbox, n: int, **kw: str) -> tuple[Path, int]:
    port = free_port()
    config = write_config(tmp_path, db_url, box, hd_count=n, listen_port=port, **kw)
    run_sweeper(config, box, "migrate")
    return config, port


def test_daemon_sweeps_everything_and_serves_health_and_metrics(tmp_path: Path, db_url: str) -> None:
    n = 8
    amounts = {WALLET.address(i): (10_000_000 + i * 1_000_001 if i % 4 else 3_000_000) for i in range(n)}
    with sandbox() as box:
        for address, amount in amounts.items():
            box.control.credit_usdt(address, amount)
        config, port = _start_daemon(tmp_path, db_url, box, n)
        log = tmp_path / "daemon.log"
        daemon = start_sweeper(config, box, "run", log=log)
        ledger = ledger_for(db_url)
        try:
            above = {a: v for a, v in amounts.items() if v >= 10_000_000}
            wait_until(
                lambda: (
                    (rows := ledger.list_sweeps())
                    and len(rows) == len(above)
                    and all(r.state is S.CONFIRMED for r in rows)
                ),
                timeout=90,
                what="every sweep confirmed by the daemon",
            )
            health = wait_until(lambda: _get(port, "/healthz"), timeout=10, what="/healthz")
            assert health.status_code == 200, health.text
            checks = health.json()["checks"]
            assert checks["database"] == "ok" and checks["provider"] == "ok"
            assert checks["detection"].startswith("last pass")

            metrics = wait_until(
                lambda: (
                    (r := _get(port, "/metrics")) is not None
                    and _metric(r.text, 'sweeper_sweeps{state="confirmed"}') == len(above)
                    and r
                ),
                timeout=30,
                what="/metrics showing the confirmed sweeps",
            )
            text = metrics.text
            assert _metric(text, 'sweeper_swept_base_units_total{token="USDT"}') == sum(above.values())
            assert _metric(text, "sweeper_energy_spend_sun_total") > 0
            assert _metric(text, "sweeper_provider_balance_sun") > 0
            assert _metric(text, "sweeper_stuck_sweeps") == 0
            assert 0 <= _metric(text, "sweeper_detection_lag_seconds") < 60
            hinted = [
                ln for ln in text.splitlines() if ln.startswith('sweeper_callbacks_total{result="hinted"}')
            ]
            assert hinted and float(hinted[0].split()[-1]) >= 1, (
                "the sandbox's callbacks reached the listener"
            )

            # An over-cost order paused ordering (as the pipeline records it): /healthz says so
            # (the daemon reads the pause from the ledger), and `sweeper ordering resume` lifts it.
            ledger.set_pause("ordering", "order X cost 12 TRX")
            paused = wait_until(
                lambda: (r := _get(port, "/healthz")) is not None and r.status_code == 503 and r,
                timeout=30,
                what="/healthz 503 while ordering is paused",
            )
            assert "paused" in paused.json()["checks"]["ordering"]
            assert run_sweeper(config, box, "ordering", "resume").returncode == 0
            wait_until(
                lambda: (r := _get(port, "/healthz")) is not None and r.status_code == 200,
                timeout=30,
                what="/healthz 200 after `sweeper ordering resume`",
            )

            code, took = _stop(daemon)
            assert code == 0, _log(log)[-3000:]
            assert took < STOP_LIMIT_SECONDS
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
        rows = ledger.list_sweeps()
        counts = box.control.order_counts()
        for row in rows:
            assert row.amount == above[row.address]
            assert counts.get(row.out_trade_no) == 1
            assert [t.txid for t in box.control.transactions(owner=row.address)] == [row.txid]
        for address, amount in amounts.items():
            if address not in above:
                assert box.control.usdt_balance(address) == amount
        assert box.control.usdt_balance(DESTINATION) == sum(above.values())
        assert "Traceback" not in _log(log)
        assert str(box.info["api_secret"]) not in _log(log)
        ledger.engine.dispose()


def test_sigterm_with_a_broadcast_in_flight_exits_0_and_loses_nothing(tmp_path: Path, db_url: str) -> None:
    address = WALLET.address(0)
    with sandbox() as box:
        box.control.credit_usdt(address, 77_000_000)
        config, _ = _start_daemon(tmp_path, db_url, box, 1)
        box.control.hold_broadcasts()  # the broadcast POST hangs: a step truly in flight
        log = tmp_path / "daemon-1.log"
        daemon = start_sweeper(config, box, "run", log=log)
        ledger = ledger_for(db_url)
        try:
            wait_until(
                lambda: box.control.node_state().held_broadcasts == 1, timeout=60, what="a held broadcast"
            )
            code, took = _stop(daemon)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
        assert code == 0, _log(log)[-3000:]
        assert took < STOP_LIMIT_SECONDS, f"stopped in {took:.1f} s"
        [row] = ledger.list_sweeps()
        assert row.state is S.SIGNED and row.claimed_by is None, (row.state, row.claimed_by)

        box.control.release_broadcasts()  # the held transaction may now land, or not: either is fine
        daemon = start_sweeper(config, box, "run", log=tmp_path / "daemon-2.log")
        try:
            wait_until(
                lambda: ledger.get_sweep(row.id).state is S.CONFIRMED, timeout=90, what="sweep confirmed"
            )
            assert _stop(daemon)[0] == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
        final = ledger.get_sweep(row.id)
        assert box.control.order_counts() == {row.out_trade_no: 1}
        txs = box.control.transactions(owner=address)
        assert [t.txid for t in txs] == [final.txid] and txs[0].result == "SUCCESS"
        assert box.control.usdt_balance(DESTINATION) == 77_000_000
        ledger.engine.dispose()


def test_sighup_picks_up_a_lowered_threshold(tmp_path: Path, sqlite_url: str) -> None:
    address = WALLET.address(0)
    with sandbox() as box:
        box.control.credit_usdt(address, 5_000_000)  # below the 10 USDT threshold
        config, _ = _start_daemon(tmp_path, sqlite_url, box, 1, detect_mode="poll")  # passes every 2 s
        log = tmp_path / "daemon.log"
        daemon = start_sweeper(config, box, "run", log=log)
        ledger = ledger_for(sqlite_url)
        try:
            # Two completed passes under the old threshold: nothing is queued.
            first = wait_until(
                lambda: last_completed_scan(ledger.engine), timeout=30, what="a completed detection pass"
            )
            wait_until(
                lambda: (t := last_completed_scan(ledger.engine)) is not None and t > first,
                timeout=30,
                what="a second completed detection pass",
            )
            assert ledger.list_sweeps() == []
            config.write_text(config.read_text().replace('min_sweep = "10"', 'min_sweep = "1"'))
            daemon.send_signal(signal.SIGHUP)
            wait_until(
                lambda: (rows := ledger.list_sweeps()) and rows[0].state is S.CONFIRMED,
                timeout=60,
                what="the 5 USDT deposit swept after SIGHUP",
            )
            assert daemon.poll() is None, "SIGHUP must not stop the daemon"
            assert _stop(daemon)[0] == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
        [row] = ledger.list_sweeps()
        assert row.amount == 5_000_000 and box.control.usdt_balance(DESTINATION) == 5_000_000
        ledger.engine.dispose()


def test_a_second_daemon_on_one_sqlite_ledger_exits_2(tmp_path: Path, sqlite_url: str) -> None:
    with sandbox() as box:
        config, port = _start_daemon(tmp_path, sqlite_url, box, 1)
        first = start_sweeper(config, box, "run", log=tmp_path / "first.log")
        try:
            wait_until(lambda: _get(port, "/healthz"), timeout=30, what="the first daemon listening")
            # A second copy of the same config: same ledger file, another listen port.
            other = tmp_path / "second"
            other.mkdir()
            second_config = write_config(other, sqlite_url, box, hd_count=1, listen_port=free_port())
            second = run_sweeper(second_config, box, "run", check=False, timeout=30)
            assert second.returncode == 2, second.stderr
            assert "lock" in second.stderr.lower() and "Traceback" not in second.stderr
            assert first.poll() is None, "the first daemon keeps running"
            assert _stop(first)[0] == 0
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(10)


def test_startup_refusals_exit_2_naming_the_fix(tmp_path: Path, sqlite_url: str) -> None:
    with sandbox() as box:
        port = free_port()
        config = write_config(tmp_path, sqlite_url, box, hd_count=1, listen_port=port)
        unmigrated = run_sweeper(config, box, "run", check=False, timeout=30)
        assert unmigrated.returncode == 2 and "sweeper migrate" in unmigrated.stderr, unmigrated.stderr

        run_sweeper(config, box, "migrate")
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen(1)
            busy = run_sweeper(config, box, "run", check=False, timeout=30)
        assert busy.returncode == 2, busy.stderr
        assert "[callback] listen" in busy.stderr and "Traceback" not in busy.stderr

        wrong_key = subprocess.run(
            [sys.executable, "-m", "sweeper", "--config", str(config), "run"],
            env={**sweeper_env(box), "SWEEPER_PROVIDER_API_KEY": "not-our-key"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert wrong_key.returncode == 2, wrong_key.stderr
        assert "provider.api_key_env" in wrong_key.stderr and "not-our-key" not in wrong_key.stderr


def test_dry_run_daemon_queues_orders_and_sends_nothing(tmp_path: Path, sqlite_url: str) -> None:
    with sandbox() as box:
        box.control.credit_usdt(WALLET.address(0), 50_000_000)
        config, port = _start_daemon(tmp_path, sqlite_url, box, 1)
        daemon = start_sweeper(config, box, "run", "--dry-run", log=tmp_path / "dry.log")
        try:
            wait_until(
                lambda: (r := _get(port, "/healthz")) is not None and "last pass" in r.text,
                timeout=30,
                what="a completed dry-run detection pass",
            )
            assert _stop(daemon)[0] == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
        ledger = ledger_for(sqlite_url)
        assert ledger.list_sweeps() == []
        assert box.control.orders() == [] and box.control.transactions() == []
        assert box.control.usdt_balance(WALLET.address(0)) == 50_000_000
        ledger.engine.dispose()


def test_sigterm_during_startup_exits_0_at_once(tmp_path: Path, sqlite_url: str) -> None:
    """A provider that accepts the connection and never answers holds start-up; SIGTERM ends it."""
    with sandbox() as box, socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        silent.settimeout(30)
        config, _ = _start_daemon(tmp_path, sqlite_url, box, 1)
        config.write_text(
            config.read_text().replace(box.provider_url, f"http://127.0.0.1:{silent.getsockname()[1]}")
        )
        log = tmp_path / "daemon.log"
        daemon = start_sweeper(config, box, "run", log=log)
        try:
            held, _ = silent.accept()  # the daemon's provider check is now waiting for an answer
            with held:
                code, took = _stop(daemon)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
        assert code == 0, _log(log)[-3000:]
        assert took < 5, f"stopped in {took:.1f} s"
        assert "Traceback" not in _log(log)


def test_failed_order_then_operator_retry_and_a_forged_callback(tmp_path: Path, sqlite_url: str) -> None:
    """The order ends 43 (failed): the row fails; `sweeper sweeps retry` queues a new row the running
    daemon sweeps. A forged callback naming the row gets 401 and changes nothing."""
    address = WALLET.address(0)
    with sandbox() as box:
        box.control.credit_usdt(address, 33_000_000)
        box.control.set_outcome(43)
        config, port = _start_daemon(tmp_path, sqlite_url, box, 1)
        log = tmp_path / "daemon.log"
        daemon = start_sweeper(config, box, "run", log=log)
        ledger = ledger_for(sqlite_url)
        try:
            first = wait_until(
                lambda: (rows := ledger.list_sweeps()) and rows[0].state is S.FAILED and rows[0],
                timeout=60,
                what="the sweep failed with its order",
            )
            assert "43" in (ledger.events(first.id)[-1].reason or "")

            forged_body = json.dumps(
                {"serial": first.serial, "out_trade_no": first.out_trade_no, "status": 40}
            )
            forged = httpx.post(
                f"http://127.0.0.1:{port}/callback",
                content=forged_body,
                headers={"TIMESTAMP": str(int(time.time())), "SIGNATURE": "00" * 32},
                timeout=5,
            )
            assert forged.status_code == 401
            assert ledger.get_sweep(first.id) == first, "a forged callback changed the ledger"

            box.control.set_outcome(40)
            retry = run_sweeper(config, box, "sweeps", "retry", str(first.id), "--json")
            retry_id = json.loads(retry.stdout)["new_id"]
            wait_until(
                lambda: ledger.get_sweep(retry_id).state is S.CONFIRMED,
                timeout=60,
                what="the retry confirmed",
            )
            assert _stop(daemon)[0] == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
        again = ledger.get_sweep(retry_id)
        assert again.retry_of == first.id and again.amount == 33_000_000
        assert ledger.get_sweep(first.id).state is S.FAILED
        assert box.control.order_counts() == {
            first.out_trade_no: 1,
            ledger.get_sweep(retry_id).out_trade_no: 1,
        }
        assert [t.txid for t in box.control.transactions(owner=address)] == [again.txid]
        assert box.control.usdt_balance(DESTINATION) == 33_000_000
        ledger.engine.dispose()
