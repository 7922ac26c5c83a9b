"""Pure functions for native TRX sweeps, no I/O: a TransferContract's raw_data built locally, its
bandwidth in bytes, and the plan of how much of a balance a sweep can send.

java-tron's rules, as read in its source (tronprotocol/java-tron, master of May 2025):

- `chainbase/.../db/BandwidthProcessor.java` `consume`: the bytes charged are the Transaction
  serialized WITHOUT its `ret` (`toBuilder().clearRet()`), plus `Constant.MAX_RESULT_SIZE_IN_TX` (64)
  per contract. They are paid all-or-nothing, in this order: staked/delegated bandwidth
  (`useAccountNet`: `NetLimit - NetUsed >= bytes`), the daily free bandwidth (`useFreeNet`:
  `freeNetLimit - freeNetUsed >= bytes`), else `bytes * getTransactionFee` sun burnt from the sender
  (`useTransactionFee`); a balance below that is an AccountResourceInsufficientException, which a
  broadcast answers BANDWITH_ERROR "Account resource insufficient error." (`Wallet.broadcastTransaction`).
- The same `consume`, when the transfer creates its destination (`contractCreateNewAccount`: the
  to_address has no account): `consumeForCreateNewAccount` instead. Free bandwidth is never used:
  staked bandwidth if it covers `bytes * getCreateNewAccountBandwidthRate` (1 on mainnet: the rate
  is taken as 1 here), else `getCreateAccountFee` (100,000 sun on mainnet) is burnt in place of the
  per-byte fee.
- `actuator/.../TransferActuator.java`: `validate` runs after the bandwidth was charged (Manager
  `processTransaction`: `consumeBandwidth` before `trace.exec`) and wants `balance >= amount + fee`,
  where fee is `getCreateNewAccountFeeInSystemContract` (1,000,000 sun on mainnet) to a new account
  and 0 otherwise (TRANSFER_FEE); `execute` takes `amount + fee` from the owner and records the fee
  in the result, so TransactionInfo.fee (`TransactionUtil.buildTransactionInfoInstance`: result fee +
  net fee + energy fee ...) is everything burnt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from tronpy.proto.transaction import _raw_data_to_protobuf
from tronpy.proto.tron_pb2 import Transaction

from sweeper.chain.models import BlockRef, PaidBy, TrxSweepPlan
from sweeper.domain import address_to_hex, check_tron_address

TRANSFER_CONTRACT_TYPE_URL: Final = "type.googleapis.com/protocol.TransferContract"
# java-tron Constant.MAX_RESULT_SIZE_IN_TX: bytes charged per contract on top of the transaction.
MAX_RESULT_SIZE_IN_TX: Final = 64
# java-tron Constant.PER_SIGN_LENGTH: a signature is 65 bytes (r, s, v).
SIGNATURE_LENGTH: Final = 65
_DUMMY_SIGNATURE: Final = bytes(SIGNATURE_LENGTH)


def transfer_raw_data(
    owner: str,
    destination: str,
    amount_sun: int,
    *,
    ref_block: BlockRef,
    timestamp_ms: int,
    expiration_ms: int,
) -> dict[str, Any]:
    """A TransferContract's raw_data exactly as java-tron's `wallet/createtransaction` answers it with
    visible=false (0x41 hex addresses), built locally so its size is known before it is signed.

    TAPOS as java-tron's `TransactionCapsule.setReference`: ref_block_bytes = the reference block
    number's bytes [6:8], ref_block_hash = its id's bytes [8:16]. No fee_limit (no VM runs)."""
    check_tron_address(owner)
    check_tron_address(destination)
    for number, name in (
        (amount_sun, "amount_sun"),
        (timestamp_ms, "timestamp_ms"),
        (expiration_ms, "expiration_ms"),
    ):
        if not isinstance(number, int) or isinstance(number, bool) or number <= 0:
            raise ValueError(f"{name} must be a positive integer")
    if len(ref_block.block_id) != 64:
        raise ValueError("the reference block's id must be 32 bytes of hex")
    return {
        "contract": [
            {
                "parameter": {
                    "value": {
                        "amount": amount_sun,
                        "owner_address": address_to_hex(owner),
                        "to_address": address_to_hex(destination),
                    },
                    "type_url": TRANSFER_CONTRACT_TYPE_URL,
                },
                "type": "TransferContract",
            }
        ],
        "ref_block_bytes": ref_block.number.to_bytes(8, "big")[6:8].hex(),
        "ref_block_hash": ref_block.block_id[16:32].lower(),
        "expiration": expiration_ms,
        "timestamp": timestamp_ms,
    }


def bandwidth_bytes(raw_data: dict[str, Any]) -> int:
    """The bandwidth java-tron charges for this one-contract transaction once signed: the Transaction
    serialized without `ret`, with one 65-byte signature, + MAX_RESULT_SIZE_IN_TX (64)."""
    signed = Transaction(raw_data=_raw_data_to_protobuf(raw_data), signature=[_DUMMY_SIGNATURE])
    return len(signed.SerializeToString()) + MAX_RESULT_SIZE_IN_TX


def plan_trx_sweep(
    balance_sun: int,
    *,
    bytes_for: Callable[[int], int],
    net_available: int,
    free_net_available: int,
    destination_exists: bool,
    fee_per_byte: int,
    create_account_fee: int,
    create_new_account_fee_in_system_contract: int,
) -> TrxSweepPlan:
    """The largest amount a TransferContract from an address holding `balance_sun` can send, and what
    the chain charges for it (the rules: this module's docstring).

    `bytes_for(amount)` is the bandwidth of the transfer of `amount` (`bandwidth_bytes` of its
    raw_data): the size depends on the amount (a varint), so the fee does too. When the bandwidth is
    covered (staked; or free, to an existing destination) the whole balance goes. Otherwise the
    amount is the largest `a` with `a + fee(a) <= balance`: `fee(a)` never decreases with `a`, so
    `a + fee(a)` strictly increases and a binary search finds it. Away from a varint boundary that
    is `balance - fee` exactly (0 left); where the size flips (2**21, 2**28 ... sun), the amount just
    below the boundary is taken with the smaller fee and less than one byte's fee stays behind.
    (One more case leaves more: bandwidth that covers the smaller size but not the larger one; the
    amount then stops below the boundary, paid by that bandwidth, rather than burn a fee.)
    Nothing can be sent (the balance does not cover the fees): amount 0, fee 0, the balance left.
    """
    numbers = {
        "balance_sun": balance_sun,
        "net_available": net_available,
        "free_net_available": free_net_available,
        "fee_per_byte": fee_per_byte,
        "create_account_fee": create_account_fee,
        "create_new_account_fee_in_system_contract": create_new_account_fee_in_system_contract,
    }
    for name, number in numbers.items():
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise ValueError(f"{name} must be a non-negative integer")
    system_fee = 0 if destination_exists else create_new_account_fee_in_system_contract

    def charge(amount: int) -> tuple[int, int, PaidBy]:
        """(bytes, everything paid beyond the amount, how the bandwidth is paid) for `amount`."""
        size = bytes_for(amount)
        if not isinstance(size, int) or size <= 0:
            raise ValueError(f"bytes_for({amount}) is {size!r}, not a positive size")
        if destination_exists:
            if net_available >= size:
                return size, 0, "staked"
            if free_net_available >= size:
                return size, 0, "free"
            return size, size * fee_per_byte, "burn"
        if net_available >= size:
            return size, system_fee, "staked"
        return size, create_account_fee + system_fee, "new-account"

    def plan(amount: int, size: int, fee: int, paid_by: PaidBy) -> TrxSweepPlan:
        return TrxSweepPlan(
            balance_sun=balance_sun,
            amount_sun=amount,
            fee_sun=fee,
            bandwidth_bytes=size,
            paid_by=paid_by,
            destination_exists=destination_exists,
            left_sun=balance_sun - amount - fee,
        )

    if balance_sun <= 0:
        size, _, paid_by = charge(1)
        return plan(0, size, 0, paid_by)
    size, top_fee, paid_by = charge(balance_sun)
    if top_fee == 0:
        return plan(balance_sun, size, 0, paid_by)
    # fee(a) <= fee(balance) for every a <= balance, so balance - fee(balance) is always affordable.
    low, high = balance_sun - top_fee, balance_sun  # low affordable (or < 1), high not
    if low < 1:
        size, fee, paid_by = charge(1)
        if 1 + fee > balance_sun:
            return plan(0, size, 0, paid_by)
        low = 1
    while high - low > 1:
        middle = (low + high) // 2
        _, fee, _ = charge(middle)
        if middle + fee <= balance_sun:
            low = middle
        else:
            high = middle
    size, fee, paid_by = charge(low)
    return plan(low, size, fee, paid_by)
