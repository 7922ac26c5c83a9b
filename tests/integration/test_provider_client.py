"""ProviderClient against the sandbox provider over real HTTP on 127.0.0.1 (and, for transport
failures a live server cannot produce on demand, against httpx.MockTransport)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from structlog.testing import capture_logs

from sweeper.domain import InvalidAddress, Secret, hex_to_address, utcnow
from sweeper.errors import ProviderError
from sweeper.provider.client import API_PREFIX, ProviderClient, Timeouts
from sweeper.provider.errors import (
    InsufficientProviderBalance,
    OrderOutcomeUnknown,
    OrderRejected,
    ProviderAuthError,
    ProviderUnavailable,
    UnexpectedAnswer,
)
from sweeper.provider.models import CollectOrder, Order, OrderNotFound, OrderStatus
from sweeper.provider.signing import sign
from sweeper.retry import RetryPolicy
from sweeper.sandbox.provider_server import (
    COLLECT_ENERGY_NEW_HOLDER,
    COLLECT_ENERGY_OLD_HOLDER,
    HoldPoint,
    SandboxProvider,
)
from sweeper.sandbox.world import World

T = TypeVar("T")

API_KEY = "it-api-key-5f1e"
API_SECRET = "it-api-secret-9c2d7e"
DEPOSIT = hex_to_address("41" + "11" * 20)
DEPOSIT_2 = hex_to_address("41" + "22" * 20)
DESTINATION = hex_to_address("41" + "33" * 20)
FAST_RETRY = RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.002)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def sandbox(world: World) -> Iterator[SandboxProvider]:
    provider = SandboxProvider(world, api_key=API_KEY, api_secret=API_SECRET, delegation_delay=None)
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


def make_client(
    base_url: str,
    *,
    api_key: str = API_KEY,
    api_secret: str = API_SECRET,
    **kwargs: Any,
) -> ProviderClient:
    kwargs.setdefault("retry", FAST_RETRY)
    return ProviderClient(base_url, Secret(api_key), Secret(api_secret), **kwargs)


async def with_client(base_url: str, action: Callable[[ProviderClient], Awaitable[T]], **kwargs: Any) -> T:
    async with make_client(base_url, **kwargs) as client:
        return await action(client)


def assert_no_secrets(*texts: object) -> None:
    for text in texts:
        assert API_SECRET not in str(text)
        assert API_KEY not in str(text)


# --- the happy path ----------------------------------------------------------------------------


def test_collect_manual_creates_a_charged_order_and_query_finds_it(sandbox: SandboxProvider) -> None:
    balance_before = sandbox.balance_sun

    async def scenario(
        client: ProviderClient,
    ) -> tuple[CollectOrder, Order | OrderNotFound, Order | OrderNotFound]:
        order = await client.collect_manual(
            DEPOSIT, to_address=DESTINATION, out_trade_no="17", callback_url=None, scene=0
        )
        return (
            order,
            await client.query_order(serial=order.serial),
            await client.query_order(out_trade_no="17"),
        )

    order, by_serial, by_out_trade_no = run(with_client(sandbox.url, scenario))
    assert order.amount_sun == sandbox.price_new_holder_sun  # DESTINATION holds no USDT
    assert order.balance_sun == balance_before - order.amount_sun == sandbox.balance_sun
    assert order.out_trade_no == "17" and order.scene == 0
    for found in (by_serial, by_out_trade_no):
        assert isinstance(found, Order)
        assert found.serial == order.serial
        assert found.receive_address == DEPOSIT
        assert found.status is OrderStatus.PREPARING
        assert not found.status.is_final
        assert found.amount_sun == order.amount_sun
        assert found.energy_amount == COLLECT_ENERGY_NEW_HOLDER
        assert found.create_time is not None and found.create_time.tzinfo is not None
        assert abs(found.create_time - utcnow()) < timedelta(minutes=1)
    assert [o.serial for o in sandbox.orders_by_out_trade_no("17")] == [order.serial]


def test_completed_order_reads_as_final_success(sandbox: SandboxProvider, world: World) -> None:
    world.credit_token(world.usdt_contract, DESTINATION, 1)

    async def scenario(client: ProviderClient) -> tuple[str, Order | OrderNotFound]:
        order = await client.collect_manual(DEPOSIT, to_address=DESTINATION, out_trade_no="18")
        sandbox.complete(order.serial)
        return order.serial, await client.query_order(serial=order.serial)

    _, found = run(with_client(sandbox.url, scenario))
    assert isinstance(found, Order)
    assert found.status.is_final and found.status.is_success
    assert found.energy_amount == COLLECT_ENERGY_OLD_HOLDER
    assert found.delegated_energy == COLLECT_ENERGY_OLD_HOLDER
    assert len(found.details) == 1 and found.details[0].delegate_hash
    assert world.account(DEPOSIT).delegated_energy == COLLECT_ENERGY_OLD_HOLDER


def test_unknown_order_is_a_not_found_value(sandbox: SandboxProvider) -> None:
    async def scenario(client: ProviderClient) -> tuple[Order | OrderNotFound, Order | OrderNotFound]:
        return await client.query_order(serial="nope"), await client.query_order(out_trade_no="404")

    by_serial, by_out_trade_no = run(with_client(sandbox.url, scenario))
    assert isinstance(by_serial, OrderNotFound) and by_serial.serial == "nope" and not by_serial.found
    assert isinstance(by_out_trade_no, OrderNotFound) and by_out_trade_no.out_trade_no == "404"
    assert by_serial.message == "找不到订单"


def test_index_data_and_price(sandbox: SandboxProvider, world: World) -> None:
    world.credit_token(world.usdt_contract, DESTINATION, 5)

    async def scenario(client: ProviderClient) -> Any:
        return (
            await client.index_data(),
            await client.price(period="1H", energy_amount=32_000),
            await client.price(to_address=DESTINATION),
            await client.price(to_address=DEPOSIT_2),
        )

    info, by_energy, old_holder, new_holder = run(with_client(sandbox.url, scenario))
    assert info.balance_sun == sandbox.balance_sun
    assert info.usdt_energy_need_old == COLLECT_ENERGY_OLD_HOLDER
    assert info.usdt_energy_need_new == COLLECT_ENERGY_NEW_HOLDER
    assert info.tiered_pricing[0].period == 0 and info.tiered_pricing[0].price_sun == 100
    assert by_energy.total_price_sun == 32_000 * 100 + 600_000 and by_energy.addition_sun == 600_000
    assert old_holder.total_price_sun == sandbox.price_old_holder_sun
    assert new_holder.total_price_sun == sandbox.price_new_holder_sun


def test_malformed_addresses_are_refused_before_sending(sandbox: SandboxProvider) -> None:
    with pytest.raises(InvalidAddress):
        run(with_client(sandbox.url, lambda c: c.collect_manual("T" + "1" * 33)))
    with pytest.raises(InvalidAddress):
        run(with_client(sandbox.url, lambda c: c.collect_manual(DEPOSIT, to_address="0xdead")))
    assert sandbox.post_count == 0


# --- each error class from a realistic sandbox answer ------------------------------------------


def test_wrong_api_key_is_an_auth_error_for_posts_and_gets(sandbox: SandboxProvider) -> None:
    with pytest.raises(ProviderAuthError) as post_exc:
        run(with_client(sandbox.url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="1"), api_key="wrong"))
    assert post_exc.value.http_status == 403
    with pytest.raises(ProviderAuthError):
        run(with_client(sandbox.url, lambda c: c.query_order(serial="x"), api_key="wrong"))
    with pytest.raises(ProviderAuthError):
        run(with_client(sandbox.url, lambda c: c.index_data(), api_key="wrong"))
    assert sandbox.orders == {}


def test_index_data_empty_answer_to_a_wrong_key_is_an_auth_error(sandbox: SandboxProvider) -> None:
    """The docs' reading: index-data answers a wrong key with empty data, not 403."""
    sandbox.set_switches(index_data_empty_on_bad_key=True)
    with pytest.raises(ProviderAuthError):
        run(with_client(sandbox.url, lambda c: c.index_data(), api_key="wrong"))


