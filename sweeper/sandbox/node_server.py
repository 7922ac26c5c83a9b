"""The sandbox TRON node: java-tron's HTTP API (the part tronpy and the sweeper use) over a `World`.

Start it in-process for tests::

    node = SandboxNode(world, solid_lag=2)
    with serve_in_thread(node.app) as server:       # server.url -> "http://127.0.0.1:PORT"
        node.start_block_production(3.0)              # optional: a block every 3 s
        ...
    node.stop_block_production()

or standalone (the demo, e2e tests with a daemon subprocess)::

    python -m sweeper.sandbox.node_server --port 8090 --block-interval 3 --solid-lag 19

Requests may carry any path prefix (`http://host/trongrid/wallet/getaccount` works), so a test can
exercise URL-dependent client behaviour without DNS.

Switches (attributes of `node.switches`, or `POST /_sandbox/control {"op": "switches", ...}`):
- `latency_s`: added to every answer;
- `max_rps`: above this many requests in the last second, answer 429;
- `error_rate` (0..1, seeded) and `fail_next` (the next N requests): answer `fail_status` (503);
- `forge_txid`: getsignweight returns the txid of a different transaction (same owner, amount,
  contract; an attacker's destination) — a client that signs the node's txid is robbed;
- `drop_broadcasts`: answer "accepted" but forget the transaction (it is never mined);
- `no_transaction_info`: a node without the transaction-info store (java-tron's
  `storage.transHistory.switch = "off"`): `gettransactioninfobyblocknum` always answers `[]`,
  `gettransactioninfobyid` `{}`;
- `lagging_infos` (N): a load-balanced endpoint whose backends are at different heights: each block
  that has transactions answers `[]` to its first N `gettransactioninfobyblocknum` requests;
- `fail_after_broadcast` (N): the next N broadcasts are accepted, then answered `fail_status` (the
  answer lost: a retry of the same bytes gets DUP_TRANSACTION_ERROR);
and on the node/world: `hold_broadcasts()` (requests stay open until `release_broadcasts()`),
`world.hold_solidification()`, `world.hold_inclusion()`, `world.advance_time(s)`, an account's
free bandwidth (`world.use_free_bandwidth(address[, n])`, `reset_free_bandwidth`; control ops of the
same names), and the USDT
contract's state: `world.blacklist(address)`, `world.pause_usdt()`, `world.set_energy_penalty(n)`
(control ops `blacklist` {address, held}, `pause_usdt` {held}, `energy_penalty` {amount}).
`triggerconstantcontract` and `estimateenergy` answer in java-tron's forms (see `_run_call`);
blocks and transaction infos too (docs/design.md, "Following blocks: the node's answers"), with
transactions the sweeper does not send recorded by world helpers (`world.token_transfer`,
`internal_deposit`, `failed_transfer_with_log`, `trx_transfer`; control ops of the same names).
Blocks are produced on demand (`world.produce_block(s)`, the `produce_blocks` control op) or by the
ticker (the `block_interval` control op starts/stops it); tests should produce them on demand and
wait on observable state, never on time.

Test-only routes (a test in another process uses them through `sweeper.sandbox.control`):
`POST /_sandbox/control`, `GET /_sandbox/state`, `GET /_sandbox/account?address=` (the world's
record, activated or not, with its USDT balance) and `GET /_sandbox/transactions[?owner=&to=]`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import random
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Any

import base58
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from tronpy.keys import keccak256, to_base58check_address
from tronpy.proto.transaction import _raw_data_to_protobuf

from sweeper.domain import address_to_hex
from sweeper.sandbox.serve import RunningServer, serve_in_thread
from sweeper.sandbox.world import (
    IS_BLACKLISTED_SELECTOR,
    TRANSFER_EVENT_TOPIC,
    TRANSFER_SELECTOR,
    USDT_ENERGY_BALANCE_OF,
    USDT_ENERGY_DECIMALS,
    USDT_ENERGY_IS_BLACKLISTED,
    USDT_ENERGY_REVERT_PAUSED,
    Block,
    NodeRejection,
    TxRecord,
    World,
)

# The attacker a forged txid would pay (a fixed, valid address nobody in the tests owns).
FORGED_DESTINATION = "TNPeeaaFB7K9cmo4uQpcU32zGK8G1NYqeL"
# The caller of a constant call that names no owner (java-tron: an empty owner_address).
ZERO_ADDRESS = str(to_base58check_address("41" + "00" * 20))
BALANCE_OF_SELECTOR = "70a08231"  # balanceOf(address)
DECIMALS_SELECTOR = "313ce567"  # decimals()

# A representative subset of USDT's ABI, rendered the way java-tron's getcontract does.
USDT_ABI: list[dict[str, Any]] = [
    {
        "constant": True,
        "inputs": [{"name": "who", "type": "address"}],
        "name": "balanceOf",
        "outputs": [{"name": "", "type": "uint256"}],
        "stateMutability": "View",
        "type": "Function",
    },
    {
        "inputs": [{"name": "_to", "type": "address"}, {"name": "_value", "type": "uint256"}],
        "name": "transfer",
        "outputs": [{"name": "", "type": "bool"}],
        "stateMutability": "Nonpayable",
        "type": "Function",
    },
    {
        "constant": True,
        "name": "decimals",
        "outputs": [{"name": "", "type": "uint8"}],
        "stateMutability": "View",
        "type": "Function",
    },
    {
        "anonymous": False,
        "inputs": [
            {"indexed": True, "name": "from", "type": "address"},
            {"indexed": True, "name": "to", "type": "address"},
            {"name": "value", "type": "uint256"},
        ],
        "name": "Transfer",
        "type": "Event",
    },
]


@dataclass
class _CallRun:
    """A contract call's outcome, for triggerconstantcontract and estimateenergy."""

    reverted: bool
    energy_used: int  # penalty included
    energy_penalty: int
    output: str  # return data, hex ("" for a revert without a reason)
    logs: list[tuple[str, list[str], str]] = field(default_factory=list)


