"""The block-following benchmark runs end to end and prints its table (its figures are not checked
here: targets are PASS/FAIL in the benchmark's own output, never asserted in tests)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_follow_bench_smoke_run_prints_the_table() -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "follow_bench.py"),
            "--quick",
            "--blocks", "50",
            "--tip-steps", "3",
            "--latency-blocks", "2",
            "--tip-watched", "300,1000",
            "--rss-watched", "1000",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert re.search(r"^machine: .+ cores .*Python \d", out, re.MULTILINE), out
    assert "| measure | result | target | |" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "measure" not in line]
    for what in (
        "catch-up 50 blocks, 30 req/s: blocks/s",
        "catch-up 50 blocks, 30 req/s: block requests per block",
        "catch-up 50 blocks, no limit: blocks/s",
        "catch-up 50 blocks, no limit: client CPU per block",
        "tip: node requests per hour, 300 watched",
        "tip: node requests per hour, 1,000 watched",
        "tip: detection latency",
        "peak RSS, 1,000 watched",
    ):
        assert any(row.startswith(f"| {what}") for row in rows), f"no row {what!r} in:\n{out}"
    verdicts = [
        row.rstrip(" |").rsplit("| ", 1)[-1] for row in rows if "≥" in row or "≤" in row or "±" in row
    ]
    assert verdicts and set(verdicts) <= {"PASS", "FAIL"}, out
