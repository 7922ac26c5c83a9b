"""What the pipeline and the scanner need from the outside parties, as small protocols.

The real implementations are `sweeper.chain.TronChain` and `sweeper.provider.client.ProviderClient`;
tests/fakes.py holds in-process fakes of the same protocols, so a step's decision is tested without
sockets (tests/unit/test_pipeline_steps.py). A method belongs here only if the pipeline or the scanner
calls it (BlockSource: the block follower): the narrower the seam, the less a fake must model.
"""

from __future__ import annotations

from typing import Any, Protocol

from sweeper.chain.models import (
    BlockRef,
    BroadcastResult,
    ResourceCheck,
    SignedTransfer,
    Simulation,
    TokenTransfer,
    TransferStatus,
    TrxSweep,
    UnsignedTransfer,
)
from sweeper.keys import SigningKey
from sweeper.provider.models import CollectOrder, IndexData, Order, OrderNotFound, PriceQuote


class BalanceSource(Protocol):
    """What a scan pass reads: one holder's balance of one token, in base units; or of native TRX,
    in sun (`trx_balance`: 0 for an account that does not exist)."""

    async def token_balance(self, holder: str, token: str) -> int: ...

    async def trx_balance(self, address: str) -> int: ...


class BlockSource(BalanceSource, Protocol):
    """What the block follower reads: the solid head, a solidified block's transaction count and its
    transaction infos (each ONE node request), and balances. Errors are `sweeper.chain.errors` types.

    `solid_transaction_infos` answers `[]` both for an empty block and for one the node cannot serve;
    `solid_block_transaction_count` tells them apart (it raises ChainResponseError for a block the
    node does not have). Decode the infos with `sweeper.chain.transfers.deposits_in_block`.
    """

    async def solid_head(self) -> BlockRef: ...

    async def solid_block_transaction_count(self, block_number: int) -> int: ...

    async def solid_transaction_infos(self, block_number: int) -> list[dict[str, Any]]: ...

    async def solid_block_trx_transfers(self, block_number: int) -> tuple[int, list[TokenTransfer]]:
        """ONE `getblockbynum` request: the block's transaction count (the same checks and errors as
        `solid_block_transaction_count`) and its successful TRX TransferContract transfers (token None)."""
        ...


class SweepChain(BalanceSource, Protocol):
    """What the sweep pipeline asks of the TRON node. Errors are `sweeper.chain.errors` types."""

    async def simulate_transfer(
        self, owner: str, destination: str, amount: int, *, token: str
    ) -> Simulation: ...

    async def is_blacklisted(self, address: str, *, token: str) -> bool: ...

    async def energy_fee(self) -> int: ...

    async def check_resources(
        self, owner: str, destination: str, token: str, *, energy_needed: int
    ) -> ResourceCheck: ...

    async def head_clock_skew_seconds(self) -> float: ...

    async def fee_limit_for(self, energy_needed: int) -> int: ...

    async def build_transfer(
        self, owner: str, destination: str, amount: int, *, token: str, fee_limit_sun: int
    ) -> UnsignedTransfer: ...

    def sign_transfer(self, unsigned: UnsignedTransfer, key: SigningKey) -> SignedTransfer: ...

    async def broadcast(self, signed: SignedTransfer) -> BroadcastResult: ...

    async def transaction_known(self, txid: str) -> bool: ...

    async def build_trx_sweep(self, owner: str, destination: str) -> TrxSweep:
        """Plan a native TRX sweep of the whole balance and build its TransferContract, verified and
        unsigned (`unsigned` None when nothing can be sent). Sign it with `sign_transfer`."""
        ...

    async def transaction_status(
        self, txid: str, *, expiration_ms: int, token: str | None
    ) -> TransferStatus: ...


class EnergyProvider(Protocol):
    """What the sweep pipeline asks of the energy provider. Errors are `sweeper.provider.errors` types."""

    async def collect_manual(
        self,
        receive_address: str,
        *,
        to_address: str,
        out_trade_no: str,
        callback_url: str | None = None,
        scene: int = 0,
    ) -> CollectOrder: ...

    async def query_order(
        self, *, serial: str | None = None, out_trade_no: str | None = None
    ) -> Order | OrderNotFound: ...

    async def price(self, *, to_address: str | None = None) -> PriceQuote: ...

    async def index_data(self) -> IndexData: ...
