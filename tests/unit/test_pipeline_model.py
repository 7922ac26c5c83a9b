"""A model-based test of the pipeline (issue 15, item 2): hypothesis drives random interleavings of
pipeline steps for several rows and two workers over the in-process fakes (tests/fakes.py) and a
real SQLite ledger, with faults between them, and checks the money invariants after every rule.

What the rules do: two workers (separate `Pipeline` objects and worker ids on one ledger) take turns;
either may crash (`Crash`, a BaseException) before or after any outside call or ledger write, and
restarts under a new id, its leases left to run out; answers are lost (the provider placed the
order, the node took the broadcast, then the answer never came); calls fail; a worker may freeze in
the middle of a step (its heartbeat with it) while the clock runs past its lease and the other
worker takes the row, then wakes up and carries on; the provider delegates late, never, or ends an
order 0/41/43; callbacks arrive duplicated, stale and forged; transactions are included (or fail
OUT_OF_ENERGY), dropped from the pool, or expire; transfers revert, addresses are frozen, deposits
arrive and leave; the operator cancels, retries, releases and resumes; the clock jumps.

Invariants after every rule: never two provider orders for a row; never two successful transfers
for a row; never an illegal transition (the ledger's own check and the database trigger are both
watched, because the pipeline turns an `IllegalTransition` into "lease lost" and any other exception
into a retry: a refused write must fail this test, not vanish into a log); never a stored state the
chain contradicts (confirmed without its transfer on chain, failed or back before signing while a
transfer of the row succeeded, an order row without its order); every transfer to the configured
destination; no TRX burnt; a confirmed row's amount is what the chain moved.

Budget: CI runs it derandomized (the same examples every run) with `max_examples` small enough for
about a minute on a 2-core machine; `SWEEPER_MODEL_EXAMPLES=2000` explores more (random seeds; a
failure prints the example to reproduce). `SWEEPER_MODEL_STEPS` sets the rules per example.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError

from sweeper.chain import BroadcastRejected, ChainUnavailable, TxState
from sweeper.config import TokenSettings
from sweeper.domain import SweepState, is_legal
from sweeper.errors import LedgerError
from sweeper.keys import Keys
from sweeper.ledger import ORDERING_PAUSE, Ledger, NewAddress, make_engine, upgrade
from sweeper.pipeline import Pipeline, PipelineOptions
from sweeper.provider.errors import OrderOutcomeUnknown, OrderRejected, ProviderUnavailable
from sweeper.provider.models import OrderStatus
from tests.constants import DESTINATION, USDT, WALLET
from tests.fakes import Crash, FakeChain, FakeClock, FakeProvider

S = SweepState
TOKENS = (TokenSettings(symbol="USDT", contract=USDT, decimals=6, min_sweep=Decimal("10")),)
MIN_SWEEP = 10_000_000
ADDRESSES = 3  # deposit addresses (HD indexes 0..2)
WORKERS = ("A", "B")
LEASE_SECONDS = 30.0
# Where the rows' stored state must agree with the chain: no transfer of a row may be on chain
# while it sits in one of these (it would be ordered for, or built, again).
BEFORE_SIGNING = (S.QUEUED, S.ORDERING, S.ENERGY_ORDERED, S.ENERGY_READY, S.CANCELLED)

EXAMPLES = int(os.environ.get("SWEEPER_MODEL_EXAMPLES", "0"))
STEPS = int(os.environ.get("SWEEPER_MODEL_STEPS", "50"))
MODEL_SETTINGS = settings(
    max_examples=EXAMPLES or 30,
    stateful_step_count=STEPS,
    derandomize=not EXAMPLES,  # CI: the same examples every run; a big local budget: random ones
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)


# --- faults around the fakes and the ledger -----------------------------------------------------


def _chain_down() -> BaseException:
    return ChainUnavailable("timeout (model)")


def _provider_down() -> BaseException:
    return ProviderUnavailable("connect error (model)")


def _outcome_unknown() -> BaseException:
    return OrderOutcomeUnknown("read timeout (model)")


def _rejected_broadcast() -> BaseException:
    return BroadcastRejected("CONTRACT_VALIDATE_ERROR", "validation failed (model)")


def _refused_order() -> BaseException:
    return OrderRejected("errno 1 (model)")


def _crash() -> BaseException:
    return Crash()


# (party, method) -> what may go wrong BEFORE the call acts (the party never saw it).
BEFORE: dict[tuple[str, str], tuple[Callable[[], BaseException], ...]] = {
    ("chain", "token_balance"): (_chain_down, _crash),
    ("chain", "simulate_transfer"): (_chain_down, _crash),
    ("chain", "check_resources"): (_chain_down, _crash),
    ("chain", "is_blacklisted"): (_chain_down,),
    ("chain", "build_transfer"): (_chain_down, _crash),
    ("chain", "sign_transfer"): (_crash,),
    ("chain", "broadcast"): (_chain_down, _rejected_broadcast, _crash),
    ("chain", "transaction_known"): (_chain_down, _crash),
    ("chain", "transaction_status"): (_chain_down, _crash),
    ("provider", "query_order"): (_provider_down, _crash),
    ("provider", "collect_manual"): (_provider_down, _outcome_unknown, _refused_order, _crash),
    ("provider", "price"): (_provider_down,),
    ("ledger", "claim"): (_crash,),
    ("ledger", "transition"): (_crash,),
    ("ledger", "release"): (_crash,),
    ("ledger", "reserve_order"): (_crash,),
    ("ledger", "count_send_attempt"): (_crash,),
}
# … and AFTER it acted: the answer is lost (the party did it) or the process died right after.
AFTER: dict[tuple[str, str], tuple[Callable[[], BaseException], ...]] = {
    ("chain", "broadcast"): (_chain_down, _crash),
    ("chain", "build_transfer"): (_crash,),
    ("chain", "transaction_status"): (_chain_down,),
    ("provider", "collect_manual"): (_outcome_unknown, _provider_down, _crash),
    ("provider", "query_order"): (_provider_down, _crash),
    ("ledger", "claim"): (_crash,),
    ("ledger", "transition"): (_crash,),
    ("ledger", "release"): (_crash,),
    ("ledger", "reserve_order"): (_crash,),
    ("ledger", "count_send_attempt"): (_crash,),
}
# Where a worker may freeze mid-step (process paused, heartbeat included) and wake up later.
FREEZE_POINTS = (
    ("provider", "collect_manual"),
    ("provider", "query_order"),
    ("chain", "broadcast"),
    ("chain", "build_transfer"),
    ("chain", "check_resources"),
)
PROVIDER_EVENTS = ("delegation on ask", "delegate late", "end 0", "end 41", "end 43")
CHAIN_EVENTS = (
    "auto confirm", "include", "drop from pool", "reverts", "frozen", "reclaim energy", "deposit",
    "withdraw", "scan",
)  # fmt: skip
WRAPPED = sorted(set(BEFORE) | set(AFTER) | set(FREEZE_POINTS))


@dataclass
class Freeze:
    """A worker frozen at `point`: `reached` is set when it gets there, `thaw` lets it go on."""

    point: tuple[str, str]
    reached: asyncio.Event
    thaw: asyncio.Event


class Faults:
    """Faults queued per (party, method), consumed by whichever worker calls next, in order."""

    def __init__(self) -> None:
        self.before: dict[tuple[str, str], list[BaseException]] = {k: [] for k in WRAPPED}
        self.after: dict[tuple[str, str], list[BaseException]] = {k: [] for k in WRAPPED}
        self.freeze: Freeze | None = None

    def pending(self) -> int:
        return sum(len(v) for v in self.before.values()) + sum(len(v) for v in self.after.values())

    def wrap(self, party: str, obj: Any, name: str) -> None:
        """Replace obj.name (on the instance) by a wrapper that honours the queued faults."""
        key = (party, name)
        original = getattr(obj, name)

        def fault(queue: dict[tuple[str, str], list[BaseException]]) -> None:
            if queue[key]:
                raise queue[key].pop(0)

        if inspect.iscoroutinefunction(original):

            async def wrapped_async(*args: Any, **kwargs: Any) -> Any:
                frozen = self.freeze
                if frozen is not None and frozen.point == key and not frozen.reached.is_set():
                    frozen.reached.set()
                    await frozen.thaw.wait()
                fault(self.before)
                result = await original(*args, **kwargs)
                fault(self.after)
                return result

            setattr(obj, name, wrapped_async)
        else:

            def wrapped(*args: Any, **kwargs: Any) -> Any:
                fault(self.before)
                result = original(*args, **kwargs)
                fault(self.after)
                return result

            setattr(obj, name, wrapped)


class WorkerLedger(Ledger):
    """The workers' ledger: records every transition it is asked for (so an illegal one fails the
    test even though the pipeline would swallow the refusal) and which row signed which txid."""

    def __init__(self, engine: Engine, clock: FakeClock, model: Model) -> None:
        super().__init__(engine, clock=clock)
        self.model = model

    def transition(self, sweep_id: int, source: Any, target: SweepState, **kwargs: Any) -> Any:
        sources = [source] if isinstance(source, SweepState) else list(source)
        for s in sources:
            if not is_legal(s, target):
                self.model.violations.append(f"sweep {sweep_id}: illegal transition asked {s} -> {target}")
        moved = super().transition(sweep_id, source, target, **kwargs)
        txid = (kwargs.get("changes") or {}).get("txid")
        if txid is not None:
            self.model.signed_by[txid] = sweep_id
        return moved


def _template() -> Path:
    """One migrated ledger per test session, copied for every example."""
    global _TEMPLATE
    if _TEMPLATE is None:
        path = Path(tempfile.mkdtemp(prefix="sweeper-model-")) / "template.db"
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        engine.dispose()
        _TEMPLATE = path
    return _TEMPLATE


_TEMPLATE: Path | None = None
REACHED: Counter[str] = Counter()


# --- the model ----------------------------------------------------------------------------------


class Model(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="sweeper-model-case-"))
        path = self.dir / "ledger.db"
        shutil.copy(_template(), path)
        self.engine = make_engine(f"sqlite:///{path}")
        # Durability is not what this test is about: no fsync per commit keeps a rule in milliseconds.
        event.listen(self.engine, "connect", lambda conn, _record: conn.execute("PRAGMA synchronous=OFF"))
        # The transition trigger (migration 0007) answers an illegal write with an IntegrityError;
        # whatever catches it afterwards, it is recorded here and fails the invariant.
        event.listen(self.engine, "handle_error", self._db_error)
        self.violations: list[str] = []
        # Logs are kept in memory (quiet, and checked: an unexpected exception in a step is a bug).
        self._capture = structlog.testing.capture_logs()
        self.logs = self._capture.__enter__()
        self.signed_by: dict[str, int] = {}
        self.clock = FakeClock()
        self.chain = FakeChain(self.clock)
        self.chain.credit(USDT, DESTINATION, 1)  # the destination holds USDT: 65k-energy transfers
        self.provider = FakeProvider(self.chain, DESTINATION, token=USDT)
        self.operator = Ledger(self.engine, clock=self.clock)  # the CLI's ledger, and the checker's
        self.ledger = WorkerLedger(self.engine, self.clock, self)
        self.faults = Faults()
        for party, name in WRAPPED:
            target = {"chain": self.chain, "provider": self.provider, "ledger": self.ledger}[party]
            self.faults.wrap(party, target, name)
        self.loop = asyncio.new_event_loop()
        self.restarts = dict.fromkeys(WORKERS, 0)
        self.pipelines = {name: self._pipeline(name) for name in WORKERS}
        self.frozen: dict[str, asyncio.Task[int]] = {}  # worker -> its run, frozen mid-step
        self.addresses = [WALLET.address(i) for i in range(ADDRESSES)]
        self.operator.upsert_addresses(
            [NewAddress(a, "hd", hd_index=i) for i, a in enumerate(self.addresses)]
        )

    def _db_error(self, context: Any) -> None:
        exc = context.original_exception
        if "illegal sweep state change" in str(exc):
            self.violations.append(f"database trigger refused a write: {exc}")

    def _pipeline(self, name: str) -> Pipeline:
        options = PipelineOptions(
            destination=DESTINATION,
            tokens=TOKENS,
            concurrency=1,  # one row per pass: the rules, not thread timing, decide the interleaving
            lease_seconds=LEASE_SECONDS,
            order_timeout_seconds=900,
            energy_ready_timeout_seconds=600,
            chain_clock_check_ttl_seconds=0,
        )
        pipeline = Pipeline(
            self.ledger, self.provider, self.chain, Keys(self.ledger, WALLET), options,
            worker_id=f"{name}{self.restarts[name]}", clock=self.clock, host_clock=self.clock,
        )  # fmt: skip
        # Deterministic back-off jitter: a due time must not depend on the run.
        pipeline._rng = random.Random(len(pipeline.worker_id))

        # The heartbeat renews leases on a real-time timer: left alone, whether it fired would
        # depend on how fast this machine runs the rules. A frozen worker's heartbeat is frozen
        # with it, and a worker that is not frozen finishes its step within the rule, so leases
        # here run out only when the fake clock passes them, which is what the rules decide.
        async def no_heartbeat(sweep_id: int) -> None:
            await asyncio.Event().wait()

        pipeline._heartbeat = no_heartbeat  # type: ignore[method-assign]
        return pipeline

    def teardown(self) -> None:
        # What the example reached: printed by the test (`pytest -s`), to see the model's reach.
        for state in {r.state.value for r in self.operator.list_sweeps()}:
            REACHED[f"examples with a row {state}"] += 1
        REACHED["orders placed"] += len(self.provider.orders)
        REACHED["transfers on chain"] += len(self.chain.txs)
        REACHED["worker restarts after a crash"] += sum(self.restarts.values())
        REACHED["examples"] += 1
        for task in self.frozen.values():
            task.cancel()
            with _suppress_all():
                self.loop.run_until_complete(task)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()
        self.engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._capture.__exit__(None, None, None)

    # --- running the workers ---

    def _restart(self, name: str) -> None:
        """The worker's process died: a new one starts, with a new id (the old leases run out)."""
        self.restarts[name] += 1
        self.pipelines[name] = self._pipeline(name)

    def _finish(self, name: str, task: asyncio.Task[int]) -> None:
        try:
            task.result()
        except Crash:
            self._restart(name)

    @initialize(
        amounts=st.lists(st.sampled_from([25_000_000, 0, 5_000_000]), min_size=ADDRESSES, max_size=ADDRESSES)
    )
    def fund(self, amounts: list[int]) -> None:
        for address, amount in zip(self.addresses, amounts, strict=True):
            if amount:
                self.chain.credit(USDT, address, amount)
        self.scan()

    @precondition(lambda self: len(self.frozen) < len(WORKERS))
    @rule(name=st.sampled_from(WORKERS), passes=st.integers(1, 3))
    def work(self, name: str, passes: int) -> None:
        if name in self.frozen:
            return
        for _ in range(passes):
            task = self.loop.create_task(self.pipelines[name].run_once())
            self.loop.run_until_complete(asyncio.wait([task]))
            self._finish(name, task)

    @rule(seconds=st.sampled_from([10, 60, 300]))
    def run_for(self, seconds: int) -> None:
        """Time passes with the daemons running: each worker that is not frozen runs passes until
        nothing is due (a crash restarts it), then the clock jumps to the next due time."""
        end = self.clock() + timedelta(seconds=seconds)
        for _ in range(40):
            for name in WORKERS:
                for _ in range(6):
                    if name in self.frozen:
                        break
                    task = self.loop.create_task(self.pipelines[name].run_once())
                    self.loop.run_until_complete(asyncio.wait([task]))
                    worked = task.exception() is None and task.result() > 0
                    self._finish(name, task)
                    if not worked:
                        break
            due = [
                max(r.next_attempt_at or self.clock(), r.lease_until or self.clock())
                for r in self.operator.list_sweeps()
                if not r.is_final
            ]
            step = max(1.0, (min(due, default=end) - self.clock()).total_seconds())
            step = min(step, (end - self.clock()).total_seconds())
            if step <= 0:
                return
            self.advance(step)

    @precondition(lambda self: not self.frozen)
    @rule(name=st.sampled_from(WORKERS), point=st.sampled_from(FREEZE_POINTS))
    def freeze(self, name: str, point: tuple[str, str]) -> None:
        """The worker runs until it reaches `point` and freezes there (or finishes its pass first)."""
        frozen = Freeze(point, asyncio.Event(), asyncio.Event())
        self.faults.freeze = frozen
        task = self.loop.create_task(self.pipelines[name].run_once())
        reached = self.loop.create_task(frozen.reached.wait())
        self.loop.run_until_complete(asyncio.wait([task, reached], return_when=asyncio.FIRST_COMPLETED))
        if task.done():  # it never got there
            reached.cancel()
            self.loop.run_until_complete(asyncio.wait([reached]))
            self.faults.freeze = None
            self._finish(name, task)
            return
        self.frozen[name] = task

    @precondition(lambda self: bool(self.frozen))
    @rule()
    def thaw(self) -> None:
        """The frozen worker wakes up and carries on where it stopped."""
        name, task = next(iter(self.frozen.items()))
        assert self.faults.freeze is not None
        self.faults.freeze.thaw.set()
        self.loop.run_until_complete(asyncio.wait([task]))
        del self.frozen[name]
        self.faults.freeze = None
        self._finish(name, task)

    # --- faults ---

    @precondition(lambda self: self.faults.pending() < 3)
    @rule(data=st.data(), when=st.sampled_from(["before", "after"]))
    def fault(self, data: st.DataObject, when: str) -> None:
        """The next call at a point fails: before it acts (it never happened) or after (it
        happened, the answer or the process was lost)."""
        table = BEFORE if when == "before" else AFTER
        point = data.draw(st.sampled_from(sorted(table)), label="point")
        make = data.draw(st.sampled_from(table[point]), label="error")
        (self.faults.before if when == "before" else self.faults.after)[point].append(make())

    @rule(seconds=st.sampled_from([1, 5, 15, 31, 61, 301, 901]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        # A transaction still in the pool at its expiration can never be included: the node drops it.
        head = self.chain.head_ms()
        for txid, tx in list(self.chain.txs.items()):
            if tx.state is TxState.PENDING and tx.signed.expiration_ms <= head:
                del self.chain.txs[txid]

    @rule(what=st.sampled_from(PROVIDER_EVENTS), index=st.integers(0, 7), flag=st.booleans())
    def provider_event(self, what: str, index: int, flag: bool) -> None:
        paid = [o for o in self.provider.orders.values() if o.status is OrderStatus.PAID]
        if what == "delegation on ask":  # off: delegated late (`delegate late`), or never
            self.provider.delegate_when_asked = flag
        elif what == "delegate late" and paid:
            self.provider.complete(paid[index % len(paid)].serial)
        elif what.startswith("end") and paid:
            order = paid[index % len(paid)]
            status = {"end 0": OrderStatus.CLOSED, "end 41": OrderStatus.REFUNDED}.get(
                what, OrderStatus.ABNORMAL
            )
            self.provider.end(order.serial, status, order.amount_sun if flag else 0)

    @rule(what=st.sampled_from(CHAIN_EVENTS), index=st.integers(0, 7), flag=st.booleans())
    def chain_event(self, what: str, index: int, flag: bool) -> None:
        pending = [t for t, tx in self.chain.txs.items() if tx.state is TxState.PENDING]
        address = self.addresses[index % ADDRESSES]
        if what == "auto confirm":
            self.chain.auto_confirm = flag
        elif what == "include" and pending:  # in a solid block: SUCCESS, or failed (OUT_OF_ENERGY)
            self.chain.confirm(pending[index % len(pending)], success=flag)
        elif what == "drop from pool" and pending:  # the node forgets it: never included
            del self.chain.txs[pending[index % len(pending)]]
        elif what == "reverts":
            self.chain.revert_all = "REVERT opcode executed" if flag else None
        elif what == "frozen":
            (self.chain.frozen.add if flag else self.chain.frozen.discard)(address)
        elif what == "reclaim energy":
            # The rental ran out. Not under a pending transfer of the address: the pipeline checked
            # the energy before sending, and a reclaim then would burn TRX whatever it did.
            if not any(tx.state is TxState.PENDING for tx in self.chain.transfers_from(address)):
                self.chain.reclaim(address)
        elif what == "deposit":
            self.chain.credit(USDT, address, 20_000_000 if flag else 3_000_000)
        elif what == "withdraw":  # moved away by another holder of the key
            self.chain.balances[USDT][address] = 0
        elif what == "scan":
            self.scan()

    def scan(self) -> None:
        """A scan pass: every address at or above min_sweep gets a queued sweep (if it may)."""
        for address in self.addresses:
            balance = self.chain.balances[USDT].get(address, 0)
            if balance >= MIN_SWEEP:
                self.operator.queue_sweep(address, "USDT", USDT, balance)

    @rule(
        index=st.integers(0, 7), kind=st.sampled_from(["order", "order twice", "serial", "forged", "stale"])
    )
    def callback(self, index: int, kind: str) -> None:
        """A verified callback, as the daemon handles it: out_trade_no first, else the serial."""
        orders = list(self.provider.orders.values())
        rows = self.operator.list_sweeps()
        if kind.startswith("order") and orders:
            order = orders[index % len(orders)]
            for _ in range(2 if kind == "order twice" else 1):
                self._hint(order.out_trade_no, order.serial)
        elif kind == "serial" and orders:
            self._hint(None, orders[index % len(orders)].serial)
        elif kind == "forged" and rows:
            row = rows[index % len(rows)]
            self._hint(f"{row.id}-AAAAAAAA", "S999999")  # another ledger's order, or a forgery
        elif kind == "stale":
            final = [r for r in rows if r.is_final]
            if final:
                row = final[index % len(final)]
                self._hint(row.out_trade_no, row.serial)

    def _hint(self, out_trade_no: str | None, serial: str | None) -> None:
        hinted = self.operator.hint(out_trade_no=out_trade_no) if out_trade_no else None
        if hinted is None and serial:
            self.operator.hint(serial=serial)

    @rule(command=st.sampled_from(["sweeps cancel", "sweeps retry", "addresses release", "ordering resume"]),
          index=st.integers(0, 15))  # fmt: skip
    def operator_command(self, command: str, index: int) -> None:
        """What the CLI's commands call. A refused command changes nothing (checked by the invariants)."""
        rows = self.operator.list_sweeps()
        row = rows[index % len(rows)] if rows else None
        with _suppress(LedgerError):
            if command == "sweeps cancel" and row is not None:
                self.operator.cancel(row.id)
            elif command == "sweeps retry" and row is not None:
                self.operator.retry(row.id)
            elif command == "addresses release":
                address = self.addresses[index % ADDRESSES]
                self.operator.release_holds(address, actor="operator", reason="released by operator")
            elif command == "ordering resume":
                self.operator.clear_pause(ORDERING_PAUSE)

    # --- the invariants ---

    @invariant()
    def no_illegal_transition(self) -> None:
        assert not self.violations, self.violations
        for row in self.operator.list_sweeps():
            previous: SweepState | None = None
            for e in self.operator.events(row.id):
                assert e.from_state == previous and is_legal(e.from_state, e.to_state), (
                    f"sweep {row.id}: event {e.from_state} -> {e.to_state} after {previous}"
                )
                previous = e.to_state
            assert previous is row.state, f"sweep {row.id}: events end in {previous}, row is {row.state}"

    @invariant()
    def no_unexpected_step_failure(self) -> None:
        unexpected = [e for e in self.logs if e["event"] == "step failed unexpectedly"]
        assert not unexpected, unexpected

    @invariant()
    def at_most_one_order_per_row(self) -> None:
        for row in self.operator.list_sweeps():
            orders = self.provider.orders_for(row.out_trade_no)
            assert len(orders) <= 1, f"sweep {row.id}: {len(orders)} orders ({[o.serial for o in orders]})"
            if row.state in (S.ENERGY_ORDERED,):
                assert row.serial in self.provider.orders, (
                    f"sweep {row.id}: its order {row.serial} is unknown"
                )
        ours = {r.out_trade_no for r in self.operator.list_sweeps()}
        stray = [o.serial for o in self.provider.orders.values() if o.out_trade_no not in ours]
        assert not stray, f"orders for no row: {stray}"

    @invariant()
    def a_paid_failure_holds_its_pair(self) -> None:
        """Money spent on a row that failed (an order not fully refunded, or a transfer on chain):
        the pair is held (until the operator releases it), never queued again on its own."""
        held = {h.sweep_id for h in self.operator.holds(active_only=False)}
        for row in self.operator.list_sweeps(state=S.FAILED):
            spent = [o for o in self.provider.orders_for(row.out_trade_no) if o.refund_sun < o.amount_sun]
            sent = [t for t, by in self.signed_by.items() if by == row.id and t in self.chain.txs]
            if spent or sent:
                assert row.id in held, (
                    f"sweep {row.id} failed after paying ({row.last_error}) but holds nothing"
                )

    @invariant()
    def transfers_agree_with_the_ledger(self) -> None:
        rows = {r.id: r for r in self.operator.list_sweeps()}
        succeeded: dict[int, list[str]] = {}
        for txid, tx in self.chain.txs.items():
            assert txid in self.signed_by, f"transaction {txid} on chain was never stored as signed"
            assert tx.signed.destination == DESTINATION, f"{txid} pays {tx.signed.destination}"
            assert tx.burnt_sun == 0, f"{txid} burnt {tx.burnt_sun} sun: sent without the energy"
            sweep_id = self.signed_by[txid]
            row = rows[sweep_id]
            if tx.state is not TxState.CONFIRMED:
                continue
            succeeded.setdefault(sweep_id, []).append(txid)
            assert row.state not in BEFORE_SIGNING and row.state is not S.FAILED, (
                f"sweep {sweep_id} is {row.state.value} while its transfer {txid} succeeded"
            )
        for sweep_id, txids in succeeded.items():
            assert len(txids) == 1, f"sweep {sweep_id}: {len(txids)} successful transfers {txids}"
        for row in rows.values():
            if row.state is S.CONFIRMED:
                assert row.txid is not None and row.txid in succeeded.get(row.id, []), (
                    f"sweep {row.id} confirmed without its transfer on chain"
                )
                assert row.amount == self.chain.txs[row.txid].signed.amount, f"sweep {row.id}: amount differs"
                assert row.destination == DESTINATION


class _suppress:
    """contextlib.suppress, named for what it is here: an operator command refused (it said why)."""

    def __init__(self, *kinds: type[BaseException]) -> None:
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> bool:
        return kind is not None and issubclass(kind, self.kinds)


def _suppress_all() -> _suppress:
    return _suppress(BaseException)


def test_the_pipeline_model() -> None:
    REACHED.clear()
    run_state_machine_as_test(Model, settings=MODEL_SETTINGS)  # type: ignore[no-untyped-call]
    print(dict(sorted(REACHED.items())))


def test_a_refused_write_is_caught_by_the_model() -> None:
    """The checker itself: a transition the table refuses, asked through the workers' ledger,
    lands in the violations even though the caller swallows the refusal."""
    model = Model()
    try:
        model.fund([25_000_000, 0, 0])
        row = model.operator.list_sweeps()[0]
        with _suppress(LedgerError):
            model.ledger.transition(row.id, S.QUEUED, S.CONFIRMED, reason="bug")
        with pytest.raises(AssertionError, match="illegal transition"):
            model.no_illegal_transition()
    finally:
        model.teardown()


def test_the_database_trigger_is_watched() -> None:
    """A write around the ledger that the trigger refuses is recorded as a violation."""
    model = Model()
    try:
        model.fund([25_000_000, 0, 0])
        row = model.operator.list_sweeps()[0]
        with _suppress(IntegrityError), model.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE sweeps SET state = 'confirmed' WHERE id = ?", (row.id,))
        with pytest.raises(AssertionError, match="database trigger"):
            model.no_illegal_transition()
    finally:
        model.teardown()
