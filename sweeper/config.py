"""TOML config -> frozen, validated settings (contract.md, "Config keys").

Every problem is reported as `<file>: <key>: <problem>`, all of them at once, and the CLI exits 2.
Secrets never live in the file: it names environment variables (or a keyfile) that hold them, and
their values are wrapped in `Secret` so they cannot leak through a repr or a log line.
"""

from __future__ import annotations

import difflib
import itertools
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sweeper.domain import (
    InvalidAddress,
    InvalidAmount,
    Secret,
    check_tron_address,
    parse_decimal,
    to_base_units,
)
from sweeper.errors import ConfigError

DEFAULT_CONFIG_PATH = "sweeper.toml"
SUN_PER_TRX = 1_000_000
MAX_HD_ADDRESSES = 10_000_000


# --- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseSettings:
    url: str


@dataclass(frozen=True)
class TronSettings:
    node_url: str
    api_key_env: str | None
    requests_per_second: float
    api_key: Secret | None = None


@dataclass(frozen=True)
class ProviderSettings:
    base_url: str
    api_key_env: str
    api_secret_env: str
    scene: int
    callback_url: str
    api_key: Secret | None = None
    api_secret: Secret | None = None


@dataclass(frozen=True)
class CallbackSettings:
    listen: str
    host: str
    port: int
    max_age_seconds: int


@dataclass(frozen=True)
class KeysSettings:
    source: str  # "mnemonic" | "keyfile"
    mnemonic_env: str
    keyfile: Path | None
    mnemonic: Secret | None = None
    keyfile_keys: Mapping[str, Secret] | None = None


@dataclass(frozen=True)
class AddressesSettings:
    hd_indexes: tuple[range, ...]
    file: Path | None
    file_addresses: tuple[str, ...] = ()

    def hd_index_count(self) -> int:
        return sum(len(r) for r in self.hd_indexes)


@dataclass(frozen=True)
class WalletSettings:
    destination: str


@dataclass(frozen=True)
class ScheduleSettings:
    scan_interval_seconds: int
    work_interval_seconds: int


@dataclass(frozen=True)
class DetectSettings:
    mode: str
    reconcile_interval_seconds: int


@dataclass(frozen=True)
class PipelineSettings:
    concurrency: int
    max_attempts: int
    order_timeout_seconds: int
    energy_ready_timeout_seconds: int
    stuck_alert_seconds: int
    lease_seconds: int


@dataclass(frozen=True)
class SafetySettings:
    max_daily_spend_trx: Decimal
    max_cost_per_sweep_trx: Decimal
    # The fee_limit of a sweep transfer (measured energy × getEnergyFee + margin) never exceeds this:
    # it bounds the TRX a transfer could burn from the deposit address if the energy were gone.
    max_fee_limit_trx: Decimal = Decimal("30")

    @property
    def max_fee_limit_sun(self) -> int:
        return to_base_units(self.max_fee_limit_trx, 6)

    @property
    def max_daily_spend_sun(self) -> int:
        return to_base_units(self.max_daily_spend_trx, 6)

    @property
    def max_cost_per_sweep_sun(self) -> int:
        return to_base_units(self.max_cost_per_sweep_trx, 6)


@dataclass(frozen=True)
class TokenSettings:
    symbol: str
    contract: str
    decimals: int
    min_sweep: Decimal

    @property
    def min_sweep_base_units(self) -> int:
        return to_base_units(self.min_sweep, self.decimals)


