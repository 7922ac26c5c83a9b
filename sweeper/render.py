"""What the commands print: one JSON document (`--json`, or stdout not a terminal) or text and tables.

The JSON fields are the operator's contract (docs/operator-contract.md, "JSON output"); the text is
for people. Imports no network client: the `sweeper scan` and `work` results are only types here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from sweeper.config import Settings
from sweeper.domain import format_units
from sweeper.ledger import HoldRecord, PauseRecord, Stats, SweepEventRecord, SweepRecord
from sweeper.ledger.records import DepositAddressRecord

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

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


def console(out: TextIO) -> Console:
    """A rich console writing to `out` (only ever used for text on a terminal), as wide as the
    terminal: a column that does not fit folds rather than being cut."""
    from rich.console import Console

    return Console(file=out, width=shutil.get_terminal_size((200, 24)).columns, soft_wrap=False)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    title: str | None = None,
    show_header: bool = True,
) -> Table:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    grid = Table(
        box=box.SIMPLE_HEAD if show_header else None,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
        title=title,
        show_header=show_header,
    )
    for header in headers:
        grid.add_column(header.upper(), overflow="fold")
    for row in rows:  # as plain text: a reason or an error with [brackets] is not markup
        grid.add_row(*(Text("" if v is None else str(v)) for v in row))
    return grid


def print_table(out: TextIO, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    console(out).print(table(headers, rows))


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
        ["id", "address", "hd index", "label", "source", "watched", "held"],
        [
            [
                a.id,
                a.address,
                a.hd_index,
                a.label,
                a.source,
                "yes" if a.watched else "no",
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


def write_watch_change(
    out: TextIO, changed: Sequence[str], already: Sequence[str], *, watched: bool, as_json: bool
) -> None:
    """`addresses unwatch` / `watch`: what changed, and what already was so."""
    verb = "watched" if watched else "unwatched"
    if as_json:
        print_json(out, {verb: list(changed), "already": list(already)})
        return
    for address in changed:
        out.write(f"{address} {verb}\n")
    for address in already:
        out.write(f"{address} was already {verb}\n")


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


# --- `sweeper status` ------------------------------------------------------------------------------


def _age(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172_800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86_400} d"


def _ago(seconds: int | None) -> str:
    return "never" if seconds is None else f"{_age(seconds)} ago"


def status_renderable(document: dict[str, Any]) -> Any:
    """The status screen: problems first, then the daemon, detection, sweeps, money, held, failing."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = []
    if document["ok"]:
        parts.append(Text(f"sweeper status at {document['at']}: everything fine", style="bold green"))
    else:
        parts.append(
            Text(
                f"sweeper status at {document['at']}: {len(document['problems'])} problem(s)",
                style="bold red",
            )
        )
        parts.extend(Text(f"  ! {p}", style="red") for p in document["problems"])
    daemon, detection, spend, provider = (
        document["daemon"],
        document["detection"],
        document["spend"],
        document["provider"],
    )
    up = {True: "up", None: "not reachable (judged from the ledger)"}.get(daemon["up"], "down")
    health = "" if daemon["healthy"] is None else (" (healthy)" if daemon["healthy"] else " (UNHEALTHY)")
    facts = [
        (
            "daemon",
            f"{up}{health} at {daemon['url']}; ledger last changed {_ago(daemon['last_ledger_activity_age_seconds'])}",
        ),
        (
            "detection",
            f"mode {detection['mode']}; last poll pass {_ago(detection['poll_pass_age_seconds'])}"
            + (
                f"; following at block {detection['follow_next_block']}, moved {_ago(detection['follow_advanced_age_seconds'])}"
                if detection["follow_next_block"] is not None
                else ""
            )
            + (
                f", {detection['follow_lag_blocks']} blocks behind"
                if detection["follow_lag_blocks"] is not None
                else ""
            ),
        ),
        ("spend today (UTC)", f"{spend['today_trx']} of {spend['cap_trx']} TRX ({spend['used_percent']} %)"),
        (
            "provider balance",
            "-"
            if provider["balance_trx"] is None
            else f"{provider['balance_trx']} TRX ({provider['source']})",
        ),
        (
            "energy ordering",
            "PAUSED: " + document["ordering_paused"] if document["ordering_paused"] else "running",
        ),
    ]
    parts.append(table(["", ""], facts, show_header=False))
    rows = [
        (state, info["count"], _age(info["oldest_age_seconds"]))
        for state, info in document["sweeps"].items()
        if info["count"] or info["oldest_age_seconds"] is not None
    ]
    parts.append(table(["state", "sweeps", "oldest"], rows or [("(none)", 0, "-")], title="sweeps"))
    if document["held"]:
        parts.append(
            table(
                ["address", "token", "sweep", "since", "reason"],
                [
                    (h["address"], h["token"], h["sweep_id"], h["since"], h["reason"])
                    for h in document["held"]
                ],
                title="held addresses",
            )
        )
    if document["failing"]:
        parts.append(
            table(
                ["sweep", "state", "address", "token", "tries", "since", "last error"],
                [
                    (
                        f["sweep_id"],
                        f["state"],
                        f["address"],
                        f["token"],
                        f["attempts"] + f["send_attempts"],
                        f["since"],
                        f["last_error"],
                    )
                    for f in document["failing"]
                ],
                title="failing sweeps",
            )
        )
    return Group(*parts)


def write_status(out: TextIO, document: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(out, document)
    else:
        console(out).print(status_renderable(document))
