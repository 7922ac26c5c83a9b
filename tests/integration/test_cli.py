"""The operator's commands against a real ledger (SQLite and Postgres)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweeper.cli import main
from sweeper.domain import SweepState
from sweeper.ledger import Ledger, make_engine
from sweeper.ledger.db import head_revision
from tests.conftest import REPO, Tty

A = [
    "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH",
    "TSeJkUh4Qv67VNFwY8LaAxERygNdy6NQZK",
    "TYJPRrdB5APNeRs4R7fYZSwW3TcrTKw2gx",
]
USDT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
CONTRACT_FIELDS = {"id", "address", "token", "observed_amount", "amount", "state", "serial", "cost_sun", "txid",
                   "created_at", "updated_at"}  # fmt: skip


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    text = (
        (REPO / "config.example.toml")
        .read_text()
        .replace('url = "sqlite:///sweeper.db"', f'url = "{db_url}"')
    )
    path = tmp_path / "sweeper.toml"
    path.write_text(text)
    return path


def run(config: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--config", str(config), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    "command", [["sweeps", "list"], ["addresses", "list"], ["stats"], ["sweeps", "show", "1"]]
)
def test_unmigrated_database_exits_2_naming_migrate(
    config: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(config, *command, capsys=capsys)
    assert code == 2
    assert "run `sweeper migrate`" in err


def test_migrate_is_safe_to_rerun(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = head_revision()
    assert run(config, "migrate", capsys=capsys)[:2] == (0, f"ledger schema upgraded from empty to {head}\n")
    assert run(config, "migrate", capsys=capsys)[:2] == (
        0,
        f"ledger schema already at the newest revision ({head})\n",
    )


def test_import_reports_bad_lines_and_changes_nothing(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config, "migrate", capsys=capsys)
    bad = tmp_path / "bad.txt"
    bad.write_text(f"{A[0]},0,shop zero\nTNotAnAddress\n{A[1]},x\n# comment\n\n{A[2]}\n")
    code, _, err = run(config, "addresses", "import", str(bad), capsys=capsys)
    assert code == 2
    assert f"{bad}:2: " in err and f"{bad}:3: hd_index 'x'" in err
    assert f"{bad}: nothing imported" in err
    assert json.loads(run(config, "addresses", "list", "--json", capsys=capsys)[1]) == []


def test_import_list_and_duplicates(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(config, "migrate", capsys=capsys)
    good = tmp_path / "good.txt"
    good.write_text(f"{A[0]},0,shop, with comma\n{A[1]}\n{A[0]},0,dup\n")
    code, out, _ = run(config, "addresses", "import", str(good), "--json", capsys=capsys)
    assert code == 0 and json.loads(out) == {"imported": 2, "already_known": 0}
    code, out, _ = run(config, "addresses", "import", str(good), "--json", capsys=capsys)
    assert json.loads(out) == {"imported": 0, "already_known": 2}
    listed = json.loads(run(config, "addresses", "list", "--json", capsys=capsys)[1])
    assert [(a["address"], a["hd_index"], a["label"], a["source"]) for a in listed] == [
        (A[0], 0, "shop, with comma", "import"),
        (A[1], None, None, "import"),
    ]


def test_import_refuses_the_destination(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config, "migrate", capsys=capsys)
    f = tmp_path / "dest.txt"
    f.write_text("TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMW\n")
    code, _, err = run(config, "addresses", "import", str(f), capsys=capsys)
    assert code == 2 and "wallet.destination" in err


def _ledger(db_url: str) -> Ledger:
    return Ledger(make_engine(db_url))


def _migrated_with_addresses(
    config: Path, tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> Ledger:
    """`sweeper migrate`, then `addresses import` of the three test addresses; the ledger."""
    run(config, "migrate", capsys=capsys)
    f = tmp_path / "a.txt"
    f.write_text("\n".join(A))
    run(config, "addresses", "import", str(f), capsys=capsys)
    return _ledger(db_url)


def test_sweeps_list_show_cancel_retry_stats(
    config: Path, tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = _migrated_with_addresses(config, tmp_path, db_url, capsys)
    first = ledger.queue_sweep(A[0], "USDT", USDT, 125_500_000)
    second = ledger.queue_sweep(A[1], "USDT", USDT, 10_000_000)
    assert first and second
    ledger.transition(first, SweepState.QUEUED, SweepState.ORDERING, reason="claimed")
    ledger.transition(first, SweepState.ORDERING, SweepState.FAILED, reason="provider rejected the order",
                      changes={"last_error": "bad address"})  # fmt: skip

    code, out, _ = run(config, "sweeps", "list", "--json", capsys=capsys)
    rows = json.loads(out)
    assert code == 0 and [r["id"] for r in rows] == [second, first]
    assert rows[0].keys() >= CONTRACT_FIELDS
    assert (rows[1]["observed_amount"], rows[1]["amount"], rows[1]["state"]) == ("125.5", "125.5", "failed")
    assert (
        json.loads(run(config, "sweeps", "list", "--state", "queued", "--json", capsys=capsys)[1])[0]["id"]
        == second
    )
    code, _, err = run(config, "sweeps", "list", "--state", "lost", capsys=capsys)
    assert code == 2 and "not a sweep state" in err

    shown = json.loads(run(config, "sweeps", "show", str(first), "--json", capsys=capsys)[1])
    assert [(e["from_state"], e["to_state"]) for e in shown["events"]] == [
        (None, "queued"), ("queued", "ordering"), ("ordering", "failed"),
    ]  # fmt: skip
    assert shown["last_error"] == "bad address"
    code, _, err = run(config, "sweeps", "show", "999", capsys=capsys)
    assert code == 2 and "sweep 999 does not exist" in err

    code, _, err = run(config, "sweeps", "retry", str(second), capsys=capsys)
    assert code == 2 and "only a failed sweep" in err
    code, out, _ = run(config, "sweeps", "retry", str(first), "--json", capsys=capsys)
    retried = json.loads(out)
    assert code == 0 and retried["retried"] == first
    assert ledger.get_sweep(retried["new_id"]).retry_of == first

    code, _, err = run(config, "sweeps", "cancel", str(first), capsys=capsys)
    assert code == 2 and "only a queued sweep" in err
    assert run(config, "sweeps", "cancel", str(second), capsys=capsys)[0] == 0
    assert ledger.get_sweep(second).state is SweepState.CANCELLED

    stats = json.loads(run(config, "stats", "--json", capsys=capsys)[1])
    assert stats["sweeps_by_state"]["failed"] == 1 and stats["sweeps_by_state"]["cancelled"] == 1
    assert stats["sweeps_by_state"]["queued"] == 1 and stats["deposit_addresses"] == 3
    ledger.engine.dispose()


def test_tables_on_a_tty(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:

    run(config, "migrate", capsys=capsys)
    out = Tty()
    assert main(["--config", str(config), "stats"], out=out) == 0
    assert "STATE" in out.getvalue() and "queued" in out.getvalue()
    out = Tty()
    assert main(["--config", str(config), "sweeps", "list"], out=out) == 0
    assert "ID" in out.getvalue().splitlines()[0]


def test_held_addresses_are_listed_released_and_counted(
    config: Path, tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger = _migrated_with_addresses(config, tmp_path, db_url, capsys)
    failed = ledger.queue_sweep(A[0], "USDT", USDT, 20_000_000)
    assert failed
    ledger.transition(failed, SweepState.QUEUED, SweepState.ORDERING, reason="claimed")
    ledger.transition(
        failed, SweepState.ORDERING, SweepState.FAILED, reason="frozen (isBlackListed)", hold=True
    )

    listed = {
        r["address"]: r for r in json.loads(run(config, "addresses", "list", "--json", capsys=capsys)[1])
    }
    [hold] = listed[A[0]]["held"]
    assert (hold["token"], hold["sweep_id"], hold["reason"]) == ("USDT", failed, "frozen (isBlackListed)")
    assert listed[A[1]]["held"] == []
    stats = json.loads(run(config, "stats", "--json", capsys=capsys)[1])
    assert stats["held_addresses"] == 1 and stats["ordering_paused"] is None
    assert stats["spent_today_trx"] == "0" and stats["daily_cap_trx"] == "500"

    code, _, err = run(config, "addresses", "release", A[1], capsys=capsys)
    assert code == 2 and "is not held; nothing changed" in err
    code, _, err = run(config, "addresses", "release", "Tnope", capsys=capsys)
    assert code == 2 and "ADDRESS:" in err
    code, out, _ = run(config, "addresses", "release", A[0], "--token", "USDT", "--json", capsys=capsys)
    assert code == 0 and [r["address"] for r in json.loads(out)["released"]] == [A[0]]
    assert ledger.active_hold(A[0], "USDT") is None
    assert json.loads(run(config, "stats", "--json", capsys=capsys)[1])["held_addresses"] == 0
    ledger.engine.dispose()


def test_ordering_resume_lifts_the_persisted_pause(
    config: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(config, "migrate", capsys=capsys)
    ledger = _ledger(db_url)
    assert json.loads(run(config, "ordering", "resume", "--json", capsys=capsys)[1])["resumed"] is False
    ledger.set_pause("ordering", "order X cost 12 TRX")
    assert (
        json.loads(run(config, "stats", "--json", capsys=capsys)[1])["ordering_paused"]
        == "order X cost 12 TRX"
    )
    code, out, _ = run(config, "ordering", "resume", "--json", capsys=capsys)
    assert (
        code == 0
        and json.loads(out)["resumed"] is True
        and json.loads(out)["reason"] == "order X cost 12 TRX"
    )
    assert ledger.pause("ordering") is None
    ledger.engine.dispose()


def test_an_18_decimal_token_amount_is_exact_in_sweeps_list_and_stats(
    config: Path, tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 12: 10^27 + 1 base units of an 18-decimal token (a billion tokens and one wei)."""
    token = "TXYZopYRdj2D9XRtbG411XZZ3kM5VkAeBf"
    config.write_text(
        config.read_text()
        + f'\n[[tokens]]\nsymbol = "BIG"\ncontract = "{token}"\ndecimals = 18\nmin_sweep = "1"\n'
    )
    run(config, "migrate", capsys=capsys)
    f = tmp_path / "a.txt"
    f.write_text(A[0])
    run(config, "addresses", "import", str(f), capsys=capsys)
    ledger = _ledger(db_url)
    amount = 10**27 + 1
    sweep_id = ledger.queue_sweep(A[0], "BIG", token, amount)
    assert sweep_id is not None
    [row] = json.loads(run(config, "sweeps", "list", "--json", capsys=capsys)[1])
    assert row["observed_amount"] == "1000000000.000000000000000001"
    assert row["observed_amount_base_units"] == str(amount)
    for source, target in [
        (SweepState.QUEUED, SweepState.ORDERING), (SweepState.ORDERING, SweepState.ENERGY_READY),
        (SweepState.ENERGY_READY, SweepState.SIGNED), (SweepState.SIGNED, SweepState.BROADCAST),
        (SweepState.BROADCAST, SweepState.CONFIRMED),
    ]:  # fmt: skip
        ledger.transition(sweep_id, source, target, reason="test")
    stats = json.loads(run(config, "stats", "--json", capsys=capsys)[1])
    assert stats["swept"] == {"BIG": "1000000000.000000000000000001"}
    ledger.engine.dispose()


