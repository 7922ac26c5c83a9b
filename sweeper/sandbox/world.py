"""The sandbox's shared chain state: what the fake provider changes and the fake node serves.

Thread-safe: the fake servers may run in their own threads (uvicorn) while a test inspects the
world from another. Every mutation happens under `world.lock`.

Ownership: the TRON-access work owns blocks/transactions/broadcast execution (added here by it);
the provider sandbox only calls `activate`, `delegate_energy`, `add_bandwidth`, `holds_token`.
These signatures are a contract between the two fakes: extend, don't change.

The chain model follows java-tron closely where a sweeper could notice the difference:
- blocks are produced on demand (`produce_block`) or by a ticker the node runs; a block's id is its
  8-byte number followed by 24 bytes of hash, which is what TAPOS references;
- a broadcast is checked like java-tron does it (duplicate, TAPOS, expiration against the head
  block's time, signature recovering to the owner, bandwidth, contract validation), and rejected
  with java-tron's error codes; bandwidth is charged when the transaction is accepted;
- a TRX TransferContract follows java-tron's BandwidthProcessor.consume and TransferActuator (see
  `_accept_trx_transfer`): bandwidth first (staked, free, else bytes x getTransactionFee burnt; to
  a destination that does not exist: staked, else getCreateAccountFee burnt, never free), then the
  validation against the balance left (`balance >= amount + getCreateNewAccountFeeInSystemContract`
  to a new account); a refused broadcast changes nothing. As java-tron's pending state does, the
  owner's side (fees and amount) is taken at acceptance; the destination is created/credited when
  the block includes it, and a transfer that expires unmined gives the owner everything back;
- a TRC20 transfer executes when its block is produced: energy from delegation first, then the
  owner's TRX burnt, all capped at fee_limit / energy fee; short of that it FAILS with OUT_OF_ENERGY
  and burns the whole limit, as java-tron does;
- USDT behaves like Tether's TRC20 contract (`transfer` is `whenNotPaused` and
  `require(!isBlackListed[msg.sender])`, then `require(_value <= balances[msg.sender])`): a paused
  token (`pause_usdt`), a sender on the freeze list (`blacklist`) or an amount above the sender's
  balance REVERTs; the energy used up to the revert is charged like any other. A transfer uses
  64,285 energy to a holder, 130,285 to an address holding none, plus `usdt_energy_penalty` (the
  dynamic-energy penalty; a revert pays the penalty on the part that ran, pro rata);
- `usdt_transfer_run` is that model, shared by the executed transfer and the node's constant call
  (`triggerconstantcontract`, which answers for any owner, activated or not, with or without TRX);
- solidification trails the head by `solid_lag` blocks and can be held;
- transactions the sweeper never sends but must recognise in a block are recorded by helpers
  (`token_transfer`, `internal_deposit`: a payout contract's call whose USDT Transfer is emitted by an
  internal call, `failed_transfer_with_log`, `trx_transfer`): signed by a sandbox operator key,
  pending until the next block, their receipt written by the helper.
Time is `time.time()` plus `time_offset_ms`, so a test can move the chain's clock forward
(`advance_time`) to expire transactions without waiting.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tronpy.keys import PrivateKey, Signature, keccak256, to_base58check_address
from tronpy.proto import calculate_txid_from_raw_data
from tronpy.proto.transaction import _raw_data_to_protobuf
from tronpy.proto.tron_pb2 import Transaction

from sweeper.domain import address_to_hex

USDT_MAINNET = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"

# Energy a USDT transfer needs (tronpy-notes.md): recipient holds USDT / holds none.
USDT_ENERGY_OLD_HOLDER = 64_285
USDT_ENERGY_NEW_HOLDER = 130_285
# Energy a reverting transfer uses before the REVERT: an amount above the balance (checked last,
# after the two below), a sender on the freeze list (second), a paused token (the first modifier).
# Sandbox figures: only their order matters (each revert stops earlier than the next).
USDT_ENERGY_REVERT = 13_000
USDT_ENERGY_REVERT_BLACKLISTED = 1_470
USDT_ENERGY_REVERT_PAUSED = 760
# Energy of the view calls a constant call answers.
USDT_ENERGY_BALANCE_OF = 935
USDT_ENERGY_DECIMALS = 251
USDT_ENERGY_IS_BLACKLISTED = 605

TRANSFER_SELECTOR = "a9059cbb"  # transfer(address,uint256)
IS_BLACKLISTED_SELECTOR = "e47d6060"  # isBlackListed(address)
TRANSFER_EVENT_TOPIC = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"

# The sandbox's exchange payout contract (nobody holds a key to it) and the hot wallet that calls it:
# `payout(address,uint256)` makes the contract call the token's transfer, so the token's Transfer log
# is emitted by an internal call, followed by the contract's own `Payout(address,uint256)` event.
PAYOUT_CONTRACT = str(
    to_base58check_address("41" + hashlib.sha256(b"sandbox payout contract").hexdigest()[:40])
)
PAYOUT_SELECTOR = keccak256(b"payout(address,uint256)").hex()[:8]
PAYOUT_EVENT_TOPIC = keccak256(b"Payout(address,uint256)").hex()
OPERATOR_KEY = PrivateKey(hashlib.sha256(b"sandbox operator").digest())
OPERATOR = str(OPERATOR_KEY.public_key.to_base58check_address())

# java-tron: a transaction's expiration may be at most 24 h after the head block's time.
MAX_EXPIRATION_AHEAD_MS = 24 * 3600 * 1000
# java-tron: bytes charged on top of the serialized transaction (MAX_RESULT_SIZE_IN_TX).
RESULT_SIZE_IN_TX = 64
# java-tron: TAPOS looks back over the last 65,536 blocks.
TAPOS_WINDOW = 65_536
# java-tron Wallet.broadcastTransaction: the message of BANDWITH_ERROR, and the prefix of every
# CONTRACT_VALIDATE_ERROR message (Wallet.CONTRACT_VALIDATE_ERROR).
BANDWIDTH_ERROR_MESSAGE = "Account resource insufficient error."
CONTRACT_VALIDATE_PREFIX = "Contract validate error : "


@dataclass
class Account:
    address: str
    activated: bool = False
    trx_sun: int = 0
    delegated_energy: int = 0  # energy delegated to this account by others (the provider)
    energy_used: int = 0  # energy consumed from the delegation so far
    delegated_bandwidth: int = 0  # bandwidth bytes given to it (the provider covers a sweep's ~350)
    bandwidth_used: int = 0
    free_bandwidth_used: int = 0  # of the daily free bandwidth (activated accounts only)
    create_time_ms: int = 0

    @property
    def energy_available(self) -> int:
        return max(0, self.delegated_energy - self.energy_used)

    @property
    def bandwidth_available(self) -> int:
        return max(0, self.delegated_bandwidth - self.bandwidth_used)


@dataclass(frozen=True)
class Block:
    number: int
    block_id: str  # 64 hex chars: 8-byte number + 24 bytes of hash
    parent_id: str
    timestamp_ms: int
    txids: tuple[str, ...]


@dataclass
class Receipt:
    """What java-tron keeps as TransactionInfo; rendered by the node (visible or not)."""

    result: str  # receipt.result: SUCCESS, OUT_OF_ENERGY, REVERT
    energy_usage: int = 0  # from delegated/staked energy
    energy_fee_sun: int = 0  # TRX burnt for energy
    net_usage: int = 0  # bandwidth bytes from delegated/free bandwidth
    net_fee_sun: int = 0  # TRX burnt for bandwidth (getCreateAccountFee for a new account)
    # The actuator's own fee (TransactionResultCapsule.fee): TransferActuator's
    # getCreateNewAccountFeeInSystemContract when the transfer creates its destination.
    contract_fee_sun: int = 0
    energy_penalty: int = 0  # energy_penalty_total: the dynamic-energy part of the energy used
    res_message: str = ""
    # (contract T-address, topics as 32-byte hex, data hex)
    logs: list[tuple[str, list[str], str]] = field(default_factory=list)

    @property
    def fee_sun(self) -> int:
        """TransactionInfo.fee (TransactionUtil.buildTransactionInfoInstance): every sun burnt."""
        return self.energy_fee_sun + self.net_fee_sun + self.contract_fee_sun


@dataclass
class TxRecord:
    txid: str
    raw_data: dict[str, Any]
    raw_data_hex: str
    signature: list[str]
    owner: str
    contract_type: str
    contract: str | None  # TriggerSmartContract: the contract's T-address
    to: str | None
    amount: int
    fee_limit: int
    expiration_ms: int
    receipt: Receipt  # bandwidth filled at acceptance, the rest at execution
    block_number: int | None = None
    block_timestamp_ms: int | None = None
    energy_used_total: int = 0
    # Recorded by a world helper: its receipt is final; at inclusion only `moves` happen
    # ((token contract or None for TRX, recipient, amount) credited).
    scripted: bool = False
    moves: tuple[tuple[str | None, str, int], ...] = ()
    # A broadcast TRX transfer: the owner's side is already taken (fees and amount); what its
    # bandwidth took from the owner's staked / free bandwidth (given back if it expires unmined).
    staked_bytes: int = 0
    free_bytes: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "txID": self.txid,
            "raw_data": self.raw_data,
            "raw_data_hex": self.raw_data_hex,
            "signature": list(self.signature),
            "ret": [{"contractRet": self.receipt.result}] if self.block_number is not None else [],
        }


@dataclass(frozen=True)
class UsdtRun:
    """What a USDT transfer does when run (executed in a block or as a constant call)."""

    reverted: bool
    energy_used: int  # penalty included, as java-tron counts it
    energy_penalty: int
    reason: str = ""  # why it reverted (the sandbox's note; Tether's requires carry no message)


class NodeRejection(Exception):
    """A broadcast java-tron refuses: `code` is its response code, `message` its (plain) text."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def _addr(value: str) -> str:
    """Hex (41…) or base58 -> base58 T-address."""
    return str(to_base58check_address(value))


