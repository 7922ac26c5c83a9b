"""Config: the example passes; each kind of error exits 2 naming the file, the key and the problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.cli import main
from sweeper.config import load_settings, parse_hd_indexes
from sweeper.errors import ConfigError
from tests.conftest import REPO
from tests.constants import MNEMONIC

ENV = {
    "TRONGRID_API_KEY": "trongrid-key-123",
    "SWEEPER_PROVIDER_API_KEY": "provider-key-123",
    "SWEEPER_PROVIDER_API_SECRET": "provider-secret-123",
    "SWEEPER_MNEMONIC": MNEMONIC,
}
DEST = "TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMW"
ADDR0 = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"  # m/44'/195'/0'/0/0 of MNEMONIC


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    return ENV


def example_text() -> str:
    return (REPO / "config.example.toml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweeper.toml"
    path.write_text(text)
    return path


def test_example_config_passes_check(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, example_text())
    assert main(["--config", str(path), "config", "check"]) == 0
    out = capsys.readouterr().out
    assert '"destination": "TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMW"' in out
    for secret in env.values():
        assert secret not in out  # masked
    assert "*** (from $SWEEPER_PROVIDER_API_SECRET)" in out


def test_example_config_keys_are_all_of_the_contract() -> None:
    contract = (REPO / "docs" / "operator-contract.md").read_text()
    block = contract.split("```toml", 1)[1].split("```", 1)[0]
    settings = load_settings(
        write_tmp(block.replace('destination = "T…"', f'destination = "{DEST}"')), secrets=False
    )
    assert settings.tokens[0].min_sweep_base_units == 10_000_000
    example = load_settings(write_tmp(example_text()), secrets=False)
    assert example.to_public_dict().keys() == settings.to_public_dict().keys()


def write_tmp(text: str) -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp())
    return write(folder, text)


def test_settings_are_typed_and_frozen(tmp_path: Path, env: dict[str, str]) -> None:
    settings = load_settings(write(tmp_path, example_text()))
    assert settings.addresses.hd_indexes == (range(0, 1000),)
    assert settings.safety.max_daily_spend_sun == 500_000_000
    assert settings.provider.api_secret is not None
    assert settings.provider.api_secret.reveal() == "provider-secret-123"
    assert "provider-secret-123" not in repr(settings)
    assert settings.database.url == f"sqlite:///{tmp_path.resolve() / 'sweeper.db'}"  # relative to the file
    with pytest.raises(AttributeError):
        settings.wallet.destination = ADDR0  # type: ignore[misc]


CASES = [
    # (replace this, with this, expected key, expected words)
    ("[wallet]", "[wallet]\ncolour = 1", "wallet.colour", "unknown key"),
    ("requests_per_second = 10", "request_per_second = 10", "tron.request_per_second", "did you mean 'requests_per_second'"),
    ("scan_interval_seconds = 300", 'scan_interval_seconds = "300"', "schedule.scan_interval_seconds", "expected an integer, got string"),
    ("concurrency = 16", "concurrency = true", "pipeline.concurrency", "expected an integer, got boolean"),
    ("concurrency = 16", "concurrency = 0", "pipeline.concurrency", "positive integer"),
    (f'destination = "{DEST}"', 'destination = "TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMX"', "wallet.destination", "checksum"),
    (f'destination = "{DEST}"', 'destination = "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed"', "wallet.destination", "not a TRON address"),
    ('contract = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"', 'contract = "TR7NHqjeKQ"', "tokens[0].contract", "characters long"),
    ('min_sweep = "10"', 'min_sweep = "-1"', "tokens[0].min_sweep", "positive decimal"),
    ('min_sweep = "10"', 'min_sweep = "0"', "tokens[0].min_sweep", "positive decimal"),
    ('min_sweep = "10"', "min_sweep = 10.5", "tokens[0].min_sweep", "got float"),
    ('min_sweep = "10"', 'min_sweep = "abc"', "tokens[0].min_sweep", "not a decimal number"),
    ('min_sweep = "10"', 'min_sweep = "0.0000001"', "tokens[0].min_sweep", "more than 6 decimal places"),
    ('hd_indexes = "0-999"', 'hd_indexes = "999-0"', "addresses.hd_indexes", "reversed"),
    ('hd_indexes = "0-999"', 'hd_indexes = "0-x"', "addresses.hd_indexes", "not N or N-M"),
    ('hd_indexes = "0-999"', 'hd_indexes = "0-10,5-20"', "addresses.hd_indexes", "overlap"),
    ('hd_indexes = "0-999"', "hd_indexes = 5", "addresses.hd_indexes", "expected a string"),
    ('source = "mnemonic"', 'source = "ledger"', "keys.source", 'expected "mnemonic" or "keyfile"'),
    ('mode = "both"', 'mode = "sideways"', "detect.mode", 'expected "poll", "follow" or "both"'),
    ('listen = "127.0.0.1:8088"', 'listen = "8088"', "callback.listen", "host:port"),
    ('node_url = "https://api.trongrid.io"', 'node_url = "api.trongrid.io"', "tron.node_url", "http(s) URL"),
    ('url = "sqlite:///sweeper.db"', 'url = "mysql://x"', "database.url", "sqlite:///PATH"),
    ('api_secret_env = "SWEEPER_PROVIDER_API_SECRET"', 'api_secret_env = "my secret"', "provider.api_secret_env", "not an environment variable name"),
    (f'destination = "{DEST}"', f'destination = "{ADDR0}"', "wallet.destination", "hd index 0"),
    ("[[tokens]]", "[[tokens]]\nsymbol = \"USDT\"\ncontract = \"TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t\"\ndecimals = 6\nmin_sweep = \"1\"\n[[tokens]]", "tokens[1].symbol", "configured twice"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "key", "words"), CASES, ids=[c[2] + ":" + c[3][:20] for c in CASES])
def test_each_error_exits_2_naming_file_and_key(
    tmp_path: Path,
    env: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    old: str,
    new: str,
    key: str,
    words: str,
) -> None:
    text = example_text()
    assert old in text
    path = write(tmp_path, text.replace(old, new, 1))
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {key}: " in err, err
    assert words in err, err
    assert "Traceback" not in err


def test_missing_env_var_for_a_named_secret(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SWEEPER_PROVIDER_API_SECRET")
    path = write(tmp_path, example_text())
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert "provider.api_secret_env: environment variable SWEEPER_PROVIDER_API_SECRET is not set" in err
    # Ledger-only commands do not need the secrets.
    assert main(["--config", str(path), "migrate"]) == 0


def test_malformed_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "[database\nurl = 1")
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: malformed TOML" in err and "line 1" in err


def test_missing_file_and_env_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWEEPER_CONFIG", str(tmp_path / "nope.toml"))
    assert main(["config", "check"]) == 2
    assert "nope.toml: config file not found" in capsys.readouterr().err


def test_destination_in_address_file_and_bad_file_lines(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "addresses.txt").write_text(f"# deposits\n{ADDR0}\nnot-an-address\n\n{DEST}\n")
    text = example_text().replace('# file = "/etc/sweeper/addresses.txt"', 'file = "addresses.txt"')
    path = write(tmp_path, text)
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert f"addresses.file: {tmp_path / 'addresses.txt'}:3: 'not-an-address'" in err
    assert f"wallet.destination: {DEST} is also a watched address" in err


def test_keyfile_must_be_private(
    tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    keyfile = tmp_path / "keys.json"
    keyfile.write_text(
        json.dumps({ADDR0: "b5a4cea271ff424d7c31dc12a3e43e401df7a40d7412a15750f3f0b6b5449a28"})
    )
    keyfile.chmod(0o644)
    text = (
        example_text()
        .replace('source = "mnemonic"', 'source = "keyfile"')
        .replace('# keyfile = "/etc/sweeper/keys.json"', 'keyfile = "keys.json"')
        .replace('hd_indexes = "0-999"', 'hd_indexes = ""')
    )
    path = write(tmp_path, text)
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert "keys.keyfile: " in err and "chmod 600" in err
    assert "b5a4cea2" not in err
    keyfile.chmod(0o600)
    assert main(["--config", str(path), "config", "check"]) == 0
    assert "b5a4cea2" not in capsys.readouterr().out


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = (
        example_text()
        .replace("concurrency = 16", "concurrency = -1")
        .replace('min_sweep = "10"', 'min_sweep = "x"')
    )
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), secrets=False)
    assert len(info.value.problems) == 2


def test_hd_index_parsing() -> None:
    assert parse_hd_indexes("0-9, 20, 30-31") == (range(0, 10), range(20, 21), range(30, 32))
    assert parse_hd_indexes("") == ()
    for bad in ("-1", "1-", "a", "5-4", "0-2147483648"):
        with pytest.raises(ValueError):
            parse_hd_indexes(bad)


def test_config_error_through_the_real_entry_point(tmp_path: Path) -> None:
    """`python -m sweeper` exits 2 with no traceback, as an operator's shell sees it."""
    path = write(tmp_path, example_text().replace("concurrency = 16", "concurrency = 'many'"))
    result = subprocess.run(
        [sys.executable, "-m", "sweeper", "--config", str(path), "config", "check"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **ENV},
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{path}: pipeline.concurrency: expected an integer, got string" in result.stderr
    assert "Traceback" not in result.stderr
