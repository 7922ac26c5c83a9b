"""The sandbox's shared chain state: what the fake provider changes and the fake node serves.

Thread-safe: the fake servers may run in their own threads (uvicorn) while a test inspects the
world from another. Every mutation happens under `world.lock`.

Ownership: the TRON-access work owns blocks/transactions/broadcast execution (added here by it);
the provider sandbox only calls `activate`, `delegate_energy`, `add_bandwidth`, `holds_token`.
These signatures are a contract between the two fakes: extend, don't change.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

USDT_MAINNET = "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t"

# Energy a USDT transfer needs (tronpy-notes.md): recipient holds USDT / holds none.
USDT_ENERGY_OLD_HOLDER = 64_285
USDT_ENERGY_NEW_HOLDER = 130_285


@dataclass
class Account:
    address: str
    activated: bool = False
    trx_sun: int = 0
    delegated_energy: int = 0  # energy delegated to this account by others (the provider)
    energy_used: int = 0  # energy consumed from the delegation so far
    delegated_bandwidth: int = 0  # bandwidth bytes given to it (the provider covers a sweep's ~350)
    bandwidth_used: int = 0

    @property
    def energy_available(self) -> int:
        return max(0, self.delegated_energy - self.energy_used)

    @property
    def bandwidth_available(self) -> int:
        return max(0, self.delegated_bandwidth - self.bandwidth_used)


@dataclass
class World:
    usdt_contract: str = USDT_MAINNET
    energy_fee_sun: int = 100  # sun per energy unit (chain parameter getEnergyFee)
    accounts: dict[str, Account] = field(default_factory=dict)
    # (contract, holder) -> base units
    token_balances: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def account(self, address: str) -> Account:
        """The account record, created (not activated) on first sight."""
        with self.lock:
            acct = self.accounts.get(address)
            if acct is None:
                acct = self.accounts[address] = Account(address)
            return acct

    def activate(self, address: str) -> None:
        with self.lock:
            self.account(address).activated = True

    def delegate_energy(self, address: str, amount: int) -> None:
        with self.lock:
            self.account(address).delegated_energy += amount

    def add_bandwidth(self, address: str, amount: int) -> None:
        with self.lock:
            self.account(address).delegated_bandwidth += amount

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