def test_trx_beside_usdt_in_sweeps_list_show_and_stats(
    config: Path, tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 17: a TRX sweep shows its kind, no contract, exact amounts and the fee it burnt; stats
    count TRX beside USDT and the fees burnt."""
    config.write_text(config.read_text() + '\n[[tokens]]\nsymbol = "TRX"\ndecimals = 6\nmin_sweep = "5"\n')
    ledger = _migrated_with_addresses(config, tmp_path, db_url, capsys)
    usdt = ledger.queue_sweep(A[0], "USDT", USDT, 25_000_000)
    trx = ledger.queue_sweep(A[1], "TRX", None, 20_000_000)
    assert usdt is not None and trx is not None
    S = SweepState
    ledger.transition(
        trx, S.QUEUED, S.SIGNED, reason="signed", exclusive=True, changes={"amount": 19_732_000}
    )
    ledger.transition(trx, S.SIGNED, S.BROADCAST, reason="sent")
    ledger.transition(trx, S.BROADCAST, S.CONFIRMED, reason="ok", changes={"fee_sun": 268_000})
    rows = {r["token"]: r for r in json.loads(run(config, "sweeps", "list", "--json", capsys=capsys)[1])}
    assert (rows["TRX"]["asset_kind"], rows["TRX"]["token_contract"]) == ("trx", None)
    assert (rows["TRX"]["amount"], rows["TRX"]["fee_sun"], rows["TRX"]["fee_trx"]) == (
        "19.732",
        268_000,
        "0.268",
    )
    assert (rows["USDT"]["asset_kind"], rows["USDT"]["token_contract"], rows["USDT"]["fee_sun"]) == (
        "token", USDT, None,
    )  # fmt: skip
    shown = json.loads(run(config, "sweeps", "show", str(trx), "--json", capsys=capsys)[1])
    assert [e["to_state"] for e in shown["events"]] == ["queued", "signed", "broadcast", "confirmed"]
    stats = json.loads(run(config, "stats", "--json", capsys=capsys)[1])
    assert stats["swept"] == {"TRX": "19.732"}
    assert (stats["fee_burnt_sun"], stats["fee_burnt_trx"]) == (268_000, "0.268")

    out = Tty()
    assert main(["--config", str(config), "stats"], out=out) == 0
    assert "swept TRX: 19.732" in out.getvalue() and "fees burnt:        0.268 TRX" in out.getvalue()
    out = Tty()
    assert main(["--config", str(config), "sweeps", "list"], out=out) == 0
    assert any(" TRX " in line and "19.732" in line for line in out.getvalue().splitlines())
    ledger.engine.dispose()
