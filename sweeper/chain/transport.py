"""The HTTP layer of the TRON client.

Every node request goes through one provider of ours (a subclass of tronpy's
`AsyncHTTPProvider`), so the things tronpy does not do are done once, for all calls:
- the API key: tronpy sends one of its own hard-coded TronGrid keys (shared by every tronpy user)
  whenever the URL contains "trongrid" and no key is given. We switch that logic off entirely and
  add the configured key (`TRON-PRO-API-KEY`) ourselves, as an httpx auth flow so it never sits in
  a repr-able header dict;
- one client-side rate limiter (`sweeper.ratelimit.RateLimiter`, shareable with the scanner);
- retries with exponential backoff and jitter on 429/5xx and transport errors (timeouts included);
  re-sending a broadcast is safe: the node answers DUP_TRANSACTION_ERROR for bytes it already has.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
import structlog
from tronpy.providers.async_http import AsyncHTTPProvider

from sweeper.chain.errors import ChainResponseError, ChainUnavailable
from sweeper.domain import Secret
from sweeper.ratelimit import RateLimiter
from sweeper.retry import RetryPolicy

# The logger keeps the name it had when the client was one module (`sweeper.chain`).
log = structlog.get_logger("sweeper.chain")
# The level check asks the stdlib logger structlog writes through (sweeper.logs), so it also
# works where structlog is left unconfigured (tests, library use): then DEBUG is simply off.
_stdlib_log = logging.getLogger("sweeper.chain")

USER_AGENT: Final = "sweeper"
DEBUG_BODY_LIMIT: Final = 2000  # characters of an answer a DEBUG record keeps (blocks can be large)
API_KEY_HEADER: Final = "TRON-PRO-API-KEY"


class _ApiKeyAuth(httpx.Auth):
    """Adds the configured TronGrid key to each request; the key stays wrapped until then."""

    def __init__(self, key: Secret) -> None:
        self._key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers[API_KEY_HEADER] = self._key.reveal()
        yield request

    def __repr__(self) -> str:
        return "_ApiKeyAuth(***)"


def _safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment (they may carry credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class _NodeProvider(AsyncHTTPProvider):  # type: ignore[misc]  # tronpy is untyped
    """tronpy's provider with our client, our key, the shared limiter and retries."""

    def __init__(
        self,
        endpoint_uri: str,
        *,
        client: httpx.AsyncClient,
        limiter: RateLimiter,
        retry: RetryPolicy,
        api_key: Secret | None,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        super().__init__(endpoint_uri, client=client)
        # Never tronpy's built-in keys, whatever the URL says.
        self.use_api_key = False
        self._api_keys: list[str] = []
        self._default_api_keys: list[str] = []
        self.jw_token = None
        self._auth: httpx.Auth | None = _ApiKeyAuth(api_key) if api_key else None
        self._limiter = limiter
        self._retry = retry
        self._sleep = sleep
        self._rng = random.Random()
        self.requests_sent = 0
        self.requests_failed = 0  # transport errors, retryable and error statuses (for /metrics)
        self.retries = 0

    @property
    def random_api_key(self) -> str:
        raise RuntimeError("tronpy's shared API keys are never used")

    async def make_request(self, method: str, params: Any = None) -> Any:
        url = urljoin(self.endpoint_uri, method)
        policy = self._retry
        problem = ""
        for attempt in range(1, policy.attempts + 1):
            await self._limiter.acquire()
            self.requests_sent += 1
            retry_after: float | None = None
            # DEBUG: one record per request and per answer; the API key header is never logged.
            debug = _stdlib_log.isEnabledFor(logging.DEBUG)
            if debug:
                log.debug("tron.request", method=method, attempt=attempt, body=params)
            try:
                resp = await self.client.post(
                    url,
                    json=params if params is not None else {},
                    headers={"User-Agent": USER_AGENT},
                    auth=self._auth if self._auth is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:  # connect/read/write errors and timeouts
                self.requests_failed += 1
                problem = f"{type(exc).__name__}: {str(exc)[:200]}"
            else:
                if debug:
                    log.debug(
                        "tron.response",
                        method=method,
                        status=resp.status_code,
                        body=resp.text[:DEBUG_BODY_LIMIT],
                    )
                if resp.status_code in policy.statuses:
                    self.requests_failed += 1
                    problem = f"HTTP {resp.status_code}"
                    retry_after = _retry_after(resp)
                elif resp.status_code >= 400:
                    self.requests_failed += 1
                    raise ChainResponseError(f"{method}: HTTP {resp.status_code}")
                else:
                    try:
                        return resp.json()
                    except ValueError:
                        raise ChainResponseError(f"{method}: the node's answer is not JSON") from None
            if attempt == policy.attempts:
                break
            self.retries += 1
            delay = policy.delay(attempt, self._rng, retry_after)
            log.warning("tron.retry", method=method, attempt=attempt, problem=problem, delay=round(delay, 3))
            await self._sleep(delay)
        raise ChainUnavailable(f"{method}: {problem} (gave up after {policy.attempts} attempts)")


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
