"""The fault matrix, peers (issue 15, item 1): the provider and the TRON node misbehave while
`sweeper run` (a real process) sweeps; each case lets the fault heal, waits for the daemon to settle
and runs THE invariant checker (tests/e2e/invariants.py), plus its own expected outcome.

Every fault is switched in the sandbox (sweeper/sandbox/control.py), modelled on the real services'
documented behaviour (../shared/docs/provider-api.md, java-tron). Waits poll the ledger, the sandbox
or the daemon's /metrics; none sleeps to synchronise.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from sweeper.ledger.ledger import sweeps
from tests.constants import WALLET
from tests.e2e.harness import run_sweeper, sweeper_env
from tests.e2e.invariants import Expect
from tests.e2e.matrix.cases import USDT, DaemonCase, S, daemon_case, poll

NODE_ERRORS = "sweeper_node_errors_total"
PROVIDER_ERRORS = "sweeper_provider_errors_total"


def _settle_window_passed(case: DaemonCase, sweep_id: int) -> bool:
    """Make a row's order-sent mark 301 s old and the row due now (only while nobody leases it)."""
    now = case.ledger.now()
    with case.ledger.engine.begin() as conn:
        moved = conn.execute(
            update(sweeps)
            .where(sweeps.c.id == sweep_id, sweeps.c.state == "ordering", sweeps.c.claimed_by.is_(None))
            .values(order_sent_at=now - timedelta(seconds=301), next_attempt_at=now)
        ).rowcount
    return moved == 1


# --- provider ---------------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before_create", "after_create"], ids=lambda p: f"provider-timeout-{p}")
def test_provider_timeout(tmp_path: Path, sqlite_url: str, point: str) -> None:
    """The POST hangs beyond the client's timeout (20 s read), before or after the order exists, and
    is then let through: the row never POSTs again, finds the order by its out_trade_no and sweeps."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT}) as case:
        control = case.box.control
        control.hold_posts(point)  # type: ignore[arg-type]
        case.start()
        poll(lambda: control.provider_state().held_posts == 1, what="the POST held", timeout=60)
        case.wait_row(
            lambda r: "outcome unknown" in (r.last_error or ""),
            what="the daemon gave up waiting for the answer",
            timeout=60,
        )
        assert control.provider_state().post_count == 1
        control.release_posts()  # before_create: the held request now creates its order, late
        rows = case.wait_final(1)
        case.assert_swept(rows)
        assert control.provider_state().post_count == 1, "a second POST for the row"
        assert [o.out_trade_no for o in control.orders()] == [rows[0].out_trade_no]
        assert rows[0].serial == control.orders()[0].serial
        case.finish()


@pytest.mark.parametrize("point", ["before_create", "after_create"], ids=lambda p: f"provider-5xx-{p}")
def test_provider_5xx(tmp_path: Path, sqlite_url: str, point: str) -> None:
    """A 5xx answer to the POST: the order may exist. After create: the lookup finds and adopts it.
    Before create: nothing is found, and no second POST goes out inside the 300 s settle window;
    moving the window's start back (time passing) lets the row order once."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT}) as case:
        control = case.box.control
        if point == "after_create":
            control.error_after_create(1, 500)
        else:
            control.set_provider_switches(error_before_create=1, error_status=502)
        case.start()
        if point == "before_create":
            row = case.wait_row(
                lambda r: (
                    r.state is S.ORDERING
                    and r.order_sent_at is not None
                    and "may still land" in (r.last_error or "")
                ),
                what="the row waiting out the settle window",
            )
            assert control.orders() == [] and control.provider_state().post_count == 1
            # The settle window is 300 s of the database's clock: move its start back instead of
            # waiting (time passing), while the row is not leased, so no worker overwrites it.
            poll(lambda: _settle_window_passed(case, row.id) or None, what="the settle window moved back")
        rows = case.wait_final(1)
        case.assert_swept(rows)
        assert control.provider_state().post_count == 2 if point == "before_create" else 1
        assert len(control.orders()) == 1
        case.finish()


