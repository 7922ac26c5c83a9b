"""The TRON node of the follow benchmark: its own process, pre-built answers from memory.

    python benchmarks/follow_node.py --port 8091 --first-block 70000000 --catchup-blocks 10000

A plain asyncio HTTP/1.1 server (keep-alive, no framework), so that what `follow_bench.py`
measures is the client. Every answer is assembled from byte templates built at start-up (a block
number, its hex and its timestamp are substituted); nothing is JSON-encoded per request. An added
latency (`--latency-ms`, 20 by default) delays every node answer without blocking the loop.

The chain it serves (answer forms: docs/design.md, "Following blocks: the node's answers"):
- every block has `--transfers` (100) successful USDT `Transfer` transactions; exactly one of them
  pays a watched address (`watched_hex20(seed)`): in blocks below `first + catchup` one of the first
  100 drawn at random per block (the catch-up recipients, balance 5 USDT: under the benchmark's min_sweep of 10, so a sweep
  is never queued and every batch reads them again), above it one of the next 200 in turn (the tip
  recipients, balance 20 USDT: each such deposit queues a sweep);
- `walletsolidity/getnowblock`: the solid head, a whole block (header and transactions);
- `walletsolidity/getblockbynum`: the block, `{}` above the solid head;
- `walletsolidity/gettransactioninfobyblocknum` (visible=false): the infos in java-tron's form,
  `[]` above the solid head, `{}` for num <= 0;
- `wallet/getcontract` (the ABI TronChain checks once) and `wallet/triggerconstantcontract`
  (`balanceOf`, visible=true form).
Control routes (no latency, not counted): `POST /bench/head {"num": N}` sets the solid head,
`GET /bench/stats` the requests served per path since `POST /bench/reset`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
from collections import Counter
from typing import Any

TRANSFER_TOPIC = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
USDT = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
USDT_HEX20 = "a614f803b6fd780986a42c78ec9c7f77e6ded13c"
CATCHUP_RECIPIENTS = 100  # watched_hex20(seed)[:100]
TIP_RECIPIENTS = 200  # watched_hex20(seed)[100:300]
CATCHUP_BALANCE = 5_000_000  # 5 USDT: under min_sweep
TIP_BALANCE = 20_000_000  # 20 USDT: at or above min_sweep
BODIES = 16  # distinct pre-built blocks (txids still differ per block: their first 16 hex are the number)
TS0 = 1_764_000_000_000

# The part of USDT's ABI that TronChain checks (getcontract's form).
ABI = [
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
]


def watched_hex20(seed: int, n: int) -> list[str]:
    """The benchmark's watched addresses as 20-byte hex (the bench base58-encodes the same list)."""
    rng = random.Random(seed)
    return [rng.randbytes(20).hex() for _ in range(n)]


def _word(hex20: str) -> str:
    return "0" * 24 + hex20


# Placeholders substituted per answer (byte strings of the same JSON).
NUM, HEX, TIME = b"@N@", b"@I@", b"@T@"  # block number, number as 16 hex (txid/blockID prefix), timestamp


def _info(txid_tail: str, sender: str, recipient: str, amount: int) -> str:
    """One USDT transfer's TransactionInfo, visible=false (fee fields as on mainnet)."""
    return (
        json.dumps(
            {
                "id": "@I@" + txid_tail,
                "fee": 13844850,
                "blockNumber": 0,
                "blockTimeStamp": 1,
                "contractResult": ["0" * 64],
                "contract_address": "41" + USDT_HEX20,
                "receipt": {
                    "energy_fee": 13499850,
                    "energy_usage_total": 64285,
                    "net_fee": 345000,
                    "result": "SUCCESS",
                    "energy_penalty_total": 49635,
                },
                "log": [
                    {
                        "address": USDT_HEX20,
                        "topics": [TRANSFER_TOPIC, _word(sender), _word(recipient)],
                        "data": f"{amount:064x}",
                    }
                ],
            },
            separators=(",", ":"),
        )
        .replace('"blockNumber":0', '"blockNumber":@N@')
        .replace('"blockTimeStamp":1', '"blockTimeStamp":@T@')
    )


