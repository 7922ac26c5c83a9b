"""`sweeper status`: one answer to "is everything fine?", from the daemon when it is reachable and
from the ledger always.

The daemon: its `/healthz` (up, and each check's reason) and `/metrics` (provider balance, detection
and follow lag) on `[metrics] listen`, else `[callback] listen`, asked with a short timeout. When it
does not answer, "up" is judged from the ledger alone (`up` null, with the last activity). The
ledger: sweeps by state with the oldest age per state, today's spend against the cap, held
addresses, the last error of each failing sweep, the follow cursor. `problems` lists, in words,
everything an operator should look at; empty means fine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx

from sweeper.config import Settings, parse_host_port
from sweeper.domain import OPEN_STATES, SweepState, format_units
from sweeper.ledger import Ledger
from sweeper.ledger.queries import (
    failing_sweeps,
    last_activity,
    last_completed_scan,
    last_provider_balance,
    oldest_by_state,
    stuck_sweeps,
)
from sweeper.render import iso as _iso

HTTP_TIMEOUT_SECONDS = 2.0
SPEND_WARN_FRACTION = 0.8  # the same line as the "spend near the cap" alert


@dataclass(frozen=True)
class DaemonAnswer:
    reachable: bool
    url: str
    healthz: dict[str, Any] | None = None  # {"status", "checks"}
    metrics: dict[str, float] | None = None  # sample name (with labels) -> value
    error: str | None = None


def daemon_url(settings: Settings) -> str:
    """Where `/healthz` and `/metrics` are served: `[metrics] listen`, else `[callback] listen`."""
    listen = settings.metrics.listen or settings.callback.listen
    host, port = parse_host_port(listen)
    if host in ("0.0.0.0", ""):  # noqa: S104 - a wildcard listener is reached on loopback
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "::1"
    if ":" in host:
        host = f"[{host.strip('[]')}]"
    return f"http://{host}:{port}"


def ask_daemon(settings: Settings, *, timeout: float = HTTP_TIMEOUT_SECONDS) -> DaemonAnswer:
    url = daemon_url(settings)
    try:
        with httpx.Client(timeout=timeout) as client:
            health = client.get(f"{url}/healthz")
            document = health.json() if health.status_code in (200, 503) else None
            if not isinstance(document, dict):
                return DaemonAnswer(False, url, error=f"/healthz answered HTTP {health.status_code}")
            scraped = client.get(f"{url}/metrics")
            metrics = _parse_metrics(scraped.text) if scraped.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        return DaemonAnswer(False, url, error=type(exc).__name__)
    return DaemonAnswer(True, url, healthz=document, metrics=metrics)


def _parse_metrics(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = float(sample.value)
    return samples


def _seconds(now: datetime, then: datetime | None) -> int | None:
    return None if then is None else max(0, int((now - then).total_seconds()))


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


def gather(settings: Settings, ledger: Ledger, daemon: DaemonAnswer) -> dict[str, Any]:
    """The status document (docs/operator-contract.md, "JSON output", `status`)."""
    now = ledger.now()
    engine = ledger.engine
    stats = ledger.stats()
    problems: list[str] = []

    # --- the daemon ---
    activity = last_activity(engine)
    if daemon.reachable and daemon.healthz is not None:
        checks = daemon.healthz.get("checks") or {}
        up: bool | None = True
        healthy = daemon.healthz.get("status") == "ok"
        if not healthy:  # the checks are findings in words; which one failed, /healthz does not say
            problems.append(
                "/healthz unhealthy: " + "; ".join(f"{k}: {v}" for k, v in sorted(checks.items()))
            )
    else:
        up, healthy, checks = None, None, None
        problems.append(
            f"the daemon does not answer at {daemon.url} ({daemon.error}): judged from the ledger only"
        )
    metrics = daemon.metrics or {}

    # --- detection ---
    completed = last_completed_scan(engine)
    follow_lag_blocks = _finite(metrics.get("sweeper_follow_lag_blocks"))
    follow_lag_seconds = _finite(metrics.get("sweeper_follow_lag_seconds"))
    detection = {
        "mode": settings.detect.mode.value,
        "last_poll_pass_completed_at": _iso(completed),
        "poll_pass_age_seconds": _seconds(now, completed),
        "follow_next_block": stats.follow_next_block,
        "follow_advanced_at": _iso(stats.follow_advanced_at),
        "follow_advanced_age_seconds": _seconds(now, stats.follow_advanced_at),
        "follow_lag_blocks": None if follow_lag_blocks is None else int(follow_lag_blocks),
        "follow_lag_seconds": None if follow_lag_seconds is None else int(follow_lag_seconds),
    }
    if settings.detect.mode.follows:
        if follow_lag_seconds is not None and follow_lag_seconds > settings.detect.max_lag_seconds:
            problems.append(f"following is {int(follow_lag_seconds)} s behind the solid head")
    elif (
        completed is None
        or (now - completed).total_seconds() > 3 * settings.schedule.scan_interval_seconds + 60
    ):
        problems.append("no detection pass completed recently")

    # --- sweeps ---
    oldest = oldest_by_state(engine)
    by_state = {
        state.value: {
            "count": stats.by_state.get(state.value, 0),
            "oldest_age_seconds": _seconds(now, oldest.get(state.value)) if state in OPEN_STATES else None,
        }
        for state in SweepState
    }
    stuck = stuck_sweeps(
        engine, entered_before=now - timedelta(seconds=settings.pipeline.stuck_alert_seconds)
    )
    if stuck.count:
        problems.append(
            f"{stuck.count} sweep(s) open longer than {settings.pipeline.stuck_alert_seconds} s "
            f"(oldest: {', '.join(str(s.id) for s in stuck.oldest[:5])})"
        )
    failing = failing_sweeps(engine)
    if failing:
        problems.append(f"{len(failing)} open sweep(s) failing a step (see `failing`)")

    # --- money ---
    cap_sun = settings.safety.max_daily_spend_sun
    spend = {
        "today_sun": stats.spent_today_sun,
        "today_trx": format_units(stats.spent_today_sun, 6),
        "cap_sun": cap_sun,
        "cap_trx": format_units(cap_sun, 6),
        "used_percent": round(100 * stats.spent_today_sun / cap_sun, 1) if cap_sun else None,
    }
    if cap_sun and stats.spent_today_sun >= SPEND_WARN_FRACTION * cap_sun:
        problems.append(f"today's spend is {spend['used_percent']} % of the daily cap")
    if stats.ordering_paused:
        problems.append(f"energy ordering is paused: {stats.ordering_paused} (`sweeper ordering resume`)")
    balance = _finite(metrics.get("sweeper_provider_balance_sun"))
    recorded = last_provider_balance(engine)
    balance_sun = int(balance) if balance is not None else (recorded[0] if recorded is not None else None)
    provider = {
        "balance_sun": balance_sun,
        "balance_trx": format_units(balance_sun, 6),
        "source": "daemon" if balance is not None else ("last order" if recorded else None),
        "last_order_at": None if recorded is None else _iso(recorded[1]),
    }
    if balance_sun is not None and balance_sun < settings.safety.max_cost_per_sweep_sun:
        problems.append(f"provider balance {provider['balance_trx']} TRX is below one sweep's cap")

    held = [
        {
            "address": h.address,
            "token": h.token,
            "sweep_id": h.sweep_id,
            "reason": h.reason,
            "since": _iso(h.held_at),
        }
        for h in ledger.holds()
    ]
    if held:
        problems.append(
            f"{len(held)} address(es) held after a failure that cost money (`sweeper addresses list`)"
        )

    return {
        "ok": not problems,
        "problems": problems,
        "at": _iso(now),
        "daemon": {
            "up": up,
            "healthy": healthy,
            "url": daemon.url,
            "checks": checks,
            "last_ledger_activity_at": _iso(activity),
            "last_ledger_activity_age_seconds": _seconds(now, activity),
        },
        "detection": detection,
        "sweeps": by_state,
        "stuck": stuck.count,
        "spend": spend,
        "ordering_paused": stats.ordering_paused,
        "provider": provider,
        "held": held,
        "failing": [
            {
                "sweep_id": f.id,
                "address": f.address,
                "token": f.token,
                "state": f.state,
                "attempts": f.attempts,
                "send_attempts": f.send_attempts,
                "last_error": f.last_error,
                "since": _iso(f.updated_at),
            }
            for f in failing
        ],
    }
