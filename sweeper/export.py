"""`sweeper sweeps export`: the accounting export for finance (docs/operator-contract.md, "JSON output").

One line per final sweep that moved money or spent it: every `confirmed` sweep, and a `failed` or
`cancelled` one whose energy order was charged (`cost_sun` > 0, even if refunded in full) or whose
own transaction burnt TRX (`fee_sun` > 0). A line's time is when the sweep entered its final state
(its `sweep_events` row), in UTC. Read-only; rows are read in id order, a chunk at a time, and
written as they come, so a ledger of any size is exported in bounded memory. Every amount is an
exact integer in base units or sun, formatted as an exact decimal string: no float anywhere.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import localcontext
from typing import Any, Final, Literal, TextIO

from sqlalchemy import Engine, and_, func, or_, select

from sweeper.config import Settings
from sweeper.domain import FINAL_STATES, AssetKind, SweepState, format_units
from sweeper.errors import UsageError
from sweeper.ledger.ledger import events, sweeps

Format = Literal["csv", "json"]
FORMATS: Final = ("csv", "json")

# The contract's columns, in this order (CSV header; JSON keys).
COLUMNS: Final = (
    "time",
    "sweep_id",
    "address",
    "asset",
    "asset_kind",
    "token_contract",
    "amount",
    "amount_base_units",
    "destination",
    "txid",
    "serial",
    "energy_cost_sun",
    "energy_cost_trx",
    "fee_burnt_sun",
    "fee_burnt_trx",
    "final_state",
)
TOTALS_COLUMNS: Final = (
    "day",
    "asset",
    "sweeps",
    "amount",
    "amount_base_units",
    "energy_cost_sun",
    "energy_cost_trx",
    "fee_burnt_sun",
    "fee_burnt_trx",
)
CHUNK: Final = 1000
TRX_DECIMALS: Final = 6  # sun
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


# --- the window -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Final times in [since, until); `until` None: no upper bound."""

    since: datetime
    until: datetime | None


def parse_when(option: str, text: str) -> datetime:
    """`YYYY-MM-DD` (that UTC day's 00:00) or a full ISO 8601 time with `Z` or an offset, as UTC."""
    if _DAY.fullmatch(text):
        try:
            return datetime.combine(date.fromisoformat(text), time(), tzinfo=UTC)
        except ValueError:
            pass
    else:
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if value.tzinfo is not None:
                return value.astimezone(UTC)
    raise UsageError(
        f"{option}: {text!r} is neither a UTC day (YYYY-MM-DD) nor an ISO 8601 time with a zone "
        "(2026-01-31T12:00:00Z)"
    )


def parse_window(since: str, until: str | None) -> Window:
    start = parse_when("--since", since)
    end = parse_when("--until", until) if until is not None else None
    if end is not None and end <= start:
        raise UsageError(f"--until: {until!r} is not after --since {since!r} (--until is exclusive)")
    return Window(start, end)


# --- reading ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportLine:
    """One exported sweep, as integers: formatting to token units happens when it is written."""

    time: datetime
    sweep_id: int
    address: str
    asset: str
    asset_kind: str
    token_contract: str | None
    amount_base_units: int  # 0 unless confirmed
    destination: str | None
    txid: str | None
    serial: str | None
    energy_cost_sun: int  # cost_sun - refund_sun; 0 without an order
    fee_burnt_sun: int
    final_state: str

    @property
    def day(self) -> str:
        return self.time.strftime("%Y-%m-%d")


def _line(row: Any) -> ExportLine:
    confirmed = row.state == SweepState.CONFIRMED.value
    if row.cost_sun is not None:
        cost = int(row.cost_sun) - int(row.refund_sun or 0)
    else:  # an order adopted without its amount: the charge against the cap is what is known
        cost = int(row.charge_sun or 0)
    return ExportLine(
        time=row.at,
        sweep_id=int(row.id),
        address=row.address,
        asset=row.token,
        asset_kind=row.asset_kind,
        token_contract=row.token_contract,
        amount_base_units=int(row.amount) if confirmed else 0,
        destination=row.destination,
        txid=row.txid,
        serial=row.serial,
        energy_cost_sun=cost,
        fee_burnt_sun=int(row.fee_sun or 0),
        final_state=row.state,
    )


def export_lines(engine: Engine, window: Window, *, chunk: int = CHUNK) -> Iterator[ExportLine]:
    """The exported sweeps whose final state falls in `window`, in sweep id order.

    Read in chunks of `chunk` rows by id (keyset: `id > last`), one short read each, so neither
    side holds the whole export nor a long-running transaction.
    """
    final = sorted(s.value for s in FINAL_STATES)
    spent_or_moved = or_(
        sweeps.c.state == SweepState.CONFIRMED.value,
        func.coalesce(sweeps.c.cost_sun, 0) > 0,
        func.coalesce(sweeps.c.charge_sun, 0) > 0,
        func.coalesce(sweeps.c.fee_sun, 0) > 0,
    )
    # A final state has no way out, so each final sweep has exactly one event entering it.
    entered_final = and_(events.c.sweep_id == sweeps.c.id, events.c.to_state == sweeps.c.state)
    where = [sweeps.c.state.in_(final), spent_or_moved, events.c.at >= window.since]
    if window.until is not None:
        where.append(events.c.at < window.until)
    query = (
        select(
            sweeps.c.id,
            sweeps.c.address,
            sweeps.c.token,
            sweeps.c.asset_kind,
            sweeps.c.token_contract,
            sweeps.c.state,
            sweeps.c.amount,
            sweeps.c.destination,
            sweeps.c.txid,
            sweeps.c.serial,
            sweeps.c.cost_sun,
            sweeps.c.refund_sun,
            sweeps.c.charge_sun,
            sweeps.c.fee_sun,
            events.c.at,
        )
        .join_from(sweeps, events, entered_final)
        .where(*where)
        .order_by(sweeps.c.id, events.c.id)
    )
    last = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(query.where(sweeps.c.id > last).limit(chunk)).all()
        for row in rows:
            if row.id == last:  # never expected (one final event per sweep): the first one counts
                continue
            last = int(row.id)
            yield _line(row)
        if len(rows) < chunk:
            return


