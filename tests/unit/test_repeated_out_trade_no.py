"""A repeated `out_trade_no`: the provider's docs do not say what happens (docs/design.md, "What is
guessed about the provider", 2). Every reading is acted out, by the in-process FakeProvider for the
pipeline and by the HTTP sandbox provider for the real client:

- first_wins: a second POST is a second paid order; the lookup by out_trade_no answers the first;
- newest_wins: the same, but the lookup answers the newest;
- refused: a second POST is refused (errno 1, nothing created or charged);
- idempotent: a second POST is answered with the existing order (nothing new charged).

Under each, the pipeline orders at most once per row, adopts no order it did not place, and moves
the money at most once, after a lost answer and after a crash on either side of the POST. The one
case where the readings differ is a lookup that lags behind the order past the settle window: then
only a refusing or idempotent provider prevents a second order (money still moves once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from sweeper.config import TokenSettings
from sweeper.domain import Secret, SweepState
from sweeper.keys import Keys
from sweeper.ledger import Ledger, NewAddress, SweepRecord
from sweeper.pipeline import Pipeline, PipelineOptions
from sweeper.provider.client import ProviderClient
from sweeper.provider.errors import OrderRejected
from sweeper.provider.models import Order
from sweeper.retry import RetryPolicy
from sweeper.sandbox.provider_server import MSG_DUPLICATE_OUT_TRADE_NO, RepeatedOutTradeNo, SandboxProvider
from sweeper.sandbox.world import World
from tests.constants import DESTINATION, USDT, WALLET
from tests.fakes import Crash, FakeChain, FakeClock, FakeOrder, FakeProvider

S = SweepState
R = RepeatedOutTradeNo
TOKENS = (TokenSettings(symbol="USDT", contract=USDT, decimals=6, min_sweep=Decimal("10")),)
DEPOSIT = 25_000_000
SETTLE = 300.0


@dataclass
class Rig:
    clock: FakeClock
    chain: FakeChain
    provider: FakeProvider
    ledger: Ledger

    def fund(self, index: int = 0) -> int:
        """A deposit on the test mnemonic's address `index`, queued as a sweep; its id."""
        address = WALLET.address(index)
        self.chain.credit(USDT, address, DEPOSIT)
        self.ledger.upsert_addresses([NewAddress(address, "hd", hd_index=index)])
        sweep_id = self.ledger.queue_sweep(address, "USDT", USDT, DEPOSIT)
        assert sweep_id is not None
        return sweep_id

    def pipeline(self, worker: str = "w1") -> Pipeline:
        options = PipelineOptions(destination=DESTINATION, tokens=TOKENS, order_settle_seconds=SETTLE)
        return Pipeline(
            self.ledger, self.provider, self.chain, Keys(self.ledger, WALLET), options,
            worker_id=worker, clock=self.clock, host_clock=self.clock,
        )  # fmt: skip

    def row(self, sweep_id: int) -> SweepRecord:
        return self.ledger.get_sweep(sweep_id)

    def orders(self, sweep_id: int) -> list[FakeOrder]:
        return self.provider.orders_for(self.row(sweep_id).out_trade_no)

    def reasons(self, sweep_id: int) -> str:
        return " | ".join(f"{e.to_state}: {e.reason}" for e in self.ledger.events(sweep_id))

    def money_moved_at_most_once(self) -> None:
        """For every row: at most one transfer included on chain, nothing burnt, and the order the
        row holds (if any) is one placed with its out_trade_no for its address."""
        for row in self.ledger.list_sweeps():
            sent = self.chain.transfers_from(row.address)
            assert len([t for t in sent if t.block is not None]) <= 1, f"sweep {row.id}: two transfers"
            assert all(t.burnt_sun == 0 for t in sent), f"sweep {row.id}: TRX burnt"
            if row.serial is not None:
                order = self.provider.orders[row.serial]
                assert (order.out_trade_no, order.address) == (row.out_trade_no, row.address), (
                    f"sweep {row.id} holds an order it did not place"
                )
        moved = self.chain.balances[USDT][DESTINATION] - 1
        confirmed = [r for r in self.ledger.list_sweeps() if r.state is S.CONFIRMED]
        assert moved == sum(r.amount or 0 for r in confirmed) == DEPOSIT * len(confirmed)


@pytest.fixture(params=list(R), ids=[r.value for r in R])
def reading(request: pytest.FixtureRequest) -> RepeatedOutTradeNo:
    value: RepeatedOutTradeNo = request.param
    return value


