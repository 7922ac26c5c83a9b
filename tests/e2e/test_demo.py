"""`sweeper demo` (README's first command) runs to completion: a full sweep cycle on the sandbox."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO


def test_demo_sweeps_the_deposits_above_threshold_and_exits_0() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWEEPER_")}
    result = subprocess.run(
        [sys.executable, "-m", "sweeper", "demo"],
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "\r" not in out, "plain lines when not on a TTY"
    rows = re.findall(
        r"^\s+\d+\s+(\w+)\s+(T\w{33})\s+([\d.]+) (USDT|TRX)\s+(\S+ TRX|-)\s+([0-9a-f]{64})$", out, re.M
    )
    # Above the 10 USDT threshold: 125.5 (never activated), 10 (exactly the threshold), 2500; then
    # 42, deposited in a block by a payout contract once those were swept: found by following. And
    # 3.5 native TRX beside the 10 USDT: no energy order, the whole balance (free bandwidth).
    assert sorted((amount, token) for _, _, amount, token, _, _ in rows) == [
        ("10", "USDT"), ("125.5", "USDT"), ("2500", "USDT"), ("3.5", "TRX"), ("42", "USDT"),
    ], out  # fmt: skip
    assert {state for state, *_ in rows} == {"confirmed"}
    assert [energy for *_, token, energy, _ in rows if token == "TRX"] == ["-"]
    assert len({txid for *_, txid in rows}) == 5
    assert "block following finds it" in out
    assert "swept 2677.5 USDT, 3.5 TRX in 5 sweeps" in out
    assert "destination now holds 2677.5 USDT and 4.5 TRX" in out
    assert "for 4 provider orders" in out
    assert "TRX burnt by the sweep transfers: 0 " in out
    # It ends with the operator's status screen, asked of the running daemon.
    assert "$ sweeper status" in out and "sweeper status at" in out
    assert "daemon             up" in out and "confirmed   5" in out
    assert "Traceback" not in result.stderr
