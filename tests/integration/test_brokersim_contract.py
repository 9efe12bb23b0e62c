"""Contract tests: every answer of every /v2 endpoint the simulator serves, happy and refused,
validated against the JSON Schemas in brokersim/schemas (each written from Alpaca's reference,
named in its ``$comment``). A client built on Alpaca's published schema accepts what passes here.

``test_every_v2_route_is_covered`` keeps the list below complete: a new route fails it until a
contract test calls it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from brokersim.server import BrokerSimServer, open_state
from tests.support.brokersim import BrokerSim, brokersim_fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SCHEMAS = Path(__file__).resolve().parents[2] / "brokersim" / "schemas"
MANUAL = {"mode": "partial", "parts": 2, "auto": False, "walk": False}

sim = brokersim_fixture(fill_model=MANUAL)

# (method, route) of every /v2 endpoint, and the test below that checks its answers.
COVERED = {
    ("POST", "/v2/orders"): "test_orders_through_their_lifecycle",
    ("GET", "/v2/orders"): "test_orders_through_their_lifecycle",
    ("GET", "/v2/orders:by_client_order_id"): "test_orders_through_their_lifecycle",
    ("GET", "/v2/orders/{id}"): "test_orders_through_their_lifecycle",
    ("DELETE", "/v2/orders/{id}"): "test_order_refusals",
    ("DELETE", "/v2/orders"): "test_cancel_all_is_a_multi_status",
    ("PATCH", "/v2/orders/{id}"): "test_replace",
    ("GET", "/v2/account"): "test_account_and_positions",
    ("GET", "/v2/positions"): "test_account_and_positions",
    ("GET", "/v2/positions/{symbol}"): "test_account_and_positions",
    ("GET", "/v2/clock"): "test_clock_and_calendar",
    ("GET", "/v2/calendar"): "test_clock_and_calendar",
    ("GET", "/v2/assets"): "test_assets",
    ("GET", "/v2/assets/{symbol}"): "test_assets",
    ("GET", "/v2/stocks/quotes/latest"): "test_unauthorized_and_unknown_everywhere",
    ("GET", "/v2/stocks/{symbol}/quotes/latest"): "test_unauthorized_and_unknown_everywhere",
    ("GET", "/v2/events/trade_updates"): "test_orders_through_their_lifecycle",
}


def _registry() -> tuple[dict[str, Draft202012Validator], Registry]:
    raw = {p.stem: json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.json"))}
    registry: Registry = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in raw.values()
    )
    return {
        name: Draft202012Validator(schema, registry=registry) for name, schema in raw.items()
    }, registry


VALIDATORS, _ = _registry()


def check(entity: str, body: Any) -> Any:
    """Fail with every schema error of ``body``; return it for further assertions."""
    errors = sorted(VALIDATORS[entity].iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{entity}: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors[:5]
    )
    return body


def check_all(entity: str, items: Any) -> list[Any]:
    assert isinstance(items, list)
    for item in items:
        check(entity, item)
    return items


async def ok(sim: BrokerSim, method: str, path: str, body: object = None, status: int = 200) -> Any:
    got, answer = await sim.request(method, path, body)
    assert got == status, (method, path, got, answer)
    return answer


async def refused(
    sim: BrokerSim, method: str, path: str, status: int, body: object = None
) -> dict[str, Any]:
    got, answer = await sim.request(method, path, body)
    assert got == status, (method, path, got, answer)
    return check("error", answer)


def order_body(**changes: Any) -> dict[str, Any]:
    body = {"symbol": "AAPL", "qty": "2", "side": "buy", "type": "market", "time_in_force": "day"}
    return {**body, "client_order_id": uuid.uuid4().hex, **changes}


async def submit(sim: BrokerSim, **changes: Any) -> dict[str, Any]:
    return check("order", await ok(sim, "POST", "/v2/orders", order_body(**changes)))


async def tick(sim: BrokerSim) -> None:
    await sim.admin("POST", "/admin/tick")


async def test_every_v2_route_is_covered(tmp_path: Path) -> None:
    engine, faults = open_state(tmp_path / "state.sqlite")
    try:
        app = BrokerSimServer(engine, faults, "k", "s").build_app()
        served = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.resource is not None
            and route.resource.canonical.startswith("/v2/")
            and route.method != "HEAD"
        }
    finally:
        engine.store.close()
    assert served == set(COVERED)


async def test_orders_through_their_lifecycle(sim: BrokerSim) -> None:
    seen: set[str] = set()
    market = await submit(sim)
    limit = await submit(sim, type="limit", limit_price="100", time_in_force="gtc")
    far = await submit(sim, type="limit", limit_price="10")
    seen.update(o["status"] for o in (market, limit, far))
    await tick(sim)
    seen.add(check("order", await ok(sim, "GET", f"/v2/orders/{market['id']}"))["status"])
    await tick(sim)
    by_client = await ok(
        sim, "GET", f"/v2/orders:by_client_order_id?client_order_id={market['client_order_id']}"
    )
    seen.add(check("order", by_client)["status"])
    await ok(sim, "DELETE", f"/v2/orders/{limit['id']}", status=204)
    seen.add(check("order", await ok(sim, "GET", f"/v2/orders/{limit['id']}"))["status"])
    await tick(sim)
    day = await submit(sim, type="limit", limit_price="100")
    await sim.admin("POST", "/admin/clock/advance", {"to": "next_close"})
    for query in ("", "?status=open", "?status=closed&direction=asc", "?status=all&limit=500"):
        listed = check_all("order", await ok(sim, "GET", "/v2/orders" + query))
        seen.update(o["status"] for o in listed)
    assert check("order", await ok(sim, "GET", f"/v2/orders/{day['id']}"))["status"] == "expired"
    events = await ok(sim, "GET", "/v2/events/trade_updates?stream=false&limit=1000")
    for event in events:
        check("order", event["order"])
        seen.add(event["order"]["status"])
    expected = {"new", "partially_filled", "filled", "pending_cancel", "canceled", "rejected"}
    assert expected | {"expired"} <= seen


async def test_order_refusals(sim: BrokerSim) -> None:
    await refused(sim, "POST", "/v2/orders", 422, order_body(qty="-1"))
    await refused(sim, "POST", "/v2/orders", 422, order_body(symbol="NOPE"))
    await refused(sim, "POST", "/v2/orders", 400, [1, 2])
    await refused(sim, "GET", f"/v2/orders/{uuid.uuid4()}", 404)
    await refused(sim, "GET", "/v2/orders:by_client_order_id?client_order_id=nope", 404)
    await refused(sim, "GET", "/v2/orders?status=sideways", 422)
    await refused(sim, "GET", "/v2/orders?limit=-1", 422)
    await refused(sim, "DELETE", f"/v2/orders/{uuid.uuid4()}", 404)
    order = await submit(sim)
    await tick(sim)
    await tick(sim)
    error = await refused(sim, "DELETE", f"/v2/orders/{order['id']}", 422)
    assert error["code"] == 42210000


async def test_replace(sim: BrokerSim) -> None:
    old = await submit(sim, qty="4", type="limit", limit_price="100", time_in_force="gtc")
    new = check(
        "order",
        await ok(sim, "PATCH", f"/v2/orders/{old['id']}", {"qty": "3", "limit_price": "101"}),
    )
    assert (new["replaces"], new["qty"], new["limit_price"], new["status"]) == (
        old["id"],
        "3",
        "101",
        "new",
    )
    assert (new["time_in_force"], new["filled_qty"]) == ("gtc", "0")
    replaced = check("order", await ok(sim, "GET", f"/v2/orders/{old['id']}"))
    assert replaced["status"] == "replaced" and replaced["replaced_by"] == new["id"]
    assert replaced["replaced_at"] is not None
    kinds = [
        (e["event"], e["order"]["id"])
        for e in await ok(sim, "GET", "/v2/events/trade_updates?stream=false&limit=1000")
        if e["order"]["id"] in (old["id"], new["id"])
    ]
    assert kinds[-3:] == [
        ("pending_replace", old["id"]),
        ("replaced", old["id"]),
        ("new", new["id"]),
    ]
    # A replaced order is not open: neither replaced again nor canceled.
    error = await refused(sim, "PATCH", f"/v2/orders/{old['id']}", 422, {"qty": "1"})
    assert error == {"code": 42210000, "message": "order is not open"}
    await refused(sim, "DELETE", f"/v2/orders/{old['id']}", 422)
    for bad in ({}, {"qty": "0"}, {"limit_price": "-1"}, {"stop_price": "90"}, {"colour": "red"}):
        await refused(sim, "PATCH", f"/v2/orders/{new['id']}", 422, bad)
    await refused(sim, "PATCH", f"/v2/orders/{new['id']}", 400, [1])
    await refused(sim, "PATCH", f"/v2/orders/{uuid.uuid4()}", 404, {"qty": "1"})
    market = await submit(sim)
    await refused(sim, "PATCH", f"/v2/orders/{market['id']}", 422, {"limit_price": "100"})
    taken = {"client_order_id": market["client_order_id"]}
    await refused(sim, "PATCH", f"/v2/orders/{new['id']}", 422, taken)


async def test_cancel_all_is_a_multi_status(sim: BrokerSim) -> None:
    await ok(sim, "DELETE", "/v2/orders", status=207)  # whatever earlier tests left open
    await tick(sim)
    first = await submit(sim, type="limit", limit_price="100", time_in_force="gtc")
    second = await submit(sim, type="limit", limit_price="101", time_in_force="gtc")
    results = check_all("cancel_result", await ok(sim, "DELETE", "/v2/orders", status=207))
    assert {r["id"] for r in results} == {first["id"], second["id"]}
    assert all(r["status"] == 200 and r["body"]["status"] == "pending_cancel" for r in results)
    await tick(sim)
    assert await ok(sim, "DELETE", "/v2/orders", status=207) == []


async def test_account_and_positions(sim: BrokerSim) -> None:
    await submit(sim, symbol="MSFT", qty="1.5")
    await tick(sim)
    await tick(sim)
    check("account", await ok(sim, "GET", "/v2/account"))
    positions = check_all("position", await ok(sim, "GET", "/v2/positions"))
    assert "MSFT" in {p["symbol"] for p in positions}
    check("position", await ok(sim, "GET", "/v2/positions/MSFT"))
    await refused(sim, "GET", "/v2/positions/QQQ", 404)


async def test_clock_and_calendar(sim: BrokerSim) -> None:
    clock = check("clock", await ok(sim, "GET", "/v2/clock"))
    assert clock["next_open"] > clock["timestamp"][:10]
    days = check_all("calendar_day", await ok(sim, "GET", "/v2/calendar"))
    assert 18 <= len(days) <= 23  # thirty days of weekdays
    week = check_all(
        "calendar_day", await ok(sim, "GET", "/v2/calendar?start=2026-03-02&end=2026-03-08")
    )
    assert [d["date"] for d in week] == [f"2026-03-0{n}" for n in range(2, 7)]
    assert week[-1]["settlement_date"] == "2026-03-09"
    for query in ("start=yesterday", "start=2026-03-08&end=2026-03-01", "end=2099-01-01"):
        await refused(sim, "GET", f"/v2/calendar?{query}", 422)


async def test_assets(sim: BrokerSim) -> None:
    assets = check_all("asset", await ok(sim, "GET", "/v2/assets"))
    assert {"AAPL", "MSFT", "TSLA", "NVDA", "AMZN", "SPY"} <= {a["symbol"] for a in assets}
    aapl = check("asset", await ok(sim, "GET", "/v2/assets/aapl"))
    assert check("asset", await ok(sim, "GET", f"/v2/assets/{aapl['id']}")) == aapl
    order = await submit(sim)
    assert order["asset_id"] == aapl["id"]
    assert check_all("asset", await ok(sim, "GET", "/v2/assets?status=inactive")) == []
    arca = check_all("asset", await ok(sim, "GET", "/v2/assets?exchange=ARCA"))
    assert [a["symbol"] for a in arca] == ["SPY"]
    await refused(sim, "GET", "/v2/assets/NOPE", 404)
    await refused(sim, "GET", "/v2/assets?status=sleeping", 422)
    await refused(sim, "GET", "/v2/assets?asset_class=bonds", 422)


def _paths() -> Iterator[tuple[str, str]]:
    for method, route in COVERED:
        yield method, route.replace("{id}", str(uuid.uuid4())).replace("{symbol}", "AAPL")


async def test_unauthorized_and_unknown_everywhere(sim: BrokerSim) -> None:
    for method, path in _paths():
        unauthorized = BrokerSim(sim.state_path, secret_key="wrong")
        unauthorized.url = sim.url
        await refused(unauthorized, method, path, 401)
    await refused(sim, "GET", "/v2/stocks/quotes/latest?symbols=", 422)
    await refused(sim, "GET", "/v2/nothing-here", 404)
    await refused(sim, "PUT", "/v2/clock", 405)


async def test_a_replacement_is_listed_and_fills_and_the_replaced_order_does_not(
    sim: BrokerSim,
) -> None:
    # Marketable limits: the replacement fills at the next tick; the replaced one must not.
    price = (await ok(sim, "GET", "/v2/stocks/AAPL/quotes/latest"))["quote"]["ap"]
    limit = str(round(float(price) * 1.1, 2))
    far = str(round(float(price) * 0.9, 2))
    old = await submit(sim, qty="2", type="limit", limit_price=far, time_in_force="gtc")
    new = await ok(sim, "PATCH", f"/v2/orders/{old['id']}", {"limit_price": limit})
    open_ids = [o["id"] for o in await ok(sim, "GET", "/v2/orders?status=open&limit=500")]
    assert new["id"] in open_ids and old["id"] not in open_ids
    all_ids = [o["id"] for o in await ok(sim, "GET", "/v2/orders?status=all&limit=500")]
    assert new["id"] in all_ids
    for _ in range(10):  # the fixture's fill model fills in parts, one a tick
        await tick(sim)
        filled = await ok(sim, "GET", f"/v2/orders/{new['id']}")
        if filled["status"] == "filled":
            break
    replaced = await ok(sim, "GET", f"/v2/orders/{old['id']}")
    assert filled["status"] == "filled" and filled["filled_qty"] == "2", filled
    assert replaced["status"] == "replaced" and replaced["filled_qty"] == "0", replaced
