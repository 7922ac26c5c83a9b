"""The combined sandbox: node + provider over ONE world, as a process (`python -m sweeper.sandbox`)
and in-process (`start_sandbox`), driven over HTTP only through `SandboxControl`.

Everything runs on 127.0.0.1; waits poll observable state with deadlines, never sleep for time.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from sweeper.chain import AccountResources, TronChain
from sweeper.domain import Secret, hex_to_address
from sweeper.provider.client import ProviderClient
from sweeper.provider.errors import OrderOutcomeUnknown
from sweeper.provider.models import CollectOrder
from sweeper.retry import RetryPolicy
from sweeper.sandbox.combined import (
    DEFAULT_BLOCK_INTERVAL,
    DEFAULT_SOLID_LAG,
    Sandbox,
    start_sandbox,
    write_state_file,
)
from sweeper.sandbox.control import SandboxControl, SandboxControlError
from sweeper.sandbox.provider_server import (
    COLLECT_ENERGY_NEW_HOLDER,
    COLLECT_ENERGY_OLD_HOLDER,
    SANDBOX_API_KEY,
    SANDBOX_API_SECRET,
    SWEEP_BANDWIDTH,
)
from sweeper.sandbox.world import USDT_MAINNET, World

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
API_KEY = "e2e-key-31c0"
API_SECRET = "e2e-secret-8a7f"
DEPOSIT = hex_to_address("41" + "a1" * 20)
DEPOSIT_2 = hex_to_address("41" + "a2" * 20)
DEPOSIT_3 = hex_to_address("41" + "a3" * 20)
DESTINATION = hex_to_address("41" + "b1" * 20)
STARTUP_TIMEOUT = 30.0
EXIT_TIMEOUT = 10.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    SandboxControl.wait_until(predicate, timeout=timeout, interval=0.01, what=what)


def provider_client(url: str, api_key: str = API_KEY, api_secret: str = API_SECRET) -> ProviderClient:
    return ProviderClient(
        url,
        Secret(api_key),
        Secret(api_secret),
        retry=RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002),
    )


async def place_order(
    url: str, receive_address: str, *, to_address: str | None, out_trade_no: str, **kwargs: str
) -> CollectOrder:
    async with provider_client(url, **kwargs) as client:
        return await client.collect_manual(receive_address, to_address=to_address, out_trade_no=out_trade_no)


async def resources(node_url: str, address: str) -> AccountResources:
    async with TronChain(node_url, requests_per_second=100, burst=10) as chain:
        return await chain.account_resources(address)


async def token_balance(node_url: str, address: str) -> int:
    async with TronChain(node_url, requests_per_second=100, burst=10) as chain:
        return await chain.token_balance(address)


# --- the process -------------------------------------------------------------------------------


@dataclass
class SandboxProcess:
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    stderr_path: Path

    @property
    def control(self) -> SandboxControl:
        return SandboxControl(self.info["node_url"], self.info["provider_url"])

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def read_announcement(proc: subprocess.Popen[bytes], stderr_path: Path) -> dict[str, Any]:
    """The first stdout line, within a deadline (the process may die or hang instead)."""
    assert proc.stdout is not None
    buffer = b""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no announcement line; stderr:\n{stderr_path.read_text()}")
            if selector.select(timeout=min(left, 0.5)):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    raise AssertionError(
                        f"sandbox exited ({proc.wait(5)}) before announcing; stderr:\n{stderr_path.read_text()}"
                    )
                buffer += chunk
    line = buffer.split(b"\n", 1)[0]
    info = json.loads(line)
    assert isinstance(info, dict)
    return info


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(EXIT_TIMEOUT)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., SandboxProcess]]:
    started: list[subprocess.Popen[bytes]] = []

    def _spawn(*args: str) -> SandboxProcess:
        stderr_path = tmp_path / f"sandbox-{len(started)}.stderr"
        with stderr_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sweeper.sandbox", *args],
                stdout=subprocess.PIPE,
                stderr=stderr,
                cwd=REPO,
            )
        started.append(proc)
        return SandboxProcess(proc, read_announcement(proc, stderr_path), stderr_path)

    try:
        yield _spawn
    finally:
        for proc in started:
            stop_process(proc)


def test_process_announces_its_urls_once_both_listen(
    spawn: Callable[..., SandboxProcess], tmp_path: Path
) -> None:
    state_file = tmp_path / "state" / "sandbox.json"
    sb = spawn(
        "--node-port",
        "0",
        "--provider-port",
        "0",
        "--api-key",
        API_KEY,
        "--api-secret",
        API_SECRET,
        "--state-file",
        str(state_file),
    )
    info = sb.info
    assert info["pid"] == sb.proc.pid
    assert info["api_key"] == API_KEY and info["api_secret"] == API_SECRET
    assert info["usdt_contract"] == USDT_MAINNET
    assert info["node_url"].startswith("http://127.0.0.1:")
    assert info["provider_url"].startswith("http://127.0.0.1:")
    assert info["node_url"] != info["provider_url"]
    assert json.loads(state_file.read_text()) == info
    assert [p.name for p in state_file.parent.iterdir()] == ["sandbox.json"]  # no temp file left
    with sb.control as control:
        state = control.node_state()
        assert state.block_interval == DEFAULT_BLOCK_INTERVAL and state.solid_lag == DEFAULT_SOLID_LAG
        assert control.provider_state().delegation_delay == 0.0
        # The default ticker produces blocks, and solidification trails them.
        wait_until(lambda: control.node_state().solid >= 2, what="solid block 2")
        state = control.node_state()
        assert state.head - state.solid == DEFAULT_SOLID_LAG  # read under the world lock


def test_process_node_and_provider_share_one_world(spawn: Callable[..., SandboxProcess]) -> None:
    sb = spawn(
        "--api-key",
        API_KEY,
        "--api-secret",
        API_SECRET,
        "--delegation-delay",
        "0.05",
        "--block-interval",
        "0",
    )
    node_url, provider_url = sb.info["node_url"], sb.info["provider_url"]
    with sb.control as control:
        # A deposit credited over the node's control route is what the node serves.
        control.credit_token(DEPOSIT, 25_000_000)
        assert run(token_balance(node_url, DEPOSIT)) == 25_000_000
        before = run(resources(node_url, DEPOSIT))
        assert not before.activated and before.energy_limit == 0

        order = run(place_order(provider_url, DEPOSIT, to_address=DESTINATION, out_trade_no="sweep-1"))

        # The provider's delegation (after its delay) shows up on the node, in the same process.
        wait_until(
            lambda: run(resources(node_url, DEPOSIT)).energy_limit == COLLECT_ENERGY_NEW_HOLDER,
            what="delegation visible on the node",
        )
        after = run(resources(node_url, DEPOSIT))
        assert after.activated
        assert after.net_limit == SWEEP_BANDWIDTH
        assert after.energy_available == COLLECT_ENERGY_NEW_HOLDER

        orders = control.orders("sweep-1")
        assert [(o.serial, o.status, o.receive_address) for o in orders] == [(order.serial, 40, DEPOSIT)]
        assert orders[0].to_address == DESTINATION and orders[0].energy_amount == COLLECT_ENERGY_NEW_HOLDER
        assert control.order_counts() == {"sweep-1": 1}
        account = control.account(DEPOSIT)
        assert account.activated and account.usdt == 25_000_000
        assert account.delegated_energy == COLLECT_ENERGY_NEW_HOLDER
        assert account.delegated_bandwidth == SWEEP_BANDWIDTH


def test_process_provider_switches_over_http(spawn: Callable[..., SandboxProcess]) -> None:
    sb = spawn("--delegation-delay", "manual", "--block-interval", "0")
    url = sb.info["provider_url"]
    creds = {"api_key": SANDBOX_API_KEY, "api_secret": SANDBOX_API_SECRET}
    assert (sb.info["api_key"], sb.info["api_secret"]) == (SANDBOX_API_KEY, SANDBOX_API_SECRET)
    with sb.control as control:
        assert control.provider_state().delegation_delay is None
        control.credit_token(DESTINATION, 1)  # an old holder: the 65k order
        order = run(place_order(url, DEPOSIT, to_address=DESTINATION, out_trade_no="m-1", **creds))
        assert [o.status for o in control.orders("m-1")] == [30]
        assert control.account(DEPOSIT).delegated_energy == 0
        state = control.complete(order.serial)
        assert state.orders_by_status == {40: 1}
        assert control.account(DEPOSIT).delegated_energy == COLLECT_ENERGY_OLD_HOLDER

        # A 500 after the order was created: the client cannot know; the provider has one order.
        control.error_after_create(1)
        with pytest.raises(OrderOutcomeUnknown):
            run(place_order(url, DEPOSIT_2, to_address=DESTINATION, out_trade_no="m-2", **creds))
        assert control.provider_state().switches.error_after_create == 0
        assert [o.receive_address for o in control.orders("m-2")] == [DEPOSIT_2]

        control.set_outcome(41)
        refused = run(place_order(url, DEPOSIT_3, to_address=DESTINATION, out_trade_no="m-3", **creds))
        control.complete(refused.serial)
        (m3,) = control.orders(serial=refused.serial)
        assert m3.status == 41 and m3.refund_amount_sun == m3.amount_sun
        assert control.account(DEPOSIT_3).delegated_energy == 0

        state = control.set_provider_switches(
            callbacks_enabled=False, duplicate_callbacks=2, callback_form="pretty", outcome=40
        )
        assert state.switches.callbacks_enabled is False
        assert state.switches.duplicate_callbacks == 2
        assert state.switches.callback_form == "pretty"
        assert state.switches.outcome == 40
        assert control.set_delegation_delay(0.0).delegation_delay == 0.0
        assert control.set_provider_balance(123).balance_sun == 123
        assert control.order_counts() == {"m-1": 1, "m-2": 1, "m-3": 1}


def test_process_node_controls_over_http(spawn: Callable[..., SandboxProcess]) -> None:
    sb = spawn("--block-interval", "0", "--solid-lag", "3")
    with sb.control as control:
        control.credit_trx(DEPOSIT, 5_000_000)
        control.activate(DEPOSIT_2)
        control.delegate_energy(DEPOSIT_2, 1_000)
        control.add_bandwidth(DEPOSIT_2, 500)
        assert control.trx_balance(DEPOSIT) == 5_000_000
        assert control.account(DEPOSIT).activated
        a2 = control.account(DEPOSIT_2)
        assert a2.activated and a2.trx_sun == 0
        assert (a2.delegated_energy, a2.energy_available, a2.bandwidth_available) == (1_000, 1_000, 500)
        assert control.usdt_balance(DEPOSIT_3) == 0 and not control.account(DEPOSIT_3).activated
        assert control.transactions(owner=DEPOSIT) == []

        # Blocks only on demand; solidification trails by 3 and can be held.
        start = control.node_state()
        assert start.block_interval is None and start.solid_lag == 3
        state = control.produce_blocks(5)
        assert state.head == start.head + 5 and state.solid == state.head - 3
        control.hold_solidification()
        held = control.produce_blocks(4)
        assert held.solidification_held and held.solid == state.solid and held.head == state.head + 4
        released = control.release_solidification()
        assert not released.solidification_held and released.solid == released.head - 3

        # The ticker can be started and stopped over HTTP.
        control.set_block_interval(0.02)
        head = control.node_state().head
        wait_until(lambda: control.node_state().head >= head + 3, what="ticker blocks")
        assert control.set_block_interval(0).block_interval is None

        assert control.hold_inclusion().inclusion_held
        assert not control.hold_inclusion(False).inclusion_held
        assert control.advance_time(60).now_ms >= start.now_ms + 60_000
        control.set_node_switches(fail_next=1)
        with httpx.Client(base_url=sb.info["node_url"], trust_env=False) as http:
            assert http.post("/wallet/getnowblock", json={}).status_code == 503
            assert http.post("/wallet/getnowblock", json={}).status_code == 200

        with pytest.raises(SandboxControlError):
            control.account("not-an-address")


def test_process_held_broadcast_is_visible_and_released(spawn: Callable[..., SandboxProcess]) -> None:
    sb = spawn("--block-interval", "0")
    with sb.control as control:
        assert control.hold_broadcasts().held_broadcasts == 0
        answers: list[int] = []

        def broadcast() -> None:
            with httpx.Client(base_url=sb.info["node_url"], trust_env=False, timeout=20) as http:
                answers.append(http.post("/wallet/broadcasttransaction", json={"raw_data": {}}).status_code)

        thread = threading.Thread(target=broadcast)
        thread.start()
        wait_until(lambda: control.node_state().held_broadcasts == 1, what="a held broadcast")
        assert answers == []
        control.release_broadcasts()
        thread.join(10)
        assert answers == [200]  # answered (a rejection of the junk transaction), no longer held
        assert control.node_state().held_broadcasts == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_process_stops_cleanly_on_signal(spawn: Callable[..., SandboxProcess], sig: signal.Signals) -> None:
    sb = spawn()
    with sb.control as control:
        assert control.node_state().head >= 0
    sb.proc.send_signal(sig)
    assert sb.proc.wait(EXIT_TIMEOUT) == 0, sb.stderr()
    assert "Traceback" not in sb.stderr()
    with httpx.Client(trust_env=False, timeout=2) as http, pytest.raises(httpx.ConnectError):
        http.get(f"{sb.info['node_url']}/_sandbox/state")


def test_process_stops_promptly_with_requests_held_open(spawn: Callable[..., SandboxProcess]) -> None:
    sb = spawn("--api-key", API_KEY, "--api-secret", API_SECRET)
    errors: list[BaseException] = []
    with sb.control as control:
        control.hold_broadcasts()
        control.hold_posts("before_create")

        def post_order() -> None:
            try:
                run(place_order(sb.info["provider_url"], DEPOSIT, to_address=None, out_trade_no="held"))
            except BaseException as exc:  # the process is going away: any outcome is fine
                errors.append(exc)

        def broadcast() -> None:
            with httpx.Client(base_url=sb.info["node_url"], trust_env=False, timeout=20) as http:
                try:
                    http.post("/wallet/broadcasttransaction", json={"raw_data": {}})
                except httpx.HTTPError as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=post_order), threading.Thread(target=broadcast)]
        for thread in threads:
            thread.start()
        wait_until(
            lambda: control.provider_state().held_posts == 1 and control.node_state().held_broadcasts == 1,
            what="a held POST and a held broadcast",
        )
    sb.proc.terminate()
    assert sb.proc.wait(EXIT_TIMEOUT) == 0, sb.stderr()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()


# --- in-process --------------------------------------------------------------------------------


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with start_sandbox(block_interval=0, api_key=API_KEY, api_secret=API_SECRET) as running:
        yield running


def test_in_process_sandbox_shares_the_world(sandbox: Sandbox) -> None:
    assert sandbox.node.world is sandbox.world is sandbox.provider.world
    assert sandbox.node_url.startswith("http://127.0.0.1:")
    assert sandbox.provider_url.startswith("http://127.0.0.1:")
    info = sandbox.info()
    assert info["pid"] == os.getpid() and info["api_secret"] == API_SECRET
    world = sandbox.world
    world.credit_token(world.usdt_contract, DESTINATION, 1)
    order = run(place_order(sandbox.provider_url, DEPOSIT, to_address=DESTINATION, out_trade_no="ip-1"))
    assert sandbox.provider.order(order.serial) is not None
    res = run(resources(sandbox.node_url, DEPOSIT))
    assert res.activated and res.energy_limit == COLLECT_ENERGY_OLD_HOLDER
    with SandboxControl(sandbox.node_url, sandbox.provider_url) as control:
        assert control.account(DEPOSIT).delegated_energy == COLLECT_ENERGY_OLD_HOLDER
        control.credit_usdt(DEPOSIT_2, 7)
        assert world.token_balance(world.usdt_contract, DEPOSIT_2) == 7
        assert control.produce_blocks(2).head == world.head.number == 2


def test_in_process_hold_posts_over_http(sandbox: Sandbox) -> None:
    with SandboxControl(sandbox.node_url, sandbox.provider_url) as control:
        control.hold_posts("after_create")
        result: list[CollectOrder] = []
        thread = threading.Thread(
            target=lambda: result.append(
                run(place_order(sandbox.provider_url, DEPOSIT, to_address=None, out_trade_no="h-1"))
            )
        )
        thread.start()
        wait_until(lambda: control.provider_state().held_posts == 1, what="a held POST")
        # The order exists (and delegated: delay 0) while its answer is held.
        assert [o.status for o in control.orders("h-1")] == [40]
        assert control.provider_state().switches.hold == "after_create"
        control.release_posts()
        thread.join(10)
        assert [r.serial for r in result] == [o.serial for o in control.orders("h-1")]
        assert control.provider_state().held_posts == 0


def test_in_process_callbacks_held_and_released_over_http(sandbox: Sandbox) -> None:
    with SandboxControl(sandbox.node_url, sandbox.provider_url) as control:
        control.hold_callbacks()
        order = run(place_order(sandbox.provider_url, DEPOSIT, to_address=None, out_trade_no="cb-1"))
        # No callback_url on the order: nothing to deliver or buffer.
        assert control.provider_state().held_callbacks == 0
        sandbox.provider.default_callback_url = f"{sandbox.node_url}/nowhere"
        control.set_delegation_delay(None)
        second = run(place_order(sandbox.provider_url, DEPOSIT_2, to_address=None, out_trade_no="cb-2"))
        control.complete(second.serial)
        assert control.provider_state().held_callbacks == 1
        control.release_callbacks()
        wait_until(
            lambda: bool(control.orders(serial=second.serial)[0].callback_attempts), what="a callback attempt"
        )
        assert control.orders(serial=order.serial)[0].callback_attempts == ()


def test_unknown_ops_are_refused(sandbox: Sandbox) -> None:
    with httpx.Client(trust_env=False) as http:
        for url in (sandbox.node_url, sandbox.provider_url):
            assert http.post(f"{url}/_sandbox/control", json={"op": "nope"}).status_code == 400
        bad = http.post(f"{sandbox.provider_url}/_sandbox/control", json={"op": "hold_posts", "point": "x"})
        assert bad.status_code == 400


def test_start_sandbox_ticker_and_stop() -> None:
    world = World()
    running = start_sandbox(world, block_interval=0.02, solid_lag=1)
    try:
        assert running.world is world and world.solid_lag == 1
        wait_until(lambda: world.solid_number >= 2, what="ticker blocks")
    finally:
        running.stop()
    running.stop()  # idempotent
    head = world.head.number
    with httpx.Client(trust_env=False, timeout=2) as http:
        for url in (running.node_url, running.provider_url):
            with pytest.raises(httpx.ConnectError):
                http.get(f"{url}/_sandbox/state")
    assert running.node.node.block_interval is None
    assert world.head.number == head  # the ticker is stopped


def test_start_sandbox_rejects_bad_options() -> None:
    with pytest.raises(ValueError):
        start_sandbox(block_interval=-1)
    with pytest.raises(ValueError):
        start_sandbox(delegation_delay=-0.5)


def test_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    target = tmp_path / "sb.json"
    write_state_file(target, {"a": 1})
    write_state_file(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["sb.json"]
