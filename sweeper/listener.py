"""The daemon's HTTP side: provider callbacks, health and metrics (Starlette apps under uvicorn).

* `POST /callback`: a provider callback is only a hint (design.md): verified, it makes its sweep
  due now and the worker re-queries the provider; it never changes a sweep's state by itself. A
  bad signature, a stale timestamp or garbage gets 401 and changes nothing. Bodies over 8 KiB are
  refused (413) without reading more than the limit. This port faces the internet and shares the
  event loop with the pipeline, so a forged callback must cost little: verification checks the
  raw body's HMAC first and parses only small bodies (provider/callbacks.py), and failures beyond
  `max_failed_per_second` (all clients together) are answered 429 after one HMAC, unparsed and
  unlogged (one summary line a minute). Dropping callbacks loses nothing: the worker polls every
  order anyway.
* `GET /healthz`: 200 or 503 with the checks the daemon reports.
* `GET /metrics`: Prometheus text format.

`create_app` serves all three, or only `/callback` when `/healthz` and `/metrics` have a listener
of their own (`create_monitoring_app`, on `[metrics] listen`).

`serve()` runs uvicorn in the caller's event loop (design.md, "How it runs"). The daemon owns the
process's signals: uvicorn must not install its own handlers, or SIGTERM would stop only the
listener (and uvicorn re-raises captured signals when it exits).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from sweeper.errors import LedgerUnavailable
from sweeper.metrics import (
    CALLBACK_ERROR,
    CALLBACK_HINTED,
    CALLBACK_RATE_LIMITED,
    CALLBACK_TOO_LARGE,
    CALLBACK_UNMATCHED,
    CONTENT_TYPE,
    Metrics,
)
from sweeper.provider.callbacks import CallbackRejected, ProviderCallback, RejectionReason

log = structlog.get_logger(__name__)

MAX_CALLBACK_BYTES: Final = 8 * 1024  # a real callback is a few hundred bytes
DEFAULT_MAX_FAILED_PER_SECOND: Final = 10.0  # [callback] max_failed_per_second
REFUSALS_SUMMARY_SECONDS: Final = 60.0  # refusals beyond the budget: one log line this often
HEALTH_TIMEOUT_SECONDS: Final = 10.0
STARTUP_TIMEOUT_SECONDS: Final = 10.0
GRACEFUL_SHUTDOWN_SECONDS: Final = 5.0


@dataclass(frozen=True)
class HealthReport:
    """What `GET /healthz` answers: ok → 200, else 503; `checks` name each check's finding."""

    ok: bool
    checks: dict[str, str] = field(default_factory=dict)


class Verifier(Protocol):
    """`verify_callback` with the daemon's secret and clock; `alternative_forms=False`: the raw
    body's signature only (one HMAC; the body is parsed only if it matches)."""

    def __call__(
        self, headers: Mapping[str, str], body: bytes, *, alternative_forms: bool
    ) -> ProviderCallback | CallbackRejected: ...


HintHandler = Callable[[ProviderCallback], Awaitable[int | None]]
HealthCheck = Callable[[], Awaitable[HealthReport]]


class BodyTooLarge(Exception):
    pass


class BadContentLength(Exception):
    pass


