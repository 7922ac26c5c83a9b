"""The end-to-end invariant checker can fail: each promise, broken on purpose, is reported."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from sweeper.domain import AssetKind, SweepState
from sweeper.ledger.records import SweepRecord
from sweeper.sandbox.control import ChainTransaction, ProviderOrder
from tests.constants import DESTINATION, USDT, WALLET
from tests.e2e.invariants import Expect, Observed, check

S = SweepState
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
A0, A1 = WALLET.address(0), WALLET.address(1)


def row(id: int, address: str, state: S, *, txid: str | None = None, amount: int = 42_000_000) -> SweepRecord:
    return SweepRecord(
        id=id,
        address=address,
        token="USDT",
        asset_kind=AssetKind.TOKEN,
        token_contract=USDT,
        state=state,
        observed_amount=amount,
        amount=amount,
        destination=DESTINATION,
        serial=f"S{id}",
        scene=1,
        cost_sun=4_000_000,
        provider_balance_sun=None,
        txid=txid,
        fee_sun=None,
        signed_tx=None,
        expiration=None,
        attempts=1,
        next_attempt_at=None,
        order_sent_at=NOW,
        order_nonce="ABCDEFGH",
        energy_needed=65_000,
        charge_sun=None,
        charge_day=None,
        refund_sun=None,
        send_attempts=1,
        first_claimed_at=NOW,
        reverting_since=None,
        claimed_by=None,
        lease_until=None,
        last_error=None,
        retry_of=None,
        created_at=NOW,
        updated_at=NOW,
    )


def order(id: int, address: str, serial: str | None = None) -> ProviderOrder:
    return ProviderOrder(
        serial=serial or f"S{id}",
        out_trade_no=f"{id}-ABCDEFGH",
        receive_address=address,
        to_address=DESTINATION,
        callback_url=None,
        scene=1,
        status=40,
        outcome=40,
        energy_amount=65_000,
        amount_sun=4_000_000,
        delegated_energy=65_000,
        refund_amount_sun=0,
        create_time="2026-12-02 12:00:00",
        callback_attempts=(),
    )


def tx(
    txid: str, owner: str, *, to: str = DESTINATION, amount: int = 42_000_000, **kw: object
) -> ChainTransaction:
    base = ChainTransaction(
        txid=txid,
        owner=owner,
        to=to,
        contract=USDT,
        contract_type="TriggerSmartContract",
        amount=amount,
        fee_limit=10_000_000,
        expiration_ms=0,
        block_number=10,
        solid=True,
        result="SUCCESS",
        energy_usage=64_285,
        energy_fee_sun=0,
        net_usage=345,
        net_fee_sun=0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def observed(rows: list[SweepRecord], txs: list[ChainTransaction], orders: list[ProviderOrder]) -> Observed:
    return Observed(
        rows=rows,
        reasons={r.id: ("operator" if r.state in (S.FAILED, S.CANCELLED) else "") for r in rows},
        deposit_addresses=frozenset({A0, A1}),
        transactions=txs,
        orders=orders,
    )


def problems(obs: Observed, **expect: object) -> list[str]:
    return check(obs, destination=DESTINATION, expect=Expect(**expect), now=NOW)  # type: ignore[arg-type]


def good() -> Observed:
    return observed(
        [row(1, A0, S.CONFIRMED, txid="t1"), row(2, A1, S.CONFIRMED, txid="t2")],
        [tx("t1", A0), tx("t2", A1)],
        [order(1, A0), order(2, A1)],
    )


def test_a_clean_run_holds_every_promise() -> None:
    assert problems(good()) == []


@pytest.mark.parametrize(
    ("broken", "needle"),
    [
        (lambda o: replace(o, orders=[*o.orders, order(1, A0, "S1b")]), "2 provider orders"),
        (
            lambda o: replace(o, orders=[*o.orders, replace(order(9, A0), out_trade_no="9-ZZZZZZZZ")]),
            "no row placed",
        ),
        (lambda o: replace(o, orders=[order(1, A1), order(2, A1)]), "not to the row's address"),
        (lambda o: replace(o, transactions=[*o.transactions, tx("t3", A0)]), "belongs to no row"),
        (lambda o: replace(o, transactions=[tx("t1", A0, to=A1), tx("t2", A1)]), "not the destination"),
        (lambda o: replace(o, transactions=[tx("t1", A0, energy_fee_sun=6_000_000), tx("t2", A1)]), "burnt"),
        (lambda o: replace(o, transactions=[tx("t1", A0, amount=1), tx("t2", A1)]), "chain amount 1"),
        (
            lambda o: replace(o, transactions=[tx("t1", A0, result="REVERT"), tx("t2", A1)]),
            "is confirmed but",
        ),
        (lambda o: replace(o, transactions=[tx("t1", A0, solid=False), tx("t2", A1)]), "is confirmed but"),
        (lambda o: replace(o, rows=[row(1, A0, S.BROADCAST, txid="t1"), o.rows[1]]), "succeeded on chain"),
        (
            lambda o: replace(
                o, rows=[row(1, A0, S.ENERGY_READY), o.rows[1]], transactions=o.transactions[1:]
            ),
            "stuck",
        ),
        (
            lambda o: replace(o, rows=[row(1, A0, S.QUEUED), o.rows[1]], transactions=o.transactions[1:]),
            "no retry",
        ),
        (
            lambda o: replace(
                o, rows=[row(1, A0, S.FAILED), o.rows[1]], transactions=o.transactions[1:], reasons={}
            ),
            "without a reason",
        ),
    ],
)
def test_each_broken_promise_is_reported(broken: object, needle: str) -> None:
    found = problems(broken(good()))  # type: ignore[operator]
    assert any(needle in p for p in found), found


def test_a_queued_row_with_a_future_retry_is_settled() -> None:
    later = replace(row(1, A0, S.QUEUED), next_attempt_at=NOW + timedelta(minutes=5))
    obs = replace(good(), rows=[later, good().rows[1]], transactions=good().transactions[1:])
    assert problems(obs) == []


def test_expected_exceptions_are_named_by_the_case() -> None:
    burnt = replace(good(), transactions=[tx("t1", A0, energy_fee_sun=6_000_000), tx("t2", A1)])
    assert problems(burnt, burnt_txids=frozenset({"t1"})) == []
    half_way = replace(
        good(), rows=[row(1, A0, S.SIGNED, txid="t1"), good().rows[1]], transactions=good().transactions[1:]
    )
    assert problems(half_way, settled=False) == []
    assert problems(half_way) != []


def test_a_trx_sweep_may_burn_the_fee_it_recorded_and_no_more() -> None:
    def trx_row(fee: int) -> SweepRecord:
        return replace(
            row(1, A0, S.CONFIRMED, txid="t1", amount=19_732_000),
            token="TRX", asset_kind=AssetKind.TRX, token_contract=None, fee_sun=fee, serial=None, cost_sun=None,
        )  # fmt: skip

    transfer = tx(
        "t1", A0, amount=19_732_000, contract=None, contract_type="TransferContract", net_fee_sun=268_000
    )
    paid = replace(good(), rows=[trx_row(268_000), good().rows[1]], orders=good().orders[1:])
    assert problems(replace(paid, transactions=[transfer, good().transactions[1]])) == []
    more = replace(
        paid, rows=[trx_row(100_000), good().rows[1]], transactions=[transfer, good().transactions[1]]
    )
    assert any("burnt 268000 sun, the ledger says 100000" in p for p in problems(more))
