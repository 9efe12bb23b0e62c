"""A worker killed inside the accept phase, between a step's commit and its workflow task's
completion: the retried task ends the order as the first decision said (issue 12, part 1).

The accept phase (quote, lock, reserve, unlock) runs as local activities inside one workflow
task. Their results reach Temporal's history only when that task completes; a worker that dies
first leaves the reserve (or the refusal's row) committed in Postgres and nothing in history, and
the retry, on another worker, quotes again. Here the first worker is the real one, SIGKILLed by
itself the instant the step commits (tests/e2e/dying_worker.py); the quote then goes stale,
stays, or moves before the second worker (in this process) takes the retried task.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger
from core.broker_client import Quote
from core.db import create_pool
from core.keys import RedisKeys
from core.settings import SagaSettings
from core.statuses import OrderStatus
from feeds.marketdata import quote_record
from ordersaga.client import OrderClient
from tests.conftest import scratch_database
from tests.support.brokersim import BrokerSim
from tests.support.saga import saga_settings
from tests.support.workerproc import run_until_it_dies, worker_env, workers_running
from workflows.pricing import hold_for

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

DEPOSIT = Decimal("5000")


@pytest.fixture(scope="module")
def accept_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSim]:
    sim = BrokerSim.start(
        tmp_path_factory.mktemp("accept-sim") / "broker.db",
        fill_model={"mode": "instant", "parts": 1, "auto": True},
    )
    yield sim
    sim.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def accept_db() -> AsyncIterator[tuple[str, asyncpg.Pool]]:
    async with scratch_database("acceptcrash") as database_url:
        pool = await create_pool(database_url, 1, 4)
        try:
            yield database_url, pool
        finally:
            await pool.close()


@dataclass
class Case:
    dies_after: str  # the step the first worker dies right after: reserve | refuse
    first: str  # the quote the first worker sees: fresh | stale
    then: str  # the quote the retried task sees: fresh | stale | moved


async def put_quote(redis: aioredis.Redis, keys: RedisKeys, ask: Decimal, *, stale: bool) -> None:
    quote = Quote(
        symbol="AAPL",
        bid=ask - Decimal("0.02"),
        ask=ask,
        bid_size=Decimal(1),
        ask_size=Decimal(1),
        timestamp=datetime.now(UTC),
    )
    received_at = time.time() - (3_600 if stale else 0)
    await redis.set(keys.quote("AAPL"), quote_record(quote, received_at=received_at))


async def crash_in_accept(
    temporal_env: WorkflowEnvironment,
    database_url: str,
    pool: asyncpg.Pool,
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
    sim: BrokerSim,
    tmp_path: Path,
    case: Case,
) -> dict[str, object]:
    """Place a market buy of 2 AAPL with a worker that dies after ``case.dies_after``; change
    the quote; let a second worker finish. What the customer, the ledger and the broker say."""
    keys = RedisKeys(f"{redis_keys.prefix}accept-{uuid.uuid4().hex[:6]}:")
    settings = saga_settings(database_url, keys, sim.url, workflow_task_timeout_s=1.0)
    oc = OrderClient(temporal_env.client, pool, settings)
    acct = f"accept-{uuid.uuid4().hex[:8]}"
    await oc.open_account(acct)
    await oc.deposit(acct, str(DEPOSIT))
    latest = await sim.admin("GET", "/v2/stocks/AAPL/quotes/latest")
    ask = Decimal(str(latest["quote"]["ap"])).quantize(Decimal("0.01"))
    moved = (ask * Decimal("1.04")).quantize(Decimal("0.01"))
    await put_quote(redis_client, keys, ask, stale=case.first == "stale")

    env = worker_env(settings, temporal_env.client.service_client.config.target_host)
    req = oc.build_request(account_id=acct, symbol="AAPL", side="buy", qty="2")
    placing = asyncio.create_task(oc.place_order(req))
    await run_until_it_dies(env, tmp_path / f"dying-{case.dies_after}.log", case.dies_after)
    assert not placing.done(), "the customer was answered before the task completed"

    # The world moves while no worker runs; then a second worker takes the retried task.
    if case.then != "fresh" or case.first != "fresh":
        price = moved if case.then == "moved" else ask
        await put_quote(redis_client, keys, price, stale=case.then == "stale")
    async with workers_running(temporal_env.client, settings):
        placed = await asyncio.wait_for(placing, 60)
        final = await oc.wait(acct, req.order_id, timeout_s=60)
    row = await oc._store.get(acct, req.order_id)
    at_broker = [
        o
        for o in await sim.admin("GET", "/v2/orders?status=all&limit=500")
        if o["client_order_id"] == req.key
    ]
    return {
        "placed": placed,
        "final": final,
        "row": row,
        "balance": await oc.balance(acct),
        "at_broker": at_broker,
        "hold_first": hold_for(req, ask, SagaSettings()),
        "hold_moved": hold_for(req, moved, SagaSettings()),
        "ledger": await check_ledger(pool),
        "req": req,
    }


def assert_refused_with_nothing_held(got: dict[str, object]) -> None:
    placed, final, row, bal = got["placed"], got["final"], got["row"], got["balance"]
    assert not placed.accepted and placed.reason.startswith("no price"), placed  # type: ignore[attr-defined]
    assert final.status == OrderStatus.REJECTED, final  # type: ignore[attr-defined]
    assert row is not None and row.status == "REJECTED", row  # type: ignore[attr-defined]
    assert row.reason.startswith("no price"), row  # type: ignore[attr-defined]
    assert bal.of("USD").held == 0 and bal.of("USD").available == DEPOSIT, bal  # type: ignore[attr-defined]
    assert got["at_broker"] == []
    assert got["ledger"].ok, got["ledger"]  # type: ignore[attr-defined]


def assert_settled_on_the_first_hold(got: dict[str, object]) -> None:
    placed, final, row, bal = got["placed"], got["final"], got["row"], got["balance"]
    first = got["hold_first"]
    assert placed.accepted, placed  # type: ignore[attr-defined]
    assert final.status == OrderStatus.SETTLED, final  # type: ignore[attr-defined]
    assert final.held == first.amount, (final.held, first)  # type: ignore[attr-defined]
    assert row is not None and row.status == "SETTLED" and row.held == first.amount, row  # type: ignore[attr-defined]
    broker = got["at_broker"]
    assert len(broker) == 1, broker  # type: ignore[arg-type]
    assert Decimal(broker[0]["limit_price"]) == first.limit_sent, broker  # type: ignore[index]
    assert bal.of("AAPL").available == 2 and bal.of("USD").held == 0, bal  # type: ignore[attr-defined]
    assert got["ledger"].ok, got["ledger"]  # type: ignore[attr-defined]


CASES = {
    "held, then the quote went stale": (Case("reserve", "fresh", "stale"), "refused"),
    "held, then the same quote": (Case("reserve", "fresh", "fresh"), "settled"),
    "held, then the quote moved": (Case("reserve", "fresh", "moved"), "settled"),
    "refused, then the quote came back": (Case("refuse", "stale", "fresh"), "refused"),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_a_worker_killed_in_the_accept_phase_leaves_the_first_decision_standing(
    name: str,
    temporal_env: WorkflowEnvironment,
    accept_db: tuple[str, asyncpg.Pool],
    redis_client: aioredis.Redis,
    redis_keys: RedisKeys,
    accept_sim: BrokerSim,
    tmp_path: Path,
) -> None:
    case, expected = CASES[name]
    database_url, pool = accept_db
    got = await crash_in_accept(
        temporal_env, database_url, pool, redis_client, redis_keys, accept_sim, tmp_path, case
    )
    if expected == "refused":
        assert_refused_with_nothing_held(got)
    else:
        assert_settled_on_the_first_hold(got)
    if case.then == "moved":
        assert got["hold_moved"].amount != got["hold_first"].amount  # type: ignore[attr-defined]
