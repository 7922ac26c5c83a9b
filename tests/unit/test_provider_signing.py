"""Signing, callback verification and the typed values of sweeper.provider (no network)."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.domain import Secret
from sweeper.errors import ProviderError
from sweeper.provider.callbacks import (
    ALTERNATIVE_FORMS_MAX_BYTES,
    ALTERNATIVE_FORMS_MAX_STRUCTURE,
    CallbackRejected,
    ProviderCallback,
    RejectionReason,
    SignedForm,
    _verify_callback,
    verify_callback,
)
from sweeper.provider.client import ProviderClient
from sweeper.provider.fields import _BadField, _opt_decimal, _opt_int, _req_int, parse_provider_time
from sweeper.provider.models import OrderStatus
from sweeper.provider.signing import canonical_json, sign, sign_request
from sweeper.retry import RetryPolicy

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


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


# --- request signing ---------------------------------------------------------------------------


def test_docs_known_answer_vector() -> None:
    assert sign(Secret(DOC_SECRET), DOC_TIMESTAMP, DOC_BODY) == DOC_SIGNATURE
    assert sign(DOC_SECRET, DOC_TIMESTAMP, DOC_BODY.encode()) == DOC_SIGNATURE


def test_known_answer_vector_from_shared_fixture_file() -> None:
    path = FIXTURES / "provider.json"
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
    # No offset: China time (the earliest plausible reading), not UTC.
    assert parse_provider_time("2023-10-09 10:21:07") == datetime(2023, 10, 9, 10, 21, 7, tzinfo=cst)
    assert parse_provider_time("2023-10-09 10:21:07") == datetime(2023, 10, 9, 2, 21, 7, tzinfo=UTC)
    assert parse_provider_time(1686796826) == datetime.fromtimestamp(1686796826, UTC)
    assert parse_provider_time("1686796826") == datetime.fromtimestamp(1686796826, UTC)
    assert parse_provider_time(Decimal("1686796826.5")) == datetime.fromtimestamp(1686796826, UTC)
    assert parse_provider_time("yesterday") is None
    assert parse_provider_time(None) is None
    assert parse_provider_time(True) is None


@pytest.mark.parametrize(
    "value",
    [
        "²",
        "¹²³",
        "١٢٣",
        " 5",
        "--5",
        "1e3",
        "9" * 5000,
        Decimal("1e999999999"),
        Decimal("NaN"),
        Decimal("-Infinity"),
        Decimal("sNaN"),
        10**400,
        -(10**400),
        "2023-13-45T99:00:00",
        [],
        {},
        object(),
    ],
)
def test_parse_provider_time_never_raises_on_odd_input(value: object) -> None:
    assert parse_provider_time(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "²",
        "¹²³",
        "١٢٣",
        "--5",
        "-",
        "1e3",
        " 5",
        "5 ",
        "+5",
        "1_000",
        "0x10",
        "5.0",
        "",
        "9" * 5000,
        Decimal("1.5"),
        Decimal("NaN"),
        Decimal("sNaN"),
        Decimal("Infinity"),
        Decimal("1e999999999"),
        10**400,
        True,
        [],
        {},
        1.0,
    ],
)
def test_integer_fields_raise_only_bad_field(value: object) -> None:
    if value == "":
        assert _opt_int({"n": value}, "n") is None
        with pytest.raises(_BadField):
            _req_int({"n": value}, "n")
        return
    with pytest.raises(_BadField):
        _opt_int({"n": value}, "n")
    with pytest.raises(_BadField):
        _req_int({"n": value}, "n")


def test_integer_and_money_fields() -> None:
    assert _opt_int({"n": "-5"}, "n") == -5
    assert _opt_int({"n": "0042"}, "n") == 42
    assert _opt_int({"n": Decimal("1E+3")}, "n") == 1000  # a JSON number 1e3 is a whole number
    assert _opt_int({"n": 7}, "n") == 7
    assert _opt_int({}, "n") is None
    for value in (-1, "-1", Decimal("-1")):
        with pytest.raises(_BadField, match="negative"):
            _req_int({"amount": value}, "amount", non_negative=True)
    assert _req_int({"amount": 0}, "amount", non_negative=True) == 0


@pytest.mark.parametrize(
    "value",
    ["²", "١.٥", " 5", "1e3", "1_0", "NaN", "Infinity", "-", ".5", "5.", Decimal("NaN"), True, [], "9" * 500],
)
def test_decimal_fields_raise_only_bad_field(value: object) -> None:
    with pytest.raises(_BadField):
        _opt_decimal({"x": value}, "x")


def test_decimal_fields() -> None:
    assert _opt_decimal({"x": "12.50"}, "x") == Decimal("12.50")
    assert _opt_decimal({"x": "-3"}, "x") == Decimal(-3)
    assert _opt_decimal({"x": Decimal("1e-5")}, "x") == Decimal("0.00001")
    assert _opt_decimal({"x": 4}, "x") == Decimal(4)


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


# --- one parse: what is returned is what was signed ------------------------------------------


def test_extra_decimal_digits_do_not_match_a_signature_over_the_rounded_number() -> None:
    signed = canonical_json({**CALLBACK, "pay_amount": 12.5})
    assert '"pay_amount":12.5,' in signed
    # Same float value, different number: a float parse would re-serialise it to 12.5 and accept.
    sent = signed.replace('"pay_amount":12.5,', '"pay_amount":12.50000000000000001,')
    assert float(json.loads(sent)["pay_amount"]) == 12.5
    assert _rejected(_verify(_headers(signed), sent)) is RejectionReason.BAD_SIGNATURE
    pretty = json.dumps(json.loads(signed), indent=2).replace("12.5", "12.500")
    assert _rejected(_verify(_headers(signed), pretty)) is RejectionReason.BAD_SIGNATURE
    # The number as signed is accepted, in any layout, and returned exactly.
    cb = _accepted(_verify(_headers(signed), json.dumps(json.loads(signed), indent=2)))
    assert cb.delegated_energy == Decimal("12.5")


def test_numbers_keep_their_literal_text_in_the_canonical_forms() -> None:
    data = {**CALLBACK, "pay_amount": 1e-05, "energy_amount": 32000, "extra": [1.0, -0.0, 1e16]}
    for signed, form in [
        (json.dumps(data, sort_keys=True, separators=(",", ":")), SignedForm.COMPACT_SORTED),
        (json.dumps(data, sort_keys=True), SignedForm.DEFAULT_SORTED),
    ]:
        cb = _accepted(_verify(_headers(signed), json.dumps(data, indent=1)))
        assert cb.signed_form is form
        assert cb.delegated_energy == Decimal("0.00001")


def test_a_body_with_duplicate_keys_never_verifies() -> None:
    signed = canonical_json(CALLBACK)  # status 40
    # Two "status" keys: a last-wins parse re-serialises to exactly the signed form.
    sent = signed.replace('"status":40', '"status":41,"status":40')
    assert json.loads(sent) == json.loads(signed)
    assert _rejected(_verify(_headers(signed), sent)) is RejectionReason.BAD_SIGNATURE
    # Even when the signature covers the raw bytes, which copy was meant is unknown: refused.
    result = _verify(_headers(sent), sent)
    assert _rejected(result) is RejectionReason.MALFORMED_BODY
    assert isinstance(result, CallbackRejected) and "duplicate" in result.detail
    nested = signed.replace('"type":"energy"', '"type":"energy","meta":{"a":1,"a":2}')
    assert _rejected(_verify(_headers(nested), nested)) is RejectionReason.MALFORMED_BODY


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_a_body_with_nan_or_infinity_never_verifies(constant: str) -> None:
    signed = canonical_json(CALLBACK)
    sent = signed.replace('"energy_amount":32000', f'"energy_amount":{constant}')
    assert _rejected(_verify(_headers(sent), sent)) is RejectionReason.MALFORMED_BODY
    # Signed over the sorted form (which Python's json would write with the constant), sent pretty:
    # the body cannot be parsed, so no sorted form is ever built from it.
    pretty = json.dumps(json.loads(sent), indent=2)
    assert _rejected(_verify(_headers(sent), pretty)) is RejectionReason.BAD_SIGNATURE


def test_odd_numeric_fields_in_a_signed_body_are_malformed_not_errors() -> None:
    for field, value in [("status", "²"), ("status", "--5"), ("energy_amount", "1e3"), ("pay_amount", "١")]:
        body = canonical_json({**CALLBACK, field: value})
        result = _verify_callback(_headers(body), body, SECRET, 300, NOW)  # the inner function: no catch-all
        assert _rejected(result) is RejectionReason.MALFORMED_BODY, (field, value)
        assert isinstance(result, CallbackRejected) and field in result.detail


def test_the_outer_verify_turns_an_internal_error_into_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr("sweeper.provider.callbacks._verify_callback", broken)
    body = canonical_json(CALLBACK)
    result = _verify(_headers(body), body)
    assert _rejected(result) is RejectionReason.MALFORMED_BODY
    assert isinstance(result, CallbackRejected) and result.detail == CATCH_ALL_DETAIL.format(
        "ZeroDivisionError"
    )


# --- fuzzing -----------------------------------------------------------------------------------
# The fuzz tests call the inner `_verify_callback`, which has no catch-all: an internal error
# (a parser raising something other than _BadField …) fails them instead of passing as a rejection.

CATCH_ALL_DETAIL = "unverifiable request ({})"
CALLBACK_FIELDS = [
    "serial",
    "out_trade_no",
    "status",
    "type",
    "source",
    "receive_address",
    "energy_amount",
    "pay_amount",
    "txid",
    "active_hash",
    "bandwidth_hash",
]


def _inner(headers: Any, body: bytes | str) -> ProviderCallback | CallbackRejected:
    return _verify_callback(headers, body, SECRET, 300, NOW)


_header_values = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True),
    st.sampled_from([TS, " " + TS, "²" * 3, "١٧٠٠", "-1", "9" * 13]),
)
_header_names = st.sampled_from(["TIMESTAMP", "SIGNATURE", "timestamp", "signature", "X-Other"])
# Strings a careless number parser trips on: unicode digits, signs, exponents, spaces, underscores.
_numberish = st.one_of(
    st.text(alphabet="0123456789-+.eE _²³١٢", min_size=1, max_size=6),
    st.sampled_from(["²", "-²", "¹²", " 5", "5 ", "--5", "1e3", "١٢", "1_0", "NaN", "-", "9" * 5000]),
)
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    _numberish,
)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_keys = st.one_of(st.sampled_from(CALLBACK_FIELDS), st.text(max_size=10))
# The fields the verifier reads, with values a careless parser trips on.
_fields = st.dictionaries(st.sampled_from(CALLBACK_FIELDS), st.one_of(_numberish, _json_leaf), max_size=6)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(_header_names, _header_values, max_size=3),
    body=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        # Lone surrogates (st.text never yields them): a str body need not be valid Unicode.
        st.lists(st.one_of(st.characters(), st.characters(categories=["Cs"])), max_size=50).map("".join),
    ),
)
def test_fuzz_garbage_never_raises(headers: dict[str, str], body: bytes | str) -> None:
    result = _inner(headers, body)
    assert isinstance(result, ProviderCallback | CallbackRejected)


def _sorted_forms_tried(body: bytes) -> bool:
    structure = sum(body.count(c) for c in (b",", b":", b"[", b"{"))
    return len(body) <= ALTERNATIVE_FORMS_MAX_BYTES and structure <= ALTERNATIVE_FORMS_MAX_STRUCTURE


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


@settings(max_examples=400, deadline=None)
@given(
    data=st.dictionaries(_keys, _json, max_size=8),
    fields=_fields,
    form=st.sampled_from(["raw", "compact", "default"]),
    garble=st.booleans(),
)
def test_fuzz_signed_json_never_raises_and_is_accepted_only_when_signed(
    data: dict[str, Any], fields: dict[str, Any], form: str, garble: bool
) -> None:
    data = {**data, **fields, "serial": "s-1"}
    sent = json.dumps(data)
    signed = {
        "raw": sent,
        "compact": json.dumps(data, sort_keys=True, separators=(",", ":")),
        "default": json.dumps(data, sort_keys=True),
    }[form]
    headers = _headers(signed)
    if garble:
        headers["SIGNATURE"] = ("0" if headers["SIGNATURE"][0] != "0" else "1") + headers["SIGNATURE"][1:]
    result = _inner(headers, sent)
    if garble:
        assert _rejected(result) is RejectionReason.BAD_SIGNATURE
    elif _has_non_finite(data):
        # NaN/Infinity are not JSON: never verified, whichever form was signed.
        assert _rejected(result) in (RejectionReason.MALFORMED_BODY, RejectionReason.BAD_SIGNATURE)
    elif isinstance(result, ProviderCallback):
        # Signed correctly and accepted: the fields are the signed data's.
        assert result.serial == "s-1"
        forms = {
            "raw": SignedForm.RAW,
            "compact": SignedForm.COMPACT_SORTED,
            "default": SignedForm.DEFAULT_SORTED,
        }
        assert result.signed_form is (SignedForm.RAW if signed == sent else forms[form])
        if isinstance(data.get("status"), int) and not isinstance(data.get("status"), bool):
            assert result.status is not None and int(result.status) == data["status"]
        if isinstance(data.get("pay_amount"), float):
            assert result.delegated_energy == Decimal(repr(data["pay_amount"]))
    elif signed != sent and not _sorted_forms_tried(sent.encode()):
        # Too big or too structured to re-serialise: only a signature over the raw body could match.
        assert result.reason is RejectionReason.BAD_SIGNATURE
    else:
        # Rejected only because a field has an unusable value, and said so.
        assert result.reason is RejectionReason.MALFORMED_BODY
        assert result.detail.startswith("signed body has a bad field"), result.detail


@settings(max_examples=100, deadline=None)
@given(headers=st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=70)), max_size=4))
def test_fuzz_byte_headers_never_raise(headers: list[tuple[bytes, bytes]]) -> None:
    result = _inner(headers, b"{}")
    assert isinstance(result, CallbackRejected)
