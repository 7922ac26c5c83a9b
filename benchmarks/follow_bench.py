"""Block-following benchmark (issue 14, item 6): the follower against a node serving pre-built blocks.

    .venv-test/bin/python benchmarks/follow_bench.py            # the full run (~15 minutes)
    .venv-test/bin/python benchmarks/follow_bench.py --quick    # a smoke run (about a minute)

The node (`benchmarks/follow_node.py`) runs in its own process and answers from byte templates in
memory with `--latency-ms` (20) added to every answer, so the figures are the client's. Every block
holds 100 successful USDT transfers, one of them to a watched address. The follower is the real
`sweeper.follower.Follower` with the daemon's defaults (detect.concurrency 8, batches of 100 blocks,
TronChain with 16 connections and burst 1), in this process, on a migrated SQLite ledger in a temp
dir whose addresses were registered (`Ledger.upsert_addresses`) a day before its cursor was set
(take lease, `set_follow_start`, `mark_initial_poll_done`), so the first step reads no "added while
away" balances. Printed, as a Markdown table with PASS/FAIL per target (never asserted):
1. catch-up from 10,000 blocks behind (deposits to 100 distinct watched addresses whose balances
   stay under min_sweep, so no open sweep spares a read: the worst case), at
   `requests_per_second = 30` and with no limit: blocks/s, block requests per block (transaction
   infos + block reads), all node requests per block (head reads, the node proof and balance reads
   included), balance reads per watched deposit, client CPU (process time) per block;
2. node requests per hour at the tip with 1,000 vs 100,000 watched addresses;
3. detection latency at the tip: block solidified on the node -> sweep row committed;
4. peak RSS of a fresh follower process with 100,000 and 1,000,000 watched addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from follow_node import (  # noqa: E402  (the node module sits next to this file)
    CATCHUP_RECIPIENTS,
    TIP_RECIPIENTS,
    USDT,
    watched_hex20,
)

FIRST_BLOCK = 70_000_000
SEED = 14
FOLLOW_INTERVAL_S = 3.0  # the daemon's follow job (sweeper.follower.BLOCK_SECONDS)
STEPS_PER_HOUR = 3600 / FOLLOW_INTERVAL_S
HOLDER = "follow-bench"


# --- the machine, the node ------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores ({platform.machine()}), {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


class NodeProcess:
    def __init__(self, *, catchup_blocks: int, latency_ms: float) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "follow_node.py"),
                "--latency-ms",
                str(latency_ms),
                "--seed",
                str(SEED),
                "--first-block",
                str(FIRST_BLOCK),
                "--catchup-blocks",
                str(catchup_blocks),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark node did not start")
        self.url = f"http://127.0.0.1:{json.loads(line)['port']}"
        import httpx

        self.client = httpx.Client(timeout=10)  # one client: a new one per call costs ~30 ms of CPU

    def control(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if body is None and path.endswith("stats"):
            answer = self.client.get(self.url + path)
        else:
            answer = self.client.post(self.url + path, json=body or {})
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    async def acontrol(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.control, path, body)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --- ledgers ----------------------------------------------------------------------------------------


_ADDRESSES: list[str] = []


def addresses(n: int) -> list[str]:
    """The watched addresses (T…): the node pays the first 100 while catching up, the next 200 at the tip."""
    from sweeper.domain import hex_to_address

    if len(_ADDRESSES) < n:
        hexes = watched_hex20(SEED, n)
        _ADDRESSES.extend(hex_to_address(h) for h in hexes[len(_ADDRESSES) :])
    return _ADDRESSES[:n]


def build_ledger(path: Path, n: int, *, base: Path | None = None) -> Path:
    """A migrated SQLite ledger holding the first `n` addresses (copied from `base` and extended),
    registered a day ago as far as the ledger's clock is concerned."""
    from sweeper.ledger import Ledger, NewAddress, make_engine, upgrade

    if base is not None:
        shutil.copyfile(base, path)
    url = f"sqlite:///{path}"
    engine = make_engine(url, sqlite_synchronous="NORMAL")  # setup only; the follower's engine syncs FULL
    upgrade(engine)

    def a_day_ago() -> datetime:
        return datetime.now(UTC) - timedelta(days=1)

    ledger = Ledger(engine, clock=a_day_ago)
    ledger.upsert_addresses((NewAddress(a, "import") for a in addresses(n)), batch=5000)
    engine.dispose()
    return path


