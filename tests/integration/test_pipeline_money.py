"""Money safety in the pipeline (issue 11), in-process against the sandbox node and provider, on
SQLite and Postgres: a failure that cost money never repeats on its own, energy is measured before
it is bought, and the caps fail closed. Each test names the behaviour that the first wave lacked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from types import SimpleNamespace

import pytest
import tronpy.async_tron
from sqlalchemy import text
from structlog.testing import capture_logs

from sweeper import domain
from sweeper import pipeline as pipeline_module
from sweeper.chain import DEFAULT_LIFETIME_MS
from sweeper.config import TokenSettings
from sweeper.domain import SweepState
from sweeper.keys import Keys
from sweeper.ledger import ORDERING_PAUSE, Ledger, token_pause_name, upgrade, utc_day
from sweeper.ledger.models import Base
from sweeper.pipeline import Pipeline, PipelineOptions
from sweeper.retry import RetryPolicy
from sweeper.sandbox.provider_server import HoldPoint
from sweeper.sandbox.world import USDT_ENERGY_NEW_HOLDER, USDT_ENERGY_OLD_HOLDER
from tests.integration import test_pipeline as base
from tests.integration.test_pipeline import (
    DESTINATION,
    TOKENS,
    USDT,
    WALLET,
    Env,
    _state_is,
    drive_until,
    short_timeout_clients,
    wait_final,
)

env = base.env  # the pipeline tests' fixture: a sandbox node + provider over one world, and a ledger

S = SweepState


def alerts(logs: list[dict[str, object]], text: str) -> list[dict[str, object]]:
    return [e for e in logs if str(e.get("event", "")).startswith("ALERT") and text in str(e["event"])]


def requeue_blocked(env: Env, address: str) -> bool:
    """What the scanner would do on its next pass: True if a new row could be queued."""
    return env.ledger.queue_sweep(address, "USDT", USDT, env.world.token_balance(USDT, address)) is not None


def test_a_frozen_address_costs_zero_orders_and_ends_held_with_the_reason(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    env.world.blacklist(a)  # USDT's freeze list: its transfers revert
    sweep_id = env.queue(a)
    with capture_logs() as logs:
        asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED, (row.state, row.last_error)
    reason = env.ledger.events(sweep_id)[-1].reason
    assert "isBlackListed" in reason and "nothing ordered" in reason
    assert env.provider.post_count == 0 and env.provider.orders == {}
    hold = env.ledger.active_hold(a, "USDT")
    assert hold is not None and hold.sweep_id == sweep_id and "isBlackListed" in hold.reason
    assert len(alerts(logs, "held")) == 1
    assert not requeue_blocked(env, a)  # the next scan does not queue it again
    assert env.ledger.stats().held == 1


def test_a_revert_on_every_address_pauses_the_token_once_then_resumes(env: Env) -> None:
    addresses = [env.fund(i, 20_000_000 + i) for i in range(5)]
    ids = [env.queue(a) for a in addresses]
    env.world.pause_usdt()  # Tether paused the token: every transfer reverts

    async def go() -> None:
        async with env.pipeline(token_recheck_seconds=0.3, revert_retry_seconds=0.05) as pipeline:
            await drive_until(
                pipeline,
                lambda: env.ledger.pause(token_pause_name("USDT")) is not None,
                15,
                "token paused",
            )
            for _ in range(5):  # a few more passes while paused: nothing ordered, nothing held
                await pipeline.run_once()
            assert env.provider.post_count == 0
            assert all(env.ledger.get_sweep(i).state is S.QUEUED for i in ids)
            env.world.pause_usdt(False)
            await wait_final(pipeline, env.ledger, 30)

    with capture_logs() as logs:
        asyncio.run(go())
    assert len(alerts(logs, "every transfer of this token reverts")) == 1
    assert [e for e in logs if e.get("event") == "token resumed: a simulated transfer passes again"]
    assert env.ledger.pause(token_pause_name("USDT")) is None
    assert env.ledger.holds() == []
    for sweep_id, address in zip(ids, addresses, strict=True):
        assert env.ledger.get_sweep(sweep_id).state is S.CONFIRMED
        assert env.world.token_balance(USDT, address) == 0
        assert len(env.provider.orders_by_out_trade_no(env.ledger.get_sweep(sweep_id).out_trade_no)) == 1


def test_out_of_energy_after_a_paid_order_costs_one_order_then_holds(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.world.hold_inclusion()

    async def go(pipeline_runs: int) -> None:
        async with env.pipeline() as pipeline:
            await drive_until(pipeline, _state_is(env, sweep_id, S.BROADCAST), 15, "broadcast")
            with env.world.lock:
                env.world.usdt_energy_penalty = 40_000  # the need grew after broadcast: OUT_OF_ENERGY
                env.world.hold_inclusion(False)
            await wait_final(pipeline, env.ledger, 20)
            for _ in range(pipeline_runs):
                assert await pipeline.run_once() == 0

    asyncio.run(go(3))
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED and "OUT_OF_ENERGY" in (env.ledger.events(sweep_id)[-1].reason)
    hold = env.ledger.active_hold(a, "USDT")
    assert hold is not None and hold.sweep_id == sweep_id
    # The next detection pass (the first wave queued it again and paid another order): refused.
    assert not requeue_blocked(env, a)
    assert env.provider.post_count == 1 and len(env.transfers_from(a)) == 1


def test_release_and_retry_lift_the_hold_and_sweep_once(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    b = env.fund(1, 30_000_000)
    env.world.blacklist(a)
    env.world.blacklist(b)
    first_a, first_b = env.queue(a), env.queue(b)
    asyncio.run(env.run())
    assert env.ledger.active_hold(a, "USDT") and env.ledger.active_hold(b, "USDT")
    env.world.blacklist(a, False)
    env.world.blacklist(b, False)  # Tether unfroze both
    env.ledger.release_holds(a, "USDT")  # `sweeper addresses release A --token USDT`
    second_a = env.queue(a)
    retried_b = env.ledger.retry(first_b)  # `sweeper sweeps retry B's sweep`
    asyncio.run(env.run())
    for sweep_id, address in ((second_a, a), (retried_b, b)):
        assert env.ledger.get_sweep(sweep_id).state is S.CONFIRMED
        assert env.world.token_balance(USDT, address) == 0
        assert len(env.provider.orders_by_out_trade_no(env.ledger.get_sweep(sweep_id).out_trade_no)) == 1
    assert env.ledger.get_sweep(first_a).state is S.FAILED
    assert env.provider.post_count == 2 and env.ledger.holds() == []


def test_an_unpaid_failure_cools_the_pair_down_across_new_rows(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.provider.set_switches(outcome=41)  # the order ends with a full refund: nothing was spent
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED and row.refund_sun == row.cost_sun and row.charge_sun == 0
    assert env.ledger.active_hold(a, "USDT") is None  # fully refunded: not held …
    cooldown = env.ledger.cooldown(a, "USDT")
    assert cooldown is not None and cooldown.failures == 1  # … but it cannot loop either
    assert not requeue_blocked(env, a)


def test_a_partly_refunded_order_holds(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.provider.set_switches(outcome=43)  # ended abnormally: the sandbox refunds nothing
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED and (row.refund_sun or 0) < (row.cost_sun or 0)
    assert env.ledger.active_hold(a, "USDT") is not None


def test_no_quote_no_order(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.provider.set_switches(price_unavailable=True)
    # The pipeline's monotonic clock, moved by the test: the ALERT's timing is exact, not raced.
    now = [1000.0]
    monkeypatch.setattr(pipeline_module, "time", SimpleNamespace(monotonic=lambda: now[0]))

    async def go() -> None:
        async with env.pipeline(no_quote_retry_seconds=0.01, no_quote_alert_seconds=10) as pipeline:
            pipeline.provider.retry = RetryPolicy(attempts=1)  # one request per quote: a fast test
            for at in (0, 1, 2, 10, 11, 12, 20):  # seconds without a quote
                now[0] = 1000.0 + at
                await asyncio.sleep(0.02)  # past the row's next attempt
                assert await pipeline.run_once() == 1
                row = env.ledger.get_sweep(sweep_id)
                assert row.state is S.QUEUED and "no energy price quote" in (row.last_error or "")
            assert env.provider.post_count == 0
            env.provider.set_switches(price_unavailable=False)
            now[0] += 100  # past the price cache
            await wait_final(pipeline, env.ledger, 20)

    with capture_logs() as logs:
        asyncio.run(go())
    # ALERT once the quotes have been missing for the alert period, then once per period.
    assert len(alerts(logs, "no energy price quote")) == 2
    assert env.ledger.get_sweep(sweep_id).state is S.CONFIRMED and env.provider.post_count == 1


def test_energy_already_on_the_address_orders_nothing(env: Env) -> None:
    a = env.fund(0, 20_000_000, activated=True)
    env.world.delegate_energy(a, USDT_ENERGY_NEW_HOLDER)  # e.g. an earlier order still delegated
    env.world.add_bandwidth(a, 400)
    sweep_id = env.queue(a)
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CONFIRMED, (row.state, row.last_error)
    assert env.provider.post_count == 0 and row.serial is None and row.charge_sun is None
    assert [e.to_state for e in env.ledger.events(sweep_id)][:3] == ["queued", "ordering", "energy_ready"]
    assert row.energy_needed == USDT_ENERGY_NEW_HOLDER  # measured, not assumed
    assert env.world.token_balance(USDT, DESTINATION) == 20_000_000


def test_a_need_that_grew_before_signing_is_not_broadcast(env: Env) -> None:
    env.world.credit_token(USDT, DESTINATION, 1_000_000)  # the destination holds USDT: 65k ordered
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)

    async def go() -> None:
        async with env.pipeline() as pipeline:
            pipeline.stopping = True  # one step per pass, as on SIGTERM
            await drive_until(pipeline, _state_is(env, sweep_id, S.ENERGY_READY), 15, "energy_ready")
            with env.world.lock:  # the destination was emptied: the transfer now needs ~130k
                env.world.token_balances[(USDT, DESTINATION)] = 0
            pipeline.stopping = False
            await wait_final(pipeline, env.ledger, 15)

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED, (row.state, row.last_error)
    reason = env.ledger.events(sweep_id)[-1].reason
    assert f"now needs {USDT_ENERGY_NEW_HOLDER} energy (measured {USDT_ENERGY_OLD_HOLDER}" in reason
    assert row.txid is None and env.transfers_from(a) == []  # nothing signed, nothing sent
    assert env.ledger.active_hold(a, "USDT") is not None and env.provider.post_count == 1


def test_a_need_above_what_collect_manual_delivers_orders_nothing_and_holds(env: Env) -> None:
    env.world.credit_token(USDT, DESTINATION, 1_000_000)  # collect-manual would delegate ~65k
    env.world.usdt_energy_penalty = 5_000  # dynamic energy: the transfer needs 69,285
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    asyncio.run(env.run())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED
    reason = env.ledger.events(sweep_id)[-1].reason
    assert f"needs {USDT_ENERGY_OLD_HOLDER + 5_000} energy; collect-manual delivers 65000" in reason
    assert env.provider.post_count == 0 and env.ledger.active_hold(a, "USDT") is not None


def test_sixteen_concurrent_rows_against_a_budget_for_three_order_exactly_three(env: Env) -> None:
    env.world.credit_token(USDT, DESTINATION, 1_000_000)  # old-holder price: 4 TRX a sweep
    addresses = [env.fund(i, 20_000_000, activated=True) for i in range(16)]
    for a in addresses:
        env.queue(a)

    async def go() -> None:
        async with env.pipeline(concurrency=16, max_daily_spend_sun=12_000_000) as pipeline:
            for _ in range(4):
                await pipeline.run_once()

    asyncio.run(go())
    assert env.provider.post_count == 3 and len(env.provider.orders) == 3
    assert env.ledger.spent_on(utc_day(env.ledger.now())) == 12_000_000
    waiting = [s for s in env.ledger.list_sweeps() if s.state is S.QUEUED]
    assert len(waiting) == 13 and all("daily spend cap reached" in (s.last_error or "") for s in waiting)


def test_an_order_that_cost_more_than_the_cap_pauses_ordering_until_resumed(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    b = env.fund(1, 20_000_000)
    first = env.queue(a)

    async def go() -> Pipeline:
        async with env.pipeline(max_cost_per_sweep_sun=5_000_000) as pipeline:
            # The quote said 1 TRX (cached); the order then costs the sandbox's real 8 TRX.
            pipeline._price_cache = (time.monotonic(), 1_000_000)
            await wait_final(pipeline, env.ledger, 20)
            second = env.queue(b)
            for _ in range(3):
                await pipeline.run_once()
            assert env.ledger.get_sweep(second).state is S.QUEUED and env.provider.post_count == 1
            assert pipeline.ordering_paused_reason is not None
            env.ledger.clear_pause(ORDERING_PAUSE)  # `sweeper ordering resume`
            await wait_final(pipeline, env.ledger, 20)
            return pipeline

    with capture_logs() as logs:
        asyncio.run(go())
    assert env.ledger.get_sweep(first).state is S.CONFIRMED  # the paid order was still used
    assert len(alerts(logs, "energy ordering paused until `sweeper ordering resume`")) == 1
    assert env.provider.post_count == 2 and env.world.token_balance(USDT, b) == 0


def test_a_revert_for_another_reason_backs_off_then_holds_after_the_revert_window(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.world.pause_usdt()  # one address only: not enough to tell a token-wide revert

    async def go() -> None:
        async with env.pipeline(revert_hold_seconds=0.6, revert_retry_seconds=0.05) as pipeline:
            await pipeline.run_once()
            row = env.ledger.get_sweep(sweep_id)
            assert row.state is S.QUEUED and row.reverting_since is not None  # backed off, not held
            assert env.ledger.active_hold(a, "USDT") is None
            await wait_final(pipeline, env.ledger, 15)

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED and "reverts" in env.ledger.events(sweep_id)[-1].reason
    assert env.ledger.active_hold(a, "USDT") is not None
    assert env.provider.post_count == 0 and env.ledger.pause(token_pause_name("USDT")) is None


def test_rebuilds_are_bounded_by_max_attempts_then_the_row_fails_held(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transfer that keeps expiring unincluded is rebuilt at most pipeline.max_attempts times."""
    monkeypatch.setattr(tronpy.async_tron, "current_timestamp", env.world.now_ms)
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.world.hold_inclusion()  # never included

    def rebuilt(times: int) -> Callable[[], bool]:
        return lambda: (row := env.ledger.get_sweep(sweep_id)).send_attempts >= times or row.is_final

    async def go() -> None:
        async with env.pipeline(max_attempts=1) as pipeline:
            for round_ in range(2):
                await drive_until(pipeline, _state_is(env, sweep_id, S.BROADCAST), 15, "broadcast")
                with env.world.lock:  # no block from the ticker in between
                    env.world.advance_time(DEFAULT_LIFETIME_MS / 1000 + 10)
                    env.world.produce_block()  # a head past the expiration
                    env.world.hold_inclusion(False)
                    env.world.produce_block()  # drops the expired transfer, never included
                    env.world.hold_inclusion()
                # The rebuild counter moves (the whole rebuild may happen within one pass).
                await drive_until(pipeline, rebuilt(round_ + 1), 15, f"rebuild {round_ + 1}")
            await wait_final(pipeline, env.ledger, 15)

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED, (row.state, row.last_error)
    assert "gave up after 2 rebuilds / rejected broadcasts" in env.ledger.events(sweep_id)[-1].reason
    assert [e.to_state for e in env.ledger.events(sweep_id)].count("signed") == 2
    assert env.ledger.active_hold(a, "USDT") is not None and env.provider.post_count == 1


