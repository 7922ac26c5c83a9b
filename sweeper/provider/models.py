"""The provider's answers as typed values: order status, orders, delegations, index data and price
quotes (what `sweeper.provider.client` returns). Money is integer sun; fractional figures `Decimal`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import IntEnum
from typing import Final


class OrderStatus(IntEnum):
    """Order status as the provider's order/query reports it.

    Values the docs do not list become pseudo-members named `UNKNOWN_<n>`: not final, not success
    (the docs say: anything else, poll again).
    """

    CLOSED = 0  # closed / timed out (final, failed)
    AWAITING_PAYMENT = 10
    PAID = 20
    PREPARING = 30  # preparing delegation (one doc example calls it "fully delegated": not trusted)
    PARTLY_DELEGATED = 31
    ERROR_RETRYING = 32
    COMPLETED = 40  # final, success
    REFUNDED = 41  # ended with refund (final, failed)
    ABNORMAL = 43  # ended abnormally (final, failed)

    @classmethod
    def _missing_(cls, value: object) -> OrderStatus | None:
        if isinstance(value, int) and not isinstance(value, bool):
            pseudo = int.__new__(cls, value)
            pseudo._name_ = f"UNKNOWN_{value}"
            pseudo._value_ = value
            return pseudo
        return None

    @property
    def is_known(self) -> bool:
        return self._name_ in type(self).__members__

    @property
    def is_final(self) -> bool:
        return int(self) in _FINAL_STATUSES

    @property
    def is_success(self) -> bool:
        return int(self) == 40


_FINAL_STATUSES: Final = frozenset({0, 40, 41, 43})


@dataclass(frozen=True)
class CollectOrder:
    """The provider accepted a collect-manual order."""

    serial: str
    scene: int
    amount_sun: int  # what this order cost
    balance_sun: int  # the provider account's balance left
    out_trade_no: str | None  # what we sent (the provider echoes it in callbacks)
    raw: str = field(repr=False, compare=False)


@dataclass(frozen=True)
class Delegation:
    """One delegation of an order (large orders may be split)."""

    delegate_hash: str | None
    delegate_time: datetime | None
    reclaim_hash: str | None
    reclaim_time: datetime | None
    status: int | None  # 20 delegating, 30 reclaimed


@dataclass(frozen=True)
class Order:
    """An order as order/query reports it."""

    serial: str
    status: OrderStatus
    receive_address: str
    create_time: datetime | None  # timezone-aware
    energy_amount: int | None
    delegated_energy: Decimal | None  # the docs' `pay_amount`: energy actually delegated
    amount_sun: int | None
    refund_amount_sun: int
    period: str | None
    out_trade_no: str | None  # only if the provider includes it (undocumented)
    details: tuple[Delegation, ...]
    raw: str = field(repr=False, compare=False)

    @property
    def found(self) -> bool:
        return True


@dataclass(frozen=True)
class OrderNotFound:
    """order/query answered errno 404: there is no such order (for this API key)."""

    serial: str | None
    out_trade_no: str | None
    message: str
    raw: str = field(repr=False, compare=False)

    @property
    def found(self) -> bool:
        return False


@dataclass(frozen=True)
class TieredPrice:
    period: int
    price_sun: int  # per energy unit


# The energy collect-manual delegates for one USDT transfer, per the provider's docs (the seed
# page): ~65k when the `to_address` already holds the token, ~131k when it holds none. The
# pipeline orders nothing when the measured need is above what would be delivered.
COLLECT_MANUAL_ENERGY_TO_HOLDER = 65_000
COLLECT_MANUAL_ENERGY_TO_NEW_HOLDER = 131_000


@dataclass(frozen=True)
class IndexData:
    balance_sun: int
    usdt_energy_need_old: int | None  # energy for a USDT transfer to an address that holds USDT
    usdt_energy_need_new: int | None  # … to an address that holds none
    minimum_order_energy: int | None
    platform_avail_energy: int | None
    tiered_pricing: tuple[TieredPrice, ...]
    raw: str = field(repr=False, compare=False)


@dataclass(frozen=True)
class PriceQuote:
    period: str | None
    energy_amount: int | None
    price_sun: int | None  # per energy unit
    total_price_sun: int
    addition_sun: int  # small-order surcharge
    raw: str = field(repr=False, compare=False)
