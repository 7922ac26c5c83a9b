"""The real clients against answers in the forms the real services document (tests/fixtures/real-forms/).

Each fixture is one answer as the provider's docs (itrx.io) or java-tron's source show it, with the
page it follows under "source" and what the client must make of it under "expected". The clients
(`ProviderClient`, `TronChain` with `sweeper.chain.transfers`) are run unchanged over an
`httpx.MockTransport` that serves the fixture's answer for its endpoint: no sockets, no sandbox,
whose own forms are not what is tested here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from sweeper.chain import (
    BroadcastOutcome,
    BroadcastRejected,
    ChainResponseError,
    ChainUnavailable,
    Simulation,
    TronChain,
    TxState,
)
from sweeper.domain import Secret
from sweeper.keys import SigningKey
from sweeper.provider.callbacks import ProviderCallback, verify_callback
from sweeper.provider.client import API_PREFIX, ProviderClient
from sweeper.provider.errors import (
    InsufficientProviderBalance,
    OrderRejected,
    ProviderAuthError,
    UnexpectedAnswer,
)
from sweeper.provider.models import Order, OrderNotFound
from sweeper.provider.signing import canonical_json, sign
from sweeper.retry import RetryPolicy
from tests.constants import DESTINATION, USDT, WALLET
from tests.fakes import FakeChain, FakeClock

T = TypeVar("T")
FORMS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "real-forms"
DEPOSIT = WALLET.address(0)
FAST_RETRY = RetryPolicy(attempts=2, base_delay=0.001, max_delay=0.002)
API_SECRET = "real-forms-secret"

PROVIDER_QUERY_FORMS = [
    "provider-order-query-docs-example.json",
    "provider-order-query-completed-naive-time.json",
    "provider-order-query-closed-0.json",
    "provider-order-query-refunded-41.json",
    "provider-order-query-abnormal-43.json",
]
BROADCAST_FORMS = [
    "tron-broadcast-accepted.json",
    "tron-broadcast-sigerror.json",
    "tron-broadcast-dup.json",
    "tron-broadcast-dup-cached.json",
    "tron-broadcast-expired.json",
]
INFO_FORMS = [
    "tron-transaction-info-success-delegated.json",
    "tron-transaction-info-revert.json",
    "tron-transaction-info-out-of-energy.json",
]
RESOURCE_FORMS = ["tron-getaccountresource-no-delegation.json", "tron-getaccountresource-delegated.json"]
# Every fixture a test below reads, so that a new file without a test fails `test_every_form_is_tested`.
USED = {
    *PROVIDER_QUERY_FORMS,
    *BROADCAST_FORMS,
    *INFO_FORMS,
    *RESOURCE_FORMS,
    "provider-collect-manual-accepted.json",
    "provider-order-query-not-found.json",
    "provider-error-errno-1.json",
    "provider-error-400-fields.json",
    "provider-error-400-detail.json",
    "provider-error-403.json",
    "provider-index-data.json",
    "provider-index-data-bad-key.json",
    "provider-order-price.json",
    "provider-callback.json",
    "tron-transaction-info-unknown.json",
    "tron-gettransactionbyid-unknown.json",
    "tron-error-rate-limited.json",
    "tron-error-broadcast-unparsable.json",
    "tron-getaccount-activated.json",
    "tron-getaccount-unknown.json",
    "tron-triggerconstantcontract-revert.json",
}


def form(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FORMS_DIR / name).read_text(encoding="utf-8"))
    return data


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_every_form_cites_its_source_and_is_tested() -> None:
    names = {p.name for p in FORMS_DIR.glob("*.json")}
    assert names == USED, f"untested: {sorted(names - USED)}; missing: {sorted(USED - names)}"
    for name in names:
        data = form(name)
        assert set(data) == {"about", "source", "request", "http_status", "answer", "expected"}, name
        sources = data["source"]
        assert isinstance(sources, list) and sources and all(isinstance(s, str) and s for s in sources), name
        # A provider form cites the provider's docs; a node form java-tron's source.
        cited = (
            "tronenergy-global/tron-energy-doc@"
            if name.startswith("provider-")
            else "tronprotocol/java-tron@"
        )
        assert any(cited in s for s in sources), f"{name} does not cite {cited}"


# --- the provider ----------------------------------------------------------------------------------

Route = tuple[int, Any]


def provider_client(routes: dict[str, Route], seen: list[httpx.Request] | None = None) -> ProviderClient:
    """A ProviderClient whose provider answers `routes[path] = (status, answer)` (path below the API prefix)."""

    def handler(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        path = request.url.path.removeprefix(API_PREFIX)
        status, answer = routes[path]
        return httpx.Response(status, content=json.dumps(answer, ensure_ascii=False).encode())

    return ProviderClient(
        "https://provider.test",
        Secret("real-forms-key"),
        Secret(API_SECRET),
        transport=httpx.MockTransport(handler),
        retry=FAST_RETRY,
    )


def served(name: str) -> Route:
    data = form(name)
    return data["http_status"], data["answer"]


def with_provider(routes: dict[str, Route], call: Callable[[ProviderClient], Coroutine[Any, Any, T]]) -> T:
    async def scenario() -> T:
        async with provider_client(routes) as client:
            return await call(client)

    return run(scenario())


def utc(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text).astimezone(UTC)


@pytest.mark.parametrize("name", PROVIDER_QUERY_FORMS)
def test_order_query_answers_are_read_field_by_field(name: str) -> None:
    expected = form(name)["expected"]
    order = with_provider(
        {"/order/query": served(name)}, lambda client: client.query_order(serial=expected["serial"])
    )
    assert isinstance(order, Order)
    assert order.serial == expected["serial"]
    assert int(order.status) == expected["status"]
    assert (order.status.is_final, order.status.is_success) == (expected["final"], expected["success"])
    assert order.receive_address == expected["receive_address"]
    assert order.create_time is not None and order.create_time == utc(expected["create_time_utc"])
    assert order.energy_amount == expected["energy_amount"]
    # pay_amount: a float in the docs meaning delegated energy, read as an exact Decimal, never money.
    assert order.delegated_energy == Decimal(expected["delegated_energy"])
    assert order.amount_sun == expected["amount_sun"]
    assert order.refund_amount_sun == expected["refund_amount_sun"]
    assert order.period == expected["period"]
    assert [(d.delegate_hash, d.delegate_time, d.reclaim_time, d.status) for d in order.details] == [
        (d["delegate_hash"], utc(d["delegate_time_utc"]), utc(d["reclaim_time_utc"]), d["status"])
        for d in expected["details"]
    ]


def test_a_naive_create_time_is_china_time_not_utc() -> None:
    name = "provider-order-query-completed-naive-time.json"
    raw = form(name)["answer"]["create_time"]
    assert "+" not in raw and "Z" not in raw, "the fixture must carry a time without a zone"
    order = with_provider({"/order/query": served(name)}, lambda client: client.query_order(serial="x"))
    assert isinstance(order, Order) and order.create_time is not None
    naive = datetime.fromisoformat(raw)
    # Read as UTC+8: eight hours EARLIER than the same wall time in UTC (errs towards "older than our row").
    assert (naive.replace(tzinfo=UTC) - order.create_time).total_seconds() == 8 * 3600


def test_an_unknown_order_is_errno_404_with_http_200() -> None:
    name = "provider-order-query-not-found.json"
    found = with_provider(
        {"/order/query": served(name)}, lambda client: client.query_order(out_trade_no="7-ABC")
    )
    assert isinstance(found, OrderNotFound)
    assert found.message == form(name)["expected"]["message"] and found.out_trade_no == "7-ABC"


def test_an_accepted_collect_manual_answer() -> None:
    name = "provider-collect-manual-accepted.json"
    expected = form(name)["expected"]
    order = with_provider(
        {"/order/collect-manual": served(name)},
        lambda client: client.collect_manual(DEPOSIT, to_address=DESTINATION, out_trade_no="7-ABC"),
    )
    assert (order.serial, order.scene, order.amount_sun, order.balance_sun) == (
        expected["serial"],
        expected["scene"],
        expected["amount_sun"],
        expected["balance_sun"],
    )


def _collect(client: ProviderClient) -> Coroutine[Any, Any, object]:
    return client.collect_manual(DEPOSIT, to_address=DESTINATION, out_trade_no="7-ABC")


@pytest.mark.parametrize("balance_sun", [None, 1_000_000], ids=["balance-as-documented", "balance-low"])
def test_an_errno_1_refusal_is_classified_by_the_balance(balance_sun: int | None) -> None:
    refusal = form("provider-error-errno-1.json")
    index_status, index = served("provider-index-data.json")
    if balance_sun is not None:
        index = {**index, "balance": balance_sun}
    routes = {
        "/order/collect-manual": served("provider-error-errno-1.json"),
        "/index-data": (index_status, index),
    }
    wanted = refusal["expected"][
        "with_index_data_balance_high" if balance_sun is None else "with_index_data_balance_low"
    ]
    with pytest.raises((OrderRejected, InsufficientProviderBalance)) as caught:
        with_provider(routes, _collect)
    assert type(caught.value).__name__ == wanted
    assert caught.value.errno == 1 and caught.value.message == refusal["expected"]["message"]  # kept verbatim


def test_a_400_with_field_errors_is_a_rejection_naming_the_fields() -> None:
    name = "provider-error-400-fields.json"
    with pytest.raises(OrderRejected) as caught:
        with_provider({"/order/collect-manual": served(name)}, _collect)
    expected = {k: tuple(v) for k, v in form(name)["expected"]["field_errors"].items()}
    assert dict(caught.value.field_errors) == expected and caught.value.http_status == 400
    # On a GET the same body is an unexpected answer that still names the fields.
    with pytest.raises(UnexpectedAnswer) as read:
        with_provider({"/order/price": served(name)}, lambda client: client.price(energy_amount=5))
    assert "energy_amount" in (read.value.message or "") and "period" in (read.value.message or "")


def test_a_400_detail_is_a_refusal_without_field_errors() -> None:
    name = "provider-error-400-detail.json"
    routes = {"/order/collect-manual": served(name), "/index-data": served("provider-index-data.json")}
    with pytest.raises(OrderRejected) as caught:
        with_provider(routes, _collect)
    assert not caught.value.field_errors and caught.value.message == form(name)["expected"]["message"]


@pytest.mark.parametrize("path", ["/order/collect-manual", "/order/query", "/index-data"])
def test_a_403_is_an_auth_error_wherever_it_comes(path: str) -> None:
    calls: dict[str, Callable[[ProviderClient], Coroutine[Any, Any, object]]] = {
        "/order/collect-manual": _collect,
        "/order/query": lambda client: client.query_order(serial="x"),
        "/index-data": lambda client: client.index_data(),
    }
    routes = {p: served("provider-error-403.json") for p in calls}
    with pytest.raises(ProviderAuthError):
        with_provider(routes, calls[path])


def test_index_data_as_documented_and_its_empty_answer_for_a_bad_key() -> None:
    expected = form("provider-index-data.json")["expected"]
    index = with_provider(
        {"/index-data": served("provider-index-data.json")}, lambda client: client.index_data()
    )
    assert index.balance_sun == expected["balance_sun"]
    assert (index.usdt_energy_need_old, index.usdt_energy_need_new) == (
        expected["usdt_energy_need_old"],
        expected["usdt_energy_need_new"],
    )
    assert index.minimum_order_energy == expected["minimum_order_energy"]
    assert index.platform_avail_energy == expected["platform_avail_energy"]
    assert [[t.period, t.price_sun] for t in index.tiered_pricing] == expected["tiered_pricing"]
    with pytest.raises(ProviderAuthError):
        with_provider(
            {"/index-data": served("provider-index-data-bad-key.json")}, lambda client: client.index_data()
        )


def test_a_price_answer_as_documented() -> None:
    expected = form("provider-order-price.json")["expected"]
    quote = with_provider(
        {"/order/price": served("provider-order-price.json")},
        lambda client: client.price(period="3D", energy_amount=32_000),
    )
    assert (
        quote.period,
        quote.energy_amount,
        quote.price_sun,
        quote.total_price_sun,
        quote.addition_sun,
    ) == (
        expected["period"],
        expected["energy_amount"],
        expected["price_sun"],
        expected["total_price_sun"],
        expected["addition_sun"],
    )


def test_a_documented_callback_body_verifies_and_keeps_its_fractional_energy() -> None:
    data = form("provider-callback.json")
    expected = data["expected"]
    body = canonical_json(data["answer"]).encode()
    assert b"32170.005048646104" in body, "the float must reach the wire as the docs print it"
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    timestamp = str(int(now.timestamp()))
    headers = {"TIMESTAMP": timestamp, "SIGNATURE": sign(Secret(API_SECRET), timestamp, body)}
    callback = verify_callback(headers, body, api_secret=Secret(API_SECRET), now=now)
    assert isinstance(callback, ProviderCallback), callback
    assert (callback.serial, callback.out_trade_no, callback.energy_amount, callback.txid) == (
        expected["serial"],
        expected["out_trade_no"],
        expected["energy_amount"],
        expected["txid"],
    )
    assert callback.status is not None and int(callback.status) == expected["status"]
    assert callback.delegated_energy == Decimal(expected["delegated_energy"])


# --- the node (java-tron) ------------------------------------------------------------------------

SOLID_HEAD_MS = 1_764_705_700_000


def block(timestamp_ms: int, number: int = 68_123_500) -> dict[str, Any]:
    return {
        "blockID": f"{number:016x}" + "ab" * 24,
        "block_header": {"raw_data": {"number": number, "timestamp": timestamp_ms}},
    }


class Node:
    """A node that answers `routes[path]` (path without the leading slash) and records the requests."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.lstrip("/")
        self.asked.append((path, json.loads(request.content or b"{}")))
        return httpx.Response(200, content=json.dumps(self.routes[path]).encode())

    def chain(self) -> TronChain:
        return TronChain("http://node.invalid", transport=httpx.MockTransport(self.handler), retry=FAST_RETRY)


