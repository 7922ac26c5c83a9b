"""`sweeper run`: scheduled detection, the sweep pipeline, and the callback listener, in one loop.

One asyncio event loop (design.md, "How it runs"): APScheduler 3's AsyncIOScheduler runs the scan
and work jobs (never two runs of one job at once, missed runs coalesced), uvicorn serves the
listener in the same loop, and the ledger is called through `asyncio.to_thread`.

Signals: SIGTERM/SIGINT stop claiming, let the step in flight finish (or cancel it after a grace
period: every step is safe to re-run), release our leases and exit 0; SIGHUP reloads thresholds
and the address list from the config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from sweeper import notify
from sweeper.addresses import AddressConfigProblem, sync_addresses, watched_address_problems
from sweeper.chain import ChainError, TronChain
from sweeper.clients import chain_from, provider_from
from sweeper.config import DetectMode, Settings, load_settings
from sweeper.domain import Clock, utcnow
from sweeper.errors import ConfigError, LedgerUnavailable, ProviderError, StartupError
from sweeper.follower import BLOCK_SECONDS, Follower, NodeCannotFollow
from sweeper.keys import Keys
from sweeper.ledger import Ledger
from sweeper.listener import (
    HealthReport,
    Listener,
    ListenError,
    create_app,
    create_monitoring_app,
    serve,
)
from sweeper.logs import configure_logging
from sweeper.metrics import Metrics
from sweeper.pipeline import Pipeline, PipelineOptions, worker_name
from sweeper.provider.callbacks import CallbackRejected, ProviderCallback
from sweeper.provider.client import ProviderClient
from sweeper.provider.errors import ProviderAuthError
from sweeper.scanner import SCAN_CONCURRENCY, ScanError, Scanner

log = structlog.get_logger("sweeper.daemon")

STOP_GRACE_SECONDS = 6.0  # of the 10 s an operator (and systemd) may wait; the rest is for closing down
LISTENER_STOP_SECONDS = 3.0  # requests in flight (a callback, a health check) may finish meanwhile
HOUSEKEEPING_SECONDS = 15.0
CLOCK_SKEW_WARN_SECONDS = 15.0


class _SkipOverlapNotice(logging.Filter):
    """Drop APScheduler's "skipped: maximum number of running instances" warning.

    A work run that outlasts `work_interval_seconds` is normal (the run in flight keeps going until
    nothing is due); not starting a second one is the design, not something for an operator to see
    every few seconds in the journal.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


logging.getLogger("apscheduler.scheduler").addFilter(_SkipOverlapNotice())


@dataclass
class ProviderStatus:
    reachable: bool = False
    balance_sun: int | None = None
    checked_at: datetime | None = None
    error: str | None = None


