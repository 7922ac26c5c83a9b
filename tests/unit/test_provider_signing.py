"""Signing, callback verification and the typed values of sweeper.provider (no network)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.domain import Secret
from sweeper.provider import (
    CallbackRejected,
    OrderStatus,
    ProviderCallback,
    ProviderClient,
    ProviderError,
    RejectionReason,
    RetryPolicy,
    SignedForm,
    canonical_json,
    parse_provider_time,
    sign,
    sign_request,
    verify_callback,
)

# The provider docs' own key pair and known answer (provider-api.md, sign.md).
DOC_SECRET = "0285A2741D0E76E2E187260EB23E51851D48403A756333E7D0CF845406ABF3E8"
DOC_API_KEY = "B433BFF1CDE7450AA38A56BEAC690DD4"
DOC_TIMESTAMP = "1686796826"
DOC_BODY = (
    '{"callback_url":"http://{mydomain}/callback","energy_amount":32000,"out_trade_no":"123456",'
    '"period":"1D","receive_address":"TExWKszFWYTKZH8LYiovAPKzS3L9MLZ4kw"}'
)
DOC_SIGNATURE = "07c125cabfe006614a02131f927cca9e7a654f7644a817b155fad591e1c50f7b"

SECRET = Secret("callback-test-secret")
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
TS = str(int(NOW.timestamp()))


def _find_shared_fixture(name: str) -> Path | None:
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "fixtures" / name
        if candidate.is_file():
            return candidate
    return None


# --- request signing ---------------------------------------------------------------------------


def test_docs_known_answer_vector() -> None:
    assert sign(Secret(DOC_SECRET), DOC_TIMESTAMP, DOC_BODY) == DOC_SIGNATURE
    assert sign(DOC_SECRET, DOC_TIMESTAMP, DOC_BODY.encode()) == DOC_SIGNATURE


def test_known_answer_vector_from_shared_fixture_file() -> None:
    path = _find_shared_fixture("provider.json")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("shared/fixtures/provider.json not found beside the repository")
        pytest.skip("shared/fixtures/provider.json not found beside the repository")
    vector = json.loads(path.read_text())["signing_vector"]
    assert sign(Secret(vector["secret"]), vector["timestamp"], vector["body"]) == vector["signature"]
    # The vector's body is exactly our canonical form of its own data.
    assert canonical_json(json.loads(vector["body"])) == vector["body"]


def test_canonical_json_of_the_docs_data_is_the_docs_body() -> None:
    data = {
        "energy_amount": 32000,
        "period": "1D",
        "receive_address": "TExWKszFWYTKZH8LYiovAPKzS3L9MLZ4kw",
        "callback_url": "http://{mydomain}/callback",
        "out_trade_no": "123456",
    }
    signed = sign_request(Secret(DOC_SECRET), DOC_TIMESTAMP, data)
    assert signed.body == DOC_BODY
    assert signed.signature == DOC_SIGNATURE


def _seed_page_sample(api_secret: str, timestamp: str, data: dict[str, Any]) -> tuple[str, str]:
    """The seed page's Python sample, verbatim in its algorithm (kept independent of our helper)."""
    json_data = json.dumps(data, sort_keys=True, separators=(",", ":"))
    message = f"{timestamp}&{json_data}"
    signature = hmac.new(api_secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return json_data, signature


@pytest.mark.parametrize(
    "data",
    [
        {
            "scene": 2,
            "receive_address": "TExWKszFWYTKZH8LYiovAPKzS3L9MLZ4kw",
            "callback_url": "http://{mydomain}/callback",
            "out_trade_no": "123456",
        },
        {"scene": 0, "receive_address": "TExWKszFWYTKZH8LYiovAPKzS3L9MLZ4kw", "out_trade_no": "42"},
        {
            "scene": 0,
            "receive_address": "TExWKszFWYTKZH8LYiovAPKzS3L9MLZ4kw",
            "to_address": "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t",
            "callback_url": "https://sweeper.example/callback?x=1&y=2",
            "out_trade_no": "987654321",
        },
    ],
)
def test_signature_matches_the_seed_page_sample(data: dict[str, Any]) -> None:
    expected_body, expected_signature = _seed_page_sample(DOC_SECRET, "1700000000", data)
    signed = sign_request(Secret(DOC_SECRET), "1700000000", data)
    assert signed.body == expected_body
    assert signed.signature == expected_signature


# --- order status ------------------------------------------------------------------------------


def test_order_status_final_and_success() -> None:
    assert {s for s in OrderStatus if s.is_final} == {
        OrderStatus.CLOSED,
        OrderStatus.COMPLETED,
        OrderStatus.REFUNDED,
        OrderStatus.ABNORMAL,
    }
    assert [s for s in OrderStatus if s.is_success] == [OrderStatus.COMPLETED]
    # 30 is "preparing delegation" even though one doc example calls it fully delegated.
    assert not OrderStatus(30).is_success
    assert not OrderStatus(30).is_final


def test_unknown_order_status_is_a_value_that_is_not_final() -> None:
    status = OrderStatus(99)
    assert int(status) == 99
    assert not status.is_known
    assert not status.is_final
    assert not status.is_success
    assert OrderStatus(40).is_known
    with pytest.raises(ValueError):
        OrderStatus("40")  # type: ignore[arg-type]


# --- small parsers -----------------------------------------------------------------------------


def test_parse_provider_time_forms() -> None:
    cst = timezone(timedelta(hours=8))
    assert parse_provider_time("2023-06-15T21:42:13.200565+08:00") == datetime(
        2023, 6, 15, 21, 42, 13, 200565, tzinfo=cst
    )
    assert parse_provider_time("2023-10-09T10:21:07.840478Z") == datetime(
        2023, 10, 9, 10, 21, 7, 840478, tzinfo=UTC
    )
    assert parse_provider_time("2023-10-09 10:21:07") == datetime(2023, 10, 9, 10, 21, 7, tzinfo=UTC)
    assert parse_provider_time(1686796826) == datetime.fromtimestamp(1686796826, UTC)
    assert parse_provider_time("1686796826") == datetime.fromtimestamp(1686796826, UTC)
    assert parse_provider_time("yesterday") is None
    assert parse_provider_time(None) is None
    assert parse_provider_time(True) is None


def test_retry_delays_grow_with_jitter_within_bounds() -> None:
    policy = RetryPolicy(attempts=6, base_delay=1.0, max_delay=8.0)
    rng = random.Random(7)
    for retry, cap in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0)]:
        delays = {policy.delay(retry, rng) for _ in range(50)}
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(delays) > 1  # jittered
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