def fresh_copy(template: Path, folder: Path, name: str) -> Path:
    target = folder / name
    shutil.copyfile(template, target)
    return target


def preset_cursor(ledger: Any, next_block: int) -> None:
    """Following already under way: a start at `next_block` and the initial poll pass done."""
    from sweeper.ledger import FOLLOW_BLOCKS

    lease = ledger.take_follow_lease(FOLLOW_BLOCKS, HOLDER + "-setup", 60)
    assert lease is not None
    ledger.set_follow_start(FOLLOW_BLOCKS, lease.token, next_block)
    ledger.mark_initial_poll_done(FOLLOW_BLOCKS, lease.token, pass_started_at=ledger.now())
    ledger.release_follow_lease(FOLLOW_BLOCKS, lease.token)


def tokens(trx: bool = False) -> tuple[Any, ...]:
    from decimal import Decimal

    from sweeper.config import TokenSettings

    usdt = TokenSettings(symbol="USDT", contract=USDT, decimals=6, min_sweep=Decimal("10"))
    if not trx:
        return (usdt,)
    # Native TRX configured too: every block is also read whole (its TransferContracts).
    return (usdt, TokenSettings(symbol="TRX", contract=None, decimals=6, min_sweep=Decimal("5")))


class Setup:
    """A follower on a copy of a ledger, with its chain client."""

    def __init__(
        self, db: Path, url: str, rps: float, args: argparse.Namespace, *, trx: bool = False
    ) -> None:
        from sweeper.chain import TronChain
        from sweeper.follower import Follower
        from sweeper.ledger import Ledger, make_engine
        from sweeper.scanner import Scanner

        self.engine = make_engine(f"sqlite:///{db}")
        self.ledger = Ledger(self.engine)
        self.chain = TronChain(url, requests_per_second=rps, max_connections=16)
        self.follower = Follower(
            self.ledger,
            self.chain,
            tokens(trx),
            worker_id=HOLDER,
            scanner=Scanner(self.ledger, self.chain, tokens(trx)),
            concurrency=args.concurrency,
            batch_blocks=args.batch_blocks,
        )
        self.queued_at: dict[str, float] = {}
        original: Callable[..., Any] = self.ledger.queue_sweep

        def queue_sweep(address: str, *rest: Any, **kw: Any) -> Any:
            sweep_id = original(address, *rest, **kw)
            if sweep_id is not None:
                self.queued_at[address] = time.time()  # committed
            return sweep_id

        self.ledger.queue_sweep = queue_sweep  # type: ignore[method-assign]

    async def close(self) -> None:
        await self.chain.aclose()
        self.engine.dispose()


# --- 1. catch-up ------------------------------------------------------------------------------------


async def catchup(
    node: NodeProcess,
    template: Path,
    folder: Path,
    *,
    rps: float,
    blocks: int,
    args: argparse.Namespace,
    trx: bool = False,
) -> dict[str, float]:
    db = fresh_copy(template, folder, f"catchup-{rps:g}{'-trx' if trx else ''}.db")
    await node.acontrol("/bench/head", {"num": FIRST_BLOCK + blocks - 1})
    setup = Setup(db, node.url, rps, args, trx=trx)
    try:
        preset_cursor(setup.ledger, FIRST_BLOCK)
        await setup.chain.token_balance(addresses(1)[0], USDT)  # the ABI, fetched once: not timed
        await node.acontrol("/bench/reset")
        sent = setup.chain.requests_sent
        cpu, wall = time.process_time(), time.perf_counter()
        done = await setup.follower.step()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        requests = setup.chain.requests_sent - sent
        counts = (await node.acontrol("/bench/stats"))["counts"]
        status = setup.follower.status
    finally:
        await setup.close()
    if done != blocks:
        raise RuntimeError(f"the follower processed {done} blocks, not {blocks}")
    infos = counts.get("/walletsolidity/gettransactioninfobyblocknum", 0)
    headers = counts.get("/walletsolidity/getblockbynum", 0)
    balances = counts.get("/wallet/triggerconstantcontract", 0)
    return {
        "blocks": done,
        "seconds": wall,
        "blocks_per_s": done / wall,
        "requests_per_s": requests / wall,
        "block_requests_per_block": (infos + headers) / done,
        "requests_per_block": requests / done,
        "balance_reads": balances,
        "deposits": status.deposits_seen,
        "reads_per_deposit": balances / max(1, status.deposits_seen),
        "cpu_ms_per_block": cpu * 1000 / done,
    }