def with_node(routes: dict[str, Any], call: Callable[[TronChain], Coroutine[Any, Any, T]]) -> tuple[T, Node]:
    node = Node(routes)

    async def scenario() -> T:
        async with node.chain() as chain:
            return await call(chain)

    return run(scenario()), node


def answer(name: str) -> Any:
    data = form(name)
    assert data["http_status"] == 200, "java-tron answers its errors with HTTP 200 too"
    return data["answer"]


@pytest.mark.parametrize("name", INFO_FORMS)
def test_a_solidified_transaction_info_is_read_as_its_outcome(name: str) -> None:
    info = answer(name)
    expected = form(name)["expected"]
    routes = {
        "walletsolidity/getnowblock": block(SOLID_HEAD_MS),
        "walletsolidity/gettransactioninfobyid": info,
    }
    status, node = with_node(
        routes, lambda chain: chain.transaction_status(info["id"], expiration_ms=SOLID_HEAD_MS, token=USDT)
    )
    assert status.state is TxState(expected["state"])
    assert status.reason == expected.get("reason")
    assert status.fee_sun == expected["fee_sun"] and status.energy_used == expected["energy_used"]
    assert status.block_number == expected["block_number"]
    assert [(t.sender, t.recipient, t.amount) for t in status.transfers] == [
        (t["sender"], t["recipient"], t["amount"]) for t in expected["transfers"]
    ]
    if "net_usage" in expected:
        assert status.net_usage == expected["net_usage"]
    # The solid head is read BEFORE the receipt (see TronChain.transaction_status).
    assert [p for p, _ in node.asked] == [
        "walletsolidity/getnowblock",
        "walletsolidity/gettransactioninfobyid",
    ]


