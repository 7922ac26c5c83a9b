"""Build the network clients from the settings (one place, so `scan`, `run` and the demo agree)."""

from __future__ import annotations

from sweeper.chain import TronChain
from sweeper.config import Settings
from sweeper.provider.client import ProviderClient


def chain_from(settings: Settings, *, max_connections: int = 16) -> TronChain:
    return TronChain(
        settings.tron.node_url,
        api_key=settings.tron.api_key,
        requests_per_second=settings.tron.requests_per_second,
        max_connections=max_connections,
    )


def provider_from(settings: Settings) -> ProviderClient:
    if settings.provider.api_key is None or settings.provider.api_secret is None:
        # load_settings(secrets=True) guarantees both; this guards a misuse, not an operator error.
        raise RuntimeError("the provider's API key and secret were not loaded")
    return ProviderClient(
        settings.provider.base_url,
        settings.provider.api_key,
        settings.provider.api_secret,
        # Below what one sweep may cost, a refused order is the balance, not this order.
        low_balance_sun=settings.safety.max_cost_per_sweep_sun,
    )


__all__ = ["chain_from", "provider_from"]