def _tx(txid_tail: str, sender: str, recipient: str, amount: int) -> str:
    """The same transaction as a block lists it (visible=false)."""
    data = "a9059cbb" + _word(recipient) + f"{amount:064x}"
    return (
        json.dumps(
            {
                "ret": [{"contractRet": "SUCCESS"}],
                "signature": ["ab" * 65],
                "txID": "@I@" + txid_tail,
                "raw_data": {
                    "contract": [
                        {
                            "parameter": {
                                "value": {
                                    "data": data,
                                    "owner_address": "41" + sender,
                                    "contract_address": "41" + USDT_HEX20,
                                },
                                "type_url": "type.googleapis.com/protocol.TriggerSmartContract",
                            },
                            "type": "TriggerSmartContract",
                        }
                    ],
                    "ref_block_bytes": "5e2a",
                    "ref_block_hash": "3f1c0b7a9d2e4f60",
                    "expiration": 1,
                    "fee_limit": 100000000,
                    "timestamp": 1,
                },
                "raw_data_hex": "0a025e2a2208" + "3f" * 150,
            },
            separators=(",", ":"),
        )
        .replace(":1,", ":@T@,")
        .replace(":1}", ":@T@}")
    )


class Chain:
    def __init__(self, *, seed: int, first: int, catchup: int, head: int, transfers: int) -> None:
        self.first, self.catchup, self.head, self.transfers = first, catchup, head, transfers
        watched = watched_hex20(seed, CATCHUP_RECIPIENTS + TIP_RECIPIENTS)
        self.catchup_to = watched[:CATCHUP_RECIPIENTS]
        self.tip_to = watched[CATCHUP_RECIPIENTS:]
        rng = random.Random(seed + 1)
        others = [rng.randbytes(20).hex() for _ in range(2000)]  # never watched
        self.bodies: list[tuple[bytes, bytes, bytes]] = []  # infos before / after the watched one, block txs
        for b in range(BODIES):
            infos, txs = [], []
            for i in range(transfers):
                tail = f"{b:04x}{i:04x}" + rng.randbytes(20).hex()
                sender, recipient = rng.choice(others), rng.choice(others)
                amount = rng.randrange(1, 5_000) * 1_000_000
                infos.append(_info(tail, sender, recipient, amount))
                txs.append(_tx(tail, sender, recipient, amount))
            k = (b * 37) % transfers  # where the watched transfer goes (it replaces this one)
            before = ("[" + ",".join(infos[:k]) + ("," if k else "")).encode()
            after = (("," if k < transfers - 1 else "") + ",".join(infos[k + 1 :]) + "]").encode()
            self.bodies.append((before, after, ",".join(txs).encode()))
        self.block_head = json.dumps(
            {
                "blockID": "@I@" + "00" * 24,
                "block_header": {
                    "raw_data": {
                        "number": 0,
                        "txTrieRoot": "7c" * 32,
                        "witness_address": "41" + "5b" * 20,
                        "parentHash": "@I@" + "ff" * 24,
                        "version": 31,
                        "timestamp": 1,
                    },
                    "witness_signature": "cd" * 65,
                },
                "transactions": ["@TXS@"],
            },
            separators=(",", ":"),
        )
        self.block_template = (
            self.block_head.replace('"number":0', '"number":@N@').replace('"timestamp":1', '"timestamp":@T@')
        ).encode()
        self.balance: dict[str, int] = dict.fromkeys(self.catchup_to, CATCHUP_BALANCE)
        self.balance.update(dict.fromkeys(self.tip_to, TIP_BALANCE))
        self.balance_answers: dict[int, bytes] = {}

    def recipient(self, n: int) -> str:
        if n < self.first + self.catchup:
            # uniform and independent per block: a batch of 100 blocks pays ~63 distinct recipients
            digest = hashlib.blake2b(n.to_bytes(8, "big"), digest_size=8).digest()
            return self.catchup_to[int.from_bytes(digest, "big") % CATCHUP_RECIPIENTS]
        return self.tip_to[(n - self.first - self.catchup) % TIP_RECIPIENTS]

    def _fill(self, template: bytes, n: int) -> bytes:
        ts = TS0 + (n - self.first) * 3000
        return template.replace(NUM, b"%d" % n).replace(HEX, b"%016x" % n).replace(TIME, b"%d" % ts)

    def infos(self, n: int) -> bytes:
        before, after, _ = self.bodies[n % BODIES]
        watched = _info("77" * 24, "41" * 20, self.recipient(n), 1_000_000 + n % 1000).encode()
        return self._fill(before + watched + after, n)

    def block(self, n: int) -> bytes:
        _, _, txs = self.bodies[n % BODIES]
        return self._fill(self.block_template.replace(b'"@TXS@"', txs), n)

    def balance_answer(self, parameter: str) -> bytes:
        amount = self.balance.get(parameter[-40:].lower(), 0)
        answer = self.balance_answers.get(amount)
        if answer is None:
            answer = json.dumps(
                {
                    "result": {"result": True},
                    "energy_used": 935,
                    "constant_result": [f"{amount:064x}"],
                    "transaction": {
                        "ret": [{}],
                        "visible": True,
                        "txID": "9a" * 32,
                        "raw_data": {
                            "contract": [
                                {
                                    "parameter": {
                                        "value": {
                                            "data": "70a08231" + "0" * 64,
                                            "owner_address": "T" + "x" * 33,
                                            "contract_address": USDT,
                                        },
                                        "type_url": "type.googleapis.com/protocol.TriggerSmartContract",
                                    },
                                    "type": "TriggerSmartContract",
                                }
                            ],
                            "ref_block_bytes": "5e2a",
                            "ref_block_hash": "3f1c0b7a9d2e4f60",
                            "expiration": TS0 + 60_000,
                            "timestamp": TS0,
                        },
                        "raw_data_hex": "0a025e2a" + "3f" * 100,
                    },
                },
                separators=(",", ":"),
            ).encode()
            self.balance_answers[amount] = answer
        return answer

    def contract(self) -> bytes:
        return json.dumps(
            {
                "bytecode": "6080604052",
                "consume_user_resource_percent": 100,
                "name": "TetherToken",
                "origin_address": "THPvaUhoh2Qn2y9THCZML3H815hhFhn5YC",
                "abi": {"entrys": ABI},
                "origin_energy_limit": 10_000_000,
                "contract_address": USDT,
                "code_hash": "00" * 32,
            }
        ).encode()


