"""A broker key rotation mid-order (issue 12, part 3), on the real stack: the broker refuses the
saga's keys while an order rests there; the order parks (NEEDS_ATTENTION, its hold kept) instead
of failing, keeps asking with a back-off, and once the broker takes the keys again it resumes by
itself and settles. No operator, no lost fill."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.db import create_pool
from core.keys import RedisKeys
from core.statuses import OrderStatus
from ordersaga.client import OrderClient
from tests.conftest import scratch_database
from tests.support.brokersim import BrokerSim
from tests.support.saga import saga_settings
from tests.support.workerproc import workers_running
from workflows.models import OrderState

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


@pytest.fixture
def keys_sim(tmp_path: Path) -> Iterator[BrokerSim]:
    sim = BrokerSim.start(
        tmp_path / "broker.db", fill_model={"mode": "instant", "parts": 1, "auto": False}
    )
    yield sim
    sim.stop()


async def test_an_order_lives_through_a_broker_key_rotation_and_settles(
    temporal_env: WorkflowEnvironment, redis_keys: RedisKeys, keys_sim: BrokerSim
) -> None:
    async with scratch_database("brokerkeys") as database_url:
        keys = RedisKeys(f"{redis_keys.prefix}keys-{uuid.uuid4().hex[:6]}:")
        settings = saga_settings(database_url, keys, keys_sim.url)
        pool = await create_pool(database_url, 1, 4)
        try:
            oc = OrderClient(temporal_env.client, pool, settings)
            acct = f"keys-{uuid.uuid4().hex[:8]}"
            await oc.open_account(acct)
            await oc.deposit(acct, "5000")
            latest = await keys_sim.admin("GET", "/v2/stocks/AAPL/quotes/latest")
            ask = Decimal(str(latest["quote"]["ap"]))
            limit = (ask * Decimal("1.1")).quantize(Decimal("0.01"))
            async with workers_running(temporal_env.client, settings):
                placed = await oc.place_order(
                    account_id=acct,
                    symbol="AAPL",
                    side="buy",
                    qty="1",
                    order_type="limit",
                    limit_price=limit,
                )
                assert placed.accepted, placed

                async def state() -> OrderState:
                    return await oc.get_order(acct, placed.order_id)

                for _ in range(100):
                    if (await state()).broker_order_id:
                        break
                    await asyncio.sleep(0.1)

                # The broker's keys change; the workers still send the old ones.
                await keys_sim.admin(
                    "PUT", "/admin/keys", {"key_id": "rotated", "secret_key": "rotated-secret"}
                )
                keys_sim.key_id, keys_sim.secret_key = "rotated", "rotated-secret"  # our admin's
                parked = await state()
                for _ in range(200):
                    parked = await state()
                    if parked.status == OrderStatus.NEEDS_ATTENTION:
                        break
                    await asyncio.sleep(0.1)
                assert parked.status == OrderStatus.NEEDS_ATTENTION, parked.status
                assert parked.reason and "at the broker" in parked.reason, parked.reason
                assert (await oc.balance(acct)).of("USD").held > 0  # the hold is kept

                # Rolled back (or the workers got the new keys): the broker answers again.
                await keys_sim.admin(
                    "PUT",
                    "/admin/keys",
                    {"key_id": settings.broker_key_id, "secret_key": settings.broker_secret_key},
                )
                keys_sim.key_id, keys_sim.secret_key = (
                    settings.broker_key_id,
                    settings.broker_secret_key,
                )
                await keys_sim.admin("POST", "/admin/tick")  # the order fills meanwhile
                final = await oc.wait(acct, placed.order_id, timeout_s=60)
            assert final.status == OrderStatus.SETTLED, (final.status, final.reason)
            notes = [e.event for e in final.timeline]
            assert "the broker answers again; resuming" in notes, notes
            bal = await oc.balance(acct)
            assert bal.of("AAPL").available == 1 and bal.of("USD").held == 0
            assert (await check_ledger(pool)).ok
        finally:
            await pool.close()
