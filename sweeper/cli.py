"""The operator's commands (docs/operator-contract.md). Exit codes: 0 ok, 1 runtime failure, 2 usage or config error."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO, TypeAlias

from sqlalchemy.exc import OperationalError, ProgrammingError

from sweeper import __version__, render
from sweeper.addresses import import_addresses, read_address_file, watched_address_problems
from sweeper.config import Settings, config_path_from, load_settings
from sweeper.domain import InvalidAddress, SweepState, check_tron_address
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
from sweeper.export import FORMATS, parse_window, write_export
from sweeper.ledger import ORDERING_PAUSE, Ledger, make_engine, require_head, upgrade
from sweeper.logs import configure_logging


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


# --- commands: each parses its arguments, calls into the modules, and renders ---------------------


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
    problems = watched_address_problems(settings)
    if problems:
        raise ConfigError(problems)
    render.write_config(ctx.out, settings, as_json=ctx.json)
    return EXIT_OK


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
    render.write_sweeps(ctx.out, rows, settings, as_json=ctx.json)
    return EXIT_OK


def cmd_sweeps_export(ctx: Context) -> int:
    # A data export: --format decides the form, on a terminal or not (--json and the TTY do not).
    settings = ctx.settings()
    window = parse_window(ctx.args.since, ctx.args.until)
    ledger = ctx.ledger(settings)
    try:
        write_export(ctx.out, ledger.engine, settings, window, fmt=ctx.args.format, totals=ctx.args.totals)
    finally:
        ledger.engine.dispose()
    return EXIT_OK


def cmd_sweeps_show(ctx: Context) -> int:
    settings = ctx.settings()
    ledger = ctx.ledger(settings)
    sweep = ledger.get_sweep(ctx.args.id)
    render.write_sweep(ctx.out, sweep, ledger.events(sweep.id), settings, as_json=ctx.json)
    return EXIT_OK


def cmd_sweeps_retry(ctx: Context) -> int:
    new_id = ctx.ledger().retry(ctx.args.id)
    document = {"retried": ctx.args.id, "new_id": new_id}
    text = f"sweep {ctx.args.id} retried as new sweep {new_id} (queued)"
    render.write_result(ctx.out, document, text, as_json=ctx.json)
    return EXIT_OK


def cmd_sweeps_cancel(ctx: Context) -> int:
    record = ctx.ledger().cancel(ctx.args.id, reason=ctx.args.reason)
    render.write_result(ctx.out, {"cancelled": record.id}, f"sweep {record.id} cancelled", as_json=ctx.json)
    return EXIT_OK


def cmd_addresses_list(ctx: Context) -> int:
    ledger = ctx.ledger()
    rows = ledger.list_addresses()
    render.write_addresses(ctx.out, rows, ledger.holds(), as_json=ctx.json)
    return EXIT_OK


def cmd_addresses_release(ctx: Context) -> int:
    try:
        address = check_tron_address(ctx.args.address)
    except InvalidAddress as exc:
        raise UsageError(f"ADDRESS: {exc}") from None
    ledger = ctx.ledger()
    released = ledger.release_holds(address, ctx.args.token, actor="operator", reason="released by operator")
    render.write_released(ctx.out, released, as_json=ctx.json)
    return EXIT_OK


def _address_arguments(texts: Sequence[str]) -> list[str]:
    """ADDRESS… checked before the ledger is touched: any bad one is a usage error (exit 2)."""
    found: list[str] = []
    for text in texts:
        try:
            found.append(check_tron_address(text))
        except InvalidAddress as exc:
            raise UsageError(f"ADDRESS: {exc}") from None
    return found


def cmd_addresses_unwatch(ctx: Context) -> int:
    wanted = _address_arguments(ctx.args.addresses)
    changed, already = ctx.ledger().set_watched(wanted, False)
    render.write_watch_change(ctx.out, changed, already, watched=False, as_json=ctx.json)
    return EXIT_OK


def cmd_addresses_watch(ctx: Context) -> int:
    wanted = _address_arguments(ctx.args.addresses)
    changed, already = ctx.ledger().set_watched(wanted, True)
    render.write_watch_change(ctx.out, changed, already, watched=True, as_json=ctx.json)
    return EXIT_OK


def cmd_addresses_import(ctx: Context) -> int:
    settings = ctx.settings()
    file = read_address_file(Path(ctx.args.file), destination=settings.wallet.destination)
    added = import_addresses(ctx.ledger(settings), file)
    skipped = len(file.addresses) - added
    document = {"imported": added, "already_known": skipped}
    text = f"imported {added} addresses ({skipped} already known)"
    render.write_result(ctx.out, document, text, as_json=ctx.json)
    return EXIT_OK


def cmd_ordering_resume(ctx: Context) -> int:
    lifted = ctx.ledger().clear_pause(ORDERING_PAUSE)
    render.write_resumed(ctx.out, lifted, as_json=ctx.json)
    return EXIT_OK


def cmd_stats(ctx: Context) -> int:
    settings = ctx.settings()
    render.write_stats(ctx.out, ctx.ledger(settings).stats(), settings, as_json=ctx.json)
    return EXIT_OK


def cmd_status(ctx: Context) -> int:
    """One screen: the daemon (from /healthz and /metrics when reachable), detection, sweeps by
    state, spend, provider balance, held addresses, failing sweeps. `--watch`: refreshed in place on
    a terminal; off a terminal one JSON document per line per refresh. Ctrl-C ends a watch (exit 0)."""
    from sweeper.status import ask_daemon, gather

    settings = ctx.settings()
    ledger = ctx.ledger(settings)
    try:
        if ctx.args.watch is None:
            render.write_status(ctx.out, gather(settings, ledger, ask_daemon(settings)), as_json=ctx.json)
            return EXIT_OK
        interval = max(1.0, float(ctx.args.watch))
        try:
            if ctx.json:
                while True:
                    document = gather(settings, ledger, ask_daemon(settings))
                    ctx.out.write(json.dumps(document, ensure_ascii=False) + "\n")
                    ctx.out.flush()
                    time.sleep(interval)
            from rich.live import Live

            document = gather(settings, ledger, ask_daemon(settings))
            with Live(
                render.status_renderable(document), console=render.console(ctx.out), auto_refresh=False
            ) as live:
                while True:
                    time.sleep(interval)
                    live.update(
                        render.status_renderable(gather(settings, ledger, ask_daemon(settings))), refresh=True
                    )
        except KeyboardInterrupt:
            return EXIT_OK
    finally:
        ledger.engine.dispose()


def cmd_demo(ctx: Context) -> int:
    from sweeper.demo import run_demo

    return run_demo(ctx.out)


# The network commands import their modules here: the ledger-only commands should not pay for
# importing tronpy and httpx.


def cmd_scan(ctx: Context) -> int:
    from sweeper.scanner import scan_once

    settings = ctx.settings(secrets=True)
    ledger = ctx.ledger(settings)
    try:
        report = asyncio.run(scan_once(settings, ledger, dry_run=bool(ctx.args.dry_run)))
    finally:
        ledger.engine.dispose()
    render.write_scan(ctx.out, report, as_json=ctx.json)
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
    render.write_work(ctx.out, result, as_json=ctx.json)
    if result.timed_out:
        raise RuntimeFailure(f"--timeout reached with {result.open_left} sweeps still open")
    return EXIT_OK


def cmd_run(ctx: Context) -> int:
    from sweeper.daemon import run_daemon
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


# --- parser: one configure_<group>_parser per command group, in the order `--help` lists them -----


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


Subparsers: TypeAlias = "argparse._SubParsersAction[Any]"


def _add(
    sub: Subparsers,
    common: argparse.ArgumentParser,
    name: str,
    handler: Callable[[Context], int],
    help_text: str,
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, parents=[common])
    p.set_defaults(handler=handler)
    return p


def _group(sub: Subparsers, name: str, help_text: str) -> Subparsers:
    group: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    return group.add_subparsers(dest="sub", required=True)


def configure_migrate_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    _add(sub, common, "migrate", cmd_migrate, "create or upgrade the ledger schema (safe to rerun)")


def configure_config_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    config = _group(sub, "config", "config commands")
    _add(config, common, "check", cmd_config_check, "validate the config and its secrets; print it masked")


def configure_sweeps_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    sweeps = _group(sub, "sweeps", "inspect and act on sweeps")
    p = _add(sweeps, common, "list", cmd_sweeps_list, "the ledger, newest first")
    p.add_argument("--state", help="only sweeps in this state")
    p.add_argument("--limit", type=int, default=None, help="at most this many rows")
    p = _add(
        sweeps, common, "export", cmd_sweeps_export, "accounting export: sweeps that moved or cost money"
    )
    p.add_argument("--since", required=True, help="YYYY-MM-DD (UTC day) or ISO 8601 time with Z; inclusive")
    p.add_argument("--until", default=None, help="YYYY-MM-DD (UTC day) or ISO 8601 time with Z; exclusive")
    p.add_argument("--format", required=True, choices=FORMATS, help="csv (RFC 4180) or json")
    p.add_argument("--totals", action="store_true", help="instead: totals per asset and UTC day")
    p = _add(sweeps, common, "show", cmd_sweeps_show, "one sweep with its full event history")
    p.add_argument("id", type=int)
    p = _add(sweeps, common, "retry", cmd_sweeps_retry, "queue a new sweep for a failed one (retry_of = ID)")
    p.add_argument("id", type=int)
    p = _add(sweeps, common, "cancel", cmd_sweeps_cancel, "cancel a queued sweep (nothing ordered yet)")
    p.add_argument("id", type=int)
    p.add_argument("--reason", default="cancelled by operator")


def configure_addresses_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    addrs = _group(sub, "addresses", "the watched deposit addresses")
    _add(addrs, common, "list", cmd_addresses_list, "the watched deposit addresses")
    p = _add(addrs, common, "import", cmd_addresses_import, "add address[,hd_index[,label]] lines from FILE")
    p.add_argument("file")
    p = _add(
        addrs, common, "release", cmd_addresses_release, "lift the hold of ADDRESS (all tokens, or --token T)"
    )
    p.add_argument("address")
    p.add_argument("--token", default=None, help="only this token's hold (a symbol, e.g. USDT)")
    p = _add(
        addrs, common, "unwatch", cmd_addresses_unwatch, "stop detecting and queueing sweeps for ADDRESS…"
    )
    p.add_argument("addresses", nargs="+", metavar="ADDRESS")
    p = _add(addrs, common, "watch", cmd_addresses_watch, "watch ADDRESS… again (undo `unwatch`)")
    p.add_argument("addresses", nargs="+", metavar="ADDRESS")


def configure_ordering_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    ordering = _group(sub, "ordering", "energy ordering")
    _add(ordering, common, "resume", cmd_ordering_resume, "lift the pause an over-cost order set")


def configure_stats_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    _add(sub, common, "stats", cmd_stats, "totals: swept per token, energy cost, sweeps per state")


def configure_status_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = _add(
        sub, common, "status", cmd_status, "is everything fine? the daemon, detection, sweeps, spend, holds"
    )
    p.add_argument(
        "--watch",
        nargs="?",
        const=5.0,
        default=None,
        type=float,
        metavar="SECONDS",
        help="refresh every SECONDS (default 5) until Ctrl-C",
    )


def configure_demo_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    _add(sub, common, "demo", cmd_demo, "a walk through the ledger on a throw-away sandbox")


def configure_work_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = _add(sub, common, "work", cmd_work, "run the sweep pipeline (order energy, sign, broadcast, confirm)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="until nothing is due now")
    mode.add_argument("--until-final", action="store_true", help="until every sweep is final")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
    p.add_argument("--dry-run", action="store_true", help="log what would be ordered; change nothing")


def configure_run_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = _add(
        sub, common, "run", cmd_run, "the daemon: scheduled scans, the sweep worker, the callback listener"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="log what would be queued, ordered and sent; change nothing"
    )


def configure_scan_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    p = _add(sub, common, "scan", cmd_scan, "one scan pass now: queue sweeps above threshold")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what is above threshold and the energy price; queue nothing (addresses are still synced)",
    )


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
    for configure in (
        configure_migrate_parser,
        configure_config_parser,
        configure_sweeps_parser,
        configure_addresses_parser,
        configure_ordering_parser,
        configure_stats_parser,
        configure_status_parser,
        configure_demo_parser,
        configure_work_parser,
        configure_run_parser,
        configure_scan_parser,
    ):
        configure(commands, common)
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
