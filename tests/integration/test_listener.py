"""The callback listener: verified callbacks are hints, everything else is refused and changes nothing;
forged or oversized bodies are refused cheaply (never parsed), failures beyond the budget get 429;
with a monitoring app of its own, the callback app serves /callback only.

Most tests drive the Starlette app in process through httpx's ASGI transport (starlette's
TestClient is deprecated with httpx); the `serve` tests run it under real uvicorn on 127.0.0.1 in
the test's own event loop.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from structlog.testing import capture_logs

from sweeper.domain import Secret
from sweeper.errors import LedgerUnavailable
from sweeper.listener import (
    MAX_CALLBACK_BYTES,
    FailureBudget,
    HealthReport,
    Listener,
    ListenError,
    create_app,
    create_monitoring_app,
    serve,
)
from sweeper.metrics import Metrics
from sweeper.provider import callbacks
from sweeper.provider.callbacks import (
    ALTERNATIVE_FORMS_MAX_BYTES,
    CallbackRejected,
    ProviderCallback,
    verify_callback,
)
from sweeper.provider.models import OrderStatus
from sweeper.provider.signing import canonical_json, sign

SECRET = Secret("listener-test-secret")
MAX_AGE = 3600
BODY = {
    "serial": "S20240501ABC",
    "out_trade_no": "42",
    "status": 40,
    "type": "collect_manual",
    "receive_address": "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH",
    "energy_amount": 65000,
    "pay_amount": 65000.5,
}


def signed(
    data: Mapping[str, Any] | bytes = BODY, *, secret: Secret = SECRET, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    body = data if isinstance(data, bytes) else canonical_json(data).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return body, {"TIMESTAMP": ts, "SIGNATURE": sign(secret, ts, body), "Content-Type": "application/json"}


class Harness:
    def __init__(self, hint_result: int | None = 7) -> None:
        self.hints: list[ProviderCallback] = []
        self.hint_result = hint_result
        self.hint_error: Exception | None = None
        self.health_report = HealthReport(True, {"database": "ok", "provider": "ok"})
        self.health_error: Exception | None = None
        self.health_blocks = False
        self.metrics = Metrics()

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, alternative_forms: bool
    ) -> ProviderCallback | CallbackRejected:
        return verify_callback(
            headers, body, api_secret=SECRET, max_age_seconds=MAX_AGE, alternative_forms=alternative_forms
        )

    async def on_hint(self, callback: ProviderCallback) -> int | None:
        self.hints.append(callback)
        if self.hint_error is not None:
            raise self.hint_error
        return self.hint_result

    async def health(self) -> HealthReport:
        if self.health_error is not None:
            raise self.health_error
        if self.health_blocks:
            await asyncio.Event().wait()
        return self.health_report

    def app(self, **kwargs: Any) -> Starlette:
        kwargs.setdefault("health", self.health)
        return create_app(verify=self.verify, on_hint=self.on_hint, metrics=self.metrics, **kwargs)

    def callbacks(self, result: str) -> float:
        return self.metrics.registry.get_sample_value("sweeper_callbacks_total", {"result": result}) or 0.0


@pytest.fixture
def harness() -> Harness:
    return Harness()


class AppClient:
    """A synchronous client for the app in process: one event loop per request."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, client=("127.0.0.1", 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://listener") as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)


@pytest.fixture
def client(harness: Harness) -> AppClient:
    return AppClient(harness.app())


# --- POST /callback ----------------------------------------------------------------------------


