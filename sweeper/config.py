"""TOML config -> frozen, validated settings (contract.md, "Config keys").

Every problem is reported as `<file>: <key>: <problem>`, all of them at once, and the CLI exits 2.
Secrets never live in the file: it names them (`*_env` keys: a systemd credential or an environment
variable, see `read_named_secret`; or a keyfile), and their values are wrapped in `Secret` so they
cannot leak through a repr or a log line.

Each key is declared once, as a field of its table's dataclass below (`key(kind, default)`): the
schema, the defaults, the typed construction and `config check`'s output are all read from those
fields, in their order. Fields that are not keys (`secret(...)`, `derived(...)`) are filled in by
`load_settings`, which says how.
"""

# ruff: noqa: RUF009  (the field defaults below are key()/secret()/derived(): dataclasses.field calls)
from __future__ import annotations

import difflib
import itertools
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, get_type_hints
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
# `[[tokens]] symbol = "TRX"`: native TRX, 6 decimals (sun), no contract.
TRX_SYMBOL: Final = "TRX"
TRX_DECIMALS: Final = 6
MAX_HD_ADDRESSES = 10_000_000
# Set by systemd (247+) for a unit with LoadCredential=: the directory holding one file per credential.
CREDENTIALS_DIRECTORY: Final = "CREDENTIALS_DIRECTORY"


class KeySource(StrEnum):
    """`[keys] source`: where the deposit addresses' private keys come from."""

    MNEMONIC = "mnemonic"
    KEYFILE = "keyfile"


class DetectMode(StrEnum):
    """`[detect] mode`: how deposits are found."""

    POLL = "poll"  # balanceOf of every watched address, every scan_interval_seconds
    FOLLOW = "follow"  # every new solidified block's Transfer logs (one request per block)
    BOTH = "both"  # follow, plus a full poll pass every reconcile_interval_seconds (the safety net)

    @property
    def follows(self) -> bool:
        return self is not DetectMode.POLL


# --- declaring keys ----------------------------------------------------------------------------

Kind = str | type[StrEnum]  # a check in `_check`, or the enum of the values a key accepts
_REQUIRED: Final = object()  # the "default" of a key the file must give


def key(
    kind: Kind,
    default: Any = _REQUIRED,
    *,
    refused: Mapping[str, str] | None = None,
    show: Callable[[Any], dict[str, Any]] | None = None,
) -> Any:
    """A config key named as the field: its check, its default as the file would spell it (none =
    required; the default is checked like a value from the file), values it knows but refuses (value
    -> why), and how `config check` shows it (default: by its kind)."""
    metadata = {"kind": kind, "default": default, "refused": refused or {}}
    return field(metadata=metadata if show is None else {**metadata, "show": show})


def secret(env_key: str, *, used_if: tuple[str, object] | None = None) -> Any:
    """Not a key: the value of the secret that `env_key` names (`read_named_secret`), loaded by
    `load_settings(secrets=True)` (only when the field `used_if[0]` equals `used_if[1]`); masked."""
    return field(default=None, metadata={"secret_of": env_key, "used_if": used_if})


def derived(*, default: Any = MISSING, show: Callable[[Any], dict[str, Any]] | None = None) -> Any:
    """Not a key: computed from the keys by `load_settings`; `config check` shows `show(table)`."""
    return field(default=default, metadata={"show": show or (lambda _: {})})


# --- settings ----------------------------------------------------------------------------------
# One dataclass per table. Its keys are in contract.md's order and `config check` prints the fields
# in their order; kw_only lets a secret or a derived value sit next to the key it comes from.


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings:
    url: str = key("db_url", "sqlite:///sweeper.db")  # a relative SQLite path becomes absolute


@dataclass(frozen=True, kw_only=True)
class TronSettings:
    node_url: str = key("http_url", "https://api.trongrid.io")
    api_key_env: str | None = key("env_name_optional", "")
    api_key: Secret | None = secret("api_key_env")
    requests_per_second: float = key("pos_number", 10)


