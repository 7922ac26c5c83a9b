"""`[metrics] listen` with a real daemon (issue 16): `/healthz` and `/metrics` move to their own
address, the callback address answers 404 for them, and the provider's callbacks still reach
`/callback` there. The unset case (everything on `[callback] listen`) is
test_daemon_e2e.test_daemon_sweeps_everything_and_serves_health_and_metrics.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from sweeper.domain import SweepState
from tests.constants import WALLET
from tests.e2e.harness import (
    free_port,
    ledger_for,
    run_sweeper,
    sandbox,
    start_sweeper,
    wait_until,
    write_config,
)


def _get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.TransportError:
        return None


def _hinted(metrics_text: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith('sweeper_callbacks_total{result="hinted"}'):
            return float(line.split()[-1])
    return 0.0


def test_metrics_listen_moves_healthz_and_metrics_off_the_callback_port(
    tmp_path: Path, sqlite_url: str
) -> None:
    address = WALLET.address(0)
    with sandbox() as box:
        box.control.credit_usdt(address, 25_000_000)
        callback_port, metrics_port = free_port(), free_port()
        config = write_config(tmp_path, sqlite_url, box, hd_count=1, listen_port=callback_port)
        config.write_text(config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
        run_sweeper(config, box, "migrate")
        log = tmp_path / "daemon.log"
        daemon = start_sweeper(config, box, "run", log=log)
        ledger = ledger_for(sqlite_url)
        try:
            health = wait_until(lambda: _get(metrics_port, "/healthz"), timeout=60, what="/healthz")
            assert health.json()["checks"]["database"] == "ok"
            for path in ("/healthz", "/metrics"):
                answer = _get(callback_port, path)
                assert answer is not None and answer.status_code == 404, path
            answer = httpx.post(f"http://127.0.0.1:{metrics_port}/callback", content=b"{}", timeout=5)
            assert answer.status_code == 404
            # The callback port still verifies (a forged callback is refused there) …
            forged = httpx.post(
                f"http://127.0.0.1:{callback_port}/callback",
                content=b'{"serial": "x"}',
                headers={"TIMESTAMP": "1", "SIGNATURE": "0" * 64},
                timeout=5,
            )
            assert (forged.status_code, forged.json()["error"]) == (401, "stale_timestamp")

            # … and the sandbox provider's genuine callbacks reach it while the sweep completes.
            wait_until(
                lambda: (rows := ledger.list_sweeps()) and rows[0].state is SweepState.CONFIRMED,
                timeout=90,
                what="the sweep confirmed",
            )
            metrics = wait_until(
                lambda: (r := _get(metrics_port, "/metrics")) is not None and _hinted(r.text) >= 1 and r,
                timeout=30,
                what="a hinted callback counted on the metrics port",
            )
            assert 'sweeper_callbacks_total{result="stale_timestamp"} 1.0' in metrics.text
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(20) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(10)
            ledger.engine.dispose()
        assert "Traceback" not in log.read_text()
