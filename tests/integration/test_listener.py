"""BrokerListener against the simulator's SSE stream and real Redis.

Every test ends by checking the callback's successful deliveries: each stored offset exactly
once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from core.broker_client import BrokerClient, TradeEvent
from core.keys import RedisKeys
from feeds.listener import BrokerListener
from tests.support.brokersim import BrokerSim, brokersim_fixture
from tests.support.listener import Running

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# A fresh simulator per test: offsets start at 1. Fills only when a test ticks.
sim = brokersim_fixture(fill_model={"mode": "instant", "auto": False})


class Collector:
    """The callback: records what it accepted; can fail once on chosen offsets."""

    def __init__(self, fail_once: set[int] | None = None) -> None:
        self.offsets: list[int] = []
        self.execution_ids: list[str | None] = []
        self.fail_once = set(fail_once or ())
        self.failures = 0

    async def __call__(self, event: TradeEvent) -> None:
        if event.offset in self.fail_once:
            self.fail_once.discard(event.offset)
            self.failures += 1
            raise RuntimeError(f"callback failed on {event.offset}")
        self.offsets.append(event.offset)
        self.execution_ids.append(event.execution_id)


@pytest_asyncio.fixture(loop_scope="session")
async def client(sim: BrokerSim) -> AsyncIterator[BrokerClient]:
    async with BrokerClient(
        sim.url, key_id=sim.key_id, secret_key=sim.secret_key, request_timeout_s=2.0
    ) as broker_client:
        yield broker_client


def new_listener(
    client: BrokerClient,
    redis: aioredis.Redis,
    keys: RedisKeys,
    on_event: Collector,
    name: str,
    **kwargs: float,
) -> BrokerListener:
    return BrokerListener(
        client, redis, keys, on_event, name, backoff_first_s=0.05, backoff_max_s=0.3, **kwargs
    )


async def eventually(check: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def trade(sim: BrokerSim, client: BrokerClient, orders: int) -> int:
    """Submit market orders and fill them: two events each ("new", "fill")."""
    for _ in range(orders):
        await client.submit_order("AAPL", Decimal(1), "buy", client_order_id=uuid.uuid4().hex)
    await sim.admin("POST", "/admin/tick")
    return int((await stored_events(sim))[-1]["offset"])


async def stored_events(sim: BrokerSim) -> list[Any]:
    return list(await sim.admin("GET", "/v2/events/trade_updates?stream=false&limit=10000"))


def name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_in_order_and_resumes_from_stored_offset(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    seen, listener_name = Collector(), name()
    last = await trade(sim, client, 2)
    first = Running(new_listener(client, redis_client, redis_keys, seen, listener_name))
    await eventually(lambda: len(seen.offsets) == last, "first batch delivered")
    await first.close()
    assert await redis_client.get(redis_keys.listener_offset(listener_name)) == str(last)

    last = await trade(sim, client, 3)
    second = Running(new_listener(client, redis_client, redis_keys, seen, listener_name))
    await eventually(lambda: len(seen.offsets) >= last, "second batch delivered")
    await second.close()
    assert seen.offsets == list(range(1, last + 1))
    assert len(set(seen.execution_ids)) == last


async def test_failed_callback_is_replayed_not_lost(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    seen = Collector(fail_once={3, 4})
    last = await trade(sim, client, 3)
    running = Running(new_listener(client, redis_client, redis_keys, seen, name()))
    await eventually(lambda: len(seen.offsets) >= last, "all delivered")
    await running.close()
    assert seen.failures == 2
    assert running.listener.reconnects >= 2
    assert seen.offsets == list(range(1, last + 1))


async def test_survives_a_simulator_restart(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    seen = Collector()
    first_last = await trade(sim, client, 1)
    running = Running(new_listener(client, redis_client, redis_keys, seen, name()))
    await eventually(lambda: len(seen.offsets) == first_last, "before the restart")
    sim.restart()
    last = await trade(sim, client, 2)
    await eventually(lambda: len(seen.offsets) >= last, "after the restart")
    await running.close()
    assert running.listener.reconnects >= 1
    assert seen.offsets == list(range(1, last + 1))


async def test_dropped_and_duplicated_live_events(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    seen = Collector()
    running = Running(new_listener(client, redis_client, redis_keys, seen, name(), resync_s=0.3))
    first = await trade(sim, client, 1)
    await eventually(lambda: len(seen.offsets) == first, "connected and live")
    await sim.admin(
        "PUT", "/admin/faults", {"seed": 5, "event_drop_prob": 0.3, "event_dup_prob": 0.3}
    )
    last = first
    for _ in range(5):
        last = await trade(sim, client, 2)
    await eventually(lambda: len(seen.offsets) >= last, "every event despite the faults")
    await running.close()
    listener = running.listener
    assert listener.duplicates + listener.backfilled > 0
    assert seen.offsets == list(range(1, last + 1))


async def lazily_saving(
    sim: BrokerSim, client: BrokerClient, redis: aioredis.Redis, keys: RedisKeys, orders: int
) -> tuple[Collector, str, int, Running]:
    """A listener that saves its offset once a minute, after it delivered ``orders`` orders'
    events: (what it delivered, its name, the last offset, the running listener)."""
    seen, listener_name = Collector(), name()
    last = await trade(sim, client, orders)
    running = Running(new_listener(client, redis, keys, seen, listener_name, save_every_s=60.0))
    await eventually(lambda: len(seen.offsets) == last, "all delivered")
    return seen, listener_name, last, running


async def test_offset_is_saved_in_batches_and_on_stop(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    seen, listener_name, last, running = await lazily_saving(
        sim, client, redis_client, redis_keys, 4
    )
    key = redis_keys.listener_offset(listener_name)
    # The first event is saved at once; the rest wait for the next save, not one write each.
    assert await redis_client.get(key) == "1"
    await running.close()
    assert await redis_client.get(key) == str(last)
    # A restart resumes after the saved offset: nothing is delivered twice. New trades after
    # the restart are delivered, so the listener did connect and read the stream.
    again = Running(new_listener(client, redis_client, redis_keys, seen, listener_name))
    newest = await trade(sim, client, 1)
    await eventually(lambda: newest in seen.offsets, "the new trade delivered")
    await again.close()
    assert seen.offsets == list(range(1, newest + 1))


async def test_a_restart_after_unsaved_events_replays_them(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    _, listener_name, last, running = await lazily_saving(sim, client, redis_client, redis_keys, 3)
    running.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running.task
    # What a process killed before its next save leaves: the save after the first event.
    await redis_client.set(redis_keys.listener_offset(listener_name), 1)
    replayed = Collector()
    again = Running(new_listener(client, redis_client, redis_keys, replayed, listener_name))
    await eventually(lambda: len(replayed.offsets) == last - 1, "unsaved events replayed")
    await again.close()
    assert replayed.offsets == list(range(2, last + 1))


def poison_cases(order: dict[str, object]) -> list[dict[str, object]]:
    """Admin bodies for events that must be set aside, each built from a real order's JSON."""

    def event(**order_changes: object) -> dict[str, object]:
        return {
            "event": {"event": "fill", "execution_id": "x", "order": {**order, **order_changes}}
        }

    return [
        event(filled_qty="NaN"),
        event(filled_qty="2"),  # above the order's qty of 1
        event(filled_qty="-1"),
        event(filled_notional="-190"),
        event(filled_notional="Infinity"),
        event(status="filled_twice"),
        event(id=""),
        {"raw": "{not json"},
        {"event": {"event": "fill", "order": "not an order"}},
    ]