@dataclass(frozen=True, kw_only=True)
class ProviderSettings:
    base_url: str = key("http_url", "https://itrx.io")
    api_key_env: str = key("env_name", "SWEEPER_PROVIDER_API_KEY")
    api_key: Secret | None = secret("api_key_env")
    api_secret_env: str = key("env_name", "SWEEPER_PROVIDER_API_SECRET")
    api_secret: Secret | None = secret("api_secret_env")
    scene: int = key("nonneg_int", 0)
    callback_url: str = key("http_url_or_empty", "")


@dataclass(frozen=True, kw_only=True)
class CallbackSettings:
    listen: str = key("host_port", "127.0.0.1:8088")
    host: str = derived()  # from listen
    port: int = derived()  # from listen
    max_age_seconds: int = key("pos_int", 3600)
    # Failed verifications (401) allowed per second, all clients together; beyond it a callback is
    # checked over its raw body only (one HMAC, no parse) and a failure is answered 429.
    max_failed_per_second: float = key("pos_number", 10)


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    # "host:port" of a listener of its own for /metrics and /healthz (the callback listener then
    # serves /callback only); "" = both stay on [callback] listen.
    listen: str = key("host_port_or_empty", "")
    host: str | None = derived(default=None)  # from listen
    port: int | None = derived(default=None)  # from listen


@dataclass(frozen=True, kw_only=True)
class KeysSettings:
    source: KeySource = key(KeySource, "mnemonic")
    mnemonic_env: str = key("env_name", "SWEEPER_MNEMONIC")
    mnemonic: Secret | None = secret("mnemonic_env", used_if=("source", KeySource.MNEMONIC))
    keyfile: Path | None = key("path", "")  # relative to the config file
    keyfile_keys: Mapping[str, Secret] | None = derived(
        default=None, show=lambda t: {"keyfile_addresses": len(t.keyfile_keys or {})}
    )  # read from the keyfile (with secrets=True)


@dataclass(frozen=True, kw_only=True)
class AddressesSettings:
    hd_indexes: tuple[range, ...] = key(
        "hd_indexes",
        "",
        show=lambda t: {
            "hd_indexes": ",".join(_format_range(r) for r in t.hd_indexes),
            "hd_index_count": t.hd_index_count(),
        },
    )
    file: Path | None = key("path", "")  # relative to the config file
    file_addresses: tuple[str, ...] = derived(
        default=(), show=lambda t: {"file_addresses": len(t.file_addresses)}
    )  # read from the file

    def hd_index_count(self) -> int:
        return sum(len(r) for r in self.hd_indexes)


@dataclass(frozen=True, kw_only=True)
class WalletSettings:
    destination: str = key("address")


@dataclass(frozen=True, kw_only=True)
class ScheduleSettings:
    scan_interval_seconds: int = key("pos_int", 300)
    work_interval_seconds: int = key("pos_int", 5)


@dataclass(frozen=True, kw_only=True)
class DetectSettings:
    mode: DetectMode = key(DetectMode, "both")
    reconcile_interval_seconds: int = key("pos_int", 86400)
    # /healthz turns 503 when the follower is further than this behind the solid head.
    max_lag_seconds: int = key("pos_int", 120)
    # One daemon follows at a time (the others work sweeps): its lease runs this long unrenewed.
    lease_seconds: int = key("pos_int", 60)
    # Blocks read at once while catching up (under tron.requests_per_second).
    concurrency: int = key("pos_int", 8)


@dataclass(frozen=True, kw_only=True)
class PipelineSettings:
    concurrency: int = key("pos_int", 16)
    max_attempts: int = key("pos_int", 5)
    order_timeout_seconds: int = key("pos_int", 900)
    energy_ready_timeout_seconds: int = key("pos_int", 600)
    stuck_alert_seconds: int = key("pos_int", 1800)
    lease_seconds: int = key("pos_int", 60)


