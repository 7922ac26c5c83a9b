"""The energy provider (itrx.io): signed orders, order queries, and callbacks as verified hints.

The modules (import each name from the module that defines it; this package imports none of them,
so `callbacks` can be used without loading an HTTP client):

* `signing`: the canonical JSON request form, `sign` / `sign_request` (HMAC-SHA256), secret scrubbing.
* `models`: the typed answers: `OrderStatus`, `CollectOrder`, `Order`, `OrderNotFound`, `Delegation`,
  `IndexData`, `TieredPrice`, `PriceQuote`, and the `COLLECT_MANUAL_ENERGY_*` figures.
* `fields`: defensive parsing of the provider's loosely typed fields, and `parse_provider_time`.
* `errors`: `ProviderUnavailable`, `OrderOutcomeUnknown`, `InsufficientProviderBalance`,
  `OrderRejected`, `ProviderAuthError`, `UnexpectedAnswer` (their base, `ProviderError`, is in
  `sweeper.errors`).
* `client`: `ProviderClient` (httpx) and its `Timeouts`; its retries follow `sweeper.retry.PROVIDER_RETRY`.
* `callbacks`: `verify_callback`, `ProviderCallback`, `CallbackRejected`, `RejectionReason`,
  `SignedForm`. Imports no HTTP client.

What the pipeline relies on (design.md, "The sweep state machine"):

* `collect_manual` either returns a typed `CollectOrder` or raises exactly one of the error
  classes below, each of which says what is known about the order:
  - `ProviderUnavailable`: nothing was ordered (the request provably never reached the provider,
    or the provider refused it and the account could not be checked): release the row, retry later.
  - `OrderOutcomeUnknown`: the POST was sent and its answer lost (timeout, 5xx, garbage). The order
    MAY exist: wait a grace period and `query_order(out_trade_no=…)` before ever ordering again.
    This client never retries such a POST by itself.
  - `InsufficientProviderBalance`: refused, and the account balance is below `low_balance_sun`.
  - `OrderRejected`: refused for this order (bad address …), with the provider's raw message.
  - `ProviderAuthError`: the API key is not accepted.
* `query_order` returns an `Order` or `OrderNotFound` (a value, not an exception).
* `verify_callback` turns a callback request into a `ProviderCallback` or a `CallbackRejected`; it
  never raises. A verified callback is only a hint to query the order now.

Money is integer sun everywhere. Fractional numbers from the provider (e.g. `pay_amount`, which is
an energy figure) are parsed as `Decimal`, never as floats. The API key and secret are `Secret`s and
are scrubbed from every text this package produces.
"""