# --- secrets never shown -----------------------------------------------------------------------


def test_client_repr_and_errors_hide_secrets() -> None:
    client = ProviderClient("http://127.0.0.1:9", Secret(DOC_API_KEY), Secret(DOC_SECRET))
    assert DOC_API_KEY not in repr(client) and DOC_SECRET not in repr(client)
    assert DOC_SECRET not in repr(vars(client))
    scrubbed = client._raw(f"echo {DOC_API_KEY} and {DOC_SECRET}")
    assert DOC_API_KEY not in scrubbed and DOC_SECRET not in scrubbed
    with pytest.raises(TypeError):
        ProviderClient("http://127.0.0.1:9", DOC_API_KEY, DOC_SECRET)  # type: ignore[arg-type]


def test_provider_error_text_carries_message_and_status() -> None:
    exc = ProviderError("refused", message="余额不足", errno=1, http_status=200, raw='{"errno":1}')
    assert "errno=1" in str(exc) and "余额不足" in str(exc) and "http=200" in str(exc)
    assert exc.raw == '{"errno":1}'


# --- callbacks ---------------------------------------------------------------------------------

CALLBACK: dict[str, Any] = {
    "active_hash": "",
    "bandwidth_hash": "5e342a821de72542d7b341039c34af631d0551cfcd4b67c272",
    "energy_amount": 32000,
    "out_trade_no": "123456",
    "pay_amount": 32170.005048646104,
    "serial": "886294f5204ac2fc1430f5a7d9215a80",
    "txid": "2610c200efc8a90601758715405fa6be4597469e854591975d113b720a762ec2",
    "status": 40,
    "type": "energy",
    "receive_address": "TExWKszFWYTKZH8LYiovAPKzS3L9MLZ4kw",
    "source": "api",
}


def _headers(body_signed: bytes | str, timestamp: str = TS, secret: Secret = SECRET) -> dict[str, str]:
    return {"TIMESTAMP": timestamp, "SIGNATURE": sign(secret, timestamp, body_signed)}


