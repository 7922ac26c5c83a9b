"""The errors the TRON node client raises, all under `sweeper.errors.ChainError` (the project's one
error root, `sweeper.errors`). Messages never contain keys or API keys."""

from __future__ import annotations

from sweeper.errors import ChainError


class ChainUnavailable(ChainError):
    """The node could not be reached or kept refusing (429/5xx/timeouts) after all retries: transient."""


class ChainResponseError(ChainError):
    """The node answered something we cannot use (error payload, malformed JSON, 4xx)."""


class UnsafeTransaction(ChainError):
    """The transaction is not exactly the transfer we meant (forged txid, other fields): never sign it."""


class TransactionExpired(ChainError):
    """The transaction's expiration has passed (or is too close): build a new one."""


class BroadcastRejected(ChainError):
    """The node refused the transaction; `code` is java-tron's response code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def expired(self) -> bool:
        """Expired or its reference block is unknown: the same bytes can never be accepted; rebuild."""
        return self.code in ("TRANSACTION_EXPIRATION_ERROR", "TAPOS_ERROR")


__all__ = [
    "BroadcastRejected",
    "ChainError",
    "ChainResponseError",
    "ChainUnavailable",
    "TransactionExpired",
    "UnsafeTransaction",
]
