"""Key sources and the key ring: fixture vectors, address binding, no key material in reprs."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
from tronpy.keys import Signature

from sweeper.domain import Secret
from sweeper.keys import (
    HdWallet,
    KeyMismatch,
    KeyRing,
    KeySourceError,
    SigningKey,
    UnknownAddress,
    address_of_key,
    load_keyfile,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
VECTORS = json.loads((FIXTURES / "hd-tron-vectors.json").read_text())
MNEMONIC = Secret(VECTORS["mnemonic"])
DERIVED = VECTORS["derived"]


def test_hd_wallet_reproduces_the_bip44_tron_vectors() -> None:
    wallet = HdWallet(MNEMONIC, VECTORS["passphrase"])
    for index, vector in enumerate(DERIVED):
        assert vector["path"] == f"m/44'/195'/0'/0/{index}"
        assert wallet.address(index) == vector["address"]
        assert wallet.private_key(index).reveal() == vector["private_key"]
        assert address_of_key(Secret(vector["private_key"])) == vector["address"]


def test_key_ring_returns_a_key_bound_to_the_sweeps_address() -> None:
    ring = KeyRing()
    wallet = HdWallet(MNEMONIC)
    assert ring.add_hd(wallet, 0) == DERIVED[0]["address"]
    key = ring.key_for(DERIVED[0]["address"])
    assert key.address == DERIVED[0]["address"]
    digest = bytes(range(32))
    signature = Signature(key.sign_digest(digest))
    assert signature.recover_public_key_from_msg_hash(digest).to_base58check_address() == key.address
    assert ring.hd_index(DERIVED[0]["address"]) == 0
    assert DERIVED[0]["address"] in ring and len(ring) == 1


def test_a_wrong_hd_index_is_refused_at_signing_time() -> None:
    ring = KeyRing()
    # A ledger row claiming address 1 lives at index 0 (a corrupted row, a reused index …).
    ring.add_hd(HdWallet(MNEMONIC), 0, address=DERIVED[1]["address"])
    with pytest.raises(KeyMismatch) as err:
        ring.key_for(DERIVED[1]["address"])
    assert DERIVED[0]["private_key"] not in str(err.value)
    assert DERIVED[1]["private_key"] not in str(err.value)


def test_a_keyfile_entry_for_another_address_is_refused() -> None:
    ring = KeyRing()
    with pytest.raises(KeyMismatch):
        ring.add_key(DERIVED[0]["address"], Secret(DERIVED[1]["private_key"]))
    with pytest.raises(KeyMismatch):
        SigningKey(DERIVED[0]["address"], Secret(DERIVED[2]["private_key"]))
    ring.add_keyfile({DERIVED[2]["address"]: Secret(DERIVED[2]["private_key"])})
    assert ring.key_for(DERIVED[2]["address"]).address == DERIVED[2]["address"]
    with pytest.raises(UnknownAddress):
        ring.key_for(DERIVED[0]["address"])


def test_keys_never_show_in_reprs_str_or_pickles() -> None:
    ring = KeyRing()
    wallet = HdWallet(MNEMONIC)
    ring.add_hd(wallet, 0)
    ring.add_key(DERIVED[1]["address"], Secret(DERIVED[1]["private_key"]))
    key = ring.key_for(DERIVED[1]["address"])
    shown = " ".join(
        [repr(ring), str(ring), repr(key), str(key), repr(wallet), repr(ring.key_for(DERIVED[0]["address"]))]
    )
    for vector in DERIVED:
        assert vector["private_key"] not in shown
    assert "abandon" not in shown
    with pytest.raises(TypeError):
        pickle.dumps(key)


def test_invalid_inputs_do_not_echo_secrets() -> None:
    with pytest.raises(KeySourceError) as err:
        HdWallet(Secret("abandon abandon abandon zebra secretword"))
    assert "secretword" not in str(err.value)
    with pytest.raises(KeySourceError):
        address_of_key(Secret("00" * 32))
    with pytest.raises(KeySourceError):
        KeyRing().add_hd(HdWallet(MNEMONIC), 2**31)


def test_keyfile_is_refused_when_group_or_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({DERIVED[0]["address"]: DERIVED[0]["private_key"]}))
    os.chmod(path, 0o644)
    with pytest.raises(KeySourceError, match="chmod 600"):
        load_keyfile(path)
    os.chmod(path, 0o600)
    keys = load_keyfile(path)
    ring = KeyRing()
    ring.add_keyfile(keys)
    assert ring.key_for(DERIVED[0]["address"]).address == DERIVED[0]["address"]


def test_keyfile_errors_do_not_quote_key_material(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    address, key = DERIVED[0]["address"], DERIVED[0]["private_key"]
    path.write_text(f'{{"{address}": "{key}",}}')
    os.chmod(path, 0o600)
    with pytest.raises(KeySourceError) as err:
        load_keyfile(path)
    assert DERIVED[0]["private_key"] not in str(err.value)


def test_a_swapped_keyfile_entry_does_not_quote_the_key(tmp_path: Path) -> None:
    path = tmp_path / "swapped.json"
    address, key = DERIVED[0]["address"], DERIVED[0]["private_key"]
    path.write_text(json.dumps({key: address}))
    os.chmod(path, 0o600)
    with pytest.raises(KeySourceError) as err:
        load_keyfile(path)
    shown = str(err.value)
    assert "entry 1" in shown
    # No recognisable piece of the key (nor the address) appears in the message.
    for start in range(0, len(key) - 8 + 1):
        assert key[start : start + 8] not in shown
    assert address not in shown


def test_a_keyfile_entry_with_a_bad_key_names_only_its_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    address, key = DERIVED[0]["address"], DERIVED[0]["private_key"]
    path.write_text(json.dumps({address: key, DERIVED[1]["address"]: key[:-2] + " 0"}))
    os.chmod(path, 0o600)
    with pytest.raises(KeySourceError) as err:
        load_keyfile(path)
    assert "entry 2" in str(err.value)
    assert key[:16] not in str(err.value) and DERIVED[1]["address"] not in str(err.value)


def test_a_symlinked_keyfile_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text(json.dumps({DERIVED[0]["address"]: DERIVED[0]["private_key"]}))
    os.chmod(target, 0o600)
    link = tmp_path / "keys.json"
    link.symlink_to(target)
    with pytest.raises(KeySourceError, match="symbolic link"):
        load_keyfile(link)
    assert load_keyfile(target)[DERIVED[0]["address"]].reveal() == DERIVED[0]["private_key"]


def test_a_keyfile_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "keys.fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(KeySourceError, match="not a regular file"):
        load_keyfile(fifo)
    with pytest.raises(KeySourceError, match="cannot read"):
        load_keyfile(tmp_path / "missing.json")