def test_low_balance_is_insufficient_provider_balance(sandbox: SandboxProvider) -> None:
    sandbox.set_balance(1_000_000)  # 1 TRX: below the order price and the client's threshold
    with pytest.raises(InsufficientProviderBalance) as exc:
        run(with_client(sandbox.url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="2")))
    assert exc.value.balance_sun == 1_000_000
    assert exc.value.errno == 1 and exc.value.message == "余额不足"
    assert exc.value.raw is not None and "余额不足" in json.loads(exc.value.raw)["message"]
    assert sandbox.orders == {} and sandbox.balance_sun == 1_000_000


def test_refusal_with_enough_balance_is_order_rejected_with_the_raw_message(sandbox: SandboxProvider) -> None:
    # A wrong secret: the provider answers errno 1, and the account balance is fine.
    with pytest.raises(OrderRejected) as exc:
        run(
            with_client(
                sandbox.url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="3"), api_secret="wrong"
            )
        )
    assert exc.value.errno == 1 and exc.value.message == "签名错误"
    assert exc.value.raw is not None and json.loads(exc.value.raw)["errno"] == 1
    assert sandbox.orders == {}


def test_stale_timestamp_is_refused_and_creates_nothing(sandbox: SandboxProvider) -> None:
    def skewed() -> Any:
        return utcnow() - timedelta(minutes=10)

    with pytest.raises(OrderRejected) as exc:
        run(with_client(sandbox.url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="4"), clock=skewed))
    assert exc.value.message == "时间戳错误"
    assert sandbox.orders == {}