async def test_poison_events_are_dead_lettered_and_later_events_delivered(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    seen, listener_name = Collector(), name()
    first = await trade(sim, client, 1)
    order_json = (await stored_events(sim))[-1]["order"]
    running = Running(new_listener(client, redis_client, redis_keys, seen, listener_name))
    await eventually(lambda: len(seen.offsets) == first, "connected and live")
    poisons = [
        (await sim.admin("POST", "/admin/events", c))["offset"] for c in poison_cases(order_json)
    ]
    last = await trade(sim, client, 1)
    await eventually(lambda: len(seen.offsets) == last - len(poisons), "the events after")
    await running.close()

    good = [o for o in range(1, last + 1) if o not in poisons]
    assert seen.offsets == good
    assert running.listener.dead_lettered == len(poisons)
    assert await redis_client.get(redis_keys.listener_offset(listener_name)) == str(last)
    letters = await running.listener.dead_letters.recent()
    assert [letter.offset for letter in letters] == poisons[::-1]  # newest first
    assert all(letter.reason and letter.raw for letter in letters)
    assert "NaN" in letters[-1].raw and "filled_qty" in letters[-1].reason
    assert letters[1].raw == "{not json"


async def test_a_poison_event_in_a_backfilled_gap_is_dead_lettered(
    sim: BrokerSim, client: BrokerClient, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    seen, listener_name = Collector(), name()
    first = await trade(sim, client, 1)
    order_json = (await stored_events(sim))[-1]["order"]
    running = Running(new_listener(client, redis_client, redis_keys, seen, listener_name))
    await eventually(lambda: len(seen.offsets) == first, "the first order")
    # Dropped on the live stream: the poison and an order's events reach the listener only
    # through the gap fill, which the raw garbage after them (live, with its id) sets off.
    await sim.admin("PUT", "/admin/faults", {"seed": 1, "event_drop_prob": 1.0})
    poison = (await sim.admin("POST", "/admin/events", poison_cases(order_json)[0]))["offset"]
    await trade(sim, client, 1)
    await sim.admin("PUT", "/admin/faults", {"event_drop_prob": 0.0})
    garbage = (await sim.admin("POST", "/admin/events", {"raw": "garbage"}))["offset"]
    final = await trade(sim, client, 1)
    await eventually(lambda: len(seen.offsets) == final - 2, "all the good events")
    await running.close()
    assert seen.offsets == [o for o in range(1, final + 1) if o not in (poison, garbage)]
    assert running.listener.backfilled >= 3
    letters = await running.listener.dead_letters.recent()
    assert (letters[0].offset, letters[0].raw) == (garbage, "garbage")
    assert [letter.offset for letter in letters] == [garbage, poison]