def _verify(headers: Any, body: bytes | str, **kwargs: Any) -> ProviderCallback | CallbackRejected:
    kwargs.setdefault("api_secret", SECRET)
    kwargs.setdefault("now", NOW)
    return verify_callback(headers, body, **kwargs)


def _accepted(result: ProviderCallback | CallbackRejected) -> ProviderCallback:
    assert isinstance(result, ProviderCallback), result
    return result


def _rejected(result: ProviderCallback | CallbackRejected) -> RejectionReason:
    assert isinstance(result, CallbackRejected), result
    return result.reason


def test_callback_signed_over_the_raw_body() -> None:
    body = b'{"serial": "abc",   "status": 40, "out_trade_no": "7"}'  # neither canonical form
    cb = _accepted(_verify(_headers(body), body))
    assert cb.signed_form is SignedForm.RAW
    assert (cb.serial, cb.out_trade_no, cb.status) == ("abc", "7", OrderStatus.COMPLETED)


def test_callback_signed_over_the_compact_sorted_form() -> None:
    compact = json.dumps(CALLBACK, sort_keys=True, separators=(",", ":"))
    sent = json.dumps(CALLBACK, indent=2)  # what arrives is not what was signed
    cb = _accepted(_verify(_headers(compact), sent))
    assert cb.signed_form is SignedForm.COMPACT_SORTED
    assert cb.serial == CALLBACK["serial"]
    assert cb.status is OrderStatus.COMPLETED
    assert cb.delegated_energy == Decimal("32170.005048646104")  # exact, never a float
    assert cb.energy_amount == 32000
    assert cb.txid == CALLBACK["txid"]


def test_callback_signed_over_the_default_separator_sorted_form() -> None:
    default = json.dumps(CALLBACK, sort_keys=True)  # the docs' Python verifier's form
    sent = json.dumps(CALLBACK, separators=(",", ":"))
    cb = _accepted(_verify(_headers(default), sent))
    assert cb.signed_form is SignedForm.DEFAULT_SORTED


def test_callback_headers_are_case_insensitive_and_accept_pairs() -> None:
    body = canonical_json(CALLBACK)
    headers = _headers(body)
    lowered = {k.lower(): v for k, v in headers.items()}
    _accepted(_verify(lowered, body))
    _accepted(_verify(list(lowered.items()), body.encode()))
    upper_sig = {"timestamp": TS, "signature": headers["SIGNATURE"].upper()}
    _accepted(_verify(upper_sig, body))


def test_callback_signed_over_any_other_form_is_rejected() -> None:
    unsorted_compact = json.dumps(CALLBACK, separators=(",", ":"))  # not sorted
    sent = json.dumps(CALLBACK, sort_keys=True, separators=(",", ":"))
    assert _rejected(_verify(_headers(unsorted_compact), sent)) is RejectionReason.BAD_SIGNATURE
    pretty_sorted = json.dumps(CALLBACK, sort_keys=True, indent=2)
    assert _rejected(_verify(_headers(pretty_sorted), sent)) is RejectionReason.BAD_SIGNATURE


def test_tampered_callback_body_is_rejected() -> None:
    body = canonical_json(CALLBACK)
    headers = _headers(body)
    tampered = canonical_json({**CALLBACK, "serial": "somebody-elses-order"})
    assert _rejected(_verify(headers, tampered)) is RejectionReason.BAD_SIGNATURE
    tampered_status = body.replace('"status":40', '"status":41')
    assert tampered_status != body
    assert _rejected(_verify(headers, tampered_status)) is RejectionReason.BAD_SIGNATURE


def test_callback_with_the_wrong_secret_is_rejected() -> None:
    body = canonical_json(CALLBACK)
    headers = _headers(body, secret=Secret("not-our-secret"))
    assert _rejected(_verify(headers, body)) is RejectionReason.BAD_SIGNATURE


def test_stale_and_future_timestamps_are_rejected_at_the_exact_limit() -> None:
    body = canonical_json(CALLBACK)
    for offset, ok in [(-300, True), (-301, False), (300, True), (301, False), (-86400, False)]:
        ts = str(int(NOW.timestamp()) + offset)
        result = _verify(_headers(body, timestamp=ts), body, max_age_seconds=300)
        if ok:
            _accepted(result)
        else:
            assert _rejected(result) is RejectionReason.STALE_TIMESTAMP, offset


