"""The ONE invariant checker of the end-to-end suites: the ledger, the sandbox chain and the sandbox
provider, read after a case, against the promises the README's "Guarantees" make.

`violations()` returns every broken promise as a sentence naming the row (empty: all hold);
`assert_invariants()` fails a test with all of them plus the open rows' histories. The fault matrix,
the kill -9 suites and the soak benchmark all call it, so a promise is checked the same way everywhere.

Promises (issue 15):
- at most one provider order per row, placed for the row's own address, never for an unknown key;
- at most one successful on-chain transfer per row, and every successful sweep transfer is a row's;
- every transfer from a deposit address pays the configured destination;
- no broadcast without the energy in place and no TRX burnt from a deposit address by a token sweep
  (a sweep transfer burns nothing: energy and bandwidth came from the order);
- settled: every row is confirmed, failed with a reason (held or not), cancelled with a reason, or
  queued with a retry in the future — nothing half-way;
- the ledger's amounts and txids equal the chain's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from sweeper.domain import SweepState
from sweeper.ledger import Ledger, make_engine
from sweeper.ledger.records import SweepRecord
from sweeper.sandbox.control import ChainTransaction, ProviderOrder, SandboxControl

S = SweepState
SUCCESS = "SUCCESS"


@dataclass
class Expect:
    """What a case may legitimately leave behind that the promises would otherwise reject.

    burnt_txids: sweep transfers that may burn TRX (a case that makes the chain charge: an energy
    need grown after the order, a provider that never delegates and a row forced through);
    foreign_orders: out_trade_no values placed by the test itself, not by a row;
    settled: False while the daemon may still be working (half-way rows are then allowed).
    """

    burnt_txids: frozenset[str] = frozenset()
    foreign_orders: frozenset[str] = frozenset()
    settled: bool = True
    notes: list[str] = field(default_factory=list)
    # With a threshold (USDT base units), money left behind is a broken promise too: a deposit
    # address holding at least this much with no open or failed row is money nobody tracks (the
    # soak asks for it; cases that leave money on purpose, e.g. a 403, do not).
    min_sweep: int | None = None


@dataclass(frozen=True)
class Observed:
    rows: list[SweepRecord]
    reasons: dict[int, str]  # row id -> the reason of the event that made it final (or its last_error)
    deposit_addresses: frozenset[str]
    transactions: list[ChainTransaction]
    orders: list[ProviderOrder]
    balances: dict[str, int] = field(default_factory=dict)  # USDT per deposit address, if read


def observe(db_url: str, control: SandboxControl) -> tuple[Observed, Ledger]:
    ledger = Ledger(make_engine(db_url))
    rows = ledger.list_sweeps()
    reasons: dict[int, str] = {}
    for row in rows:
        events = ledger.events(row.id)
        last = events[-1] if events else None
        reasons[row.id] = (row.last_error or "") if last is None else (last.reason or row.last_error or "")
    addresses = frozenset(a.address for a in ledger.list_addresses())
    observed = Observed(
        rows=rows,
        reasons=reasons,
        deposit_addresses=addresses | frozenset(r.address for r in rows),
        transactions=control.transactions(),
        orders=control.orders(),
    )
    return observed, ledger


def violations(
    db_url: str, control: SandboxControl, *, destination: str, expect: Expect | None = None
) -> list[str]:
    expect = expect or Expect()
    observed, ledger = observe(db_url, control)
    if expect.min_sweep is not None:
        balances = {a: control.usdt_balance(a) for a in sorted(observed.deposit_addresses)}
        observed = replace(observed, balances=balances)
    try:
        now = ledger.now()
        return check(observed, destination=destination, expect=expect, now=now)
    finally:
        ledger.engine.dispose()


def check(observed: Observed, *, destination: str, expect: Expect, now: object) -> list[str]:
    problems: list[str] = []
    rows_by_key = {row.out_trade_no: row for row in observed.rows}
    rows_by_txid: dict[str, SweepRecord] = {row.txid: row for row in observed.rows if row.txid}

    # --- the provider: one order per row, for its own address -------------------------------
    orders_by_key: dict[str | None, list[ProviderOrder]] = defaultdict(list)
    for order in observed.orders:
        orders_by_key[order.out_trade_no].append(order)
    for key, orders in orders_by_key.items():
        row = rows_by_key.get(key) if key is not None else None
        if row is None:
            if key not in expect.foreign_orders:
                problems.append(
                    f"provider order(s) {_serials(orders)} with out_trade_no={key!r}: no row placed it"
                )
            continue
        if len(orders) > 1:
            problems.append(f"sweep {row.id}: {len(orders)} provider orders {_serials(orders)} (at most 1)")
        for order in orders:
            if order.receive_address != row.address:
                problems.append(
                    f"sweep {row.id}: order {order.serial} delegates to {order.receive_address}, "
                    f"not to the row's address {row.address}"
                )
        if row.serial is not None and row.serial not in {o.serial for o in orders}:
            problems.append(
                f"sweep {row.id}: records serial {row.serial}, the provider has {_serials(orders)}"
            )

    # --- the chain: every sweep transfer is a row's, pays the destination, burns nothing -------
    sweeps_on_chain = [
        tx
        for tx in observed.transactions
        if tx.owner in observed.deposit_addresses and tx.block_number is not None
    ]
    successes_by_row: dict[int, list[ChainTransaction]] = defaultdict(list)
    for tx in sweeps_on_chain:
        if tx.to != destination:
            problems.append(
                f"transfer {tx.txid} from {tx.owner} pays {tx.to}, not the destination {destination}"
            )
        burnt = tx.energy_fee_sun + tx.net_fee_sun
        owner_row = rows_by_txid.get(tx.txid)
        if owner_row is not None and owner_row.is_trx:
            # A TRX sweep pays its bandwidth from the swept TRX when it must: the row records it.
            if owner_row.state is S.CONFIRMED and owner_row.fee_sun is not None and burnt > owner_row.fee_sun:
                problems.append(
                    f"sweep {owner_row.id}: burnt {burnt} sun, the ledger says {owner_row.fee_sun}"
                )
        elif burnt and tx.txid not in expect.burnt_txids:
            what = "energy not in place at broadcast" if tx.energy_fee_sun else "bandwidth not covered"
            problems.append(
                f"transfer {tx.txid} from {tx.owner} burnt {burnt} sun of TRX ({what}: "
                f"energy_fee={tx.energy_fee_sun}, net_fee={tx.net_fee_sun}, result={tx.result})"
            )
        if tx.result != SUCCESS:
            continue
        row = rows_by_txid.get(tx.txid)
        if row is None:
            problems.append(
                f"successful transfer {tx.txid} of {tx.amount} from {tx.owner} belongs to no row "
                "(a row rebuilt or failed while its transfer landed?)"
            )
            continue
        successes_by_row[row.id].append(tx)

    for row_id, txs in successes_by_row.items():
        if len(txs) > 1:
            problems.append(f"sweep {row_id}: {len(txs)} successful transfers {[t.txid for t in txs]}")
    # --- each row: settled, with a reason, and agreeing with the chain ---------------------
    by_txid = {tx.txid: tx for tx in sweeps_on_chain}
    for row in observed.rows:
        reason = observed.reasons.get(row.id, "")
        row_tx = by_txid.get(row.txid) if row.txid else None
        if row.state is S.CONFIRMED:
            if row_tx is None or row_tx.result != SUCCESS or not row_tx.solid:
                problems.append(
                    f"sweep {row.id} is confirmed but its transfer {row.txid} is "
                    + ("unknown to the chain" if row_tx is None else f"{row_tx.result}, solid={row_tx.solid}")
                )
            else:
                if row_tx.amount != row.amount:
                    problems.append(
                        f"sweep {row.id}: ledger amount {row.amount}, chain amount {row_tx.amount}"
                    )
                if row.destination is not None and row_tx.to != row.destination:
                    problems.append(
                        f"sweep {row.id}: ledger destination {row.destination}, chain {row_tx.to}"
                    )
        elif (
            row_tx is not None
            and row_tx.result == SUCCESS
            and (row.state in (S.FAILED, S.CANCELLED) or expect.settled)
        ):
            problems.append(
                f"sweep {row.id} is {row.state.value} but its transfer {row.txid} succeeded on chain"
            )
        if row.state in (S.FAILED, S.CANCELLED) and not reason.strip():
            problems.append(f"sweep {row.id} is {row.state.value} without a reason")
        if expect.settled and row.state not in (S.CONFIRMED, S.FAILED, S.CANCELLED):
            if row.state is S.QUEUED:
                due = row.next_attempt_at
                if due is None or not due > now:  # type: ignore[operator]
                    problems.append(
                        f"sweep {row.id} is queued with no retry in the future (next_attempt_at={due}, now={now})"
                    )
            else:
                problems.append(
                    f"sweep {row.id} is stuck in {row.state.value} (last_error={row.last_error!r})"
                )
    # --- money left behind (only when the case gives a threshold) ---------------------------
    if expect.min_sweep is not None:
        tracked = {row.address for row in observed.rows if row.state not in (S.CONFIRMED, S.CANCELLED)}
        for address, balance in observed.balances.items():
            if balance >= expect.min_sweep and address not in tracked:
                problems.append(
                    f"money left behind: {address} holds {balance} USDT base units "
                    f"(min_sweep {expect.min_sweep}) with no open or failed row"
                )
    return problems


def assert_invariants(
    db_url: str, control: SandboxControl, *, destination: str, expect: Expect | None = None
) -> None:
    problems = violations(db_url, control, destination=destination, expect=expect)
    if problems:
        from tests.e2e.harness import describe_open

        raise AssertionError(
            "invariants broken:\n- " + "\n- ".join(problems) + "\n\nopen sweeps:\n" + describe_open(db_url)
        )


def _serials(orders: Iterable[ProviderOrder]) -> list[str]:
    return [o.serial for o in orders]
