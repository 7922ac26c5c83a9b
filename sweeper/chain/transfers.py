"""Pure functions on transfers, no I/O: the call data, strict decoding and verification of a
transfer before it is signed (a TRC20 `transfer` call, or a native TRX TransferContract: token
None), signature recovery, Transfer events, constant-call answers, a block's TRX transfers.

Why the transfer is verified before signing: tronpy's online `build()` signs whatever txid the
node's `getsignweight` returns. A lying or compromised node could hand back the txid of a
different transaction (another destination) and get it signed. We recompute the txid from the
raw_data we are about to sign (`tronpy.proto.calculate_txid_from_raw_data`), compare it with the
node's, and decode owner, contract, destination, amount and fee_limit from that same raw_data.

Constant calls (`wallet/triggerconstantcontract`, see `TronChain.simulate_transfer`):
java-tron's answer forms (tests/fixtures/constant-call-forms.json quotes the source): a revert is
`result.message` ("REVERT opcode executed") with `transaction.ret[0].ret == "FAILED"`;
`energy_used` already includes the dynamic-energy `energy_penalty`; a `result.code` means the call
did not run at all (CONTRACT_VALIDATE_ERROR, OTHER_ERROR).

A solidified block's transaction infos (`walletsolidity/gettransactioninfobyblocknum`, see
`deposits_in_block`; forms in docs/design.md, "Following blocks: the node's answers").
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from tronpy.exceptions import BadSignature
from tronpy.keys import Signature
from tronpy.proto import calculate_txid_from_raw_data

from sweeper.chain.errors import ChainResponseError, TransactionExpired, UnsafeTransaction
from sweeper.chain.models import DecodedTransfer, SignedTransfer, Simulation, TokenTransfer, UnsignedTransfer
from sweeper.chain.trx import TRANSFER_CONTRACT_TYPE_URL
from sweeper.domain import InvalidAddress, address_to_hex, hex_to_address

if TYPE_CHECKING:
    from sweeper.keys import SigningKey

TRANSFER_SELECTOR: Final = "a9059cbb"  # transfer(address,uint256)
TRANSFER_TOPIC: Final = "ddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"

# 4-byte selectors = keccak256(signature)[:4] (checked by the tests against eth_utils' keccak).
IS_BLACKLISTED_SELECTOR: Final = "e47d6060"  # isBlackListed(address): Tether's public freeze list
ERROR_SELECTOR: Final = "08c379a0"  # Error(string): a revert with a reason
PANIC_SELECTOR: Final = "4e487b71"  # Panic(uint256): a failed assert in solc >= 0.8

_RAW_KEYS: Final = frozenset(
    {"contract", "ref_block_bytes", "ref_block_hash", "expiration", "timestamp", "fee_limit"}
)
_VALUE_KEYS: Final = frozenset(
    {"owner_address", "contract_address", "data", "call_value", "call_token_value", "token_id"}
)
_TRX_VALUE_KEYS: Final = frozenset({"owner_address", "to_address", "amount"})


# --- pure helpers (also used by the tests and the scanner) --------------------------------------


def transfer_data(destination: str, amount: int) -> str:
    """The call data of `transfer(destination, amount)`."""
    return TRANSFER_SELECTOR + "00" * 12 + address_to_hex(destination)[2:] + f"{amount:064x}"


def _to_hex41(value: Any) -> str:
    text = str(value)
    if text.startswith("T"):
        return address_to_hex(text)
    text = text.lower().removeprefix("0x")
    return address_to_hex(hex_to_address(text))


def _check_numbers(raw_data: dict[str, Any]) -> tuple[int, int, int]:
    """(fee_limit, expiration, timestamp), each a non-negative integer."""
    fee_limit = raw_data.get("fee_limit", 0)
    expiration = raw_data["expiration"]
    timestamp = raw_data.get("timestamp", 0)
    for number in (fee_limit, expiration, timestamp):
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise UnsafeTransaction("fee_limit, expiration and timestamp must be integers")
    return fee_limit, expiration, timestamp


def _decode_trx_transfer(raw_data: dict[str, Any], contract: dict[str, Any]) -> DecodedTransfer:
    """A TransferContract: exactly owner_address, to_address and a positive amount; no fee_limit."""
    parameter = contract["parameter"]
    if set(parameter) != {"value", "type_url"} or parameter["type_url"] != TRANSFER_CONTRACT_TYPE_URL:
        raise UnsafeTransaction("the contract parameter has an unexpected type_url")
    value = parameter["value"]
    if not isinstance(value, dict) or set(value) != _TRX_VALUE_KEYS:
        raise UnsafeTransaction("the TRX transfer has unexpected or missing fields")
    amount = value["amount"]
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise UnsafeTransaction("the TRX transfer's amount is not a positive integer")
    fee_limit, expiration, timestamp = _check_numbers(raw_data)
    if fee_limit != 0:
        raise UnsafeTransaction("a TRX transfer carries no fee_limit")
    return DecodedTransfer(
        owner=hex_to_address(_to_hex41(value["owner_address"])),
        token=None,
        destination=hex_to_address(_to_hex41(value["to_address"])),
        amount=amount,
        fee_limit_sun=0,
        expiration_ms=expiration,
        timestamp_ms=timestamp,
    )


def decode_transfer(raw_data: Any) -> DecodedTransfer:
    """Decode a transfer's raw_data strictly: a TRC20 `transfer(address,uint256)` call, or a native
    TRX TransferContract (token None); anything unexpected raises UnsafeTransaction."""
    try:
        if not isinstance(raw_data, dict) or not set(raw_data) <= _RAW_KEYS:
            raise UnsafeTransaction("raw_data has unexpected fields")
        contracts = raw_data["contract"]
        if not isinstance(contracts, list) or len(contracts) != 1:
            raise UnsafeTransaction("the transaction must hold exactly one contract call")
        contract = contracts[0]
        if not isinstance(contract, dict) or set(contract) != {"parameter", "type"}:
            raise UnsafeTransaction("the transaction's contract has unexpected fields")
        if contract["type"] == "TransferContract":
            return _decode_trx_transfer(raw_data, contract)
        if contract["type"] != "TriggerSmartContract":
            raise UnsafeTransaction("the transaction is not a plain TriggerSmartContract")
        parameter = contract["parameter"]
        if parameter.get("type_url") != "type.googleapis.com/protocol.TriggerSmartContract":
            raise UnsafeTransaction("the contract parameter has an unexpected type_url")
        value = parameter["value"]
        if not set(value) <= _VALUE_KEYS:
            raise UnsafeTransaction("the contract call has unexpected fields")
        for key in ("call_value", "call_token_value", "token_id"):
            if value.get(key, 0) not in (0, None):
                raise UnsafeTransaction(f"the contract call carries {key}")
        data = str(value["data"]).lower()
        # The address word is 12 zero bytes + 20 bytes; TronWeb writes the 0x41 prefix into the
        # 12th byte (the real fixture does), which the token ignores. Anything else is refused.
        if (
            len(data) != 8 + 128
            or not data.startswith(TRANSFER_SELECTOR)
            or data[8 : 8 + 24] not in ("0" * 24, "0" * 22 + "41")
        ):
            raise UnsafeTransaction("the call data is not transfer(address,uint256)")
        fee_limit, expiration, timestamp = _check_numbers(raw_data)
        return DecodedTransfer(
            owner=hex_to_address(_to_hex41(value["owner_address"])),
            token=hex_to_address(_to_hex41(value["contract_address"])),
            destination=hex_to_address(data[8 + 24 : 8 + 64]),
            amount=int(data[8 + 64 :], 16),
            fee_limit_sun=fee_limit,
            expiration_ms=expiration,
            timestamp_ms=timestamp,
        )
    except UnsafeTransaction:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, InvalidAddress):
        raise UnsafeTransaction("raw_data is not a well-formed transfer") from None


def _check_txid(raw_data: dict[str, Any], txid: str) -> None:
    try:
        local = str(calculate_txid_from_raw_data(raw_data))
    except (KeyError, TypeError, ValueError):
        raise UnsafeTransaction("cannot serialize raw_data to compute its txid") from None
    if local != txid.lower():
        raise UnsafeTransaction(
            f"the node's txid {txid} is not the hash of the transaction we built ({local}): refusing to sign"
        )


def _recover_signer(txid: str, signature: str) -> str:
    try:
        public_key = Signature.fromhex(signature).recover_public_key_from_msg_hash(bytes.fromhex(txid))
        return str(public_key.to_base58check_address())
    except (BadSignature, ValueError):
        raise UnsafeTransaction("the signature does not recover to any key") from None


def verify_transfer(
    raw_data: dict[str, Any],
    node_txid: str,
    *,
    owner: str,
    token: str | None,
    destination: str,
    amount: int,
    fee_limit_sun: int,
) -> DecodedTransfer:
    """Check that raw_data hashes to `node_txid` and is exactly transfer(destination, amount): of the
    TRC20 `token`, or of native TRX when `token` is None (then `fee_limit_sun` must be 0)."""
    _check_txid(raw_data, node_txid)
    decoded = decode_transfer(raw_data)
    expected = {
        "owner": (decoded.owner, owner),
        "token contract": (decoded.token, token),
        "destination": (decoded.destination, destination),
        "amount": (decoded.amount, amount),
        "fee_limit": (decoded.fee_limit_sun, fee_limit_sun),
    }
    for what, (got, wanted) in expected.items():
        if got != wanted:
            raise UnsafeTransaction(f"the built transaction's {what} is {got}, we asked for {wanted}")
    if decoded.expiration_ms <= decoded.timestamp_ms:
        raise UnsafeTransaction("the built transaction expires before it was made")
    return decoded


def hex20(address: str) -> str:
    """'T…' -> its 20 bytes as 40 lower-case hex (no 0x41): the key `deposits_in_block` compares."""
    return address_to_hex(address)[2:]


def token_keys(tokens: Iterable[str]) -> dict[str, str]:
    """The `tokens` mapping `deposits_in_block` takes: token hex20 -> token 'T…'."""
    return {hex20(token): token for token in tokens}


def _raw20(value: Any) -> str:
    """A log address as java-tron writes it with visible=false (20-byte hex; 0x41-prefixed and 0x
    forms accepted) -> 40 lower-case hex, or "" for anything else (a base58 rendering included)."""
    if not isinstance(value, str):
        return ""
    text = value.lower()
    if len(text) == 40:
        return text
    if len(text) == 42:
        if text.startswith("41"):
            return text[2:]
        if text.startswith("0x"):
            return text[2:]
    return ""


_ZERO_WORD_HEAD: Final = "0" * 24


def _succeeded(info: Mapping[str, Any]) -> bool:
    """A transaction info's outcome: java-tron writes `result: "FAILED"` (SUCESS, the default, is not
    rendered) and, for a contract call, `receipt.result` SUCCESS / REVERT / OUT_OF_ENERGY / … (a TRX
    transfer's receipt has no result: DEFAULT is not rendered either)."""
    if info.get("result") == "FAILED":
        return False
    receipt = info.get("receipt")
    return not isinstance(receipt, dict) or receipt.get("result", "SUCCESS") == "SUCCESS"


def deposits_in_block(
    infos: Sequence[Mapping[str, Any]],
    tokens: Mapping[str, str],
    watched: Container[str],
) -> list[TokenTransfer]:
    """The deposits in a block's transaction infos (`gettransactioninfobyblocknum`, visible=false):
    every `Transfer(from, to, value)` log (topic0 = TRANSFER_TOPIC, exactly 3 topics) of a successful
    transaction, emitted by one of `tokens` (token hex20 -> token 'T…', see `token_keys`), whose
    recipient is in `watched` (hex20: 40 lower-case hex, no 0x41; see `hex20`), with a value above 0.

    The log's own address is compared, never the transaction's `contract_address`: a payout contract
    that calls the token emits the token's Transfer from inside its call. A failed transaction's logs
    are ignored (java-tron drops them, VMActuator clears the list on a revert; a node that kept them
    would still not move money). A zero-value Transfer cannot raise a balance and is not a deposit.

    Fast by order of the checks: the token lookup and the recipient lookup come before any base58
    encoding (base58check costs a sha256 per address), so only kept logs pay for it.
    """
    out: list[TokenTransfer] = []
    for info in infos:
        logs = info.get("log")
        if not logs or not _succeeded(info):
            continue
        txid: str | None = None
        for index, entry in enumerate(logs):
            token = tokens.get(_raw20(entry.get("address")))
            if token is None:
                continue
            topics = entry.get("topics")
            if not isinstance(topics, list) or len(topics) != 3:
                continue
            topic0, topic1, topic2 = topics
            if not isinstance(topic2, str) or len(topic2) != 64:
                continue
            if topic0 != TRANSFER_TOPIC and str(topic0).lower() != TRANSFER_TOPIC:
                continue
            recipient20 = topic2[24:].lower()
            if recipient20 not in watched or topic2[:24] != _ZERO_WORD_HEAD:
                continue
            transfer = _transfer(entry, topic1, recipient20, token, index)
            if transfer is None:
                continue
            if txid is None:
                txid = str(info.get("id", "")).lower()
            out.append(TokenTransfer(txid, *transfer))
    return out


def _transfer(
    entry: Mapping[str, Any], topic1: Any, recipient20: str, token: str, index: int
) -> tuple[str, str, str, int, int] | None:
    """(token, sender, recipient, amount, log index) of a matching log; None if it is malformed."""
    data = entry.get("data")
    if not isinstance(topic1, str) or len(topic1) != 64 or topic1[:24] != _ZERO_WORD_HEAD:
        return None
    if not isinstance(data, str) or not data:
        return None
    try:
        amount = int(data, 16)
        sender = hex_to_address(topic1[24:])
        recipient = hex_to_address(recipient20)
    except (ValueError, InvalidAddress):
        return None
    if amount <= 0:
        return None
    return token, sender, recipient, amount, index


def decode_transfer_logs(info: dict[str, Any], token: str) -> list[TokenTransfer]:
    """The token's Transfer events in a transaction info fetched with visible=false, whoever the
    recipient (the pipeline's confirmation reads them). The outcome is the caller's to check.

    java-tron renders a log's address as the bare 20-byte hex (no 0x41), topics as 32-byte hex.
    """
    token20 = hex20(token)
    txid = str(info.get("id", ""))
    out: list[TokenTransfer] = []
    for index, entry in enumerate(info.get("log") or []):
        address = _raw20(entry.get("address"))
        topics = [str(t).lower() for t in entry.get("topics") or []]
        if address != token20 or len(topics) != 3 or topics[0] != TRANSFER_TOPIC:
            continue
        if topics[1][:24] != _ZERO_WORD_HEAD or topics[2][:24] != _ZERO_WORD_HEAD:
            continue
        try:
            amount = int(str(entry.get("data") or "0"), 16)
            sender = hex_to_address(topics[1][24:])
            recipient = hex_to_address(topics[2][24:])
        except (ValueError, InvalidAddress):
            continue
        out.append(TokenTransfer(txid, token, sender, recipient, amount, index))
    return out


def _int(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key, 0)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ChainResponseError(f"the node's {key} is not an integer")
    return value


def _decode_message(value: Any) -> str:
    text = str(value or "")
    try:
        return bytes.fromhex(text).decode("utf-8", "replace")
    except ValueError:
        return text


def _revert_reason(output: str) -> str:
    """The reason in a revert's return data: Error(string) or Panic(uint256); "" for anything else."""
    try:
        data = bytes.fromhex(output)
    except ValueError:
        return ""
    selector, body = data[:4].hex(), data[4:]
    if selector == ERROR_SELECTOR and len(body) >= 64:
        offset = int.from_bytes(body[:32], "big")
        if offset > len(body) - 32:
            return ""
        length = int.from_bytes(body[offset : offset + 32], "big")
        text = body[offset + 32 : offset + 32 + length]
        return text.decode("utf-8", "replace")[:300] if len(text) == length else ""
    if selector == PANIC_SELECTOR and len(body) == 32:
        return f"Panic(0x{int.from_bytes(body, 'big'):x})"
    return ""


def _parse_constant_call(answer: dict[str, Any], what: str) -> tuple[Simulation, str]:
    """A `triggerconstantcontract` answer as (Simulation, first constant_result hex).

    java-tron's forms (framework/.../Wallet.java callConstantContract and
    TriggerConstantContractServlet): the call ran -> `result.result` true, `energy_used`,
    `energy_penalty` (omitted when 0), `constant_result`, and `transaction.ret[0]` `{}` (SUCESS is
    the default and is not rendered) or `{"ret": "FAILED"}` with `result.message` "REVERT opcode
    executed" on a revert. The call did not run -> `result.code` (CONTRACT_VALIDATE_ERROR,
    OTHER_ERROR) with a message and no `result.result`: that is no revert, we learnt nothing.
    """
    result = answer.get("result")
    if not isinstance(result, dict):
        raise ChainResponseError(f"{what}: the node's answer has no result")
    message = _decode_message(result.get("message"))[:300]
    code = result.get("code")
    if code is not None and code != "SUCCESS":
        raise ChainResponseError(f"{what}: {code} {message}".rstrip())
    if result.get("result") is not True:
        raise ChainResponseError(f"{what}: the call did not run: {message or 'no result'}")
    outputs = answer.get("constant_result", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ChainResponseError(f"{what}: malformed constant_result")
    output = outputs[0].lower() if outputs else ""
    ret = ""
    transaction = answer.get("transaction")
    if isinstance(transaction, dict):
        rets = transaction.get("ret")
        if isinstance(rets, list) and rets and isinstance(rets[0], dict):
            ret = str(rets[0].get("ret", ""))
    energy_used = _int(answer, "energy_used")
    energy_penalty = _int(answer, "energy_penalty")
    if energy_used < 0 or not 0 <= energy_penalty <= energy_used:
        raise ChainResponseError(
            f"{what}: energy_used {energy_used} / energy_penalty {energy_penalty} make no sense"
        )
    reverted = ret == "FAILED" or "message" in result
    if reverted:
        reason = _revert_reason(output)
        message = message or "FAILED"
        if reason:
            message = f"{message}: {reason}"
    return Simulation(reverted, energy_used, energy_penalty, message if reverted else ""), output


def _bool_word(output: str, what: str) -> bool:
    if len(output) != 64 or output.strip("0123456789abcdef") or int(output, 16) > 1:
        raise ChainResponseError(f"{what} returned {output[:80]!r}, not a bool word")
    return int(output, 16) == 1


def sign_transfer(
    unsigned: UnsignedTransfer, key: SigningKey, *, min_remaining_ms: int = 5_000
) -> SignedTransfer:
    """Sign after re-verifying the raw_data against what it claims; the key must belong to the
    transfer's owner, and enough of its lifetime must be left. (TronChain.sign_transfer; the tests'
    in-process chain signs the same way.)"""
    if key.address != unsigned.owner:
        raise UnsafeTransaction(f"the key for {key.address} cannot sign a transfer from {unsigned.owner}")
    verify_transfer(
        unsigned.raw_data,
        unsigned.txid,
        owner=unsigned.owner,
        token=unsigned.token,
        destination=unsigned.destination,
        amount=unsigned.amount,
        fee_limit_sun=unsigned.fee_limit_sun,
    )
    if unsigned.remaining_ms() <= min_remaining_ms:
        raise TransactionExpired(f"transaction {unsigned.txid} expires at {unsigned.expires_at.isoformat()}")
    signature = key.sign_digest(bytes.fromhex(unsigned.txid)).hex()
    if _recover_signer(unsigned.txid, signature) != unsigned.owner:
        raise UnsafeTransaction("the signature does not recover to the owner")
    return SignedTransfer(
        txid=unsigned.txid,
        raw_data=unsigned.raw_data,
        signature=signature,
        owner=unsigned.owner,
        destination=unsigned.destination,
        token=unsigned.token,
        amount=unsigned.amount,
        fee_limit_sun=unsigned.fee_limit_sun,
        expiration_ms=unsigned.expiration_ms,
    )


# --- native TRX transfers as a node renders them (visible=false) ---------------------------------


def _trx_transfer_fields(transaction: Mapping[str, Any]) -> tuple[str, str, int] | None:
    """(sender, recipient, amount in sun) of a TransferContract transaction; None if it is not one
    or is malformed. Addresses as T-addresses (the node's 0x41 hex, or T-addresses when visible)."""
    raw = transaction.get("raw_data")
    contracts = raw.get("contract") if isinstance(raw, Mapping) else None
    if not isinstance(contracts, list) or len(contracts) != 1 or not isinstance(contracts[0], Mapping):
        return None
    contract = contracts[0]
    parameter = contract.get("parameter")
    if contract.get("type") != "TransferContract" or not isinstance(parameter, Mapping):
        return None
    value = parameter.get("value")
    if not isinstance(value, Mapping):
        return None
    amount = value.get("amount", 0)  # java-tron omits a 0 amount
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        return None
    try:
        sender = hex_to_address(_to_hex41(value["owner_address"]))
        recipient = hex_to_address(_to_hex41(value["to_address"]))
    except (KeyError, TypeError, ValueError, InvalidAddress):
        return None
    return sender, recipient, amount


def _contract_ret(transaction: Mapping[str, Any]) -> str | None:
    rets = transaction.get("ret")
    if isinstance(rets, list) and rets and isinstance(rets[0], Mapping):
        ret = rets[0].get("contractRet")
        return str(ret) if ret is not None else None
    return None


def trx_transfer_of(transaction: Any, txid: str) -> TokenTransfer:
    """The TRX a solidified TransferContract moved, from `walletsolidity/gettransactionbyid`.

    Raises ChainResponseError unless the answer is that transaction, a well-formed TransferContract,
    and its `ret[0].contractRet` is SUCCESS.
    """
    if not isinstance(transaction, Mapping) or not transaction:
        raise ChainResponseError(f"gettransactionbyid {txid}: the node does not have the transaction")
    if str(transaction.get("txID", "")).lower() != txid.lower():
        raise ChainResponseError(f"asked for {txid}, the node answered about {transaction.get('txID')}")
    fields = _trx_transfer_fields(transaction)
    if fields is None:
        raise ChainResponseError(f"gettransactionbyid {txid}: not a well-formed TRX TransferContract")
    ret = _contract_ret(transaction)
    if ret != "SUCCESS":
        raise ChainResponseError(f"gettransactionbyid {txid}: contractRet is {ret}, not SUCCESS")
    sender, recipient, amount = fields
    return TokenTransfer(txid.lower(), None, sender, recipient, amount, 0)


def trx_transfers_in_block(transactions: Iterable[Any]) -> list[TokenTransfer]:
    """The successful (`ret[0].contractRet == "SUCCESS"`) TransferContract transfers among a block's
    transactions (`getblockbynum`'s `transactions`), token None, addresses as T-addresses. Other
    contracts and malformed entries are skipped."""
    out: list[TokenTransfer] = []
    for transaction in transactions:
        if not isinstance(transaction, Mapping) or _contract_ret(transaction) != "SUCCESS":
            continue
        fields = _trx_transfer_fields(transaction)
        txid = transaction.get("txID")
        if fields is None or not isinstance(txid, str):
            continue
        out.append(TokenTransfer(txid.lower(), None, *fields, 0))
    return out