# --- 2. the tip ---------------------------------------------------------------------------------------


async def tip_requests(
    node: NodeProcess, template: Path, folder: Path, *, watched: int, steps: int, args: argparse.Namespace
) -> dict[str, float]:
    """Requests per follow step at the tip, one new solid block per step (a simulated 3-s clock:
    the head is moved, then `step()` runs at once), times the daemon's steps per hour."""
    first_tip = FIRST_BLOCK + args.catchup_blocks
    db = fresh_copy(template, folder, f"tip-{watched}.db")
    await node.acontrol("/bench/head", {"num": first_tip - 1})
    setup = Setup(db, node.url, 1e9, args)
    try:
        preset_cursor(setup.ledger, first_tip)
        await setup.chain.token_balance(addresses(1)[0], USDT)  # the ABI, fetched once per process
        await setup.follower.step()  # warm: the node proof, the watched set loaded
        sent, cpu = setup.chain.requests_sent, 0.0
        await node.acontrol("/bench/reset")
        done = 0
        for i in range(steps):
            await node.acontrol("/bench/head", {"num": first_tip + i})
            started = time.process_time()
            done += await setup.follower.step()
            cpu += time.process_time() - started
        requests = setup.chain.requests_sent - sent
        counts = (await node.acontrol("/bench/stats"))["counts"]
        queued = setup.follower.status.queued
    finally:
        await setup.close()
    if done != steps:
        raise RuntimeError(f"the follower processed {done} blocks in {steps} tip steps")
    per_step = requests / steps
    return {
        "per_step": per_step,
        "per_hour": per_step * STEPS_PER_HOUR,
        "head_reads": counts.get("/walletsolidity/getnowblock", 0) / steps,
        "infos": counts.get("/walletsolidity/gettransactioninfobyblocknum", 0) / steps,
        "balances": counts.get("/wallet/triggerconstantcontract", 0) / steps,
        "cpu_ms_per_step": cpu * 1000 / steps,
        "queued": queued,
    }


async def detection_latency(
    node: NodeProcess, template: Path, folder: Path, *, blocks: int, args: argparse.Namespace
) -> dict[str, float]:
    """Real time: each tip block (one deposit to an address at 20 USDT) is made solid on the node,
    then the follow step runs after a random phase in [0, 3 s) (the daemon's job runs every 3 s,
    not in step with the chain), and the time to the committed sweep row is taken."""
    first_tip = FIRST_BLOCK + args.catchup_blocks
    db = fresh_copy(template, folder, "latency.db")
    await node.acontrol("/bench/head", {"num": first_tip - 1})
    setup = Setup(db, node.url, args.latency_rps, args)
    rng = random.Random(SEED)
    total: list[float] = []
    processing: list[float] = []
    try:
        preset_cursor(setup.ledger, first_tip)
        await setup.chain.token_balance(addresses(1)[0], USDT)  # the ABI, fetched once per process
        await setup.follower.step()  # warm
        for i in range(blocks):
            number = first_tip + i
            recipient = addresses(CATCHUP_RECIPIENTS + TIP_RECIPIENTS)[
                CATCHUP_RECIPIENTS + (number - first_tip) % TIP_RECIPIENTS
            ]
            await node.acontrol("/bench/head", {"num": number})
            solid_at = time.time()
            await asyncio.sleep(rng.uniform(0, FOLLOW_INTERVAL_S))
            step_at = time.time()
            await setup.follower.step()
            queued_at = setup.queued_at.get(recipient)
            if queued_at is None:
                raise RuntimeError(f"the deposit in block {number} was not queued")
            total.append(queued_at - solid_at)
            processing.append(queued_at - step_at)
    finally:
        await setup.close()
    return {
        "p50": statistics.median(total),
        "max": max(total),
        "processing_p50": statistics.median(processing),
        "processing_max": max(processing),
    }


