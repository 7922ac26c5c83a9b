"""What the commands print: one JSON document (`--json`, or stdout not a terminal) or text and tables.

The JSON fields are the operator's contract (docs/operator-contract.md, "JSON output"); the text is
for people. Imports no network client: the `sweeper scan` and `work` results are only types here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from sweeper.config import Settings
from sweeper.domain import format_units
from sweeper.ledger import HoldRecord, PauseRecord, Stats, SweepEventRecord, SweepRecord
from sweeper.ledger.records import DepositAddressRecord

if TYPE_CHECKING:
    from sweeper.scanner import ScanReport
    from sweeper.worker import WorkResult


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def token_decimals(settings: Settings, token: str) -> int | None:
    try:
        return settings.token(token).decimals
    except KeyError:
        return None


def print_json(out: TextIO, document: Any) -> None:
    out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def print_table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    out.write(line.rstrip() + "\n")
    for row in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


def write_result(out: TextIO, document: Any, text: str, *, as_json: bool) -> None:
    """A command's one-line answer: `document` as JSON, else `text` (one line)."""
    if as_json:
        print_json(out, document)
    else:
        out.write(text + "\n")


# --- documents -----------------------------------------------------------------------------------


def sweep_json(sweep: SweepRecord, settings: Settings) -> dict[str, Any]:
    decimals = token_decimals(settings, sweep.token)

    def units(value: int | None) -> str | None:
        # A token no longer in the config: show base units rather than guess its decimals.
        return (
            format_units(value, decimals) if decimals is not None else (None if value is None else str(value))
        )

    return {
        "id": sweep.id,
        "address": sweep.address,
        "token": sweep.token,
        "asset_kind": sweep.asset_kind.value,
        "token_contract": sweep.token_contract,
        "observed_amount": units(sweep.observed_amount),
        "amount": units(sweep.amount),
        "observed_amount_base_units": str(sweep.observed_amount),
        "amount_base_units": str(sweep.amount),
        "state": sweep.state.value,
        "destination": sweep.destination,
        "serial": sweep.serial,
        "out_trade_no": sweep.out_trade_no,
        "scene": sweep.scene,
        "cost_sun": sweep.cost_sun,
        "cost_trx": format_units(sweep.cost_sun, 6),
        "provider_balance_sun": sweep.provider_balance_sun,
        "txid": sweep.txid,
        "fee_sun": sweep.fee_sun,
        "fee_trx": format_units(sweep.fee_sun, 6),
        "expiration": iso(sweep.expiration),
        "attempts": sweep.attempts,
        "send_attempts": sweep.send_attempts,
        "energy_needed": sweep.energy_needed,
        "charge_sun": sweep.charge_sun,
        "charge_day": sweep.charge_day,
        "refund_sun": sweep.refund_sun,
        "first_claimed_at": iso(sweep.first_claimed_at),
        "next_attempt_at": iso(sweep.next_attempt_at),
        "claimed_by": sweep.claimed_by,
        "lease_until": iso(sweep.lease_until),
        "last_error": sweep.last_error,
        "retry_of": sweep.retry_of,
        "created_at": iso(sweep.created_at),
        "updated_at": iso(sweep.updated_at),
    }


def event_json(event: SweepEventRecord) -> dict[str, Any]:
    return {
        "at": iso(event.at),
        "from_state": event.from_state.value if event.from_state is not None else None,
        "to_state": event.to_state.value,
        "reason": event.reason,
        "actor": event.actor,
        "data": event.data,
    }


def hold_json(hold: HoldRecord) -> dict[str, Any]:
    return {
        "token": hold.token,
        "reason": hold.reason,
        "sweep_id": hold.sweep_id,
        "since": iso(hold.held_at),
    }


def stats_document(stats: Stats, settings: Settings) -> dict[str, Any]:
    swept = {}
    for token, base_units in sorted(stats.swept_by_token.items()):
        decimals = token_decimals(settings, token)
        swept[token] = format_units(base_units, decimals) if decimals is not None else str(base_units)
    return {
        "sweeps_by_state": stats.by_state,
        "swept": swept,
        "energy_cost_sun": stats.energy_cost_sun,
        "energy_cost_trx": format_units(stats.energy_cost_sun, 6),
        "fee_burnt_sun": stats.fee_burnt_sun,
        "fee_burnt_trx": format_units(stats.fee_burnt_sun, 6),
        "deposit_addresses": stats.addresses,
        "held_addresses": stats.held,
        "spent_today_sun": stats.spent_today_sun,
        "spent_today_trx": format_units(stats.spent_today_sun, 6),
        "daily_cap_trx": str(settings.safety.max_daily_spend_trx),
        "ordering_paused": stats.ordering_paused,
        "follow_next_block": stats.follow_next_block,
        "follow_advanced_at": iso(stats.follow_advanced_at),
    }