def test_provider_refuses_the_api_key_at_start(tmp_path: Path, sqlite_url: str) -> None:
    """403 (the sandbox answers like the docs' DRF: {"detail": ...}): `sweeper run` exits 2 naming the
    setting to fix, without the key; the ledger (two sweeps queued by a scan) is left as it was."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT, 1: 30 * USDT}) as case:
        run_sweeper(case.config, case.box, "scan")
        before = case.rows()
        assert [r.state for r in before] == [S.QUEUED, S.QUEUED]
        refused = subprocess.run(
            [sys.executable, "-m", "sweeper", "--config", str(case.config), "run"],
            env={**sweeper_env(case.box), "SWEEPER_PROVIDER_API_KEY": "revoked-key"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert "provider.api_key_env" in refused.stderr and "API key" in refused.stderr
        assert "revoked-key" not in refused.stderr and "Traceback" not in refused.stderr
        assert case.rows() == before, "the refused start changed the ledger"
        assert (
            case.box.control.orders() == [] and case.box.control.transactions(owner=before[0].address) == []
        )
        # Queued with a due time in the past is the one thing the checker would flag: nothing ran.
        case.finish(Expect(settled=False))


def test_provider_low_balance_pauses_ordering_then_resumes(tmp_path: Path, sqlite_url: str) -> None:
    """The provider refuses the order for low balance: ordering pauses (ALERT, nothing ordered for
    any sweep, no POST repeated while paused); once the balance is back, the pause runs out and the
    sweeps are ordered once each."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT, 1: 26 * USDT}) as case:
        control = case.box.control
        control.set_provider_balance(1_000_000)  # 1 TRX: below one order and below max_cost_per_sweep
        case.start()
        case.wait_row(lambda r: "balance too low" in (r.last_error or ""), what="the refusal for low balance")
        assert "ALERT: energy ordering paused" in case.log_text()
        assert control.orders() == []
        # Both rows wait for the pause: queued, due when it ends (each POSTed at most once).
        poll(
            lambda: (
                (
                    (rows := case.rows())
                    and len(rows) == 2
                    and all(r.state is S.QUEUED and r.next_attempt_at is not None for r in rows)
                )
                or None
            ),
            what="both sweeps queued behind the pause",
        )
        refused_posts = control.provider_state().post_count
        assert 1 <= refused_posts <= 2, refused_posts
        control.set_provider_balance(1_000_000_000)
        rows = case.wait_final(2, timeout=120)
        case.assert_swept(rows)
        assert len(control.orders()) == 2
        # No POST while paused: the refused ones, then one per row once the pause ran out.
        assert control.provider_state().post_count == refused_posts + 2
        case.finish()