# --- formatting -------------------------------------------------------------------------------------


def exact_units(value: int, decimals: int | None) -> str:
    """`value` base units as an exact decimal string; `decimals` None: the base units themselves.

    `format_units` under a context wide enough for `value`: the default 28 digits would round the
    78-digit amounts a token can have.
    """
    if decimals is None:
        return str(value)
    with localcontext() as ctx:
        ctx.prec = max(ctx.prec, len(str(abs(value))) + 1)
        text = format_units(value, decimals)
    assert text is not None
    return text


def asset_decimals(settings: Settings, asset: str, kind: str) -> int | None:
    """The token's decimals from the config; None (print base units) for a token no longer there.
    Native TRX always has 6 (sun)."""
    try:
        return settings.token(asset).decimals
    except KeyError:
        return TRX_DECIMALS if kind == AssetKind.TRX.value else None


def iso_z(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def line_document(line: ExportLine, settings: Settings) -> dict[str, Any]:
    decimals = asset_decimals(settings, line.asset, line.asset_kind)
    return {
        "time": iso_z(line.time),
        "sweep_id": line.sweep_id,
        "address": line.address,
        "asset": line.asset,
        "asset_kind": line.asset_kind,
        "token_contract": line.token_contract,
        "amount": exact_units(line.amount_base_units, decimals),
        "amount_base_units": str(line.amount_base_units),
        "destination": line.destination,
        "txid": line.txid,
        "serial": line.serial,
        "energy_cost_sun": line.energy_cost_sun,
        "energy_cost_trx": exact_units(line.energy_cost_sun, TRX_DECIMALS),
        "fee_burnt_sun": line.fee_burnt_sun,
        "fee_burnt_trx": exact_units(line.fee_burnt_sun, TRX_DECIMALS),
        "final_state": line.final_state,
    }


@dataclass
class _Total:
    kind: str
    sweeps: int = 0
    amount: int = 0
    energy_cost_sun: int = 0
    fee_burnt_sun: int = 0


def totals_documents(lines: Iterable[ExportLine], settings: Settings) -> list[dict[str, Any]]:
    """One entry per (UTC day, asset) with at least one line, sorted by day then asset; exact sums
    of the lines (Python ints, never SQL SUM: SQLite's is a float over the 78-digit text)."""
    totals: dict[tuple[str, str], _Total] = {}
    for line in lines:
        total = totals.setdefault((line.day, line.asset), _Total(kind=line.asset_kind))
        total.sweeps += 1
        total.amount += line.amount_base_units
        total.energy_cost_sun += line.energy_cost_sun
        total.fee_burnt_sun += line.fee_burnt_sun
    documents = []
    for (day, asset), total in sorted(totals.items()):
        decimals = asset_decimals(settings, asset, total.kind)
        document = {
            "day": day,
            "asset": asset,
            "sweeps": total.sweeps,
            "amount": exact_units(total.amount, decimals),
            "amount_base_units": str(total.amount),
            "energy_cost_sun": total.energy_cost_sun,
            "energy_cost_trx": exact_units(total.energy_cost_sun, TRX_DECIMALS),
            "fee_burnt_sun": total.fee_burnt_sun,
            "fee_burnt_trx": exact_units(total.fee_burnt_sun, TRX_DECIMALS),
        }
        documents.append(document)
    return documents


# --- writing ----------------------------------------------------------------------------------------


def _write_csv(out: TextIO, columns: tuple[str, ...], documents: Iterable[dict[str, Any]]) -> None:
    """RFC 4180 (CRLF line ends, quoted as needed): a header row, then one row each; null is empty."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for document in documents:
        writer.writerow(["" if document[c] is None else document[c] for c in columns])


def _write_json(out: TextIO, head: dict[str, Any], key: str, items: Iterable[dict[str, Any]]) -> None:
    """`{**head, key: [items…]}` exactly as `json.dumps(…, indent=2)` would print it, written one
    item at a time."""
    opening = json.dumps(head, indent=2, ensure_ascii=False).removesuffix("\n}")
    out.write(f"{opening},\n  {json.dumps(key)}: [")
    separator = "\n"
    for item in items:
        body = json.dumps(item, indent=2, ensure_ascii=False).replace("\n", "\n    ")
        out.write(f"{separator}    {body}")
        separator = ",\n"
    out.write("]\n}\n" if separator == "\n" else "\n  ]\n}\n")


def write_export(
    out: TextIO,
    engine: Engine,
    settings: Settings,
    window: Window,
    *,
    fmt: Format,
    totals: bool = False,
    chunk: int = CHUNK,
) -> None:
    """The export (or with `totals`, only the per-day, per-asset totals) on `out`, in `fmt`."""
    lines = export_lines(engine, window, chunk=chunk)
    head = {"since": iso_z(window.since), "until": iso_z(window.until) if window.until else None}
    if totals:
        documents = totals_documents(lines, settings)
        if fmt == "csv":
            _write_csv(out, TOTALS_COLUMNS, documents)
        else:
            _write_json(out, head, "totals", documents)
        return
    rows = (line_document(line, settings) for line in lines)
    if fmt == "csv":
        _write_csv(out, COLUMNS, rows)
    else:
        _write_json(out, head, "sweeps", rows)
