"""A plain, non-editable install carries the migrations: `sweeper migrate` works from the wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install --no-deps .` into a target folder (the deps come from the test venv)."""
    target = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--quiet", "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert (target / "sweeper" / "migrations" / "env.py").is_file(), "migrations must ship inside the wheel"
    assert not (target / "migrations").exists()
    return target


def sweeper_cmd(installed: Path, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(installed)}
    code = "import sys, sweeper.cli; sys.exit(sweeper.cli.main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )


def test_wheel_migrates_and_lists(installed: Path, tmp_path: Path, db_url: str) -> None:
    where = subprocess.run(
        [sys.executable, "-c", "import sweeper, sweeper.ledger.db as d; print(sweeper.__file__); print(d.migrations_dir())"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    module_file, migrations = where.stdout.split()
    assert module_file.startswith(str(installed)) and migrations.startswith(str(installed))
    config = tmp_path / "sweeper.toml"
    config.write_text(
        (REPO / "config.example.toml")
        .read_text()
        .replace('url = "sqlite:///sweeper.db"', f'url = "{db_url}"')
    )
    migrate = sweeper_cmd(installed, tmp_path, "--config", str(config), "migrate")
    assert migrate.returncode == 0, migrate.stderr
    assert "upgraded from empty to " in migrate.stdout
    listing = sweeper_cmd(installed, tmp_path, "--config", str(config), "sweeps", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    assert json.loads(listing.stdout) == []


def test_the_console_script_is_installed_and_runs(installed: Path, tmp_path: Path) -> None:
    script = installed / "bin" / "sweeper"
    assert script.is_file() and os.access(script, os.X_OK), "pip must install the `sweeper` console script"
    env = {**os.environ, "PYTHONPATH": str(installed)}
    result = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for command in ("migrate", "run", "scan", "sweeps", "addresses", "stats", "demo"):
        assert command in result.stdout
    module = subprocess.run(
        [sys.executable, "-m", "sweeper", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert module.returncode == 0 and module.stdout == result.stdout
