"""In-process fakes of what the pipeline needs from the TRON node and the energy provider.

They implement `sweeper.protocols.SweepChain` and `EnergyProvider` without sockets, so a unit test
drives one step's decision in milliseconds. They are strict where a wrong call would cost money in
production: the chain checks the txid and the signature of every broadcast against the bytes'
owner, refuses an expired transaction and knows a duplicate; a transfer sent without the energy in
place burns TRX (recorded, so a test can assert it never happens); the provider refuses an order
to another destination and, by default, accepts a reused `out_trade_no` (a second, paid order: the
pessimistic reading of the provider's docs, so the tests' one-order invariant can fail;
`repeated_out_trade_no` acts out the other readings). The HTTP sandbox
(`sweeper.sandbox`) stays for the integration and end-to-end suites: it models the real services'
wire forms, which these fakes do not.

Faults are queued per method: `fail("broadcast", ChainUnavailable("…"))` raises on the next call;
`Crash` (a BaseException, so no `except Exception` in the pipeline swallows it) stands for the
process dying at that line, before the call reaches the outside party. `lose_answer=True` on the
provider performs the order and then raises `OrderOutcomeUnknown`: the answer was lost.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tronpy.proto import calculate_txid_from_raw_data

from sweeper.chain import (
    BlockRef,
    BroadcastOutcome,
    BroadcastRejected,
    ChainResponseError,
    ResourceCheck,
    SignedTransfer,
    Simulation,
    TokenTransfer,
    TransferStatus,
    TxState,
    UnsignedTransfer,
    transfer_data,
)
from sweeper.chain import (
    BroadcastResult as BroadcastResult,
)
from sweeper.chain.models import TrxSweep
from sweeper.chain.transfers import sign_transfer
from sweeper.chain.trx import bandwidth_bytes, plan_trx_sweep, transfer_raw_data
from sweeper.domain import address_to_hex
from sweeper.keys import SigningKey
from sweeper.protocols import BlockSource, EnergyProvider, SweepChain
from sweeper.provider.errors import (
    InsufficientProviderBalance,
    OrderOutcomeUnknown,
    OrderRejected,
)
from sweeper.provider.models import (
    COLLECT_MANUAL_ENERGY_TO_HOLDER,
    COLLECT_MANUAL_ENERGY_TO_NEW_HOLDER,
    CollectOrder,
    IndexData,
    Order,
    OrderNotFound,
    OrderStatus,
    PriceQuote,
)
from sweeper.sandbox.provider_server import MSG_DUPLICATE_OUT_TRADE_NO, RepeatedOutTradeNo

TRANSFER_BANDWIDTH = 350
ENERGY_FEE_SUN = 100  # sun per energy unit (mainnet's getEnergyFee)
ENERGY_TO_HOLDER = 64_285  # a USDT transfer to an address that already holds USDT
ENERGY_TO_NEW_HOLDER = 130_285  # … to one that holds none
LIFETIME_MS = 60_000
# Native TRX (mainnet's chain parameters): getTransactionFee, getCreateAccountFee,
# getCreateNewAccountFeeInSystemContract, getFreeNetLimit.
TRX_FEE_PER_BYTE = 1_000
CREATE_ACCOUNT_FEE_SUN = 100_000
CREATE_NEW_ACCOUNT_FEE_IN_SYSTEM_CONTRACT_SUN = 1_000_000
FREE_NET_LIMIT = 600


class Crash(BaseException):
    """The process died here (kill -9): nothing after this line ran."""


class FakeClock:
    """One clock for the ledger, the pipeline and the chain's head block; moved only by the test."""

    def __init__(self, start: datetime = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class _Faults:
    def __init__(self) -> None:
        self._queued: dict[str, list[BaseException]] = defaultdict(list)
        self.calls: list[str] = []

    def fail(self, method: str, *errors: BaseException) -> None:
        """The next calls of `method` raise these errors, in order."""
        self._queued[method].extend(errors)

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if self._queued[method]:
            raise self._queued[method].pop(0)


@dataclass
class FakeTx:
    signed: SignedTransfer
    state: TxState = TxState.PENDING
    block: int | None = None
    burnt_sun: int = 0  # TRX the transfer burnt because the energy was not there


@dataclass
class FakeChain(_Faults):
    """A TRON chain with one token (or more), accounts, delegated energy and a solid head that
    follows `clock` (offset by `head_offset_seconds`)."""

    clock: FakeClock
    balances: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    energy: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bandwidth: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    activated: set[str] = field(default_factory=set)
    frozen: set[str] = field(default_factory=set)  # the token's isBlackListed
    revert_all: str | None = None  # every transfer reverts with this message (token paused …)
    extra_energy: int = 0  # the need grows (dynamic energy): added to every measurement
    head_offset_seconds: float = 0.0
    auto_confirm: bool = True  # a broadcast transaction is in the next solid block at once
    txs: dict[str, FakeTx] = field(default_factory=dict)
    block_number: int = 1_000
    # Native TRX: balances in sun, and the free bandwidth used today (`bandwidth` above is the
    # staked/delegated bandwidth, which a TRX transfer uses first, as java-tron does).
    trx: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    free_bandwidth_used: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def __post_init__(self) -> None:
        _Faults.__init__(self)

    # --- the test's levers ---

    def credit(self, token: str, holder: str, amount: int) -> None:
        self.balances[token][holder] = self.balances[token].get(holder, 0) + amount

    def activate(self, address: str) -> None:
        self.activated.add(address)

    def delegate(self, address: str, energy: int, bandwidth: int = TRANSFER_BANDWIDTH) -> None:
        self.activated.add(address)
        self.energy[address] += energy
        self.bandwidth[address] += bandwidth

    def reclaim(self, address: str) -> None:
        self.energy[address] = 0

    def credit_trx(self, address: str, sun: int) -> None:
        """TRX arriving; receiving TRX creates (activates) the account, as on chain."""
        self.activated.add(address)
        self.trx[address] += sun

    def use_free_bandwidth(self, address: str, amount: int = FREE_NET_LIMIT) -> None:
        """Spend `amount` bytes of the address's daily free bandwidth (all of it by default)."""
        self.free_bandwidth_used[address] += amount

    def stake_bandwidth(self, address: str, amount: int) -> None:
        """Staked/delegated bandwidth on the address (without delegating any energy)."""
        self.bandwidth[address] += amount

    def _trx_charge(self, signed: SignedTransfer) -> tuple[int, int, int, int] | None:
        """What java-tron takes for a TRX transfer now (sweeper.chain.trx's rules): (fee sun burnt
        beyond the amount, staked bytes, free bytes, bytes); None when the balance cannot pay."""
        size = bandwidth_bytes(signed.raw_data)
        owner, balance = signed.owner, self.trx[signed.owner]
        exists = signed.destination in self.activated
        staked = self.bandwidth[owner] >= size
        if not exists:
            fee = CREATE_NEW_ACCOUNT_FEE_IN_SYSTEM_CONTRACT_SUN + (0 if staked else CREATE_ACCOUNT_FEE_SUN)
            used = (size, 0) if staked else (0, 0)
        elif staked:
            fee, used = 0, (size, 0)
        elif FREE_NET_LIMIT - self.free_bandwidth_used[owner] >= size:
            fee, used = 0, (0, size)
        else:
            fee, used = size * TRX_FEE_PER_BYTE, (0, 0)
        if owner not in self.activated or balance < signed.amount + fee:
            return None
        return fee, used[0], used[1], size

    def head_ms(self) -> int:
        return int((self.clock() + timedelta(seconds=self.head_offset_seconds)).timestamp() * 1000)

    def confirm(self, txid: str, *, success: bool = True) -> None:
        """Include a pending transaction in a solidified block."""
        tx = self.txs[txid]
        signed = tx.signed
        if signed.token is None:
            self._confirm_trx(tx)
            return
        self.block_number += 1
        tx.block = self.block_number
        need = self._need(signed.owner, signed.destination, signed.token)
        if self.energy[signed.owner] < need:
            tx.burnt_sun = (need - self.energy[signed.owner]) * ENERGY_FEE_SUN
            self.energy[signed.owner] = 0
        else:
            self.energy[signed.owner] -= need
        self.bandwidth[signed.owner] = max(0, self.bandwidth[signed.owner] - TRANSFER_BANDWIDTH)
        held = self.balances[signed.token].get(signed.owner, 0)
        if not success or held < signed.amount or signed.owner in self.frozen:
            tx.state = TxState.FAILED
            return
        self.balances[signed.token][signed.owner] = held - signed.amount
        self.credit(signed.token, signed.destination, signed.amount)
        tx.state = TxState.CONFIRMED

    def _confirm_trx(self, tx: FakeTx) -> None:
        """A TRX transfer included: the fees and the amount leave the owner, the destination is
        created and credited. One the owner can no longer pay is dropped, never included (a
        TransferContract cannot fail in a block): its status turns EXPIRED in time."""
        signed = tx.signed
        charge = self._trx_charge(signed)
        if charge is None:
            del self.txs[signed.txid]
            return
        fee, staked, free, _ = charge
        self.block_number += 1
        tx.block = self.block_number
        self.bandwidth[signed.owner] -= staked
        self.free_bandwidth_used[signed.owner] += free
        self.trx[signed.owner] -= signed.amount + fee
        self.credit_trx(signed.destination, signed.amount)
        tx.burnt_sun = fee
        tx.state = TxState.CONFIRMED

    def transfers_from(self, owner: str) -> list[FakeTx]:
        return [tx for tx in self.txs.values() if tx.signed.owner == owner]

    # --- what the pipeline calls (sweeper.protocols.SweepChain) ---

    def _need(self, owner: str, destination: str, token: str) -> int:
        holds = self.balances[token].get(destination, 0) > 0
        return (ENERGY_TO_HOLDER if holds else ENERGY_TO_NEW_HOLDER) + self.extra_energy

    async def token_balance(self, holder: str, token: str) -> int:
        self._enter("token_balance")
        return self.balances[token].get(holder, 0)

    async def trx_balance(self, address: str) -> int:
        self._enter("trx_balance")
        return self.trx[address]

    async def simulate_transfer(self, owner: str, destination: str, amount: int, *, token: str) -> Simulation:
        self._enter("simulate_transfer")
        if self.revert_all is not None:
            return Simulation(reverted=True, energy_used=0, energy_penalty=0, message=self.revert_all)
        if owner in self.frozen or self.balances[token].get(owner, 0) < amount:
            return Simulation(
                reverted=True, energy_used=0, energy_penalty=0, message="REVERT opcode executed"
            )
        return Simulation(
            reverted=False, energy_used=self._need(owner, destination, token), energy_penalty=0, message=""
        )

    async def is_blacklisted(self, address: str, *, token: str) -> bool:
        self._enter("is_blacklisted")
        return address in self.frozen

    async def energy_fee(self) -> int:
        self._enter("energy_fee")
        return ENERGY_FEE_SUN

    async def check_resources(
        self, owner: str, destination: str, token: str, *, energy_needed: int
    ) -> ResourceCheck:
        self._enter("check_resources")
        reasons: list[str] = []
        activated = owner in self.activated
        if not activated:
            reasons.append("the address is not activated")
        if self.energy[owner] < energy_needed:
            reasons.append(f"energy {self.energy[owner]} < {energy_needed} needed")
        if self.bandwidth[owner] < TRANSFER_BANDWIDTH:
            reasons.append(f"bandwidth {self.bandwidth[owner]} < {TRANSFER_BANDWIDTH} needed")
        return ResourceCheck(
            ok=not reasons,
            activated=activated,
            energy_needed=energy_needed,
            energy_available=self.energy[owner],
            bandwidth_needed=TRANSFER_BANDWIDTH,
            bandwidth_available=self.bandwidth[owner],
            reasons=tuple(reasons),
        )

    async def head_clock_skew_seconds(self) -> float:
        self._enter("head_clock_skew_seconds")
        return self.head_offset_seconds

    async def fee_limit_for(self, energy_needed: int) -> int:
        self._enter("fee_limit_for")
        return -(-energy_needed * ENERGY_FEE_SUN * 120 // 100)

    async def build_transfer(
        self, owner: str, destination: str, amount: int, *, token: str, fee_limit_sun: int
    ) -> UnsignedTransfer:
        self._enter("build_transfer")
        head = self.head_ms()
        ref = hashlib.sha256(str(self.block_number).encode()).hexdigest()
        raw_data: dict[str, Any] = {
            "contract": [
                {
                    "parameter": {
                        "value": {
                            "data": transfer_data(destination, amount),
                            "owner_address": address_to_hex(owner),
                            "contract_address": address_to_hex(token),
                        },
                        "type_url": "type.googleapis.com/protocol.TriggerSmartContract",
                    },
                    "type": "TriggerSmartContract",
                }
            ],
            "ref_block_bytes": f"{self.block_number & 0xFFFF:04x}",
            "ref_block_hash": ref[16:32],
            "expiration": head + LIFETIME_MS,
            "fee_limit": fee_limit_sun,
            "timestamp": head,
        }
        return UnsignedTransfer(
            txid=str(calculate_txid_from_raw_data(raw_data)),
            raw_data=raw_data,
            owner=owner,
            destination=destination,
            token=token,
            amount=amount,
            fee_limit_sun=fee_limit_sun,
            expiration_ms=head + LIFETIME_MS,
        )

    async def build_trx_sweep(self, owner: str, destination: str) -> TrxSweep:
        """The real plan (`sweeper.chain.trx.plan_trx_sweep`) on this chain's state, and the real
        TransferContract raw_data (`transfer_raw_data`), stamped from the head like build_transfer."""
        self._enter("build_trx_sweep")
        head = self.head_ms()
        ref_hash = hashlib.sha256(str(self.block_number).encode()).hexdigest()
        ref = BlockRef(self.block_number, f"{self.block_number:016x}" + ref_hash[16:], head)

        def raw_for(amount: int) -> dict[str, Any]:
            return transfer_raw_data(
                owner, destination, amount, ref_block=ref, timestamp_ms=head, expiration_ms=head + LIFETIME_MS
            )

        exists = owner in self.activated
        plan = plan_trx_sweep(
            self.trx[owner] if exists else 0,
            bytes_for=lambda amount: bandwidth_bytes(raw_for(amount)),
            net_available=self.bandwidth[owner],
            free_net_available=max(0, FREE_NET_LIMIT - self.free_bandwidth_used[owner]) if exists else 0,
            destination_exists=destination in self.activated,
            fee_per_byte=TRX_FEE_PER_BYTE,
            create_account_fee=CREATE_ACCOUNT_FEE_SUN,
            create_new_account_fee_in_system_contract=CREATE_NEW_ACCOUNT_FEE_IN_SYSTEM_CONTRACT_SUN,
        )
        if plan.amount_sun <= 0:
            return TrxSweep(plan, None)
        raw_data = raw_for(plan.amount_sun)
        unsigned = UnsignedTransfer(
            txid=str(calculate_txid_from_raw_data(raw_data)),
            raw_data=raw_data,
            owner=owner,
            destination=destination,
            token=None,
            amount=plan.amount_sun,
            fee_limit_sun=0,
            expiration_ms=head + LIFETIME_MS,
        )
        return TrxSweep(plan, unsigned)

    def sign_transfer(self, unsigned: UnsignedTransfer, key: SigningKey) -> SignedTransfer:
        self._enter("sign_transfer")
        return sign_transfer(unsigned, key)  # the real signing, checks included

    async def broadcast(self, signed: SignedTransfer) -> BroadcastResult:
        self._enter("broadcast")
        # What a node checks: the bytes hash to the txid and are signed by their owner.
        checked = SignedTransfer.from_json(signed.to_json())
        if checked.txid in self.txs:
            return BroadcastResult(checked.txid, BroadcastOutcome.ALREADY_KNOWN)
        if checked.expiration_ms <= self.head_ms():
            raise BroadcastRejected("TRANSACTION_EXPIRATION_ERROR", "transaction expired")
        if checked.token is None and self._trx_charge(checked) is None:
            # What the sandbox node (java-tron's TransferActuator) answers; a bandwidth burn the
            # balance cannot pay would be BANDWITH_ERROR there, which this fake does not tell apart.
            raise BroadcastRejected(
                "CONTRACT_VALIDATE_ERROR",
                "Contract validate error : Validate TransferContract error, balance is not sufficient.",
            )
        self.txs[checked.txid] = FakeTx(checked)
        if self.auto_confirm:
            self.confirm(checked.txid)
        return BroadcastResult(checked.txid, BroadcastOutcome.ACCEPTED)

    async def transaction_known(self, txid: str) -> bool:
        self._enter("transaction_known")
        return txid in self.txs

    async def transaction_status(self, txid: str, *, expiration_ms: int, token: str | None) -> TransferStatus:
        self._enter("transaction_status")
        tx = self.txs.get(txid)
        if tx is None or tx.state is TxState.PENDING:
            if tx is None and self.head_ms() >= expiration_ms + 6_000:
                return TransferStatus(txid, TxState.EXPIRED)
            return TransferStatus(txid, TxState.PENDING)
        if tx.state is TxState.FAILED:
            return TransferStatus(
                txid, TxState.FAILED, reason="REVERT: transfer failed", block_number=tx.block
            )
        signed = tx.signed
        moved = TokenTransfer(txid, token, signed.owner, signed.destination, signed.amount, 0)
        return TransferStatus(
            txid, TxState.CONFIRMED, block_number=tx.block, fee_sun=tx.burnt_sun, transfers=(moved,)
        )


@dataclass
class FakeOrder:
    serial: str
    address: str
    to_address: str
    out_trade_no: str
    amount_sun: int
    energy: int
    created: datetime
    status: OrderStatus = OrderStatus.PAID
    refund_sun: int = 0


@dataclass
class FakeProvider(_Faults):
    """collect-manual and its order query. An order is delegated when it is first asked about by
    serial (the pipeline's wait for it: never while the row is still deciding whether to order), or,
    with `delegate_when_asked = False`, when the test calls `complete(serial)`; `end(serial,
    status, refund)` ends one otherwise."""

    chain: FakeChain
    destination: str
    token: str  # the token collect-manual's energy figure depends on (the destination holds it?)
    price_sun: int = 4_000_000
    balance_sun: int = 1_000_000_000
    delegate_when_asked: bool = True
    lose_answer: bool = False  # the next order is placed, its answer lost
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    # Whether the provider refuses an out_trade_no it has seen is not documented: by default it
    # does not, and a second POST for a row is a second paid order (the invariant catches it).
    refuse_reused_out_trade_no: bool = False  # refused as a 400 field error on out_trade_no
    # The reading of a repeated out_trade_no (the sandbox's switch of the same name): a second paid
    # order whose lookup answers the first (the default) or the newest; refused (errno 1, no field
    # errors); or answered with the existing order, nothing charged.
    repeated_out_trade_no: RepeatedOutTradeNo = RepeatedOutTradeNo.FIRST_WINS
    # The lookup by out_trade_no finds an order only once it is this old (a provider whose query
    # lags behind its orders); by serial it is found at once.
    lookup_lag_seconds: float = 0.0

    def __post_init__(self) -> None:
        _Faults.__init__(self)

    def orders_for(self, out_trade_no: str) -> list[FakeOrder]:
        return [o for o in self.orders.values() if o.out_trade_no == out_trade_no]

    def complete(self, serial: str) -> None:
        order = self.orders[serial]
        self.chain.delegate(order.address, order.energy)
        order.status = OrderStatus.COMPLETED

    def end(self, serial: str, status: OrderStatus, refund_sun: int = 0) -> None:
        order = self.orders[serial]
        order.status = status
        order.refund_sun = refund_sun
        self.balance_sun += refund_sun

    # --- what the pipeline calls (sweeper.protocols.EnergyProvider) ---

    async def collect_manual(
        self,
        receive_address: str,
        *,
        to_address: str,
        out_trade_no: str,
        callback_url: str | None = None,
        scene: int = 0,
    ) -> CollectOrder:
        self._enter("collect_manual")
        address = receive_address
        if to_address != self.destination:
            raise OrderRejected("to_address is not the destination", field_errors={"to_address": ("wrong",)})
        seen = self.orders_for(out_trade_no)
        if self.refuse_reused_out_trade_no and seen:
            raise OrderRejected("duplicate", field_errors={"out_trade_no": ("already used",)})
        if seen and self.repeated_out_trade_no is RepeatedOutTradeNo.REFUSED:
            # What ProviderClient raises for errno 1 while the account balance is healthy.
            raise OrderRejected(
                "order refused by the provider", message=MSG_DUPLICATE_OUT_TRADE_NO, errno=1, http_status=200
            )
        if seen and self.repeated_out_trade_no is RepeatedOutTradeNo.IDEMPOTENT:
            return self._answer(seen[0], scene)
        if self.balance_sun < self.price_sun:
            raise InsufficientProviderBalance("balance too low", balance_sun=self.balance_sun)
        holds = self.chain.balances[self.token].get(to_address, 0) > 0
        energy = COLLECT_MANUAL_ENERGY_TO_HOLDER if holds else COLLECT_MANUAL_ENERGY_TO_NEW_HOLDER
        serial = f"S{len(self.orders) + 1:06d}"
        self.balance_sun -= self.price_sun
        self.orders[serial] = FakeOrder(
            serial, address, to_address, out_trade_no, self.price_sun, energy, created=self.chain.clock()
        )
        return self._answer(self.orders[serial], scene)

    def _answer(self, order: FakeOrder, scene: int) -> CollectOrder:
        if self.lose_answer:
            self.lose_answer = False
            raise OrderOutcomeUnknown("POST collect-manual sent, answer lost (fake)")
        return CollectOrder(
            serial=order.serial,
            scene=scene or 1,
            amount_sun=order.amount_sun,
            balance_sun=self.balance_sun,
            out_trade_no=order.out_trade_no,
            raw="{}",
        )

    async def query_order(
        self, *, serial: str | None = None, out_trade_no: str | None = None
    ) -> Order | OrderNotFound:
        self._enter("query_order")
        found = [
            o
            for o in self.orders.values()
            if (serial is None or o.serial == serial)
            and (out_trade_no is None or o.out_trade_no == out_trade_no)
            and (
                serial is not None
                or (self.chain.clock() - o.created).total_seconds() >= self.lookup_lag_seconds
            )
        ]
        if not found:
            return OrderNotFound(serial=serial, out_trade_no=out_trade_no, message="not found", raw="{}")
        # Several orders for one out_trade_no (dicts keep insertion order): the reading decides.
        order = found[-1] if self.repeated_out_trade_no is RepeatedOutTradeNo.NEWEST_WINS else found[0]
        if serial is not None and self.delegate_when_asked and order.status is OrderStatus.PAID:
            self.complete(order.serial)
        return Order(
            serial=order.serial,
            status=order.status,
            receive_address=order.address,
            create_time=order.created,
            energy_amount=order.energy,
            delegated_energy=Decimal(order.energy) if order.status is OrderStatus.COMPLETED else None,
            amount_sun=order.amount_sun,
            refund_amount_sun=order.refund_sun,
            period="1H",
            out_trade_no=order.out_trade_no,
            details=(),
            raw="{}",
        )

    async def price(self, *, to_address: str | None = None) -> PriceQuote:
        self._enter("price")
        return PriceQuote(
            period="1H",
            energy_amount=COLLECT_MANUAL_ENERGY_TO_NEW_HOLDER,
            price_sun=None,
            total_price_sun=self.price_sun,
            addition_sun=0,
            raw="{}",
        )

    async def index_data(self) -> IndexData:
        self._enter("index_data")
        return IndexData(
            balance_sun=self.balance_sun,
            usdt_energy_need_old=None,
            usdt_energy_need_new=None,
            minimum_order_energy=None,
            platform_avail_energy=None,
            tiered_pricing=(),
            raw="{}",
        )


# --- a chain of blocks, for the follower ---------------------------------------------------------------


@dataclass
class FakeBlock:
    number: int
    infos: list[dict[str, Any]] = field(default_factory=list)
    transactions: int = 0  # what getblockbynum shows (a block without Transfer logs may still have some)
    trx: list[TokenTransfer] = field(default_factory=list)  # its successful TRX TransferContracts


@dataclass
class FakeBlocks(_Faults):
    """Solidified blocks with their transaction infos in java-tron's visible=false form, and token
    balances that follow the transfers. Implements `sweeper.protocols.BlockSource`.

    `unserved[n] = k`: the next k answers for block n's infos are `[]` although it has transactions
    (a load-balanced backend that is behind); `no_infos`: a node without the transaction-info store.
    """

    solid: int = 0  # the solid head's number
    blocks: dict[int, FakeBlock] = field(default_factory=dict)
    balances: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    unserved: dict[int, int] = field(default_factory=dict)
    no_infos: bool = False
    balance_reads: list[tuple[str, str]] = field(default_factory=list)
    trx_balances: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    trx_balance_reads: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _Faults.__init__(self)

    def mine(
        self, *transfers: tuple[str, str, str, int], failed: bool = False, internal: bool = False
    ) -> int:
        """A new solidified block holding these (token, sender, recipient, amount) transfers, one
        transaction each; balances move unless the transactions failed."""
        self.solid += 1
        block = self.blocks.setdefault(self.solid, FakeBlock(self.solid))
        for token, sender, recipient, amount in transfers:
            log_entry = {
                "address": address_to_hex(token)[2:],
                "topics": [
                    "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef",
                    "0" * 24 + address_to_hex(sender)[2:],
                    "0" * 24 + address_to_hex(recipient)[2:],
                ],
                "data": f"{amount:064x}",
            }
            info: dict[str, Any] = {
                "id": hashlib.sha256(f"{self.solid}-{len(block.infos)}".encode()).hexdigest(),
                "blockNumber": self.solid,
                "contract_address": "41" + "ab" * 20 if internal else address_to_hex(token),
                "receipt": {"result": "REVERT" if failed else "SUCCESS", "energy_usage_total": 64_285},
                "log": [log_entry],
            }
            if failed:
                info["result"] = "FAILED"
            block.infos.append(info)
            block.transactions += 1
            if not failed:
                self.balances[token][sender] = self.balances[token].get(sender, 0) - amount
                self.balances[token][recipient] = self.balances[token].get(recipient, 0) + amount
        return self.solid

    def mine_trx(self, *transfers: tuple[str, str, int]) -> int:
        """A new solidified block holding these (sender, recipient, sun) TRX transfers, one
        transaction each (no logs; an info whose receipt has no result, as java-tron's); balances
        move (the sender's fee is not modelled here)."""
        self.solid += 1
        block = self.blocks.setdefault(self.solid, FakeBlock(self.solid))
        for sender, recipient, amount in transfers:
            txid = hashlib.sha256(f"trx-{self.solid}-{block.transactions}".encode()).hexdigest()
            block.infos.append({"id": txid, "blockNumber": self.solid, "receipt": {"net_usage": 267}})
            block.trx.append(TokenTransfer(txid, None, sender, recipient, amount, 0))
            block.transactions += 1
            self.trx_balances[sender] -= amount
            self.trx_balances[recipient] += amount
        return self.solid

    def mine_empty(self, count: int = 1, *, transactions: int = 0) -> int:
        """Blocks without Transfer logs (`transactions`: e.g. TRX transfers, which have no logs)."""
        for _ in range(count):
            self.solid += 1
            block = FakeBlock(self.solid, transactions=transactions)
            block.infos = [
                {"id": f"{self.solid}-{i}", "blockNumber": self.solid} for i in range(transactions)
            ]
            self.blocks[self.solid] = block
        return self.solid

    # --- sweeper.protocols.BlockSource ---

    async def solid_head(self) -> BlockRef:
        self._enter("solid_head")
        return BlockRef(self.solid, f"{self.solid:064x}", 1_764_000_000_000 + self.solid * 3000)

    async def solid_block_transaction_count(self, block_number: int) -> int:
        self._enter("solid_block_transaction_count")
        if block_number > self.solid:
            raise ChainResponseError(f"block {block_number} is not solidified")
        block = self.blocks.get(block_number)
        return block.transactions if block else 0

    async def solid_transaction_infos(self, block_number: int) -> list[dict[str, Any]]:
        self._enter("solid_transaction_infos")
        if self.no_infos or block_number > self.solid:
            return []
        if self.unserved.get(block_number, 0) > 0:
            self.unserved[block_number] -= 1
            return []
        block = self.blocks.get(block_number)
        return [dict(info) for info in block.infos] if block else []

    async def token_balance(self, holder: str, token: str) -> int:
        self._enter("token_balance")
        self.balance_reads.append((holder, token))
        return max(0, self.balances[token].get(holder, 0))

    async def solid_block_trx_transfers(self, block_number: int) -> tuple[int, list[TokenTransfer]]:
        self._enter("solid_block_trx_transfers")
        if block_number > self.solid:
            raise ChainResponseError(f"block {block_number} is not solidified")
        block = self.blocks.get(block_number)
        return (block.transactions, list(block.trx)) if block else (0, [])

    async def trx_balance(self, address: str) -> int:
        self._enter("trx_balance")
        self.trx_balance_reads.append(address)
        return max(0, self.trx_balances[address])


def _conforms(
    chain: FakeChain, provider: FakeProvider, blocks: FakeBlocks
) -> tuple[SweepChain, EnergyProvider, BlockSource]:
    """Never called: mypy checks here that the fakes implement the protocols they stand in for."""
    return chain, provider, blocks
