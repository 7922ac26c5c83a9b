"""The sandbox node and the sandbox provider in one process, over one shared `World`.

What a delegation the provider makes is what the node serves, so a sweeper pointed at both sees a
coherent chain. Two ways to run it:

In-process (the demo, in-process tests)::

    with start_sandbox() as sandbox:          # sandbox.node_url, sandbox.provider_url, sandbox.world
        sandbox.world.credit_token(sandbox.world.usdt_contract, address, 10_000_000)

As a process (end-to-end tests, where the sweeper is a separate process that gets killed)::

    python -m sweeper.sandbox --node-port 0 --provider-port 0 --state-file /tmp/sb.json

Once both servers listen it prints ONE JSON line to stdout (and writes the same object atomically
to --state-file): {"node_url", "provider_url", "api_key", "api_secret", "pid", "usdt_contract"}.
Nothing else is written to stdout; logs go to stderr (--log-level, default WARNING).
It runs until SIGTERM or SIGINT, then stops both servers and exits 0. Drive it over HTTP with
`sweeper.sandbox.control.SandboxControl`.

Defaults (fast, for e2e tests and the demo; mainnet is a block every 3 s, solid 19 blocks behind):
- a block every 0.2 s (`--block-interval 0` = blocks only on demand, via the control API);
- solidification 2 blocks behind the head;
- the provider delegates at once, before answering the order (`--delegation-delay S` delays it;
  `manual` waits for `SandboxControl.complete(serial)`);
- callback retries on the documented schedule scaled by 0.01 (15 s -> 0.15 s);
- the provider's credentials are the fake's fixed `sandbox-api-key` / `sandbox-api-secret`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

from sweeper.logs import configure_logging
from sweeper.sandbox.node_server import RunningNode, SandboxNode
from sweeper.sandbox.provider_server import SANDBOX_API_KEY, SANDBOX_API_SECRET, SandboxProvider
from sweeper.sandbox.serve import serve_in_thread
from sweeper.sandbox.world import World

HOST: Final = "127.0.0.1"
DEFAULT_BLOCK_INTERVAL: Final = 0.2  # seconds; 0 = on demand only
DEFAULT_SOLID_LAG: Final = 2  # blocks
DEFAULT_DELEGATION_DELAY: Final = 0.0  # seconds; None = only on complete(serial)
DEFAULT_CALLBACK_TIME_SCALE: Final = 0.01
DEFAULT_PROVIDER_BALANCE_SUN: Final = 1_000_000_000_000  # 1M TRX: never the bottleneck unless set


@dataclass
class Sandbox:
    """A running sandbox node + provider over one world. Stop it (or use it as a context manager)."""

    world: World
    node: RunningNode
    provider: SandboxProvider
    provider_url: str
    api_key: str
    api_secret: str
    _stopped: bool = field(default=False, repr=False)
    _stop_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def node_url(self) -> str:
        return self.node.url

    def info(self) -> dict[str, Any]:
        """What the process announces on stdout / in the state file."""
        return {
            "node_url": self.node_url,
            "provider_url": self.provider_url,
            "api_key": self.api_key,
            "api_secret": self.api_secret,
            "pid": os.getpid(),
            "usdt_contract": self.world.usdt_contract,
        }

    def stop(self) -> None:
        """Stop the provider (worker, held POSTs, server), then the node (ticker, held broadcasts)."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            self.provider.stop()
        finally:
            self.node.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sandbox(
    world: World | None = None,
    *,
    node_port: int = 0,
    provider_port: int = 0,
    block_interval: float = DEFAULT_BLOCK_INTERVAL,
    solid_lag: int = DEFAULT_SOLID_LAG,
    delegation_delay: float | None = DEFAULT_DELEGATION_DELAY,
    api_key: str = SANDBOX_API_KEY,
    api_secret: str = SANDBOX_API_SECRET,
    callback_time_scale: float = DEFAULT_CALLBACK_TIME_SCALE,
    provider_balance_sun: int = DEFAULT_PROVIDER_BALANCE_SUN,
) -> Sandbox:
    """Serve a sandbox node and provider on 127.0.0.1 over `world` (a fresh one by default).

    Ports 0 pick free ports. `block_interval` 0 means blocks only on demand. Returns once both
    servers accept connections; on a failure to start, whatever started is stopped again.
    """
    if block_interval < 0:
        raise ValueError("block_interval must be >= 0")
    if solid_lag < 0:
        raise ValueError("solid_lag must be >= 0")
    if delegation_delay is not None and delegation_delay < 0:
        raise ValueError("delegation_delay must be >= 0 or None")
    world = world if world is not None else World()
    node = SandboxNode(world, solid_lag=solid_lag)
    running_node = RunningNode(node, serve_in_thread(node.app, host=HOST, port=node_port))
    try:
        provider = SandboxProvider(
            world,
            api_key=api_key,
            api_secret=api_secret,
            balance_sun=provider_balance_sun,
            delegation_delay=delegation_delay,
            callback_time_scale=callback_time_scale,
        )
        provider_server = provider.start(host=HOST, port=provider_port)
    except BaseException:
        running_node.stop()
        raise
    if block_interval > 0:
        node.start_block_production(block_interval)
    return Sandbox(world, running_node, provider, provider_server.url, api_key, api_secret)