@dataclass(frozen=True, kw_only=True)
class SafetySettings:
    max_daily_spend_trx: Decimal = key("pos_decimal", "500")
    max_cost_per_sweep_trx: Decimal = key("pos_decimal", "10")
    # The fee_limit of a sweep transfer (measured energy × getEnergyFee + margin) never exceeds this:
    # it bounds the TRX a transfer could burn from the deposit address if the energy were gone.
    max_fee_limit_trx: Decimal = key("pos_decimal", "30")

    @property
    def max_fee_limit_sun(self) -> int:
        return to_base_units(self.max_fee_limit_trx, 6)

    @property
    def max_daily_spend_sun(self) -> int:
        return to_base_units(self.max_daily_spend_trx, 6)

    @property
    def max_cost_per_sweep_sun(self) -> int:
        return to_base_units(self.max_cost_per_sweep_trx, 6)


@dataclass(frozen=True, kw_only=True)
class TokenSettings:
    """One `[[tokens]]` table. `symbol = "TRX"` is native TRX (no `contract`, 6 decimals, swept with
    a plain TransferContract, no energy order); every other symbol is a TRC20 token and needs its
    `contract`."""

    symbol: str = key("symbol")
    contract: str | None = key("address_or_empty", "")
    decimals: int = key("decimals")
    min_sweep: Decimal = key("pos_decimal")

    @property
    def is_trx(self) -> bool:
        return self.contract is None

    @property
    def asset_key(self) -> str:
        """What detection keys the asset by: the token's contract, or "TRX"."""
        return self.contract if self.contract is not None else TRX_SYMBOL

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
    metrics: MetricsSettings
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
        found = [getattr(getattr(self, t), f.name) for t, f in _secret_fields()]
        values = [s.reveal() for s in found if s]
        if self.keys.keyfile_keys:
            values.extend(k.reveal() for k in self.keys.keyfile_keys.values())
        return values

    def to_public_dict(self) -> dict[str, Any]:
        """The effective config as TOML-shaped data, secrets masked (`sweeper config check`)."""
        document = {name: self._public(getattr(self, name)) for name in _TABLES}
        return {**document, "tokens": [self._public(t) for t in self.tokens]}

    def _public(self, table: Any) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        for f in fields(table):
            value, meta = getattr(table, f.name), f.metadata
            if "show" in meta:
                shown.update(meta["show"](table))
            elif "secret_of" in meta:
                env, used_if = getattr(table, meta["secret_of"]), meta["used_if"]
                if used_if is not None and getattr(table, used_if[0]) != used_if[1]:
                    shown[f.name] = "(not used)"
                elif not env:
                    shown[f.name] = "(not configured)"
                elif not self.secrets_loaded:
                    shown[f.name] = f"(from ${env}, not read)"
                else:
                    shown[f.name] = f"*** (from ${env})" if value else f"(${env} not set)"
            else:
                shown[f.name] = _show(meta["kind"], value)
        return shown


def _show(kind: Kind, value: Any) -> Any:
    """A key's typed value as `config check` prints it."""
    if isinstance(kind, type):
        return value.value  # an enum member: its plain string
    match kind:
        case "db_url":
            return _mask_url_password(value)
        case "env_name_optional" | "path":
            return str(value) if value else ""
        case "pos_decimal":
            return str(value)
    return value


def _mask_url_password(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@", 1)
    return url


def _format_range(r: range) -> str:
    return str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}"


# --- the schema, read from the dataclasses -----------------------------------------------------

# The tables (`[database]` … `[safety]`) in contract.md's order, by their field in Settings.
_TABLES: Final[dict[str, type]] = {
    name: hint
    for name, hint in get_type_hints(Settings).items()
    if isinstance(hint, type) and is_dataclass(hint)
}


def _keys(table: type) -> list[Field[Any]]:
    """The fields of a table that are config keys, in order."""
    return [f for f in fields(table) if "kind" in f.metadata]


def _secret_fields() -> list[tuple[str, Field[Any]]]:
    return [(t, f) for t, cls in _TABLES.items() for f in fields(cls) if "secret_of" in f.metadata]


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