def test_field_errors_are_order_rejected_with_the_fields(sandbox: SandboxProvider) -> None:
    with pytest.raises(OrderRejected) as exc:
        run(with_client(sandbox.url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="x" * 300)))
    assert exc.value.http_status == 400
    assert set(exc.value.field_errors) == {"out_trade_no"}
    assert sandbox.orders == {}


def test_5xx_after_the_order_was_created_is_outcome_unknown_and_never_retried(
    sandbox: SandboxProvider,
) -> None:
    sandbox.set_switches(error_after_create=1)
    with pytest.raises(OrderOutcomeUnknown) as exc:
        run(with_client(sandbox.url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="5")))
    assert exc.value.http_status == 500
    assert sandbox.post_count == 1  # no blind retry
    found = run(with_client(sandbox.url, lambda c: c.query_order(out_trade_no="5")))
    assert isinstance(found, Order)
    assert [o.serial for o in sandbox.orders_by_out_trade_no("5")] == [found.serial]


def test_post_timing_out_after_creation_is_outcome_unknown_and_query_finds_exactly_one(
    sandbox: SandboxProvider,
) -> None:
    sandbox.hold_posts(HoldPoint.AFTER_CREATE)
    timeouts = Timeouts(connect=1.0, read=0.3, write=1.0, pool=1.0, total=5.0)
    try:
        with pytest.raises(OrderOutcomeUnknown):
            run(
                with_client(
                    sandbox.url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="6"), timeouts=timeouts
                )
            )
        # The client gave up after 0.3 s; the sandbox may be slower than that to take the POST in.
        # Held after creation: once it is held, the order exists.
        sandbox.wait_until(lambda: sandbox.held_count == 1)
        assert sandbox.post_count == 1
        found = run(with_client(sandbox.url, lambda c: c.query_order(out_trade_no="6")))
        assert isinstance(found, Order)
        assert found.receive_address == DEPOSIT
        assert [o.serial for o in sandbox.orders_by_out_trade_no("6")] == [found.serial]
    finally:
        sandbox.release_posts()


