"""Soak: N seeded kill -9 runs of `sweeper run` against the sandbox, each judged by the ONE invariant
checker (tests/e2e/invariants.py).

    .venv-test/bin/python benchmarks/soak.py [--runs 100] [--seed 1] [--kills 3] [--postgres]

Each run: a fresh combined sandbox (node + provider in their own process) and a fresh ledger; then
`--kills` times: one or two deposit addresses credited above `min_sweep` (half never activated, so
their order also activates them), `sweeper run` started (a real process, callbacks on) and killed
with SIGKILL at a moment drawn from the seed (one in four during start-up, the rest 0-6 s after its
listener answers, while sweeps are in flight); then a last daemon is left to settle (every row final
and every credited address swept) within `--settle-timeout` seconds, and stopped with SIGTERM.
The checker then reads the ledger, the sandbox chain and the sandbox provider, with the threshold
given so that money left on an address with no row to show for it counts as well.

A run counts once in each column it broke:
- lost: money at or above the threshold left on a deposit address with no open or failed row, or a
  row failed/cancelled without a reason;
- doubled: more than one provider order or more than one successful transfer for a row;
- stuck: a row still open (or queued with no future retry) once the settle deadline passed;
- other: any other broken promise (TRX burnt, a wrong destination, amounts the chain contradicts, a
  daemon that exited by itself).

The moments are seeded, the outcome is not fully: where a kill lands depends on how fast the
machine is. The table also says in which states the rows were when the kills landed, so a run on a
slower or faster machine shows whether every step was still hit. Exit 1 if any column is nonzero.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sweeper.domain import FINAL_STATES, SweepState
from tests.constants import DESTINATION, WALLET
from tests.e2e.harness import (
    free_port,
    kill9,
    ledger_for,
    run_sweeper,
    sandbox,
    start_sweeper,
    write_config,
)
from tests.e2e.invariants import Expect, violations

MIN_SWEEP_UNITS = 10_000_000  # the harness config's min_sweep = "10" USDT (6 decimals)
COLUMNS = ("lost", "doubled", "stuck", "other")


@dataclass
class RunResult:
    index: int
    wall: float
    problems: list[str]
    kinds: set[str] = field(default_factory=set)
    states_at_kill: Counter[str] = field(default_factory=Counter)


def classify(problem: str) -> str:
    """Which column a sentence of the checker belongs to (its wording is the checker's own)."""
    if "money left behind" in problem or "without a reason" in problem:
        return "lost"
    if "provider orders" in problem or "successful transfers" in problem:
        return "doubled"
    if "is stuck in" in problem or "queued with no retry" in problem:
        return "stuck"
    return "other"


def _open_states_now(db_url: str) -> Counter[str]:
    """The states of the rows still open right after a kill ("no open row" when there was none)."""
    ledger = ledger_for(db_url)
    try:
        states = Counter(row.state.value for row in ledger.list_sweeps() if row.state not in FINAL_STATES)
    finally:
        ledger.engine.dispose()
    return states or Counter({"no open row": 1})


def _settled(db_url: str, credited: set[str]) -> bool:
    ledger = ledger_for(db_url)
    try:
        rows = ledger.list_sweeps()
    finally:
        ledger.engine.dispose()
    if any(row.state not in FINAL_STATES for row in rows):
        return False
    done = {row.address for row in rows if row.state in (SweepState.CONFIRMED, SweepState.FAILED)}
    return credited <= done


def _stop(daemon: subprocess.Popen[str]) -> None:
    if daemon.poll() is not None:
        return
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(15)
    except subprocess.TimeoutExpired:
        kill9(daemon)


def _listening(port: int) -> bool:
    """The daemon's listener answers (any status): it has started and is working."""
    try:
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
    except httpx.TransportError:
        return False
    return True


def _kill_at(daemon: subprocess.Popen[str], port: int, moment: Moment) -> bool:
    """Wait for the drawn moment and kill -9; False if the daemon had exited by itself."""
    if moment.after_start:
        # Anchored on readiness, not on the spawn: starting takes 1-15 s depending on the load, a
        # moment counted from the spawn would land in the imports on a busy machine.
        deadline = time.monotonic() + 90
        while daemon.poll() is None and not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.05)
    time.sleep(moment.seconds)
    if daemon.poll() is not None:
        return False
    kill9(daemon)
    return True


@dataclass(frozen=True)
class Moment:
    """When a kill lands: `seconds` after the spawn, or after the listener answered (`after_start`)."""

    after_start: bool
    seconds: float


def draw_moment(rng: random.Random) -> Moment:
    # One kill in four lands during start-up (imports, the lock, the ledger checks, the first scan);
    # the rest within the next 6 s of work, where a sandbox sweep goes from queued to broadcast.
    if rng.random() < 0.25:
        return Moment(False, round(rng.uniform(0.2, 2.0), 3))
    return Moment(True, round(rng.uniform(0.0, 6.0), 3))


