"""Secrets named by `*_env = "NAME"` keys: the systemd credential $CREDENTIALS_DIRECTORY/NAME first
(LoadCredential=), then the environment variable NAME (systemd < 247 keeps the EnvironmentFile).

Every error names the key, and the file or the variable; none quotes a value.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.cli import main
from sweeper.config import Settings, load_settings, read_named_secret
from sweeper.errors import ConfigError
from tests.conftest import REPO
from tests.constants import MNEMONIC

ENV = {
    "TRONGRID_API_KEY": "env-trongrid-key",
    "SWEEPER_PROVIDER_API_KEY": "env-provider-key",
    "SWEEPER_PROVIDER_API_SECRET": "env-provider-secret",
    "SWEEPER_MNEMONIC": MNEMONIC,
}


def config(tmp_path: Path) -> Path:
    path = tmp_path / "sweeper.toml"
    path.write_text((REPO / "config.example.toml").read_text())
    return path


def credentials(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "credentials"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def load(tmp_path: Path, environ: dict[str, str]) -> Settings:
    return load_settings(config(tmp_path), environ=environ)


def problems(tmp_path: Path, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, environ)
    return list(info.value.problems)


def revealed(settings: Settings) -> dict[str, str]:
    found = {
        "tron": settings.tron.api_key,
        "api_key": settings.provider.api_key,
        "api_secret": settings.provider.api_secret,
        "mnemonic": settings.keys.mnemonic,
    }
    return {name: secret.reveal() for name, secret in found.items() if secret is not None}


def test_without_a_credentials_directory_every_secret_comes_from_the_environment(tmp_path: Path) -> None:
    settings = load(tmp_path, dict(ENV))
    assert revealed(settings) == {
        "tron": "env-trongrid-key",
        "api_key": "env-provider-key",
        "api_secret": "env-provider-secret",
        "mnemonic": MNEMONIC,
    }


def test_a_credential_file_wins_over_the_variable_and_a_missing_one_falls_back(tmp_path: Path) -> None:
    folder = credentials(
        tmp_path,
        {
            "SWEEPER_PROVIDER_API_SECRET": b"cred-provider-secret\n",
            "SWEEPER_MNEMONIC": MNEMONIC.encode() + b"\n",
        },
    )
    settings = load(tmp_path, {**ENV, "CREDENTIALS_DIRECTORY": str(folder)})
    assert revealed(settings) == {
        "tron": "env-trongrid-key",  # no file: the variable
        "api_key": "env-provider-key",  # no file: the variable
        "api_secret": "cred-provider-secret",  # the file, its trailing newline stripped
        "mnemonic": MNEMONIC,
    }


def test_credentials_alone_are_enough(tmp_path: Path) -> None:
    folder = credentials(
        tmp_path, {name: f"cred-{name}".encode() for name in ENV if name != "SWEEPER_MNEMONIC"}
    )
    (folder / "SWEEPER_MNEMONIC").write_text(MNEMONIC)  # no trailing newline at all: kept whole
    settings = load(tmp_path, {"CREDENTIALS_DIRECTORY": str(folder)})
    assert revealed(settings)["api_key"] == "cred-SWEEPER_PROVIDER_API_KEY"
    assert revealed(settings)["tron"] == "cred-TRONGRID_API_KEY"
    assert revealed(settings)["mnemonic"] == MNEMONIC


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (b"s3cret\n", "s3cret"),
        (b"s3cret\r\n", "s3cret"),
        (b"s3cret\n\n", "s3cret\n"),  # only ONE newline: the rest is the secret's
        (b"  s3cret  ", "  s3cret  "),  # a credential is taken as it is
        (b"s3cret", "s3cret"),
    ],
)
def test_exactly_one_trailing_newline_is_stripped(tmp_path: Path, content: bytes, value: str) -> None:
    folder = credentials(tmp_path, {"NAME": content})
    assert read_named_secret("NAME", {"CREDENTIALS_DIRECTORY": str(folder), "NAME": "from-env"}) == value


def test_an_empty_credential_file_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    folder = credentials(tmp_path, {"SWEEPER_PROVIDER_API_SECRET": b"\n"})
    found = problems(tmp_path, {**ENV, "CREDENTIALS_DIRECTORY": str(folder)})
    assert found == [
        f"{tmp_path / 'sweeper.toml'}: provider.api_secret_env: "
        f"credential file {folder / 'SWEEPER_PROVIDER_API_SECRET'} is empty"
    ]


def test_an_unreadable_credential_is_an_error_naming_the_file(tmp_path: Path) -> None:
    folder = credentials(tmp_path, {})
    (folder / "SWEEPER_MNEMONIC").mkdir()  # not a file: reading it fails (even as root)
    found = problems(tmp_path, {**ENV, "CREDENTIALS_DIRECTORY": str(folder)})
    assert len(found) == 1
    assert found[0].startswith(
        f"{tmp_path / 'sweeper.toml'}: keys.mnemonic_env: cannot read credential file {folder / 'SWEEPER_MNEMONIC'} ("
    )


def test_a_credential_that_is_not_text_is_an_error(tmp_path: Path) -> None:
    folder = credentials(tmp_path, {"SWEEPER_PROVIDER_API_KEY": b"\xff\xfe-binary"})
    found = problems(tmp_path, {**ENV, "CREDENTIALS_DIRECTORY": str(folder)})
    assert found == [
        f"{tmp_path / 'sweeper.toml'}: provider.api_key_env: "
        f"credential file {folder / 'SWEEPER_PROVIDER_API_KEY'} is not UTF-8 text"
    ]


def test_a_secret_in_neither_place_names_the_variable_and_the_directory(tmp_path: Path) -> None:
    folder = credentials(tmp_path, {})
    environ = {k: v for k, v in ENV.items() if k != "SWEEPER_MNEMONIC"}
    found = problems(tmp_path, {**environ, "CREDENTIALS_DIRECTORY": str(folder)})
    assert found == [
        f"{tmp_path / 'sweeper.toml'}: keys.mnemonic_env: environment variable SWEEPER_MNEMONIC is not set "
        f"or empty, and $CREDENTIALS_DIRECTORY ({folder}) has no file SWEEPER_MNEMONIC"
    ]
    # Without a credentials directory, only the variable is named (systemd < 247, a shell).
    assert problems(tmp_path, environ) == [
        f"{tmp_path / 'sweeper.toml'}: keys.mnemonic_env: environment variable SWEEPER_MNEMONIC is not set or empty"
    ]


def test_a_credential_not_used_by_the_config_is_never_read(tmp_path: Path) -> None:
    """keys.source = "keyfile": the mnemonic's credential may be anything, it is not opened."""
    folder = credentials(tmp_path, {})
    (folder / "SWEEPER_MNEMONIC").mkdir()  # would be an error if it were read
    path = config(tmp_path)
    text = path.read_text().replace('source = "mnemonic"', 'source = "keyfile"\nkeyfile = "keys.json"', 1)
    path.write_text(text.replace('hd_indexes = "0-999"', 'hd_indexes = ""'))
    keyfile = tmp_path / "keys.json"
    keyfile.write_text("{}")
    keyfile.chmod(0o600)
    settings = load_settings(path, environ={**ENV, "CREDENTIALS_DIRECTORY": str(folder)})
    assert settings.keys.mnemonic is None


def test_config_check_masks_credentials_and_errors_quote_no_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = credentials(tmp_path, {name: f"credential-value-{name}\n".encode() for name in ENV})
    (folder / "SWEEPER_MNEMONIC").write_text(MNEMONIC + "\n")
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(folder))
    path = config(tmp_path)
    assert main(["--config", str(path), "config", "check"]) == 0
    out = capsys.readouterr().out
    assert "*** (from $SWEEPER_PROVIDER_API_SECRET)" in out
    for name in ENV:
        assert f"credential-value-{name}" not in out
    assert MNEMONIC not in out

    # An empty mnemonic credential: exit 2, the file named, no other credential's value quoted.
    (folder / "SWEEPER_MNEMONIC").write_text("")
    assert main(["--config", str(path), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert f"keys.mnemonic_env: credential file {folder / 'SWEEPER_MNEMONIC'} is empty" in err
    assert "credential-value-" not in err