# --- 3. memory ----------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux: VmHWM, the peak of this program's own memory. (ru_maxrss
    is not used there: across fork/exec it keeps the peak of the parent it was forked from, and
    the parent holds a million addresses by then.) Elsewhere: ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    per_mb = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / per_mb


def rss_child(db: str, url: str, concurrency: int, batch_blocks: int) -> None:
    """In a fresh process: load the follower on this ledger, follow the head block, print peak RSS."""
    from sweeper.logs import configure_logging

    configure_logging(level="WARNING")
    args = argparse.Namespace(concurrency=concurrency, batch_blocks=batch_blocks)

    async def run() -> dict[str, float]:
        setup = Setup(Path(db), url, 1e9, args)
        try:
            head = await setup.chain.solid_head()
            preset_cursor(setup.ledger, head.number)
            before = peak_rss_mb()
            done = await setup.follower.step()
            return {
                "base_mb": before,
                "rss_mb": peak_rss_mb(),
                "watched": len(setup.follower._watched),
                "blocks": done,
            }
        finally:
            await setup.close()

    print(json.dumps(asyncio.run(run())))


def peak_rss(node: NodeProcess, db: Path, args: argparse.Namespace) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--rss-child",
            str(db),
            node.url,
            "--concurrency",
            str(args.concurrency),
            "--batch-blocks",
            str(args.batch_blocks),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the RSS child failed: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- the run ------------------------------------------------------------------------------------------


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "FAIL")


Row = tuple[str, str, str, str]


def catchup_rows(
    node: NodeProcess,
    small: Path,
    folder: Path,
    limited_blocks: int,
    unlimited_blocks: int,
    args: argparse.Namespace,
) -> list[Row]:
    limited = asyncio.run(catchup(node, small, folder, rps=30, blocks=limited_blocks, args=args))
    unlimited = asyncio.run(catchup(node, small, folder, rps=1e9, blocks=unlimited_blocks, args=args))
    label = f"catch-up {limited_blocks:,} blocks, 30 req/s"
    rows: list[Row] = [
        (f"{label}: blocks/s", f"{limited['blocks_per_s']:.1f} ({limited['seconds']:.0f} s, "
         f"{limited['requests_per_s']:.1f} req/s)", "≥ 27", verdict(limited["blocks_per_s"] >= 27)),
        (f"{label}: block requests per block", f"{limited['block_requests_per_block']:.3f}",
         "≤ 1.05", verdict(limited["block_requests_per_block"] <= 1.05)),
        (f"{label}: node requests per block (all)", f"{limited['requests_per_block']:.3f}", "", ""),
        (f"{label}: balance reads per watched deposit",
         f"{limited['reads_per_deposit']:.3f} ({limited['balance_reads']:.0f} / {limited['deposits']:.0f})", "", ""),
        (f"{label}: client CPU per block", f"{limited['cpu_ms_per_block']:.2f} ms", "", ""),
    ]  # fmt: skip
    label = f"catch-up {unlimited_blocks:,} blocks, no limit"
    rows += [
        (f"{label}: blocks/s", f"{unlimited['blocks_per_s']:.1f} ({unlimited['seconds']:.1f} s)",
         "≥ 300", verdict(unlimited["blocks_per_s"] >= 300)),
        (f"{label}: client CPU per block", f"{unlimited['cpu_ms_per_block']:.2f} ms", "≤ 3 ms",
         verdict(unlimited["cpu_ms_per_block"] <= 3)),
        (f"{label}: block requests / all requests per block",
         f"{unlimited['block_requests_per_block']:.3f} / {unlimited['requests_per_block']:.3f}", "", ""),
        (f"{label}: balance reads per watched deposit",
         f"{unlimited['reads_per_deposit']:.3f} ({unlimited['balance_reads']:.0f} / {unlimited['deposits']:.0f})", "", ""),
    ]  # fmt: skip
    # Issue 17: with [[tokens]] TRX configured, each block is also read whole (getblockbynum: its
    # TransferContracts) before its transaction infos. What that costs, same node, same blocks.
    with_trx = asyncio.run(
        catchup(node, small, folder, rps=1e9, blocks=unlimited_blocks, args=args, trx=True)
    )
    label = f"catch-up {unlimited_blocks:,} blocks, no limit, TRX configured"
    rows += [
        (f"{label}: blocks/s", f"{with_trx['blocks_per_s']:.1f} (USDT only: {unlimited['blocks_per_s']:.1f})",
         "", ""),
        (f"{label}: block requests per block",
         f"{with_trx['block_requests_per_block']:.3f} (USDT only: {unlimited['block_requests_per_block']:.3f})",
         "", ""),
        (f"{label}: client CPU per block",
         f"{with_trx['cpu_ms_per_block']:.2f} ms (USDT only: {unlimited['cpu_ms_per_block']:.2f} ms)", "", ""),
    ]  # fmt: skip
    return rows


