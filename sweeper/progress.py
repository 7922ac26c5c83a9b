"""Progress of long work (`scan`, `addresses import`, deriving a large HD range at the first start).

On a terminal (stderr a TTY): a bar with the count, the rate and the time left (rich), on stderr so
that stdout keeps the command's one result. Off a terminal (systemd, a pipe): one log line every
`every_seconds` with the same figures, and one when the work ends. Small work (under
`min_total`) shows nothing: a progress bar for 20 addresses is noise.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, TextIO, TypeVar

import structlog

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

T = TypeVar("T")

log = structlog.get_logger("sweeper.progress")

LOG_EVERY_SECONDS = 5.0
MIN_TOTAL = 1_000


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None,
        *,
        unit: str = "addresses",
        stream: TextIO | None = None,
        every_seconds: float = LOG_EVERY_SECONDS,
        min_total: int = MIN_TOTAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._every = every_seconds
        self._now = clock
        self._started = self._now()
        self._last_log = self._started
        self._quiet = total is not None and total < min_total
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        if not self._quiet and _isatty(self._stream):
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import (
                Progress as Bar,
            )

            bar = Bar(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self._stream, width=shutil.get_terminal_size((120, 24)).columns),
                transient=False,
            )
            self._task = bar.add_task(what, total=total, rate="")
            bar.start()
            self._bar = bar

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(ok=kind is None)

    @property
    def rate(self) -> float:
        elapsed = self._now() - self._started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.rate <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.rate)

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self._quiet:
            return
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{self.rate:,.0f} {self.unit}/s")
            return
        now = self._now()
        if now - self._last_log >= self._every:
            self._last_log = now
            self._log("progress")

    def close(self, *, ok: bool = True) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif not self._quiet and self._now() - self._started >= self._every:
            self._log("done" if ok else "stopped")

    def _log(self, event: str) -> None:
        eta = self.eta_seconds
        log.info(
            f"{self.what}: {event}",
            done=self.done,
            total=self.total,
            unit=self.unit,
            rate_per_second=round(self.rate, 1),
            eta_seconds=None if eta is None else round(eta),
        )


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def counted(items: Iterable[T], progress: Progress) -> Iterator[T]:
    """Yield `items`, advancing `progress` by one for each."""
    for item in items:
        yield item
        progress.advance()