@dataclass
class NodeSwitches:
    latency_s: float = 0.0
    max_rps: float | None = None
    error_rate: float = 0.0
    fail_next: int = 0
    fail_status: int = 503
    forge_txid: bool = False
    drop_broadcasts: bool = False
    no_transaction_info: bool = False
    lagging_infos: int = 0
    # The next N broadcasts are accepted into the pool, then answered `fail_status`: the answer is
    # lost, so the client's retry of the same bytes meets DUP_TRANSACTION_ERROR.
    fail_after_broadcast: int = 0


@dataclass(frozen=True)
class RequestRecord:
    path: str  # e.g. "wallet/getaccount" (prefix stripped)
    headers: dict[str, str]  # lower-cased names; every header the client sent
    status: int = 200


@dataclass
class _Counters:
    by_path: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected_429: int = 0
    failed_5xx: int = 0


def _is_visible(body: dict[str, Any]) -> bool:
    value = body.get("visible", False)
    return value is True or str(value).lower() == "true"


def _hex_msg(text: str) -> str:
    return text.encode().hex()


def _render_address(address: str, visible: bool) -> str:
    return address if visible else address_to_hex(address)


def _render_log_address(address: str, visible: bool) -> str:
    """A transaction info's log address (gettransactioninfobyid / -byblocknum): the bare 20 bytes as
    hex; with visible=true the servlets first put 0x41 back (Util.convertLogAddressToTronAddress), so
    it is the ordinary T-address."""
    return address if visible else address_to_hex(address)[2:]


def _render_constant_log_address(address: str, visible: bool) -> str:
    """A constant call's log address (TransactionExtention.logs, printed without that conversion):
    the bare 20 bytes as hex, or base58check of those 20 bytes (USDT: G9AHnMvAgqKJ2eWErupYfdzu6hgWVUZqu)."""
    raw20 = bytes.fromhex(address_to_hex(address)[2:])
    return base58.b58encode_check(raw20).decode() if visible else raw20.hex()


def _b58(value: Any) -> str:
    return str(to_base58check_address(str(value)))


def _hex20(address: str) -> str:
    return address_to_hex(address)[2:]


def _word_address(params: str, index: int) -> str:
    """The address in ABI word `index` of call parameters (hex)."""
    word = params[64 * index : 64 * (index + 1)]
    if len(word) != 64:
        raise ValueError("the call data is too short")
    return _b58("41" + word[24:])