@pytest.fixture
def rig(fast_engine: Engine, reading: RepeatedOutTradeNo) -> Iterator[Rig]:
    clock = FakeClock()
    chain = FakeChain(clock)
    chain.credit(USDT, DESTINATION, 1)  # the destination holds USDT: 65k-energy transfers
    provider = FakeProvider(chain, DESTINATION, token=USDT, repeated_out_trade_no=reading)
    rig = Rig(clock, chain, provider, Ledger(fast_engine, clock=clock))
    yield rig
    rig.money_moved_at_most_once()  # after every case, whatever it asserted itself


def drive(
    rig: Rig, pipeline: Pipeline, until: Callable[[], bool] | None = None, *, step: float = 5.0
) -> None:
    """Run passes; when nothing is due, move the clock on, until `until()` (default: every sweep final)."""
    done = until or (lambda: all(s.is_final for s in rig.ledger.list_sweeps()))
    waited = 0.0

    async def go() -> None:
        nonlocal waited
        while not done():
            if await pipeline.run_once() == 0:
                assert waited < 7_200, [(s.id, s.state.value, s.last_error) for s in rig.ledger.list_sweeps()]
                rig.clock.advance(step)
                waited += step

    asyncio.run(go())


def place_then_die(rig: Rig) -> Callable[[], None]:
    """collect-manual places the order and the process dies before the answer is recorded; returns
    the undo (the restart)."""
    original = rig.provider.collect_manual

    async def dying(*args: Any, **kwargs: Any) -> Any:
        await original(*args, **kwargs)
        raise Crash()

    rig.provider.collect_manual = dying  # type: ignore[method-assign]

    def restore() -> None:
        rig.provider.collect_manual = original  # type: ignore[method-assign]

    return restore


# --- the pipeline under each reading ---------------------------------------------------------------


def test_a_sweep_orders_once(rig: Rig) -> None:
    sweep_id = rig.fund()
    drive(rig, rig.pipeline())
    assert rig.row(sweep_id).state is S.CONFIRMED
    assert len(rig.orders(sweep_id)) == 1 and rig.provider.calls.count("collect_manual") == 1


def test_a_lost_answer_is_adopted_never_ordered_again(rig: Rig) -> None:
    sweep_id = rig.fund()
    rig.provider.lose_answer = True
    drive(rig, rig.pipeline())
    assert rig.row(sweep_id).state is S.CONFIRMED
    assert "adopted existing order" in rig.reasons(sweep_id)
    assert len(rig.orders(sweep_id)) == 1 and rig.provider.calls.count("collect_manual") == 1


def test_a_crash_after_the_order_was_placed_is_adopted_on_restart(rig: Rig) -> None:
    sweep_id = rig.fund()
    restore = place_then_die(rig)
    with pytest.raises(Crash):
        drive(rig, rig.pipeline("w1"))
    restore()
    assert len(rig.orders(sweep_id)) == 1 and rig.row(sweep_id).state is S.ORDERING
    drive(rig, rig.pipeline("w2"))  # the restart: w1's lease runs out, w2 takes the row
    assert rig.row(sweep_id).state is S.CONFIRMED and "adopted existing order" in rig.reasons(sweep_id)
    assert len(rig.orders(sweep_id)) == 1 and rig.provider.calls.count("collect_manual") == 1


def test_a_crash_between_the_order_sent_mark_and_the_post_orders_once(rig: Rig) -> None:
    sweep_id = rig.fund()
    rig.provider.fail("collect_manual", Crash())  # dies after the mark committed, before the POST
    with pytest.raises(Crash):
        drive(rig, rig.pipeline("w1"))
    sent_at = rig.row(sweep_id).order_sent_at
    assert sent_at is not None and rig.provider.orders == {}
    drive(rig, rig.pipeline("w2"), until=lambda: bool(rig.provider.orders))
    assert (rig.clock() - sent_at).total_seconds() >= SETTLE, "no POST inside the settle window"
    drive(rig, rig.pipeline("w2"))
    assert rig.row(sweep_id).state is S.CONFIRMED and len(rig.orders(sweep_id)) == 1


def test_a_lookup_lagging_inside_the_settle_window_still_orders_once(rig: Rig) -> None:
    sweep_id = rig.fund()
    rig.provider.lose_answer = True
    rig.provider.lookup_lag_seconds = SETTLE - 100  # the order shows up before the window closes
    drive(rig, rig.pipeline())
    assert rig.row(sweep_id).state is S.CONFIRMED
    assert len(rig.orders(sweep_id)) == 1 and rig.provider.calls.count("collect_manual") == 1