@pytest.mark.parametrize(
    ("outcome", "refund_percent", "held"),
    [(0, 100, True), (41, 100, False), (41, 50, True), (43, 100, True)],
    ids=["order-ends-0", "order-ends-41-full-refund", "order-ends-41-partial-refund", "order-ends-43"],
)
def test_provider_order_ends_badly(
    tmp_path: Path, sqlite_url: str, outcome: int, refund_percent: int, held: bool
) -> None:
    """An order ending 0/41/43 fails the row, never signs; money lost (no or a partial refund) holds
    the address until an operator acts; a full refund only cools it down."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT}) as case:
        control = case.box.control
        control.set_provider_switches(outcome=outcome, refund_percent=refund_percent)
        case.start()
        [row] = case.wait_final(1)
        assert row.state is S.FAILED
        assert f"status {outcome}" in (case.ledger.events(row.id)[-1].reason or "")
        [order] = control.orders()
        assert row.refund_sun == order.refund_amount_sun
        assert order.refund_amount_sun == (order.amount_sun * refund_percent // 100 if outcome == 41 else 0)
        assert (row.address in case.held_addresses()) is held
        assert control.transactions(owner=row.address) == []
        assert control.usdt_balance(row.address) == 25 * USDT
        case.finish()


@pytest.mark.parametrize(
    "fault", ["duplicated", "reordered", "stale", "never-sent"], ids=lambda f: f"callbacks-{f}"
)
def test_provider_callbacks(tmp_path: Path, sqlite_url: str, fault: str) -> None:
    """Callbacks are hints: repeated, out of order, stale (refused 401) or absent, every sweep
    completes once; the query decides, never the body."""
    deposits = {i: (20 + i) * USDT for i in range(3)}
    with daemon_case(tmp_path, sqlite_url, deposits=deposits) as case:
        control = case.box.control
        if fault == "duplicated":
            control.set_provider_switches(duplicate_callbacks=3)
        elif fault == "reordered":
            control.hold_callbacks()
        elif fault == "stale":
            control.set_provider_switches(callback_age_seconds=7200)  # beyond max_age_seconds (3600)
        else:
            control.set_provider_switches(callbacks_enabled=False)
        case.start()
        if fault == "reordered":
            poll(
                lambda: control.provider_state().held_callbacks == 3 or None,
                what="three callbacks buffered",
                timeout=90,
            )
            control.release_callbacks(reverse=True)
        rows = case.wait_final(3)
        case.assert_swept(rows)
        attempts = [a for o in control.orders() for a in o.callback_attempts]
        if fault == "duplicated":
            assert sum(a.status_code == 200 for a in attempts) == 3 * 4
            case.wait_metric('sweeper_callbacks_total{result="hinted"}', 1)
        elif fault == "reordered":
            # Every order's (reversed) callback reaches the listener and is acknowledged (a slow
            # answer is retried by the provider): late news about final sweeps changes nothing.
            poll(
                lambda: (
                    all(any(a.status_code == 200 for a in o.callback_attempts) for o in control.orders())
                    or None
                ),
                what="every buffered callback acknowledged",
            )
        elif fault == "stale":
            case.wait_metric('sweeper_callbacks_total{result="stale_timestamp"}', 1)
            assert all(a.status_code != 200 for a in attempts)
        else:
            assert attempts and all(a.suppressed for a in attempts)
        assert len(control.orders()) == 3
        case.finish()


def test_provider_down_for_minutes(tmp_path: Path, sqlite_url: str) -> None:
    """The whole API answers 503 while an order is being delegated (compressed: until the daemon has
    failed several order queries and backed off between them): the daemon stays up, /healthz says
    the provider is unreachable, and once it is back the sweep completes on the same order."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT}) as case:
        control = case.box.control
        control.set_delegation_delay(None)  # the order stays open until the test completes it
        case.start()
        row = case.wait_state(S.ENERGY_ORDERED)
        control.set_provider_switches(down_status=503)
        control.complete(str(row.serial))  # the provider's own work goes on behind the outage
        errors_at_start = case.wait_metric(PROVIDER_ERRORS, 0)
        case.wait_metric(PROVIDER_ERRORS, errors_at_start + 8, timeout=90)
        poll(
            lambda: ((h := case.healthz()) is not None and h[0] == 503 and "provider" in str(h[1])) or None,
            what="/healthz naming the provider",
            timeout=30,
        )
        assert case.ledger.get_sweep(row.id).state is S.ENERGY_ORDERED
        assert case.proc is not None and case.proc.poll() is None, "the daemon stays up"
        control.set_provider_switches(down_status=0)
        rows = case.wait_final(1, timeout=120)
        case.assert_swept(rows)
        assert len(control.orders()) == 1 and control.provider_state().post_count == 1
        case.finish()


# --- node -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["429-storm", "5xx", "timeouts"], ids=lambda f: f"node-{f}")
def test_node_unreliable(tmp_path: Path, sqlite_url: str, fault: str) -> None:
    """The node refuses (429), fails (5xx) or answers later than the client waits (10 s) until the
    daemon has met it several times; then it heals and everything is swept once."""
    deposits = {0: 25 * USDT, 1: 31 * USDT}
    with daemon_case(tmp_path, sqlite_url, deposits=deposits) as case:
        control = case.box.control
        if fault == "429-storm":
            control.set_node_switches(max_rps=4)
        elif fault == "5xx":
            control.set_node_switches(error_rate=0.3)
        else:
            control.set_node_switches(latency_s=11)
        case.start()
        case.wait_metric(NODE_ERRORS, 1 if fault == "timeouts" else 10, timeout=90)
        if fault == "5xx":  # a flaky node that stays flaky: the sweeps complete through it
            rows = case.wait_final(2, timeout=120)
            control.set_node_switches(error_rate=0)
        else:
            control.set_node_switches(max_rps=0, latency_s=0)
            rows = case.wait_final(2, timeout=120)
        case.assert_swept(rows)
        case.finish()


