"""The simulator's order API over real sockets: a real subprocess per test, plain aiohttp calls."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from tests.support.brokersim import BrokerSim, brokersim, brokersim_factory  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MANUAL = {"auto": False, "walk": False}


def order_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "symbol": "AAPL",
        "qty": "1",
        "side": "buy",
        "type": "market",
        "time_in_force": "day",
        "client_order_id": str(uuid.uuid4()),
    }
    body.update(overrides)
    return body


async def submit(sim: BrokerSim, **overrides: Any) -> dict[str, Any]:
    status, order = await sim.request("POST", "/v2/orders", order_body(**overrides))
    assert status == 200, order
    return order


async def all_orders(sim: BrokerSim) -> list[dict[str, Any]]:
    return await sim.admin("GET", "/v2/orders?status=all&limit=500")


async def events(sim: BrokerSim, since: int = 0) -> list[dict[str, Any]]:
    return await sim.admin("GET", f"/v2/events/trade_updates?stream=false&since={since}")


async def tick(sim: BrokerSim, times: int = 1) -> None:
    for _ in range(times):
        await sim.admin("POST", "/admin/tick")


async def test_duplicate_client_order_id_is_422_and_creates_one_order(
    brokersim_factory,  # noqa: F811
) -> None:
    sim = brokersim_factory(fill_model=MANUAL)
    first = await submit(sim, client_order_id="dup-1")
    status, body = await sim.request("POST", "/v2/orders", order_body(client_order_id="dup-1"))
    assert status == 422
    assert body == {"code": 40010001, "message": "client_order_id must be unique"}
    orders = await all_orders(sim)
    assert [o["id"] for o in orders] == [first["id"]]
    found = await sim.admin("GET", "/v2/orders:by_client_order_id?client_order_id=dup-1")
    assert found["id"] == first["id"]


async def test_partial_fills_sum_exactly_to_the_order_qty(brokersim_factory) -> None:  # noqa: F811
    sim = brokersim_factory(fill_model={**MANUAL, "mode": "partial", "parts": 3})
    order = await submit(sim, qty="1.000000001")
    await tick(sim, 5)
    final = await sim.admin("GET", f"/v2/orders/{order['id']}")
    fills = [e for e in await events(sim) if e["event"] in ("fill", "partial_fill")]
    assert [e["event"] for e in fills] == ["partial_fill", "partial_fill", "fill"]
    assert sum(Decimal(e["qty"]) for e in fills) == Decimal("1.000000001")
    assert final["status"] == "filled"
    assert Decimal(final["filled_qty"]) == Decimal("1.000000001")
    notional = sum(Decimal(e["qty"]) * Decimal(e["price"]) for e in fills)
    assert Decimal(final["filled_notional"]) == notional
    avg = Decimal(final["filled_avg_price"])
    assert abs(avg * Decimal(final["filled_qty"]) - notional) < Decimal("0.000001")


async def test_a_market_order_fills_at_once_in_instant_mode(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", MANUAL)
    order = await submit(brokersim, qty="2.5")
    assert order["status"] == "new"
    await tick(brokersim)
    final = await brokersim.admin("GET", f"/v2/orders/{order['id']}")
    assert (final["status"], final["filled_qty"]) == ("filled", "2.5")
    assert final["filled_avg_price"] == "190"


async def test_no_fills_after_the_cancel_is_processed(brokersim_factory) -> None:  # noqa: F811
    sim = brokersim_factory(fill_model={**MANUAL, "mode": "partial", "parts": 4})
    order = await submit(sim, qty="4")
    await tick(sim)
    status, _ = await sim.request("DELETE", f"/v2/orders/{order['id']}")
    assert status == 204
    pending = await sim.admin("GET", f"/v2/orders/{order['id']}")
    assert pending["status"] == "pending_cancel"
    await tick(sim, 5)
    final = await sim.admin("GET", f"/v2/orders/{order['id']}")
    assert final["status"] == "canceled"
    log = [e for e in await events(sim) if e["order"]["id"] == order["id"]]
    kinds = [e["event"] for e in log]
    canceled_at = kinds.index("canceled")
    assert "fill" not in kinds and "partial_fill" not in kinds[canceled_at:]
    filled = sum(Decimal(e["qty"]) for e in log if e["event"] == "partial_fill")
    at_cancel = Decimal(log[canceled_at]["order"]["filled_qty"])
    assert Decimal(final["filled_qty"]) == filled == at_cancel
    assert Decimal(0) < filled < Decimal(4)
    status, body = await sim.request("DELETE", f"/v2/orders/{order['id']}")
    assert (status, body) == (422, {"code": 42210000, "message": "order is not cancelable"})


async def test_unknown_order_is_404(brokersim) -> None:  # noqa: F811
    for path in (f"/v2/orders/{uuid.uuid4()}", "/v2/orders:by_client_order_id?client_order_id=x"):
        status, body = await brokersim.request("GET", path)
        assert (status, body) == (404, {"code": 40410000, "message": "order not found"})
    status, _ = await brokersim.request("DELETE", f"/v2/orders/{uuid.uuid4()}")
    assert status == 404


async def test_limit_orders_fill_only_when_the_price_crosses(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", MANUAL)
    await brokersim.admin("PUT", "/admin/prices", {"AAPL": "190.00"})
    buy = await submit(brokersim, type="limit", limit_price="185.50", time_in_force="gtc")
    sell = await submit(brokersim, type="limit", limit_price="195", side="sell")
    await tick(brokersim, 2)
    assert (await brokersim.admin("GET", f"/v2/orders/{buy['id']}"))["status"] == "new"
    await brokersim.admin("PUT", "/admin/prices", {"AAPL": "185.49"})
    await tick(brokersim)
    bought = await brokersim.admin("GET", f"/v2/orders/{buy['id']}")
    assert (bought["status"], bought["filled_avg_price"]) == ("filled", "185.49")
    assert (await brokersim.admin("GET", f"/v2/orders/{sell['id']}"))["status"] == "new"
    await brokersim.admin("PUT", "/admin/prices", {"AAPL": "196.10"})
    await tick(brokersim)
    sold = await brokersim.admin("GET", f"/v2/orders/{sell['id']}")
    assert (sold["status"], sold["filled_avg_price"]) == ("filled", "196.1")


async def test_marketable_limit_buy_never_fills_above_its_limit(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", {**MANUAL, "mode": "partial"})
    await submit(brokersim, type="limit", limit_price="190.10", qty="3")
    for price in ("190.05", "190.50", "190.10", "191", "189"):
        await brokersim.admin("PUT", "/admin/prices", {"AAPL": price})
        await tick(brokersim)
    fills = [e for e in await events(brokersim) if e["event"] in ("fill", "partial_fill")]
    assert [e["price"] for e in fills] == ["190.05", "190.10", "189.00"]
    assert all(Decimal(e["price"]) <= Decimal("190.10") for e in fills)


async def test_far_limit_is_rejected_with_an_event(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", MANUAL)
    order = await submit(brokersim, type="limit", limit_price="50")
    assert order["status"] == "rejected"
    assert [e["event"] for e in await events(brokersim)] == ["rejected"]
    status, _ = await brokersim.request("DELETE", f"/v2/orders/{order['id']}")
    assert status == 422


async def test_ioc_fills_what_it_can_and_cancels_the_rest(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", {**MANUAL, "mode": "partial", "parts": 2})
    partly = await submit(brokersim, time_in_force="ioc", qty="2")
    missed = await submit(brokersim, time_in_force="ioc", type="limit", limit_price="150")
    await tick(brokersim)
    partly = await brokersim.admin("GET", f"/v2/orders/{partly['id']}")
    assert (partly["status"], partly["filled_qty"]) == ("canceled", "1")
    missed = await brokersim.admin("GET", f"/v2/orders/{missed['id']}")
    assert (missed["status"], missed["filled_qty"]) == ("canceled", "0")


async def test_list_orders_filters_by_status_and_orders_by_time(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", MANUAL)
    done = await submit(brokersim)
    await tick(brokersim)
    first = await submit(brokersim, type="limit", limit_price="100", time_in_force="gtc")
    second = await submit(brokersim, type="limit", limit_price="101", time_in_force="gtc")
    ids = lambda orders: [o["id"] for o in orders]  # noqa: E731
    assert ids(await brokersim.admin("GET", "/v2/orders")) == [second["id"], first["id"]]
    asc = await brokersim.admin("GET", "/v2/orders?status=open&direction=asc&limit=1")
    assert ids(asc) == [first["id"]]
    assert ids(await brokersim.admin("GET", "/v2/orders?status=closed")) == [done["id"]]
    after = first["created_at"]
    assert ids(await brokersim.admin("GET", f"/v2/orders?status=all&after={after}")) == [
        second["id"]
    ]
    # The listing's indexes (by creation time, and the open orders) are rebuilt on a restart
    # and follow an order that ends.
    brokersim.restart()
    assert ids(await brokersim.admin("GET", "/v2/orders?status=all&direction=asc")) == [
        done["id"],
        first["id"],
        second["id"],
    ]
    await brokersim.admin("DELETE", f"/v2/orders/{first['id']}")
    await tick(brokersim)
    assert ids(await brokersim.admin("GET", "/v2/orders?status=open")) == [second["id"]]
    closed = await brokersim.admin("GET", "/v2/orders?status=closed&direction=asc")
    assert ids(closed) == [done["id"], first["id"]]


BAD_BODIES = [
    ({"symbol": "XYZ"}, 422, 'asset "XYZ" not found'),
    ({"qty": "-1"}, 422, "qty"),
    ({"qty": "0"}, 422, "qty"),
    ({"qty": "abc"}, 422, "qty"),
    ({"qty": None}, 422, "qty"),
    ({"qty": "1.0000000001"}, 422, "decimals"),
    ({"side": "short"}, 422, "side"),
    ({"type": "stop"}, 422, "type"),
    ({"time_in_force": "fok"}, 422, "time_in_force"),
    ({"type": "limit"}, 422, "limit_price"),
    ({"type": "limit", "limit_price": "-5"}, 422, "limit_price"),
]


async def test_bad_input_gets_a_clear_4xx_and_creates_nothing(brokersim) -> None:  # noqa: F811
    for overrides, status, fragment in BAD_BODIES:
        got, body = await brokersim.request("POST", "/v2/orders", order_body(**overrides))
        assert got == status and fragment in body["message"], (overrides, body)
        assert body["code"] == 40010001
    url = brokersim.url + "/v2/orders"
    async with aiohttp.ClientSession(headers=brokersim.headers) as session:
        for raw in (b"{not json", b"[1, 2]", b""):
            async with session.post(url, data=raw) as resp:
                assert resp.status == 400
                assert (await resp.json())["code"] == 40010000
    assert await all_orders(brokersim) == []
    assert await events(brokersim) == []


async def test_missing_or_wrong_keys_are_401_and_create_nothing(brokersim) -> None:  # noqa: F811
    wrong = {"APCA-API-KEY-ID": brokersim.key_id, "APCA-API-SECRET-KEY": "nope"}
    url = brokersim.url + "/v2/orders"
    for headers in ({}, wrong, {"APCA-API-KEY-ID": brokersim.key_id}):
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(url, json=order_body()) as resp,
        ):
            assert resp.status == 401
            assert await resp.json() == {"code": 40110000, "message": "request is not authorized"}
    assert await all_orders(brokersim) == []