def test_a_receipt_without_energy_fee_is_a_free_success() -> None:
    info = answer("tron-transaction-info-success-delegated.json")
    assert "fee" not in info and "energy_fee" not in info["receipt"], "the fixture must omit the zero fields"
    routes = {
        "walletsolidity/getnowblock": block(SOLID_HEAD_MS),
        "walletsolidity/gettransactioninfobyid": info,
    }
    status, _ = with_node(
        routes, lambda chain: chain.transaction_status(info["id"], expiration_ms=SOLID_HEAD_MS, token=USDT)
    )
    assert status.state is TxState.CONFIRMED and status.fee_sun == 0


def test_an_unknown_transaction_is_pending_until_it_has_expired_for_both_nodes() -> None:
    unknown = answer("tron-transaction-info-unknown.json")
    full_node = answer("tron-gettransactionbyid-unknown.json")
    assert unknown == {} and full_node == {}
    txid = "ecd9ff6d3b748eb3cfd80b24d53526a682e094f70b59cc412754130d28c1da81"
    routes = {
        "walletsolidity/getnowblock": block(SOLID_HEAD_MS),
        "walletsolidity/gettransactioninfobyid": unknown,
        "wallet/gettransactionbyid": full_node,
    }
    early, node = with_node(
        routes, lambda chain: chain.transaction_status(txid, expiration_ms=SOLID_HEAD_MS, token=USDT)
    )
    assert early.state is TxState.PENDING and "wallet/gettransactionbyid" not in [p for p, _ in node.asked]
    late, node = with_node(
        routes, lambda chain: chain.transaction_status(txid, expiration_ms=SOLID_HEAD_MS - 60_000, token=USDT)
    )
    assert late.state is TxState.EXPIRED and "wallet/gettransactionbyid" in [p for p, _ in node.asked]
    known, _ = with_node(routes, lambda chain: chain.transaction_known(txid))
    assert known is form("tron-gettransactionbyid-unknown.json")["expected"]["known"]