def test_past_the_order_timeout_a_final_refund_still_decides(env: Env) -> None:
    """After an outage longer than order_timeout the order is asked first: refunded in full, the
    row fails unpaid (cooldown, refund credited), not held as if the money were lost."""
    env.provider.delegation_delay = None  # the order stays pending until the test ends it
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)

    async def go() -> None:
        async with env.pipeline(order_timeout_seconds=1) as pipeline:
            await drive_until(pipeline, _state_is(env, sweep_id, S.ENERGY_ORDERED), 15, "ordered")
            await asyncio.sleep(1.2)  # the daemon was down past the timeout …
            row = env.ledger.get_sweep(sweep_id)
            env.provider.complete(str(row.serial), status=41)  # … and the order ended refunded
            await wait_final(pipeline, env.ledger, 15)

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED and "status 41" in env.ledger.events(sweep_id)[-1].reason
    assert row.charge_sun == 0 and env.ledger.active_hold(a, "USDT") is None
    assert env.ledger.cooldown(a, "USDT") is not None


def test_a_re_created_ledger_never_adopts_the_old_ledgers_orders(env: Env) -> None:
    """Issue 12: the ledger is deleted and re-created (ids start at 1 again) against a provider that
    still holds the old orders: every address is swept again, each with a new order of its own."""
    a, b = env.fund(0, 20_000_000), env.fund(1, 30_000_000)
    first = [env.queue(a), env.queue(b)]
    asyncio.run(env.run())
    old_keys = {env.ledger.get_sweep(i).out_trade_no for i in first}
    assert env.provider.post_count == 2
    # Re-created from scratch: same database, new empty tables, ids from 1 again.
    with env.ledger.engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE alembic_version"))
        if conn.dialect.name == "postgresql":
            conn.execute(text("DROP FUNCTION sweep_events_append_only()"))
    upgrade(env.ledger.engine)
    a, b = env.fund(0, 25_000_000), env.fund(1, 35_000_000)  # new deposits on the same addresses
    for address in (a, b):  # the provider took back what was left of the old delegations
        env.world.reclaim_energy(address)
    again = [env.queue(a), env.queue(b)]
    assert again == first  # the same row ids as the old ledger's
    asyncio.run(env.run())
    for sweep_id, address in zip(again, (a, b), strict=True):
        row = env.ledger.get_sweep(sweep_id)
        assert row.state is S.CONFIRMED, (row.state, row.last_error)
        assert row.out_trade_no not in old_keys and len(row.out_trade_no) <= 32
        assert not any("adopted" in e.reason for e in env.ledger.events(sweep_id))
        assert len(env.provider.orders_by_out_trade_no(row.out_trade_no)) == 1
        assert env.world.token_balance(USDT, address) == 0
    assert env.provider.post_count == 4


