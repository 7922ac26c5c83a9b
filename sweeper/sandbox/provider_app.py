"""The HTTP app of the fake energy provider (`sweeper.sandbox.provider_server.SandboxProvider`).

`create_app(provider)` serves the four endpoints the sweeper uses, under /api/v1/frontend, and the
test-only routes (`POST /_sandbox/control`, `GET /_sandbox/state`, `GET /_sandbox/orders`) that
`sweeper.sandbox.control.SandboxControl` drives from another process. The provider builds its app
itself (`SandboxProvider.app`); nothing else needs to call `create_app`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sweeper.domain import is_tron_address
from sweeper.provider.client import API_PREFIX

# provider_server imports this module only inside `SandboxProvider.__init__`, so importing it here,
# at the top, is not circular.
from sweeper.sandbox.provider_server import (
    COLLECT_ENERGY_NEW_HOLDER,
    COLLECT_ENERGY_OLD_HOLDER,
    MSG_NOT_FOUND,
    CallbackAttempt,
    CallbackForm,
    HoldPoint,
    RepeatedOutTradeNo,
    SandboxOrder,
    SandboxProvider,
    Switches,
)

# --- the ASGI app ------------------------------------------------------------------------------


def _errno(message: str, errno: int = 1) -> JSONResponse:
    return JSONResponse({"errno": errno, "message": message})


def _forbidden() -> JSONResponse:
    return JSONResponse(
        {"detail": "Authentication credentials were not provided or are invalid."}, status_code=403
    )


def _validate_collect(data: dict[str, Any]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    scene = data.get("scene")
    if scene is None:
        errors["scene"] = ["This field is required."]
    elif isinstance(scene, bool) or not isinstance(scene, int):
        errors["scene"] = ["A valid integer is required."]
    receive_address = data.get("receive_address")
    if receive_address in (None, ""):
        errors["receive_address"] = ["This field is required."]
    elif not is_tron_address(receive_address):
        errors["receive_address"] = ["地址格式错误"]
    to_address = data.get("to_address")
    if to_address is not None and not is_tron_address(to_address):
        errors["to_address"] = ["地址格式错误"]
    for name in ("callback_url", "out_trade_no"):
        value = data.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > 200):
            errors[name] = ["Not a valid string."]
    return errors


def create_app(provider: SandboxProvider) -> Starlette:
    """The fake's HTTP surface: the four endpoints the sweeper uses, under /api/v1/frontend."""

    async def collect_manual(request: Request) -> Response:
        with provider.lock:
            provider.post_count += 1
        if not provider.key_ok(request):
            return _forbidden()
        body = await request.body()
        problem = provider.check_signature(request, body)
        if problem is not None:
            return _errno(problem)
        data = json.loads(body)
        errors = _validate_collect(data)
        if errors:
            return JSONResponse(errors, status_code=400)
        if provider.switches.hold is HoldPoint.BEFORE_CREATE:
            await _held(provider)
        with provider.lock:
            fail_before = provider.switches.error_before_create > 0
            if fail_before:
                provider.switches.error_before_create -= 1
        if fail_before:
            return PlainTextResponse("Bad Gateway", status_code=provider.switches.error_status)
        result = provider.create_order(data)
        if isinstance(result, str):
            return _errno(result)
        if provider.switches.hold is HoldPoint.AFTER_CREATE:
            await _held(provider)
        with provider.lock:
            fail = provider.switches.error_after_create > 0
            if fail:
                provider.switches.error_after_create -= 1
            balance = provider.balance_sun
        if fail:
            return PlainTextResponse("Internal Server Error", status_code=provider.switches.error_status)
        return JSONResponse(
            {
                "errno": 0,
                "serial": result.serial,
                "scene": result.scene,
                "amount": result.amount_sun,
                "balance": balance,
            }
        )

    async def order_query(request: Request) -> Response:
        if not provider.key_ok(request):
            return _forbidden()
        serial = request.query_params.get("serial")
        out_trade_no = request.query_params.get("out_trade_no")
        if not serial and not out_trade_no:
            return JSONResponse({"serial": ["This field is required."]}, status_code=400)
        order = provider.find_order(serial, out_trade_no)
        if order is None:
            return _errno(MSG_NOT_FOUND, errno=404)
        with provider.lock:
            return JSONResponse(order.as_query())

    async def index_data(request: Request) -> Response:
        if not provider.key_ok(request):
            if provider.switches.index_data_empty_on_bad_key:
                return JSONResponse({})
            return _forbidden()
        with provider.lock:
            balance = provider.balance_sun
        return JSONResponse(
            {
                "platform_avail_energy": 50_000_000,
                "platform_max_energy": 10_000_000,
                "minimum_order_energy": 32_000,
                "maximum_order_energy": 100_000_000,
                "small_amount": 50_000,
                "small_addition": 0.6,
                "usdt_energy_need_old": COLLECT_ENERGY_OLD_HOLDER,
                "usdt_energy_need_new": COLLECT_ENERGY_NEW_HOLDER,
                "tiered_pricing": [
                    {"period": 0, "price": 100},
                    {"period": 1, "price": 200},
                    {"period": 3, "price": 152},
                    {"period": 30, "price": 124},
                ],
                "balance": balance,
            }
        )

    async def order_price(request: Request) -> Response:
        if not provider.key_ok(request):
            return _forbidden()
        if provider.switches.price_unavailable:
            return JSONResponse({"detail": "service unavailable"}, status_code=503)
        period = request.query_params.get("period", "1H")
        per_energy = {"1H": 100, "1D": 200, "3D": 152, "30D": 124}.get(period)
        if per_energy is None:
            return JSONResponse({"period": [f"'{period}' 不是合法选项。"]}, status_code=400)
        to_address = request.query_params.get("to_address")
        if to_address is not None:
            if not is_tron_address(to_address):
                return JSONResponse({"to_address": ["地址格式错误"]}, status_code=400)
            new_holder = not provider.world.holds_token(provider.world.usdt_contract, to_address)
            total = provider.price_new_holder_sun if new_holder else provider.price_old_holder_sun
            energy = COLLECT_ENERGY_NEW_HOLDER if new_holder else COLLECT_ENERGY_OLD_HOLDER
            return JSONResponse(
                {
                    "period": period,
                    "energy_amount": energy,
                    "price": None,
                    "total_price": total,
                    "addition": 0,
                }
            )
        raw_energy = request.query_params.get("energy_amount", "")
        if not raw_energy.isdigit() or int(raw_energy) < 10_000:
            return JSONResponse({"energy_amount": ["请确保该值大于或者等于 10000。"]}, status_code=400)
        energy = int(raw_energy)
        addition = 600_000 if energy < 50_000 else 0
        return JSONResponse(
            {
                "period": period,
                "energy_amount": energy,
                "price": per_energy,
                "total_price": energy * per_energy + addition,
                "addition": addition,
            }
        )

    def unless_down(endpoint: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """The `down_status` switch: the API answers that status and does nothing at all."""

        async def guarded(request: Request) -> Response:
            status = provider.switches.down_status
            if status:
                return PlainTextResponse("Service Unavailable", status_code=status)
            response: Response = await endpoint(request)
            return response

        return guarded

    return Starlette(
        routes=[
            Route("/_sandbox/control", _control_endpoint(provider), methods=["POST"]),
            Route("/_sandbox/state", _state_endpoint(provider), methods=["GET"]),
            Route("/_sandbox/orders", _orders_endpoint(provider), methods=["GET"]),
            Route(f"{API_PREFIX}/order/collect-manual", unless_down(collect_manual), methods=["POST"]),
            Route(f"{API_PREFIX}/order/query", unless_down(order_query), methods=["GET"]),
            Route(f"{API_PREFIX}/index-data", unless_down(index_data), methods=["GET"]),
            Route(f"{API_PREFIX}/order/price", unless_down(order_price), methods=["GET"]),
        ]
    )


async def _held(provider: SandboxProvider) -> None:
    """Hold this request open until the test releases it (or the fake stops)."""
    with provider.lock:
        provider.held_count += 1
    try:
        while not provider._release.is_set():
            await asyncio.sleep(0.005)
    finally:
        with provider.lock:
            provider.held_count -= 1


# --- test control (loopback only, no auth: the fake never leaves 127.0.0.1) --------------------


def _switches_json(switches: Switches) -> dict[str, Any]:
    return {
        "error_after_create": switches.error_after_create,
        "error_status": switches.error_status,
        "hold": switches.hold.value if switches.hold is not None else None,
        "outcome": switches.outcome,
        "callbacks_enabled": switches.callbacks_enabled,
        "duplicate_callbacks": switches.duplicate_callbacks,
        "hold_callbacks": switches.hold_callbacks,
        "callback_form": switches.callback_form.value,
        "index_data_empty_on_bad_key": switches.index_data_empty_on_bad_key,
        "repeated_out_trade_no": switches.repeated_out_trade_no.value,
    }


def _order_json(order: SandboxOrder, attempts: list[CallbackAttempt]) -> dict[str, Any]:
    return {
        "serial": order.serial,
        "out_trade_no": order.out_trade_no,
        "receive_address": order.receive_address,
        "to_address": order.to_address,
        "callback_url": order.callback_url,
        "scene": order.scene,
        "status": order.status,
        "outcome": order.outcome,
        "energy_amount": order.energy_amount,
        "amount_sun": order.amount_sun,
        "delegated_energy": order.delegated_energy,
        "refund_amount_sun": order.refund_amount_sun,
        "create_time": order.create_time.isoformat(),
        "callback_attempts": [
            {
                "attempt": a.attempt,
                "status_code": a.status_code,
                "error": a.error,
                "suppressed": a.suppressed,
            }
            for a in attempts
        ],
    }


def provider_state(provider: SandboxProvider) -> dict[str, Any]:
    """What `GET /_sandbox/state` answers (and every control op, after applying itself)."""
    with provider.lock:
        by_status: dict[str, int] = {}
        for order in provider.orders.values():
            by_status[str(order.status)] = by_status.get(str(order.status), 0) + 1
        return {
            "balance_sun": provider.balance_sun,
            "post_count": provider.post_count,
            "held_posts": provider.held_count,
            "orders": len(provider.orders),
            "orders_by_status": by_status,
            "callback_attempts": len(provider.callback_attempts),
            "held_callbacks": len(provider._held_callbacks),
            "idle": provider.idle(),
            "delegation_delay": provider.delegation_delay,
            "switches": _switches_json(provider.switches),
        }


def _switch_changes(body: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for key in (
        "error_after_create",
        "error_status",
        "outcome",
        "duplicate_callbacks",
        "error_before_create",
        "down_status",
        "refund_percent",
        "callback_age_seconds",
    ):
        if key in body:
            changes[key] = int(body[key])
    for key in ("callbacks_enabled", "hold_callbacks", "index_data_empty_on_bad_key", "price_unavailable"):
        if key in body:
            changes[key] = bool(body[key])
    if "callback_form" in body:
        changes["callback_form"] = CallbackForm(str(body["callback_form"]))
    if "repeated_out_trade_no" in body:
        changes["repeated_out_trade_no"] = RepeatedOutTradeNo(str(body["repeated_out_trade_no"]))
    return changes


def _control_endpoint(provider: SandboxProvider) -> Callable[[Request], Any]:
    async def control(request: Request) -> Response:
        """`POST /_sandbox/control {"op": ..., ...}`: the provider-side switches, over HTTP."""
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "invalid JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        op = body.get("op")
        try:
            if op == "switches":
                provider.set_switches(**_switch_changes(body))
            elif op == "hold_posts":
                provider.hold_posts(HoldPoint(str(body.get("point", HoldPoint.AFTER_CREATE.value))))
            elif op == "release_posts":
                provider.release_posts()
            elif op == "release_callbacks":
                provider.release_callbacks(reverse=bool(body.get("reverse", False)))
            elif op == "complete":
                status = body.get("status")
                provider.complete(str(body["serial"]), None if status is None else int(status))
            elif op == "delegation_delay":
                seconds = body.get("seconds")
                with provider.lock:
                    provider.delegation_delay = None if seconds is None else float(seconds)
            elif op == "set_balance":
                provider.set_balance(int(body["sun"]))
            else:
                return JSONResponse({"error": f"unknown op {op!r}"}, status_code=400)
        except (KeyError, ValueError, TypeError) as exc:
            return JSONResponse(
                {"error": f"bad {op!r} request: {type(exc).__name__}: {exc}"}, status_code=400
            )
        return JSONResponse(provider_state(provider))

    return control


def _state_endpoint(provider: SandboxProvider) -> Callable[[Request], Any]:
    async def state(request: Request) -> Response:
        return JSONResponse(provider_state(provider))

    return state


def _orders_endpoint(provider: SandboxProvider) -> Callable[[Request], Any]:
    async def orders(request: Request) -> Response:
        """`GET /_sandbox/orders[?out_trade_no=…][&serial=…]`: orders, oldest first."""
        out_trade_no = request.query_params.get("out_trade_no")
        serial = request.query_params.get("serial")
        with provider.lock:
            selected = [
                o
                for o in provider.orders.values()
                if (out_trade_no is None or o.out_trade_no == out_trade_no)
                and (serial is None or o.serial == serial)
            ]  # dicts keep insertion order: oldest first
            return JSONResponse(
                {"orders": [_order_json(o, provider.attempts_for(o.serial)) for o in selected]}
            )

    return orders
