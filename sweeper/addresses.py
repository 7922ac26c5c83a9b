"""The deposit addresses: the configured ones synced into the ledger, and `addresses import` files.

Imports no network client and no key library at module level (`HdWallet` is reached lazily, only
when the config derives addresses), so `sweeper addresses import` stays a ledger-only command.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from sweeper.config import Settings
from sweeper.domain import InvalidAddress, check_tron_address
from sweeper.errors import KeySourceError, UsageError
from sweeper.ledger import Ledger, NewAddress
from sweeper.progress import MIN_TOTAL, Progress, counted

# The name these log lines had before they moved here (operators' log filters know it).
log = structlog.get_logger("sweeper.scanner")


class AddressConfigProblem(UsageError):
    """The configured deposit addresses cannot be used as they are (exit 2 on the command line)."""


class KeysDoNotMatchLedger(AddressConfigProblem):
    """The mnemonic derives other addresses than the ledger holds for the same hd indexes."""


def watched_address_problems(settings: Settings) -> list[str]:
    """The destination must not be one of the addresses we sweep from (derived ones included)."""
    destination = settings.wallet.destination
    if settings.keys.mnemonic is None or not settings.addresses.hd_indexes:
        return []
    from sweeper.keys import HdWallet

    try:
        wallet = HdWallet(settings.keys.mnemonic)
    except KeySourceError as exc:
        return [f"{settings.path}: keys.mnemonic_env: ${settings.keys.mnemonic_env}: {exc}"]
    for indexes in settings.addresses.hd_indexes:
        for index in indexes:
            if wallet.address(index) == destination:
                return [
                    f"{settings.path}: wallet.destination: {destination} is the deposit address at hd index "
                    f"{index} (addresses.hd_indexes)"
                ]
    return []


# --- the configured addresses --------------------------------------------------------------------


def configured_addresses(settings: Settings, ledger: Ledger, *, batch: int = 1000) -> Iterator[NewAddress]:
    """Addresses named by the config that the ledger may not know yet.

    Derived addresses are computed only for hd indexes the ledger does not hold (derivation costs
    ~0.3 ms each); for the ones it holds, the first and last of each range are re-derived as a
    tripwire against a changed mnemonic, which would leave us watching addresses we cannot sign for.
    """
    if settings.addresses.hd_indexes:
        if settings.keys.mnemonic is None:
            raise KeysDoNotMatchLedger("addresses.hd_indexes needs the mnemonic (keys.mnemonic_env)")
        from sweeper.keys import HdWallet

        wallet = HdWallet(settings.keys.mnemonic)
        for indexes in settings.addresses.hd_indexes:
            known = ledger.hd_indexes_between(indexes.start, indexes.stop - 1)
            for index in sorted({min(known, default=-1), max(known, default=-1)} - {-1}):
                if wallet.address(index) != known[index]:
                    raise KeysDoNotMatchLedger(
                        f"hd index {index} derives {wallet.address(index)} but the ledger holds {known[index]}: "
                        "the mnemonic is not the one this ledger was built with"
                    )
            for index in indexes:
                if index not in known:
                    yield NewAddress(wallet.address(index), "hd", hd_index=index)
    for address in settings.addresses.file_addresses:
        yield NewAddress(address, "file")
    for address in settings.keys.keyfile_keys or {}:
        yield NewAddress(address, "keyfile")


def _not_the_destination(settings: Settings, addresses: Iterator[NewAddress]) -> Iterator[NewAddress]:
    # Sweeping the destination into itself would rent energy on every pass, forever.
    for new in addresses:
        if new.address == settings.wallet.destination:
            raise AddressConfigProblem(
                f"{settings.path}: wallet.destination: {new.address} is also a configured deposit address"
                f" ({new.source}); refusing to watch it"
            )
        yield new


def sync_addresses(settings: Settings, ledger: Ledger) -> int:
    """Upsert the configured deposit addresses; returns how many were new. A large HD range not yet
    in the ledger (the first start) shows its progress: deriving costs ~0.3 ms an address."""
    configured = settings.addresses.hd_index_count() + len(settings.addresses.file_addresses)
    configured += len(settings.keys.keyfile_keys or {})
    new = max(0, configured - ledger.address_count())
    with Progress(
        "deriving and registering deposit addresses", configured if new >= MIN_TOTAL else 0
    ) as progress:
        items = counted(configured_addresses(settings, ledger), progress)
        added = ledger.upsert_addresses(_not_the_destination(settings, items))
    if added:
        log.info("deposit addresses added", added=added)
    return added


# --- `sweeper addresses import FILE` -------------------------------------------------------------


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


@dataclass(frozen=True)
class AddressFile:
    """An import file as read: its addresses, and the problems found without the ledger."""

    path: Path
    addresses: list[NewAddress]
    problems: list[str]


def read_address_file(path: Path, *, destination: str) -> AddressFile:
    """Read and check FILE (UsageError if it cannot be read); the ledger is not consulted yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    items, problems = parse_address_lines(path, text)
    for item in items:
        if item.address == destination:
            problems.append(f"{path}: {item.address} is wallet.destination; it cannot be a deposit address")
    return AddressFile(path, items, problems)


def import_addresses(ledger: Ledger, file: AddressFile) -> int:
    """All or nothing: any problem (the file's, or an hd_index another address owns) raises
    UsageError and imports nothing. Returns how many addresses were new."""
    path, items, problems = file.path, file.addresses, list(file.problems)
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
    with Progress("importing deposit addresses", len(items)) as progress:
        return ledger.upsert_addresses(counted(items, progress))
