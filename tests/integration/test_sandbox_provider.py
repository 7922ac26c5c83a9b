"""The sandbox provider itself: strict request checks, order life cycle in the shared World, and
callbacks (signed, retried on a compressed schedule, duplicated, reordered, suppressed).

Requests are built by hand here (httpx + the signing helper) so the fake's strictness is tested
independently of ProviderClient. Everything runs on 127.0.0.1; waits are on observable state.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sweeper.domain import Secret, hex_to_address, utcnow
from sweeper.provider.callbacks import ProviderCallback, SignedForm, verify_callback
from sweeper.provider.client import API_PREFIX
from sweeper.provider.signing import canonical_json, sign
from sweeper.sandbox.provider_server import (
    CALLBACK_RETRY_SCHEDULE,
    COLLECT_ENERGY_NEW_HOLDER,
    COLLECT_ENERGY_OLD_HOLDER,
    SWEEP_BANDWIDTH,
    CallbackForm,
    HoldPoint,
    SandboxProvider,
)
from sweeper.sandbox.serve import RunningServer, serve_in_thread
from sweeper.sandbox.world import USDT_ENERGY_NEW_HOLDER, USDT_ENERGY_OLD_HOLDER, World

API_KEY = "sb-key"
API_SECRET = "sb-secret"
DEPOSIT = hex_to_address("41" + "44" * 20)
DEPOSIT_2 = hex_to_address("41" + "55" * 20)
DESTINATION = hex_to_address("41" + "66" * 20)
COLLECT = f"{API_PREFIX}/order/collect-manual"


# --- a callback receiver -----------------------------------------------------------------------


@dataclass
class Receiver:
    """Records callbacks; answers each with the next scripted status (then 200)."""

    script: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append((dict(request.headers), body))
            status = self.script.pop(0) if self.script else 200
        return Response("ok" if status == 200 else "no", status_code=status)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body in self.received]

    def count(self) -> int:
        with self.lock:
            return len(self.received)


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()
    server: RunningServer = serve_in_thread(
        Starlette(routes=[Route("/callback", rec.endpoint, methods=["POST"])])
    )
    try:
        yield rec, f"{server.url}/callback"
    finally:
        server.stop()


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def sandbox(world: World) -> Iterator[SandboxProvider]:
    provider = SandboxProvider(
        world, api_key=API_KEY, api_secret=API_SECRET, delegation_delay=None, callback_time_scale=0.001
    )
    provider.start()
    try:
        yield provider
    finally:
        provider.stop()


# --- raw requests ------------------------------------------------------------------------------


def post(
    sandbox: SandboxProvider,
    data: dict[str, Any] | None = None,
    *,
    body: bytes | None = None,
    key: str | None = API_KEY,
    secret: str = API_SECRET,
    timestamp: str | None = None,
    signature: str | None = None,
) -> httpx.Response:
    content = body if body is not None else canonical_json(data or {}).encode()
    ts = timestamp if timestamp is not None else str(int(utcnow().timestamp()))
    headers = {"TIMESTAMP": ts, "SIGNATURE": signature or sign(secret, ts, content)}
    if key is not None:
        headers["API-KEY"] = key
    return httpx.post(f"{sandbox.url}{COLLECT}", content=content, headers=headers, timeout=5)


def get(sandbox: SandboxProvider, path: str, key: str = API_KEY, **params: Any) -> httpx.Response:
    return httpx.get(f"{sandbox.url}{API_PREFIX}{path}", params=params, headers={"API-KEY": key}, timeout=5)


def order_data(**extra: Any) -> dict[str, Any]:
    return {"scene": 0, "receive_address": DEPOSIT, **extra}


def assert_nothing_created(sandbox: SandboxProvider, balance_before: int) -> None:
    assert sandbox.orders == {}
    assert sandbox.balance_sun == balance_before


# --- strictness --------------------------------------------------------------------------------


def test_a_valid_order_is_accepted_charged_and_queryable(sandbox: SandboxProvider) -> None:
    before = sandbox.balance_sun
    answer = post(sandbox, order_data(out_trade_no="1"))
    assert answer.status_code == 200
    body = answer.json()
    assert body["errno"] == 0 and body["scene"] == 0
    assert body["amount"] == sandbox.price_old_holder_sun
    assert body["balance"] == before - body["amount"] == sandbox.balance_sun
    query = get(sandbox, "/order/query", serial=body["serial"]).json()
    assert query["order_no"] == body["serial"] and query["status"] == 30 and query["errno"] == 0
    assert get(sandbox, "/order/query", out_trade_no="1").json()["order_no"] == body["serial"]


@pytest.mark.parametrize("key", [None, "wrong-key", ""])
def test_bad_api_key_is_403_and_creates_nothing(sandbox: SandboxProvider, key: str | None) -> None:
    before = sandbox.balance_sun
    assert post(sandbox, order_data(), key=key).status_code == 403
    for path in ("/order/query", "/index-data", "/order/price"):
        assert get(sandbox, path, key=key or "", serial="x", energy_amount=32000).status_code == 403
    assert_nothing_created(sandbox, before)


def test_stale_or_missing_timestamp_is_errno_1(sandbox: SandboxProvider) -> None:
    before = sandbox.balance_sun
    stale = str(int(utcnow().timestamp()) - 600)
    future = str(int(utcnow().timestamp()) + 600)
    for ts in (stale, future, "", "abc"):
        answer = post(sandbox, order_data(), timestamp=ts)
        assert answer.status_code == 200 and answer.json()["errno"] == 1, ts
    assert_nothing_created(sandbox, before)


def test_bad_signature_is_errno_1(sandbox: SandboxProvider) -> None:
    before = sandbox.balance_sun
    assert post(sandbox, order_data(), secret="other").json() == {"errno": 1, "message": "签名错误"}
    assert post(sandbox, order_data(), signature="0" * 64).json()["errno"] == 1
    assert_nothing_created(sandbox, before)


@pytest.mark.parametrize(
    "body",
    [
        json.dumps(order_data()).encode(),  # default separators
        json.dumps(order_data(), separators=(",", ":")).encode(),  # not sorted
        canonical_json(order_data()).encode() + b"\n",
        b"not json",
        b"[]",
    ],
)
def test_a_body_that_is_not_canonical_json_is_errno_1_even_if_signed(
    sandbox: SandboxProvider, body: bytes
) -> None:
    before = sandbox.balance_sun
    answer = post(sandbox, body=body)  # signed over exactly these bytes
    assert answer.status_code == 200 and answer.json()["errno"] == 1
    assert_nothing_created(sandbox, before)


@pytest.mark.parametrize(
    ("data", "field_name"),
    [
        ({"scene": 0}, "receive_address"),
        ({"scene": 0, "receive_address": ""}, "receive_address"),
        (
            {"scene": 0, "receive_address": "TExWKszFWYTKZH8LYiovAPKzS3L9MLZ4kX"},
            "receive_address",
        ),  # checksum
        ({"scene": 0, "receive_address": DEPOSIT, "to_address": "T123"}, "to_address"),
        ({"receive_address": DEPOSIT}, "scene"),
        ({"scene": 0, "receive_address": DEPOSIT, "out_trade_no": 5}, "out_trade_no"),
    ],
)
def test_bad_fields_are_400_field_errors(
    sandbox: SandboxProvider, data: dict[str, Any], field_name: str
) -> None:
    before = sandbox.balance_sun
    answer = post(sandbox, data)
    assert answer.status_code == 400
    errors = answer.json()
    assert field_name in errors and isinstance(errors[field_name], list) and errors[field_name]
    assert_nothing_created(sandbox, before)


def test_low_balance_is_errno_1_and_creates_nothing(sandbox: SandboxProvider) -> None:
    sandbox.set_balance(sandbox.price_old_holder_sun - 1)
    answer = post(sandbox, order_data())
    assert answer.json() == {"errno": 1, "message": "余额不足"}
    assert_nothing_created(sandbox, sandbox.price_old_holder_sun - 1)
    assert get(sandbox, "/index-data").json()["balance"] == sandbox.price_old_holder_sun - 1


def test_query_not_found_and_missing_parameters(sandbox: SandboxProvider) -> None:
    assert get(sandbox, "/order/query", serial="nope").json() == {"errno": 404, "message": "找不到订单"}
    assert get(sandbox, "/order/query", out_trade_no="nope").json()["errno"] == 404
    assert get(sandbox, "/order/query").status_code == 400


def test_serial_wins_over_out_trade_no(sandbox: SandboxProvider) -> None:
    first = post(sandbox, order_data(out_trade_no="a")).json()["serial"]
    post(sandbox, order_data(out_trade_no="b"))
    assert get(sandbox, "/order/query", serial=first, out_trade_no="b").json()["order_no"] == first


def test_price_answers(sandbox: SandboxProvider, world: World) -> None:
    small = get(sandbox, "/order/price", period="1H", energy_amount=32000).json()
    assert small["total_price"] == 32000 * 100 + 600_000 and small["addition"] == 600_000
    assert get(sandbox, "/order/price", period="1X", energy_amount=32000).status_code == 400
    assert get(sandbox, "/order/price", period="1H", energy_amount=10).status_code == 400
    assert (
        get(sandbox, "/order/price", to_address=DESTINATION).json()["total_price"]
        == sandbox.price_new_holder_sun
    )
    world.credit_token(world.usdt_contract, DESTINATION, 1)
    assert (
        get(sandbox, "/order/price", to_address=DESTINATION).json()["total_price"]
        == sandbox.price_old_holder_sun
    )


# --- the order life cycle in the World ---------------------------------------------------------


def test_completion_activates_covers_bandwidth_and_delegates_65k_to_a_holder(
    sandbox: SandboxProvider, world: World
) -> None:
    world.credit_token(world.usdt_contract, DESTINATION, 10)
    serial = post(sandbox, order_data(to_address=DESTINATION)).json()["serial"]
    assert not world.account(DEPOSIT).activated and world.account(DEPOSIT).delegated_energy == 0
    sandbox.complete(serial)
    account = world.account(DEPOSIT)
    assert account.activated
    assert account.delegated_energy == COLLECT_ENERGY_OLD_HOLDER >= USDT_ENERGY_OLD_HOLDER
    assert account.delegated_bandwidth == SWEEP_BANDWIDTH >= 345
    query = get(sandbox, "/order/query", serial=serial).json()
    assert query["status"] == 40 and query["pay_amount"] == COLLECT_ENERGY_OLD_HOLDER
    assert query["details"][0]["delegate_hash"]
    sandbox.complete(serial)  # idempotent: nothing delegated twice
    assert world.account(DEPOSIT).delegated_energy == COLLECT_ENERGY_OLD_HOLDER


def test_a_destination_without_usdt_gets_131k(sandbox: SandboxProvider, world: World) -> None:
    answer = post(sandbox, order_data(to_address=DESTINATION)).json()
    assert answer["amount"] == sandbox.price_new_holder_sun
    sandbox.complete(answer["serial"])
    assert world.account(DEPOSIT).delegated_energy == COLLECT_ENERGY_NEW_HOLDER >= USDT_ENERGY_NEW_HOLDER


def test_no_to_address_gets_65k(sandbox: SandboxProvider, world: World) -> None:
    sandbox.complete(post(sandbox, order_data()).json()["serial"])
    assert world.account(DEPOSIT).delegated_energy == COLLECT_ENERGY_OLD_HOLDER


def test_an_already_active_address_is_not_reactivated(sandbox: SandboxProvider, world: World) -> None:
    world.activate(DEPOSIT)
    serial = post(sandbox, order_data()).json()["serial"]
    sandbox.complete(serial)
    order = sandbox.order(serial)
    assert order is not None and order.active_hash == "" and order.bandwidth_hash


def test_configurable_delay_completes_in_the_background(world: World) -> None:
    with SandboxProvider(world, api_key=API_KEY, api_secret=API_SECRET, delegation_delay=0.05) as sandbox:
        serial = post(sandbox, order_data()).json()["serial"]
        sandbox.wait_until(lambda: get(sandbox, "/order/query", serial=serial).json()["status"] == 40)
        assert world.account(DEPOSIT).delegated_energy == COLLECT_ENERGY_OLD_HOLDER


def test_zero_delay_completes_before_the_answer(world: World) -> None:
    with SandboxProvider(world, api_key=API_KEY, api_secret=API_SECRET, delegation_delay=0) as sandbox:
        serial = post(sandbox, order_data()).json()["serial"]
        assert get(sandbox, "/order/query", serial=serial).json()["status"] == 40


@pytest.mark.parametrize("outcome", [0, 41, 43])
def test_orders_can_end_failed(sandbox: SandboxProvider, world: World, outcome: int) -> None:
    sandbox.set_switches(outcome=outcome)
    before = sandbox.balance_sun
    answer = post(sandbox, order_data()).json()
    sandbox.complete(answer["serial"])
    query = get(sandbox, "/order/query", serial=answer["serial"]).json()
    assert query["status"] == outcome
    assert world.account(DEPOSIT).delegated_energy == 0
    if outcome == 41:
        assert query["refund_amount"] == answer["amount"] and sandbox.balance_sun == before
    else:
        assert query["refund_amount"] == 0 and sandbox.balance_sun == before - answer["amount"]


def test_5xx_after_create_switch(sandbox: SandboxProvider) -> None:
    sandbox.set_switches(error_after_create=1)
    answer = post(sandbox, order_data(out_trade_no="x"))
    assert answer.status_code == 500
    assert len(sandbox.orders_by_out_trade_no("x")) == 1
    assert post(sandbox, order_data(out_trade_no="y")).status_code == 200  # only the next N


def test_held_post_is_observable_and_released(sandbox: SandboxProvider) -> None:
    sandbox.hold_posts(HoldPoint.AFTER_CREATE)
    results: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: results.append(post(sandbox, order_data(out_trade_no="h"))))
    thread.start()
    try:
        sandbox.wait_until(lambda: sandbox.held_count == 1)
        assert len(sandbox.orders_by_out_trade_no("h")) == 1 and results == []
    finally:
        sandbox.release_posts()
    thread.join(5)
    assert results[0].json()["errno"] == 0
    assert sandbox.held_count == 0


# --- callbacks ---------------------------------------------------------------------------------


def _verified(headers: dict[str, str], body: bytes) -> ProviderCallback:
    result = verify_callback(headers, body, api_secret=Secret(API_SECRET), max_age_seconds=60)
    assert isinstance(result, ProviderCallback), result
    return result


@pytest.mark.parametrize(
    ("form", "signed_form"),
    [
        (CallbackForm.COMPACT, SignedForm.RAW),  # compact sorted is also the raw body
        (CallbackForm.DEFAULT, SignedForm.RAW),
        (CallbackForm.PRETTY, SignedForm.COMPACT_SORTED),
    ],
)
def test_callbacks_are_signed_and_verifiable_in_each_form(
    sandbox: SandboxProvider, receiver: tuple[Receiver, str], form: CallbackForm, signed_form: SignedForm
) -> None:
    rec, url = receiver
    sandbox.set_switches(callback_form=form)
    serial = post(sandbox, order_data(out_trade_no="c1", callback_url=url)).json()["serial"]
    sandbox.complete(serial)
    sandbox.wait_until(lambda: rec.count() == 1 and sandbox.idle())
    headers, body = rec.received[0]
    callback = _verified(headers, body)
    assert callback.signed_form is signed_form
    assert (callback.serial, callback.out_trade_no, int(callback.status or 0)) == (serial, "c1", 40)
    assert callback.receive_address == DEPOSIT and callback.txid and callback.type == "energy"
    assert callback.energy_amount == COLLECT_ENERGY_OLD_HOLDER


def test_failed_order_callback_says_41(sandbox: SandboxProvider, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    sandbox.set_switches(outcome=43)
    sandbox.complete(post(sandbox, order_data(callback_url=url)).json()["serial"])
    sandbox.wait_until(lambda: rec.count() == 1)
    assert rec.bodies()[0]["status"] == 41


def test_callbacks_retry_on_the_compressed_schedule_until_acknowledged(
    sandbox: SandboxProvider, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    rec.script = [500, 503, 404]
    serial = post(sandbox, order_data(callback_url=url)).json()["serial"]
    sandbox.complete(serial)
    sandbox.wait_until(lambda: rec.count() == 4 and sandbox.idle())
    attempts = sandbox.attempts_for(serial)
    assert [a.status_code for a in attempts] == [500, 503, 404, 200]
    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    # Every retry is freshly signed and verifiable.
    for headers, body in rec.received:
        _verified(headers, body)


def test_callbacks_give_up_after_the_documented_schedule(
    sandbox: SandboxProvider, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    rec.script = [500] * 20
    sandbox.callback_time_scale = 0.0001  # the whole schedule (~64 min) in ~0.4 s
    serial = post(sandbox, order_data(callback_url=url)).json()["serial"]
    sandbox.complete(serial)
    total = 1 + len(CALLBACK_RETRY_SCHEDULE)
    sandbox.wait_until(lambda: rec.count() == total and sandbox.idle(), timeout=10)
    assert len(sandbox.attempts_for(serial)) == total == 8
    assert rec.count() == total


def test_unreachable_callback_url_is_recorded_not_fatal(sandbox: SandboxProvider) -> None:
    sandbox.callback_time_scale = 0.0001
    serial = post(sandbox, order_data(callback_url="http://127.0.0.1:9/cb")).json()["serial"]
    sandbox.complete(serial)
    sandbox.wait_until(lambda: len(sandbox.attempts_for(serial)) == 8 and sandbox.idle(), timeout=10)
    assert all(a.error and a.status_code is None for a in sandbox.attempts_for(serial))


def test_duplicate_callbacks(sandbox: SandboxProvider, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    sandbox.set_switches(duplicate_callbacks=2)
    serial = post(sandbox, order_data(callback_url=url)).json()["serial"]
    sandbox.complete(serial)
    sandbox.wait_until(lambda: rec.count() == 3 and sandbox.idle())
    assert [b["serial"] for b in rec.bodies()] == [serial] * 3


def test_reordered_callbacks(sandbox: SandboxProvider, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    sandbox.set_switches(hold_callbacks=True)
    first = post(sandbox, order_data(callback_url=url, out_trade_no="1")).json()["serial"]
    second = post(sandbox, {"scene": 0, "receive_address": DEPOSIT_2, "callback_url": url}).json()["serial"]
    sandbox.complete(first)
    sandbox.complete(second)
    assert sandbox.idle() and rec.count() == 0  # buffered
    sandbox.release_callbacks(reverse=True)
    sandbox.wait_until(lambda: rec.count() == 2 and sandbox.idle())
    assert [b["serial"] for b in rec.bodies()] == [second, first]


def test_no_callbacks_switch(sandbox: SandboxProvider, receiver: tuple[Receiver, str]) -> None:
    rec, url = receiver
    sandbox.set_switches(callbacks_enabled=False)
    serial = post(sandbox, order_data(callback_url=url)).json()["serial"]
    sandbox.complete(serial)
    sandbox.wait_until(sandbox.idle)
    attempts = sandbox.attempts_for(serial)
    assert len(attempts) == 1 and attempts[0].suppressed
    assert rec.count() == 0


def test_default_callback_url_is_used_when_the_order_names_none(
    world: World, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    with SandboxProvider(
        world, api_key=API_KEY, api_secret=API_SECRET, delegation_delay=0, default_callback_url=url
    ) as sandbox:
        serial = post(sandbox, order_data()).json()["serial"]
        sandbox.wait_until(lambda: rec.count() == 1)
        assert rec.bodies()[0]["serial"] == serial
