"""Key sources for deposit addresses: a BIP39 mnemonic (BIP44 TRON m/44'/195'/0'/0/i) or a keyfile.

Private keys only ever live in memory, wrapped in `Secret`; they are never logged or stored.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bip_utils import Bip39SeedGenerator, Bip44, Bip44Changes, Bip44Coins
from tronpy.exceptions import BadKey
from tronpy.keys import PrivateKey

from sweeper.domain import InvalidAddress, Secret, check_tron_address
from sweeper.errors import KeySourceError

if TYPE_CHECKING:
    from sweeper.config import Settings


class HdWallet:
    """BIP44 TRON account 0, external chain: address i is m/44'/195'/0'/0/i."""

    def __init__(self, mnemonic: Secret, passphrase: str = "") -> None:
        words = " ".join(mnemonic.reveal().split())
        try:
            seed = Bip39SeedGenerator(words).Generate(passphrase)
        except Exception:  # bip-utils raises several types; none may leak the words
            raise KeySourceError("the mnemonic is not a valid BIP39 phrase") from None
        self._chain = (
            Bip44.FromSeed(seed, Bip44Coins.TRON).Purpose().Coin().Account(0).Change(Bip44Changes.CHAIN_EXT)
        )

    def private_key(self, index: int) -> Secret:
        return Secret(self._chain.AddressIndex(index).PrivateKey().Raw().ToHex())

    def address(self, index: int) -> str:
        return str(self._chain.AddressIndex(index).PublicKey().ToAddress())

    def __repr__(self) -> str:
        return "HdWallet(***)"


