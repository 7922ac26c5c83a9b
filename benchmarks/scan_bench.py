"""Detection benchmark: our polling pass vs the naive loop a typical script uses, same run, same node.

    .venv/bin/python benchmarks/scan_bench.py                 # the full run (~3-4 minutes)
    .venv/bin/python benchmarks/scan_bench.py --quick         # smaller numbers, for a smoke run

The sandbox TRON node runs in its own process (so it does not share our GIL) with 20 ms added
to every answer, over a world of N funded addresses. Printed:
1. ours: `Scanner.run_pass` over 10,000 addresses with no rate limit -> addresses/s;
   naive: sequential sync tronpy, a new `Tron` client and `get_contract(USDT).functions.balanceOf(a)`
   per address, on a sample -> addresses/s; and the ratio (target >= 20x).
2. ours with `requests_per_second = 50`: the achieved request rate (target >= 90% of 50).
3. client CPU per balance read (process time, sequential): ours vs tronpy's async contract call.
4. peak RSS of a whole pass (a fresh process each) for 10,000 and 100,000 addresses (target <= 200 MB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USDT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
LATENCY_S = 0.020


def addresses(n: int, seed: int = 7) -> list[str]:
    from sweeper.domain import hex_to_address

    rng = random.Random(seed)
    return [hex_to_address("41" + rng.randbytes(20).hex()) for _ in range(n)]


def _serve_node(n: int, port: int) -> None:
    import uvicorn

    from sweeper.sandbox.node_server import SandboxNode
    from sweeper.sandbox.world import World

    world = World()
    for i, address in enumerate(addresses(n)):
        world.credit_token(world.usdt_contract, address, (i % 4) * 7_000_000)  # 0, 7, 14, 21 USDT
    node = SandboxNode(world)
    node.switches.latency_s = LATENCY_S
    uvicorn.run(node.app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=4096)


def start_node(n: int) -> tuple[multiprocessing.Process, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = multiprocessing.get_context("spawn").Process(target=_serve_node, args=(n, port), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            httpx.post(url + "/wallet/getnowblock", json={}, timeout=2)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("sandbox node did not start")


def seeded_ledger(folder: Path, n: int) -> str:
    from sweeper.ledger import Ledger, NewAddress, make_engine, upgrade

    url = f"sqlite:///{folder / f'scan-{n}.db'}"
    engine = make_engine(url)
    upgrade(engine)
    Ledger(engine).upsert_addresses(NewAddress(a, "import") for a in addresses(n))
    engine.dispose()
    return url


def tokens() -> tuple:  # type: ignore[type-arg]
    from decimal import Decimal

    from sweeper.config import TokenSettings

    return (TokenSettings(symbol="USDT", contract=USDT, decimals=6, min_sweep=Decimal("10")),)


async def our_pass(db_url: str, node_url: str, rps: float, concurrency: int) -> dict[str, float]:
    from sweeper.chain import TronChain
    from sweeper.ledger import Ledger, make_engine
    from sweeper.logs import configure_logging
    from sweeper.scanner import Scanner

    configure_logging(level="WARNING")  # one info line per queued sweep would dominate the figures
    engine = make_engine(db_url)
    ledger = Ledger(engine)
    burst = 1 if rps < 1000 else 1000
    async with TronChain(
        node_url, requests_per_second=rps, burst=burst, max_connections=concurrency
    ) as chain:
        await chain.token_balance(addresses(1)[0], USDT)  # ABI fetched once, outside the timing
        before = chain.requests_sent
        start = time.perf_counter()
        report = await Scanner(ledger, chain, tokens(), page_size=1000, concurrency=concurrency).run_pass()
        seconds = time.perf_counter() - start
        requests = chain.requests_sent - before
    engine.dispose()
    return {
        "addresses": report.addresses,
        "queued": report.queued,
        "seconds": seconds,
        "addresses_per_s": report.addresses / seconds,
        "requests_per_s": requests / seconds,
    }


def naive_loop(node_url: str, sample: list[str]) -> float:
    """What a typical script does: a new sync client and a contract lookup per address."""
    from tronpy import Tron
    from tronpy.providers import HTTPProvider

    start = time.perf_counter()
    for address in sample:
        client = Tron(HTTPProvider(node_url, api_key="benchmark-key"))
        client.get_contract(USDT).functions.balanceOf(address)
    return len(sample) / (time.perf_counter() - start)


async def cpu_per_read(node_url: str, sample: list[str]) -> tuple[float, float]:
    """Client CPU (ms, process time) per balance read: ours vs tronpy's own async contract call.

    Sequential reads, so the figure is CPU per call, not per unit of wall time; both clients are
    created and warmed (ABI fetched) before timing.
    """
    from tronpy import AsyncTron
    from tronpy.providers.async_http import AsyncHTTPProvider

    from sweeper.chain import TronChain

    async with TronChain(node_url, requests_per_second=1e9, burst=1000) as chain:
        await chain.token_balance(sample[0], USDT)
        start = time.process_time()
        for address in sample:
            await chain.token_balance(address, USDT)
        ours = (time.process_time() - start) * 1000 / len(sample)
    async with AsyncTron(AsyncHTTPProvider(node_url, api_key="benchmark-key")) as client:
        contract = await client.get_contract(USDT)
        await contract.functions.balanceOf(sample[0])
        start = time.process_time()
        for address in sample:
            await contract.functions.balanceOf(address)
        theirs = (time.process_time() - start) * 1000 / len(sample)
    return ours, theirs


def rss_child(n: int, node_url: str, folder: Path) -> float:
    """Peak RSS (MB) of a fresh process that runs one whole pass over n addresses."""
    db_url = seeded_ledger(folder, n)
    code = (
        "import asyncio, json, resource, sys; sys.path.insert(0, sys.argv[3]);"
        "import scan_bench as b;"
        "r = asyncio.run(b.our_pass(sys.argv[1], sys.argv[2], 1e9, 16));"
        "r['rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, db_url, node_url, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return float(result["rss_mb"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--quick", action="store_true", help="1,000 / 10,000 addresses instead of 10,000 / 100,000"
    )
    parser.add_argument("--sample", type=int, default=200, help="addresses for the naive loop")
    args = parser.parse_args()
    n_small, n_big = (1_000, 10_000) if args.quick else (10_000, 100_000)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"sandbox node: separate process, {LATENCY_S * 1000:.0f} ms added per request, {n_big} funded addresses"
    )
    node, url = start_node(n_big)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            db_small = seeded_ledger(folder, n_small)
            ours = asyncio.run(our_pass(db_small, url, 1e9, 16))
            naive = naive_loop(url, addresses(n_small)[: args.sample])
            print("\n1. throughput, no rate limit")
            print(f"{'':<8} {'addresses':>10} {'addr/s':>10} {'seconds':>9}")
            print(
                f"{'ours':<8} {ours['addresses']:>10.0f} {ours['addresses_per_s']:>10.1f} {ours['seconds']:>9.2f}"
            )
            print(f"{'naive':<8} {args.sample:>10} {naive:>10.1f} {args.sample / naive:>9.2f}")
            print(f"ratio ours/naive: {ours['addresses_per_s'] / naive:.1f}x (target >= 20x)")

            db_rl = seeded_ledger(Path(tempfile.mkdtemp(dir=tmp)), 1_000)
            limited = asyncio.run(our_pass(db_rl, url, 50, 16))
            print("\n2. with requests_per_second = 50 (1,000 addresses)")
            print(
                f"achieved {limited['requests_per_s']:.1f} req/s = {limited['requests_per_s'] / 50:.0%} of the limit "
                "(target >= 90%)"
            )

            ours_ms, tronpy_ms = asyncio.run(cpu_per_read(url, addresses(n_small)[: args.sample]))
            print(f"\n3. client CPU per balance read ({args.sample} sequential reads, process time)")
            print(f"ours (TronChain.token_balance): {ours_ms:.2f} ms")
            print(f"tronpy AsyncTron contract.functions.balanceOf, client reused: {tronpy_ms:.2f} ms")

            print("\n4. peak RSS of one whole pass (fresh process, node not included)")
            for n in (n_small, n_big):
                print(f"{n:>8} addresses: {rss_child(n, url, folder):.0f} MB (target <= 200 MB)")
    finally:
        node.terminate()
        node.join(10)


if __name__ == "__main__":
    main()
