"""Simulator events, restarts, the simulated clock, quotes and seeded repeatability."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from tests.integration.test_brokersim_orders import MANUAL, events, submit, tick
from tests.support.brokersim import BrokerSim, brokersim, brokersim_factory  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PARTIAL = {**MANUAL, "mode": "partial", "parts": 4}


async def read_sse(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    """The next ``count`` events of an SSE response (checks the id line matches the offset)."""
    found: list[dict[str, Any]] = []
    event_id = None
    async with asyncio.timeout(10):
        while len(found) < count:
            line = (await resp.content.readline()).decode().rstrip("\n")
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                assert event["offset"] == event_id
                found.append(event)
    return found


async def test_events_have_unique_ids_and_replay_from_an_offset(brokersim_factory) -> None:  # noqa: F811
    sim = brokersim_factory(fill_model=PARTIAL)
    for _ in range(3):
        await submit(sim, qty="2")
    await tick(sim, 4)
    log = await events(sim)
    assert [e["offset"] for e in log] == list(range(1, 16))  # 3 x (new + 4 fills)
    assert len({e["execution_id"] for e in log}) == len(log)
    assert await events(sim, since=7) == log[7:]
    limited = await sim.admin("GET", "/v2/events/trade_updates?stream=false&since=2&limit=3")
    assert limited == log[2:5]
    for event in log:
        fill = event["event"] in ("fill", "partial_fill")
        assert (event["price"] is not None) == fill and (event["qty"] is not None) == fill


async def test_sse_replays_after_since_then_delivers_live(brokersim_factory) -> None:  # noqa: F811
    sim = brokersim_factory(fill_model=MANUAL)
    await submit(sim)
    await tick(sim)
    stored = await events(sim)
    async with (
        aiohttp.ClientSession(headers=sim.headers) as session,
        session.get(f"{sim.url}/v2/events/trade_updates?since=1") as resp,
    ):
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert await read_sse(resp, 1) == stored[1:]
        live_order = await submit(sim)
        (live,) = await read_sse(resp, 1)
    assert (live["offset"], live["event"], live["order"]["id"]) == (3, "new", live_order["id"])


async def test_restart_mid_order_keeps_the_order_and_its_fills(brokersim_factory) -> None:  # noqa: F811
    sim = brokersim_factory(fill_model=PARTIAL)
    order = await submit(sim, qty="4", client_order_id="survivor")
    await tick(sim, 2)
    before = await sim.admin("GET", f"/v2/orders/{order['id']}")
    assert before["filled_qty"] == "2"
    sim.restart(crash=True)
    after = await sim.admin("GET", f"/v2/orders/{order['id']}")
    assert after == before
    status, _ = await sim.request("POST", "/v2/orders", {**order, "client_order_id": "survivor"})
    assert status == 422
    await tick(sim, 3)
    final = await sim.admin("GET", f"/v2/orders/{order['id']}")
    assert (final["status"], final["filled_qty"]) == ("filled", "4")
    log = await events(sim)
    assert [e["offset"] for e in log] == list(range(1, 6))
    assert len({e["execution_id"] for e in log}) == 5
    assert sum(Decimal(e["qty"]) for e in log if e["qty"]) == 4


async def test_restart_keeps_clock_prices_and_configuration(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", PARTIAL)
    await brokersim.admin("PUT", "/admin/faults", {"latency_ms": 1})
    await brokersim.admin("PUT", "/admin/prices", {"MSFT": "401.23"})
    advanced = await brokersim.admin("POST", "/admin/clock/advance", {"seconds": 86400 * 3})
    brokersim.restart()
    clock = await brokersim.admin("GET", "/admin/clock")
    assert clock["now"] >= advanced["now"]
    assert (await brokersim.admin("GET", "/admin/fill_model"))["parts"] == 4
    assert (await brokersim.admin("GET", "/admin/faults"))["latency_ms"] == 1
    quote = await brokersim.admin("GET", "/v2/stocks/MSFT/quotes/latest")
    assert (quote["quote"]["bp"], quote["quote"]["ap"]) == (401.22, 401.24)


async def test_clock_advance_expires_day_orders_but_not_gtc(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", MANUAL)
    day = await submit(brokersim, type="limit", limit_price="100", time_in_force="day")
    gtc = await submit(brokersim, type="limit", limit_price="100", time_in_force="gtc")
    clock = await brokersim.admin("GET", "/admin/clock")
    assert clock["now"] < clock["next_close"]
    to_close = datetime.fromisoformat(clock["next_close"]) - datetime.fromisoformat(clock["now"])
    result = await brokersim.admin(
        "POST", "/admin/clock/advance", {"seconds": to_close.total_seconds() + 1}
    )
    assert result["expired"] == 1
    assert (await brokersim.admin("GET", f"/v2/orders/{day['id']}"))["status"] == "expired"
    assert (await brokersim.admin("GET", f"/v2/orders/{gtc['id']}"))["status"] == "new"
    assert [e["event"] for e in await events(brokersim, since=2)] == ["expired"]
    status, body = await brokersim.request("POST", "/admin/clock/advance", {"seconds": -5})
    assert status == 422, body


async def test_quotes_serve_known_symbols_as_numbers(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", {"walk": False})  # prices hold still
    await brokersim.admin("PUT", "/admin/prices", {"AAPL": "190.12", "TSLA": "250"})
    body = await brokersim.admin("GET", "/v2/stocks/quotes/latest?symbols=AAPL,XYZ,TSLA")
    assert set(body["quotes"]) == {"AAPL", "TSLA"}
    assert (body["quotes"]["AAPL"]["bp"], body["quotes"]["AAPL"]["ap"]) == (190.11, 190.13)
    status, _ = await brokersim.request("GET", "/v2/stocks/XYZ/quotes/latest")
    assert status == 404
    status, body = await brokersim.request("PUT", "/admin/prices", {"XYZ": "1"})
    assert status == 422, body


async def run_scripted_session(sim: BrokerSim) -> tuple[list[str], list[tuple[str, str]]]:
    """The same requests every time: returns AAPL's price path and the fills (qty, price)."""
    await sim.admin("PUT", "/admin/fill_model", {"auto": False, "mode": "partial", "parts": 3})
    prices = []
    for n in range(6):
        await submit(sim, qty=str(n + 1), side="buy" if n % 2 else "sell")
        await tick(sim)
        prices.append((await sim.admin("GET", "/admin/prices"))["AAPL"])
    fills = [(e["qty"], e["price"]) for e in await events(sim) if e["price"]]
    return prices, fills


async def test_same_seed_and_requests_repeat_prices_and_fills(brokersim_factory) -> None:  # noqa: F811
    first = await run_scripted_session(brokersim_factory(seed=7))
    again = await run_scripted_session(brokersim_factory(seed=7))
    other = await run_scripted_session(brokersim_factory(seed=8))
    assert first == again
    assert first[0] != other[0]
    assert len(set(first[0])) > 1  # the price really moved
