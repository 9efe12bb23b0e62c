"""The simulator's trading websocket (/stream) speaks Alpaca's protocol: authenticate, listen,
trade_updates in binary frames, no replay; every message checked against brokersim/schemas."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from tests.integration.test_brokersim_contract import check
from tests.support.brokersim import BrokerSim, brokersim_fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

sim = brokersim_fixture(fill_model={"mode": "partial", "parts": 2, "auto": False, "walk": False})


def stream_url(sim: BrokerSim) -> str:
    return sim.url.replace("http://", "ws://") + "/stream"


async def receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await ws.receive(timeout=5.0)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg  # as Alpaca's paper endpoint sends them
    return json.loads(msg.data)


@asynccontextmanager
async def connected(
    sim: BrokerSim, *, listen: bool = True
) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as session, session.ws_connect(stream_url(sim)) as ws:
        await ws.send_json(
            {"action": "authenticate", "data": {"key_id": sim.key_id, "secret_key": sim.secret_key}}
        )
        answer = check("stream_control", await receive(ws))
        assert answer["data"] == {"status": "authorized", "action": "authenticate"}
        if listen:
            await ws.send_str(
                json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}})
            )
            answer = check("stream_control", await receive(ws))
            assert answer == {"stream": "listening", "data": {"streams": ["trade_updates"]}}
        yield ws


async def submit(sim: BrokerSim, **changes: Any) -> dict[str, Any]:
    body = {"symbol": "AAPL", "qty": "2", "side": "buy", "type": "market", "time_in_force": "day"}
    return await sim.admin(
        "POST", "/v2/orders", {**body, "client_order_id": uuid.uuid4().hex, **changes}
    )


async def updates(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    return [check("trade_update", await receive(ws))["data"] for _ in range(count)]


async def test_authenticate_listen_and_trade_updates(sim: BrokerSim) -> None:
    async with connected(sim) as ws:
        order = await submit(sim)
        await sim.admin("POST", "/admin/tick")
        await sim.admin("POST", "/admin/tick")
        new, partial, fill = await updates(ws, 3)
    assert [e["event"] for e in (new, partial, fill)] == ["new", "partial_fill", "fill"]
    assert {e["order"]["id"] for e in (new, partial, fill)} == {order["id"]}
    assert "price" not in new and "qty" not in new
    assert [Decimal(e["qty"]) for e in (partial, fill)] == [1, 1]
    assert fill["order"]["filled_qty"] == "2"
    positions = await sim.admin("GET", "/v2/positions")
    assert [Decimal(fill["position_qty"])] == [Decimal(p["qty"]) for p in positions]
    assert len({e["execution_id"] for e in (new, partial, fill)}) == 3


async def test_replace_events(sim: BrokerSim) -> None:
    old = await submit(sim, type="limit", limit_price="100", time_in_force="gtc")
    async with connected(sim) as ws:
        new = await sim.admin("PATCH", f"/v2/orders/{old['id']}", {"qty": "3"})
        events = await updates(ws, 3)
    assert [(e["event"], e["order"]["id"]) for e in events] == [
        ("pending_replace", old["id"]),
        ("replaced", old["id"]),
        ("new", new["id"]),
    ]
    assert events[1]["order"]["replaced_by"] == new["id"]


async def test_no_replay_a_connection_sees_events_from_its_listen_on(sim: BrokerSim) -> None:
    await submit(sim)  # stored before anyone listens
    async with connected(sim) as ws:
        with pytest.raises(TimeoutError):
            await ws.receive(timeout=0.3)
        later = await submit(sim)
        (event,) = await updates(ws, 1)
    assert (event["event"], event["order"]["id"]) == ("new", later["id"])


async def test_wrong_keys_are_refused_and_the_socket_closed(sim: BrokerSim) -> None:
    for data in ({"key_id": sim.key_id, "secret_key": "wrong"}, {}, {"key_id": "ключ"}):
        async with aiohttp.ClientSession() as session, session.ws_connect(stream_url(sim)) as ws:
            await ws.send_json({"action": "authenticate", "data": data})
            answer = check("stream_control", await receive(ws))
            assert answer["data"] == {"status": "unauthorized", "action": "authenticate"}
            assert (await ws.receive(timeout=5)).type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
            )
    async with aiohttp.ClientSession() as session, session.ws_connect(stream_url(sim)) as ws:
        await ws.send_bytes(b'{"action": "listen", "data": {"streams": ["trade_updates"]}}')
        assert (await receive(ws))["data"]["status"] == "unauthorized"


async def test_admin_drop_and_refuse(sim: BrokerSim) -> None:
    async with connected(sim) as ws:
        assert (await sim.admin("GET", "/admin/streams"))["listening"] == 1
        dropped = await sim.admin("POST", "/admin/streams/drop", {"refuse": True})
        assert (dropped["dropped"], dropped["refusing"]) == (1, True)
        msg = await ws.receive(timeout=5)
        assert msg.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.ERROR,
        )
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with connected(sim):
            pass
    assert refused.value.status == 503
    await sim.admin("POST", "/admin/streams/allow")
    async with connected(sim) as ws:
        order = await submit(sim)
        (event,) = await updates(ws, 1)
        assert event["order"]["id"] == order["id"]
    status, _ = await sim.request("POST", "/admin/streams/drop", {"refuse": "yes"})
    assert status == 422
    for _ in range(100):  # the closed sockets leave the count
        if (await sim.admin("GET", "/admin/streams"))["connections"] == 0:
            break
        await asyncio.sleep(0.02)
    assert (await sim.admin("GET", "/admin/streams"))["connections"] == 0


async def test_hostile_messages_never_break_the_stream(sim: BrokerSim) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(stream_url(sim)) as ws:
        await ws.send_bytes(b"\xff\xfe not json")
        assert (await receive(ws))["data"]["status"] == "unauthorized"
    async with connected(sim, listen=False) as ws:
        for junk in ("not json", "[1, 2]", '{"action": "fly"}', '{"action": "listen"}'):
            await ws.send_str(junk)
            answer = await receive(ws)
            assert answer["stream"] in ("error", "listening"), answer
        await ws.send_str('{"action": "listen", "data": {"streams": ["trade_updates"]}}')
        assert (await receive(ws))["data"] == {"streams": ["trade_updates"]}
        await ws.send_bytes(b"x" * (128 * 1024))  # above the 64 KiB a message may have
        assert (await ws.receive(timeout=5)).type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
        )
    status, _ = await sim.request("GET", "/admin/streams")
    assert status == 200


async def test_the_stream_follows_a_key_rotation(sim: BrokerSim) -> None:
    old_secret = sim.secret_key
    await sim.admin("PUT", "/admin/keys", {"key_id": sim.key_id, "secret_key": "rotated-secret"})
    sim.secret_key = "rotated-secret"
    async with connected(sim):
        pass
    async with aiohttp.ClientSession() as session, session.ws_connect(stream_url(sim)) as ws:
        await ws.send_json(
            {"action": "authenticate", "data": {"key_id": sim.key_id, "secret_key": old_secret}}
        )
        assert (await receive(ws))["data"]["status"] == "unauthorized"