@dataclass(frozen=True)
class Settings:
    path: Path
    database: DatabaseSettings
    tron: TronSettings
    provider: ProviderSettings
    callback: CallbackSettings
    keys: KeysSettings
    addresses: AddressesSettings
    wallet: WalletSettings
    schedule: ScheduleSettings
    detect: DetectSettings
    pipeline: PipelineSettings
    safety: SafetySettings
    tokens: tuple[TokenSettings, ...]
    secrets_loaded: bool = field(default=False)

    def token(self, symbol: str) -> TokenSettings:
        for token in self.tokens:
            if token.symbol == symbol:
                return token
        raise KeyError(symbol)

    def secret_values(self) -> list[str]:
        """Every secret value in force, for the log processor that masks them."""
        found = [self.tron.api_key, self.provider.api_key, self.provider.api_secret, self.keys.mnemonic]
        values = [s.reveal() for s in found if s]
        if self.keys.keyfile_keys:
            values.extend(k.reveal() for k in self.keys.keyfile_keys.values())
        return values

    def to_public_dict(self) -> dict[str, Any]:
        """The effective config as TOML-shaped data, secrets masked (`sweeper config check`)."""

        def mask(secret: Secret | None, env: str | None) -> str:
            if not env:
                return "(not configured)"
            if not self.secrets_loaded:
                return f"(from ${env}, not read)"
            return f"*** (from ${env})" if secret else f"(${env} not set)"

        return {
            "database": {"url": _mask_url_password(self.database.url)},
            "tron": {
                "node_url": self.tron.node_url,
                "api_key_env": self.tron.api_key_env or "",
                "api_key": mask(self.tron.api_key, self.tron.api_key_env),
                "requests_per_second": self.tron.requests_per_second,
            },
            "provider": {
                "base_url": self.provider.base_url,
                "api_key_env": self.provider.api_key_env,
                "api_key": mask(self.provider.api_key, self.provider.api_key_env),
                "api_secret_env": self.provider.api_secret_env,
                "api_secret": mask(self.provider.api_secret, self.provider.api_secret_env),
                "scene": self.provider.scene,
                "callback_url": self.provider.callback_url,
            },
            "callback": {"listen": self.callback.listen, "max_age_seconds": self.callback.max_age_seconds},
            "keys": {
                "source": self.keys.source,
                "mnemonic_env": self.keys.mnemonic_env,
                "mnemonic": mask(self.keys.mnemonic, self.keys.mnemonic_env)
                if self.keys.source == "mnemonic"
                else "(not used)",
                "keyfile": str(self.keys.keyfile) if self.keys.keyfile else "",
                "keyfile_addresses": len(self.keys.keyfile_keys or {}),
            },
            "addresses": {
                "hd_indexes": ",".join(_format_range(r) for r in self.addresses.hd_indexes),
                "hd_index_count": self.addresses.hd_index_count(),
                "file": str(self.addresses.file) if self.addresses.file else "",
                "file_addresses": len(self.addresses.file_addresses),
            },
            "wallet": {"destination": self.wallet.destination},
            "schedule": {
                "scan_interval_seconds": self.schedule.scan_interval_seconds,
                "work_interval_seconds": self.schedule.work_interval_seconds,
            },
            "detect": {
                "mode": self.detect.mode,
                "reconcile_interval_seconds": self.detect.reconcile_interval_seconds,
            },
            "pipeline": {
                "concurrency": self.pipeline.concurrency,
                "max_attempts": self.pipeline.max_attempts,
                "order_timeout_seconds": self.pipeline.order_timeout_seconds,
                "energy_ready_timeout_seconds": self.pipeline.energy_ready_timeout_seconds,
                "stuck_alert_seconds": self.pipeline.stuck_alert_seconds,
                "lease_seconds": self.pipeline.lease_seconds,
            },
            "safety": {
                "max_daily_spend_trx": str(self.safety.max_daily_spend_trx),
                "max_cost_per_sweep_trx": str(self.safety.max_cost_per_sweep_trx),
                "max_fee_limit_trx": str(self.safety.max_fee_limit_trx),
            },
            "tokens": [
                {
                    "symbol": t.symbol,
                    "contract": t.contract,
                    "decimals": t.decimals,
                    "min_sweep": str(t.min_sweep),
                }
                for t in self.tokens
            ],
        }


def _mask_url_password(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@", 1)
    return url


def _format_range(r: range) -> str:
    return str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}"


