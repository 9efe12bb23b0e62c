"""``ordersaga broker dead-letters`` as a user runs it: lists what the listener set aside, refuses
to replay an event that is still bad, and replays a good one through the listener's delivery
(a signal, or a reconcile run when the order has no workflow) on a real Temporal dev server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from core.broker_client import BrokerClient, TradeEvent
from core.keys import RedisKeys
from feeds.listener import BrokerListener
from tests.conftest import APP_REDIS_URL
from tests.support.brokersim import BrokerSim, brokersim_fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

sim = brokersim_fixture(fill_model={"mode": "instant", "auto": False})


def cli(keys: RedisKeys, temporal: str, *args: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "ORDERSAGA_REDIS_URL": APP_REDIS_URL,
        "ORDERSAGA_REDIS_PREFIX": keys.prefix,
        "ORDERSAGA_TEMPORAL_ADDRESS": temporal,
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli", "broker", "dead-letters", *args],
        env=env,
        capture_output=True,
        timeout=60,
    )
    return done.returncode, (done.stdout + done.stderr).decode(errors="replace")


async def set_aside_one_poison(sim: BrokerSim, redis: aioredis.Redis, keys: RedisKeys) -> Any:
    """A real order's event, then a poison copy of it; a listener runs past both."""
    status, _ = await sim.request(
        "POST",
        "/v2/orders",
        {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market", "time_in_force": "day"},
    )
    assert status == 200
    stored = await sim.admin("GET", "/v2/events/trade_updates?stream=false")
    order = {**stored[-1]["order"], "filled_qty": "NaN"}
    poison = await sim.admin("POST", "/admin/events", {"event": {"event": "fill", "order": order}})
    seen: list[int] = []

    async def on_event(event: TradeEvent) -> None:
        seen.append(event.offset)

    async with BrokerClient(sim.url, key_id=sim.key_id, secret_key=sim.secret_key) as client:
        listener = BrokerListener(client, redis, keys, on_event, "default")
        stop = asyncio.Event()
        task = asyncio.create_task(listener.run(stop))
        for _ in range(250):
            if listener.offset >= poison["offset"]:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, 5)
    assert seen == [e["offset"] for e in stored]
    return stored[-1], poison["offset"]


async def test_list_refuse_and_replay(
    sim: BrokerSim,
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
    temporal_env: WorkflowEnvironment,
) -> None:
    keys = RedisKeys(prefix=f"{redis_keys.prefix}dl-{uuid.uuid4().hex[:8]}:")
    temporal = temporal_env.client.service_client.config.target_host
    good, poison_offset = await set_aside_one_poison(sim, redis_client, keys)
    try:
        code, out = cli(keys, temporal, "--json")
        assert code == 0, out
        listed = json.loads(out)
        assert [(d["offset"], d["listener"]) for d in listed] == [(poison_offset, "default")]
        assert "filled_qty" in listed[0]["reason"] and '"NaN"' in listed[0]["raw"]
        code, out = cli(keys, temporal)
        assert code == 0 and "OFFSET" in out and str(poison_offset) in out, out

        code, out = cli(keys, temporal, "--replay", str(poison_offset))
        assert code != 0 and "still refused" in out, out
        code, out = cli(keys, temporal, "--replay", "999999")
        assert code != 0 and "no dead letter" in out, out

        # An entry a good event would leave if an older rule had set it aside: replayed through
        # the listener's delivery. Its order has no workflow, so a reconcile run is started.
        entry = {
            "offset": good["offset"],
            "reason": "an older rule",
            "raw": json.dumps(good),
            "listener": "default",
            "at": 0.0,
        }
        await redis_client.lpush(keys.listener_dead_letters(), json.dumps(entry))
        code, out = cli(keys, temporal, "--replay", str(good["offset"]), "--json")
        assert code == 0, out
        cid = good["order"]["client_order_id"]
        assert json.loads(out) == {"replayed": good["offset"], "client_order_id": cid}
        handle = temporal_env.client.get_workflow_handle(f"reconcile/event/{cid}")
        assert (await handle.describe()).id == f"reconcile/event/{cid}"
        await handle.terminate()
        left = await redis_client.lrange(keys.listener_dead_letters(), 0, -1)
        assert [json.loads(e)["offset"] for e in left] == [poison_offset]
    finally:
        await redis_client.delete(keys.listener_dead_letters(), keys.listener_offset())
