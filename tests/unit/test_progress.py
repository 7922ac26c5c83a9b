"""Progress of long work: a bar with rate and ETA on a terminal, a log line every few seconds off
one, nothing for small work."""

from __future__ import annotations

import io

import structlog.testing

from sweeper.progress import Progress, counted
from tests.conftest import Tty


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_log_line_every_few_seconds_with_rate_and_eta() -> None:
    clock, stream = Clock(), io.StringIO()
    with (
        structlog.testing.capture_logs() as logs,
        Progress("scan pass", 10_000, stream=stream, every_seconds=5, clock=clock) as progress,
    ):
        for _ in range(10):
            clock.now += 1
            progress.advance(500)  # 500 addresses a second
    assert stream.getvalue() == ""  # nothing on the stream: the log carries it
    lines = [e for e in logs if e["event"].startswith("scan pass")]
    assert [e["event"] for e in lines] == ["scan pass: progress", "scan pass: progress", "scan pass: done"]
    first = lines[0]
    assert (first["done"], first["total"], first["rate_per_second"], first["eta_seconds"]) == (
        2500,
        10_000,
        500.0,
        15,
    )
    assert lines[-1]["done"] == 5000


def test_on_a_terminal_a_bar_with_the_count_rate_and_eta() -> None:
    stream = Tty()
    with Progress("importing deposit addresses", 2_000, stream=stream) as progress:
        for _ in counted(range(2_000), progress):
            pass
    text = stream.getvalue()
    assert "importing deposit addresses" in text and "2000/2000" in text and "ETA" in text
    assert "addresses/s" in text


def test_small_work_shows_nothing() -> None:
    stream = Tty()
    with structlog.testing.capture_logs() as logs, Progress("scan pass", 20, stream=stream) as progress:
        progress.advance(20)
    assert stream.getvalue() == "" and logs == []
