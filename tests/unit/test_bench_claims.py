"""Smoke test of bench.claims with tiny numbers: each broken variant shows its failure, the
product's code shows none (real Postgres, Redis and the broker simulator)."""

from __future__ import annotations

import pytest

from bench.claims import claim_a, claim_c
from core.keys import RedisKeys
from tests.support.brokersim import BrokerSim, brokersim  # noqa: F401

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


async def test_lock_alone_loses_updates_and_cas_loses_none(
    database_url: str, redis_keys: RedisKeys, redis_client: object
) -> None:
    # Every writer pauses far past the lock's TTL and past the lock's longest backoff (200 ms), so
    # a waiting writer takes the expired lock and reads the same old balance.
    cfg = {"writers": 3, "updates": 3, "ttl_ms": 20, "pause_ms": 450, "pause_prob": 1.0, "seed": 1}

    out = await claim_a(database_url, redis_keys, cfg)

    blind, product = out["lock alone"], out["lock + CAS (product)"]
    assert blind["updates_applied"] == 9 and blind["lost_updates"] > 0
    assert product["updates_applied"] == 9
    assert product["lost_updates"] == 0 and product["balance_moves_seen"] == 9


async def test_fresh_ids_duplicate_broker_orders_and_the_orders_own_id_does_not(
    brokersim: BrokerSim,  # noqa: F811
) -> None:
    # Every reply is dropped after the order executes: every attempt is a retry of a done order.
    out = await claim_c(brokersim, {"orders": 3, "drop_reply_prob": 1.0})

    fresh, own = out["fresh id per attempt"], out["order's own id (product)"]
    assert fresh["duplicate_broker_orders"] == fresh["broker_orders"] - 3 > 0
    assert own["broker_orders"] == 3 and own["duplicate_broker_orders"] == 0