def test_missing_or_malformed_headers_are_rejected() -> None:
    body = canonical_json(CALLBACK)
    headers = _headers(body)
    assert _rejected(_verify({"SIGNATURE": headers["SIGNATURE"]}, body)) is RejectionReason.MISSING_TIMESTAMP
    assert _rejected(_verify({"TIMESTAMP": TS}, body)) is RejectionReason.MISSING_SIGNATURE
    assert _rejected(_verify({}, body)) is RejectionReason.MISSING_TIMESTAMP
    bad_ts = {"TIMESTAMP": "1.7e9", "SIGNATURE": headers["SIGNATURE"]}
    assert _rejected(_verify(bad_ts, body)) is RejectionReason.BAD_TIMESTAMP
    short_sig = {"TIMESTAMP": TS, "SIGNATURE": headers["SIGNATURE"][:-2]}
    assert _rejected(_verify(short_sig, body)) is RejectionReason.BAD_SIGNATURE
    non_ascii = {"TIMESTAMP": TS, "SIGNATURE": "é" * 64}
    assert _rejected(_verify(non_ascii, body)) is RejectionReason.BAD_SIGNATURE


def test_validly_signed_but_useless_body_is_rejected_as_malformed() -> None:
    for body in [b"not json", b"[1, 2]", b'{"status": 40}', b'{"serial": {"x": 1}}']:
        assert _rejected(_verify(_headers(body), body)) is RejectionReason.MALFORMED_BODY, body


def test_client_verify_callback_uses_its_secret_and_clock() -> None:
    client = ProviderClient("http://127.0.0.1:9", Secret("k"), SECRET, clock=lambda: NOW)
    body = canonical_json(CALLBACK)
    _accepted(client.verify_callback(_headers(body), body))
    stale = str(int(NOW.timestamp()) - 1000)
    assert _rejected(client.verify_callback(_headers(body, timestamp=stale), body)) is (
        RejectionReason.STALE_TIMESTAMP
    )


def test_rejection_details_never_contain_the_secret() -> None:
    body = canonical_json(CALLBACK)
    for headers in [{}, {"TIMESTAMP": TS, "SIGNATURE": "0" * 64}, _headers(body, timestamp="1")]:
        result = _verify(headers, body)
        assert SECRET.reveal() not in repr(result)


# --- fuzzing -----------------------------------------------------------------------------------

_header_values = st.one_of(st.text(max_size=80), st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True))
_header_names = st.sampled_from(["TIMESTAMP", "SIGNATURE", "timestamp", "signature", "X-Other"])
_json_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20)
)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(_header_names, _header_values, max_size=3),
    body=st.one_of(st.binary(max_size=200), st.text(max_size=200)),
)
def test_fuzz_garbage_never_raises(headers: dict[str, str], body: bytes | str) -> None:
    result = _verify(headers, body)
    assert isinstance(result, ProviderCallback | CallbackRejected)


@settings(max_examples=200, deadline=None)
@given(
    data=st.dictionaries(st.text(max_size=10), _json, max_size=6),
    form=st.sampled_from(["raw", "compact", "default"]),
    garble=st.booleans(),
)
def test_fuzz_signed_json_never_raises_and_is_accepted_only_when_signed(
    data: dict[str, Any], form: str, garble: bool
) -> None:
    data = {**data, "serial": "s-1"}
    sent = json.dumps(data)
    signed = {
        "raw": sent,
        "compact": json.dumps(data, sort_keys=True, separators=(",", ":")),
        "default": json.dumps(data, sort_keys=True),
    }[form]
    headers = _headers(signed)
    if garble:
        headers["SIGNATURE"] = ("0" if headers["SIGNATURE"][0] != "0" else "1") + headers["SIGNATURE"][1:]
    result = _verify(headers, sent)
    if garble:
        assert _rejected(result) is RejectionReason.BAD_SIGNATURE
    else:
        # Signed correctly: accepted, or rejected only because a field has an unusable type.
        assert isinstance(result, ProviderCallback) or result.reason is RejectionReason.MALFORMED_BODY


@settings(max_examples=100, deadline=None)
@given(headers=st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=70)), max_size=4))
def test_fuzz_byte_headers_never_raise(headers: list[tuple[bytes, bytes]]) -> None:
    result = verify_callback(headers, b"{}", api_secret=SECRET, now=NOW)  # type: ignore[arg-type]
    assert isinstance(result, CallbackRejected)