def test_node_hanging_broadcast(tmp_path: Path, sqlite_url: str) -> None:
    """The broadcast request hangs beyond the client's timeout, then goes through (possibly twice:
    the retry): one transfer, confirmed."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT}) as case:
        control = case.box.control
        control.hold_broadcasts()
        case.start()
        poll(lambda: control.node_state().held_broadcasts >= 1 or None, what="a broadcast held", timeout=60)
        case.wait_metric(NODE_ERRORS, 1, timeout=60)  # the client timed out on it
        control.release_broadcasts()
        rows = case.wait_final(1)
        case.assert_swept(rows)
        assert [t.txid for t in control.transactions(owner=rows[0].address)] == [rows[0].txid]
        case.finish()


def test_node_dup_on_rebroadcast(tmp_path: Path, sqlite_url: str) -> None:
    """The node accepts the transfer but the answer is lost (503); the client sends the same bytes
    again and the node says DUP_TRANSACTION_ERROR: that is success, not a reason to rebuild."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT}) as case:
        control = case.box.control
        control.set_node_switches(fail_after_broadcast=1)
        case.start()
        rows = case.wait_final(1)
        case.assert_swept(rows)
        [row] = rows
        assert row.send_attempts == 0, "rebuilt although the node had the transfer"
        assert [t.txid for t in control.transactions(owner=row.address)] == [row.txid]
        assert f"broadcast {row.txid}: already_known" in case.events(row.id)[-2], case.events(row.id)
        case.finish()


def test_node_expired_transaction(tmp_path: Path, sqlite_url: str) -> None:
    """The transfer is accepted but never mined, and expires (60 s): the row rebuilds once the chain
    proves it expired, and the second transaction lands; the first never.
    (hold_inclusion would not do: the sandbox keeps a held transaction in its pool past expiry.)"""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT}) as case:
        control = case.box.control
        # The node says "accepted" and forgets the transfer (a node that loses its pool): it is never
        # mined, and once the chain is past its expiration no node knows it.
        control.set_node_switches(drop_broadcasts=True)
        case.start()
        first = case.wait_state(S.BROADCAST)
        control.set_node_switches(drop_broadcasts=False)
        case.wait_row(
            lambda r: r.id == first.id and r.send_attempts == 1 and r.state is not S.BROADCAST,
            what="the expired transfer rebuilt",
            timeout=120,
        )
        rows = case.wait_final(1)
        case.assert_swept(rows)
        [row] = rows
        assert row.txid != first.txid
        txs = {t.txid: t for t in control.transactions(owner=row.address)}
        assert txs[str(row.txid)].result == "SUCCESS"
        assert first.txid is not None and (first.txid not in txs or txs[first.txid].block_number is None)
        assert any("expired" in e.lower() for e in case.events(row.id))
        case.finish()