def tip_rows(
    node: NodeProcess,
    templates: dict[int, Path],
    folder: Path,
    sizes: list[int],
    steps: int,
    latency_blocks: int,
    args: argparse.Namespace,
) -> list[Row]:
    tips = {
        n: asyncio.run(tip_requests(node, templates[n], folder, watched=n, steps=steps, args=args))
        for n in sizes
    }
    low, high = tips[min(sizes)], tips[max(sizes)]
    rows: list[Row] = []
    for n in sizes:
        t = tips[n]
        last = n == max(sizes)
        rows.append(
            (
                f"tip: node requests per hour, {n:,} watched",
                f"{t['per_hour']:.0f} ({t['per_step']:.2f}/step: head {t['head_reads']:.2f}, infos "
                f"{t['infos']:.2f}, balance {t['balances']:.2f}; CPU {t['cpu_ms_per_step']:.1f} ms/step)",
                "equal ±5%" if last else "",
                verdict(abs(high["per_hour"] / low["per_hour"] - 1) <= 0.05) if last else "",
            )
        )
    lat = asyncio.run(
        detection_latency(node, templates[max(sizes)], folder, blocks=latency_blocks, args=args)
    )
    rows.append(
        (
            f"tip: detection latency, solid → row queued ({latency_blocks} deposits, {max(sizes):,} watched)",
            f"median {lat['p50']:.2f} s, max {lat['max']:.2f} s (the step itself: median "
            f"{lat['processing_p50'] * 1000:.0f} ms, max {lat['processing_max'] * 1000:.0f} ms)",
            "",
            "",
        )
    )
    return rows