def write_state_file(path: Path, info: dict[str, Any]) -> None:
    """Write `info` as JSON to `path` atomically (a reader sees all of it or no file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(info, fh)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _delegation_delay(text: str) -> float | None:
    if text.lower() in ("manual", "none"):
        return None
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0, or 'manual'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sweeper.sandbox",
        description="sandbox TRON node + itrx.io provider over one shared world, on 127.0.0.1",
    )
    parser.add_argument("--node-port", type=int, default=0, help="0 = a free port (default)")
    parser.add_argument("--provider-port", type=int, default=0, help="0 = a free port (default)")
    parser.add_argument(
        "--block-interval",
        type=float,
        default=DEFAULT_BLOCK_INTERVAL,
        help=f"seconds between blocks; 0 = on demand only (default {DEFAULT_BLOCK_INTERVAL})",
    )
    parser.add_argument(
        "--solid-lag",
        type=int,
        default=DEFAULT_SOLID_LAG,
        help=f"blocks between head and solid (default {DEFAULT_SOLID_LAG})",
    )
    parser.add_argument(
        "--delegation-delay",
        type=_delegation_delay,
        default=DEFAULT_DELEGATION_DELAY,
        help="seconds before an order delegates; 'manual' = only on complete(serial) (default 0)",
    )
    parser.add_argument(
        "--callback-time-scale",
        type=float,
        default=DEFAULT_CALLBACK_TIME_SCALE,
        help=f"scale of the callback retry schedule (default {DEFAULT_CALLBACK_TIME_SCALE})",
    )
    parser.add_argument("--api-key", default=SANDBOX_API_KEY)
    parser.add_argument("--api-secret", default=SANDBOX_API_SECRET)
    parser.add_argument("--state-file", type=Path, default=None, help="also write the JSON here (atomically)")
    parser.add_argument(
        "--log-level", default="WARNING", help="logs go to stderr, never stdout (default WARNING)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.block_interval < 0 or args.solid_lag < 0:
        print("--block-interval and --solid-lag must be >= 0", file=sys.stderr)
        return 2
    # stdout carries the JSON line and nothing else: logs go to stderr.
    configure_logging(level=args.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Before starting anything, so a signal that arrives during startup is not lost.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        sandbox = start_sandbox(
            node_port=args.node_port,
            provider_port=args.provider_port,
            block_interval=args.block_interval,
            solid_lag=args.solid_lag,
            delegation_delay=args.delegation_delay,
            api_key=args.api_key,
            api_secret=args.api_secret,
            callback_time_scale=args.callback_time_scale,
        )
        with sandbox:
            info = sandbox.info()
            if args.state_file is not None:
                write_state_file(args.state_file, info)
            sys.stdout.write(json.dumps(info) + "\n")
            sys.stdout.flush()
            while not stop.wait(0.5):  # wait() in slices: signal handlers run between them
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