NEW_DESTINATION = "TTsXdXbiYdVbcUh6LhWAh41wy4pv4abHbj"


def _change_destination_between_signing_and_broadcast(
    env: Env, monkeypatch: pytest.MonkeyPatch, sweep_id: int, address: str
) -> None:
    monkeypatch.setattr(tronpy.async_tron, "current_timestamp", env.world.now_ms)

    async def go() -> None:
        async with env.pipeline() as pipeline:
            pipeline.stopping = True  # one step per pass, as on SIGTERM
            await drive_until(pipeline, _state_is(env, sweep_id, S.SIGNED), 15, "signed")
            signed_to = env.ledger.get_sweep(sweep_id)
            assert signed_to.txid is not None
            pipeline.options = dataclasses.replace(pipeline.options, destination=NEW_DESTINATION)  # SIGHUP
            pipeline.stopping = False
            for _ in range(5):
                await pipeline.run_once()
            assert env.transfers_from(address) == []  # the bytes paying the old destination: never sent
            assert env.ledger.get_sweep(sweep_id).state is S.SIGNED
            # Time passes (the chain's and ours alike) until the stored transfer has expired.
            offset = timedelta(seconds=DEFAULT_LIFETIME_MS / 1000 + 10)
            real_now = pipeline.now
            pipeline.now = pipeline.host_now = env.ledger.now = lambda: real_now() + offset
            with env.world.lock:
                env.world.advance_time(offset.total_seconds())
                env.world.produce_blocks(3)
            await wait_final(pipeline, env.ledger, 20)

    asyncio.run(go())


