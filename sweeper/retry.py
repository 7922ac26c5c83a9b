"""Retry and backoff: one policy type, every caller's defaults named once, here.

- `NODE_RETRY`: a TRON node request (429, 5xx, transport errors): 5 tries, 0.2 s doubling to 5 s.
- `PROVIDER_RETRY`: a provider GET, or a POST that provably never left: 4 tries, 0.5 s doubling to 10 s.
- `SWEEP_BACKOFF`: how long a sweep waits before its state is tried again after a transient
  problem (the pipeline's own backoff): 5 s doubling to 5 min, per attempt of the row.

Delays are jittered so many clients (or many rows) that failed together do not retry together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of one request: `attempts` tries in all (the first included), exponential backoff
    with equal jitter (half of each delay fixed, half random)."""

    attempts: int = 5
    base_delay: float = 0.2  # seconds before the first retry; doubled per retry
    max_delay: float = 5.0
    statuses: frozenset[int] = RETRY_STATUSES  # HTTP statuses worth another try

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("RetryPolicy delays must not be negative")

    def delay(self, retry: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Delay before retry number `retry` (1-based); a server's Retry-After is honoured up to
        `max_delay`."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        jittered = ceiling / 2 + rng.random() * ceiling / 2
        if retry_after is not None:
            return min(self.max_delay, max(jittered, retry_after))
        return jittered


@dataclass(frozen=True)
class Backoff:
    """How long a sweep waits after its `attempts`-th transient failure: `base` doubled per attempt
    up to `maximum`, spread ±25 % so rows that failed together come back apart."""

    base: float = 5.0
    maximum: float = 300.0

    def delay(self, attempts: int, rng: random.Random) -> float:
        growth: float = 2.0 ** min(attempts, 16)
        return min(self.maximum, self.base * growth) * (0.75 + rng.random() * 0.5)


NODE_RETRY: Final = RetryPolicy(attempts=5, base_delay=0.2, max_delay=5.0)
PROVIDER_RETRY: Final = RetryPolicy(attempts=4, base_delay=0.5, max_delay=10.0)
SWEEP_BACKOFF: Final = Backoff(base=5.0, maximum=300.0)
