"""BrokerListener on the trading websocket (Alpaca's protocol, the simulator's /stream): no
offsets and no replay, so after each reconnect it looks up the orders open during the gap.

The simulator drops the socket in the middle of fills and refuses new ones while more fills
happen; the orders that end during the gap send no event afterwards, so only the lookup can
bring their final state. ``gap_lookup=False`` turns the lookup off (the test then fails).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from core.broker_client import BrokerAuthError, BrokerClient, TradeEvent
from core.keys import RedisKeys
from core.settings import Settings
from feeds.listener import BrokerListener
from feeds.listener import serve as serve_listener
from tests.conftest import APP_REDIS_URL
from tests.support.brokersim import BrokerSim, brokersim_fixture
from tests.support.listener import Running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

sim = brokersim_fixture(fill_model={"mode": "partial", "parts": 3, "auto": False, "walk": False})


class States:
    """The callback: each order's states in the order they were delivered; can fail once."""

    def __init__(self, fail_once_on: tuple[str, str] | None = None) -> None:
        self.by_order: dict[str, list[tuple[str, Decimal]]] = {}
        self.events: list[TradeEvent] = []
        self.fail_once_on = fail_once_on
        self.failures = 0

    async def __call__(self, event: TradeEvent) -> None:
        order = event.order
        if self.fail_once_on == (order.client_order_id, order.status):
            self.fail_once_on = None
            self.failures += 1
            raise RuntimeError("callback failed once")
        self.events.append(event)
        self.by_order.setdefault(order.id, []).append((order.status, order.filled_qty))

    def last(self, order_id: str) -> tuple[str, Decimal] | None:
        states = self.by_order.get(order_id)
        return states[-1] if states else None


@pytest_asyncio.fixture(loop_scope="session")
async def client(sim: BrokerSim) -> AsyncIterator[BrokerClient]:
    async with BrokerClient(
        sim.url, key_id=sim.key_id, secret_key=sim.secret_key, request_timeout_s=2.0
    ) as broker_client:
        yield broker_client


@pytest_asyncio.fixture(loop_scope="session")
async def started() -> AsyncIterator[Callable[[BrokerListener], Running]]:
    """Start listeners; each is stopped at teardown, also when the test failed."""
    runs: list[Running] = []

    def start(listener: BrokerListener) -> Running:
        runs.append(Running(listener))
        return runs[-1]

    yield start
    for run in runs:
        run.stop.set()
    await asyncio.gather(*(run.task for run in runs), return_exceptions=True)


def ws_listener(
    client: BrokerClient,
    redis: aioredis.Redis,
    keys: RedisKeys,
    on_event: States,
    **kwargs: Any,
) -> BrokerListener:
    return BrokerListener(
        client,
        redis,
        keys,
        on_event,
        f"ws-{uuid.uuid4().hex[:8]}",
        backoff_first_s=0.05,
        backoff_max_s=0.3,
        resync_s=3600.0,  # no periodic lookup: only the reconnect's
        stream="websocket",
        **kwargs,
    )


