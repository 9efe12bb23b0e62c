"""The simulator's per-key rate limit, seen from a plain HTTP client (real subprocess, sockets):
the X-Ratelimit-* headers count down, the request past the limit is a 429 in Alpaca's shape,
the window's reset lets requests through again, and the limit is set at start or at run time."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.test_brokersim_orders import order_body
from tests.support.brokersim import BrokerSim, StartSim, brokersim_factory  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

LIMITED = {"code": 42910000, "message": "rate limit exceeded"}
HEADERS = ("X-Ratelimit-Limit", "X-Ratelimit-Remaining", "X-Ratelimit-Reset")


async def call(
    sim: BrokerSim, method: str, path: str, body: object = None
) -> tuple[int, dict[str, str], Any]:
    """One request: (status, the rate-limit headers it carried, parsed body)."""
    async with (
        aiohttp.ClientSession(headers=sim.headers) as session,
        session.request(method, sim.url + path, json=body) as resp,
    ):
        text = await resp.text()
        limits = {h: resp.headers[h] for h in HEADERS if h in resp.headers}
        return resp.status, limits, (json.loads(text) if text else None)


async def test_headers_count_down_and_the_request_past_the_limit_is_a_429(
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(rate_limit={"limit": 5, "window_s": 60})
    before = time.time()
    answers = [await call(sim, "GET", "/v2/orders") for _ in range(5)]
    assert [status for status, _, _ in answers] == [200] * 5
    assert [h["X-Ratelimit-Remaining"] for _, h, _ in answers] == ["4", "3", "2", "1", "0"]
    assert {h["X-Ratelimit-Limit"] for _, h, _ in answers} == {"5"}
    resets = {int(h["X-Ratelimit-Reset"]) for _, h, _ in answers}
    assert len(resets) == 1  # one window
    reset = resets.pop()
    assert before + 60 <= reset <= time.time() + 61

    status, headers, body = await call(
        sim, "POST", "/v2/orders", order_body(client_order_id="rl-past-limit")
    )
    assert (status, body) == (429, LIMITED)
    assert headers == {
        "X-Ratelimit-Limit": "5",
        "X-Ratelimit-Remaining": "0",
        "X-Ratelimit-Reset": str(reset),
    }
    # Refused unread: no order was created (looked at with the limit lifted).
    await sim.admin("PUT", "/admin/rate_limit", {"limit": 0})
    status, headers, orders = await call(sim, "GET", "/v2/orders?status=all")
    assert (status, orders, headers) == (200, [], {})  # off: no headers at all
    counts = await sim.admin("GET", "/admin/rate_limit")
    assert (counts["allowed"], counts["refused"]) == (5, 1)


async def test_the_reset_lets_requests_through_again(
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(rate_limit={"limit": 2, "window_s": 1})
    assert [(await call(sim, "GET", "/v2/account"))[0] for _ in range(2)] == [200, 200]
    status, headers, _ = await call(sim, "GET", "/v2/account")
    assert status == 429
    reset = int(headers["X-Ratelimit-Reset"])
    await asyncio.sleep(max(0.0, reset - time.time()) + 0.05)  # what a well-behaved client does
    status, headers, _ = await call(sim, "GET", "/v2/account")
    assert (status, headers["X-Ratelimit-Remaining"]) == (200, "1")
    assert int(headers["X-Ratelimit-Reset"]) > reset - 1


async def test_admin_and_streams_are_not_counted_and_market_data_has_its_own_limit(
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(rate_limit={"limit": 2, "market_data_limit": 1, "window_s": 60})
    for _ in range(5):  # admin calls are free
        await sim.admin("GET", "/admin/clock")
        await sim.admin("GET", "/admin/rate_limit")
    quote = "/v2/stocks/quotes/latest?symbols=AAPL"
    status, headers, _ = await call(sim, "GET", quote)
    assert (status, headers["X-Ratelimit-Limit"], headers["X-Ratelimit-Remaining"]) == (
        200,
        "1",
        "0",
    )
    assert (await call(sim, "GET", quote))[0] == 429
    # The trading lane still has its two.
    status, headers, _ = await call(sim, "GET", "/v2/events/trade_updates?stream=false")
    assert (status, headers["X-Ratelimit-Remaining"]) == (200, "1")
    # An open event stream is not a request: it neither counts nor is refused.
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(headers=sim.headers, timeout=timeout) as session,
        session.get(sim.url + "/v2/events/trade_updates") as resp,
    ):
        assert resp.status == 200
        assert "X-Ratelimit-Remaining" not in resp.headers
    status, headers, _ = await call(sim, "GET", "/v2/positions")
    assert (status, headers["X-Ratelimit-Remaining"]) == (200, "0")
    assert (await call(sim, "GET", "/v2/positions"))[0] == 429


async def test_limit_set_at_run_time_is_kept_across_a_restart(
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory()
    status, headers, _ = await call(sim, "GET", "/v2/orders")
    assert (status, headers) == (200, {})  # off by default
    got = await sim.admin("PUT", "/admin/rate_limit", {"limit": 1})
    assert got == {
        "limit": 1,
        "market_data_limit": 0,
        "window_s": 60,
        "allowed": 0,
        "refused": 0,
    }
    assert (await call(sim, "GET", "/v2/orders"))[0] == 200
    assert (await call(sim, "GET", "/v2/orders"))[0] == 429
    sim.restart()
    # The configuration survives; the counters start afresh (a new window).
    assert (await sim.admin("GET", "/admin/rate_limit"))["limit"] == 1
    statuses = [(await call(sim, "GET", "/v2/orders"))[0] for _ in range(2)]
    assert statuses == [200, 429]
