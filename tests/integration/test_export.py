"""`sweeper sweeps export`: the accounting export (issue 18), on SQLite and Postgres alike.

The ledger is driven through real transitions with an injected clock, so the sweeps reach their
final states on different UTC days; the command runs through `sweeper.cli.main`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest

from sweeper.cli import main
from sweeper.domain import SweepState
from sweeper.export import COLUMNS, TOTALS_COLUMNS, Window, export_lines
from sweeper.ledger import Ledger, NewAddress, make_engine
from tests.conftest import REPO, FakeClock, Tty
from tests.constants import DESTINATION, USDT

S = SweepState
A1 = "TUEZSdKsoDHQMeZwihtdoBiN46zxhGWYdH"
A2 = "TSeJkUh4Qv67VNFwY8LaAxERygNdy6NQZK"
A3 = "TYJPRrdB5APNeRs4R7fYZSwW3TcrTKw2gx"
WTK = "TRANp1sx5NdxVE1Uoo3kmpYY23F9X8J5st"  # an 18-decimal token in the config
OLD = "TSick6AZzPLR5KYxD68ujq2evjrwmvyZde"  # a token no longer in the config
BIG = 12345678901234567890123456789012345678901234567890123456789012345678901234567  # 77 digits
DAY1 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
DAY2 = datetime(2026, 1, 2, 8, 30, 0, 123456, tzinfo=UTC)
DAY3 = datetime(2026, 1, 3, 0, 0, 0, tzinfo=UTC)  # exactly midnight: the --until boundary


@pytest.fixture
def config(tmp_path: Path, db_url: str) -> Path:
    text = (
        (REPO / "config.example.toml")
        .read_text()
        .replace('url = "sqlite:///sweeper.db"', f'url = "{db_url}"')
    )
    text += (
        '\n[[tokens]]\nsymbol = "TRX"\ndecimals = 6\nmin_sweep = "5"\n'
        f'\n[[tokens]]\nsymbol = "WTK"\ncontract = "{WTK}"\ndecimals = 18\nmin_sweep = "1"\n'
    )
    path = tmp_path / "sweeper.toml"
    path.write_text(text)
    return path


def run(config: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["--config", str(config), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def export_json(config: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    code, out, err = run(config, "sweeps", "export", "--format", "json", *args, capsys=capsys)
    assert (code, err) == (0, "")
    document = json.loads(out)
    # Written item by item, and still exactly the document json.dumps(indent=2) would print.
    assert out == json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return dict(document)


def txid(n: int) -> str:
    return f"{n:064x}"


@dataclass
class Book:
    """The sweeps the tests export, by name."""

    ids: dict[str, int]
    ledger: Ledger


def _token_confirmed(
    ledger: Ledger,
    clock: FakeClock,
    address: str,
    symbol: str,
    contract: str,
    amount: int,
    *,
    at: datetime,
    serial: str,
    cost: int,
    refund: int | None = None,
    fee: int | None = None,
    n: int,
) -> int:
    clock.current = at - timedelta(minutes=5)
    sid = ledger.queue_sweep(address, symbol, contract, amount)
    assert sid is not None
    ledger.transition(sid, S.QUEUED, S.ORDERING, reason="claimed")
    ledger.transition(
        sid, S.ORDERING, S.ENERGY_ORDERED, reason="ordered", changes={"serial": serial, "cost_sun": cost}
    )
    ready = {} if refund is None else {"refund_sun": refund}
    ledger.transition(sid, S.ENERGY_ORDERED, S.ENERGY_READY, reason="ready", changes=ready)
    ledger.transition(
        sid,
        S.ENERGY_READY,
        S.SIGNED,
        reason="signed",
        changes={"amount": amount, "destination": DESTINATION, "txid": txid(n)},
    )
    ledger.transition(sid, S.SIGNED, S.BROADCAST, reason="sent")
    clock.current = at
    ledger.transition(sid, S.BROADCAST, S.CONFIRMED, reason="ok", changes={"fee_sun": fee})
    return sid


@pytest.fixture
def book(config: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> Iterator[Book]:
    assert run(config, "migrate", capsys=capsys)[0] == 0
    clock = FakeClock(DAY1 - timedelta(hours=1))
    ledger = Ledger(make_engine(db_url), clock=clock)
    ledger.upsert_addresses([NewAddress(a, "import") for a in (A1, A2, A3)])
    ids: dict[str, int] = {}
    # Day 1: a USDT sweep confirmed at exactly 12:00 (order partly refunded, a fee burnt).
    ids["usdt"] = _token_confirmed(ledger, clock, A1, "USDT", USDT, 125_500_000, at=DAY1, serial="S-usdt",
                                   cost=3_100_000, refund=100_000, fee=345_000, n=1)  # fmt: skip
    # A TRX sweep: no order; the transfer paid its bandwidth out of the swept TRX.
    clock.current = DAY1 + timedelta(minutes=10)
    trx = ledger.queue_sweep(A2, "TRX", None, 5_000_000)
    assert trx is not None
    ledger.transition(trx, S.QUEUED, S.SIGNED, reason="signed", exclusive=True,
                      changes={"amount": 4_732_000, "destination": DESTINATION, "txid": txid(2)})  # fmt: skip
    ledger.transition(trx, S.SIGNED, S.BROADCAST, reason="sent")
    clock.current = DAY1 + timedelta(minutes=11)
    ledger.transition(trx, S.BROADCAST, S.CONFIRMED, reason="ok", changes={"fee_sun": 268_000})
    ids["trx"] = trx
    # A failed sweep whose order was paid (and partly refunded): exported, amount 0.
    clock.current = DAY1 + timedelta(hours=1)
    failed = ledger.queue_sweep(A3, "USDT", USDT, 50_000_000)
    assert failed is not None
    ledger.transition(failed, S.QUEUED, S.ORDERING, reason="claimed")
    ledger.transition(failed, S.ORDERING, S.ENERGY_ORDERED, reason="ordered",
                      changes={"serial": "S-failed", "cost_sun": 2_000_000})  # fmt: skip
    clock.current = DAY1 + timedelta(hours=2)
    ledger.transition(failed, S.ENERGY_ORDERED, S.FAILED, reason="order ended 41",
                      changes={"refund_sun": 500_000, "charge_sun": 1_500_000}, hold=True)  # fmt: skip
    ids["failed_paid"] = failed
    # Cost nothing, moved nothing: a cancelled and an unpaid failed sweep. Not exported.
    cancelled = ledger.queue_sweep(A1, "USDT", USDT, 11_000_000)
    assert cancelled is not None
    ledger.cancel(cancelled, reason="operator")
    ids["cancelled"] = cancelled
    unpaid = ledger.queue_sweep(A2, "USDT", USDT, 12_000_000)
    assert unpaid is not None
    ledger.transition(unpaid, S.QUEUED, S.ORDERING, reason="claimed")
    ledger.transition(unpaid, S.ORDERING, S.FAILED, reason="provider refused", cooldown=True)
    ids["failed_unpaid"] = unpaid
    # Open: not final, not exported.
    open_row = ledger.queue_sweep(A3, "TRX", None, 7_000_000)
    assert open_row is not None
    ids["open"] = open_row
    # Day 2: an 18-decimal token with a 77-digit amount; USDT again; a token no longer configured.
    ids["wtk"] = _token_confirmed(ledger, clock, A1, "WTK", WTK, BIG, at=DAY2, serial="S-wtk",
                                  cost=1_000_000, n=3)  # fmt: skip
    ids["usdt2"] = _token_confirmed(ledger, clock, A1, "USDT", USDT, 10_000_000, at=DAY2 + timedelta(hours=1),
                                    serial="S-usdt2", cost=2_000_000, refund=250_000, fee=0, n=4)  # fmt: skip
    ids["old"] = _token_confirmed(ledger, clock, A2, "OLD", OLD, 5_000_000, at=DAY2 + timedelta(hours=2),
                                  serial="S-old", cost=1_500_000, n=5)  # fmt: skip
    # Day 3 at exactly 00:00:00 UTC.
    ids["midnight"] = _token_confirmed(ledger, clock, A2, "USDT", USDT, 20_000_000, at=DAY3,
                                       serial="S-midnight", cost=2_500_000, n=6)  # fmt: skip
    try:
        yield Book(ids, ledger)
    finally:
        ledger.engine.dispose()


EXPORTED = ["usdt", "trx", "failed_paid", "wtk", "usdt2", "old", "midnight"]


def _ids(book: Book, names: list[str]) -> list[int]:
    return [book.ids[n] for n in names]


def test_lines_columns_and_exact_values(config: Path, book: Book, capsys: pytest.CaptureFixture[str]) -> None:
    document = export_json(config, "--since", "2026-01-01", capsys=capsys)
    assert list(document) == ["since", "until", "sweeps"]
    assert (document["since"], document["until"]) == ("2026-01-01T00:00:00Z", None)
    lines = document["sweeps"]
    assert isinstance(lines, list)
    assert [line["sweep_id"] for line in lines] == _ids(book, EXPORTED)
    assert all(list(line) == list(COLUMNS) for line in lines)
    by_id = {line["sweep_id"]: line for line in lines}
    assert by_id[book.ids["usdt"]] == {
        "time": "2026-01-01T12:00:00Z",
        "sweep_id": book.ids["usdt"],
        "address": A1,
        "asset": "USDT",
        "asset_kind": "token",
        "token_contract": USDT,
        "amount": "125.5",
        "amount_base_units": "125500000",
        "destination": DESTINATION,
        "txid": txid(1),
        "serial": "S-usdt",
        "energy_cost_sun": 3_000_000,
        "energy_cost_trx": "3",
        "fee_burnt_sun": 345_000,
        "fee_burnt_trx": "0.345",
        "final_state": "confirmed",
    }
    assert by_id[book.ids["trx"]] == {
        "time": "2026-01-01T12:11:00Z",
        "sweep_id": book.ids["trx"],
        "address": A2,
        "asset": "TRX",
        "asset_kind": "trx",
        "token_contract": None,
        "amount": "4.732",
        "amount_base_units": "4732000",
        "destination": DESTINATION,
        "txid": txid(2),
        "serial": None,
        "energy_cost_sun": 0,
        "energy_cost_trx": "0",
        "fee_burnt_sun": 268_000,
        "fee_burnt_trx": "0.268",
        "final_state": "confirmed",
    }
    # A failed sweep with a paid order: nothing moved, the order's cost less its refund.
    assert by_id[book.ids["failed_paid"]] == {
        "time": "2026-01-01T14:00:00Z",
        "sweep_id": book.ids["failed_paid"],
        "address": A3,
        "asset": "USDT",
        "asset_kind": "token",
        "token_contract": USDT,
        "amount": "0",
        "amount_base_units": "0",
        "destination": None,
        "txid": None,
        "serial": "S-failed",
        "energy_cost_sun": 1_500_000,
        "energy_cost_trx": "1.5",
        "fee_burnt_sun": 0,
        "fee_burnt_trx": "0",
        "final_state": "failed",
    }
    wtk = by_id[book.ids["wtk"]]
    whole, frac = divmod(BIG, 10**18)
    assert (wtk["amount"], wtk["amount_base_units"]) == (f"{whole}.{frac:018d}".rstrip("0"), str(BIG))
    assert wtk["time"] == "2026-01-02T08:30:00.123456Z"
    assert Fraction(wtk["amount"]) * 10**18 == BIG  # Fraction: exact, unlike a 28-digit Decimal
    # Not in the config any more: base units rather than guessed decimals.
    assert by_id[book.ids["old"]]["amount"] == "5000000"
    for name in ("cancelled", "failed_unpaid", "open"):
        assert book.ids[name] not in by_id


def test_since_and_until_boundaries(config: Path, book: Book, capsys: pytest.CaptureFixture[str]) -> None:
    def exported(*args: str) -> list[int]:
        document = export_json(config, *args, capsys=capsys)
        lines = document["sweeps"]
        assert isinstance(lines, list)
        return [line["sweep_id"] for line in lines]

    # --since inclusive (the USDT sweep is final at exactly 12:00:00), to the microsecond.
    assert exported("--since", "2026-01-01T12:00:00Z") == _ids(book, EXPORTED)
    assert exported("--since", "2026-01-01T12:00:00.000001Z") == _ids(book, EXPORTED[1:])
    assert exported("--since", "2026-01-01T13:00:00+01:00") == _ids(book, EXPORTED)  # an offset: as UTC
    # --until exclusive: the midnight sweep belongs to the next day.
    assert exported("--since", "2026-01-01", "--until", "2026-01-03") == _ids(book, EXPORTED[:-1])
    assert exported("--since", "2026-01-02", "--until", "2026-01-03") == _ids(book, ["wtk", "usdt2", "old"])
    assert exported("--since", "2026-01-03") == _ids(book, ["midnight"])
    assert exported("--since", "2026-01-02", "--until", "2026-01-02T09:00:00Z") == _ids(book, ["wtk"])
    document = export_json(config, "--since", "2030-01-01", "--until", "2030-01-02", capsys=capsys)
    assert document == {"since": "2030-01-01T00:00:00Z", "until": "2030-01-02T00:00:00Z", "sweeps": []}


def test_csv_parses_back_to_the_json_values(
    config: Path, book: Book, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = export_json(config, "--since", "2026-01-01", capsys=capsys)["sweeps"]
    assert isinstance(lines, list)
    code, out, _ = run(config, "sweeps", "export", "--since", "2026-01-01", "--format", "csv", capsys=capsys)
    assert code == 0
    assert out.endswith("\r\n") and out.count("\r\n") == len(lines) + 1  # RFC 4180 line ends
    header, *rows = list(csv.reader(io.StringIO(out, newline="")))
    assert header == list(COLUMNS)
    assert rows == [["" if v is None else str(v) for v in line.values()] for line in lines]


def test_totals_per_asset_and_day_are_the_sums_of_the_lines(
    config: Path, book: Book, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = export_json(config, "--since", "2026-01-01", capsys=capsys)["sweeps"]
    assert isinstance(lines, list)
    document = export_json(config, "--since", "2026-01-01", "--totals", capsys=capsys)
    assert list(document) == ["since", "until", "totals"]
    totals = document["totals"]
    assert isinstance(totals, list)
    assert all(list(t) == list(TOTALS_COLUMNS) for t in totals)
    assert [(t["day"], t["asset"], t["sweeps"]) for t in totals] == [
        ("2026-01-01", "TRX", 1),
        ("2026-01-01", "USDT", 2),
        ("2026-01-02", "OLD", 1),
        ("2026-01-02", "USDT", 1),
        ("2026-01-02", "WTK", 1),
        ("2026-01-03", "USDT", 1),
    ]
    for total in totals:
        mine = [
            line for line in lines if line["time"][:10] == total["day"] and line["asset"] == total["asset"]
        ]
        assert total["sweeps"] == len(mine)
        assert int(total["amount_base_units"]) == sum(int(line["amount_base_units"]) for line in mine)
        assert Fraction(total["amount"]) == sum(Fraction(line["amount"]) for line in mine)
        assert total["energy_cost_sun"] == sum(line["energy_cost_sun"] for line in mine)
        assert Fraction(total["energy_cost_trx"]) == sum(Fraction(line["energy_cost_trx"]) for line in mine)
        assert total["fee_burnt_sun"] == sum(line["fee_burnt_sun"] for line in mine)
        assert Fraction(total["fee_burnt_trx"]) == sum(Fraction(line["fee_burnt_trx"]) for line in mine)
    usdt_day1 = totals[1]
    assert (usdt_day1["amount"], usdt_day1["energy_cost_trx"], usdt_day1["fee_burnt_sun"]) == (
        "125.5",
        "4.5",
        345_000,
    )
    assert totals[4]["amount_base_units"] == str(BIG)
    # The energy cost over everything exported is Σ(cost − refund) of those sweeps, from the rows.
    rows = [book.ledger.get_sweep(i) for i in _ids(book, EXPORTED)]
    assert sum(t["energy_cost_sun"] for t in totals) == sum(
        (r.cost_sun or 0) - (r.refund_sun or 0) for r in rows
    )
    assert (
        sum(t["energy_cost_sun"] for t in totals)
        == 3_000_000 + 1_500_000 + 1_000_000 + 1_750_000 + 1_500_000 + 2_500_000
    )

    code, out, _ = run(config, "sweeps", "export", "--since", "2026-01-01", "--format", "csv", "--totals",
                       capsys=capsys)  # fmt: skip
    assert code == 0
    header, *csv_rows = list(csv.reader(io.StringIO(out, newline="")))
    assert header == list(TOTALS_COLUMNS)
    assert csv_rows == [[str(v) for v in t.values()] for t in totals]


def test_read_in_chunks_by_id(book: Book) -> None:
    window = Window(DAY1 - timedelta(days=1), None)
    whole = [line.sweep_id for line in export_lines(book.ledger.engine, window)]
    assert whole == _ids(book, EXPORTED)
    for chunk in (1, 2, 3):
        assert [line.sweep_id for line in export_lines(book.ledger.engine, window, chunk=chunk)] == whole


def test_the_format_decides_even_on_a_terminal(config: Path, book: Book) -> None:

    out = Tty()
    assert (
        main(["--config", str(config), "sweeps", "export", "--since", "2026-01-03", "--format", "csv"], out)
        == 0
    )
    assert next(csv.reader(io.StringIO(out.getvalue()))) == list(COLUMNS)
    out = Tty()
    assert (
        main(["--config", str(config), "sweeps", "export", "--since", "2026-01-03", "--format", "json"], out)
        == 0
    )
    assert [line["sweep_id"] for line in json.loads(out.getvalue())["sweeps"]] == [book.ids["midnight"]]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--since", "2026-13-01"], "--since: '2026-13-01'"),
        (["--since", "yesterday"], "--since: 'yesterday'"),
        (["--since", "2026-01-01T12:00:00"], "--since: '2026-01-01T12:00:00'"),  # no zone: ambiguous
        (["--since", "2026-01-01", "--until", "01/02/2026"], "--until: '01/02/2026'"),
        (["--since", "2026-01-02", "--until", "2026-01-02"], "--until: '2026-01-02' is not after"),
    ],
)
def test_a_bad_date_is_a_usage_error(
    config: Path, args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(config, "sweeps", "export", "--format", "json", *args, capsys=capsys)
    assert (code, out) == (2, "")
    assert f"sweeper: error: {named}" in err


def test_missing_or_unknown_format_is_a_usage_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--since", "2026-01-01"], ["--since", "2026-01-01", "--format", "xlsx"]):
        with pytest.raises(SystemExit) as exc:
            main(["--config", str(config), "sweeps", "export", *args])
        assert exc.value.code == 2
        assert "--format" in capsys.readouterr().err