def test_post_held_before_creation_may_still_create_the_order_later(sandbox: SandboxProvider) -> None:
    """Why the pipeline waits a grace period after an unknown outcome before trusting 'not found'."""
    sandbox.hold_posts(HoldPoint.BEFORE_CREATE)
    timeouts = Timeouts(read=0.3, total=5.0)
    try:
        with pytest.raises(OrderOutcomeUnknown):
            run(
                with_client(
                    sandbox.url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="7"), timeouts=timeouts
                )
            )
        assert isinstance(
            run(with_client(sandbox.url, lambda c: c.query_order(out_trade_no="7"))), OrderNotFound
        )
    finally:
        sandbox.release_posts()
    sandbox.wait_until(lambda: len(sandbox.orders_by_out_trade_no("7")) == 1)
    assert isinstance(run(with_client(sandbox.url, lambda c: c.query_order(out_trade_no="7"))), Order)


def test_total_timeout_bounds_an_attempt_even_when_httpx_timeouts_are_generous(
    sandbox: SandboxProvider,
) -> None:
    sandbox.hold_posts(HoldPoint.BEFORE_CREATE)
    timeouts = Timeouts(connect=30, read=30, write=30, pool=30, total=0.3)
    started = time.monotonic()
    try:
        with pytest.raises(OrderOutcomeUnknown):
            run(
                with_client(
                    sandbox.url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="8"), timeouts=timeouts
                )
            )
        elapsed = time.monotonic() - started
    finally:
        sandbox.release_posts()
    # The total bound ended it, not httpx's 30 s read timeout.
    assert elapsed < 5.0
    sandbox.wait_until(lambda: len(sandbox.orders_by_out_trade_no("8")) == 1)


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_connection_refused_is_retried_then_unavailable_for_post_and_get() -> None:
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    url = f"http://127.0.0.1:{_closed_port()}"
    retry = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.04)
    with pytest.raises(ProviderUnavailable) as post_exc:
        run(
            with_client(url, lambda c: c.collect_manual(DEPOSIT, out_trade_no="9"), retry=retry, sleep=record)
        )
    assert len(sleeps) == 2 and 0.005 <= sleeps[0] <= 0.01 and 0.01 <= sleeps[1] <= 0.02
    assert "could not be sent" in str(post_exc.value)
    sleeps.clear()
    with pytest.raises(ProviderUnavailable):
        run(with_client(url, lambda c: c.index_data(), retry=retry, sleep=record))
    assert len(sleeps) == 2


# --- transport behaviour a live server cannot easily show: MockTransport ------------------------

Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(handler: Handler, **kwargs: Any) -> ProviderClient:
    return make_client("https://provider.test", transport=httpx.MockTransport(handler), **kwargs)


async def using(client: ProviderClient, action: Callable[[ProviderClient], Awaitable[T]]) -> T:
    async with client:
        return await action(client)


def ok_order(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, json={"errno": 0, "serial": "s1", "scene": 0, "amount": 4_000_000, "balance": 9}
    )


def test_the_signed_bytes_are_the_sent_bytes_and_gets_are_unsigned() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json={"errno": 404, "message": "找不到订单"})
        return ok_order(request)

    client = mock_client(handler)

    async def scenario(c: ProviderClient) -> None:
        await c.collect_manual(DEPOSIT, out_trade_no="10", callback_url="https://me.test/cb?a=1&b=2")
        await c.query_order(serial="s1", out_trade_no="10")

    run(using(client, scenario))
    post, get = seen
    assert post.url.path == f"{API_PREFIX}/order/collect-manual"
    body = post.content
    assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    assert json.loads(body) == {
        "scene": 0,
        "receive_address": DEPOSIT,
        "out_trade_no": "10",
        "callback_url": "https://me.test/cb?a=1&b=2",
    }
    assert post.headers["API-KEY"] == API_KEY
    assert post.headers["SIGNATURE"] == sign(API_SECRET, post.headers["TIMESTAMP"], body)
    assert abs(int(post.headers["TIMESTAMP"]) - utcnow().timestamp()) < 60
    assert get.url.path == f"{API_PREFIX}/order/query"
    assert dict(get.url.params) == {"serial": "s1"}  # serial wins
    assert get.headers["API-KEY"] == API_KEY
    assert "SIGNATURE" not in get.headers and "TIMESTAMP" not in get.headers


