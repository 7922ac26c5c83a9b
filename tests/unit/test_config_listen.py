"""Config keys of issue 16: `[metrics] listen` (optional, host:port, not the callback address) and
`[callback] max_failed_per_second` (a positive number)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweeper.config import load_settings
from sweeper.errors import ConfigError
from tests.conftest import REPO

EXAMPLE = (REPO / "config.example.toml").read_text()
EXAMPLE_METRICS = 'listen = "127.0.0.1:9108"'


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(_write(tmp_path, text), secrets=False)
    return caught.value.problems


def test_the_example_sets_metrics_listen_to_loopback(tmp_path: Path) -> None:
    assert EXAMPLE_METRICS in EXAMPLE
    settings = load_settings(_write(tmp_path, EXAMPLE), secrets=False)
    assert (settings.metrics.listen, settings.metrics.host, settings.metrics.port) == (
        "127.0.0.1:9108",
        "127.0.0.1",
        9108,
    )
    assert settings.callback.max_failed_per_second == 10
    assert settings.to_public_dict()["metrics"] == {"listen": "127.0.0.1:9108"}  # `config check`


def test_metrics_listen_unset_keeps_everything_on_the_callback_port(tmp_path: Path) -> None:
    text = EXAMPLE.replace(EXAMPLE_METRICS, 'listen = ""')
    settings = load_settings(_write(tmp_path, text), secrets=False)
    assert (settings.metrics.listen, settings.metrics.host, settings.metrics.port) == ("", None, None)
    without_table = EXAMPLE.replace("[metrics]\n" + EXAMPLE_METRICS, "")
    assert "[metrics]" not in without_table
    settings = load_settings(_write(tmp_path, without_table), secrets=False)
    assert settings.metrics.port is None


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        (EXAMPLE_METRICS, 'listen = "9108"', "metrics.listen", "is not host:port"),
        (EXAMPLE_METRICS, "listen = 9108", "metrics.listen", "expected a string"),
        (EXAMPLE_METRICS, 'listen = "127.0.0.1:8088"', "metrics.listen", "is also [callback] listen"),
        (
            "max_failed_per_second = 10",
            "max_failed_per_second = 0",
            "callback.max_failed_per_second",
            "positive",
        ),
        (
            "max_failed_per_second = 10",
            'max_failed_per_second = "10"',
            "callback.max_failed_per_second",
            "positive",
        ),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, old: str, new: str, key: str, words: str) -> None:
    assert old in EXAMPLE
    found = problems(tmp_path, EXAMPLE.replace(old, new, 1))
    assert any(f": {key}: " in p and words in p for p in found), found


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweeper.toml"
    path.write_text(text)
    return path
