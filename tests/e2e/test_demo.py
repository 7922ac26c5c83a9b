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
    rows = re.findall(r"^\s+\d+\s+(\w+)\s+(T\w{33})\s+([\d.]+)\s+\S+ TRX\s+([0-9a-f]{64})$", out, re.M)
    # Above the 10 USDT threshold: 125.5 (never activated), 10 (exactly the threshold), 2500; then
    # 42, deposited in a block by a payout contract once those were swept: found by following.
    assert sorted(amount for _, _, amount, _ in rows) == ["10", "125.5", "2500", "42"], out
    assert {state for state, _, _, _ in rows} == {"confirmed"}
    assert len({txid for *_, txid in rows}) == 4
    assert "block following finds it" in out
    assert "swept 2677.5 USDT in 4 sweeps" in out
    assert "destination now holds 2677.5 USDT" in out
    assert "for 4 provider orders" in out
    assert "Traceback" not in result.stderr
