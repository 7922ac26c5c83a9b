"""The kill -9 soak (benchmarks/soak.py) in small: a handful of seeded runs, every column zero.

The full soak (100 runs) is a benchmark; CI runs three, each a fresh sandbox and ledger with real
`sweeper run` processes killed at seeded moments, judged by tests/e2e/invariants.py.
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_soak_handful_of_kill9_runs_loses_nothing_and_doubles_nothing() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "soak.py"), "--runs", "3", "--kills", "2", "--seed", "15"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = run.stdout
    row = re.search(r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| .+ \|$", out, re.MULTILINE)
    assert row is not None, f"no soak table in the output:\n{out}\n{run.stderr[-3000:]}"
    runs, lost, doubled, stuck, other = (int(v) for v in row.groups())
    assert runs == 3, out
    assert (lost, doubled, stuck, other) == (0, 0, 0, 0), out
    assert run.returncode == 0, f"{out}\n{run.stderr[-3000:]}"
