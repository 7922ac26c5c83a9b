"""What the TRON client answers and signs: blocks, account resources, the resource check, transfer
simulations, unsigned and signed transfers, broadcast results, transaction status and Transfer events,
and the plan of a native TRX sweep.

Money is integers (sun, token base units) throughout. A transfer's `token` is the TRC20 contract's
T-address, or None for native TRX (a TransferContract, no fee_limit).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal

from sweeper.chain.errors import UnsafeTransaction

USDT_MAINNET: Final = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
# Bandwidth of a signed TRC20 transfer is ~345 bytes (serialized tx + 64); a little headroom.
TRANSFER_BANDWIDTH: Final = 350
DEFAULT_LIFETIME_MS: Final = 60_000


@dataclass(frozen=True)
class BlockRef:
    number: int
    block_id: str
    timestamp_ms: int


@dataclass(frozen=True)
class AccountResources:
    address: str
    activated: bool
    trx_sun: int
    energy_limit: int  # delegated + staked energy
    energy_used: int
    net_limit: int  # delegated + staked bandwidth (bytes)
    net_used: int
    free_net_limit: int  # daily free bandwidth (activated accounts only)
    free_net_used: int

    @property
    def energy_available(self) -> int:
        return max(0, self.energy_limit - self.energy_used)

    @property
    def net_available(self) -> int:
        return max(0, self.net_limit - self.net_used)

    @property
    def free_net_available(self) -> int:
        return max(0, self.free_net_limit - self.free_net_used)

    def covers_bandwidth(self, needed: int) -> bool:
        # java-tron pays a transaction's bytes from staked/delegated bandwidth OR from the free
        # allowance, never from both together; otherwise it burns TRX.
        return self.net_available >= needed or self.free_net_available >= needed


@dataclass(frozen=True)
class ResourceCheck:
    """Whether `owner` can send the transfer now paying only with delegated energy and bandwidth."""

    ok: bool
    activated: bool
    energy_needed: int
    energy_available: int
    bandwidth_needed: int
    bandwidth_available: int  # the larger of delegated and free bandwidth left
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Simulation:
    """What a constant call of the exact transfer says it would do (nothing is sent or signed)."""

    reverted: bool
    energy_used: int  # as the node says; ALREADY includes any energy penalty (never add energy_penalty)
    energy_penalty: int  # informational only (0 when absent)
    message: str  # decoded revert reason / result message, "" on success


@dataclass(frozen=True)
class UnsignedTransfer:
    """A verified, not yet signed transfer: TRC20 (`token` its contract) or native TRX (`token` None,
    `fee_limit_sun` 0). `raw_data` is exactly what gets signed."""

    txid: str
    raw_data: dict[str, Any]
    owner: str
    destination: str
    token: str | None
    amount: int
    fee_limit_sun: int
    expiration_ms: int
    # When it was built (monotonic): its remaining lifetime is counted on this process's own clock
    # from the node's head-block stamp, never from the host's wall clock.
    built_monotonic: float = field(default_factory=time.monotonic, compare=False)

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expiration_ms / 1000, UTC)

    def remaining_ms(self) -> int:
        """Lifetime left: stamped lifetime (expiration - timestamp, both the node's head time at
        build) less the time spent since building."""
        lifetime = self.expiration_ms - int(self.raw_data.get("timestamp", self.expiration_ms))
        return lifetime - int((time.monotonic() - self.built_monotonic) * 1000)


@dataclass(frozen=True)
class SignedTransfer:
    """A signed transfer: store `to_json()` (with txid and expiration) BEFORE broadcasting it."""

    txid: str
    raw_data: dict[str, Any]
    signature: str  # 65 bytes hex
    owner: str
    destination: str
    token: str | None  # None: native TRX
    amount: int
    fee_limit_sun: int
    expiration_ms: int

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expiration_ms / 1000, UTC)

    def broadcast_payload(self) -> dict[str, Any]:
        return {"txID": self.txid, "raw_data": self.raw_data, "signature": [self.signature], "visible": False}

    def to_json(self) -> str:
        """The signed transaction as the ledger stores it (re-broadcast these exact bytes)."""
        return json.dumps(self.broadcast_payload(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SignedTransfer:
        """Load a stored transaction, re-deriving every field from raw_data and checking the signature."""
        # Imported here: `transfers` builds this module's types, so it imports this module.
        from sweeper.chain.transfers import _check_txid, _recover_signer, decode_transfer

        try:
            data = json.loads(text)
            raw = data["raw_data"]
            signature = str(data["signature"][0])
            txid = str(data["txID"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise UnsafeTransaction("the stored transaction is not a signed TRON transaction") from None
        decoded = decode_transfer(raw)
        _check_txid(raw, txid)
        signer = _recover_signer(txid, signature)
        if signer != decoded.owner:
            raise UnsafeTransaction(f"the stored transaction's signature is by {signer}, not {decoded.owner}")
        return cls(
            txid=txid,
            raw_data=raw,
            signature=signature,
            owner=decoded.owner,
            destination=decoded.destination,
            token=decoded.token,
            amount=decoded.amount,
            fee_limit_sun=decoded.fee_limit_sun,
            expiration_ms=decoded.expiration_ms,
        )


class BroadcastOutcome(StrEnum):
    ACCEPTED = "accepted"
    ALREADY_KNOWN = "already_known"  # DUP_TRANSACTION_ERROR: the node has these bytes already


@dataclass(frozen=True)
class BroadcastResult:
    txid: str
    outcome: BroadcastOutcome


class TxState(StrEnum):
    CONFIRMED = "confirmed"  # in a solidified block, receipt SUCCESS
    FAILED = "failed"  # in a solidified block, receipt not SUCCESS (reason says why)
    PENDING = "pending"  # not solidified (yet): may still be included
    EXPIRED = "expired"  # can no longer be included anywhere: safe to rebuild


@dataclass(frozen=True)
class TokenTransfer:
    """Money moved by a transaction: a TRC20 Transfer event (`log_index` its place in the logs), or a
    native TRX TransferContract (`token` None, `log_index` 0, amount in sun)."""

    txid: str
    token: str | None
    sender: str
    recipient: str
    amount: int
    log_index: int


@dataclass(frozen=True)
class TransferStatus:
    txid: str
    state: TxState
    reason: str | None = None  # for FAILED: receipt result and the node's message
    block_number: int | None = None
    fee_sun: int = 0  # TRX burnt (energy + bandwidth)
    energy_used: int = 0  # total energy, delegated included
    net_usage: int = 0
    transfers: tuple[TokenTransfer, ...] = field(default=())


@dataclass(frozen=True)
class DecodedTransfer:
    owner: str
    token: str | None  # None: a TRX TransferContract
    destination: str
    amount: int
    fee_limit_sun: int
    expiration_ms: int
    timestamp_ms: int


PaidBy = Literal["staked", "free", "burn", "new-account"]


@dataclass(frozen=True)
class TrxSweepPlan:
    """How much of an address's TRX a sweep can send and what the chain will charge for it
    (`sweeper.chain.trx.plan_trx_sweep`; java-tron's rules are quoted there).

    `fee_sun` is everything the sender pays beyond `amount_sun`: the bandwidth burnt (`bandwidth_bytes`
    x getTransactionFee, or getCreateAccountFee to a new account) plus, to a new account, the
    TransferActuator's getCreateNewAccountFeeInSystemContract. `paid_by` says how the bandwidth is
    paid: "staked" (staked/delegated bandwidth, to a new account too), "free" (the daily free
    bandwidth; never to a new account), "burn" (bytes x fee per byte) or "new-account" (the
    create-account fee burnt instead). `left_sun` = balance - amount - fee stays on the address: 0,
    or less than one byte's fee where the amount's varint size flips. Nothing to send: amount 0,
    fee 0, `left_sun` the whole balance.
    """

    balance_sun: int
    amount_sun: int
    fee_sun: int
    bandwidth_bytes: int
    paid_by: PaidBy
    destination_exists: bool
    left_sun: int


@dataclass(frozen=True)
class TrxSweep:
    """A planned TRX sweep and its verified unsigned transfer (None when nothing can be sent)."""

    plan: TrxSweepPlan
    unsigned: UnsignedTransfer | None