async def eventually(check: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def listening(sim: BrokerSim, count: int = 1) -> None:
    for _ in range(500):
        if (await sim.admin("GET", "/admin/streams"))["listening"] == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the listener never listened")


async def buy(client: BrokerClient, qty: str = "3", name: str | None = None) -> str:
    order = await client.submit_order(
        "AAPL", Decimal(qty), "buy", client_order_id=name or uuid.uuid4().hex
    )
    return order.id


async def tick(sim: BrokerSim, times: int = 1) -> None:
    for _ in range(times):
        await sim.admin("POST", "/admin/tick")


async def drop_then_fill_during_the_gap(
    sim: BrokerSim, client: BrokerClient, seen: States
) -> tuple[list[str], str]:
    """Three orders a third filled, the socket dropped (new ones refused), the three filled
    and a fourth order submitted and two thirds filled while the listener is away; then the
    stream allowed again. Returns the three ids and the fourth's."""
    ended = [await buy(client) for _ in range(3)]
    await tick(sim)
    third = ("partially_filled", Decimal(1))
    await eventually(lambda: all(seen.last(o) == third for o in ended), "the first fills")
    dropped = await sim.admin("POST", "/admin/streams/drop", {"refuse": True})
    assert dropped["dropped"] == 1
    during = await buy(client)
    await tick(sim, 2)
    await sim.admin("POST", "/admin/streams/allow")
    return ended, during


async def test_fills_during_the_gap_reach_the_callback(
    sim: BrokerSim,
    client: BrokerClient,
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
    started: Callable[[BrokerListener], Running],
) -> None:
    seen = States()
    running = started(ws_listener(client, redis_client, redis_keys, seen))
    await listening(sim)
    ended, during = await drop_then_fill_during_the_gap(sim, client, seen)
    filled = ("filled", Decimal(3))
    await eventually(lambda: all(seen.last(o) == filled for o in ended), "the gap's final fills")
    await eventually(
        lambda: seen.last(during) == ("partially_filled", Decimal(2)), "the gap's new order"
    )
    await listening(sim)
    await tick(sim)  # live again: the last third of the fourth order comes on the stream
    await eventually(lambda: seen.last(during) == filled, "a live fill after the gap")
    await running.close()

    listener = running.listener
    assert listener.reconnects >= 1
    assert listener.looked_up >= 4  # three final states and the new order's
    for states in seen.by_order.values():
        assert len(states) == len(set(states)), "a state delivered twice"
        filled_qtys = [qty for _, qty in states]
        assert filled_qtys == sorted(filled_qtys), "fills went backwards"
    # Everything the stream carried was an Alpaca event: no offsets.
    assert all(event.offset is None for event in seen.events)


async def test_a_failed_callback_is_delivered_again_after_the_reconnect(
    sim: BrokerSim,
    client: BrokerClient,
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
    started: Callable[[BrokerListener], Running],
) -> None:
    name = uuid.uuid4().hex
    seen = States(fail_once_on=(name, "partially_filled"))
    running = started(ws_listener(client, redis_client, redis_keys, seen))
    await listening(sim)
    order_id = await buy(client, name=name)
    await tick(sim)
    # The failure reconnects; the lookup offers the order's state again.
    await eventually(lambda: seen.last(order_id) == ("partially_filled", Decimal(1)), "redelivery")
    await running.close()
    assert seen.failures == 1 and running.listener.reconnects >= 1


async def test_wrong_keys_stop_the_listener(
    sim: BrokerSim, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    async with BrokerClient(sim.url, key_id=sim.key_id, secret_key="wrong") as wrong:
        listener = ws_listener(wrong, redis_client, redis_keys, States())
        with pytest.raises(BrokerAuthError):
            await asyncio.wait_for(listener.run(), 10)


async def test_the_setting_runs_the_listener_on_the_websocket(
    sim: BrokerSim, client: BrokerClient, redis_keys: RedisKeys
) -> None:
    """``ordersaga broker-listener`` (``listener.serve``) with ORDERSAGA_BROKER_STREAM=websocket:
    the stream URL comes from the broker URL; an order open before it started is looked up."""
    settings = Settings(
        broker_url=sim.url,
        broker_key_id=sim.key_id,
        broker_secret_key=sim.secret_key,
        redis_url=APP_REDIS_URL,
        redis_prefix=redis_keys.prefix,
        broker_stream="websocket",
    )
    seen = States()
    before = await buy(client)
    stop = asyncio.Event()
    task = asyncio.create_task(serve_listener(settings, on_event=seen, name="ws-cli", stop=stop))
    try:
        await eventually(lambda: seen.last(before) == ("new", Decimal(0)), "the open order")
        await listening(sim)
        await tick(sim)
        await eventually(lambda: seen.last(before) == ("partially_filled", 1), "a live fill")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert all(event.offset is None for event in seen.events)