def rss_rows(
    node: NodeProcess, templates: dict[int, Path], sizes: list[int], args: argparse.Namespace
) -> list[Row]:
    targets = {100_000: 200.0, 1_000_000: 400.0}
    rows: list[Row] = []
    for n in sizes:
        r = peak_rss(node, templates[n], args)
        limit = targets.get(n)
        rows.append(
            (
                f"peak RSS, {n:,} watched",
                f"{r['rss_mb']:.0f} MB (before the watched set is loaded: {r['base_mb']:.0f} MB)",
                f"≤ {limit:.0f} MB" if limit else "",
                verdict(r["rss_mb"] <= limit) if limit else "",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Block-following benchmark (issue 14).")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: fewer blocks, 100,000 watched at most"
    )
    parser.add_argument(
        "--blocks", type=int, help="catch-up blocks for both runs (10,000; quick: 1,000 / 300)"
    )
    parser.add_argument("--tip-steps", type=int, help="follow steps at the tip per size (100; quick: 30)")
    parser.add_argument("--latency-blocks", type=int, help="tip blocks timed in real time (20; quick: 5)")
    parser.add_argument("--tip-watched", help="watched-address counts compared at the tip (1000,100000)")
    parser.add_argument(
        "--rss-watched", help="watched-address counts for peak RSS (100000,1000000; quick: 100000)"
    )
    parser.add_argument("--latency-ms", type=float, default=20.0, help="added to every node answer")
    parser.add_argument("--concurrency", type=int, default=8, help="Follower concurrency (daemon: 8)")
    parser.add_argument("--batch-blocks", type=int, default=1000, help="Follower batch (the daemon: 1000)")
    parser.add_argument("--only", help="a comma list of parts to run: catchup, tip, rss (all by default)")
    parser.add_argument("--rss-child", nargs=2, metavar=("DB", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], args.concurrency, args.batch_blocks)
        return

    unlimited_blocks = args.blocks or (1_000 if args.quick else 10_000)
    limited_blocks = args.blocks or (300 if args.quick else 10_000)
    args.catchup_blocks = max(unlimited_blocks, limited_blocks)
    tip_steps = args.tip_steps or (30 if args.quick else 100)
    latency_blocks = args.latency_blocks or (5 if args.quick else 20)
    tip_sizes = [int(x) for x in (args.tip_watched or "1000,100000").split(",")]
    rss_sizes = [
        int(x) for x in (args.rss_watched or ("100000" if args.quick else "100000,1000000")).split(",")
    ]
    args.latency_rps = 30.0
    parts = set((args.only or "catchup,tip,rss").split(","))
    if not parts <= {"catchup", "tip", "rss"}:
        parser.error("--only: catchup, tip, rss")
    if min(tip_sizes) < CATCHUP_RECIPIENTS + TIP_RECIPIENTS:
        parser.error(f"--tip-watched: at least {CATCHUP_RECIPIENTS + TIP_RECIPIENTS} (the node pays those)")
    if tip_steps > TIP_RECIPIENTS or latency_blocks > TIP_RECIPIENTS:
        parser.error(f"--tip-steps / --latency-blocks: at most {TIP_RECIPIENTS}")

    from sweeper.logs import configure_logging

    configure_logging(level="WARNING")  # one info line per batch and per sweep would blur the CPU figures
    started = time.perf_counter()
    print(f"# follow benchmark{' (--quick)' if args.quick else ''}", flush=True)
    print(f"machine: {machine()}")
    print(
        f"node: own process, pre-built answers from memory, {args.latency_ms:g} ms added per answer; "
        "100 USDT transfers per block, 1 to a watched address"
    )
    print(
        f"follower: concurrency {args.concurrency}, batches of {args.batch_blocks} blocks, TronChain "
        "16 connections / burst 1, SQLite ledger (synchronous=FULL) in a temp dir, logging at WARNING\n",
        flush=True,
    )
    node = NodeProcess(catchup_blocks=args.catchup_blocks, latency_ms=args.latency_ms)
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="follow-bench-") as tmp:
            folder = Path(tmp)
            small = build_ledger(folder / "w-small.db", min(tip_sizes))

            if "catchup" in parts:
                rows += catchup_rows(node, small, folder, limited_blocks, unlimited_blocks, args)
                print("catch-up done", flush=True, file=sys.stderr)

            templates: dict[int, Path] = {min(tip_sizes): small}
            base = small
            wanted = (set(tip_sizes) if "tip" in parts else set()) | (
                set(rss_sizes) if "rss" in parts else set()
            )
            for n in sorted(wanted):
                if n not in templates:
                    templates[n] = base = build_ledger(folder / f"w-{n}.db", n, base=base)
            if "tip" in parts:
                rows += tip_rows(node, templates, folder, tip_sizes, tip_steps, latency_blocks, args)
                print("tip done", flush=True, file=sys.stderr)
            if "rss" in parts:
                rows += rss_rows(node, templates, rss_sizes, args)
    finally:
        node.stop()

    print("| measure | result | target | |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        f"\nMethods. Catch-up: one `Follower.step()` from {FIRST_BLOCK} to the solid head; client CPU is this "
        "process's CPU time (ledger threads included, node excluded) over that step; requests are counted by the "
        "client (all) and by the node (per endpoint); the ABI fetch before the step is not counted. Tip: "
        f"the node's solid head advances one block per step of a simulated {FOLLOW_INTERVAL_S:g}-s clock "
        f"(the daemon's follow interval) and `step()` runs at once; requests per hour = requests per step × "
        f"{STEPS_PER_HOUR:.0f} steps (the hourly node proof, ~2 requests, is left out). Each tip block pays a "
        "different address at 20 USDT, so each step also reads one balance and queues one sweep. Latency: "
        f"real time, a random phase in [0, {FOLLOW_INTERVAL_S:g}) s between the block turning solid and the step, "
        "at 30 req/s. RSS: peak RSS (VmHWM) of a fresh process that loads the follower on that ledger and "
        f"follows one block (imports, ledger, chain client, the watched set).\ntotal {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
