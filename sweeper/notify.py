"""sd_notify(3) without dependencies: tell systemd (Type=notify) we are ready, alive, or stopping.

The protocol is one datagram of newline-separated KEY=VALUE lines to the AF_UNIX socket named by
$NOTIFY_SOCKET (a path, or '@name' for the abstract namespace). Outside systemd the variable is
unset and every call is a cheap no-op returning False: the daemon never depends on the answer,
and a failure to notify must never stop a sweep.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Abstract namespace: a leading NUL byte instead of '@', no trailing NUL.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock:… and anything else: not supported here


def notify(message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1") to $NOTIFY_SOCKET. True if it was sent; never raises."""
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    address = _address(target)
    if address is None:
        log.debug("NOTIFY_SOCKET not supported", notify_socket=target)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.debug("sd_notify failed", notify_socket=target, error=str(exc))
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Start-up finished (systemd's `start` job completes, dependants start)."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def stopping(status: str | None = None) -> bool:
    """We are shutting down on our own terms (a stop signal), not crashing."""
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    """Free text shown by `systemctl status sweeper`."""
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    """Keep-alive: with WatchdogSec=, systemd kills and restarts us if these stop coming."""
    return notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds if systemd expects pings from this process, else None.

    $WATCHDOG_USEC is the timeout; $WATCHDOG_PID, when set, names the process it is meant for (a
    child that inherited the environment must not think it is watched). Ping at half the interval.
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec.isdigit() or int(usec) <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "").strip()
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


async def watchdog_pinger(interval: float | None = None) -> None:
    """Ping the watchdog every half interval until cancelled; returns at once if none is set.

    Run it as its own task in the daemon's loop: a ping from a dedicated task proves the loop is
    alive without depending on a job that may be slow for legitimate reasons.
    """
    timeout = watchdog_interval() if interval is None else interval
    if timeout is None or timeout <= 0:
        return
    while True:
        watchdog()
        await asyncio.sleep(timeout / 2)