# --- the schema --------------------------------------------------------------------------------

# Tables and their keys, in contract.md's order; the value says which check applies.
_SCHEMA: dict[str, dict[str, str]] = {
    "database": {"url": "db_url"},
    "tron": {"node_url": "http_url", "api_key_env": "env_name_optional", "requests_per_second": "pos_number"},
    "provider": {
        "base_url": "http_url",
        "api_key_env": "env_name",
        "api_secret_env": "env_name",
        "scene": "nonneg_int",
        "callback_url": "http_url_or_empty",
    },
    "callback": {"listen": "host_port", "max_age_seconds": "pos_int"},
    "keys": {"source": "key_source", "mnemonic_env": "env_name", "keyfile": "path"},
    "addresses": {"hd_indexes": "hd_indexes", "file": "path"},
    "wallet": {"destination": "address"},
    "schedule": {"scan_interval_seconds": "pos_int", "work_interval_seconds": "pos_int"},
    "detect": {"mode": "detect_mode", "reconcile_interval_seconds": "pos_int"},
    "pipeline": {
        "concurrency": "pos_int",
        "max_attempts": "pos_int",
        "order_timeout_seconds": "pos_int",
        "energy_ready_timeout_seconds": "pos_int",
        "stuck_alert_seconds": "pos_int",
        "lease_seconds": "pos_int",
    },
    "safety": {
        "max_daily_spend_trx": "pos_decimal",
        "max_cost_per_sweep_trx": "pos_decimal",
        "max_fee_limit_trx": "pos_decimal",
    },
}
_TOKEN_KEYS = {"symbol": "symbol", "contract": "address", "decimals": "decimals", "min_sweep": "pos_decimal"}

_DEFAULTS: dict[str, dict[str, Any]] = {
    "database": {"url": "sqlite:///sweeper.db"},
    "tron": {"node_url": "https://api.trongrid.io", "api_key_env": "", "requests_per_second": 10},
    "provider": {
        "base_url": "https://itrx.io",
        "api_key_env": "SWEEPER_PROVIDER_API_KEY",
        "api_secret_env": "SWEEPER_PROVIDER_API_SECRET",
        "scene": 0,
        "callback_url": "",
    },
    "callback": {"listen": "127.0.0.1:8088", "max_age_seconds": 3600},
    "keys": {"source": "mnemonic", "mnemonic_env": "SWEEPER_MNEMONIC", "keyfile": ""},
    "addresses": {"hd_indexes": "", "file": ""},
    "wallet": {},  # destination is required
    "schedule": {"scan_interval_seconds": 300, "work_interval_seconds": 5},
    "detect": {"mode": "poll", "reconcile_interval_seconds": 86400},
    "pipeline": {
        "concurrency": 16,
        "max_attempts": 5,
        "order_timeout_seconds": 900,
        "energy_ready_timeout_seconds": 600,
        "stuck_alert_seconds": 1800,
        "lease_seconds": 60,
    },
    "safety": {"max_daily_spend_trx": "500", "max_cost_per_sweep_trx": "10", "max_fee_limit_trx": "30"},
}


class _Problems:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.items: list[str] = []

    def add(self, key: str, problem: str) -> None:
        self.items.append(f"{self.file}: {key}: {problem}")


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(value: object) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


