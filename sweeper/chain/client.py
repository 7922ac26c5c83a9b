"""`TronChain`: everything the scanner and the pipeline ask the TRON node, on tronpy's `AsyncTron`:
reads, safe transfer building and signing, broadcast, status.

The energy a transfer needs is never guessed here: `simulate_transfer` runs the exact transfer as
a constant call from the deposit address (`wallet/triggerconstantcontract`, read directly: tronpy's
helper raises on a revert and drops `energy_used`) and the caller passes what it measured to
`check_resources(energy_needed=)` and, through `fee_limit_for`, to `build_transfer(fee_limit_sun=)`.
The answer is parsed by `sweeper.chain.transfers`, whose docstring gives java-tron's answer forms.

Native TRX (`build_trx_sweep`, `transaction_status(token=None)`, `solid_block_trx_transfers`): the
TransferContract is built locally (`sweeper.chain.trx`, which quotes java-tron's bandwidth and fee
rules) so its size, hence its fee, is known exactly before it is signed.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import httpx
from tronpy import AsyncTron
from tronpy.exceptions import ApiError, NotFound, TransactionError, TvmError, UnknownError
from tronpy.exceptions import ValidationError as TronValidationError
from tronpy.proto import calculate_txid_from_raw_data

from sweeper.chain.errors import (
    BroadcastRejected,
    ChainResponseError,
    ChainUnavailable,
)
from sweeper.chain.models import (
    DEFAULT_LIFETIME_MS,
    TRANSFER_BANDWIDTH,
    USDT_MAINNET,
    AccountResources,
    BlockRef,
    BroadcastOutcome,
    BroadcastResult,
    ResourceCheck,
    SignedTransfer,
    Simulation,
    TokenTransfer,
    TransferStatus,
    TrxSweep,
    TxState,
    UnsignedTransfer,
)
from sweeper.chain.transfers import (
    _bool_word,
    _decode_message,
    _int,
    _parse_constant_call,
    _succeeded,
    decode_transfer_logs,
    sign_transfer,
    transfer_data,
    trx_transfer_of,
    trx_transfers_in_block,
    verify_transfer,
)
from sweeper.chain.transport import _NodeProvider, _safe_url
from sweeper.chain.trx import bandwidth_bytes, plan_trx_sweep, transfer_raw_data
from sweeper.domain import Clock, Secret, address_to_hex, check_tron_address, utcnow
from sweeper.keys import SigningKey
from sweeper.ratelimit import RateLimiter
from sweeper.retry import NODE_RETRY, RetryPolicy

# Broadcast answers that mean "try the same bytes again later", not "this transaction is bad".
_TRANSIENT_CODES: Final = frozenset(
    {"SERVER_BUSY", "NO_CONNECTION", "NOT_ENOUGH_EFFECTIVE_CONNECTION", "BLOCK_UNSOLIDIFIED"}
)
# The {"Error": …} text of java-tron's rate limiter (RateLimiterServlet: IllegalAccessException).
_NODE_BUSY: Final = "lack of computing resources"


class TronChain:
    """Everything the scanner and the pipeline ask the TRON node.

    Use as `async with TronChain(url, api_key=...) as chain:`; a client passed in is not closed.
    """

    def __init__(
        self,
        node_url: str,
        *,
        api_key: Secret | None = None,
        requests_per_second: float = 10.0,
        burst: int = 1,
        limiter: RateLimiter | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        client: httpx.AsyncClient | None = None,
        max_connections: int = 20,
        clock: Clock = utcnow,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        fee_limit_margin_percent: int = 20,
        expiry_margin_ms: int = 6_000,
        chain_parameters_ttl: float = 600.0,
    ) -> None:
        if not node_url.startswith(("http://", "https://")):
            raise ValueError("node_url must be an http(s) URL")
        self.node_url = node_url.rstrip("/") + "/"
        self.limiter = limiter if limiter is not None else RateLimiter(requests_per_second, burst)
        self._owns_client = client is None
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(timeout, connect=connect_timeout),
                limits=httpx.Limits(
                    max_connections=max_connections, max_keepalive_connections=max_connections
                ),
                transport=transport,
                follow_redirects=False,
            )
        self._client = client
        self._provider = _NodeProvider(
            self.node_url,
            client=client,
            limiter=self.limiter,
            retry=retry if retry is not None else NODE_RETRY,
            api_key=api_key,
            sleep=sleep,
        )
        self._has_key = bool(api_key)
        self.tron = AsyncTron(self._provider, conf={"fee_limit": 0, "timeout": timeout})
        self._clock = clock
        self._fee_margin = fee_limit_margin_percent
        self._expiry_margin_ms = expiry_margin_ms
        self._params_ttl = chain_parameters_ttl
        self._chain_params: tuple[float, dict[str, Any]] | None = None
        self._contracts: dict[str, Any] = {}
        self._contract_lock = asyncio.Lock()

    def __repr__(self) -> str:
        key = "***" if self._has_key else None
        return f"TronChain(node_url={_safe_url(self.node_url)!r}, api_key={key}, limiter={self.limiter!r})"

    async def __aenter__(self) -> TronChain:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    @property
    def requests_sent(self) -> int:
        return int(self._provider.requests_sent)

    @property
    def requests_failed(self) -> int:
        return int(self._provider.requests_failed)

    @property
    def retries(self) -> int:
        return int(self._provider.retries)

    async def _request(self, path: str, params: dict[str, Any]) -> Any:
        answer = await self._provider.make_request(path, params)
        if isinstance(answer, dict) and "Error" in answer:
            error = str(answer["Error"])[:200]
            if _NODE_BUSY in error:
                # java-tron's per-API rate limiter answers HTTP 200 with this Error, not a 429
                # (RateLimiterServlet): a busy node, not a refusal of this request. Transient.
                raise ChainUnavailable(f"{path}: node busy ({error})")
            raise ChainResponseError(f"{path}: node error {error}")
        return answer

    async def _dict(self, path: str, params: dict[str, Any]) -> dict[str, Any]:
        answer = await self._request(path, params)
        if not isinstance(answer, dict):
            raise ChainResponseError(f"{path}: expected a JSON object")
        return answer

    # --- reads ---

    async def _contract(self, token: str) -> Any:
        """The token's contract object, ABI fetched once and cached."""
        contract = self._contracts.get(token)
        if contract is not None:
            return contract
        async with self._contract_lock:
            contract = self._contracts.get(token)
            if contract is None:
                check_tron_address(token)
                try:
                    contract = await self.tron.get_contract(token)
                except NotFound:
                    raise ChainResponseError(f"{token} is not a contract on this node") from None
                except ApiError as exc:
                    raise ChainResponseError(f"getcontract {token}: {exc}") from None
                names = {(e.get("name"), e.get("type", "").lower()) for e in contract.abi}
                if not {("balanceOf", "function"), ("transfer", "function")} <= names:
                    raise ChainResponseError(f"{token}'s ABI has no balanceOf/transfer: not a TRC20 token")
                self._contracts[token] = contract
        return contract

    async def token_balance(self, holder: str, token: str = USDT_MAINNET) -> int:
        """`balanceOf(holder)` in base units.

        The scanner's hot path: the call is encoded here (selector + one address word) rather than
        through tronpy's contract machinery, which costs about a millisecond of CPU per read. The
        contract's ABI is still fetched once to check that `token` is a TRC20 contract.
        """
        holder_hex = address_to_hex(holder)
        await self._contract(token)
        answer = await self._dict(
            "wallet/triggerconstantcontract",
            {
                "owner_address": holder,
                "contract_address": token,
                "function_selector": "balanceOf(address)",
                "parameter": holder_hex[2:].rjust(64, "0"),
                "visible": True,
            },
        )
        result = answer.get("result")
        if not isinstance(result, dict) or result.get("result") is not True:
            message = _decode_message(result.get("message")) if isinstance(result, dict) else ""
            raise ChainResponseError(f"balanceOf({holder}) failed: {message or 'no result'}")
        # A call that ran and reverted also has result.result true (the revert is in
        # transaction.ret and result.message): its constant_result is revert data, never a balance.
        transaction = answer.get("transaction")
        rets = transaction.get("ret") if isinstance(transaction, dict) else None
        first = rets[0] if isinstance(rets, list) and rets else None
        if "message" in result or (isinstance(first, dict) and first.get("ret") == "FAILED"):
            message = _decode_message(result.get("message")) or "FAILED"
            raise ChainResponseError(f"balanceOf({holder}) reverted: {message}")
        try:
            word = answer["constant_result"][0]
            value = int(word, 16)
        except (KeyError, IndexError, TypeError, ValueError):
            raise ChainResponseError(f"balanceOf({holder}): malformed answer") from None
        if len(word) != 64:
            raise ChainResponseError(f"balanceOf({holder}) returned {len(word)} hex digits, not one word")
        return value

    async def account_resources(self, address: str) -> AccountResources:
        """Activation, TRX, and energy/bandwidth left (node fields are omitted when 0)."""
        hex_address = address_to_hex(address)
        account = await self._dict("wallet/getaccount", {"address": hex_address, "visible": False})
        if not account:  # never activated: an address that only received TRC20 looks like this
            return AccountResources(address, False, 0, 0, 0, 0, 0, 0, 0)
        res = await self._dict("wallet/getaccountresource", {"address": hex_address, "visible": False})
        return AccountResources(
            address=address,
            activated=True,
            trx_sun=_int(account, "balance"),
            energy_limit=_int(res, "EnergyLimit"),
            energy_used=_int(res, "EnergyUsed"),
            net_limit=_int(res, "NetLimit"),
            net_used=_int(res, "NetUsed"),
            free_net_limit=_int(res, "freeNetLimit"),
            free_net_used=_int(res, "freeNetUsed"),
        )

    async def trx_balance(self, address: str) -> int:
        account = await self._dict(
            "wallet/getaccount", {"address": address_to_hex(address), "visible": False}
        )
        return _int(account, "balance")

    async def is_activated(self, address: str) -> bool:
        account = await self._dict(
            "wallet/getaccount", {"address": address_to_hex(address), "visible": False}
        )
        return bool(account)

    async def _chain_parameter(self, name: str, *, positive: bool = True) -> int:
        """A chain parameter (`wallet/getchainparameters`), all of them cached together for
        `chain_parameters_ttl`. java-tron omits `value` when it is 0."""
        now = time.monotonic()
        cached = self._chain_params
        if cached is None or now - cached[0] >= self._params_ttl:
            answer = await self._dict("wallet/getchainparameters", {})
            entries = answer.get("chainParameter")
            values: dict[str, Any] = {}
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("key"), str):
                    values[entry["key"]] = entry.get("value", 0)
            cached = self._chain_params = (now, values)
        if name not in cached[1]:
            raise ChainResponseError(f"the node's chain parameters have no {name}")
        value = cached[1][name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (positive and value == 0):
            raise ChainResponseError(f"{name} is {value!r}")
        return value

    async def energy_fee(self) -> int:
        """Sun per energy unit (chain parameter getEnergyFee), cached for `chain_parameters_ttl`."""
        return await self._chain_parameter("getEnergyFee")

    async def trx_fees(self) -> tuple[int, int, int]:
        """(getTransactionFee: sun per bandwidth byte burnt, getCreateAccountFee: burnt instead of the
        bandwidth to create an account, getCreateNewAccountFeeInSystemContract: the TransferActuator's
        charge for creating one), cached like `energy_fee`."""
        return (
            await self._chain_parameter("getTransactionFee"),
            await self._chain_parameter("getCreateAccountFee", positive=False),
            await self._chain_parameter("getCreateNewAccountFeeInSystemContract", positive=False),
        )

    async def _block(self, path: str) -> BlockRef:
        block = await self._dict(path, {"visible": False})
        try:
            header = block["block_header"]["raw_data"]
            return BlockRef(int(header.get("number", 0)), str(block["blockID"]), int(header["timestamp"]))
        except (KeyError, TypeError, ValueError):
            raise ChainResponseError(f"{path}: malformed block") from None

    async def latest_solid_block(self) -> BlockRef:
        return await self._block("walletsolidity/getnowblock")

    async def latest_block(self) -> BlockRef:
        return await self._block("wallet/getnowblock")

    async def head_clock_skew_seconds(self) -> float:
        """The node's head-block time minus the host clock, in seconds (positive: the chain is ahead).

        Blocks come every 3 s: a healthy node is at most a few seconds "behind"; far off means a
        wrong host clock or a stalled node."""
        head = await self.latest_block()
        return head.timestamp_ms / 1000 - self._clock().timestamp()

    async def _constant_call(
        self, owner: str, contract: str, selector: str, parameter: str
    ) -> dict[str, Any]:
        """`wallet/triggerconstantcontract` as java-tron answers it (visible: T-addresses, plain text)."""
        return await self._dict(
            "wallet/triggerconstantcontract",
            {
                "owner_address": owner,
                "contract_address": contract,
                "function_selector": selector,
                "parameter": parameter,
                "visible": True,
            },
        )

    async def simulate_transfer(self, owner: str, destination: str, amount: int, *, token: str) -> Simulation:
        """Run `transfer(destination, amount)` from `owner` as a constant call: would it revert, and
        how much energy does it really use (dynamic-energy penalty included)?

        Nothing is signed or sent. java-tron answers for any owner, activated or not, with or without
        TRX (a constant call's energy limit does not come from the caller's account), so an address
        that only ever received the token is simulated like any other. A token whose `transfer`
        returns false instead of reverting is reported as reverted: the money would not move.
        Raises ChainResponseError when the call did not run (e.g. CONTRACT_VALIDATE_ERROR).
        """
        check_tron_address(owner)
        check_tron_address(destination)
        check_tron_address(token)
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 2**256:
            raise ValueError("amount must be a positive integer in base units")
        what = f"transfer simulation {owner} -> {destination}"
        answer = await self._constant_call(
            owner, token, "transfer(address,uint256)", transfer_data(destination, amount)[8:]
        )
        simulation, output = _parse_constant_call(answer, what)
        if simulation.reverted or not output:  # no return data: a token whose transfer returns nothing
            return simulation
        if not _bool_word(output, what):
            return Simulation(
                True, simulation.energy_used, simulation.energy_penalty, "transfer returned false"
            )
        return simulation

    async def is_blacklisted(self, address: str, *, token: str) -> bool:
        """Tether's `isBlackListed(address)`: a listed address's transfers revert (its funds are frozen)."""
        check_tron_address(address)
        check_tron_address(token)
        what = f"isBlackListed({address})"
        answer = await self._constant_call(
            address, token, "isBlackListed(address)", address_to_hex(address)[2:].rjust(64, "0")
        )
        simulation, output = _parse_constant_call(answer, what)
        if simulation.reverted:
            raise ChainResponseError(f"{what} reverted: {simulation.message}")
        return _bool_word(output, what)

    async def check_resources(
        self,
        owner: str,
        destination: str,
        token: str,
        *,
        energy_needed: int,
        bandwidth_needed: int = TRANSFER_BANDWIDTH,
    ) -> ResourceCheck:
        """Can `owner` send this transfer now without burning TRX? Broadcast only when `.ok`.

        `energy_needed` is what the caller measured (`simulate_transfer(...).energy_used`); nothing
        here guesses it. `destination` and `token` name the transfer being checked.
        """
        for number, name in ((energy_needed, "energy_needed"), (bandwidth_needed, "bandwidth_needed")):
            if not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        res = await self.account_resources(owner)
        reasons: list[str] = []
        if not res.activated:
            reasons.append("the address is not activated")
        if res.energy_available < energy_needed:
            reasons.append(f"energy {res.energy_available} < {energy_needed} needed")
        if not res.covers_bandwidth(bandwidth_needed):
            reasons.append(
                f"bandwidth {max(res.net_available, res.free_net_available)} < {bandwidth_needed} needed"
            )
        return ResourceCheck(
            ok=not reasons,
            activated=res.activated,
            energy_needed=energy_needed,
            energy_available=res.energy_available,
            bandwidth_needed=bandwidth_needed,
            bandwidth_available=max(res.net_available, res.free_net_available),
            reasons=tuple(reasons),
        )

    # --- transfers ---

    async def fee_limit_for(self, energy_needed: int) -> int:
        """fee_limit covering `energy_needed` plus the margin: java-tron caps the energy a call may
        use at fee_limit / energy fee even when the energy is delegated."""
        fee = await self.energy_fee()
        return -(-energy_needed * fee * (100 + self._fee_margin) // 100)

    async def build_transfer(
        self,
        owner: str,
        destination: str,
        amount: int,
        *,
        token: str = USDT_MAINNET,
        fee_limit_sun: int,
        lifetime_ms: int = DEFAULT_LIFETIME_MS,
    ) -> UnsignedTransfer:
        """Build `transfer(destination, amount)` from `owner` and verify it; nothing is signed.

        `fee_limit_sun` is the caller's: `fee_limit_for(simulation.energy_used)`.
        """
        check_tron_address(owner)
        check_tron_address(destination)
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            raise ValueError("amount must be a positive integer in base units")
        if not isinstance(fee_limit_sun, int) or isinstance(fee_limit_sun, bool) or fee_limit_sun <= 0:
            raise ValueError("fee_limit_sun must be a positive integer (fee_limit_for(energy_needed))")
        contract = await self._contract(token)
        # Stamped from the node's head-block time, not the host clock (tronpy stamps the host's): a
        # host clock that is off cannot make the transfer expired, or too far ahead, for the chain.
        started = time.monotonic()  # before the head read: the lifetime left is never overstated
        head = await self.latest_block()
        try:
            builder = await contract.functions.transfer(destination, amount)
            builder = builder.with_owner(owner).fee_limit(fee_limit_sun)
            builder._raw_data["timestamp"] = head.timestamp_ms
            builder._raw_data["expiration"] = head.timestamp_ms + lifetime_ms
            tx = await builder.build()
        except (ApiError, UnknownError, TronValidationError, TransactionError, TvmError) as exc:
            raise ChainResponseError(f"building the transfer failed: {exc}") from None
        raw_data = copy.deepcopy(tx.to_json()["raw_data"])
        node_txid = str(tx.txid)
        decoded = verify_transfer(
            raw_data,
            node_txid,
            owner=owner,
            token=token,
            destination=destination,
            amount=amount,
            fee_limit_sun=fee_limit_sun,
        )
        return UnsignedTransfer(
            txid=node_txid.lower(),
            raw_data=raw_data,
            owner=owner,
            destination=destination,
            token=token,
            amount=amount,
            fee_limit_sun=fee_limit_sun,
            expiration_ms=decoded.expiration_ms,
            built_monotonic=started,
        )

    async def build_trx_sweep(
        self, owner: str, destination: str, *, lifetime_ms: int = DEFAULT_LIFETIME_MS
    ) -> TrxSweep:
        """Plan the sweep of all of `owner`'s TRX to `destination` and build its TransferContract,
        verified, not signed (`unsigned` None when nothing can be sent: `plan.amount_sun` 0).

        Reads the owner's balance (`wallet/getaccount`) and bandwidth (`wallet/getaccountnet`),
        whether the destination exists (`wallet/getaccount`), the fee parameters (`trx_fees`) and the
        head block, which stamps timestamp/expiration (as `build_transfer`) and is the TAPOS
        reference. The raw_data is built locally, so the plan's fee (`sweeper.chain.trx`) is the one
        the chain will charge if the account is unchanged when it executes.
        """
        check_tron_address(owner)
        check_tron_address(destination)
        if owner == destination:
            raise ValueError("cannot sweep TRX to the address itself")
        if not isinstance(lifetime_ms, int) or isinstance(lifetime_ms, bool) or lifetime_ms <= 0:
            raise ValueError("lifetime_ms must be a positive integer")
        account = await self._dict("wallet/getaccount", {"address": address_to_hex(owner), "visible": False})
        net = await self._dict("wallet/getaccountnet", {"address": address_to_hex(owner), "visible": False})
        target = await self._dict(
            "wallet/getaccount", {"address": address_to_hex(destination), "visible": False}
        )
        fee_per_byte, create_account_fee, system_fee = await self.trx_fees()
        balance = _int(account, "balance")
        if balance < 0:
            raise ChainResponseError(f"getaccount {owner}: negative balance {balance}")
        started = time.monotonic()  # before the head read: the lifetime left is never overstated
        head = await self.latest_block()
        timestamp, expiration = head.timestamp_ms, head.timestamp_ms + lifetime_ms

        def raw_for(amount: int) -> dict[str, Any]:
            return transfer_raw_data(
                owner, destination, amount, ref_block=head, timestamp_ms=timestamp, expiration_ms=expiration
            )

        plan = plan_trx_sweep(
            balance,
            bytes_for=lambda amount: bandwidth_bytes(raw_for(amount)),
            net_available=max(0, _int(net, "NetLimit") - _int(net, "NetUsed")),
            free_net_available=max(0, _int(net, "freeNetLimit") - _int(net, "freeNetUsed")),
            destination_exists=bool(target),
            fee_per_byte=fee_per_byte,
            create_account_fee=create_account_fee,
            create_new_account_fee_in_system_contract=system_fee,
        )
        if plan.amount_sun <= 0:
            return TrxSweep(plan, None)
        raw_data = raw_for(plan.amount_sun)
        txid = str(calculate_txid_from_raw_data(raw_data)).lower()
        decoded = verify_transfer(
            raw_data,
            txid,
            owner=owner,
            token=None,
            destination=destination,
            amount=plan.amount_sun,
            fee_limit_sun=0,
        )
        unsigned = UnsignedTransfer(
            txid=txid,
            raw_data=raw_data,
            owner=owner,
            destination=destination,
            token=None,
            amount=plan.amount_sun,
            fee_limit_sun=0,
            expiration_ms=decoded.expiration_ms,
            built_monotonic=started,
        )
        return TrxSweep(plan, unsigned)

    def sign_transfer(
        self, unsigned: UnsignedTransfer, key: SigningKey, *, min_remaining_ms: int = 5_000
    ) -> SignedTransfer:
        """Sign after re-verifying; the key must belong to the transfer's owner."""
        return sign_transfer(unsigned, key, min_remaining_ms=min_remaining_ms)

    async def broadcast(self, signed: SignedTransfer) -> BroadcastResult:
        """Send the signed bytes. DUP_TRANSACTION_ERROR means the node already has them (not a new tx)."""
        answer = await self._dict("wallet/broadcasttransaction", signed.broadcast_payload())
        if answer.get("result") is True:
            node_txid = str(answer.get("txid") or signed.txid).lower()
            if node_txid != signed.txid:
                raise ChainResponseError(f"the node accepted {signed.txid} under another txid {node_txid}")
            return BroadcastResult(signed.txid, BroadcastOutcome.ACCEPTED)
        code = str(answer.get("code", "UNKNOWN"))
        message = _decode_message(answer.get("message"))[:300]
        if code == "DUP_TRANSACTION_ERROR":
            return BroadcastResult(signed.txid, BroadcastOutcome.ALREADY_KNOWN)
        if code in _TRANSIENT_CODES:
            raise ChainUnavailable(f"broadcast of {signed.txid}: {code} {message}")
        raise BroadcastRejected(code, message)

    async def transaction_status(
        self, txid: str, *, expiration_ms: int, token: str | None = USDT_MAINNET
    ) -> TransferStatus:
        """The transaction's fate as the solidified chain tells it (`token` None: a TRX transfer).

        EXPIRED is only said when no block can include it any more: java-tron refuses a transaction
        whose expiration is at or before the head block's time, so once the latest *solidified*
        block is `expiry_margin_ms` past the expiration (two 3-s blocks), every block that could hold
        it is solidified, and the solidity node does not know it.
        """
        # The solid head is read BEFORE the receipt: if the transaction solidified between two
        # calls made the other way round, "not found" + a late head would read as EXPIRED and
        # the pipeline would sign a second transfer while the first one lands.
        solid = await self.latest_solid_block()
        info = await self._dict("walletsolidity/gettransactioninfobyid", {"value": txid, "visible": False})
        if not info:
            if solid.timestamp_ms >= expiration_ms + self._expiry_margin_ms:
                # Behind a load balancer the two calls may reach different nodes: ask the full
                # node too, which knows every transaction it has seen, solid or not.
                if await self.transaction_known(txid):
                    return TransferStatus(txid, TxState.PENDING)
                return TransferStatus(txid, TxState.EXPIRED)
            return TransferStatus(txid, TxState.PENDING)
        if str(info.get("id", txid)).lower() != txid.lower():
            raise ChainResponseError(f"asked for {txid}, the node answered about {info.get('id')}")
        receipt = info.get("receipt") or {}
        if token is None:
            return await self._trx_status(txid, info, receipt)
        # java-tron writes SUCCESS explicitly for a contract call; a missing result is no evidence.
        result = str(receipt.get("result", "MISSING_RESULT"))
        failed = info.get("result") == "FAILED" or result != "SUCCESS"
        reason = None
        if failed:
            reason = f"{result}: {_decode_message(info.get('resMessage'))}".rstrip(": ")
        return TransferStatus(
            txid=txid,
            state=TxState.FAILED if failed else TxState.CONFIRMED,
            reason=reason,
            block_number=_int(info, "blockNumber"),
            fee_sun=_int(info, "fee"),
            energy_used=_int(receipt, "energy_usage_total"),
            net_usage=_int(receipt, "net_usage"),
            transfers=tuple(decode_transfer_logs(info, token)) if not failed else (),
        )

    async def _trx_status(self, txid: str, info: dict[str, Any], receipt: Any) -> TransferStatus:
        """A TRX TransferContract's info has no receipt.result (DEFAULT, not rendered): being in a
        solidified block is success (a TransferActuator that fails never makes a block). What moved
        is read from the solidified transaction itself; `fee` (absent when 0) is every sun burnt."""
        if not isinstance(receipt, dict):
            raise ChainResponseError(f"transaction info {txid}: receipt is not an object")
        transaction = await self._dict("walletsolidity/gettransactionbyid", {"value": txid, "visible": False})
        moved = trx_transfer_of(transaction, txid)
        return TransferStatus(
            txid=txid,
            state=TxState.CONFIRMED,
            block_number=_int(info, "blockNumber"),
            fee_sun=_int(info, "fee"),
            net_usage=_int(receipt, "net_usage"),
            transfers=(moved,),
        )

    async def transaction_known(self, txid: str) -> bool:
        """Whether the full node has seen the transaction (in a block or in its pending pool)."""
        known = await self._dict("wallet/gettransactionbyid", {"value": txid, "visible": False})
        return bool(known)

    # --- following blocks (the node's answer forms: docs/design.md, "Following blocks") ---

    async def solid_head(self) -> BlockRef:
        """The latest solidified block (`walletsolidity/getnowblock`): one request."""
        return await self.latest_solid_block()

    async def solid_block_transaction_count(self, block_number: int) -> int:
        """How many transactions a solidified block holds (`walletsolidity/getblockbynum`): one request.

        What makes a `[]` from `solid_transaction_infos` trustworthy: java-tron answers `[]` both for
        an empty block and for a block it cannot serve, but this endpoint answers the block (without a
        `transactions` key when it is empty) or `{}` when the node does not have it solidified (not yet
        solid, or a load-balanced backend that is behind): that raises ChainResponseError, never 0.
        (`gettransactioncountbyblocknum` answers `{"count": 0}` for a block it does not have: unusable.)
        """
        return len(await self._solid_block_transactions(block_number))

    async def solid_block_trx_transfers(self, block_number: int) -> tuple[int, list[TokenTransfer]]:
        """A solidified block's transaction count (as `solid_block_transaction_count`, same errors) and
        its successful TRX TransferContract transfers (token None, T-addresses): ONE request,
        `walletsolidity/getblockbynum`."""
        transactions = await self._solid_block_transactions(block_number)
        return len(transactions), trx_transfers_in_block(transactions)

    async def _solid_block_transactions(self, block_number: int) -> list[Any]:
        """`walletsolidity/getblockbynum`'s transactions ([] for an empty block); ChainResponseError
        for a block the node does not have solidified, another block, or a malformed answer."""
        block = await self._dict("walletsolidity/getblockbynum", {"num": block_number, "visible": False})
        if not block:
            raise ChainResponseError(
                f"getblockbynum: the node has no solidified block {block_number} (not yet solid, or not kept)"
            )
        try:
            number = int(block["block_header"]["raw_data"].get("number", 0))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ChainResponseError(f"getblockbynum {block_number}: malformed block") from None
        if number != block_number:
            raise ChainResponseError(f"asked for block {block_number}, the node answered block {number}")
        transactions = block.get("transactions", [])
        if not isinstance(transactions, list):
            raise ChainResponseError(f"getblockbynum {block_number}: transactions is not a list")
        return transactions

    async def solid_transaction_infos(self, block_number: int) -> list[dict[str, Any]]:
        """All transaction infos of a solidified block (`walletsolidity/gettransactioninfobyblocknum`,
        visible=false: log addresses are bare 20-byte hex): one request.

        `[]` (and the `{}` java-tron answers for a number <= 0) come back as `[]`, which means an empty
        block OR a block this node cannot serve: only `solid_block_transaction_count` tells them apart.
        An info about another block, or an entry that is not an object, raises ChainResponseError.
        """
        answer = await self._request(
            "walletsolidity/gettransactioninfobyblocknum", {"num": block_number, "visible": False}
        )
        if isinstance(answer, dict) and not answer:
            return []
        if not isinstance(answer, list):
            raise ChainResponseError("gettransactioninfobyblocknum: expected a JSON array")
        for info in answer:
            if not isinstance(info, dict):
                raise ChainResponseError("gettransactioninfobyblocknum: an entry is not a JSON object")
            if info.get("blockNumber", block_number) != block_number:
                raise ChainResponseError(
                    f"asked for the infos of block {block_number}, got one of block {info.get('blockNumber')}"
                )
        return answer

    async def token_transfers_in_block(
        self, block_number: int, token: str = USDT_MAINNET
    ) -> list[TokenTransfer]:
        """Successful Transfer events of `token` in a solidified block, whoever the recipient.
        (The follower uses `solid_transaction_infos` + `transfers.deposits_in_block`.)"""
        out: list[TokenTransfer] = []
        for info in await self.solid_transaction_infos(block_number):
            if _succeeded(info):
                out.extend(decode_transfer_logs(info, token))
        return out
