"""Values many tests share, defined once: the BIP39 test mnemonic, its wallet, the destination
wallet and the USDT contract (mainnet address; the sandbox serves it under the same address)."""

from __future__ import annotations

from typing import Final

from sweeper.domain import Secret
from sweeper.keys import HdWallet

MNEMONIC: Final = (
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
)
WALLET: Final = HdWallet(Secret(MNEMONIC))
DESTINATION: Final = "TJCnKsPa7y5okkXvQAidZBzqx3QyQ6sxMW"
USDT: Final = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"