def test_valid_callback_hints_once_with_the_parsed_callback(harness: Harness, client: AppClient) -> None:
    body, headers = signed()
    response = client.post("/callback", content=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert len(harness.hints) == 1
    cb = harness.hints[0]
    assert (cb.serial, cb.out_trade_no, cb.status, cb.energy_amount) == (
        "S20240501ABC",
        "42",
        OrderStatus.COMPLETED,
        65000,
    )
    assert cb.raw_body == body
    assert harness.callbacks("hinted") == 1


def test_valid_callback_matching_no_sweep_is_still_200() -> None:
    harness = Harness(hint_result=None)
    body, headers = signed()
    response = AppClient(harness.app()).post("/callback", content=body, headers=headers)
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    assert len(harness.hints) == 1
    assert harness.callbacks("unmatched") == 1


def test_signature_over_the_default_json_form_is_accepted(harness: Harness, client: AppClient) -> None:
    """The provider's docs show both separator styles; the verifier accepts either sorted form."""
    ts = str(int(time.time()))
    sent = json.dumps(BODY, indent=2).encode()
    headers = {"TIMESTAMP": ts, "SIGNATURE": sign(SECRET, ts, json.dumps(BODY, sort_keys=True))}
    assert client.post("/callback", content=sent, headers=headers).status_code == 200
    assert len(harness.hints) == 1


def _reject_cases() -> list[tuple[str, bytes, dict[str, str], str]]:
    body, headers = signed()
    tampered = body.replace(b'"status":40', b'"status":41')
    assert tampered != body
    _, wrong_secret = signed(body, secret=Secret("not-the-secret"))
    stale_body, stale = signed(timestamp=int(time.time()) - MAX_AGE - 60)
    future_body, future = signed(timestamp=int(time.time()) + MAX_AGE + 60)
    no_sig = {k: v for k, v in headers.items() if k != "SIGNATURE"}
    no_ts = {k: v for k, v in headers.items() if k != "TIMESTAMP"}
    garbage, garbage_headers = signed(b"\xff\xfe not json at all \x00")
    array, array_headers = signed(b"[1, 2, 3]")
    nameless, nameless_headers = signed({"status": 40})
    return [
        ("tampered body", tampered, headers, "bad_signature"),
        ("wrong secret", body, wrong_secret, "bad_signature"),
        ("stale timestamp", stale_body, stale, "stale_timestamp"),
        ("future timestamp", future_body, future, "stale_timestamp"),
        ("missing signature", body, no_sig, "missing_signature"),
        ("missing timestamp", body, no_ts, "missing_timestamp"),
        ("no headers at all", body, {}, "missing_timestamp"),
        ("signature not hex", body, {**headers, "SIGNATURE": "zz" * 32}, "bad_signature"),
        ("timestamp not a number", body, {**headers, "TIMESTAMP": "yesterday"}, "bad_timestamp"),
        ("signed garbage", garbage, garbage_headers, "malformed_body"),
        ("signed JSON array", array, array_headers, "malformed_body"),
        ("signed body naming no order", nameless, nameless_headers, "malformed_body"),
        ("empty body", b"", headers, "bad_signature"),
    ]


# The cases are signed when the test runs, not at collection: timestamps must be fresh (a
# "future" one signed minutes earlier would drift into the accepted window on a slow run).
REJECT_CASE_NAMES = [c[0] for c in _reject_cases()]


@pytest.mark.parametrize("case", REJECT_CASE_NAMES)
def test_rejected_callbacks_get_401_and_hint_nothing(harness: Harness, client: AppClient, case: str) -> None:
    [(body, headers, reason)] = [c[1:] for c in _reject_cases() if c[0] == case]
    response = client.post("/callback", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"ok": False, "error": reason}
    assert harness.hints == []
    assert harness.callbacks(reason) == 1
    assert harness.callbacks("hinted") == 0


def test_body_of_8_kib_is_read_and_one_byte_more_is_413(harness: Harness, client: AppClient) -> None:
    def padded(size: int) -> bytes:
        skeleton = canonical_json({**BODY, "pad": ""}).encode()
        body = canonical_json({**BODY, "pad": "x" * (size - len(skeleton))}).encode()
        assert len(body) == size
        return body

    exact, headers = signed(padded(MAX_CALLBACK_BYTES))
    assert client.post("/callback", content=exact, headers=headers).status_code == 200
    assert len(harness.hints) == 1

    over, headers = signed(padded(MAX_CALLBACK_BYTES + 1))
    response = client.post("/callback", content=over, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert len(harness.hints) == 1
    assert harness.callbacks("too_large") == 1


def test_oversized_chunked_body_without_content_length_is_413(harness: Harness, client: AppClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"x" * 8192

    response = client.post("/callback", content=chunks(), headers={"TIMESTAMP": "1", "SIGNATURE": "0" * 64})
    assert response.status_code == 413
    assert harness.hints == []


def test_garbage_content_length_is_400(harness: Harness, client: AppClient) -> None:
    response = client.post("/callback", content=b"{}", headers={"Content-Length": "12abc"})
    assert response.status_code == 400
    assert harness.hints == []


def test_hint_failure_is_503_not_a_crash(harness: Harness, client: AppClient) -> None:
    harness.hint_error = RuntimeError("database is down")
    body, headers = signed()
    response = client.post("/callback", content=body, headers=headers)
    assert response.status_code == 503
    assert response.json() == {"ok": False, "error": "unavailable"}
    assert harness.callbacks("error") == 1


def test_a_ledger_away_is_503_with_a_warning_not_a_traceback(harness: Harness, client: AppClient) -> None:
    harness.hint_error = LedgerUnavailable("database unreachable: connection refused")
    body, headers = signed()
    with capture_logs() as logs:
        response = client.post("/callback", content=body, headers=headers)
    assert response.status_code == 503 and harness.callbacks("error") == 1
    [entry] = [e for e in logs if "callback" in e["event"]]
    assert entry["log_level"] == "warning" and "connection refused" in entry["event"]
    assert "exc_info" not in entry


def test_a_raising_verifier_is_treated_as_malformed(harness: Harness) -> None:
    def broken(
        headers: Mapping[str, str], body: bytes, *, alternative_forms: bool
    ) -> ProviderCallback | CallbackRejected:
        raise ValueError("boom")

    app = create_app(verify=broken, on_hint=harness.on_hint, health=harness.health, metrics=harness.metrics)
    body, headers = signed()
    response = AppClient(app).post("/callback", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "malformed_body"
    assert harness.hints == []


def test_callback_is_post_only(client: AppClient) -> None:
    assert client.get("/callback").status_code == 405


# --- cheap rejection: oversized and forged bodies are never parsed; 429 beyond the budget -----


class ParseCounter:
    """Counts calls of the verifier's one JSON parse (the expensive part of a verification)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = callbacks._parse_callback_json

        def counting(body: bytes) -> Any:
            self.calls += 1
            return original(body)

        monkeypatch.setattr(callbacks, "_parse_callback_json", counting)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> ParseCounter:
    return ParseCounter(monkeypatch)


class StepClock:
    """A monotonic clock that moves only when told (the failure budget refills with time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def forged(data: Mapping[str, Any] | bytes = BODY) -> tuple[bytes, dict[str, str]]:
    """A fresh timestamp and a well-formed signature made with the wrong secret."""
    return signed(data, secret=Secret("a-guessed-secret"))


def big_object(size: int) -> bytes:
    """A JSON object of exactly `size` bytes (one long string field)."""
    skeleton = canonical_json({**BODY, "pad": ""}).encode()
    body = canonical_json({**BODY, "pad": "x" * (size - len(skeleton))}).encode()
    assert len(body) == size
    return body


def test_oversized_and_forged_bodies_are_never_parsed(harness: Harness, parses: ParseCounter) -> None:
    client = AppClient(harness.app())
    over = big_object(MAX_CALLBACK_BYTES + 1)
    _, headers = forged(over)
    assert client.post("/callback", content=over, headers=headers).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x" * 4096

    assert client.post("/callback", content=chunks(), headers=headers).status_code == 413

    # Forged, and too big (or too structured) for the sorted forms: one HMAC, no parse.
    big = big_object(ALTERNATIVE_FORMS_MAX_BYTES + 1)
    structured = canonical_json({**BODY, "pad": [0] * 100}).encode()
    assert len(structured) < ALTERNATIVE_FORMS_MAX_BYTES
    for body in (big, structured):
        response = client.post("/callback", content=body, headers=forged(body)[1])
        assert (response.status_code, response.json()["error"]) == (401, "bad_signature")
    assert parses.calls == 0
    assert harness.hints == []

    # What may be parsed: a small forged body (for the sorted forms), a genuine one (for its fields).
    body, headers = forged()
    assert client.post("/callback", content=body, headers=headers).status_code == 401
    assert parses.calls == 1
    genuine, headers = signed(big)
    assert client.post("/callback", content=genuine, headers=headers).status_code == 200
    assert parses.calls == 2
    assert [cb.serial for cb in harness.hints] == [BODY["serial"]]


def test_failures_beyond_the_budget_get_429_without_parsing(harness: Harness, parses: ParseCounter) -> None:
    clock = StepClock()
    client = AppClient(harness.app(max_failed_per_second=3, clock=clock))
    for _ in range(3):  # within the budget: fully verified, 401 with the reason
        response = client.post("/callback", content=forged()[0], headers=forged()[1])
        assert (response.status_code, response.json()["error"]) == (401, "bad_signature")
    assert parses.calls == 3

    body, headers = forged()
    response = client.post("/callback", content=body, headers=headers)
    assert (response.status_code, response.json()) == (429, {"ok": False, "error": "rate_limited"})
    stale_body, stale = signed(timestamp=int(time.time()) - MAX_AGE - 60)
    assert client.post("/callback", content=stale_body, headers=stale).status_code == 429
    assert parses.calls == 3

    # A genuine callback signed over its raw bytes still gets through (one HMAC, then its parse) …
    body, headers = signed()
    assert client.post("/callback", content=body, headers=headers).status_code == 200
    assert parses.calls == 4 and len(harness.hints) == 1
    # … one signed over a sorted form is dropped unparsed: only a hint, the worker polls the order.
    ts = str(int(time.time()))
    sorted_form = {"TIMESTAMP": ts, "SIGNATURE": sign(SECRET, ts, json.dumps(BODY, sort_keys=True))}
    pretty = json.dumps(BODY, indent=2).encode()
    assert client.post("/callback", content=pretty, headers=sorted_form).status_code == 429
    assert parses.calls == 4 and len(harness.hints) == 1
    assert (harness.callbacks("rate_limited"), harness.callbacks("bad_signature")) == (3, 3)

    clock.now += 1.0  # a second later the budget holds 3 again: verified in full
    assert client.post("/callback", content=pretty, headers=sorted_form).status_code == 200
    assert len(harness.hints) == 2


def test_refusals_beyond_the_budget_are_summed_up_not_logged_one_by_one(harness: Harness) -> None:
    clock = StepClock()
    client = AppClient(harness.app(max_failed_per_second=2, clock=clock))
    over = big_object(MAX_CALLBACK_BYTES + 1)
    with capture_logs() as logs:
        for _ in range(10):
            body, headers = forged()
            client.post("/callback", content=body, headers=headers)
        # Too large is answered 413 either way (nothing was read), but logged within the budget only.
        assert client.post("/callback", content=over, headers=forged(over)[1]).status_code == 413
    rejected = [e for e in logs if e["event"] == "provider callback rejected"]
    summaries = [e for e in logs if e["event"].startswith("provider callbacks refused beyond")]
    assert len(rejected) == 2
    assert [e["refused"] for e in summaries] == [1]  # the first refusal beyond: at once
    assert not any("too large" in e["event"] for e in logs)
    assert harness.callbacks("too_large") == 1

    # The next summary, at the first refusal beyond the budget a minute later, counts everything
    # refused since the first: 7 forged and 1 too large, and itself (the first 2 are within again).
    clock.now += 61.0
    with capture_logs() as logs:
        for _ in range(5):
            body, headers = forged()
            client.post("/callback", content=body, headers=headers)
    summaries = [e for e in logs if e["event"].startswith("provider callbacks refused beyond")]
    assert [e["refused"] for e in summaries] == [7 + 1 + 1]
    assert len([e for e in logs if e["event"] == "provider callback rejected"]) == 2


def test_the_failure_budget_refills_at_its_rate() -> None:
    clock = StepClock()
    budget = FailureBudget(0.5, clock)  # one failure every 2 s; bursts of at least one
    assert budget.available()
    budget.spend()
    assert not budget.available()
    clock.now += 1.0
    assert not budget.available()
    clock.now += 1.0
    assert budget.available()
    clock.now += 3600.0  # idle for an hour: still a burst of one, not 1800
    assert budget.available()
    budget.spend()
    assert not budget.available()
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="max_failed_per_second"):
            FailureBudget(bad, clock)


# --- /healthz and /metrics on a listener of their own ([metrics] listen) ---------------------


def test_callback_app_without_health_serves_only_callback(harness: Harness) -> None:
    client = AppClient(harness.app(health=None))
    body, headers = signed()
    assert client.post("/callback", content=body, headers=headers).status_code == 200
    assert client.get("/healthz").status_code == 404
    assert client.get("/metrics").status_code == 404

    monitoring = AppClient(create_monitoring_app(health=harness.health, metrics=harness.metrics))
    response = monitoring.get("/healthz")
    assert (response.status_code, response.json()["status"]) == (200, "ok")
    assert 'sweeper_callbacks_total{result="hinted"} 1.0' in monitoring.get("/metrics").text
    assert monitoring.post("/callback", content=body, headers=headers).status_code == 404
    assert len(harness.hints) == 1


# --- GET /healthz, GET /metrics ----------------------------------------------------------------


def test_healthz_ok(client: AppClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "provider": "ok"}}


def test_healthz_unhealthy_is_503_with_reasons(harness: Harness, client: AppClient) -> None:
    harness.health_report = HealthReport(False, {"database": "ok", "provider": "unreachable: timeout"})
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unhealthy",
        "checks": {"database": "ok", "provider": "unreachable: timeout"},
    }


def test_healthz_when_the_checks_raise_or_hang(harness: Harness) -> None:
    harness.health_error = RuntimeError("boom")
    client = AppClient(harness.app(health_timeout_seconds=0.2))
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"health": "checks failed: RuntimeError"}

    harness.health_error = None
    harness.health_blocks = True
    response = client.get("/healthz")
    assert response.status_code == 503
    assert "timed out" in response.json()["checks"]["health"]


METRIC_NAMES = [
    "sweeper_sweeps",
    "sweeper_swept_base_units_total",
    "sweeper_energy_spend_sun_total",
    "sweeper_provider_balance_sun",
    "sweeper_detection_lag_seconds",
    "sweeper_node_errors_total",
    "sweeper_provider_errors_total",
    "sweeper_callbacks_total",
    "sweeper_stuck_sweeps",
    "sweeper_held_addresses",
    "sweeper_spent_today_sun",
    "sweeper_ordering_paused",
    "sweeper_scan_address_errors_total",
]


def test_metrics_text_format(harness: Harness, client: AppClient) -> None:
    harness.metrics.swept_base_units.labels(token="USDT").set(15_000_000)
    client.post("/callback", content=b"{}", headers={})
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text or f"# TYPE {name.removesuffix('_total')} counter" in text, name
    assert 'sweeper_sweeps{state="queued"} 0.0' in text
    assert 'sweeper_swept_base_units_total{token="USDT"} 1.5e+07' in text
    assert 'sweeper_callbacks_total{result="missing_timestamp"} 1.0' in text
    assert "sweeper_provider_balance_sun NaN" in text


# --- serve(): uvicorn in the current loop ------------------------------------------------------


def _raw_request(port: int, head: bytes, chunks: list[bytes]) -> bytes:
    """Send a request head and as many body chunks as the server takes; return what it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    return answer


def test_serve_runs_in_the_current_loop_without_touching_signals(harness: Harness) -> None:
    async def main() -> None:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        listener = await serve(harness.app(), "127.0.0.1", 0)
        try:
            assert isinstance(listener, Listener)
            assert listener.server.started
            # uvicorn normally swaps in its own SIGINT/SIGTERM handlers while serving: not here.
            assert {sig: signal.getsignal(sig) for sig in before} == before
            base = f"http://127.0.0.1:{listener.port}"
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                body, headers = signed()
                response = await client.post("/callback", content=body, headers=headers)
                assert (response.status_code, response.json()) == (200, {"ok": True})
                bad = await client.post("/callback", content=body, headers={**headers, "TIMESTAMP": "1"})
                assert bad.status_code == 401
                assert (await client.get("/healthz")).status_code == 200
                metrics = await client.get("/metrics")
                assert 'sweeper_callbacks_total{result="hinted"} 1.0' in metrics.text
                assert "server" not in response.headers

            # A declared oversize body is refused before it is read; a chunked one while streaming.
            head = (
                f"POST /callback HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_CALLBACK_BYTES + 1}\r\n\r\n"
            ).encode()
            answer = await asyncio.to_thread(_raw_request, listener.port, head, [])
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
            head = b"POST /callback HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            chunk = b"2000\r\n" + b"x" * 0x2000 + b"\r\n"
            answer = await asyncio.to_thread(_raw_request, listener.port, head, [chunk] * 9)
            assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
            assert len(harness.hints) == 1
        finally:
            await listener.shutdown()
        assert listener.task.done()
        await listener.shutdown()  # idempotent
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", listener.port), timeout=2).close()
        assert {sig: signal.getsignal(sig) for sig in before} == before

    asyncio.run(main())


def test_shutdown_lets_a_request_in_flight_finish(harness: Harness) -> None:
    async def main() -> None:
        entered = asyncio.Event()
        release = asyncio.Event()

        async def slow_hint(callback: ProviderCallback) -> int | None:
            entered.set()
            await release.wait()
            return 1

        app = create_app(
            verify=harness.verify, on_hint=slow_hint, health=harness.health, metrics=harness.metrics
        )
        listener = await serve(app, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}", timeout=10) as client:
            body, headers = signed()
            request = asyncio.create_task(client.post("/callback", content=body, headers=headers))
            await asyncio.wait_for(entered.wait(), 5)
            stopping = asyncio.create_task(listener.shutdown())
            await asyncio.sleep(0)  # let shutdown begin while the request is in flight
            assert not stopping.done()
            release.set()
            response = await asyncio.wait_for(request, 5)
            await asyncio.wait_for(stopping, 10)
        assert response.status_code == 200
        assert listener.task.done()

    asyncio.run(main())


def test_serve_on_a_taken_port_raises_listen_error(harness: Harness) -> None:
    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with pytest.raises(ListenError, match=f"127.0.0.1:{port}"):
                await serve(harness.app(), "127.0.0.1", port)

    asyncio.run(main())