def _block_id(number: int, parent_id: str, timestamp_ms: int, txids: tuple[str, ...]) -> str:
    digest = hashlib.sha256(f"{number}|{parent_id}|{timestamp_ms}|{','.join(txids)}".encode()).hexdigest()
    return number.to_bytes(8, "big").hex() + digest[16:]


@dataclass
class World:
    usdt_contract: str = USDT_MAINNET
    # Plain TRC20 tokens besides USDT (contract -> decimals): same transfer energy model, no freeze
    # list, no pause. `add_token` registers one (tests of other tokens, e.g. 18 decimals).
    other_tokens: dict[str, int] = field(default_factory=dict)
    energy_fee_sun: int = 100  # sun per energy unit (chain parameter getEnergyFee)
    accounts: dict[str, Account] = field(default_factory=dict)
    # (contract, holder) -> base units
    token_balances: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # --- chain (owned by the TRON-access work) ---
    bandwidth_fee_sun: int = 1_000  # sun per byte when bandwidth is burnt (getTransactionFee)
    free_bandwidth: int = 600  # daily free bandwidth of an activated account (getFreeNetLimit)
    solid_lag: int = 19  # blocks between the head and the latest solidified block
    time_offset_ms: int = 0
    blocks: list[Block] = field(default_factory=list)
    transactions: dict[str, TxRecord] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)
    solid_number: int = 0
    solidification_held: bool = False
    inclusion_held: bool = False  # accepted transactions stay pending (never mined while held)

    # --- the USDT contract's state (Tether's TRC20) ---
    create_account_fee_sun: int = 100_000  # getCreateAccountFee
    create_new_account_fee_in_system_contract_sun: int = 1_000_000  # getCreateNewAccountFeeInSystemContract
    blacklisted: set[str] = field(default_factory=set)  # isBlackListed: their transfers revert
    usdt_paused: bool = False  # whenNotPaused: every transfer reverts
    usdt_energy_penalty: int = 0  # extra energy every USDT transfer uses (dynamic energy)

    def __post_init__(self) -> None:
        if not self.blocks:
            genesis_ts = self.now_ms()
            self.blocks.append(Block(0, _block_id(0, "00" * 32, genesis_ts, ()), "00" * 32, genesis_ts, ()))

    # --- accounts and tokens (the contract with the provider sandbox) ---

    def account(self, address: str) -> Account:
        """The account record, created (not activated) on first sight."""
        with self.lock:
            acct = self.accounts.get(address)
            if acct is None:
                acct = self.accounts[address] = Account(address)
            return acct

    def activate(self, address: str) -> None:
        with self.lock:
            acct = self.account(address)
            if not acct.activated:
                acct.activated = True
                acct.create_time_ms = self.now_ms()

    def delegate_energy(self, address: str, amount: int) -> None:
        with self.lock:
            self.account(address).delegated_energy += amount

    def add_bandwidth(self, address: str, amount: int) -> None:
        with self.lock:
            self.account(address).delegated_bandwidth += amount

    def use_free_bandwidth(self, address: str, amount: int | None = None) -> None:
        """Spend `amount` bytes of the account's daily free bandwidth (all of it by default)."""
        with self.lock:
            acct = self.account(address)
            acct.free_bandwidth_used = (
                self.free_bandwidth if amount is None else acct.free_bandwidth_used + amount
            )

    def reset_free_bandwidth(self, address: str) -> None:
        """A new day: the account's free bandwidth is whole again."""
        with self.lock:
            self.account(address).free_bandwidth_used = 0

    def exists(self, address: str) -> bool:
        """Whether java-tron's account store has the account (`wallet/getaccount` is not `{}`)."""
        with self.lock:
            acct = self.accounts.get(address)
            return acct is not None and acct.activated

    def token_balance(self, contract: str, holder: str) -> int:
        with self.lock:
            return self.token_balances.get((contract, holder), 0)

    def holds_token(self, contract: str, holder: str) -> bool:
        return self.token_balance(contract, holder) > 0

    def credit_token(self, contract: str, holder: str, amount: int) -> None:
        """A deposit arriving (tests and the demo use this to fund deposit addresses)."""
        with self.lock:
            key = (contract, holder)
            self.token_balances[key] = self.token_balances.get(key, 0) + amount

    def credit_trx(self, address: str, sun: int) -> None:
        """TRX arriving; like on chain, receiving TRX activates the account."""
        with self.lock:
            self.activate(address)
            self.account(address).trx_sun += sun

    def reclaim_energy(self, address: str) -> None:
        """The provider takes its delegation back (an order ending early)."""
        with self.lock:
            acct = self.account(address)
            acct.delegated_energy = acct.energy_used

    # --- the USDT contract ---

    def blacklist(self, address: str, on: bool = True) -> None:
        """Tether's addBlackList / removeBlackList."""
        with self.lock:
            if on:
                self.blacklisted.add(address)
            else:
                self.blacklisted.discard(address)

    def is_blacklisted(self, address: str) -> bool:
        with self.lock:
            return address in self.blacklisted

    def pause_usdt(self, on: bool = True) -> None:
        """Tether's pause / unpause."""
        with self.lock:
            self.usdt_paused = on

    def set_energy_penalty(self, amount: int) -> None:
        if amount < 0:
            raise ValueError("the energy penalty cannot be negative")
        with self.lock:
            self.usdt_energy_penalty = amount

    def add_token(self, contract: str, decimals: int) -> None:
        with self.lock:
            self.other_tokens[contract] = decimals

    def is_token(self, contract: str) -> bool:
        return contract == self.usdt_contract or contract in self.other_tokens

    def decimals(self, contract: str) -> int:
        return 6 if contract == self.usdt_contract else self.other_tokens[contract]

    def usdt_transfer_run(self, owner: str, to: str, amount: int, contract: str | None = None) -> UsdtRun:
        """`transfer(to, amount)` from `owner` on the world's USDT (in the order Tether checks), or on
        another registered token (`contract`: the same energy model, no freeze list, no pause)."""
        contract = contract or self.usdt_contract
        with self.lock:
            if contract == self.usdt_contract:
                if self.usdt_paused:
                    return self._revert(USDT_ENERGY_REVERT_PAUSED, "paused")
                if owner in self.blacklisted:
                    return self._revert(USDT_ENERGY_REVERT_BLACKLISTED, "sender is blacklisted")
            if amount > self.token_balance(contract, owner):
                return self._revert(USDT_ENERGY_REVERT, "amount above the balance")
            base = USDT_ENERGY_OLD_HOLDER if self.holds_token(contract, to) else USDT_ENERGY_NEW_HOLDER
            penalty = self.usdt_energy_penalty
            return UsdtRun(False, base + penalty, penalty)

    def _revert(self, base: int, reason: str) -> UsdtRun:
        penalty = self.usdt_energy_penalty * base // USDT_ENERGY_OLD_HOLDER
        return UsdtRun(True, base + penalty, penalty, reason)

    # --- time and blocks ---

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.time_offset_ms

    def advance_time(self, seconds: float) -> None:
        with self.lock:
            self.time_offset_ms += int(seconds * 1000)

    @property
    def head(self) -> Block:
        with self.lock:
            return self.blocks[-1]

    @property
    def solid_head(self) -> Block:
        with self.lock:
            return self.blocks[self.solid_number]

    def block(self, number: int) -> Block | None:
        with self.lock:
            return self.blocks[number] if 0 <= number < len(self.blocks) else None

    def hold_solidification(self, held: bool = True) -> None:
        with self.lock:
            self.solidification_held = held
            if not held:
                self._update_solid()

    def hold_inclusion(self, held: bool = True) -> None:
        with self.lock:
            self.inclusion_held = held

    def produce_block(self) -> Block:
        """Mine one block: pending transactions that are still valid are executed and included."""
        with self.lock:
            parent = self.blocks[-1]
            number = parent.number + 1
            timestamp = max(self.now_ms(), parent.timestamp_ms + 1)
            included: list[str] = []
            if not self.inclusion_held:
                for txid in self.pending:
                    tx = self.transactions[txid]
                    # java-tron re-validates against the head (parent) time when applying a block.
                    if tx.expiration_ms <= parent.timestamp_ms:
                        self.forget_transaction(txid)
                        continue
                    included.append(txid)
                self.pending = []
            txids = tuple(included)
            block = Block(
                number,
                _block_id(number, parent.block_id, timestamp, txids),
                parent.block_id,
                timestamp,
                txids,
            )
            self.blocks.append(block)
            for txid in txids:
                tx = self.transactions[txid]
                tx.block_number = number
                tx.block_timestamp_ms = timestamp
                self._execute(tx)
            self._update_solid()
            return block

    def produce_blocks(self, count: int) -> Block:
        with self.lock:
            block = self.head
            for _ in range(count):
                block = self.produce_block()
            return block

    def solidify_all(self) -> Block:
        """Mine the pending transactions, then produce blocks until all of it is solidified."""
        with self.lock:
            if self.pending and not self.inclusion_held:
                self.produce_block()
            target = self.head.number
            while self.solid_number < target and not self.solidification_held:
                self.produce_block()
            return self.solid_head

    def _update_solid(self) -> None:
        if not self.solidification_held:
            self.solid_number = max(self.solid_number, self.head.number - self.solid_lag)

    # --- transactions ---

    def transaction(self, txid: str) -> TxRecord | None:
        with self.lock:
            return self.transactions.get(txid)

    def forget_transaction(self, txid: str) -> None:
        """Drop a transaction that was accepted but never mined (expired, or lost by the node): the
        pending state java-tron built for it is gone, so a TRX transfer's owner gets back its amount,
        its fees and its bandwidth."""
        with self.lock:
            tx = self.transactions.get(txid)
            if tx is None or tx.block_number is not None:
                return
            del self.transactions[txid]
            if txid in self.pending:
                self.pending.remove(txid)
            if tx.contract_type == "TransferContract" and not tx.scripted:
                owner = self.account(tx.owner)
                owner.trx_sun += tx.amount + tx.receipt.net_fee_sun + tx.receipt.contract_fee_sun
                owner.bandwidth_used -= tx.staked_bytes
                owner.free_bandwidth_used -= tx.free_bytes

    def calculate_txid(self, raw_data: dict[str, Any]) -> str:
        return str(calculate_txid_from_raw_data(raw_data))

    def accept_transaction(self, tx: dict[str, Any]) -> TxRecord:
        """Validate a signed transaction like java-tron's broadcast and put it in the pending pool.

        Raises NodeRejection with java-tron's code. The txid is computed from raw_data: whatever
        `txID` the client sent is ignored, as java-tron does.
        """
        raw = tx.get("raw_data")
        if not isinstance(raw, dict):
            raise NodeRejection("OTHER_ERROR", "raw_data is missing")
        try:
            txid = self.calculate_txid(raw)
            proto_raw = _raw_data_to_protobuf(raw)
        except (KeyError, ValueError, TypeError) as exc:
            raise NodeRejection("OTHER_ERROR", f"cannot parse transaction: {type(exc).__name__}") from None
        signatures = [str(s) for s in tx.get("signature") or []]
        with self.lock:
            if txid in self.transactions:
                raise NodeRejection("DUP_TRANSACTION_ERROR", "Dup transaction.")
            contracts = raw.get("contract") or []
            if len(contracts) != 1:
                raise NodeRejection("CONTRACT_VALIDATE_ERROR", "tx contract size should be exactly 1")
            self._check_tapos(raw)
            head_ts = self.head.timestamp_ms
            expiration = int(raw.get("expiration", 0))
            if expiration <= head_ts or expiration > head_ts + MAX_EXPIRATION_AHEAD_MS:
                raise NodeRejection(
                    "TRANSACTION_EXPIRATION_ERROR",
                    f"Transaction expiration, transaction expiration time is {expiration}, "
                    f"but headBlockTime is {head_ts}",
                )
            contract = contracts[0]
            ctype = str(contract.get("type"))
            value = contract["parameter"]["value"]
            owner = _addr(value["owner_address"])
            if not signatures:
                raise NodeRejection("SIGERROR", "Validate signature error: miss sig or contract")
            signature_bytes: list[bytes] = []
            try:
                # Inside the try: a signature that is not even hex is a SIGERROR like any other.
                signature_bytes = [bytes.fromhex(s) for s in signatures]
                signer = (
                    Signature(signature_bytes[0])
                    .recover_public_key_from_msg_hash(bytes.fromhex(txid))
                    .to_base58check_address()
                )
            except Exception:  # any malformed signature is a SIGERROR
                signer = None
            if signer != owner or len(signatures) != 1:
                raise NodeRejection(
                    "SIGERROR",
                    f"Validate signature error: {signatures[0][:16]}… is signed by {signer} but it is not "
                    f"contained of permission.",
                )
            size = len(Transaction(raw_data=proto_raw, signature=signature_bytes).SerializeToString())
            raw_hex = proto_raw.SerializeToString().hex()
            if ctype == "TransferContract":  # bandwidth first, then the balance check (java-tron)
                record = self._accept_trx_transfer(
                    txid, raw, raw_hex=raw_hex, signatures=signatures, owner=owner, value=value,
                    size=size + RESULT_SIZE_IN_TX,
                )  # fmt: skip
            else:
                record = self._validate_contract(
                    txid, raw, raw_hex=raw_hex, signatures=signatures, owner=owner, ctype=ctype, value=value
                )
                self._charge_bandwidth(record, size + RESULT_SIZE_IN_TX)
            self.transactions[txid] = record
            self.pending.append(txid)
            return record

    def _check_tapos(self, raw: dict[str, Any]) -> None:
        try:
            ref_num = int(str(raw["ref_block_bytes"]), 16)
            ref_hash = str(raw["ref_block_hash"])
        except (KeyError, ValueError):
            raise NodeRejection("TAPOS_ERROR", "Tapos check error") from None
        head = self.head.number
        for number in range(head, max(-1, head - TAPOS_WINDOW), -1):
            if number & 0xFFFF == ref_num:
                if self.blocks[number].block_id[16:32] == ref_hash:
                    return
                break
        raise NodeRejection(
            "TAPOS_ERROR",
            f"Tapos check error, ref_block_bytes {raw['ref_block_bytes']} ref_block_hash {ref_hash}",
        )

    def _validate_contract(
        self,
        txid: str,
        raw: dict[str, Any],
        *,
        raw_hex: str,
        signatures: list[str],
        owner: str,
        ctype: str,
        value: dict[str, Any],
    ) -> TxRecord:
        acct = self.accounts.get(owner)
        if acct is None or not acct.activated:
            raise NodeRejection("CONTRACT_VALIDATE_ERROR", f"Validate {ctype} error, no OwnerAccount.")

        def record(contract: str | None, to: str, amount: int, fee_limit: int) -> TxRecord:
            return TxRecord(
                txid=txid,
                raw_data=raw,
                raw_data_hex=raw_hex,
                signature=signatures,
                owner=owner,
                contract_type=ctype,
                contract=contract,
                to=to,
                amount=amount,
                fee_limit=fee_limit,
                expiration_ms=int(raw["expiration"]),
                receipt=Receipt(result="SUCCESS"),
            )

        if ctype != "TriggerSmartContract":
            raise NodeRejection("CONTRACT_VALIDATE_ERROR", f"sandbox node does not execute {ctype}")
        contract = _addr(value["contract_address"])
        if not self.is_token(contract):
            raise NodeRejection("CONTRACT_VALIDATE_ERROR", "No contract or not a smart contract")
        fee_limit = int(raw.get("fee_limit", 0))
        if fee_limit < 0 or fee_limit > 15_000_000_000:
            raise NodeRejection("CONTRACT_VALIDATE_ERROR", "feeLimit must be >= 0 and <= 15000000000")
        data = str(value.get("data", ""))
        if not data.startswith(TRANSFER_SELECTOR) or len(data) != 8 + 128:
            raise NodeRejection(
                "CONTRACT_VALIDATE_ERROR", "sandbox node only executes transfer(address,uint256)"
            )
        to = _addr("41" + data[8 + 24 : 8 + 64])
        amount = int(data[8 + 64 :], 16)
        return record(contract, to, amount, fee_limit)

    def _accept_trx_transfer(
        self,
        txid: str,
        raw: dict[str, Any],
        *,
        raw_hex: str,
        signatures: list[str],
        owner: str,
        value: dict[str, Any],
        size: int,
    ) -> TxRecord:
        """A TransferContract as java-tron's Manager.processTransaction takes it at broadcast.

        1. BandwidthProcessor.consume: the owner must exist ("account [..] does not exist"); to a
           destination that does not exist (`consumeForCreateNewAccount`): staked bandwidth if it
           covers the bytes, else getCreateAccountFee burnt, never the free bandwidth; otherwise
           staked, free, else bytes x getTransactionFee burnt; a balance short of the burn is
           BANDWITH_ERROR "Account resource insufficient error." (Wallet.broadcastTransaction).
        2. TransferActuator.validate, on the balance left: not to itself, amount > 0, and
           `balance >= amount + fee` (fee: getCreateNewAccountFeeInSystemContract to a new account).
           A refusal is CONTRACT_VALIDATE_ERROR "Contract validate error : <message>", and the
           session is rolled back: the bandwidth charge is undone.
        3. TransferActuator.execute takes amount + fee from the owner (here at acceptance; the
           destination is created and credited when a block includes it).
        """
        acct = self.accounts.get(owner)
        if acct is None or not acct.activated:
            raise NodeRejection(
                "CONTRACT_VALIDATE_ERROR", f"{CONTRACT_VALIDATE_PREFIX}account [{owner}] does not exist"
            )
        to = _addr(value["to_address"])
        amount = value.get("amount", 0)
        new_account = not self.exists(to)
        receipt = Receipt(result="SUCCESS")
        record = TxRecord(
            txid=txid,
            raw_data=raw,
            raw_data_hex=raw_hex,
            signature=signatures,
            owner=owner,
            contract_type="TransferContract",
            contract=None,
            to=to,
            amount=int(amount),
            fee_limit=0,
            expiration_ms=int(raw["expiration"]),
            receipt=receipt,
        )
        before = (acct.trx_sun, acct.bandwidth_used, acct.free_bandwidth_used)
        if new_account:
            if acct.bandwidth_available >= size:  # x getCreateNewAccountBandwidthRate (1)
                acct.bandwidth_used += size
                record.staked_bytes = receipt.net_usage = size
            elif acct.trx_sun >= self.create_account_fee_sun:
                acct.trx_sun -= self.create_account_fee_sun
                receipt.net_fee_sun = self.create_account_fee_sun
            else:
                raise NodeRejection("BANDWITH_ERROR", BANDWIDTH_ERROR_MESSAGE)
        else:
            self._charge_bandwidth(record, size)
            record.staked_bytes = acct.bandwidth_used - before[1]
            record.free_bytes = acct.free_bandwidth_used - before[2]
        fee = self.create_new_account_fee_in_system_contract_sun if new_account else 0
        if to == owner:
            message = "Cannot transfer TRX to yourself."
        elif not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            message = "Amount must be greater than 0."
        elif acct.trx_sun < amount + fee:
            message = "Validate TransferContract error, balance is not sufficient."
        else:
            acct.trx_sun -= amount + fee
            receipt.contract_fee_sun = fee
            return record
        acct.trx_sun, acct.bandwidth_used, acct.free_bandwidth_used = before
        raise NodeRejection("CONTRACT_VALIDATE_ERROR", CONTRACT_VALIDATE_PREFIX + message)

    def _charge_bandwidth(self, tx: TxRecord, size: int) -> None:
        acct = self.accounts[tx.owner]
        if acct.bandwidth_available >= size:
            acct.bandwidth_used += size
            tx.receipt.net_usage = size
        elif acct.activated and self.free_bandwidth - acct.free_bandwidth_used >= size:
            acct.free_bandwidth_used += size
            tx.receipt.net_usage = size
        elif acct.trx_sun >= size * self.bandwidth_fee_sun:
            acct.trx_sun -= size * self.bandwidth_fee_sun
            tx.receipt.net_fee_sun = size * self.bandwidth_fee_sun
        else:
            raise NodeRejection("BANDWITH_ERROR", BANDWIDTH_ERROR_MESSAGE)

    # --- transactions recorded by helpers (never broadcast by the sweeper) ---

    def _record_call(
        self,
        contract: str,
        data: str,
        *,
        receipt: Receipt,
        energy: int,
        to: str,
        amount: int,
        moves: tuple[tuple[str | None, str, int], ...] = (),
        contract_type: str = "TriggerSmartContract",
    ) -> TxRecord:
        """Sign and queue (pending until the next block) a transaction from the operator."""
        with self.lock:
            head = self.head
            if contract_type == "TransferContract":
                value: dict[str, Any] = {
                    "amount": amount,
                    "owner_address": address_to_hex(OPERATOR),
                    "to_address": address_to_hex(to),
                }
                type_url = "type.googleapis.com/protocol.TransferContract"
            else:
                value = {
                    "data": data,
                    "owner_address": address_to_hex(OPERATOR),
                    "contract_address": address_to_hex(contract),
                }
                type_url = "type.googleapis.com/protocol.TriggerSmartContract"
            raw: dict[str, Any] = {
                "contract": [{"parameter": {"value": value, "type_url": type_url}, "type": contract_type}],
                "ref_block_bytes": head.block_id[12:16],
                "ref_block_hash": head.block_id[16:32],
                "expiration": head.timestamp_ms + 60_000,
                "timestamp": self.now_ms(),
            }
            if contract_type != "TransferContract":
                raw["fee_limit"] = 100_000_000
            txid = self.calculate_txid(raw)
            while txid in self.transactions:  # the same call twice in one millisecond
                raw["timestamp"] += 1
                txid = self.calculate_txid(raw)
            raw_hex = _raw_data_to_protobuf(raw).SerializeToString().hex()
            signature = OPERATOR_KEY.sign_msg_hash(bytes.fromhex(txid)).hex()
            record = TxRecord(
                txid=txid,
                raw_data=raw,
                raw_data_hex=raw_hex,
                signature=[signature],
                owner=OPERATOR,
                contract_type=contract_type,
                contract=None if contract_type == "TransferContract" else contract,
                to=to,
                amount=amount,
                fee_limit=int(raw.get("fee_limit", 0)),
                expiration_ms=int(raw["expiration"]),
                receipt=receipt,
                energy_used_total=energy,
                scripted=True,
                moves=moves,
            )
            self.transactions[txid] = record
            self.pending.append(txid)
            return record

    def token_transfer(self, recipient: str, amount: int, *, token: str | None = None) -> TxRecord:
        """A plain, successful `transfer(recipient, amount)` on the token (USDT by default) from the
        operator: one Transfer log, the recipient credited when the next block includes it."""
        token = token or self.usdt_contract
        receipt = Receipt(
            result="SUCCESS",
            energy_usage=USDT_ENERGY_OLD_HOLDER,
            net_usage=345,
            logs=[_transfer_log(token, OPERATOR, recipient, amount)],
        )
        return self._record_call(
            token,
            _call(TRANSFER_SELECTOR, recipient, amount),
            receipt=receipt,
            energy=USDT_ENERGY_OLD_HOLDER,
            to=recipient,
            amount=amount,
            moves=((token, recipient, amount),),
        )

    def internal_deposit(self, recipient: str, amount: int, *, token: str | None = None) -> TxRecord:
        """An exchange payout: the operator calls PAYOUT_CONTRACT's `payout(recipient, amount)`, which
        calls the token's transfer. The transaction's contract_address is the payout contract; its
        first log is the TOKEN's Transfer(PAYOUT_CONTRACT -> recipient), the second the payout's event."""
        token = token or self.usdt_contract
        receipt = Receipt(
            result="SUCCESS",
            energy_usage=USDT_ENERGY_OLD_HOLDER + 9_000,
            net_usage=313,
            logs=[
                _transfer_log(token, PAYOUT_CONTRACT, recipient, amount),
                (PAYOUT_CONTRACT, [PAYOUT_EVENT_TOPIC, _word(recipient)], f"{amount:064x}"),
            ],
        )
        return self._record_call(
            PAYOUT_CONTRACT,
            _call(PAYOUT_SELECTOR, recipient, amount),
            receipt=receipt,
            energy=USDT_ENERGY_OLD_HOLDER + 9_000,
            to=recipient,
            amount=amount,
            moves=((token, recipient, amount),),
        )

    def failed_transfer_with_log(self, recipient: str, amount: int, *, token: str | None = None) -> TxRecord:
        """A REVERTed token transfer that nevertheless carries a Transfer log to `recipient` (java-tron
        clears a failed transaction's logs; a reader must ignore them anyway). Nothing moves."""
        token = token or self.usdt_contract
        receipt = Receipt(
            result="REVERT",
            energy_usage=USDT_ENERGY_REVERT,
            net_usage=345,
            res_message="REVERT opcode executed",
            logs=[_transfer_log(token, OPERATOR, recipient, amount)],
        )
        return self._record_call(
            token,
            _call(TRANSFER_SELECTOR, recipient, amount),
            receipt=receipt,
            energy=USDT_ENERGY_REVERT,
            to=recipient,
            amount=amount,
        )

    def trx_transfer(self, recipient: str, sun: int) -> TxRecord:
        """A TRX transfer from the operator (no logs; its receipt has no result, as java-tron's)."""
        return self._record_call(
            "",
            "",
            receipt=Receipt(result="SUCCESS", net_usage=268),
            energy=0,
            to=recipient,
            amount=sun,
            moves=((None, recipient, sun),),
            contract_type="TransferContract",
        )

    def _execute(self, tx: TxRecord) -> None:
        if tx.scripted:
            for token, recipient, amount in tx.moves:
                if token is None:
                    self.credit_trx(recipient, amount)
                else:
                    self.credit_token(token, recipient, amount)
            return
        owner = self.account(tx.owner)
        receipt = tx.receipt
        if tx.contract is None:  # TRX transfer: the owner's side was taken at acceptance
            self.credit_trx(str(tx.to), tx.amount)
            return
        assert tx.to is not None
        balance = self.token_balance(tx.contract, tx.owner)
        run = self.usdt_transfer_run(tx.owner, tx.to, tx.amount, tx.contract)
        needed = run.energy_used
        # java-tron: the energy a call may use is capped by fee_limit / energy fee (delegated energy
        # included) and by what the owner can pay (delegated energy + TRX balance / energy fee).
        limit = min(
            tx.fee_limit // self.energy_fee_sun, owner.energy_available + owner.trx_sun // self.energy_fee_sun
        )
        used = min(needed, limit)
        from_delegation = min(owner.energy_available, used)
        burnt = (used - from_delegation) * self.energy_fee_sun
        owner.energy_used += from_delegation
        owner.trx_sun -= burnt
        receipt.energy_usage = from_delegation
        receipt.energy_fee_sun = burnt
        receipt.energy_penalty = run.energy_penalty * used // needed if needed else 0
        tx.energy_used_total = used
        if needed > limit:
            receipt.result = "OUT_OF_ENERGY"
            receipt.res_message = (
                f"Not enough energy for 'PUSH1' operation executing: curInvokeEnergyLimit[{limit}], "
                f"curOpEnergy[{needed - limit}], usedEnergy[{limit}]"
            )
            return
        if run.reverted:
            receipt.result = "REVERT"
            receipt.res_message = "REVERT opcode executed"
            return
        self.token_balances[(tx.contract, tx.owner)] = balance - tx.amount
        self.credit_token(tx.contract, tx.to, tx.amount)
        receipt.logs.append(
            (
                tx.contract,
                [
                    TRANSFER_EVENT_TOPIC,
                    "00" * 12 + _hex20(tx.owner),
                    "00" * 12 + _hex20(tx.to),
                ],
                f"{tx.amount:064x}",
            )
        )


def _hex20(address: str) -> str:
    return address_to_hex(address)[2:]


def _word(address: str) -> str:
    """An address as a 32-byte ABI word / event topic (hex)."""
    return "00" * 12 + _hex20(address)


def _call(selector: str, address: str, amount: int) -> str:
    return selector + _word(address) + f"{amount:064x}"


def _transfer_log(token: str, sender: str, recipient: str, amount: int) -> tuple[str, list[str], str]:
    return (token, [TRANSFER_EVENT_TOPIC, _word(sender), _word(recipient)], f"{amount:064x}")