def _check(kind: Kind, value: Any, key: str, problems: _Problems, refused: Mapping[str, str]) -> Any:
    """Validate one value by its kind; return the typed value, or None after recording a problem."""

    def bad(problem: str) -> None:
        problems.add(key, problem)

    str_kinds = {
        "db_url", "http_url", "http_url_or_empty", "env_name", "env_name_optional", "host_port",
        "host_port_or_empty", "path", "hd_indexes", "address", "address_or_empty", "symbol",
    }  # fmt: skip
    if (isinstance(kind, type) or kind in str_kinds) and not isinstance(value, str):
        return bad(f"expected a string, got {_type_name(value)}")
    if isinstance(value, str) and value in refused:
        return bad(f"{value!r} {refused[value]}")
    if isinstance(kind, type):  # an enum: one of its values
        try:
            return kind(value)
        except ValueError:
            names = [f'"{member}"' for member in kind]
            expected = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            return bad(f"{value!r}: expected {expected}")
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
        case "host_port" | "host_port_or_empty":
            if value == "" and kind == "host_port_or_empty":
                return value
            try:
                parse_host_port(value)
            except ValueError as exc:
                return bad(str(exc))
            return value
        case "path":
            return Path(value) if value else None
        case "hd_indexes":
            try:
                return parse_hd_indexes(value)
            except ValueError as exc:
                return bad(str(exc))
        case "address" | "address_or_empty":
            if value == "" and kind == "address_or_empty":
                return None
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


