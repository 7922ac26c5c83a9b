"""Signing the provider's requests (and checking its callbacks' signatures): the canonical JSON form,
the HMAC, and keeping the API key and secret out of every text this package produces."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sweeper.domain import Secret


def canonical_json(data: Mapping[str, Any]) -> str:
    """The provider's request form: keys sorted, compact separators (the seed page's sample)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _secret_bytes(secret: Secret | str) -> bytes:
    return (secret.reveal() if isinstance(secret, Secret) else secret).encode()


def sign(secret: Secret | str, timestamp: str, body: str | bytes) -> str:
    """hex(HMAC-SHA256(key=secret, msg=f"{timestamp}&{body}")), as the provider's docs define it."""
    body_bytes = body.encode() if isinstance(body, str) else body
    message = timestamp.encode() + b"&" + body_bytes
    return hmac.new(_secret_bytes(secret), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class SignedBody:
    """A request body and its signature: `body` is exactly what was signed and must be sent as is."""

    body: str
    timestamp: str
    signature: str


def sign_request(secret: Secret | str, timestamp: str, data: Mapping[str, Any]) -> SignedBody:
    body = canonical_json(data)
    return SignedBody(body=body, timestamp=timestamp, signature=sign(secret, timestamp, body))


def _scrub_secrets(text: str, *secrets: Secret) -> str:
    for secret in secrets:
        value = secret.reveal()
        if value:
            text = text.replace(value, "***")
    return text