def parse_hd_indexes(text: str) -> tuple[range, ...]:
    """'0-999' or '0-9,20,30-39' -> ranges; raises ValueError saying what is wrong."""
    if text.strip() == "":
        return ()
    ranges: list[range] = []
    for part in text.split(","):
        part = part.strip()
        lo_text, sep, hi_text = part.partition("-")
        if not lo_text.strip().isdigit() or (sep and not hi_text.strip().isdigit()):
            raise ValueError(f'{part!r} is not N or N-M with non-negative integers (e.g. "0-999")')
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
        if hi < lo:
            raise ValueError(f"{part!r} is reversed: the range must go from low to high")
        if hi >= 2**31:
            raise ValueError(f"{part!r} exceeds the BIP32 non-hardened index limit 2^31-1")
        ranges.append(range(lo, hi + 1))
    ranges.sort(key=lambda r: r.start)
    for before, after in itertools.pairwise(ranges):
        if after.start < before.stop:
            raise ValueError(f"ranges {_format_range(before)} and {_format_range(after)} overlap")
    if sum(len(r) for r in ranges) > MAX_HD_ADDRESSES:
        raise ValueError(f"more than {MAX_HD_ADDRESSES} indexes")
    return tuple(ranges)


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f'{text!r} is not host:port (e.g. "127.0.0.1:8088")')
    return host.strip("[]"), int(port_text)


def _check(kind: str, value: Any, key: str, problems: _Problems) -> Any:
    """Validate one value by its kind; return the typed value, or None after recording a problem."""

    def bad(problem: str) -> None:
        problems.add(key, problem)

    str_kinds = {
        "db_url", "http_url", "http_url_or_empty", "env_name", "env_name_optional", "host_port",
        "key_source", "path", "hd_indexes", "address", "detect_mode", "symbol",
    }  # fmt: skip
    if kind in str_kinds and not isinstance(value, str):
        return bad(f"expected a string, got {_type_name(value)}")
    if kind in {"pos_int", "nonneg_int", "decimals"} and (
        isinstance(value, bool) or not isinstance(value, int)
    ):
        return bad(f"expected an integer, got {_type_name(value)}")
    match kind:
        case "db_url":
            if not value.startswith(("sqlite:///", "postgresql")):
                return bad(f"{value!r} is not a sqlite:///PATH or postgresql+psycopg:// URL")
            return value
        case "http_url" | "http_url_or_empty":
            if value == "" and kind == "http_url_or_empty":
                return value
            parsed = urlparse(value)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                return bad(f"{value!r} is not an http(s) URL")
            return value.rstrip("/") if kind == "http_url" else value
        case "env_name" | "env_name_optional":
            if value == "" and kind == "env_name_optional":
                return None
            if not value.replace("_", "A").isalnum() or value[0].isdigit():
                return bad(f"{value!r} is not an environment variable name")
            return value
        case "pos_number":
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                return bad(f"expected a positive number, got {value!r}")
            return float(value)
        case "pos_int":
            return value if value > 0 else bad(f"expected a positive integer, got {value}")
        case "nonneg_int":
            return value if value >= 0 else bad(f"expected an integer >= 0, got {value}")
        case "decimals":
            return value if 0 <= value <= 36 else bad(f"expected 0..36, got {value}")
        case "pos_decimal":
            try:
                amount = parse_decimal(value)
            except InvalidAmount as exc:
                return bad(str(exc))
            return amount if amount > 0 else bad(f"must be a positive decimal, got {value!r}")
        case "host_port":
            try:
                parse_host_port(value)
            except ValueError as exc:
                return bad(str(exc))
            return value
        case "key_source":
            return (
                value
                if value in ("mnemonic", "keyfile")
                else bad(f'{value!r}: expected "mnemonic" or "keyfile"')
            )
        case "detect_mode":
            if value == "poll":
                return value
            if value in ("follow", "both"):
                return bad(f'{value!r} arrives with block following; this version supports "poll"')
            return bad(f'{value!r}: expected "poll"')
        case "path":
            return Path(value) if value else None
        case "hd_indexes":
            try:
                return parse_hd_indexes(value)
            except ValueError as exc:
                return bad(str(exc))
        case "address":
            try:
                return check_tron_address(value)
            except InvalidAddress as exc:
                return bad(f"not a TRON address: {exc}")
        case "symbol":
            if not value or not value.replace("_", "").isalnum() or len(value) > 16:
                return bad(f"{value!r} is not a token symbol (letters and digits, up to 16)")
            return value
    raise AssertionError(f"unknown check {kind}")  # pragma: no cover


