"""The provider client's errors, each saying what is known about the order (see `sweeper.provider`).

`ProviderError`, their base, lives in `sweeper.errors` (the project's one error root); texts never
contain the API key or secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweeper.errors import ProviderError


class ProviderUnavailable(ProviderError):
    """The provider could not be reached or answered 5xx; for a POST: nothing was ordered."""


class OrderOutcomeUnknown(ProviderError):
    """A POST was sent and its answer lost: the order may or may not exist. Query by out_trade_no."""


class InsufficientProviderBalance(ProviderError):
    """The provider refused the order and the account balance is too low: pause ordering."""

    def __init__(self, summary: str, *, balance_sun: int, **kwargs: Any) -> None:
        self.balance_sun = balance_sun
        super().__init__(f"{summary} balance_sun={balance_sun}", **kwargs)


class OrderRejected(ProviderError):
    """The provider refused this order (bad address …). Nothing was ordered."""

    def __init__(
        self, summary: str, *, field_errors: Mapping[str, tuple[str, ...]] | None = None, **kwargs: Any
    ) -> None:
        self.field_errors: Mapping[str, tuple[str, ...]] = dict(field_errors or {})
        super().__init__(summary, **kwargs)


class ProviderAuthError(ProviderError):
    """The API key (or secret) is not accepted."""


class UnexpectedAnswer(ProviderError):
    """A read (GET) got an answer this client cannot interpret; `raw` keeps it. Back off, retry later."""