def test_the_rate_limiters_error_body_is_transient_not_a_refusal() -> None:
    busy = answer("tron-error-rate-limited.json")
    txid = "ecd9ff6d3b748eb3cfd80b24d53526a682e094f70b59cc412754130d28c1da81"
    for call in (
        lambda chain: chain.transaction_known(txid),
        lambda chain: chain.latest_solid_block(),
        lambda chain: chain.is_blacklisted(DEPOSIT, token=USDT),
    ):
        routes = {
            "wallet/gettransactionbyid": busy,
            "walletsolidity/getnowblock": busy,
            "wallet/triggerconstantcontract": busy,
        }
        with pytest.raises(ChainUnavailable, match="lack of computing resources"):
            with_node(routes, call)


def test_an_error_body_from_broadcast_is_a_response_error() -> None:
    signed = _signed_transfer()
    with pytest.raises(ChainResponseError, match="NullPointerException"):
        with_node(
            {"wallet/broadcasttransaction": answer("tron-error-broadcast-unparsable.json")},
            lambda chain: chain.broadcast(signed),
        )


def _signed_transfer() -> Any:
    fake = FakeChain(FakeClock())
    unsigned = run(fake.build_transfer(DEPOSIT, DESTINATION, 25_000_000, token=USDT, fee_limit_sun=7_714_200))
    return fake.sign_transfer(unsigned, SigningKey(DEPOSIT, WALLET.private_key(0)))


