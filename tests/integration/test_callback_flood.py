"""The callback-flood benchmark runs end to end (--quick: 8 s phases, 200 forged callbacks/s) and prints its table (its
figures are not checked here: targets are PASS/FAIL in the benchmark's own output)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_callback_flood_smoke_run_prints_the_table() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "callback_flood.py"), "--quick", "--rate", "200"],
        cwd=REPO, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    out = run.stdout
    assert "| measure | result | target | |" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "measure" not in line]
    for what in (
        "step latency p99, unloaded / flood",
        "step latency p99 ratio, flood / unloaded",
        "leases lost",
        "flood: answers by status",
        "verification, worst hand-made body",
    ):
        assert any(row.startswith(f"| {what}") for row in rows), f"no row {what!r} in:\n{out}"
    answers = next(row for row in rows if row.startswith("| flood: answers by status"))
    assert "429: " in answers, answers  # the flood went beyond the failure budget
    verdicts = [row.rstrip(" |").rsplit("| ", 1)[-1] for row in rows if "≤" in row]
    assert verdicts and set(verdicts) <= {"PASS", "FAIL"}, out