class Daemon:
    def __init__(
        self,
        settings: Settings,
        ledger: Ledger,
        *,
        dry_run: bool = False,
        clock: Clock | None = None,
        chain: TronChain | None = None,
        provider: ProviderClient | None = None,
        reload: Callable[[], Settings] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.dry_run = dry_run
        self.now: Clock = clock if clock is not None else ledger.now  # the database's clock
        self.chain = chain or chain_from(settings)
        self.provider = provider or provider_from(settings)
        self._reload_settings = reload or (lambda: load_settings(self.settings.path))
        self.worker_id = worker_name()
        self.metrics = Metrics()
        self.metrics.before_render.append(self._update_live_metrics)
        self.provider_status = ProviderStatus()
        self.scanner = Scanner(ledger, self.chain, settings.tokens, concurrency=SCAN_CONCURRENCY)
        # Block following ([detect] mode = "follow" / "both"); a dry run detects by poll passes.
        self.follower: Follower | None = None
        if settings.detect.mode.follows and not dry_run:
            self.follower = Follower(
                ledger,
                self.chain,
                settings.tokens,
                worker_id=self.worker_id,
                scanner=self.scanner,
                lease_seconds=settings.detect.lease_seconds,
                concurrency=settings.detect.concurrency,
            )
        self.pipeline = Pipeline.from_settings(
            settings,
            ledger,
            chain=self.chain,
            provider=self.provider,
            worker_id=self.worker_id,
            clock=clock,
            dry_run=dry_run,
        )
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.stop_requested = asyncio.Event()
        self.started = asyncio.Event()
        self._stopping = False
        self._job_tasks: set[asyncio.Task[Any]] = set()
        self._db_down_logged: dict[
            str, float
        ] = {}  # job -> loop time of its last 'database unreachable' line
        self.started_at: datetime | None = None
        self.last_scan_completed: datetime | None = None
        self.last_scan_error: str | None = None
        self._listener: Listener | None = None
        self._metrics_listener: Listener | None = None  # with [metrics] listen
        self._work_running = False
        self._work_again = False
        self._reload_lock = asyncio.Lock()
        self._poll_lock = asyncio.Lock()
        # The safety-net pass keeps its own progress row: it never resumes, nor is resumed by, the
        # initial pass or a reload's.
        self._reconcile_scanner = Scanner(
            ledger, self.chain, settings.tokens, concurrency=SCAN_CONCURRENCY, name="reconcile"
        )
        self._background: set[asyncio.Task[None]] = set()
        self._watchdog_task: asyncio.Task[None] | None = None

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until a stop signal, stop cleanly. Returns the exit code (0)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        # A stop signal during start-up (the provider check retries, the address sync) is
        # honoured at once rather than after start-up completes.
        starting = asyncio.create_task(self.start(), name="sweeper-start")
        stopping = asyncio.create_task(self.stop_requested.wait(), name="sweeper-stop-wait")
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                log.info("stop requested during start-up")
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            else:
                starting.result()  # StartupError and the like propagate
                await stopping
        finally:
            stopping.cancel()
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        return 0

    async def start(self) -> None:
        await self._check_provider(startup=True)
        await self._check_clock()
        try:
            added = await asyncio.to_thread(sync_addresses, self.settings, self.ledger)
        except AddressConfigProblem as exc:
            raise StartupError(str(exc)) from None
        log.info("deposit addresses synced", added=added)
        try:  # the ledger gauges before the first scrape: a 0 scraped now would read as a jump later
            await asyncio.to_thread(
                self.metrics.refresh_from_ledger,
                self.ledger,
                stuck_after_seconds=self.settings.pipeline.stuck_alert_seconds,
                now=self.now(),
            )
        except OperationalError as exc:
            log.warning("metrics not refreshed: database unreachable", error=_first_line(exc))
        # With [metrics] listen, /healthz and /metrics move to a listener of their own (loopback, for
        # monitoring) and the internet-facing callback port serves /callback only.
        own = self.settings.metrics  # its host and port are None when [metrics] listen is unset
        app = create_app(
            verify=self._verify,
            on_hint=self._on_hint,
            health=self.health if own.port is None else None,
            metrics=self.metrics,
            max_failed_per_second=self.settings.callback.max_failed_per_second,
        )
        try:
            self._listener = await serve(app, self.settings.callback.host, self.settings.callback.port)
        except ListenError as exc:
            raise StartupError(f"[callback] listen = {self.settings.callback.listen!r}: {exc}") from None
        if own.host is not None and own.port is not None:
            monitoring = create_monitoring_app(health=self.health, metrics=self.metrics)
            try:
                self._metrics_listener = await serve(monitoring, own.host, own.port)
            except ListenError as exc:
                raise StartupError(f"[metrics] listen = {own.listen!r}: {exc}") from None
        # Its own task: the watchdog proves the loop is alive, independent of a slow job.
        self._watchdog_task = asyncio.create_task(notify.watchdog_pinger(), name="sweeper-watchdog")
        now = datetime.now(UTC)
        common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        if self.follower is None:
            self.scheduler.add_job(
                self._job(self._scan_job),
                "interval",
                seconds=self.settings.schedule.scan_interval_seconds,
                id="scan",
                next_run_time=now,
                **common,
            )
        else:
            await self._prove_node_follows()
            self.scheduler.add_job(
                self._job(self._follow_job),
                "interval",
                seconds=BLOCK_SECONDS,
                id="follow",
                next_run_time=now,
                **common,
            )
            if self.settings.detect.mode is DetectMode.BOTH:
                reconcile = self.settings.detect.reconcile_interval_seconds
                self.scheduler.add_job(
                    self._job(self._reconcile_job),
                    "interval",
                    seconds=reconcile,
                    id="reconcile",
                    next_run_time=now + timedelta(seconds=reconcile),
                    **common,
                )
        self.scheduler.add_job(
            self._job(self._work_job),
            "interval",
            seconds=self.settings.schedule.work_interval_seconds,
            id="work",
            next_run_time=now,
            **common,
        )
        self.scheduler.add_job(
            self._job(self._housekeeping_job),
            "interval",
            seconds=HOUSEKEEPING_SECONDS,
            id="housekeeping",
            next_run_time=now,
            **common,
        )
        self.scheduler.start()
        notify.ready()
        self.started_at = self.now()
        self.started.set()
        log.info(
            "sweeper running",
            worker=self.worker_id,
            listen=self.settings.callback.listen,
            metrics_listen=self.settings.metrics.listen or self.settings.callback.listen,
            dry_run=self.dry_run,
            destination=self.settings.wallet.destination,
        )

    def request_stop(self) -> None:
        if not self.stop_requested.is_set():
            log.info("stop requested: no new claims; finishing the steps in flight")
            self._stopping = True
            self.stop_requested.set()

    async def shutdown(self) -> None:
        self._stopping = True
        notify.stopping()
        # Pause, not shut down, first: APScheduler's shutdown cancels the coroutine jobs in
        # flight at once, and we want to give the step in flight its grace period.
        if self.scheduler.running:
            self.scheduler.pause()
        self.pipeline.stopping = True  # the step in flight finishes; no next step is taken
        # The listener stops alongside (not after) the grace period: all of it within 10 s.
        listeners_stopped = [
            asyncio.create_task(listener.shutdown(timeout=LISTENER_STOP_SECONDS))
            for listener in (self._listener, self._metrics_listener)
            if listener is not None
        ]
        pending = {t for t in self._job_tasks if not t.done()}
        if pending:
            _, still = await asyncio.wait(pending, timeout=STOP_GRACE_SECONDS)
            for task in still:  # a step past the grace period: cancel it; the row is re-run later
                task.cancel()
            if still:
                log.warning("steps still running after the grace period were cancelled; they re-run later")
                await asyncio.wait(still, timeout=1.0)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.follower is not None:
            try:  # another daemon takes over following at once
                await self.follower.release()
            except Exception as exc:
                log.warning("the follower lease could not be released; it runs out", error=str(exc)[:200])
        released = await asyncio.to_thread(self.ledger.release_claims, self.worker_id)
        if released:
            log.info("leases released", sweeps=released)
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
        if listeners_stopped:
            await asyncio.gather(*listeners_stopped)
        await self.chain.aclose()
        await self.provider.aclose()
        log.info("sweeper stopped")

    def _job(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Coroutine[Any, Any, None]]:
        """Wrap a job so shutdown can see (and if need be cancel) the run in flight."""

        async def run() -> None:
            if self._stopping:
                return
            task = asyncio.current_task()
            if task is not None:
                self._job_tasks.add(task)
            try:
                await fn()
            except asyncio.CancelledError:
                if self._stopping:  # our own cancel at shutdown: expected, the row re-runs later
                    return
                raise
            except OperationalError as exc:
                name = getattr(fn, "__name__", "?")
                if await self._database_answers():
                    # It answers: not an outage (locked, disk full, a schema problem …): loud.
                    log.error("job failed", job=name, exc_info=exc)
                    return
                # The database is away (refused, dropped, timed out): every job fails the same way
                # each tick until it is back. One line per job a minute, not a traceback a second;
                # /healthz says `database: unreachable` meanwhile, and the next tick retries.
                now = asyncio.get_running_loop().time()
                if now - self._db_down_logged.get(name, float("-inf")) >= 60.0:
                    self._db_down_logged[name] = now
                    log.warning(
                        "database unreachable; the job runs again next tick",
                        job=name,
                        error=_first_line(exc),
                    )
            except Exception:
                log.exception("job failed", job=getattr(fn, "__name__", "?"))
            finally:
                if task is not None:
                    self._job_tasks.discard(task)

        run.__name__ = getattr(fn, "__name__", "job")
        return run

    # --- jobs -------------------------------------------------------------------------------

    async def _scan_job(self) -> None:
        try:
            report = await self.scanner.run_pass(dry_run=self.dry_run)
        except (ChainError, ScanError) as exc:
            self.last_scan_error = str(exc)
            log.warning("scan pass incomplete; it resumes next time", error=str(exc))
            return
        self.last_scan_completed = self.now()
        self.last_scan_error = None
        if report.unreadable:
            self.metrics.scan_address_errors.inc(report.unreadable)
        if self.dry_run:
            for c in report.candidates:
                log.info(
                    "dry run: would queue a sweep", address=c.address, token=c.token.symbol, amount=c.amount
                )
        elif report.queued:
            self.wake_worker()

    async def _prove_node_follows(self) -> None:
        """At start: a node without transaction infos refuses following (exit 2). An unreachable
        node is not fatal: the follow job proves it once it answers."""
        assert self.follower is not None
        try:
            head = await self.chain.solid_head()
            await self.follower.prove_node(head)
        except ChainError as exc:
            log.warning("TRON node unreachable at start-up; following proves it later", error=str(exc)[:200])

    async def _follow_job(self) -> None:
        assert self.follower is not None
        queued = self.follower.status.queued
        try:
            await self.follower.step()
        except NodeCannotFollow as exc:
            self.last_scan_error = str(exc)
            log.error("ALERT: block following stopped", error=str(exc))
            return
        except (ChainError, ScanError) as exc:
            self.last_scan_error = str(exc)
            log.warning("following blocks failed; it resumes at the cursor", error=str(exc)[:300])
            return
        self.last_scan_completed = self.now()  # detection is live (or another daemon follows)
        self.last_scan_error = None
        if self.follower.status.queued > queued:
            self.wake_worker()

    async def _reconcile_job(self) -> None:
        """[detect] mode = "both": the safety net. A full poll pass; what it queues, following missed
        (or the deposit landed in a block following had not reached yet)."""
        assert self.follower is not None
        if self.follower.initial_pass_running or not self.follower.status.following:
            return  # the daemon that follows runs the safety net (one pass, not one per daemon)
        try:
            async with self._poll_lock:  # one poll pass at a time (the reload's, the safety net's)
                report = await self._reconcile_scanner.run_pass()
        except (ChainError, ScanError) as exc:
            log.warning("safety-net poll pass incomplete; it resumes next time", error=str(exc)[:300])
            return
        if report.queued:
            self.metrics.reconcile_queued.inc(report.queued)
            log.error(
                "ALERT: the safety-net poll pass queued sweeps that block following had not",
                queued=report.queued,
                follower_lag_blocks=self.follower.status.lag_blocks,
            )
            self.wake_worker()
        else:
            log.info("safety-net poll pass: nothing that following had missed", addresses=report.addresses)

    async def _poll_after_reload(self) -> None:
        log.info("thresholds lowered: a poll pass reads the balances already there")
        # Its own pass (not the initial or the safety-net one): it never resumes one begun under the
        # old thresholds. Retried until it completes: in "follow" mode nothing else would read them.
        scanner = Scanner(
            self.ledger, self.chain, self.settings.tokens, concurrency=SCAN_CONCURRENCY, name="reload"
        )
        while True:
            if self._stopping:
                return
            try:
                async with self._poll_lock:
                    report = await scanner.run_pass()
                break
            except (ChainError, ScanError) as exc:
                log.warning(
                    "poll pass after the reload incomplete; retried in a minute", error=str(exc)[:300]
                )
                await asyncio.sleep(60)
        if report.queued:
            self.wake_worker()

    async def _work_job(self) -> None:
        self._work_running = True
        try:
            while not self._stopping:
                self._work_again = False
                if await self.pipeline.run_once() == 0 and not self._work_again:
                    return
        finally:
            self._work_running = False

    async def _housekeeping_job(self) -> None:
        await self._check_provider(startup=False)
        if self.pipeline.options.chain_clock_check and not self.dry_run:
            try:  # keeps /healthz's chain_clock reason current when nothing is being ordered
                await self.pipeline.check_chain_clock()
            except ChainError as exc:
                log.warning("head block unreadable for the clock check", error=str(exc)[:200])
        try:
            snapshot = await asyncio.to_thread(
                self.metrics.refresh_from_ledger,
                self.ledger,
                stuck_after_seconds=self.settings.pipeline.stuck_alert_seconds,
                now=self.now(),
            )
        except OperationalError as exc:
            log.warning("metrics not refreshed: database unreachable", error=_first_line(exc))
            snapshot = None
        except Exception:
            log.exception("metrics refresh failed")
            snapshot = None
        if snapshot is not None:
            self.pipeline.ordering_paused_reason = snapshot.stats.ordering_paused
        if snapshot is not None and snapshot.stuck.count:
            log.error(
                "ALERT: sweeps stuck: open longer than pipeline.stuck_alert_seconds since first claimed",
                sweeps=snapshot.stuck.count,
                longer_than_seconds=self.settings.pipeline.stuck_alert_seconds,
                by_state=snapshot.stuck.by_state,
                oldest=[f"#{s.id} {s.state} since {s.since.isoformat()}" for s in snapshot.stuck.oldest],
            )

    def _update_live_metrics(self) -> None:
        self.metrics.count_up_to(self.metrics.node_errors, self.chain.requests_failed)
        self.metrics.count_up_to(self.metrics.provider_errors, self.provider.requests_failed)
        self.metrics.daily_cap_sun.set(self.settings.safety.max_daily_spend_sun)  # follows SIGHUP
        if self.last_scan_completed is not None:
            self.metrics.set_detection_lag(self.last_scan_completed, self.now())
        if self.follower is not None:
            status = self.follower.status
            following = status.following
            self.metrics.set_follow(
                status.next_block if following else None,
                status.solid_head,
                status.lag_blocks if following else None,
                status.lag_seconds if following else None,
            )

    async def _check_clock(self) -> None:
        """Warn when our clock and the chain's disagree: transfers are stamped with our clock and
        live 60 s, so a skew near that makes the node refuse them as expired (run NTP)."""
        try:
            head = await self.chain.latest_block()
        except ChainError as exc:
            log.warning("TRON node unreachable at start-up; detection retries", error=str(exc))
            return
        # A head block is up to one block interval (3 s) old, so only a larger gap means skew.
        for whose, now in (("this host's", utcnow()), ("the ledger database's", self.ledger.now())):
            skew = (now.timestamp() * 1000 - head.timestamp_ms) / 1000
            if abs(skew) > CLOCK_SKEW_WARN_SECONDS:
                log.error(
                    f"ALERT: {whose} clock and the TRON chain's disagree (run NTP); energy ordering "
                    "waits while the host's is more than 30 s off",
                    skew_seconds=round(skew, 1),
                    head_block=head.number,
                )

    async def _check_provider(self, *, startup: bool) -> None:
        try:
            data = await self.provider.index_data()
        except ProviderAuthError as exc:
            self.provider_status = ProviderStatus(False, None, self.now(), "API key refused (see the log)")
            if startup:
                raise StartupError(
                    f"the provider refused our API key ({exc}); check provider.api_key_env "
                    f"(${self.settings.provider.api_key_env})"
                ) from None
            log.error("ALERT: the provider refused our API key", error=str(exc))
            return
        except ProviderError as exc:
            self.provider_status = ProviderStatus(False, None, self.now(), "unreachable (see the log)")
            log.warning("provider unreachable", error=str(exc), startup=startup)
            return
        balance = data.balance_sun
        self.provider_status = ProviderStatus(True, balance, self.now(), None)
        if balance is not None:
            self.metrics.provider_balance_sun.set(balance)
        if startup:
            log.info("provider account", balance_trx=None if balance is None else balance / 1_000_000)

    # --- callbacks, health, reload ----------------------------------------------------------

    def _verify(
        self, headers: Mapping[str, str], body: bytes, *, alternative_forms: bool
    ) -> ProviderCallback | CallbackRejected:
        return self.provider.verify_callback(
            headers,
            body,
            max_age_seconds=self.settings.callback.max_age_seconds,
            alternative_forms=alternative_forms,
        )

    async def _on_hint(self, callback: ProviderCallback) -> int | None:
        """A verified callback makes its sweep due now; the worker re-queries the provider."""
        sweep_id: int | None = None
        if self.dry_run:  # a dry run changes no sweep, not even its due time
            log.info("dry run: provider callback received", serial=callback.serial)
            return None
        try:
            if callback.out_trade_no:
                sweep_id = await asyncio.to_thread(self.ledger.hint, out_trade_no=callback.out_trade_no)
            if sweep_id is None and callback.serial:
                sweep_id = await asyncio.to_thread(self.ledger.hint, serial=callback.serial)
        except OperationalError as exc:
            raise LedgerUnavailable(f"database unreachable: {_first_line(exc)}") from None
        log.info(
            "provider callback", serial=callback.serial, out_trade_no=callback.out_trade_no, sweep_id=sweep_id
        )
        if sweep_id is not None:
            self.wake_worker()
        return sweep_id

    def wake_worker(self) -> None:
        if self._work_running:  # the run in flight takes one more turn instead of a second run
            self._work_again = True
            return
        job = self.scheduler.get_job("work") if self.scheduler.running else None
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    async def health(self) -> HealthReport:
        checks: dict[str, str] = {}
        ok = True
        try:
            await asyncio.to_thread(self._ping_db)
            checks["database"] = "ok"
        except Exception as exc:
            ok = False
            checks["database"] = f"unreachable: {type(exc).__name__}"
        limit = timedelta(seconds=3 * self.settings.schedule.scan_interval_seconds + 60)
        if self.last_scan_completed is None:
            # Reasons only, no error texts: /healthz answers anyone who can reach it (details: the log).
            checks["detection"] = "no pass completed yet" + (
                " (the last attempt failed; see the log)" if self.last_scan_error else ""
            )
            if self.started_at is not None and self.now() - self.started_at > limit:
                ok = False
        else:
            age = self.now() - self.last_scan_completed
            checks["detection"] = f"last pass {int(age.total_seconds())} s ago"
            if age > limit:
                ok = False
        if self.follower is not None:
            follow = self.follower.status
            lag = follow.lag_seconds
            if follow.refused is not None:
                ok = False
                checks["following"] = "refused: the node keeps no transaction infos (see the log)"
            elif not follow.following:
                checks["following"] = "another daemon follows (or none yet)"
            elif lag is not None and lag > self.settings.detect.max_lag_seconds:
                ok = False
                checks["following"] = f"{follow.lag_blocks} blocks behind the solid head (~{int(lag)} s)"
            else:
                checks["following"] = (
                    f"{follow.lag_blocks if follow.lag_blocks is not None else '?'} blocks behind"
                )
        if self.pipeline.chain_clock_problem is not None:
            ok = False
            checks["chain_clock"] = (
                "the node's head block and this host's clock disagree (a wrong host clock, or a stalled "
                "node): nothing is ordered"
            )
        if self.pipeline.ordering_paused_reason is not None:
            # Money is at stake: a human must look (`sweeper ordering resume` lifts it).
            ok = False
            checks["ordering"] = "paused after an order cost more than safety.max_cost_per_sweep_trx"
        status = self.provider_status
        if status.reachable:
            checks["provider"] = "ok"
        else:
            ok = False
            checks["provider"] = status.error or "not checked yet"
        return HealthReport(ok=ok, checks=checks)

    async def _database_answers(self) -> bool:
        try:
            await asyncio.to_thread(self._ping_db)
        except Exception:
            return False
        return True

    def _ping_db(self) -> None:
        with self.ledger.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    async def reload(self) -> None:
        """SIGHUP: new thresholds, address list, pipeline and safety options, keys; the rest needs a
        restart. Everything is built and checked before anything is swapped in: a reload either
        applies whole or is refused with the running config kept."""
        async with self._reload_lock:
            try:
                fresh = await asyncio.to_thread(self._reload_settings)
                merged = replace(
                    self.settings,
                    tokens=fresh.tokens,
                    addresses=fresh.addresses,
                    pipeline=fresh.pipeline,
                    safety=fresh.safety,
                    keys=fresh.keys,
                )
                problems = await asyncio.to_thread(watched_address_problems, merged)
                if problems:
                    raise ConfigError(problems)
                options = PipelineOptions.from_settings(merged)
                keys = Keys.from_settings(merged, self.ledger)
                added = await asyncio.to_thread(sync_addresses, merged, self.ledger)
            except ConfigError as exc:
                log.error(
                    "reload refused: the config has problems; keeping the running one", problems=exc.problems
                )
                return
            except Exception as exc:
                log.error("reload refused; keeping the running config", error=f"{type(exc).__name__}: {exc}")
                return
            before = {t.asset_key: t.min_sweep_base_units for t in self.settings.tokens}
            self.settings = merged
            configure_logging(secrets=merged.secret_values())
            self.scanner.tokens = merged.tokens
            self._reconcile_scanner.tokens = merged.tokens
            if self.follower is not None:
                self.follower.tokens = tuple(merged.tokens)
                # Following only sees new deposits: balances already below the old threshold and at
                # or above a lowered one (or of a new token) are found by a poll pass, run now.
                if any(
                    t.min_sweep_base_units < before.get(t.asset_key, t.min_sweep_base_units + 1)
                    for t in merged.tokens
                ):
                    poll = asyncio.create_task(
                        self._job(self._poll_after_reload)(), name="sweeper-reload-poll"
                    )
                    self._background.add(poll)
                    poll.add_done_callback(self._background.discard)
            self.pipeline.options = options
            self.pipeline.keys = keys
            log.info(
                "config reloaded",
                tokens={t.symbol: str(t.min_sweep) for t in merged.tokens},
                addresses_added=added,
            )

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self.reload(), name="sweeper-reload")
        self._background.add(task)  # keep a reference until it is done
        task.add_done_callback(self._background.discard)


async def run_daemon(settings: Settings, ledger: Ledger, *, dry_run: bool = False) -> int:
    daemon = Daemon(settings, ledger, dry_run=dry_run)
    return await daemon.run()


def _first_line(exc: OperationalError) -> str:
    """The driver's message without SQLAlchemy's statement and parameters (short, one line)."""
    text_ = str(exc.orig) if exc.orig is not None else type(exc).__name__
    return (text_.strip().splitlines() or [type(exc).__name__])[0][:300]