@pytest.mark.parametrize("name", BROADCAST_FORMS)
def test_broadcast_answers(name: str) -> None:
    signed = _signed_transfer()
    body = dict(answer(name))
    body["txid"] = signed.txid  # the node echoes the txid of what it was sent
    expected = form(name)["expected"]
    call = lambda chain: chain.broadcast(signed)  # noqa: E731
    if "outcome" in expected:
        result, _ = with_node({"wallet/broadcasttransaction": body}, call)
        assert result.outcome is BroadcastOutcome(expected["outcome"]) and result.txid == signed.txid
        return
    assert "result" not in body, "a refusal carries no result key: false is not printed"
    with pytest.raises(BroadcastRejected) as caught:
        with_node({"wallet/broadcasttransaction": body}, call)
    assert caught.value.code == expected["code"]
    assert caught.value.message == expected["message"]  # decoded from hex
    assert caught.value.expired is expected["expired"]


def test_an_accepted_broadcast_under_another_txid_is_refused() -> None:
    signed = _signed_transfer()
    body = answer("tron-broadcast-accepted.json")  # its txid is not the one we send
    assert body["txid"] != signed.txid
    with pytest.raises(ChainResponseError, match="another txid"):
        with_node({"wallet/broadcasttransaction": body}, lambda chain: chain.broadcast(signed))