def test_post_connect_failure_is_retried_with_the_same_body_and_a_fresh_signature() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            raise httpx.ConnectError("refused", request=request)
        return ok_order(request)

    order = run(using(mock_client(handler), lambda c: c.collect_manual(DEPOSIT, out_trade_no="11")))
    assert order.serial == "s1"
    assert len(seen) == 2 and seen[0].content == seen[1].content
    for request in seen:
        assert request.headers["SIGNATURE"] == sign(API_SECRET, request.headers["TIMESTAMP"], request.content)


@pytest.mark.parametrize(
    "failure",
    [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError],
)
def test_post_failure_after_sending_is_outcome_unknown_without_retry(
    failure: type[httpx.TransportError],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise failure("lost", request=request)

    with pytest.raises(OrderOutcomeUnknown):
        run(using(mock_client(handler), lambda c: c.collect_manual(DEPOSIT, out_trade_no="12")))
    assert len(seen) == 1


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(502, text="<html>bad gateway</html>"),
        httpx.Response(200, text="<html>maintenance</html>"),
        httpx.Response(200, json={"serial": "s1"}),  # no errno
        httpx.Response(200, json={"errno": 0, "serial": "s1", "amount": 1.5, "balance": 2}),  # fractional sun
        httpx.Response(200, json={"errno": 0, "amount": 1, "balance": 2}),  # no serial
        httpx.Response(200, json={"errno": 0, "serial": "s1", "amount": "²", "balance": 2}),
        httpx.Response(200, json={"errno": 0, "serial": "s1", "amount": "--5", "balance": 2}),
        httpx.Response(200, json={"errno": 0, "serial": "s1", "amount": " 5", "balance": 2}),
        httpx.Response(200, json={"errno": 0, "serial": "s1", "amount": "1e3", "balance": 2}),
        httpx.Response(200, json={"errno": 0, "serial": "s1", "amount": "9" * 5000, "balance": 2}),
        httpx.Response(
            200, json={"errno": 0, "serial": "s1", "amount": -4_000_000, "balance": 2}
        ),  # negative
        httpx.Response(200, json={"errno": 0, "serial": "s1", "amount": 1, "balance": "-2"}),
        httpx.Response(200, json={"errno": 0, "serial": ["s1"], "amount": 1, "balance": 2}),
        httpx.Response(200, text='{"errno": 0, "serial": "s1", "amount": 1e999999999, "balance": 2}'),
        httpx.Response(200, json={"errno": "²", "serial": "s1", "amount": 1, "balance": 2}),
        httpx.Response(418, text="teapot"),
    ],
)
def test_post_answers_that_cannot_be_read_are_outcome_unknown(response: httpx.Response) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return response

    with pytest.raises(OrderOutcomeUnknown) as exc:
        run(using(mock_client(handler), lambda c: c.collect_manual(DEPOSIT, out_trade_no="13")))
    assert len(calls) == 1
    assert exc.value.raw is not None


def test_an_accepted_order_whose_answer_breaks_the_parser_is_outcome_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a parser bug")

    monkeypatch.setattr("sweeper.provider.client._req_sun", broken)
    with pytest.raises(OrderOutcomeUnknown) as exc:
        run(using(mock_client(ok_order), lambda c: c.collect_manual(DEPOSIT, out_trade_no="13")))
    assert exc.value.errno == 0 and exc.value.raw is not None and '"serial":"s1"' in exc.value.raw
    assert "KeyError" in str(exc.value)


def test_unsupported_base_url_fails_at_once_without_retries() -> None:
    sleeps: list[float] = []

    async def record(delay: float) -> None:
        sleeps.append(delay)

    for url in ("provider.example:443", "ftp://provider.example"):
        for action in (lambda c: c.collect_manual(DEPOSIT, out_trade_no="9"), lambda c: c.index_data()):
            with pytest.raises(ProviderUnavailable) as exc:
                run(with_client(url, action, sleep=record))
            assert "http:// or https://" in str(exc.value) and "configuration" in str(exc.value)
    assert sleeps == []