def scan_document(report: ScanReport) -> dict[str, Any]:
    scanned, price_sun = report.scanned, report.energy_price_sun
    candidates = [
        {
            "address": c.address,
            "token": c.token.symbol,
            "amount": format_units(c.amount, c.token.decimals),
            "energy_price_sun": price_sun,
            "energy_price_trx": format_units(price_sun, 6),
            "sweep_id": c.sweep_id,  # None: a dry run, or another scan queued it first
        }
        for c in scanned.candidates
    ]
    document: dict[str, Any] = {
        "dry_run": report.dry_run,
        "addresses_added": report.addresses_added,
        "addresses_scanned": scanned.addresses,
        "resumed_after_address_id": scanned.resumed_after_id,
        "balance_reads": scanned.balance_reads,
        "skipped_open_sweep": scanned.skipped_open,
        "above_threshold": scanned.candidate_count,
        "queued": scanned.queued,
        "seconds": round(scanned.seconds, 3),
        "candidates": candidates,
    }
    if report.price_error:
        document["price_error"] = report.price_error
    return document


# --- per command ---------------------------------------------------------------------------------


def render_toml(document: dict[str, Any]) -> str:
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int | float):
            return str(value)
        return json.dumps(str(value), ensure_ascii=False)

    for table, body in document.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"\n[[{table}]]")
                lines.extend(f"{k} = {scalar(v)}" for k, v in item.items())
        else:
            lines.append(f"\n[{table}]")
            lines.extend(f"{k} = {scalar(v)}" for k, v in body.items())
    return "\n".join(lines).lstrip("\n") + "\n"


def write_config(out: TextIO, settings: Settings, *, as_json: bool) -> None:
    document = settings.to_public_dict()
    if as_json:
        print_json(out, {"ok": True, "config": str(settings.path), "effective": document})
    else:
        out.write(f"# {settings.path}: OK (secrets masked)\n")
        out.write(render_toml(document))


def write_sweeps(out: TextIO, rows: Sequence[SweepRecord], settings: Settings, *, as_json: bool) -> None:
    if as_json:
        print_json(out, [sweep_json(s, settings) for s in rows])
        return
    table = []
    for s in rows:
        j = sweep_json(s, settings)
        table.append(
            [
                s.id,
                s.state.value,
                s.address,
                s.token,
                j["amount"],
                j["cost_trx"],
                s.serial,
                s.txid,
                j["updated_at"],
            ]
        )
    print_table(
        out, ["id", "state", "address", "token", "amount", "cost trx", "serial", "txid", "updated"], table
    )


def write_sweep(
    out: TextIO,
    sweep: SweepRecord,
    history: Sequence[SweepEventRecord],
    settings: Settings,
    *,
    as_json: bool,
) -> None:
    document = sweep_json(sweep, settings)
    document["signed_tx"] = json.loads(sweep.signed_tx) if sweep.signed_tx else None
    document["events"] = [event_json(e) for e in history]
    if as_json:
        print_json(out, document)
        return
    for key, value in document.items():
        if key not in ("events", "signed_tx"):
            out.write(f"{key:>27}: {'' if value is None else value}\n")
    out.write("\n")
    print_table(
        out,
        ["at", "from", "to", "reason", "actor"],
        [[iso(e.at), e.from_state or "-", e.to_state, e.reason, e.actor] for e in history],
    )