def one_run(
    index: int, seed: int, db_url: str, folder: Path, *, kills: int, settle_timeout: float
) -> RunResult:
    rng = random.Random(f"{seed}:{index}")
    # Fresh money before every daemon (1-2 addresses each), so each kill can land on work in flight.
    rounds: list[dict[str, int]] = []
    next_index = 0
    for _ in range(kills + 1):
        batch = {}
        for _ in range(rng.randint(1, 2)):
            batch[WALLET.address(next_index)] = rng.randint(MIN_SWEEP_UNITS, 500_000_000)
            next_index += 1
        rounds.append(batch)
    activated = {a for batch in rounds for a in batch if rng.random() < 0.5}
    moments = [draw_moment(rng) for _ in range(kills)]
    credited: set[str] = set()
    started = time.monotonic()
    result = RunResult(index, 0.0, [])
    with sandbox() as box:
        port = free_port()
        config = write_config(
            folder,
            db_url,
            box,
            hd_count=next_index,
            listen_port=port,
            detect_mode="both",
            follow_lease_seconds=5,
        )
        run_sweeper(config, box, "migrate")
        for k, batch in enumerate(rounds):
            for address, amount in batch.items():
                box.control.credit_usdt(address, amount)
                if address in activated:
                    box.control.activate(address)
            credited |= set(batch)
            log = folder / f"daemon-{k}.log"
            daemon = start_sweeper(config, box, "run", log=log)
            try:
                if k < kills:
                    if _kill_at(daemon, port, moments[k]):
                        result.states_at_kill.update(_open_states_now(db_url))
                    else:
                        tail = log.read_text()[-2000:]
                        result.problems.append(f"daemon {k} exited {daemon.returncode} by itself:\n{tail}")
                    continue
                # The last daemon is left to finish everything.
                deadline = time.monotonic() + settle_timeout
                while time.monotonic() < deadline and daemon.poll() is None:
                    if _settled(db_url, credited):
                        break
                    time.sleep(0.2)
                if daemon.poll() is not None:
                    tail = log.read_text()[-2000:]
                    result.problems.append(f"the last daemon exited {daemon.returncode} by itself:\n{tail}")
            finally:
                _stop(daemon)
        result.problems += violations(
            db_url, box.control, destination=DESTINATION, expect=Expect(min_sweep=MIN_SWEEP_UNITS)
        )
    result.kinds = {classify(p) for p in result.problems}
    result.wall = time.monotonic() - started
    return result


class PostgresSchemas:
    """A fresh schema per run on the given server (dropped afterwards)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.admin = create_engine(base, isolation_level="AUTOCOMMIT")

    def new(self) -> tuple[str, str]:
        schema = f"soak_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(self.base).update_query_dict({"options": f"-csearch_path={schema}"})
        return schema, url.render_as_string(hide_password=False)

    def drop(self, schema: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kills", type=int, default=3, help="kill -9 per run, each at a seeded moment")
    parser.add_argument("--settle-timeout", type=float, default=120.0, help="seconds; open after it = stuck")
    parser.add_argument(
        "--postgres", action="store_true", help="ledger on $SWEEPER_TEST_POSTGRES_URL (a schema per run)"
    )
    parser.add_argument(
        "--max-minutes", type=float, default=0.0, help="start no run after this long (0: no limit)"
    )
    parser.add_argument("--verbose", action="store_true", help="print every broken promise as it is found")
    args = parser.parse_args()
    if args.runs < 1 or args.kills < 0 or args.settle_timeout <= 0:
        parser.error("--runs must be >= 1, --kills >= 0, --settle-timeout > 0")
    schemas: PostgresSchemas | None = None
    if args.postgres:
        base = os.environ.get("SWEEPER_TEST_POSTGRES_URL", "")
        if not base:
            parser.error("--postgres needs SWEEPER_TEST_POSTGRES_URL")
        schemas = PostgresSchemas(base)
    backend = "postgres" if schemas else "sqlite"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"soak: {args.runs} runs, seed {args.seed}, {args.kills} kill -9 per run, ledger {backend}, "
        f"settle timeout {args.settle_timeout:.0f} s",
        flush=True,
    )
    results: list[RunResult] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.runs):
            if args.max_minutes and time.monotonic() - started > args.max_minutes * 60:
                print(
                    f"time budget of {args.max_minutes:g} min spent: stopped after {index} of {args.runs} runs"
                )
                break
            folder = Path(tmp) / f"run-{index}"
            folder.mkdir()
            schema = None
            if schemas:
                schema, db_url = schemas.new()
            else:
                db_url = f"sqlite:///{folder / 'ledger.db'}"
            try:
                result = one_run(
                    index, args.seed, db_url, folder, kills=args.kills, settle_timeout=args.settle_timeout
                )
            finally:
                if schemas and schema:
                    schemas.drop(schema)
            results.append(result)
            if result.problems:
                print(f"run {index}: {', '.join(sorted(result.kinds))}", flush=True)
                for problem in result.problems:
                    print(f"  - {problem}", flush=True)
            elif args.verbose or (index + 1) % 10 == 0:
                print(f"run {index}: ok ({result.wall:.1f} s); {index + 1} done", flush=True)
    wall = time.monotonic() - started
    totals = {c: sum(1 for r in results if c in r.kinds) for c in COLUMNS}
    print()
    print("| runs | lost | doubled | stuck | other | wall time |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {len(results)} | {totals['lost']} | {totals['doubled']} | {totals['stuck']} | {totals['other']} "
        f"| {wall:.0f} s ({wall / len(results):.1f} s per run) |"
    )
    at_kill: Counter[str] = Counter()
    for r in results:
        at_kill.update(r.states_at_kill)
    order = [s.value for s in SweepState]
    seen = ", ".join(f"{s} {at_kill[s]}" for s in order if at_kill[s]) or "none"
    others = ", ".join(f"{s} {n}" for s, n in at_kill.items() if s not in order)
    print(f"open rows by state right after the kills: {seen}" + (f"; {others}" if others else ""))
    failed = any(totals.values())
    print("PASS: every invariant held in every run" if not failed else "FAIL: see the runs above")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