def _check_table(table: type, given: Mapping[str, Any], prefix: str, problems: _Problems) -> dict[str, Any]:
    """Every key of `table`: unknown keys, defaults, required keys, each value checked and typed
    (None for a value with a problem)."""
    keys = _keys(table)
    names = [f.name for f in keys]
    for name in given:
        if name not in names:
            problems.add(f"{prefix}.{name}", f"unknown key{_suggest(name, names)}")
    typed: dict[str, Any] = {}
    for f in keys:
        value = given.get(f.name, f.metadata["default"])
        if value is _REQUIRED:
            problems.add(f"{prefix}.{f.name}", "required key is missing")
            typed[f.name] = None
        else:
            kind, refused = f.metadata["kind"], f.metadata["refused"]
            typed[f.name] = _check(kind, value, f"{prefix}.{f.name}", problems, refused)
    return typed


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
    for table, cls in _TABLES.items():
        given = raw.get(table, {})
        if not isinstance(given, dict):
            problems.add(table, f"expected a table [{table}], got {_type_name(given)}")
            given = {}
        values[table] = _check_table(cls, given, table, problems)
    for table in raw:
        if table not in _TABLES and table != "tokens":
            problems.add(table, f"unknown table{_suggest(table, [*_TABLES, 'tokens'])}")

    tokens: list[TokenSettings] = []
    raw_tokens = raw.get("tokens")
    if raw_tokens is None:
        problems.add("tokens", "at least one [[tokens]] table is required")
    elif not isinstance(raw_tokens, list) or not all(isinstance(t, dict) for t in raw_tokens):
        problems.add("tokens", "expected an array of tables [[tokens]]")
    else:
        for i, item in enumerate(raw_tokens):
            typed = _check_table(TokenSettings, item, f"tokens[{i}]", problems)
            if typed["symbol"] == TRX_SYMBOL:
                if typed["contract"] is not None:
                    problems.add(f"tokens[{i}].contract", "TRX is native: remove `contract` from its table")
                    continue
                if typed["decimals"] is not None and typed["decimals"] != TRX_DECIMALS:
                    problems.add(f"tokens[{i}].decimals", f"TRX has {TRX_DECIMALS} decimals (sun)")
                    continue
            elif typed["contract"] is None:
                if item.get("contract", "") == "":  # else: not an address, reported already
                    problems.add(
                        f"tokens[{i}].contract", 'required key is missing (only symbol = "TRX" has none)'
                    )
                continue
            if any(v is None for k, v in typed.items() if k != "contract"):
                continue
            try:
                to_base_units(typed["min_sweep"], typed["decimals"])
            except InvalidAmount as exc:
                problems.add(f"tokens[{i}].min_sweep", str(exc))
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
    if keys_v["source"] == KeySource.KEYFILE and keyfile is None:
        problems.add("keys.keyfile", 'required when keys.source = "keyfile"')
    file_addresses = read_address_file(address_file, problems, "addresses.file") if address_file else ()
    if addr_v["hd_indexes"] and keys_v["source"] != KeySource.MNEMONIC:
        problems.add(
            "addresses.hd_indexes", 'needs keys.source = "mnemonic" (derived addresses need the words)'
        )
    destination = values["wallet"]["destination"]
    if destination and destination in file_addresses:
        problems.add("wallet.destination", f"{destination} is also a watched address in {address_file}")
    for token in tokens:
        if destination and token.contract is not None and token.contract == destination:
            problems.add("wallet.destination", f"{destination} is the contract of token {token.symbol}")
    metrics_listen, callback_listen = values["metrics"]["listen"], values["callback"]["listen"]
    both = bool(metrics_listen and callback_listen)  # set, and valid (an invalid one is None)
    if both and parse_host_port(metrics_listen) == parse_host_port(callback_listen):
        problems.add("metrics.listen", f"{metrics_listen!r} is also [callback] listen: give it its own port")

    # Secrets: named, never inline. Each `secret(...)` field, from the credential or the variable its
    # key names.
    loaded: dict[str, dict[str, Secret | None]] = {table: {} for table in _TABLES}
    keyfile_keys: dict[str, Secret] | None = None
    if secrets:
        for table, f in _secret_fields():
            env_key, used_if = f.metadata["secret_of"], f.metadata["used_if"]
            env_name = values[table][env_key]
            if not env_name or (used_if is not None and values[table][used_if[0]] != used_if[1]):
                continue
            try:
                value = read_named_secret(env_name, env)
            except ValueError as exc:
                problems.add(f"{table}.{env_key}", str(exc))
                value = ""
            loaded[table][f.name] = Secret(value) if value else None
        if keys_v["source"] == KeySource.KEYFILE and keyfile is not None:
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

    # What is not a key, or not a key's value as checked: paths relative to the config file, the
    # listen address split, the addresses the keyfile and the address file hold.
    host, port = parse_host_port(values["callback"]["listen"])
    metrics_listen = values["metrics"]["listen"]
    metrics_host, metrics_port = parse_host_port(metrics_listen) if metrics_listen else (None, None)
    derived_values: dict[str, dict[str, Any]] = {
        "database": {"url": _sqlite_relative(base, values["database"]["url"])},
        "callback": {"host": host, "port": port},
        "metrics": {"host": metrics_host, "port": metrics_port},
        "keys": {"keyfile": keyfile, "keyfile_keys": keyfile_keys},
        "addresses": {"file": address_file, "file_addresses": file_addresses},
    }
    tables = {
        table: cls(**{**values[table], **loaded[table], **derived_values.get(table, {})})
        for table, cls in _TABLES.items()
    }
    return Settings(path=path, **tables, tokens=tuple(tokens), secrets_loaded=secrets)


def read_named_secret(name: str, environ: Mapping[str, str]) -> str:
    """The value of the secret a `*_env = "NAME"` key names, looked up in this order:

    1. the systemd credential `$CREDENTIALS_DIRECTORY/NAME` (the unit's `LoadCredential=`), one
       trailing newline stripped (what `echo` or an editor leaves); the file, once present, is the
       answer: an empty or unreadable one is an error, never a silent fall-back;
    2. the environment variable NAME, surrounding whitespace stripped (systemd older than 247 has no
       credentials: the unit's EnvironmentFile= provides the variables).

    Raises ValueError naming the file or the variable, never the value.
    """
    directory = environ.get(CREDENTIALS_DIRECTORY, "")
    if directory:
        path = Path(directory) / name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            pass
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            raise ValueError(f"cannot read credential file {path} ({why})") from None
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"credential file {path} is not UTF-8 text") from None
            value = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
            if not value.strip():
                raise ValueError(f"credential file {path} is empty")
            return value
    value = environ.get(name, "").strip()
    if not value:
        also = f", and ${CREDENTIALS_DIRECTORY} ({directory}) has no file {name}" if directory else ""
        raise ValueError(f"environment variable {name} is not set or empty{also}")
    return value


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