def load_keyfile(path: Path) -> dict[str, Secret]:
    """A JSON object {"T…": "hex private key"}; refused if group- or world-accessible or a symlink.

    The file is opened once (O_NOFOLLOW) and both the permission check (fstat) and the read use that
    one descriptor, so the file checked is the file read. Errors name entries by position only: an
    entry's address or key is never quoted (a swapped entry would put the key in the message).
    """
    # O_NONBLOCK: a FIFO planted at the path must not hang the open; it is then refused as not regular.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeySourceError(f"{path}: keyfile is a symbolic link; give the real file") from None
        raise KeySourceError(f"{path}: cannot read keyfile ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        try:
            st = os.fstat(handle.fileno())
        except OSError as exc:
            raise KeySourceError(f"{path}: cannot read keyfile ({exc.strerror})") from None
        if not stat.S_ISREG(st.st_mode):
            raise KeySourceError(f"{path}: keyfile is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeySourceError(
                f"{path}: keyfile is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                "run chmod 600"
            )
        try:
            raw = handle.read()
        except OSError as exc:
            raise KeySourceError(f"{path}: cannot read keyfile ({exc.strerror})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The message of a JSON error may quote key material: name only the position.
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise KeySourceError(f"{path}: keyfile is not valid JSON{where}") from None
    if not isinstance(data, dict):
        raise KeySourceError(f"{path}: keyfile must be a JSON object of address -> hex private key")
    keys: dict[str, Secret] = {}
    for n, (address, key) in enumerate(data.items(), start=1):
        try:
            check_tron_address(address)
        except InvalidAddress:
            raise KeySourceError(f"{path}: entry {n} is not a TRON address") from None
        if not isinstance(key, str) or len(key) != 64 or not _is_hex(key):
            raise KeySourceError(f"{path}: the key of entry {n} is not 64 hex characters")
        keys[address] = Secret(key.lower())
    return keys


def _is_hex(text: str) -> bool:
    # Not bytes.fromhex: it accepts spaces between bytes.
    return re.fullmatch(r"[0-9a-fA-F]*", text) is not None


def keyfile_is_private(path: Path) -> bool:
    return not (os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))


# --- signing keys --------------------------------------------------------------------------------


class KeyMismatch(KeySourceError):
    """The key found for an address derives a different address: never sign with it."""


class UnknownAddress(KeySourceError):
    """No key source holds a key for this address."""


def address_of_key(private_key: Secret) -> str:
    """The T-address a private key (64 hex chars, wrapped) controls."""
    try:
        return str(PrivateKey(bytes.fromhex(private_key.reveal())).public_key.to_base58check_address())
    except (ValueError, BadKey):
        raise KeySourceError("not a valid secp256k1 private key") from None


class SigningKey:
    """A private key bound to the address it controls; the raw key never leaves this object.

    Built only by `KeyRing.key_for`, which has checked that the key derives `address`.
    """

    __slots__ = ("_key", "address")

    def __init__(self, address: str, key: Secret) -> None:
        derived = address_of_key(key)
        if derived != address:
            raise KeyMismatch(f"the key held for {address} controls {derived}, not {address}")
        self.address = address
        self._key = key

    def sign_digest(self, digest: bytes) -> bytes:
        """A 65-byte recoverable secp256k1 signature (r, s, v) of a 32-byte digest (a txid)."""
        if len(digest) != 32:
            raise ValueError("a TRON signature covers a 32-byte digest")
        signature = PrivateKey(bytes.fromhex(self._key.reveal())).sign_msg_hash(digest)
        return bytes(signature.to_bytes())

    def __repr__(self) -> str:
        return f"SigningKey(address={self.address!r}, key=***)"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("a SigningKey cannot be pickled or copied out of the process")


class KeyRing:
    """Every deposit address the sweeper may sign for, and where its key comes from.

    HD addresses are registered by index (the key is derived only when a sweep needs it); keyfile
    keys are held as `Secret`s. `key_for(address)` returns a key only if the key's own address
    equals the sweep's address, so a wrong index, a swapped keyfile entry or a corrupted row can
    never get a transaction signed by the wrong key.
    """

    def __init__(self) -> None:
        self._hd: dict[str, tuple[HdWallet, int]] = {}
        self._keys: dict[str, Secret] = {}

    def add_hd(self, wallet: HdWallet, index: int, address: str | None = None) -> str:
        """Register m/44'/195'/0'/0/index; `address` (e.g. from the ledger) skips the derivation now
        and is checked against the derived key at signing time."""
        if index < 0 or index >= 2**31:
            raise KeySourceError(f"HD index {index} is out of range")
        if address is None:
            address = wallet.address(index)
        else:
            check_tron_address(address)
        self._hd[address] = (wallet, index)
        return address

    def add_key(self, address: str, key: Secret) -> None:
        """Register a keyfile entry; refused at once if the key does not control `address`."""
        check_tron_address(address)
        derived = address_of_key(key)
        if derived != address:
            raise KeyMismatch(f"the key given for {address} controls {derived}")
        self._keys[address] = key

    def add_keyfile(self, keys: dict[str, Secret]) -> None:
        for address, key in keys.items():
            self.add_key(address, key)

    def key_for(self, address: str) -> SigningKey:
        """The signing key for a sweep's address; raises UnknownAddress or KeyMismatch."""
        if address in self._keys:
            return SigningKey(address, self._keys[address])
        if address in self._hd:
            wallet, index = self._hd[address]
            return SigningKey(address, wallet.private_key(index))
        raise UnknownAddress(f"no key for {address}")

    def addresses(self) -> list[str]:
        return sorted(set(self._hd) | set(self._keys))

    def hd_index(self, address: str) -> int | None:
        entry = self._hd.get(address)
        return entry[1] if entry else None

    def __contains__(self, address: object) -> bool:
        return address in self._hd or address in self._keys

    def __len__(self) -> int:
        return len(set(self._hd) | set(self._keys))

    def __repr__(self) -> str:
        return f"KeyRing({len(self)} addresses, keys=***)"


# --- the keys of the deposit addresses ------------------------------------------------------------


class _IndexedAddress(Protocol):
    @property
    def hd_index(self) -> int | None: ...


class AddressBook(Protocol):
    """Where a deposit address's HD index is found (the ledger)."""

    def deposit_address(self, address: str) -> _IndexedAddress | None: ...


class Keys:
    """Signing keys for deposit addresses: keyfile entries, and HD keys derived on demand from the
    index the ledger holds for the address (the key's own address is checked before any use)."""

    def __init__(
        self, ledger: AddressBook, wallet: HdWallet | None, keyfile: dict[str, Any] | None = None
    ) -> None:
        self._ledger = ledger
        self._wallet = wallet
        self._ring = KeyRing()
        if keyfile:
            self._ring.add_keyfile(dict(keyfile))

    @classmethod
    def from_settings(cls, settings: Settings, ledger: AddressBook) -> Keys:
        wallet = HdWallet(settings.keys.mnemonic) if settings.keys.mnemonic is not None else None
        return cls(ledger, wallet, dict(settings.keys.keyfile_keys or {}))

    def key_for(self, address: str) -> SigningKey:
        if address not in self._ring and self._wallet is not None:
            record = self._ledger.deposit_address(address)
            if record is not None and record.hd_index is not None:
                self._ring.add_hd(self._wallet, record.hd_index, address)
        return self._ring.key_for(address)

    def __repr__(self) -> str:
        return "Keys(***)"