@pytest.mark.parametrize(
    "when",
    ["penalty-before-signing", "penalty-after-broadcast", "energy-reclaimed"],
    ids=lambda w: f"node-out-of-energy-{w}",
)
def test_node_out_of_energy(tmp_path: Path, sqlite_url: str, when: str) -> None:
    """The energy need grows (the dynamic-energy penalty) or the delegation is reclaimed after the
    order. Before signing: the row re-simulates and fails without broadcasting. After the broadcast:
    the chain runs it OUT_OF_ENERGY; the row fails with that reason. Either way the address is held
    (money was spent) and the token stays where it was."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT}) as case:
        control = case.box.control
        address = WALLET.address(0)
        if when == "penalty-before-signing":
            control.set_delegation_delay(None)
            case.start()
            row = case.wait_state(S.ENERGY_ORDERED)
            control.set_energy_penalty(30_000)
            control.complete(str(row.serial))
        else:
            control.hold_inclusion()
            case.start()
            case.wait_state(S.BROADCAST)
            if when == "energy-reclaimed":
                control.reclaim_energy(address)
            else:
                control.set_energy_penalty(30_000)
            control.hold_inclusion(False)
        [row] = case.wait_final(1)
        assert row.state is S.FAILED
        assert address in case.held_addresses()
        assert control.usdt_balance(address) == 25 * USDT
        txs = control.transactions(owner=address)
        reason = case.ledger.events(row.id)[-1].reason or ""
        if when == "penalty-before-signing":
            assert txs == [], "broadcast without the energy in place"
            assert "energy" in reason.lower()
            case.finish()
        else:
            [tx] = txs
            assert tx.result == "OUT_OF_ENERGY" and "OUT_OF_ENERGY" in reason
            # The chain may charge the owner for the energy it lacked: that is this case's fault.
            case.finish(Expect(burnt_txids=frozenset({tx.txid})))


def test_node_forged_txid(tmp_path: Path, sqlite_url: str) -> None:
    """The node answers with a different transaction (same owner and amount, an attacker as payee)
    than the one asked for: nothing is signed while it lies; once it answers honestly, one transfer
    to the destination."""
    with daemon_case(tmp_path, sqlite_url, deposits={0: 25 * USDT}) as case:
        control = case.box.control
        control.set_node_switches(forge_txid=True)
        case.start()
        case.wait_row(
            lambda r: "unsafe transaction refused" in (r.last_error or ""),
            what="the forged transaction refused",
        )
        assert "ALERT: the node offered an unsafe transaction" in case.log_text()
        assert control.transactions(owner=WALLET.address(0)) == []
        control.set_node_switches(forge_txid=False)
        rows = case.wait_final(1)
        case.assert_swept(rows)
        case.finish()


@pytest.mark.parametrize("how", ["stands-still", "lags"], ids=lambda h: f"node-solid-head-{h}")
def test_node_solid_head(tmp_path: Path, sqlite_url: str, how: str) -> None:
    """Following blocks while the solid head stands still (or lags 40 blocks behind the head): the
    follower never reads past it, and a deposit in a block made meanwhile is swept, once, when the
    solid head reaches it."""
    args = ("--solid-lag", "40") if how == "lags" else ()
    with daemon_case(
        tmp_path, sqlite_url, deposits={}, hd_count=1, sandbox_args=args, detect_mode="follow"
    ) as case:
        control = case.box.control
        address = WALLET.address(0)
        case.start()
        poll(
            lambda: (
                ((c := case.ledger.follow_cursor()) is not None and c.initial_poll_done_at is not None)
                or None
            ),
            what="following started",
        )
        if how == "stands-still":
            control.hold_solidification()
        control.token_transfer(address, 27 * USDT)
        case.deposits[address] = 27 * USDT
        block = poll(
            lambda: next(
                (t.block_number for t in control.transactions(to=address) if t.block_number is not None), None
            ),
            what="the deposit mined",
        )
        solid = control.node_state().solid
        assert solid < block

        def behind() -> bool:
            # The follower is caught up with the solid head (never past it) and nothing is queued.
            cursor = case.ledger.follow_cursor()
            state = control.node_state()
            assert cursor is not None and cursor.next_block is not None
            assert cursor.next_block <= state.solid + 1, "the follower read past the solid head"
            if state.solid >= block:
                return True
            assert case.rows() == [], "a sweep queued from a block not yet solid"
            return how == "stands-still" and cursor.next_block == state.solid + 1 and state.head > block + 20

        poll(behind, what="the follower waiting at the solid head", timeout=60)
        if how == "stands-still":
            assert case.rows() == []
            control.release_solidification()
        rows = case.wait_final(1)
        case.assert_swept(rows)
        case.finish()