async def read_limited_body(request: Request, limit: int) -> bytes:
    """The request body, or BodyTooLarge as soon as it is known to exceed `limit` bytes.

    A declared Content-Length over the limit is refused before reading anything; a chunked or
    lying body is streamed and abandoned at the first byte over the limit.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            raise BadContentLength(declared[:40])
        if int(declared) > limit:
            raise BodyTooLarge(int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _client(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


class FailureBudget:
    """Refused callbacks allowed per second, all clients together: `per_second` on average, in
    bursts of up to one second's worth (a token bucket on a monotonic clock).

    Within it, a callback gets the full verification and a refusal is logged; beyond it, only the
    raw body's HMAC, and a refusal is answered 429 and counted for the summary line. Overall rather
    than per client: a flood from many addresses must not multiply it.
    """

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(per_second) and per_second > 0):
            raise ValueError(f"max_failed_per_second must be a positive number, got {per_second!r}")
        self.per_second = per_second
        self.capacity = max(1.0, per_second)
        self._tokens = self.capacity
        self._clock = clock
        self._at = clock()

    def available(self) -> bool:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._at) * self.per_second)
        self._at = now
        return self._tokens >= 1.0

    def spend(self) -> None:
        self._tokens -= 1.0


@dataclass
class _Refusals:
    """Refusals beyond the budget: not logged one by one, but summed into one line a minute."""

    clock: Callable[[], float]
    per_second: float
    count: int = 0
    logged_at: float = -math.inf

    def add(self, kind: str) -> None:
        self.count += 1
        now = self.clock()
        if now - self.logged_at >= REFUSALS_SUMMARY_SECONDS:
            log.warning(
                "provider callbacks refused beyond max_failed_per_second: not logged one by one "
                "(callbacks are only hints; the worker polls every order)",
                refused=self.count,
                latest=kind,
                limit_per_second=self.per_second,
            )
            self.count = 0
            self.logged_at = now


def create_app(
    *,
    verify: Verifier,
    on_hint: HintHandler,
    metrics: Metrics,
    health: HealthCheck | None,
    max_body_bytes: int = MAX_CALLBACK_BYTES,
    max_failed_per_second: float = DEFAULT_MAX_FAILED_PER_SECOND,
    health_timeout_seconds: float = HEALTH_TIMEOUT_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Starlette:
    """The callback listener's ASGI app: `/callback`, plus `/healthz` and `/metrics` unless
    `health` is None (they have a listener of their own then: `create_monitoring_app`).

    `verify` runs in the loop: it must be cheap (provider/callbacks.py keeps it under a millisecond).
    """
    budget = FailureBudget(max_failed_per_second, clock)
    beyond = _Refusals(clock, max_failed_per_second)

    def refuse(kind: str) -> bool:
        """Count a refusal against the budget: True (log it) while within it, else summed up."""
        if budget.available():
            budget.spend()
            return True
        beyond.add(kind)
        return False

    async def callback(request: Request) -> Response:
        try:
            body = await read_limited_body(request, max_body_bytes)
        except BodyTooLarge as exc:
            metrics.count_callback(CALLBACK_TOO_LARGE)
            if refuse(CALLBACK_TOO_LARGE):  # answered 413 either way: nothing was read
                log.warning(
                    "provider callback refused: body too large", size=exc.args[0], client=_client(request)
                )
            return JSONResponse(
                {"ok": False, "error": "body_too_large", "limit_bytes": max_body_bytes}, status_code=413
            )
        except BadContentLength:
            metrics.count_callback(RejectionReason.MALFORMED_BODY.value)
            return JSONResponse({"ok": False, "error": "bad_content_length"}, status_code=400)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is left to read it

        # Beyond the budget, only the raw body's HMAC: a genuine callback signed over its bytes
        # still gets through, anything else is refused without being parsed.
        full = budget.available()
        try:
            verdict = verify(request.headers, body, alternative_forms=full)
        except Exception:  # the verifier promises not to raise; garbage must not crash us anyway
            log.exception("callback verifier raised; treating the request as malformed")
            verdict = CallbackRejected(RejectionReason.MALFORMED_BODY, "unverifiable request")
        if not isinstance(verdict, ProviderCallback):
            if not full:
                metrics.count_callback(CALLBACK_RATE_LIMITED)
                beyond.add(verdict.reason.value)
                return JSONResponse({"ok": False, "error": CALLBACK_RATE_LIMITED}, status_code=429)
            budget.spend()
            metrics.count_callback(verdict.reason.value)
            log.warning(
                "provider callback rejected",
                reason=verdict.reason.value,
                detail=verdict.detail,
                client=_client(request),
            )
            return JSONResponse({"ok": False, "error": verdict.reason.value}, status_code=401)

        try:
            sweep_id = await on_hint(verdict)
        except LedgerUnavailable as exc:
            # Verified, but the database is away: the sweep cannot be made due now. A 5xx lets the
            # provider try again; the worker polls the order anyway, so nothing is lost either way.
            metrics.count_callback(CALLBACK_ERROR)
            log.warning("provider callback not recorded: " + str(exc), serial=verdict.serial)
            return JSONResponse({"ok": False, "error": "unavailable"}, status_code=503)
        except Exception:
            metrics.count_callback(CALLBACK_ERROR)  # a bug: the same answer, with its traceback
            log.exception("provider callback: hinting the sweep failed", serial=verdict.serial)
            return JSONResponse({"ok": False, "error": "unavailable"}, status_code=503)
        if sweep_id is None:
            metrics.count_callback(CALLBACK_UNMATCHED)
            log.info(
                "provider callback matched no open sweep (only a hint; ignored)",
                serial=verdict.serial,
                out_trade_no=verdict.out_trade_no,
                status=None if verdict.status is None else int(verdict.status),
            )
        else:
            metrics.count_callback(CALLBACK_HINTED)
        return JSONResponse({"ok": True})

    routes = [Route("/callback", callback, methods=["POST"])]
    if health is not None:
        routes += _monitoring_routes(health, metrics, health_timeout_seconds)
    return Starlette(routes=routes)


def create_monitoring_app(
    *, health: HealthCheck, metrics: Metrics, health_timeout_seconds: float = HEALTH_TIMEOUT_SECONDS
) -> Starlette:
    """`/healthz` and `/metrics` alone, for `[metrics] listen` (not the internet-facing port)."""
    return Starlette(routes=_monitoring_routes(health, metrics, health_timeout_seconds))


def _monitoring_routes(health: HealthCheck, metrics: Metrics, health_timeout_seconds: float) -> list[Route]:
    async def healthz(request: Request) -> Response:
        try:
            report = await asyncio.wait_for(health(), timeout=health_timeout_seconds)
        except TimeoutError:
            report = HealthReport(False, {"health": f"checks timed out after {health_timeout_seconds:g} s"})
        except Exception as exc:
            log.exception("health check raised")
            report = HealthReport(False, {"health": f"checks failed: {type(exc).__name__}"})
        return JSONResponse(
            {"status": "ok" if report.ok else "unhealthy", "checks": dict(report.checks)},
            status_code=200 if report.ok else 503,
            headers={"Cache-Control": "no-store"},
        )

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


# --- serving -----------------------------------------------------------------------------------


class ListenError(OSError):
    """The listen address cannot be bound (in use, not ours, unresolvable)."""


class _Server(uvicorn.Server):
    """uvicorn.Server minus signal handling.

    uvicorn 0.54's `serve()` wraps itself in `capture_signals()`, which replaces the SIGINT and
    SIGTERM handlers with `signal.signal` (bypassing the loop's `add_signal_handler`), and on exit
    restores them and re-raises the captured signals. The daemon installs its own handlers and
    stops us through `Listener.shutdown()`, so this is a no-op here.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind_sockets(host: str, port: int, *, backlog: int = 128) -> list[socket.socket]:
    """Listening TCP sockets for host:port (every address the host resolves to).

    Bound here rather than by uvicorn, whose start-up calls sys.exit(1) on a bind error; this
    raises ListenError naming the address instead, before anything is running.
    """
    try:
        infos = socket.getaddrinfo(
            host or None, port, family=socket.AF_UNSPEC, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ListenError(exc.errno, f"cannot resolve listen host {host!r}: {exc}") from None
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if not sockets:
        raise ListenError(None, f"cannot listen on {host}:{port}: the host resolves to no address")
    return sockets


@dataclass
class Listener:
    """A running listener: uvicorn serving in a task of the current loop."""

    server: uvicorn.Server
    task: asyncio.Task[None]
    sockets: list[socket.socket]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self.sockets]

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.sockets[0].getsockname()[1])

    async def shutdown(self, timeout: float = GRACEFUL_SHUTDOWN_SECONDS) -> None:
        """Stop accepting, let requests in flight finish (up to `timeout`), then stop. Idempotent."""
        self.server.should_exit = True
        if self.task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.task), timeout=timeout + 1.0)
        except TimeoutError:
            log.warning("listener did not stop in time; cancelling it")
            self.server.force_exit = True
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        except Exception:
            log.exception("listener failed while stopping")