def read_address_file(path: Path, problems: _Problems, key: str) -> tuple[str, ...]:
    """One address per line; blank lines and '#' comments ignored."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(key, f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        return ()
    found: dict[str, None] = {}
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            found[check_tron_address(text.split(",", 1)[0].strip())] = None
        except InvalidAddress as exc:
            problems.add(key, f"{path}:{number}: {exc}")
    return tuple(found)


def load_settings(
    path: Path | str, *, environ: Mapping[str, str] | None = None, secrets: bool = True
) -> Settings:
    """Read, validate and type the config at `path`.

    With `secrets=True`, every secret the file names must be present (environment variables,
    keyfile) and is loaded; commands that only read the ledger pass False.
    """
    path = Path(path)
    env = os.environ if environ is None else environ
    problems = _Problems(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found (use --config PATH or $SWEEPER_CONFIG)"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: malformed TOML: {exc}"]) from None

    values: dict[str, dict[str, Any]] = {}
    for table, keys in _SCHEMA.items():
        given = raw.get(table, {})
        if not isinstance(given, dict):
            problems.add(table, f"expected a table [{table}], got {_type_name(given)}")
            given = {}
        merged = dict(_DEFAULTS[table])
        for key, value in given.items():
            if key not in keys:
                problems.add(f"{table}.{key}", f"unknown key{_suggest(key, list(keys))}")
                continue
            merged[key] = value
        values[table] = {}
        for key, kind in keys.items():
            if key not in merged:
                problems.add(f"{table}.{key}", "required key is missing")
                values[table][key] = None
                continue
            values[table][key] = _check(kind, merged[key], f"{table}.{key}", problems)
    for table in raw:
        if table not in _SCHEMA and table != "tokens":
            problems.add(table, f"unknown table{_suggest(table, [*_SCHEMA, 'tokens'])}")

    tokens: list[TokenSettings] = []
    raw_tokens = raw.get("tokens")
    if raw_tokens is None:
        problems.add("tokens", "at least one [[tokens]] table is required")
    elif not isinstance(raw_tokens, list) or not all(isinstance(t, dict) for t in raw_tokens):
        problems.add("tokens", "expected an array of tables [[tokens]]")
    else:
        for i, item in enumerate(raw_tokens):
            prefix = f"tokens[{i}]"
            typed: dict[str, Any] = {}
            for key in item:
                if key not in _TOKEN_KEYS:
                    problems.add(f"{prefix}.{key}", f"unknown key{_suggest(key, list(_TOKEN_KEYS))}")
            for key, kind in _TOKEN_KEYS.items():
                if key not in item:
                    problems.add(f"{prefix}.{key}", "required key is missing")
                    typed[key] = None
                else:
                    typed[key] = _check(kind, item[key], f"{prefix}.{key}", problems)
            if None in typed.values():
                continue
            try:
                to_base_units(typed["min_sweep"], typed["decimals"])
            except InvalidAmount as exc:
                problems.add(f"{prefix}.min_sweep", str(exc))
                continue
            tokens.append(TokenSettings(**typed))
        symbols = [t.symbol for t in tokens]
        contracts = [t.contract for t in tokens]
        for i, token in enumerate(tokens):
            if symbols.index(token.symbol) != i:
                problems.add(f"tokens[{i}].symbol", f"{token.symbol!r} is configured twice")
            elif contracts.index(token.contract) != i:
                problems.add(f"tokens[{i}].contract", f"{token.contract} is configured twice")

    base = path.parent
    keys_v, addr_v = values["keys"], values["addresses"]
    keyfile = _relative(base, keys_v["keyfile"])
    address_file = _relative(base, addr_v["file"])
    if keys_v["source"] == "keyfile" and keyfile is None:
        problems.add("keys.keyfile", 'required when keys.source = "keyfile"')
    file_addresses = read_address_file(address_file, problems, "addresses.file") if address_file else ()
    if addr_v["hd_indexes"] and keys_v["source"] != "mnemonic":
        problems.add(
            "addresses.hd_indexes", 'needs keys.source = "mnemonic" (derived addresses need the words)'
        )
    destination = values["wallet"]["destination"]
    if destination and destination in file_addresses:
        problems.add("wallet.destination", f"{destination} is also a watched address in {address_file}")
    for token in tokens:
        if destination and token.contract == destination:
            problems.add("wallet.destination", f"{destination} is the contract of token {token.symbol}")

    # Secrets: named, never inline.
    secret_values: dict[str, Secret | None] = {}
    keyfile_keys: dict[str, Secret] | None = None
    if secrets:
        wanted = [
            ("tron.api_key_env", values["tron"]["api_key_env"]),
            ("provider.api_key_env", values["provider"]["api_key_env"]),
            ("provider.api_secret_env", values["provider"]["api_secret_env"]),
        ]
        if keys_v["source"] == "mnemonic":
            wanted.append(("keys.mnemonic_env", keys_v["mnemonic_env"]))
        for key, env_name in wanted:
            if not env_name:
                continue
            value = env.get(env_name, "")
            if not value.strip():
                problems.add(key, f"environment variable {env_name} is not set or empty")
            secret_values[key] = Secret(value.strip()) if value.strip() else None
        if keys_v["source"] == "keyfile" and keyfile is not None:
            from sweeper.errors import KeySourceError
            from sweeper.keys import load_keyfile  # keys imports domain only

            try:
                keyfile_keys = load_keyfile(keyfile)
            except KeySourceError as exc:
                problems.add("keys.keyfile", str(exc))
            else:
                if destination in keyfile_keys:
                    problems.add(
                        "wallet.destination", f"{destination} is also a watched address in {keyfile}"
                    )

    if problems.items:
        raise ConfigError(problems.items)

    listen_host, listen_port = parse_host_port(values["callback"]["listen"])
    return Settings(
        path=path,
        database=DatabaseSettings(url=_sqlite_relative(base, values["database"]["url"])),
        tron=TronSettings(**values["tron"], api_key=secret_values.get("tron.api_key_env")),
        provider=ProviderSettings(
            **values["provider"],
            api_key=secret_values.get("provider.api_key_env"),
            api_secret=secret_values.get("provider.api_secret_env"),
        ),
        callback=CallbackSettings(
            listen=values["callback"]["listen"],
            host=listen_host,
            port=listen_port,
            max_age_seconds=values["callback"]["max_age_seconds"],
        ),
        keys=KeysSettings(
            source=keys_v["source"],
            mnemonic_env=keys_v["mnemonic_env"],
            keyfile=keyfile,
            mnemonic=secret_values.get("keys.mnemonic_env"),
            keyfile_keys=keyfile_keys,
        ),
        addresses=AddressesSettings(
            hd_indexes=addr_v["hd_indexes"], file=address_file, file_addresses=file_addresses
        ),
        wallet=WalletSettings(destination=destination),
        schedule=ScheduleSettings(**values["schedule"]),
        detect=DetectSettings(**values["detect"]),
        pipeline=PipelineSettings(**values["pipeline"]),
        safety=SafetySettings(**values["safety"]),
        tokens=tuple(tokens),
        secrets_loaded=secrets,
    )


def _relative(base: Path, path: Path | None) -> Path | None:
    """Paths in the config are relative to the config file's folder."""
    if path is None:
        return None
    return path if path.is_absolute() else base / path


def _sqlite_relative(base: Path, url: str) -> str:
    """sqlite:///relative.db is taken relative to the config file, like every other path in it."""
    prefix = "sqlite:///"
    if (
        url.startswith(prefix)
        and not url.startswith(prefix + "/")
        and not url.startswith(prefix + ":memory:")
    ):
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url


def config_path_from(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(cli_value or env.get("SWEEPER_CONFIG") or DEFAULT_CONFIG_PATH)