def test_a_destination_changed_between_signing_and_broadcast_is_rebuilt_to_the_new_one(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.world.credit_trx(NEW_DESTINATION, 1)
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    _change_destination_between_signing_and_broadcast(env, monkeypatch, sweep_id, a)
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CONFIRMED, (row.state, row.last_error)
    assert row.destination == NEW_DESTINATION
    assert env.world.token_balance(USDT, NEW_DESTINATION) == 20_000_000
    assert env.world.token_balance(USDT, DESTINATION) == 0
    [tx] = env.transfers_from(a)  # exactly one transfer, to the new destination
    assert tx.to == NEW_DESTINATION and tx.receipt.result == "SUCCESS"
    assert env.provider.post_count == 1


def test_a_changed_destination_whose_need_no_longer_fits_holds(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.world.credit_token(USDT, DESTINATION, 1_000_000)  # the old destination holds USDT: ~65k ordered
    env.world.credit_trx(NEW_DESTINATION, 1)  # the new one holds none: ~130k needed
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    _change_destination_between_signing_and_broadcast(env, monkeypatch, sweep_id, a)
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.FAILED and "now needs" in env.ledger.events(sweep_id)[-1].reason
    assert env.transfers_from(a) == [] and env.ledger.active_hold(a, "USDT") is not None


def test_a_host_clock_two_minutes_behind_the_chain_orders_nothing_until_it_agrees(env: Env) -> None:
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)

    async def go() -> None:
        async with env.pipeline(chain_clock_retry_seconds=0.05, chain_clock_check_ttl_seconds=0) as pipeline:
            host = pipeline.chain._clock
            pipeline.chain._clock = lambda: host() - timedelta(minutes=2)  # this host's clock is behind
            for _ in range(4):
                await pipeline.run_once()
                await asyncio.sleep(0.06)
            row = env.ledger.get_sweep(sweep_id)
            assert row.state is S.QUEUED and "-120 s" not in (row.last_error or "")
            assert "+120 s from this host's clock" in (row.last_error or "")
            assert env.provider.post_count == 0 and pipeline.chain_clock_problem is not None
            pipeline.chain._clock = host  # NTP fixed it
            await wait_final(pipeline, env.ledger, 20)
            assert pipeline.chain_clock_problem is None

    with capture_logs() as logs:
        asyncio.run(go())
    assert len(alerts(logs, "host clock and chain disagree")) == 1
    assert env.ledger.get_sweep(sweep_id).state is S.CONFIRMED and env.provider.post_count == 1


class _HostClock10MinutesAhead(datetime):
    """What `datetime.now()` says on a host whose clock is 10 minutes ahead."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
        return datetime.now(tz) + timedelta(minutes=10)


def test_two_workers_whose_host_clocks_differ_by_10_minutes_order_once(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker A's order POST hangs before the provider creates anything and A gives up on it
    (outcome unknown). Worker B, on a host whose clock is 10 minutes ahead, takes the row: by its
    own clock the settle window is long over and it would order again. Leases, due times and the
    settle window compare against the database's clock, so B only looks the order up. (The
    chain-clock check is off here: it alone would stop B from ordering.)"""
    a = env.fund(0, 20_000_000)
    sweep_id = env.queue(a)
    env.provider.hold_posts(HoldPoint.BEFORE_CREATE)
    opts = dict(order_grace_seconds=0.1, chain_clock_check=False)

    async def go() -> None:
        async with short_timeout_clients(env) as (chain, client):
            options = PipelineOptions(
                destination=DESTINATION, tokens=TOKENS, poll_min_seconds=0.05, backoff_base_seconds=0.05,
                backoff_max_seconds=0.2, **opts,  # type: ignore[arg-type]
            )  # fmt: skip
            worker_a = Pipeline(env.ledger, client, chain, Keys(env.ledger, WALLET), options, worker_id="a")
            ledger_b = Ledger(env.ledger.engine)  # another process: its own ledger and clock
            worker_b = Pipeline(ledger_b, client, chain, Keys(ledger_b, WALLET), options, worker_id="b")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while "outcome unknown" not in (env.ledger.get_sweep(sweep_id).last_error or ""):
                assert loop.time() < deadline, "A's POST should time out"
                await worker_a.run_once()
                await asyncio.sleep(0.02)
            with monkeypatch.context() as host:  # only while B works: B's host clock is ahead
                host.setattr(domain, "datetime", _HostClock10MinutesAhead)
                assert domain.utcnow() - datetime.now(UTC) > timedelta(minutes=9)
                for _ in range(6):
                    await asyncio.sleep(0.15)  # past A's grace: the row is due
                    await worker_b.run_once()
            assert worker_b.steps_done > 0, "B never took the row: the test proved nothing"
            assert env.provider.post_count == 1, "B ordered again while A's POST could still land"
            assert "may still land" in (env.ledger.get_sweep(sweep_id).last_error or "")
            env.provider.release_posts()  # A's order is created, late; it is adopted
            await wait_final(worker_a, env.ledger, 30)

    asyncio.run(go())
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CONFIRMED, (row.state, row.last_error)
    assert len(env.provider.orders_by_out_trade_no(row.out_trade_no)) == 1 and env.provider.post_count == 1


def test_an_18_decimal_token_with_a_10_to_the_27_balance_is_queued_and_swept(env: Env) -> None:
    """Issue 12: a billion tokens of 18 decimals (10^27 base units, far above 2^63) move exactly."""
    big_token = "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf"
    env.world.add_token(big_token, 18)
    tokens = (*TOKENS, TokenSettings(symbol="BIG", contract=big_token, decimals=18, min_sweep=Decimal("1")))
    amount = 10**27 + 123
    a = env.fund(0, 0)
    env.world.credit_token(big_token, a, amount)
    sweep_id = env.ledger.queue_sweep(a, "BIG", big_token, amount)
    assert sweep_id is not None
    asyncio.run(env.run(tokens=tokens))
    row = env.ledger.get_sweep(sweep_id)
    assert row.state is S.CONFIRMED, (row.state, row.last_error)
    assert row.amount == row.observed_amount == amount
    assert env.world.token_balance(big_token, DESTINATION) == amount
    assert env.world.token_balance(big_token, a) == 0
    assert env.ledger.stats().swept_by_token == {"BIG": amount}