async def serve(
    app: ASGIApp,
    host: str,
    port: int,
    *,
    graceful_timeout: float = GRACEFUL_SHUTDOWN_SECONDS,
) -> Listener:
    """Serve `app` on host:port in the running loop; returns once uvicorn is accepting.

    Raises ListenError if the address cannot be bound. Stop it with `await listener.shutdown()`.
    uvicorn leaves logging alone (log_config=None: its loggers go through ours) and writes no
    access log (the callback handler logs what matters).
    """
    sockets = bind_sockets(host, port)
    config = uvicorn.Config(
        app,
        lifespan="off",
        http="h11",
        ws="none",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, int(graceful_timeout)),
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=sockets), name="sweeper-listener")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT_SECONDS
    while not server.started:
        if task.done():
            for sock in sockets:
                sock.close()
            exc = task.exception() if not task.cancelled() else None
            raise ListenError(None, f"listener on {host}:{port} stopped during start-up: {exc!r}")
        if loop.time() > deadline:
            server.should_exit = True
            task.cancel()
            raise ListenError(None, f"listener on {host}:{port} did not start")
        await asyncio.sleep(0.01)
    listener = Listener(server=server, task=task, sockets=sockets)
    log.info("listener running", addresses=[f"{h}:{p}" for h, p in listener.addresses])
    return listener