def write_addresses(
    out: TextIO, rows: Sequence[DepositAddressRecord], holds: Iterable[HoldRecord], *, as_json: bool
) -> None:
    held: dict[str, list[HoldRecord]] = {}
    for hold in holds:
        held.setdefault(hold.address, []).append(hold)
    if as_json:
        print_json(
            out,
            [
                {
                    "id": a.id,
                    "address": a.address,
                    "hd_index": a.hd_index,
                    "label": a.label,
                    "source": a.source,
                    "watched": a.watched,
                    "created_at": iso(a.created_at),
                    # Held after a paid failure: not swept again until released (one entry per token).
                    "held": [hold_json(h) for h in held.get(a.address, [])],
                }
                for a in rows
            ],
        )
        return
    print_table(
        out,
        ["id", "address", "hd index", "label", "source", "held"],
        [
            [
                a.id,
                a.address,
                a.hd_index,
                a.label,
                a.source,
                "; ".join(f"{h.token} by sweep {h.sweep_id}: {h.reason}" for h in held.get(a.address, [])),
            ]
            for a in rows
        ],
    )


def write_released(out: TextIO, released: Sequence[HoldRecord], *, as_json: bool) -> None:
    if as_json:
        print_json(out, {"released": [{"address": h.address, **hold_json(h)} for h in released]})
    else:
        for h in released:
            out.write(f"{h.address} {h.token} released (held since {iso(h.held_at)}: {h.reason})\n")


def write_resumed(out: TextIO, lifted: PauseRecord | None, *, as_json: bool) -> None:
    if as_json:
        print_json(
            out,
            {
                "resumed": lifted is not None,
                "was_paused_since": iso(lifted.since) if lifted else None,
                "reason": lifted.reason if lifted else None,
            },
        )
    elif lifted is None:
        out.write("energy ordering was not paused\n")
    else:
        out.write(f"energy ordering resumed (paused since {iso(lifted.since)}: {lifted.reason})\n")


def write_stats(out: TextIO, stats: Stats, settings: Settings, *, as_json: bool) -> None:
    document = stats_document(stats, settings)
    if as_json:
        print_json(out, document)
        return
    out.write(f"deposit addresses: {stats.addresses}\n")
    out.write(f"held addresses:    {stats.held}\n")
    out.write(f"energy cost paid:  {document['energy_cost_trx']} TRX\n")
    out.write(f"fees burnt:        {document['fee_burnt_trx']} TRX (the sweeps' own transactions)\n")
    out.write(f"spent today (UTC): {document['spent_today_trx']} of {document['daily_cap_trx']} TRX\n")
    if stats.ordering_paused:
        out.write(f"ORDERING PAUSED:   {stats.ordering_paused} (`sweeper ordering resume`)\n")
    if stats.follow_next_block is not None:
        moved = document["follow_advanced_at"] or "not yet"
        out.write(f"following blocks:  next block {stats.follow_next_block} (cursor last moved {moved})\n")
    for token, amount in document["swept"].items():
        out.write(f"swept {token}: {amount}\n")
    out.write("\n")
    print_table(out, ["state", "sweeps"], [[k, v] for k, v in stats.by_state.items()])


def write_scan(out: TextIO, report: ScanReport, *, as_json: bool) -> None:
    document = scan_document(report)
    if as_json:
        print_json(out, document)
        return
    scanned = report.scanned
    if report.dry_run:
        print_table(
            out,
            ["address", "token", "amount", "energy price trx"],
            [
                [c["address"], c["token"], c["amount"], c["energy_price_trx"] or "?"]
                for c in document["candidates"]
            ],
        )
        if report.price_error:
            out.write(f"price unavailable: {report.price_error}\n")
        out.write(f"dry run: {scanned.candidate_count} above threshold, nothing queued\n")
        return
    if document["candidates"]:
        print_table(
            out,
            ["address", "token", "amount", "sweep"],
            [
                [c["address"], c["token"], c["amount"], f"#{c['sweep_id']} queued" if c["sweep_id"] else "-"]
                for c in document["candidates"]
            ],
        )
    out.write(
        f"scanned {scanned.addresses} addresses ({scanned.balance_reads} balance reads, {scanned.skipped_open} "
        f"skipped with an open sweep): {scanned.candidate_count} above threshold, {scanned.queued} queued\n"
    )


def write_work(out: TextIO, result: WorkResult, *, as_json: bool) -> None:
    summary = {
        "rows_worked": result.rows_worked,
        "open_sweeps": result.open_left,
        "timed_out": result.timed_out,
    }
    write_result(
        out,
        summary,
        f"worked {result.rows_worked} rows; {result.open_left} sweeps still open",
        as_json=as_json,
    )
