"""Each injected fault is observable from a plain HTTP client (real subprocess, real sockets)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.integration.test_brokersim_orders import MANUAL, all_orders, events, order_body, submit
from tests.integration.test_brokersim_state import read_sse
from tests.support.brokersim import BrokerSim, brokersim, brokersim_factory  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CLIENT_TIMEOUT_S = 0.3


async def post_order(sim: BrokerSim, body: dict[str, Any], timeout_s: float = 10) -> int:
    async with (
        aiohttp.ClientSession(
            headers=sim.headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as session,
        session.post(sim.url + "/v2/orders", json=body) as resp,
    ):
        await resp.read()
        return resp.status


async def faults(sim: BrokerSim, **config: Any) -> None:
    await sim.admin("PUT", "/admin/faults", config)


async def wait_for_order(sim: BrokerSim, client_order_id: str) -> dict[str, Any]:
    path = f"/v2/orders:by_client_order_id?client_order_id={client_order_id}"
    for _ in range(200):
        status, body = await sim.request("GET", path)
        if status == 200:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"order {client_order_id} never appeared")


async def test_latency_delays_trading_but_not_admin(brokersim) -> None:  # noqa: F811
    await faults(brokersim, latency_ms=400)
    done: list[str] = []

    async def trading() -> None:
        await brokersim.request("GET", "/v2/orders")
        done.append("trading")

    async def admin() -> None:
        await asyncio.sleep(0.05)  # sent second
        await brokersim.admin("GET", "/admin/clock")
        done.append("admin")

    await asyncio.gather(trading(), admin())
    assert done == ["admin", "trading"]


async def test_5xx_fault_answers_503_and_creates_nothing(brokersim) -> None:  # noqa: F811
    await faults(brokersim, error_5xx_prob=1.0)
    status, body = await brokersim.request("POST", "/v2/orders", order_body())
    assert (status, body["code"]) == (503, 50000000)
    status, _ = await brokersim.request("GET", "/v2/stocks/quotes/latest?symbols=AAPL")
    assert status == 503
    await faults(brokersim, error_5xx_prob=0.0)
    assert await all_orders(brokersim) == []


async def test_drop_reply_executes_the_order_but_disconnects(brokersim) -> None:  # noqa: F811
    await faults(brokersim, drop_reply_prob=1.0)
    body = order_body()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_order(brokersim, body)
    await faults(brokersim, drop_reply_prob=0.0)
    [order] = await all_orders(brokersim)
    assert order["client_order_id"] == body["client_order_id"]


async def test_late_fault_executes_after_the_client_timed_out(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/fill_model", MANUAL)
    await faults(brokersim, late_prob=1.0, late_ms=1500)
    body = order_body()
    with pytest.raises(TimeoutError):
        await post_order(brokersim, body, timeout_s=CLIENT_TIMEOUT_S)
    assert await events(brokersim) == []  # not yet: the client has given up first
    await faults(brokersim, late_prob=0.0)
    order = await wait_for_order(brokersim, body["client_order_id"])
    assert order["status"] == "new"


async def test_hang_outlasts_the_client_and_then_does_nothing(brokersim) -> None:  # noqa: F811
    await faults(brokersim, hang_prob=1.0, hang_ms=500)
    with pytest.raises(TimeoutError):
        await post_order(brokersim, order_body(), timeout_s=CLIENT_TIMEOUT_S)
    await faults(brokersim, hang_prob=0.0)
    await brokersim.held_drained("hung")  # past the hang: the abandoned request must not execute
    assert await all_orders(brokersim) == []
    assert await events(brokersim) == []


async def test_unreachable_closes_every_v2_connection(brokersim) -> None:  # noqa: F811
    await faults(brokersim, unreachable=True)
    for method, path in (("POST", "/v2/orders"), ("GET", "/v2/stocks/AAPL/quotes/latest")):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await brokersim.request(method, path, order_body() if method == "POST" else None)
    assert (await brokersim.admin("GET", "/admin/faults"))["unreachable"] is True
    await faults(brokersim, unreachable=False)
    assert await all_orders(brokersim) == []
    await submit(brokersim)


async def test_event_faults_affect_live_delivery_not_the_log(brokersim_factory) -> None:  # noqa: F811
    sim = brokersim_factory(fill_model=MANUAL, faults={"event_dup_prob": 1.0})
    async with (
        aiohttp.ClientSession(headers=sim.headers) as session,
        session.get(f"{sim.url}/v2/events/trade_updates") as resp,
    ):
        await sim.admin("GET", "/admin/health")
        await submit(sim)
        first, dup = await read_sse(resp, 2)
        assert first == dup
        await faults(sim, event_dup_prob=0.0, event_drop_prob=1.0)
        await submit(sim)  # offset 2: dropped on the stream
        await faults(sim, event_drop_prob=0.0)
        await submit(sim)
        (after_gap,) = await read_sse(resp, 1)
    assert (first["offset"], after_gap["offset"]) == (1, 3)
    stored = await events(sim)
    assert [e["offset"] for e in stored] == [1, 2, 3]
    assert len({e["execution_id"] for e in stored}) == 3


async def test_bad_fault_config_is_422_and_changes_nothing(brokersim) -> None:  # noqa: F811
    before = await brokersim.admin("GET", "/admin/faults")
    for patch in ({"nope": 1}, {"error_5xx_prob": 2}, {"latency_ms": -1}):
        status, body = await brokersim.request("PUT", "/admin/faults", patch)
        assert status == 422, (patch, body)
    assert await brokersim.admin("GET", "/admin/faults") == before
    status, _ = await brokersim.request("PUT", "/admin/faults", json.dumps("x"))
    assert status == 400


async def test_fault_decisions_repeat_for_a_seed(brokersim_factory) -> None:  # noqa: F811
    async def outcomes(sim: BrokerSim) -> list[int]:
        return [(await sim.request("GET", "/v2/orders"))[0] for _ in range(12)]

    config = {"error_5xx_prob": 0.5, "seed": 3}
    first = await outcomes(brokersim_factory(faults=config))
    again = await outcomes(brokersim_factory(faults=config))
    assert first == again
    assert set(first) == {200, 503}


async def test_rotated_keys_refuse_the_old_ones_and_bad_keys_change_nothing(
    brokersim_factory,  # noqa: F811
) -> None:
    sim = brokersim_factory()
    bad_keys: list[dict[str, object]] = [
        {"key_id": "", "secret_key": "s"},
        {"key_id": "k"},
        {"key_id": "a b", "secret_key": "s"},
        {"key_id": "k", "secret_key": "s", "extra": 1},
    ]
    for bad in bad_keys:
        status, _ = await sim.request("PUT", "/admin/keys", bad)
        assert status == 422, bad
    assert (await sim.request("GET", "/v2/orders"))[0] == 200  # the keys are unchanged
    await sim.admin("PUT", "/admin/keys", {"key_id": "new-id", "secret_key": "new-secret"})
    assert (await sim.request("GET", "/v2/orders"))[0] == 401  # the old keys, refused
    sim.key_id, sim.secret_key = "new-id", "new-secret"
    assert (await sim.request("GET", "/v2/orders"))[0] == 200
