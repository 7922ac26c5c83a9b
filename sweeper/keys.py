"""Key sources for deposit addresses: a BIP39 mnemonic (BIP44 TRON m/44'/195'/0'/0/i) or a keyfile.

Private keys only ever live in memory, wrapped in `Secret`; they are never logged or stored.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from bip_utils import Bip39SeedGenerator, Bip44, Bip44Changes, Bip44Coins

from sweeper.domain import InvalidAddress, Secret, check_tron_address


class KeySourceError(Exception):
    """A key source that cannot be used (bad mnemonic, unsafe keyfile …). Never contains key material."""


class HdWallet:
    """BIP44 TRON account 0, external chain: address i is m/44'/195'/0'/0/i."""

    def __init__(self, mnemonic: Secret, passphrase: str = "") -> None:
        words = " ".join(mnemonic.reveal().split())
        try:
            seed = Bip39SeedGenerator(words).Generate(passphrase)
        except Exception:  # bip-utils raises several types; none may leak the words
            raise KeySourceError("the mnemonic is not a valid BIP39 phrase") from None
        self._chain = Bip44.FromSeed(seed, Bip44Coins.TRON).Purpose().Coin().Account(0).Change(
            Bip44Changes.CHAIN_EXT
        )

    def private_key(self, index: int) -> Secret:
        return Secret(self._chain.AddressIndex(index).PrivateKey().Raw().ToHex())

    def address(self, index: int) -> str:
        return str(self._chain.AddressIndex(index).PublicKey().ToAddress())

    def __repr__(self) -> str:
        return "HdWallet(***)"


def load_keyfile(path: Path) -> dict[str, Secret]:
    """A JSON object {"T…": "hex private key"}; refused if group- or world-accessible."""
    try:
        st = path.stat()
    except OSError as exc:
        raise KeySourceError(f"{path}: cannot read keyfile ({exc.strerror})") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeySourceError(
            f"{path}: keyfile is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            "run chmod 600"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        # The message of a JSON error may quote key material: name only the position.
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise KeySourceError(f"{path}: keyfile is not valid JSON{where}") from None
    if not isinstance(data, dict):
        raise KeySourceError(f"{path}: keyfile must be a JSON object of address -> hex private key")
    keys: dict[str, Secret] = {}
    for address, key in data.items():
        try:
            check_tron_address(address)
        except InvalidAddress as exc:
            raise KeySourceError(f"{path}: {exc}") from None
        if not isinstance(key, str) or len(key) != 64 or not _is_hex(key):
            raise KeySourceError(f"{path}: the key for {address} is not 64 hex characters")
        keys[address] = Secret(key.lower())
    return keys


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True


def keyfile_is_private(path: Path) -> bool:
    return not (os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
