"""The operator's commands (docs/operator-contract.md). Exit codes: 0 ok, 1 runtime failure, 2 usage or config error."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

from sqlalchemy.exc import OperationalError, ProgrammingError

from sweeper import __version__
from sweeper.config import Settings, config_path_from, load_settings
from sweeper.domain import InvalidAddress, SweepState, check_tron_address, format_units
from sweeper.errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigError,
    LedgerUnavailable,
    RuntimeFailure,
    SweeperError,
    UsageError,
)
from sweeper.ledger import (
    ORDERING_PAUSE,
    HoldRecord,
    Ledger,
    NewAddress,
    SweepEventRecord,
    SweepRecord,
    make_engine,
    require_head,
    upgrade,
)
from sweeper.logs import configure_logging

# Balance reads in flight. httpcore's pool costs grow with connections x queued requests: past ~16
# the client's CPU, not the node, limits a pass (benchmarks/scan_bench.py).
SCAN_CONCURRENCY = 16


@dataclass
class Context:
    args: argparse.Namespace
    out: TextIO

    @property
    def json(self) -> bool:
        return bool(self.args.json) or not self.out.isatty()

    def settings(self, *, secrets: bool = False) -> Settings:
        settings = load_settings(config_path_from(self.args.config), secrets=secrets)
        if secrets:  # from here on, every log line masks them
            configure_logging(secrets=settings.secret_values(), level=self.args.log_level)
        return settings

    def ledger(self, settings: Settings | None = None) -> Ledger:
        settings = settings or self.settings()
        engine = make_engine(settings.database.url)
        try:
            require_head(engine)
        except OperationalError as exc:
            engine.dispose()
            raise LedgerUnavailable(f"cannot reach the ledger database: {exc.orig}") from None
        return Ledger(engine)


# --- output helpers ----------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _decimals(settings: Settings, token: str) -> int | None:
    try:
        return settings.token(token).decimals
    except KeyError:
        return None


def sweep_json(sweep: SweepRecord, settings: Settings) -> dict[str, Any]:
    decimals = _decimals(settings, sweep.token)

    def units(value: int | None) -> str | None:
        # A token no longer in the config: show base units rather than guess its decimals.
        return (
            format_units(value, decimals) if decimals is not None else (None if value is None else str(value))
        )

    return {
        "id": sweep.id,
        "address": sweep.address,
        "token": sweep.token,
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
        "expiration": _iso(sweep.expiration),
        "attempts": sweep.attempts,
        "send_attempts": sweep.send_attempts,
        "energy_needed": sweep.energy_needed,
        "charge_sun": sweep.charge_sun,
        "charge_day": sweep.charge_day,
        "refund_sun": sweep.refund_sun,
        "first_claimed_at": _iso(sweep.first_claimed_at),
        "next_attempt_at": _iso(sweep.next_attempt_at),
        "claimed_by": sweep.claimed_by,
        "lease_until": _iso(sweep.lease_until),
        "last_error": sweep.last_error,
        "retry_of": sweep.retry_of,
        "created_at": _iso(sweep.created_at),
        "updated_at": _iso(sweep.updated_at),
    }


def event_json(event: SweepEventRecord) -> dict[str, Any]:
    return {
        "at": _iso(event.at),
        "from_state": event.from_state,
        "to_state": event.to_state,
        "reason": event.reason,
        "actor": event.actor,
        "data": event.data,
    }


def print_json(ctx: Context, document: Any) -> None:
    ctx.out.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def print_table(ctx: Context, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    ctx.out.write(line.rstrip() + "\n")
    for row in cells:
        ctx.out.write("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() + "\n")


# --- commands ----------------------------------------------------------------------------------


def cmd_migrate(ctx: Context) -> int:
    settings = ctx.settings()
    engine = make_engine(settings.database.url)
    try:
        before, after = upgrade(engine)
    except OperationalError as exc:
        raise LedgerUnavailable(f"cannot reach the ledger database: {exc.orig}") from None
    finally:
        engine.dispose()
    if before == after:
        ctx.out.write(f"ledger schema already at the newest revision ({after})\n")
    else:
        ctx.out.write(f"ledger schema upgraded from {before or 'empty'} to {after}\n")
    return EXIT_OK


def cmd_config_check(ctx: Context) -> int:
    settings = ctx.settings(secrets=True)
    from sweeper.scanner import watched_address_problems

    problems = watched_address_problems(settings)
    if problems:
        raise ConfigError(problems)
    document = settings.to_public_dict()
    if ctx.json:
        print_json(ctx, {"ok": True, "config": str(settings.path), "effective": document})
    else:
        ctx.out.write(f"# {settings.path}: OK (secrets masked)\n")
        ctx.out.write(render_toml(document))
    return EXIT_OK


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


def _parse_state(text: str | None) -> SweepState | None:
    if text is None:
        return None
    try:
        return SweepState(text)
    except ValueError:
        raise UsageError(
            f"--state: {text!r} is not a sweep state ({', '.join(s.value for s in SweepState)})"
        ) from None


def cmd_sweeps_list(ctx: Context) -> int:
    settings = ctx.settings()
    ledger = ctx.ledger(settings)
    state = _parse_state(ctx.args.state)
    rows = ledger.list_sweeps(state=state, limit=ctx.args.limit)
    if ctx.json:
        print_json(ctx, [sweep_json(s, settings) for s in rows])
        return EXIT_OK
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
        ctx, ["id", "state", "address", "token", "amount", "cost trx", "serial", "txid", "updated"], table
    )
    return EXIT_OK


def cmd_sweeps_show(ctx: Context) -> int:
    settings = ctx.settings()
    ledger = ctx.ledger(settings)
    sweep = ledger.get_sweep(ctx.args.id)
    history = ledger.events(sweep.id)
    document = sweep_json(sweep, settings)
    document["signed_tx"] = json.loads(sweep.signed_tx) if sweep.signed_tx else None
    document["events"] = [event_json(e) for e in history]
    if ctx.json:
        print_json(ctx, document)
        return EXIT_OK
    for key, value in document.items():
        if key not in ("events", "signed_tx"):
            ctx.out.write(f"{key:>27}: {'' if value is None else value}\n")
    ctx.out.write("\n")
    print_table(
        ctx,
        ["at", "from", "to", "reason", "actor"],
        [[_iso(e.at), e.from_state or "-", e.to_state, e.reason, e.actor] for e in history],
    )
    return EXIT_OK


def cmd_sweeps_retry(ctx: Context) -> int:
    ledger = ctx.ledger()
    new_id = ledger.retry(ctx.args.id)
    if ctx.json:
        print_json(ctx, {"retried": ctx.args.id, "new_id": new_id})
    else:
        ctx.out.write(f"sweep {ctx.args.id} retried as new sweep {new_id} (queued)\n")
    return EXIT_OK


def cmd_sweeps_cancel(ctx: Context) -> int:
    ledger = ctx.ledger()
    record = ledger.cancel(ctx.args.id, reason=ctx.args.reason)
    if ctx.json:
        print_json(ctx, {"cancelled": record.id})
    else:
        ctx.out.write(f"sweep {record.id} cancelled\n")
    return EXIT_OK


def hold_json(hold: HoldRecord) -> dict[str, Any]:
    return {
        "token": hold.token,
        "reason": hold.reason,
        "sweep_id": hold.sweep_id,
        "since": _iso(hold.held_at),
    }


def cmd_addresses_list(ctx: Context) -> int:
    ledger = ctx.ledger()
    rows = ledger.list_addresses()
    held: dict[str, list[HoldRecord]] = {}
    for hold in ledger.holds():
        held.setdefault(hold.address, []).append(hold)
    if ctx.json:
        print_json(
            ctx,
            [
                {
                    "id": a.id,
                    "address": a.address,
                    "hd_index": a.hd_index,
                    "label": a.label,
                    "source": a.source,
                    "watched": a.watched,
                    "created_at": _iso(a.created_at),
                    # Held after a paid failure: not swept again until released (one entry per token).
                    "held": [hold_json(h) for h in held.get(a.address, [])],
                }
                for a in rows
            ],
        )
        return EXIT_OK
    print_table(
        ctx,
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
    return EXIT_OK


def cmd_addresses_release(ctx: Context) -> int:
    try:
        address = check_tron_address(ctx.args.address)
    except InvalidAddress as exc:
        raise UsageError(f"ADDRESS: {exc}") from None
    ledger = ctx.ledger()
    released = ledger.release_holds(address, ctx.args.token, actor="operator", reason="released by operator")
    if ctx.json:
        print_json(ctx, {"released": [{"address": h.address, **hold_json(h)} for h in released]})
    else:
        for h in released:
            ctx.out.write(f"{h.address} {h.token} released (held since {_iso(h.held_at)}: {h.reason})\n")
    return EXIT_OK


def cmd_ordering_resume(ctx: Context) -> int:
    ledger = ctx.ledger()
    lifted = ledger.clear_pause(ORDERING_PAUSE)
    if ctx.json:
        print_json(
            ctx,
            {
                "resumed": lifted is not None,
                "was_paused_since": _iso(lifted.since) if lifted else None,
                "reason": lifted.reason if lifted else None,
            },
        )
    elif lifted is None:
        ctx.out.write("energy ordering was not paused\n")
    else:
        ctx.out.write(f"energy ordering resumed (paused since {_iso(lifted.since)}: {lifted.reason})\n")
    return EXIT_OK


def parse_address_lines(path: Path, text: str) -> tuple[list[NewAddress], list[str]]:
    """`address[,hd_index[,label]]` per line; blank lines and # comments skipped.

    Returns the parsed addresses (first occurrence wins) and the problems, each naming its line.
    """
    found: dict[str, NewAddress] = {}
    indexes: dict[int, int] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        parts = [p.strip() for p in body.split(",", 2)]
        try:
            address = check_tron_address(parts[0])
        except InvalidAddress as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        hd_index: int | None = None
        if len(parts) > 1 and parts[1] != "":
            if not parts[1].isdigit() or int(parts[1]) >= 2**31:
                problems.append(f"{path}:{number}: hd_index {parts[1]!r} is not an integer in 0..2^31-1")
                continue
            hd_index = int(parts[1])
            if hd_index in indexes and found.get(address) is None:
                problems.append(
                    f"{path}:{number}: hd_index {hd_index} is already used on line {indexes[hd_index]}"
                )
                continue
        label = parts[2] if len(parts) > 2 and parts[2] else None
        if label is not None and len(label) > 200:
            problems.append(f"{path}:{number}: label is longer than 200 characters")
            continue
        if address in found:
            continue  # duplicate line: ignored
        if hd_index is not None:
            indexes[hd_index] = number
        found[address] = NewAddress(address=address, source="import", hd_index=hd_index, label=label)
    return list(found.values()), problems


def cmd_addresses_import(ctx: Context) -> int:
    settings = ctx.settings()
    path = Path(ctx.args.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    items, problems = parse_address_lines(path, text)
    destination = settings.wallet.destination
    for item in items:
        if item.address == destination:
            problems.append(f"{path}: {item.address} is wallet.destination; it cannot be a deposit address")
    ledger = ctx.ledger(settings)
    known = ledger.known_addresses(i.address for i in items)
    for item in items:
        if item.hd_index is not None and item.address not in known:
            owner = ledger.hd_index_owner(item.hd_index)
            if owner is not None and owner != item.address:
                problems.append(
                    f"{path}: hd_index {item.hd_index} of {item.address} already belongs to {owner}"
                )
    if problems:
        raise UsageError("\n".join([*problems, f"{path}: nothing imported"]))
    added = ledger.upsert_addresses(items)
    skipped = len(items) - added
    if ctx.json:
        print_json(ctx, {"imported": added, "already_known": skipped})
    else:
        ctx.out.write(f"imported {added} addresses ({skipped} already known)\n")
    return EXIT_OK


def cmd_stats(ctx: Context) -> int:
    settings = ctx.settings()
    stats = ctx.ledger(settings).stats()
    swept = {}
    for token, base_units in sorted(stats.swept_by_token.items()):
        decimals = _decimals(settings, token)
        swept[token] = format_units(base_units, decimals) if decimals is not None else str(base_units)
    document = {
        "sweeps_by_state": stats.by_state,
        "swept": swept,
        "energy_cost_sun": stats.energy_cost_sun,
        "energy_cost_trx": format_units(stats.energy_cost_sun, 6),
        "deposit_addresses": stats.addresses,
        "held_addresses": stats.held,
        "spent_today_sun": stats.spent_today_sun,
        "spent_today_trx": format_units(stats.spent_today_sun, 6),
        "daily_cap_trx": str(settings.safety.max_daily_spend_trx),
        "ordering_paused": stats.ordering_paused,
    }
    if ctx.json:
        print_json(ctx, document)
        return EXIT_OK
    ctx.out.write(f"deposit addresses: {stats.addresses}\n")
    ctx.out.write(f"held addresses:    {stats.held}\n")
    ctx.out.write(f"energy cost paid:  {document['energy_cost_trx']} TRX\n")
    ctx.out.write(f"spent today (UTC): {document['spent_today_trx']} of {document['daily_cap_trx']} TRX\n")
    if stats.ordering_paused:
        ctx.out.write(f"ORDERING PAUSED:   {stats.ordering_paused} (`sweeper ordering resume`)\n")
    for token, amount in swept.items():
        ctx.out.write(f"swept {token}: {amount}\n")
    ctx.out.write("\n")
    print_table(ctx, ["state", "sweeps"], [[k, v] for k, v in stats.by_state.items()])
    return EXIT_OK


def cmd_demo(ctx: Context) -> int:
    from sweeper.demo import run_demo

    return run_demo(ctx.out)


def cmd_scan(ctx: Context) -> int:
    settings = ctx.settings(secrets=True)
    ledger = ctx.ledger(settings)
    try:
        return asyncio.run(_scan(ctx, settings, ledger))
    finally:
        ledger.engine.dispose()


async def _scan(ctx: Context, settings: Settings, ledger: Ledger) -> int:
    # Imported here: the ledger-only commands should not pay for importing tronpy and httpx.
    from sweeper.chain import ChainError
    from sweeper.clients import chain_from, provider_from
    from sweeper.provider import ProviderError
    from sweeper.scanner import ScanError, Scanner, sync_addresses

    dry_run = bool(ctx.args.dry_run)
    added = await asyncio.to_thread(sync_addresses, settings, ledger)
    try:
        async with chain_from(settings) as chain:
            report = await Scanner(ledger, chain, settings.tokens, concurrency=SCAN_CONCURRENCY).run_pass(
                dry_run=dry_run, keep_candidates=True
            )
    except (ChainError, ScanError) as exc:
        raise RuntimeFailure(f"scan incomplete: {exc}") from None
    price_sun: int | None = None
    price_error = None
    if dry_run and report.candidates:
        try:
            async with provider_from(settings) as provider:
                quote = await provider.price(to_address=settings.wallet.destination)
            price_sun = quote.total_price_sun
        except ProviderError as exc:
            price_error = str(exc)
    candidates = [
        {
            "address": c.address,
            "token": c.token.symbol,
            "amount": format_units(c.amount, c.token.decimals),
            "energy_price_sun": price_sun,
            "energy_price_trx": format_units(price_sun, 6),
            "sweep_id": c.sweep_id,  # None: a dry run, or another scan queued it first
        }
        for c in report.candidates
    ]
    document: dict[str, Any] = {
        "dry_run": dry_run,
        "addresses_added": added,
        "addresses_scanned": report.addresses,
        "resumed_after_address_id": report.resumed_after_id,
        "balance_reads": report.balance_reads,
        "skipped_open_sweep": report.skipped_open,
        "above_threshold": report.candidate_count,
        "queued": report.queued,
        "seconds": round(report.seconds, 3),
        "candidates": candidates,
    }
    if price_error:
        document["price_error"] = price_error
    if ctx.json:
        print_json(ctx, document)
        return EXIT_OK
    if dry_run:
        print_table(
            ctx,
            ["address", "token", "amount", "energy price trx"],
            [
                [c["address"], c["token"], c["amount"], c["energy_price_trx"] or "?"]
                for c in document["candidates"]
            ],
        )
        if price_error:
            ctx.out.write(f"price unavailable: {price_error}\n")
        ctx.out.write(f"dry run: {report.candidate_count} above threshold, nothing queued\n")
    else:
        if document["candidates"]:
            print_table(
                ctx,
                ["address", "token", "amount", "sweep"],
                [
                    [
                        c["address"],
                        c["token"],
                        c["amount"],
                        f"#{c['sweep_id']} queued" if c["sweep_id"] else "-",
                    ]
                    for c in document["candidates"]
                ],
            )
        ctx.out.write(
            f"scanned {report.addresses} addresses ({report.balance_reads} balance reads, {report.skipped_open} "
            f"skipped with an open sweep): {report.candidate_count} above threshold, {report.queued} queued\n"
        )
    return EXIT_OK


def cmd_work(ctx: Context) -> int:
    from sweeper.worker import Until, ledger_lock, work

    settings = ctx.settings(secrets=True)
    ledger = ctx.ledger(settings)
    until = Until.IDLE if ctx.args.once else Until.FINAL if ctx.args.until_final else Until.STOPPED
    try:
        with ledger_lock(settings):
            result = asyncio.run(
                work(settings, ledger, until=until, timeout=ctx.args.timeout, dry_run=ctx.args.dry_run)
            )
    finally:
        ledger.engine.dispose()
    summary = {
        "rows_worked": result.rows_worked,
        "open_sweeps": result.open_left,
        "timed_out": result.timed_out,
    }
    if ctx.json:
        print_json(ctx, summary)
    else:
        ctx.out.write(f"worked {result.rows_worked} rows; {result.open_left} sweeps still open\n")
    if result.timed_out:
        raise RuntimeFailure(f"--timeout reached with {result.open_left} sweeps still open")
    return EXIT_OK


def cmd_run(ctx: Context) -> int:
    from sweeper.daemon import run_daemon
    from sweeper.scanner import watched_address_problems
    from sweeper.worker import ledger_lock

    settings = ctx.settings(secrets=True)
    problems = watched_address_problems(settings)
    if problems:
        raise ConfigError(problems)
    ledger = ctx.ledger(settings)
    try:
        with ledger_lock(settings):
            return asyncio.run(run_daemon(settings, ledger, dry_run=ctx.args.dry_run))
    finally:
        ledger.engine.dispose()


# --- parser ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given before the command is not reset by the command's own parser.
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        help="config file (default: $SWEEPER_CONFIG, else ./sweeper.toml)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="one JSON document on stdout (default off a TTY)",
    )
    common.add_argument(
        "--log-level", default=argparse.SUPPRESS, help="DEBUG, INFO (default), WARNING, ERROR"
    )

    parser = _Parser(
        prog="sweeper", description="Sweeps TRON deposit addresses into one wallet.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"sweeper {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(
        sub: Any, name: str, handler: Callable[[Context], int], help_text: str
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, parents=[common])
        p.set_defaults(handler=handler)
        return p

    add(commands, "migrate", cmd_migrate, "create or upgrade the ledger schema (safe to rerun)")
    config = commands.add_parser("config", help="config commands").add_subparsers(dest="sub", required=True)
    add(config, "check", cmd_config_check, "validate the config and its secrets; print it masked")

    sweeps = commands.add_parser("sweeps", help="inspect and act on sweeps").add_subparsers(
        dest="sub", required=True
    )
    p = add(sweeps, "list", cmd_sweeps_list, "the ledger, newest first")
    p.add_argument("--state", help="only sweeps in this state")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows")
    p = add(sweeps, "show", cmd_sweeps_show, "one sweep with its full event history")
    p.add_argument("id", type=int)
    p = add(sweeps, "retry", cmd_sweeps_retry, "queue a new sweep for a failed one (retry_of = ID)")
    p.add_argument("id", type=int)
    p = add(sweeps, "cancel", cmd_sweeps_cancel, "cancel a queued sweep (nothing ordered yet)")
    p.add_argument("id", type=int)
    p.add_argument("--reason", default="cancelled by operator")

    addrs = commands.add_parser("addresses", help="the watched deposit addresses").add_subparsers(
        dest="sub", required=True
    )
    add(addrs, "list", cmd_addresses_list, "the watched deposit addresses")
    p = add(addrs, "import", cmd_addresses_import, "add address[,hd_index[,label]] lines from FILE")
    p.add_argument("file")
    p = add(addrs, "release", cmd_addresses_release, "lift the hold of ADDRESS (all tokens, or --token T)")
    p.add_argument("address")
    p.add_argument("--token", default=None, help="only this token's hold (a symbol, e.g. USDT)")

    ordering = commands.add_parser("ordering", help="energy ordering").add_subparsers(
        dest="sub", required=True
    )
    add(ordering, "resume", cmd_ordering_resume, "lift the pause an over-cost order set")

    add(commands, "stats", cmd_stats, "totals: swept per token, energy cost, sweeps per state")
    add(commands, "demo", cmd_demo, "a walk through the ledger on a throw-away sandbox")
    p = add(commands, "work", cmd_work, "run the sweep pipeline (order energy, sign, broadcast, confirm)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="until nothing is due now")
    mode.add_argument("--until-final", action="store_true", help="until every sweep is final")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
    p.add_argument("--dry-run", action="store_true", help="log what would be ordered; change nothing")
    p = add(commands, "run", cmd_run, "the daemon: scheduled scans, the sweep worker, the callback listener")
    p.add_argument(
        "--dry-run", action="store_true", help="log what would be queued, ordered and sent; change nothing"
    )
    p = add(commands, "scan", cmd_scan, "one scan pass now: queue sweeps above threshold")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what is above threshold and the energy price; queue nothing (addresses are still synced)",
    )
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    args.config = getattr(args, "config", None)
    args.json = getattr(args, "json", False)
    args.log_level = getattr(args, "log_level", None) or os.environ.get("SWEEPER_LOG_LEVEL", "INFO")
    configure_logging(level=args.log_level)
    ctx = Context(args=args, out=out)
    try:
        return _handle(args.handler, ctx)
    except SweeperError as exc:
        sys.stderr.write("".join(f"sweeper: error: {line}\n" for line in exc.lines()))
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _handle(handler: Callable[[Context], int], ctx: Context) -> int:
    """Run one command. The database driver's errors are not ours: this is the one place they
    become a `LedgerUnavailable` (exit 1)."""
    try:
        return handler(ctx)
    except (OperationalError, ProgrammingError) as exc:
        raise LedgerUnavailable(f"ledger database error: {exc.orig}") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