def test_a_lookup_lagging_past_the_settle_window(rig: Rig, reading: RepeatedOutTradeNo) -> None:
    """The boundary the design states: when the lookup cannot see an order placed more than the
    settle window ago, the pipeline POSTs again. A provider that refuses a repeated out_trade_no,
    or answers it with the existing order, still has one order; one that accepts it (first_wins,
    newest_wins) has two. The money moves once in every case."""
    sweep_id = rig.fund()
    rig.provider.lose_answer = True
    rig.provider.lookup_lag_seconds = SETTLE + 100
    drive(rig, rig.pipeline())
    row = rig.row(sweep_id)
    assert row.state is S.CONFIRMED and row.amount == DEPOSIT
    assert rig.provider.calls.count("collect_manual") >= 2, "the lag must have forced a second POST"
    expected_orders = 2 if reading in (R.FIRST_WINS, R.NEWEST_WINS) else 1
    assert len(rig.orders(sweep_id)) == expected_orders
    charged = sum(o.amount_sun for o in rig.orders(sweep_id))
    assert rig.provider.balance_sun == 1_000_000_000 - charged


def test_an_order_it_did_not_place_is_never_adopted(rig: Rig) -> None:
    sweep_id = rig.fund()
    row = rig.row(sweep_id)
    # Another system's order under this row's out_trade_no, for another address, placed earlier.
    other = WALLET.address(7)
    rig.provider.orders["F000001"] = FakeOrder(
        "F000001",
        other,
        DESTINATION,
        row.out_trade_no,
        4_000_000,
        65_000,
        created=rig.clock() - timedelta(hours=1),
    )
    drive(rig, rig.pipeline())
    row = rig.row(sweep_id)
    assert row.state is S.FAILED and row.serial is None, rig.reasons(sweep_id)
    assert "not this sweep's; not adopted" in rig.reasons(sweep_id)
    assert rig.provider.calls.count("collect_manual") == 0, "no order placed beside a foreign one"
    assert rig.chain.transfers_from(row.address) == [] and rig.ledger.holds() == []


def test_rows_of_two_addresses_each_adopt_their_own_order(rig: Rig) -> None:
    first, second = rig.fund(0), rig.fund(1)
    original = rig.provider.collect_manual

    async def every_answer_lost(*args: Any, **kwargs: Any) -> Any:
        rig.provider.lose_answer = True
        return await original(*args, **kwargs)

    rig.provider.collect_manual = every_answer_lost  # type: ignore[method-assign]
    drive(rig, rig.pipeline())
    for sweep_id in (first, second):
        assert rig.row(sweep_id).state is S.CONFIRMED and len(rig.orders(sweep_id)) == 1
    assert rig.row(first).serial != rig.row(second).serial


# --- the sandbox provider acts out each reading over HTTP, read by the real client ----------------


def _client(provider: SandboxProvider) -> ProviderClient:
    return ProviderClient(
        "http://sandbox.test",
        Secret(provider.api_key),
        Secret(provider.api_secret),
        transport=httpx.ASGITransport(app=provider.app),
        retry=RetryPolicy(attempts=1, base_delay=0.001, max_delay=0.001),
    )


@pytest.mark.parametrize("reading", list(R), ids=[r.value for r in R])
def test_the_sandbox_provider_acts_out_each_reading(reading: RepeatedOutTradeNo) -> None:
    world = World()
    provider = SandboxProvider(world, delegation_delay=None)  # no worker, no server: the app alone
    address, out_trade_no = WALLET.address(0), "1-ABCDEFGH"

    async def scenario() -> tuple[list[str | BaseException], Order | object]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=provider.app)) as http:
            answer = await http.post(
                "http://sandbox.test/_sandbox/control",
                json={"op": "switches", "repeated_out_trade_no": reading.value},
            )
            assert answer.json()["switches"]["repeated_out_trade_no"] == reading.value
        outcomes: list[str | BaseException] = []
        async with _client(provider) as client:
            for _ in range(2):
                try:
                    order = await client.collect_manual(
                        address, to_address=DESTINATION, out_trade_no=out_trade_no
                    )
                    outcomes.append(order.serial)
                except OrderRejected as exc:
                    outcomes.append(exc)
            found = await client.query_order(out_trade_no=out_trade_no)
        return outcomes, found

    before = provider.balance_sun
    (first, second), found = asyncio.run(scenario())
    orders = list(provider.orders.values())  # oldest first
    assert isinstance(first, str) and first == orders[0].serial and isinstance(found, Order)
    charged = before - provider.balance_sun
    if reading in (R.FIRST_WINS, R.NEWEST_WINS):
        assert isinstance(second, str) and second != first and len(orders) == 2
        assert charged == orders[0].amount_sun + orders[1].amount_sun
        assert found.serial == (first if reading is R.FIRST_WINS else second)
    elif reading is R.REFUSED:
        assert isinstance(second, OrderRejected) and second.errno == 1
        assert second.message == MSG_DUPLICATE_OUT_TRADE_NO and not second.field_errors
        assert len(orders) == 1 and charged == orders[0].amount_sun and found.serial == first
    else:
        assert second == first and len(orders) == 1 and charged == orders[0].amount_sun
        assert found.serial == first