class SandboxNode:
    """The fake java-tron full node + solidity node over one `World`."""

    def __init__(
        self,
        world: World | None = None,
        *,
        switches: NodeSwitches | None = None,
        solid_lag: int | None = None,
        seed: int = 0,
        request_log_size: int = 10_000,
    ) -> None:
        self.world = world if world is not None else World()
        if solid_lag is not None:
            self.world.solid_lag = solid_lag
        self.switches = switches if switches is not None else NodeSwitches()
        self.requests: collections.deque[RequestRecord] = collections.deque(maxlen=request_log_size)
        self.counters = _Counters()
        self._rng = random.Random(seed)
        self._window: collections.deque[float] = collections.deque()
        self._state_lock = threading.Lock()
        self._broadcast_gate = threading.Event()
        self._broadcast_gate.set()
        self._held = 0
        self._info_asks: collections.Counter[int] = collections.Counter()  # for `lagging_infos`
        self._ticker: threading.Thread | None = None
        self._ticker_stop = threading.Event()
        self.block_interval: float | None = None  # the ticker's period while it runs
        self.app = Starlette(
            routes=[
                Route("/_sandbox/control", self._control, methods=["POST"]),
                Route("/_sandbox/state", self._state, methods=["GET"]),
                Route("/_sandbox/account", self._account_state, methods=["GET"]),
                Route("/_sandbox/transactions", self._transactions_state, methods=["GET"]),
                Route("/{path:path}", self._dispatch, methods=["GET", "POST"]),
            ]
        )

    # --- switches that need more than an attribute ---

    def hold_broadcasts(self) -> None:
        """broadcasttransaction requests stay open (unanswered, unprocessed) until released."""
        self._broadcast_gate.clear()

    def release_broadcasts(self) -> None:
        self._broadcast_gate.set()

    @property
    def held_broadcasts(self) -> int:
        """How many broadcast requests are being held right now (observable state for tests)."""
        with self._state_lock:
            return self._held

    def requests_to(self, path: str) -> list[RequestRecord]:
        return [r for r in list(self.requests) if r.path == path]

    # --- block production ---

    def start_block_production(self, interval_s: float) -> None:
        """A background ticker producing one block every `interval_s` (the demo; mainnet is 3 s)."""
        self.stop_block_production()
        self._ticker_stop.clear()

        def run() -> None:
            while not self._ticker_stop.wait(interval_s):
                self.world.produce_block()

        self._ticker = threading.Thread(target=run, name="sandbox-node-blocks", daemon=True)
        self._ticker.start()
        self.block_interval = interval_s

    def stop_block_production(self) -> None:
        if self._ticker is not None:
            self._ticker_stop.set()
            self._ticker.join(5)
            self._ticker = None
        self.block_interval = None

    # --- HTTP ---

    async def _dispatch(self, request: Request) -> Response:
        full = request.path_params["path"].strip("/")
        parts = full.split("/")
        path = "/".join(parts[-2:])
        headers = {k.lower(): v for k, v in request.headers.items()}
        status = self._admission()
        self.requests.append(RequestRecord(path, headers, status))
        self.counters.by_path[path] += 1
        if status != 200:
            return JSONResponse({"Error": "sandbox: switched failure"}, status_code=status)
        if self.switches.latency_s > 0:
            await asyncio.sleep(self.switches.latency_s)
        body = await self._body(request)
        if body is None:
            return JSONResponse({"Error": "class org.json.JSONException : invalid JSON"}, status_code=200)
        handler = self._handlers().get(path)
        if handler is None:
            return JSONResponse({"Error": f"sandbox: no such API {path}"}, status_code=404)
        if path == "wallet/broadcasttransaction":
            await self._wait_broadcast_gate()
        try:
            result = handler(body, path.startswith("walletsolidity/"))
        except NodeRejection as exc:
            result = {"code": exc.code, "message": _hex_msg(exc.message)}
        except (KeyError, ValueError, TypeError) as exc:
            result = {"Error": f"class java.lang.IllegalArgumentException : {type(exc).__name__}"}
        if path == "wallet/broadcasttransaction" and result.get("result") is True:
            with self._state_lock:
                lose = self.switches.fail_after_broadcast > 0
                if lose:
                    self.switches.fail_after_broadcast -= 1
                    self.counters.failed_5xx += 1
            if lose:
                return JSONResponse({"Error": "sandbox: answer lost"}, status_code=self.switches.fail_status)
        return JSONResponse(result)

    def _admission(self) -> int:
        sw = self.switches
        with self._state_lock:
            if sw.max_rps is not None:
                now = time.monotonic()
                while self._window and self._window[0] <= now - 1.0:
                    self._window.popleft()
                if len(self._window) >= sw.max_rps:
                    self.counters.rejected_429 += 1
                    return 429
                self._window.append(now)
            if sw.fail_next > 0:
                sw.fail_next -= 1
                self.counters.failed_5xx += 1
                return sw.fail_status
            if sw.error_rate > 0 and self._rng.random() < sw.error_rate:
                self.counters.failed_5xx += 1
                return sw.fail_status
        return 200

    @staticmethod
    async def _body(request: Request) -> dict[str, Any] | None:
        raw = await request.body()
        if not raw.strip():
            return dict(request.query_params)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None

    async def _wait_broadcast_gate(self) -> None:
        if self._broadcast_gate.is_set():
            return
        with self._state_lock:
            self._held += 1
        try:
            while not self._broadcast_gate.is_set():
                await asyncio.sleep(0.005)
        finally:
            with self._state_lock:
                self._held -= 1

    def _handlers(self) -> dict[str, Any]:
        h: dict[str, Any] = {
            "wallet/getnodeinfo": self._getnodeinfo,
            "wallet/getchainparameters": self._getchainparameters,
            "wallet/getcontract": self._getcontract,
            "wallet/getsignweight": self._getsignweight,
            "wallet/broadcasttransaction": self._broadcast,
            "wallet/getaccountresource": self._getaccountresource,
            "wallet/getaccountnet": self._getaccountnet,
            "wallet/estimateenergy": self._estimateenergy,
        }
        for prefix in ("wallet", "walletsolidity"):
            h[f"{prefix}/getnowblock"] = self._getnowblock
            h[f"{prefix}/getblockbynum"] = self._getblockbynum
            h[f"{prefix}/getaccount"] = self._getaccount
            h[f"{prefix}/triggerconstantcontract"] = self._triggerconstant
            h[f"{prefix}/gettransactioninfobyid"] = self._gettransactioninfobyid
            h[f"{prefix}/gettransactionbyid"] = self._gettransactionbyid
            h[f"{prefix}/gettransactioninfobyblocknum"] = self._gettransactioninfobyblocknum
        return h

    # --- blocks ---

    def _head(self, solid: bool) -> Block:
        return self.world.solid_head if solid else self.world.head

    def _render_block(self, block: Block, visible: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "blockID": block.block_id,
            "block_header": {
                "raw_data": {
                    "number": block.number,
                    "txTrieRoot": "00" * 32,
                    "witness_address": _render_address("TLyqzVGLV1srkB7dToTAEqgDSfPtXRJZYH", visible),
                    "parentHash": block.parent_id,
                    "version": 31,
                    "timestamp": block.timestamp_ms,
                },
                "witness_signature": "00" * 65,
            },
        }
        txs = [self.world.transactions[t] for t in block.txids if t in self.world.transactions]
        if txs:  # Util.printBlockToJSON: no `transactions` key for an empty block
            out["transactions"] = [self._render_tx(tx, visible, in_block=True) for tx in txs]
        return out

    def _render_tx(self, tx: TxRecord, visible: bool, *, in_block: bool = False) -> dict[str, Any]:
        out = tx.as_json()
        if not in_block:
            out["visible"] = visible
        raw = json.loads(json.dumps(out["raw_data"]))
        value = raw["contract"][0]["parameter"]["value"]
        for key in ("owner_address", "contract_address", "to_address"):
            if key in value:
                value[key] = _b58(value[key]) if visible else address_to_hex(_b58(value[key]))
        out["raw_data"] = raw
        return out

    def _getnowblock(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        with self.world.lock:
            return self._render_block(self._head(solid), _is_visible(body))

    def _getblockbynum(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        num = int(body.get("num", 0))
        with self.world.lock:
            if num > self._head(solid).number:
                return {}
            block = self.world.block(num)
            return self._render_block(block, _is_visible(body)) if block else {}

    def _getnodeinfo(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        with self.world.lock:
            head, sol = self.world.head, self.world.solid_head
            return {
                "activeConnectCount": 1,
                "beginSyncNum": head.number,
                "block": f"Num:{head.number},ID:{head.block_id}",
                "solidityBlock": f"Num:{sol.number},ID:{sol.block_id}",
                "configNodeInfo": {"codeVersion": "4.7.6-sandbox"},
            }

    def _getchainparameters(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        w = self.world
        return {
            "chainParameter": [
                {"key": "getMaintenanceTimeInterval", "value": 21_600_000},
                {"key": "getCreateAccountFee", "value": w.create_account_fee_sun},
                {"key": "getTransactionFee", "value": w.bandwidth_fee_sun},
                {
                    "key": "getCreateNewAccountFeeInSystemContract",
                    "value": w.create_new_account_fee_in_system_contract_sun,
                },
                {"key": "getFreeNetLimit", "value": w.free_bandwidth},
                {"key": "getEnergyFee", "value": w.energy_fee_sun},
                {"key": "getAllowTvmTransferTrc10", "value": 1},
            ]
        }

    # --- accounts ---

    def _account_of(self, body: dict[str, Any]) -> tuple[str, Any]:
        address = _b58(body["address"])
        with self.world.lock:
            acct = self.world.accounts.get(address)
            return address, acct if acct is not None and acct.activated else None

    def _getaccount(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        address, acct = self._account_of(body)
        if acct is None:
            return {}
        out: dict[str, Any] = {
            "address": _render_address(address, _is_visible(body)),
            "create_time": acct.create_time_ms,
            "account_resource": {},
        }
        if acct.trx_sun:
            out["balance"] = acct.trx_sun
        if acct.free_bandwidth_used:
            out["free_net_usage"] = acct.free_bandwidth_used
        return out

    def _getaccountresource(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        _, acct = self._account_of(body)
        if acct is None:
            return {}
        out = {
            "freeNetUsed": acct.free_bandwidth_used,
            "freeNetLimit": self.world.free_bandwidth,
            "NetUsed": acct.bandwidth_used,
            "NetLimit": acct.delegated_bandwidth,
            "EnergyUsed": acct.energy_used,
            "EnergyLimit": acct.delegated_energy,
            "TotalNetLimit": 43_200_000_000,
            "TotalNetWeight": 26_000_000_000,
            "TotalEnergyLimit": 180_000_000_000,
            "TotalEnergyWeight": 19_000_000_000,
        }
        return {k: v for k, v in out.items() if v}  # java-tron omits zero fields

    def _getaccountnet(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        _, acct = self._account_of(body)
        if acct is None:
            return {}
        out = {
            "freeNetUsed": acct.free_bandwidth_used,
            "freeNetLimit": self.world.free_bandwidth,
            "NetUsed": acct.bandwidth_used,
            "NetLimit": acct.delegated_bandwidth,
            "TotalNetLimit": 43_200_000_000,
            "TotalNetWeight": 26_000_000_000,
        }
        return {k: v for k, v in out.items() if v}

    # --- contracts ---

    def _getcontract(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        address = _b58(body["value"])
        if not self.world.is_token(address):
            return {}
        visible = _is_visible(body)
        return {
            "bytecode": "6080604052",
            "consume_user_resource_percent": 100,
            "name": "TetherToken" if address == self.world.usdt_contract else "SandboxToken",
            "origin_address": _render_address("THPvaUhoh2Qn2y9THCZML3H815hhFhn5YC", visible),
            "abi": {"entrys": USDT_ABI},
            "origin_energy_limit": 10_000_000,
            "contract_address": _render_address(address, visible),
            "code_hash": "00" * 32,
        }

    # A constant call, as java-tron answers it (framework/.../Wallet.java callConstantContract,
    # TriggerConstantContractServlet; tests/fixtures/constant-call-forms.json quotes them):
    # - it ran: `result.result` true, `energy_used` (penalty included), `energy_penalty` (omitted
    #   when 0), `constant_result`, `logs`, and the `transaction` it built, whose `ret` is `[{}]`
    #   (SUCESS is the proto default, not rendered) or `[{"ret": "FAILED"}]` on a revert, which
    #   also puts "REVERT opcode executed" in `result.message`;
    # - it did not run: `result.code` + `result.message` (plain text when visible, hex otherwise),
    #   no `result.result`, no transaction.
    # The owner's account is never looked at: java-tron runs a constant call for any owner.

    def _call_data(self, body: dict[str, Any]) -> tuple[str, str, str]:
        contract = _b58(body["contract_address"])
        if not self.world.is_token(contract):
            raise NodeRejection("CONTRACT_VALIDATE_ERROR", "Smart contract is not exist.")
        if "data" in body:
            data = str(body["data"]).lower()
            return contract, data[:8], data[8:]
        # java-tron's Util.parseMethod: keccak256 of the signature, then the parameter as given.
        signature = str(body.get("function_selector", "")).replace(" ", "")
        return contract, keccak256(signature.encode()).hex()[:8], str(body.get("parameter", "")).lower()

    @staticmethod
    def _return_error(code: str, message: str, visible: bool) -> dict[str, Any]:
        return {"result": {"code": code, "message": message if visible else _hex_msg(message)}}

    def _run_call(self, owner: str, selector: str, params: str, contract: str | None = None) -> _CallRun:
        world = self.world
        usdt = contract or world.usdt_contract  # the token called (USDT unless another is registered)
        if selector == BALANCE_OF_SELECTOR:
            holder = _word_address(params, 0)
            return _CallRun(False, USDT_ENERGY_BALANCE_OF, 0, f"{world.token_balance(usdt, holder):064x}")
        if selector == DECIMALS_SELECTOR:
            return _CallRun(False, USDT_ENERGY_DECIMALS, 0, f"{world.decimals(usdt):064x}")
        if selector == IS_BLACKLISTED_SELECTOR and usdt == world.usdt_contract:
            listed = world.is_blacklisted(_word_address(params, 0))
            return _CallRun(False, USDT_ENERGY_IS_BLACKLISTED, 0, f"{int(listed):064x}")
        if selector == TRANSFER_SELECTOR:
            if len(params) < 128:  # Tether's onlyPayloadSize(2 * 32)
                return _CallRun(True, USDT_ENERGY_REVERT_PAUSED, 0, "")
            to, amount = _word_address(params, 0), int(params[64:128], 16)
            with world.lock:
                run = world.usdt_transfer_run(owner, to, amount, usdt)
            if run.reverted:
                return _CallRun(True, run.energy_used, run.energy_penalty, "")
            log = (
                usdt,
                [TRANSFER_EVENT_TOPIC, "00" * 12 + _hex20(owner), "00" * 12 + _hex20(to)],
                f"{amount:064x}",
            )
            return _CallRun(False, run.energy_used, run.energy_penalty, f"{1:064x}", [log])
        # No such function and no fallback: the contract reverts.
        return _CallRun(True, USDT_ENERGY_DECIMALS, 0, "")

    def _triggerconstant(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        visible = _is_visible(body)
        try:
            contract, selector, params = self._call_data(body)
        except NodeRejection as exc:
            return self._return_error(exc.code, exc.message, visible)
        owner = _b58(body["owner_address"]) if body.get("owner_address") else ZERO_ADDRESS
        run = self._run_call(owner, selector, params, contract)
        result: dict[str, Any] = {"result": True}
        if run.reverted:
            result["message"] = "REVERT opcode executed" if visible else _hex_msg("REVERT opcode executed")
        out: dict[str, Any] = {"result": result, "energy_used": run.energy_used}
        if run.energy_penalty:
            out["energy_penalty"] = run.energy_penalty
        out["constant_result"] = [run.output]
        if run.logs:
            out["logs"] = [
                {"address": _render_constant_log_address(addr, visible), "topics": list(topics), "data": data}
                for addr, topics, data in run.logs
            ]
        out["transaction"] = self._constant_transaction(
            owner, selector + params, run.reverted, visible, contract
        )
        return out

    def _constant_transaction(
        self, owner: str, data: str, reverted: bool, visible: bool, contract: str | None = None
    ) -> dict[str, Any]:
        """The unsigned transaction java-tron builds for the call (head reference, 60 s expiration)."""
        world = self.world
        with world.lock:
            head = world.head
            now = world.now_ms()
        value = {
            "data": data,
            "owner_address": address_to_hex(owner),
            "contract_address": address_to_hex(contract or world.usdt_contract),
        }
        raw: dict[str, Any] = {
            "contract": [
                {
                    "parameter": {
                        "value": value,
                        "type_url": "type.googleapis.com/protocol.TriggerSmartContract",
                    },
                    "type": "TriggerSmartContract",
                }
            ],
            "ref_block_bytes": head.block_id[12:16],
            "ref_block_hash": head.block_id[16:32],
            "expiration": head.timestamp_ms + 60_000,
            "timestamp": now,
        }
        raw_bytes = _raw_data_to_protobuf(raw).SerializeToString()
        txid = hashlib.sha256(raw_bytes).hexdigest()  # java-tron's txID: sha256 of raw_data
        if visible:
            value["owner_address"] = owner
            value["contract_address"] = contract or world.usdt_contract
        return {
            "ret": [{"ret": "FAILED"} if reverted else {}],
            "visible": visible,
            "txID": txid,
            "raw_data": raw,
            "raw_data_hex": raw_bytes.hex(),
        }

    def _estimateenergy(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        # EstimateEnergyServlet: a revert is CONTRACT_EXE_ERROR with the revert message. (java-tron
        # binary-searches the fee limit, so its energy_required may exceed the energy the call uses
        # by up to 1 TRX worth; the sandbox answers the exact figure.)
        visible = _is_visible(body)
        try:
            contract, selector, params = self._call_data(body)
        except NodeRejection as exc:
            return self._return_error(exc.code, exc.message, visible)
        owner = _b58(body["owner_address"]) if body.get("owner_address") else ZERO_ADDRESS
        run = self._run_call(owner, selector, params, contract)
        if run.reverted:
            return self._return_error("CONTRACT_EXE_ERROR", "REVERT opcode executed", visible)
        return {"result": {"result": True}, "energy_required": run.energy_used}

    # --- transactions ---

    def _getsignweight(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        raw = body["raw_data"]
        world = self.world
        txid = world.calculate_txid(raw)
        if self.switches.forge_txid:
            forged = json.loads(json.dumps(raw))
            value = forged["contract"][0]["parameter"]["value"]
            if "data" in value:
                data = str(value["data"])
                value["data"] = data[:8] + "00" * 12 + address_to_hex(FORGED_DESTINATION)[2:] + data[8 + 64 :]
            elif "to_address" in value:
                value["to_address"] = address_to_hex(FORGED_DESTINATION)
            txid = world.calculate_txid(forged)
        owner = _b58(raw["contract"][0]["parameter"]["value"]["owner_address"])
        out: dict[str, Any] = {
            "result": {"code": "NOT_ENOUGH_PERMISSION"},
            "transaction": {
                "result": {"result": True},
                "txid": txid,
                "transaction": {"visible": False, "txID": txid, "raw_data": raw},
            },
        }
        with world.lock:
            acct = world.accounts.get(owner)
            exists = acct is not None and acct.activated
        if exists:
            out["permission"] = {
                "permission_name": "owner",
                "threshold": 1,
                "keys": [{"address": address_to_hex(owner), "weight": 1}],
            }
        else:
            out["result"] = {"code": "PERMISSION_ERROR", "message": "Account does not exist!"}
        return out

    def _broadcast(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        record = self.world.accept_transaction(body)
        if self.switches.drop_broadcasts:
            self.world.forget_transaction(record.txid)
        return {"result": True, "txid": record.txid}

    def _tx_visible_to(self, txid: str, solid: bool) -> TxRecord | None:
        with self.world.lock:
            tx = self.world.transactions.get(str(txid))
            if tx is None or tx.block_number is None:
                return None
            if solid and tx.block_number > self.world.solid_number:
                return None
            return tx

    def _render_info(self, tx: TxRecord, visible: bool) -> dict[str, Any]:
        r = tx.receipt
        receipt: dict[str, Any] = {
            "energy_usage": r.energy_usage,
            "energy_fee": r.energy_fee_sun,
            "energy_usage_total": tx.energy_used_total,
            "net_usage": r.net_usage,
            "net_fee": r.net_fee_sun,
            "energy_penalty_total": r.energy_penalty,
        }
        receipt = {k: v for k, v in receipt.items() if v}
        receipt["result"] = r.result
        out: dict[str, Any] = {"id": tx.txid}
        if r.fee_sun:
            out["fee"] = r.fee_sun
        out["blockNumber"] = tx.block_number
        out["blockTimeStamp"] = tx.block_timestamp_ms
        if tx.contract is not None:
            out["contractResult"] = [f"{1:064x}" if r.result == "SUCCESS" else ""]
            out["contract_address"] = _render_address(tx.contract, visible)
        else:  # no VM: an empty return value, no contract, receipt.result DEFAULT (not rendered)
            out["contractResult"] = [""]
            receipt.pop("result")
        out["receipt"] = receipt
        if r.logs:
            out["log"] = [
                {"address": _render_log_address(addr, visible), "topics": list(topics), "data": data}
                for addr, topics, data in r.logs
            ]
        if r.result not in ("SUCCESS",):
            out["result"] = "FAILED"
            # resMessage is a "name string" field: plain text when visible, hex otherwise.
            out["resMessage"] = r.res_message if visible else _hex_msg(r.res_message)
        return out

    def _gettransactioninfobyid(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        if self.switches.no_transaction_info:
            return {}
        tx = self._tx_visible_to(str(body.get("value", "")), solid)
        return self._render_info(tx, _is_visible(body)) if tx else {}

    def _gettransactionbyid(self, body: dict[str, Any], solid: bool) -> dict[str, Any]:
        txid = str(body.get("value", ""))
        # The full node also knows pending transactions; the solidity node only solidified ones.
        tx = self._tx_visible_to(txid, True) if solid else self.world.transaction(txid)
        return self._render_tx(tx, _is_visible(body)) if tx else {}

    def _gettransactioninfobyblocknum(self, body: dict[str, Any], solid: bool) -> Any:
        # GetTransactionInfoByBlockNumServlet: `{}` for num <= 0; else the infos, `[]` for an empty
        # block AND for a block this node does not have (above its (solid) head, or no info store).
        num = int(body.get("num", 0))
        if num <= 0:
            return {}
        visible = _is_visible(body)
        with self.world.lock:
            if num > self._head(solid).number or self.switches.no_transaction_info:
                return []
            block = self.world.block(num)
            if block is None:
                return []
            txs = [self.world.transactions[t] for t in block.txids if t in self.world.transactions]
            if txs and self.switches.lagging_infos > 0:
                with self._state_lock:
                    self._info_asks[num] += 1
                    if self._info_asks[num] <= self.switches.lagging_infos:
                        return []
            return [self._render_info(tx, visible) for tx in txs]

    # --- control ---

    async def _state(self, request: Request) -> Response:
        return JSONResponse(self._state_json())

    def _state_json(self) -> dict[str, Any]:
        with self.world.lock:
            return {
                "head": self.world.head.number,
                "solid": self.world.solid_number,
                "pending": len(self.world.pending),
                "held_broadcasts": self.held_broadcasts,
                "now_ms": self.world.now_ms(),
                "block_interval": self.block_interval,
                "solid_lag": self.world.solid_lag,
                "solidification_held": self.world.solidification_held,
                "inclusion_held": self.world.inclusion_held,
                "usdt_contract": self.world.usdt_contract,
                "blacklisted": sorted(self.world.blacklisted),
                "usdt_paused": self.world.usdt_paused,
                "usdt_energy_penalty": self.world.usdt_energy_penalty,
            }

    async def _account_state(self, request: Request) -> Response:
        """`GET /_sandbox/account?address=T…[&contract=T…]`: the world's record (activated or not)."""
        address = request.query_params.get("address", "")
        w = self.world
        contract = request.query_params.get("contract", w.usdt_contract)
        try:
            address = _b58(address)
        except Exception:  # any malformed address
            return JSONResponse({"error": f"bad address {address!r}"}, status_code=400)
        with w.lock:
            acct = w.accounts.get(address)
            out: dict[str, Any] = {
                "address": address,
                "token_contract": contract,
                "token_balance": w.token_balance(contract, address),
                "activated": bool(acct and acct.activated),
                "trx_sun": acct.trx_sun if acct else 0,
                "delegated_energy": acct.delegated_energy if acct else 0,
                "energy_used": acct.energy_used if acct else 0,
                "energy_available": acct.energy_available if acct else 0,
                "delegated_bandwidth": acct.delegated_bandwidth if acct else 0,
                "bandwidth_used": acct.bandwidth_used if acct else 0,
                "bandwidth_available": acct.bandwidth_available if acct else 0,
                "free_bandwidth_used": acct.free_bandwidth_used if acct else 0,
            }
        return JSONResponse(out)

    async def _transactions_state(self, request: Request) -> Response:
        """`GET /_sandbox/transactions[?owner=T…][&to=T…]`: accepted transactions, oldest first."""
        owner = request.query_params.get("owner")
        to = request.query_params.get("to")
        with self.world.lock:
            txs = [
                {
                    "txid": tx.txid,
                    "owner": tx.owner,
                    "to": tx.to,
                    "contract": tx.contract,
                    "contract_type": tx.contract_type,
                    "amount": tx.amount,
                    "fee_limit": tx.fee_limit,
                    "expiration_ms": tx.expiration_ms,
                    "block_number": tx.block_number,
                    "solid": tx.block_number is not None and tx.block_number <= self.world.solid_number,
                    "result": tx.receipt.result if tx.block_number is not None else None,
                    "energy_usage": tx.receipt.energy_usage,
                    "energy_fee_sun": tx.receipt.energy_fee_sun,
                    "net_usage": tx.receipt.net_usage,
                    "net_fee_sun": tx.receipt.net_fee_sun,
                    "fee_sun": tx.receipt.fee_sun,
                }
                for tx in self.world.transactions.values()
                if (owner is None or tx.owner == owner) and (to is None or tx.to == to)
            ]
        return JSONResponse({"transactions": txs})

    async def _control(self, request: Request) -> Response:
        body = await self._body(request) or {}
        op = body.get("op")
        w = self.world
        if op == "produce_blocks":
            w.produce_blocks(int(body.get("count", 1)))
        elif op == "solidify":
            w.solidify_all()
        elif op == "advance_time":
            w.advance_time(float(body["seconds"]))
        elif op == "activate":
            w.activate(str(body["address"]))
        elif op == "credit_trx":
            w.credit_trx(str(body["address"]), int(body["sun"]))
        elif op == "credit_token":
            w.credit_token(
                str(body.get("contract", w.usdt_contract)), str(body["address"]), int(body["amount"])
            )
        elif op == "delegate_energy":
            w.delegate_energy(str(body["address"]), int(body["amount"]))
        elif op == "add_bandwidth":
            w.add_bandwidth(str(body["address"]), int(body["amount"]))
        elif op == "use_free_bandwidth":
            amount = body.get("amount")
            w.use_free_bandwidth(_b58(body["address"]), None if amount is None else int(amount))
        elif op == "reset_free_bandwidth":
            w.reset_free_bandwidth(_b58(body["address"]))
        elif op == "reclaim_energy":
            w.reclaim_energy(_b58(body["address"]))
        elif op == "hold_broadcasts":
            self.hold_broadcasts() if body.get("held", True) else self.release_broadcasts()
        elif op == "hold_solidification":
            w.hold_solidification(bool(body.get("held", True)))
        elif op == "hold_inclusion":
            w.hold_inclusion(bool(body.get("held", True)))
        elif op == "blacklist":
            w.blacklist(_b58(body["address"]), bool(body.get("held", True)))
        elif op == "pause_usdt":
            w.pause_usdt(bool(body.get("held", True)))
        elif op == "energy_penalty":
            amount = int(body["amount"])
            if amount < 0:
                return JSONResponse({"error": "amount must be >= 0"}, status_code=400)
            w.set_energy_penalty(amount)
        elif op == "block_interval":
            seconds = float(body.get("seconds") or 0)
            if seconds > 0:
                self.start_block_production(seconds)
            else:
                self.stop_block_production()
        elif op == "switches":
            names = {f.name for f in fields(NodeSwitches)}
            for key, value in body.items():
                if key in names:
                    setattr(self.switches, key, value)
        elif op in ("token_transfer", "internal_deposit", "failed_transfer_with_log"):
            helper = getattr(w, op)
            contract = body.get("contract")
            tx = helper(
                _b58(body["address"]), int(body["amount"]), token=_b58(contract) if contract else None
            )
            return JSONResponse({**self._state_json(), "txid": tx.txid})
        elif op == "trx_transfer":
            tx = w.trx_transfer(_b58(body["address"]), int(body["sun"]))
            return JSONResponse({**self._state_json(), "txid": tx.txid})
        else:
            return JSONResponse({"error": f"unknown op {op!r}"}, status_code=400)
        return await self._state(request)


@dataclass
class RunningNode:
    """A sandbox node served on 127.0.0.1 in a background thread."""

    node: SandboxNode
    server: RunningServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def world(self) -> World:
        return self.node.world

    def stop(self) -> None:
        self.node.stop_block_production()
        self.node.release_broadcasts()
        self.server.stop()

    def __enter__(self) -> RunningNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sandbox_node(
    world: World | None = None,
    *,
    solid_lag: int | None = None,
    block_interval: float | None = None,
    switches: NodeSwitches | None = None,
) -> RunningNode:
    """Serve a `SandboxNode` on 127.0.0.1 (free port); blocks on demand unless `block_interval`."""
    node = SandboxNode(world, solid_lag=solid_lag, switches=switches)
    server = serve_in_thread(node.app)
    if block_interval:
        node.start_block_production(block_interval)
    return RunningNode(node, server)


def main(argv: list[str] | None = None) -> None:
    """Run a standalone sandbox node on 127.0.0.1 (the demo, or a daemon under test)."""
    import uvicorn

    parser = argparse.ArgumentParser(description="sandbox TRON node")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument(
        "--block-interval", type=float, default=3.0, help="seconds; 0 = blocks on demand only"
    )
    parser.add_argument("--solid-lag", type=int, default=19)
    args = parser.parse_args(argv)
    node = SandboxNode(World(), solid_lag=args.solid_lag)
    if args.block_interval > 0:
        node.start_block_production(args.block_interval)
    try:
        uvicorn.run(node.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
    finally:
        node.stop_block_production()


if __name__ == "__main__":
    main()
