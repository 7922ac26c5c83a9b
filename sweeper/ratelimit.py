"""The client-side rate limit on TRON node requests, shared by the pipeline and the scanner."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class RateLimiter:
    """At most `rate` acquisitions per second on average, `burst` at once (GCRA, no background task).

    One instance is shared by every request of a `TronChain` (and may be passed to the scanner so
    that polling and the pipeline together stay under the node's limit). Use from one event loop.
    A slot is reserved before sleeping, so concurrent waiters are spaced fairly.
    """

    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError("rate must be > 0 requests per second")
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.rate = rate
        self.burst = burst
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._tat = float("-inf")  # theoretical arrival time of the next request
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        # One waiter at a time. A waiter that wakes late by up to half an interval (timer jitter)
        # keeps the schedule, so the rate does not drift down; one woken later (a stalled loop, a
        # busy CPU) restarts the schedule from now, so the slots that passed are not all used at once.
        async with self._lock:
            now = self._monotonic()
            tat = max(self._tat, now)
            wait = tat - self._tolerance - now
            if wait > 0:
                await self._sleep(wait)
                tat = max(tat, self._monotonic() - self._interval / 2)
            self._tat = tat + self._interval

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate}, burst={self.burst})"
