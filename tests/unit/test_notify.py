"""sd_notify over a real AF_UNIX datagram socket (a path and the abstract namespace)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeper import notify


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket at a path, named by $NOTIFY_SOCKET, as systemd would provide."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


@pytest.fixture
def abstract_receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"sweeper-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.notify("READY=1") is False
    assert notify.ready() is False
    assert notify.stopping() is False
    assert notify.watchdog() is False


def test_ready_over_a_path_socket(receiver: socket.socket) -> None:
    assert notify.ready() is True
    assert receiver.recv(4096) == b"READY=1"


def test_messages_with_status(receiver: socket.socket) -> None:
    assert notify.ready("sweeping 3 tokens")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=sweeping 3 tokens"
    assert notify.stopping()
    assert receiver.recv(4096) == b"STOPPING=1"
    assert notify.watchdog()
    assert receiver.recv(4096) == b"WATCHDOG=1"
    assert notify.status("idle")
    assert receiver.recv(4096) == b"STATUS=idle"


def test_abstract_namespace_socket(abstract_receiver: socket.socket) -> None:
    assert notify.notify("WATCHDOG=1") is True
    assert abstract_receiver.recv(4096) == b"WATCHDOG=1"


def test_explicit_environ_is_used_instead_of_os_environ(tmp_path: Path) -> None:
    path = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        assert notify.notify("READY=1", environ={"NOTIFY_SOCKET": str(path)}) is True
        assert sock.recv(4096) == b"READY=1"


def test_unreachable_or_unsupported_sockets_return_false_and_never_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert notify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", f"@sweeper-test-nobody-{uuid.uuid4().hex}")
    assert notify.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "relative/path.sock")
    assert notify.ready() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "1500000"}, 1.5),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "{pid}"}, 60.0),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "{other}"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "garbage"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "sixty"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    pid = os.getpid()
    environ = {k: v.format(pid=pid, other=pid + 1) for k, v in env.items()}
    assert notify.watchdog_interval(environ) == expected


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 20.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert notify.watchdog_interval() is None


def test_watchdog_pinger_pings_until_cancelled(receiver: socket.socket) -> None:
    async def main() -> list[bytes]:
        receiver.setblocking(False)
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(notify.watchdog_pinger(0.02))
        try:
            return [await asyncio.wait_for(loop.sock_recv(receiver, 4096), 5) for _ in range(3)]
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    assert asyncio.run(main()) == [b"WATCHDOG=1"] * 3


def test_watchdog_pinger_returns_at_once_without_a_watchdog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    asyncio.run(asyncio.wait_for(notify.watchdog_pinger(), 5))