class Node:
    def __init__(self, chain: Chain, latency_s: float) -> None:
        self.chain = chain
        self.latency_s = latency_s
        self.counts: Counter[str] = Counter()

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes, bool]:
        """(status, JSON bytes, delayed?)"""
        if path.startswith("/bench/"):
            return 200, self.control(path, body), False
        request: dict[str, Any] = json.loads(body) if body.strip() else {}
        self.counts[path] += 1
        chain = self.chain
        if path == "/walletsolidity/getnowblock":
            return 200, chain.block(chain.head), True
        if path == "/walletsolidity/getblockbynum":
            n = int(request.get("num", 0))
            return 200, (chain.block(n) if 0 < n <= chain.head else b"{}"), True
        if path == "/walletsolidity/gettransactioninfobyblocknum":
            n = int(request.get("num", 0))
            if n <= 0:
                return 200, b"{}", True
            return 200, (chain.infos(n) if n <= chain.head else b"[]"), True
        if path == "/wallet/triggerconstantcontract":
            return 200, chain.balance_answer(str(request.get("parameter", ""))), True
        if path == "/wallet/getcontract":
            return 200, chain.contract(), True
        return 404, json.dumps({"Error": f"no route {path}"}).encode(), True

    def control(self, path: str, body: bytes) -> bytes:
        if path == "/bench/head":
            self.chain.head = int(json.loads(body)["num"])
            return json.dumps({"head": self.chain.head}).encode()
        if path == "/bench/reset":
            self.counts.clear()
            return b"{}"
        if path == "/bench/stats":
            return json.dumps({"head": self.chain.head, "counts": dict(self.counts)}).encode()
        return b"{}"


class Http(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, Content-Length bodies (what httpx sends), answers in order."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            status, payload, delayed = self.node.answer(method, target.split("?", 1)[0], body)
            response = (
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                % (status, b"OK" if status == 200 else b"Not Found", len(payload))
            ) + payload
            if delayed and self.node.latency_s > 0:
                asyncio.get_running_loop().call_later(self.node.latency_s, self._write, response)
            else:
                self._write(response)

    def _write(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(response)


async def serve(args: argparse.Namespace) -> None:
    chain = Chain(
        seed=args.seed,
        first=args.first_block,
        catchup=args.catchup_blocks,
        head=args.head if args.head is not None else args.first_block + args.catchup_blocks - 1,
        transfers=args.transfers,
    )
    node = Node(chain, args.latency_ms / 1000)
    server = await asyncio.get_running_loop().create_server(
        lambda: Http(node), "127.0.0.1", args.port, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    print(json.dumps({"port": port}), flush=True)  # the parent waits for this line
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed as JSON)")
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--first-block", type=int, default=70_000_000)
    parser.add_argument("--catchup-blocks", type=int, default=10_000)
    parser.add_argument("--head", type=int, default=None, help="the solid head at start")
    parser.add_argument("--transfers", type=int, default=100, help="USDT transfers per block")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