def test_refusal_when_the_balance_cannot_be_checked_is_unavailable_not_rejected() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"errno": 1, "message": "某个错误"})
        return httpx.Response(503)

    with pytest.raises(ProviderUnavailable) as exc:
        run(using(mock_client(handler), lambda c: c.collect_manual(DEPOSIT, out_trade_no="14")))
    assert exc.value.message == "某个错误"


def test_400_detail_is_classified_by_the_balance() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(400, json={"detail": "API not found"})
        return httpx.Response(200, json={})  # index-data: wrong key reads as empty data

    with pytest.raises(ProviderAuthError):
        run(using(mock_client(handler), lambda c: c.collect_manual(DEPOSIT, out_trade_no="15")))


def test_gets_retry_5xx_and_transport_errors_then_succeed() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(503)
        if len(calls) == 2:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(200, json={"balance": 5, "usdt_energy_need_old": 65000})

    info = run(
        using(
            mock_client(handler, retry=RetryPolicy(attempts=3, base_delay=0, max_delay=0)),
            lambda c: c.index_data(),
        )
    )
    assert info.balance_sun == 5 and len(calls) == 3


def test_gets_give_up_after_the_policy_and_do_not_retry_4xx() -> None:
    calls: list[int] = []

    def failing(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500)

    with pytest.raises(ProviderUnavailable):
        run(using(mock_client(failing), lambda c: c.query_order(serial="s")))
    assert len(calls) == FAST_RETRY.attempts
    calls.clear()

    def bad_request(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(400, json={"serial": ["This field is required."]})

    with pytest.raises(UnexpectedAnswer) as exc:
        run(using(mock_client(bad_request), lambda c: c.query_order(serial="s")))
    assert len(calls) == 1 and exc.value.message is not None and "serial" in exc.value.message


def test_query_answers_are_parsed_defensively() -> None:
    answers = [
        {"errno": 0, "order_no": "a", "receive_address": DEPOSIT, "status": 99, "create_time": "garbage"},
        {"errno": 1, "message": "参数错误"},
        {"errno": 0, "order_no": "a"},  # no status
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers.pop(0))

    client = mock_client(handler)

    async def scenario(c: ProviderClient) -> list[Any]:
        results: list[Any] = []
        for _ in range(3):
            try:
                results.append(await c.query_order(serial="a"))
            except ProviderError as exc:
                results.append(exc)
        return results

    unknown, failed, malformed = run(using(client, scenario))
    assert isinstance(unknown, Order)
    assert int(unknown.status) == 99 and not unknown.status.is_final and unknown.create_time is None
    assert isinstance(failed, UnexpectedAnswer) and failed.errno == 1 and failed.message == "参数错误"
    assert isinstance(malformed, UnexpectedAnswer)


@pytest.mark.parametrize(
    "answer",
    [
        {"status": "²"},
        {"status": "--5"},
        {"status": " 40"},
        {"status": 40, "amount": "1e3"},
        {"status": 40, "amount": -1},
        {"status": 40, "refund_amount": "-5"},
        {"status": 40, "energy_amount": "١٢"},
        {"status": 40, "pay_amount": "NaN"},
        {"status": 40, "pay_amount": "1_0"},
        {"status": 40, "details": 5},
        {"status": 40, "details": "abc"},
        {"status": 40, "details": [{"status": "²"}]},
        {"status": 40, "receive_address": {"a": 1}},
    ],
)
def test_odd_query_answers_are_unexpected_answers_never_bare_exceptions(answer: dict[str, Any]) -> None:
    body = {"errno": 0, "order_no": "a", "receive_address": DEPOSIT, **answer}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=body)

    with pytest.raises(UnexpectedAnswer) as exc:
        run(using(mock_client(handler), lambda c: c.query_order(serial="a")))
    assert exc.value.raw is not None