@pytest.mark.parametrize("name", RESOURCE_FORMS)
def test_account_resources_without_their_zero_fields(name: str) -> None:
    expected = form(name)["expected"]
    routes = {
        "wallet/getaccount": answer("tron-getaccount-activated.json"),
        "wallet/getaccountresource": answer(name),
    }
    res, _ = with_node(routes, lambda chain: chain.account_resources(DEPOSIT))
    assert res.activated is form("tron-getaccount-activated.json")["expected"]["activated"]
    assert res.trx_sun == form("tron-getaccount-activated.json")["expected"]["trx_sun"]
    assert (res.energy_available, res.net_available, res.free_net_available) == (
        expected["energy_available"],
        expected["net_available"],
        expected["free_net_available"],
    )
    check, _ = with_node(
        routes, lambda chain: chain.check_resources(DEPOSIT, DESTINATION, USDT, energy_needed=64_285)
    )
    assert (
        check.ok is expected["check_64285"]["ok"]
        and list(check.reasons) == expected["check_64285"]["reasons"]
    )


def test_an_account_never_activated_is_an_empty_object() -> None:
    routes = {"wallet/getaccount": answer("tron-getaccount-unknown.json")}
    res, node = with_node(routes, lambda chain: chain.account_resources(DEPOSIT))
    assert res.activated is form("tron-getaccount-unknown.json")["expected"]["activated"]
    assert [p for p, _ in node.asked] == ["wallet/getaccount"], "no resource read for an unknown account"


@pytest.fixture
def revert() -> Iterator[dict[str, Any]]:
    data = answer("tron-triggerconstantcontract-revert.json")
    assert data["result"]["result"] is True and data["transaction"]["ret"] == [{"ret": "FAILED"}]
    yield data


def test_a_reverted_constant_call_with_result_true_is_a_revert(revert: dict[str, Any]) -> None:
    expected = form("tron-triggerconstantcontract-revert.json")["expected"]
    sim, _ = with_node(
        {"wallet/triggerconstantcontract": revert},
        lambda chain: chain.simulate_transfer(DEPOSIT, DESTINATION, 25_000_000, token=USDT),
    )
    assert sim == Simulation(True, expected["energy_used"], 0, expected["message"])


@pytest.mark.parametrize("data", ["", "00" * 31 + "2a"], ids=["no-data", "one-word-of-revert-data"])
def test_a_reverted_balance_of_is_never_read_as_a_balance(revert: dict[str, Any], data: str) -> None:
    # A token whose balanceOf reverts (a paused proxy, say): result.result is still true. Revert data
    # that happens to be one 32-byte word must not become a balance.
    answer_ = {**revert, "constant_result": [data]}
    routes = {"wallet/triggerconstantcontract": answer_, "wallet/getcontract": _trc20_contract()}
    with pytest.raises(ChainResponseError, match="reverted"):
        with_node(routes, lambda chain: chain.token_balance(DEPOSIT, USDT))


def _trc20_contract() -> dict[str, Any]:
    """wallet/getcontract of a TRC20 token, as much of it as TronChain checks (its ABI)."""
    entries = [
        {"name": "balanceOf", "type": "Function", "inputs": [{"name": "who", "type": "address"}],
         "outputs": [{"type": "uint256"}], "stateMutability": "View", "constant": True},
        {"name": "transfer", "type": "Function",
         "inputs": [{"name": "to", "type": "address"}, {"name": "value", "type": "uint256"}],
         "outputs": [{"type": "bool"}], "stateMutability": "Nonpayable"},
    ]  # fmt: skip
    return {
        "bytecode": "",
        "name": "TetherToken",
        "origin_address": "41" + "00" * 20,
        "contract_address": "41a614f803b6fd780986a42c78ec9c7f77e6ded13c",
        "abi": {"entrys": entries},
    }
