"""The feed processes against the simulator: ``ordersaga marketdata`` as a user runs it (stopped
with SIGTERM), and the listener's ``serve()`` built from settings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from core.broker_client import TradeEvent
from core.keys import RedisKeys
from core.settings import Settings
from feeds import listener
from tests.conftest import APP_REDIS_URL
from tests.support.brokersim import BrokerSim, brokersim_fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

sim = brokersim_fixture(scope="module")


def start_cli(sim: BrokerSim, keys: RedisKeys, *args: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ORDERSAGA_BROKER_URL": sim.url,
        "ORDERSAGA_MARKET_DATA_URL": sim.url,
        "ORDERSAGA_BROKER_KEY_ID": sim.key_id,
        "ORDERSAGA_BROKER_SECRET_KEY": sim.secret_key,
        "ORDERSAGA_REDIS_URL": APP_REDIS_URL,
        "ORDERSAGA_REDIS_PREFIX": keys.prefix,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def eventually(check: Callable[[], Awaitable[bool]], proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if await check():
            return
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.05)
    proc.kill()
    output = proc.communicate()[0].decode(errors="replace")
    raise AssertionError(f"the process never did it; output:\n{output}")


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=10)[0].decode(errors="replace")
    return proc.returncode, output


async def test_marketdata_command_fills_redis(
    sim: BrokerSim, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    keys = RedisKeys(prefix=f"{redis_keys.prefix}cli-{uuid.uuid4().hex[:8]}:")
    proc = start_cli(sim, keys, "marketdata", "--symbols", "AAPL,msft", "--interval", "0.1")
    try:
        await eventually(lambda: _both(redis_client, keys), proc)
        raw = await redis_client.get(keys.quote("MSFT"))
        assert raw is not None
        record = json.loads(raw)
        assert Decimal(record["ask"]) > 0
    finally:
        code, output = stop(proc)
        await redis_client.delete(keys.quote("AAPL"), keys.quote("MSFT"))
    assert code == 0, output
    assert "stored 2 quotes" in output


async def _both(redis: aioredis.Redis, keys: RedisKeys) -> bool:
    return await redis.exists(keys.quote("AAPL"), keys.quote("MSFT")) == 2


async def test_listener_serve_from_settings_stores_its_offset(
    sim: BrokerSim, redis_client: aioredis.Redis, redis_keys: RedisKeys
) -> None:
    # In process: ``ordersaga broker-listener`` wires serve() to the saga's callback, which
    # needs Temporal; what is tested here is serve() built from settings alone.
    keys = RedisKeys(prefix=f"{redis_keys.prefix}cli-{uuid.uuid4().hex[:8]}:")
    status, _ = await sim.request(
        "POST",
        "/v2/orders",
        {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market", "time_in_force": "day"},
    )
    assert status == 200
    events = await sim.admin("GET", "/v2/events/trade_updates?stream=false")
    settings = Settings(
        broker_url=sim.url,
        broker_key_id=sim.key_id,
        broker_secret_key=sim.secret_key,
        redis_url=APP_REDIS_URL,
        redis_prefix=keys.prefix,
    )
    seen: list[int] = []

    async def on_event(event: TradeEvent) -> None:
        seen.append(event.offset)

    key, last = keys.listener_offset("cli"), events[-1]["offset"]
    stop = asyncio.Event()
    task = asyncio.create_task(listener.serve(settings, on_event=on_event, name="cli", stop=stop))
    try:
        for _ in range(300):
            if int(await redis_client.get(key) or 0) >= last:
                break
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    stored = int(await redis_client.get(key) or 0)
    await redis_client.delete(key)
    assert stored >= last
    # The offset is stored after the callback: a stop can fall between the two, never before.
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) in (stored, stored + 1)