def test_a_query_parser_bug_is_an_unexpected_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise TypeError("a parser bug")

    monkeypatch.setattr(ProviderClient, "_parse_order", staticmethod(broken))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"errno": 0, "order_no": "a", "status": 40})

    with pytest.raises(UnexpectedAnswer, match="TypeError"):
        run(using(mock_client(handler), lambda c: c.query_order(serial="a")))


def test_a_create_time_without_offset_is_read_as_china_time() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "errno": 0,
                "order_no": "a",
                "receive_address": DEPOSIT,
                "status": 40,
                "create_time": "2024-05-01 12:00:00",
            },
        )

    order = run(using(mock_client(handler), lambda c: c.query_order(serial="a")))
    assert isinstance(order, Order)
    assert order.create_time == datetime(2024, 5, 1, 4, 0, 0, tzinfo=UTC)


def test_pay_amount_and_money_are_never_floats() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200,
            text='{"errno":0,"order_no":"a","receive_address":"' + DEPOSIT + '","status":40,'
            '"pay_amount":32170.005048646104,"amount":3800000,"refund_amount":0}',
        )

    order = run(using(mock_client(handler), lambda c: c.query_order(serial="a")))
    assert isinstance(order, Order)
    assert str(order.delegated_energy) == "32170.005048646104"
    assert type(order.amount_sun) is int and type(order.refund_amount_sun) is int


# --- secrets stay secret -----------------------------------------------------------------------


def test_secrets_never_in_logs_exceptions_or_reprs(sandbox: SandboxProvider) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    errors: list[ProviderError] = []

    async def scenario() -> None:
        for base, key, secret, action in [
            (sandbox.url, "wrong", API_SECRET, "collect"),
            (sandbox.url, API_KEY, "wrong", "collect"),
            (url, API_KEY, API_SECRET, "collect"),
            (url, API_KEY, API_SECRET, "index"),
        ]:
            client = make_client(base, api_key=key, api_secret=secret)
            async with client:
                assert_no_secrets(repr(client))
                try:
                    if action == "collect":
                        await client.collect_manual(DEPOSIT, out_trade_no="20")
                    else:
                        await client.index_data()
                except ProviderError as exc:
                    errors.append(exc)

    with capture_logs() as logs:
        run(scenario())
    assert len(errors) == 4
    for exc in errors:
        assert_no_secrets(str(exc), repr(exc), exc.raw, exc.message, exc.__cause__, exc.__context__)
    assert logs, "the client logs its requests"
    assert_no_secrets(*[repr(entry) for entry in logs])


def test_provider_echoing_the_key_is_scrubbed_from_raw_and_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"errno": 1, "message": f"bad key {API_KEY} / {API_SECRET}"})
        return httpx.Response(200, json={"balance": 10**12})

    with pytest.raises(OrderRejected) as exc:
        run(using(mock_client(handler), lambda c: c.collect_manual(DEPOSIT, out_trade_no="21")))
    assert_no_secrets(str(exc.value), exc.value.raw, exc.value.message)
    assert "***" in str(exc.value.raw)


def test_not_found_message_and_raw_are_scrubbed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"errno": 404, "message": f"no order for {API_KEY} ({API_SECRET})"})

    result = run(using(mock_client(handler), lambda c: c.query_order(out_trade_no="22")))
    assert isinstance(result, OrderNotFound)
    assert_no_secrets(result.message, result.raw, repr(result))
    assert result.message == "no order for *** (***)"


def test_malformed_field_texts_are_scrubbed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(200, json={"errno": 0, "serial": "s1", "amount": API_KEY, "balance": 1})
        return httpx.Response(200, json={"errno": 0, "order_no": "a", "status": API_SECRET})

    with pytest.raises(OrderOutcomeUnknown) as post_exc:
        run(using(mock_client(handler), lambda c: c.collect_manual(DEPOSIT, out_trade_no="23")))
    with pytest.raises(UnexpectedAnswer) as get_exc:
        run(using(mock_client(handler), lambda c: c.query_order(serial="a")))
    for exc in (post_exc.value, get_exc.value):
        assert_no_secrets(str(exc), exc.raw, exc.message)
