"""TRON access on tronpy's `AsyncTron`: reads, safe transfer building and signing, broadcast, status.

Money is integers (sun, token base units) throughout. Secrets never appear in errors or reprs.

One concern per module (each imports only those above it; `models` reaches `transfers` lazily to
load a stored transaction):
- `errors`: ChainUnavailable, ChainResponseError, UnsafeTransaction, TransactionExpired and
  BroadcastRejected, under `ChainError` (defined in `sweeper.errors`, the project's error root);
- `models`: what the client answers and signs (BlockRef, AccountResources, ResourceCheck,
  Simulation, UnsignedTransfer, SignedTransfer, BroadcastResult, TransferStatus, TokenTransfer, …)
  and their constants (USDT_MAINNET, TRANSFER_BANDWIDTH, DEFAULT_LIFETIME_MS);
- `transfers`: pure functions, no I/O: a transfer's call data, its strict decoding and verification
  before signing (why: see there), signature recovery, Transfer-event decoding (`deposits_in_block`:
  a block's deposits to watched addresses, for the follower), and the parsing of constant-call
  answers (java-tron's forms: see there);
- `transport`: the HTTP layer, tronpy's `AsyncHTTPProvider` subclassed for our API key, the shared
  rate limiter (`sweeper.ratelimit.RateLimiter`) and retries (`sweeper.retry.RetryPolicy`,
  `NODE_RETRY` by default);
- `client`: `TronChain`, everything the scanner and the pipeline ask the node.

The public names are re-exported here: `from sweeper.chain import TronChain, ...` is the way in.
"""

from __future__ import annotations

from sweeper.chain.client import TronChain
from sweeper.chain.errors import (
    BroadcastRejected,
    ChainError,
    ChainResponseError,
    ChainUnavailable,
    TransactionExpired,
    UnsafeTransaction,
)
from sweeper.chain.models import (
    DEFAULT_LIFETIME_MS,
    TRANSFER_BANDWIDTH,
    USDT_MAINNET,
    AccountResources,
    BlockRef,
    BroadcastOutcome,
    BroadcastResult,
    DecodedTransfer,
    ResourceCheck,
    SignedTransfer,
    Simulation,
    TokenTransfer,
    TransferStatus,
    TxState,
    UnsignedTransfer,
)
from sweeper.chain.transfers import (
    ERROR_SELECTOR,
    IS_BLACKLISTED_SELECTOR,
    PANIC_SELECTOR,
    TRANSFER_SELECTOR,
    TRANSFER_TOPIC,
    decode_transfer,
    decode_transfer_logs,
    deposits_in_block,
    hex20,
    token_keys,
    transfer_data,
    verify_transfer,
)

__all__ = [
    "DEFAULT_LIFETIME_MS",
    "ERROR_SELECTOR",
    "IS_BLACKLISTED_SELECTOR",
    "PANIC_SELECTOR",
    "TRANSFER_BANDWIDTH",
    "TRANSFER_SELECTOR",
    "TRANSFER_TOPIC",
    "USDT_MAINNET",
    "AccountResources",
    "BlockRef",
    "BroadcastOutcome",
    "BroadcastRejected",
    "BroadcastResult",
    "ChainError",
    "ChainResponseError",
    "ChainUnavailable",
    "DecodedTransfer",
    "ResourceCheck",
    "SignedTransfer",
    "Simulation",
    "TokenTransfer",
    "TransactionExpired",
    "TransferStatus",
    "TronChain",
    "TxState",
    "UnsafeTransaction",
    "UnsignedTransfer",
    "decode_transfer",
    "decode_transfer_logs",
    "deposits_in_block",
    "hex20",
    "token_keys",
    "transfer_data",
    "verify_transfer",
]
