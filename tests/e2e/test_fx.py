"""Won accounts with an FX leg (issue 17, part 1) on the real stack: Temporal, the real workers,
Postgres, Redis and the simulator. The FX feed writes the firm's KRW/USD quote; a won account
buys AAPL (its won held = the dollar hold x the ask, rounded up; each fill converts through the
FX desk in its own journal entry; the rest refunded in won at the same rate), a stale FX quote
refuses the order and holds nothing, a sale paid out in won pays won at the bid, and a won-paid
order cannot be replaced.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from activities.ledger import check_ledger, fx_position
from core.errors import UserError
from core.fx import PAIR, fx_record, krw_cost, krw_proceeds
from core.keys import RedisKeys
from core.settings import SagaConfig
from core.statuses import OrderStatus
from feeds.fx import FxFeed
from tests.support.brokersim import BrokerSim, brokersim_fixture
from tests.support.e2e import Stack, e2e_stack
from tests.support.workerproc import workers_running
from workflows.pricing import hold_for

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

MID, SPREAD = Decimal("1385"), Decimal("0.01")
BID, ASK = Decimal("1378.07"), Decimal("1391.93")  # core.fx.firm_quote(MID, SPREAD)


class FixedRate:
    def mid(self) -> Decimal:
        return MID


sim = brokersim_fixture(
    scope="module",
    fill_model={"mode": "partial", "parts": 3, "tick_ms": 50, "auto": True, "walk": False},
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(
    temporal_env: WorkflowEnvironment, redis_keys: RedisKeys, sim: BrokerSim
) -> AsyncIterator[Stack]:
    client = temporal_env.client
    async with e2e_stack(client, redis_keys, sim, "fx") as st:
        async with workers_running(client, st.settings):
            yield st
        report = await check_ledger(st.pool)
        assert report.ok, report.violations()  # conservation per currency, entries balanced


async def fresh_rate(stack: Stack, redis: aioredis.Redis) -> None:
    """The FX feed's write, at a fixed mid (the firm's quote: BID / ASK)."""
    feed = FxFeed(
        redis, RedisKeys(stack.settings.redis_prefix), FixedRate(), spread=SPREAD, ttl_s=60
    )
    quote = await feed.update_once()
    assert (quote.bid, quote.ask) == (BID, ASK)


async def won_account(stack: Stack, won: str = "1000000") -> str:
    acct = f"krw-{uuid.uuid4().hex[:8]}"
    await stack.orders.open_account(acct, currency="KRW")
    await stack.orders.deposit(acct, won, currency="KRW")
    return acct


async def entries(pool: asyncpg.Pool, order_key: str, code: str) -> list[dict[str, Decimal]]:
    """Each journal entry of the order with ``code``: its lines' sum per asset."""
    rows = await pool.fetch(
        "SELECT e.id, l.asset, sum(l.amount) AS net, count(*) AS lines FROM journal_entries e"
        " JOIN journal_lines l ON l.entry_id = e.id WHERE e.order_id = $1 AND e.code = $2"
        " GROUP BY e.id, l.asset ORDER BY e.id, l.asset",
        order_key,
        code,
    )
    out: dict[int, dict[str, Decimal]] = {}
    for r in rows:
        out.setdefault(r["id"], {})[r["asset"]] = r["net"]
    return list(out.values())


async def test_a_won_account_buys_aapl_through_the_fx_desk(
    stack: Stack, redis_client: aioredis.Redis
) -> None:
    await fresh_rate(stack, redis_client)
    acct = await won_account(stack)
    before = await fx_position(stack.pool)
    req = stack.orders.build_request(
        account_id=acct,
        symbol="AAPL",
        side="buy",
        qty="3",
        order_type="limit",
        limit_price=await stack.price("1.02"),  # marketable: fills in parts
        pay="KRW",
    )
    placed = await stack.orders.place_order(req)
    usd_hold = hold_for(req, None, SagaConfig.from_settings(stack.settings)).amount
    assert placed.accepted, placed
    assert (placed.hold_asset, placed.held) == ("KRW", krw_cost(usd_hold, ASK))  # rounded up
    final = await stack.orders.wait(acct, req.order_id, timeout_s=60)
    assert final.status == OrderStatus.SETTLED, final
    assert (final.pay_asset, final.fx_rate, final.filled_qty) == ("KRW", ASK, Decimal(3))

    cost_usd = final.posted_cash + final.fees  # what the fills cost in dollars, fees included
    charged = krw_cost(cost_usd, ASK)  # of the cumulative figures: rounded up once
    bal = await stack.orders.balance(acct)
    assert bal.currency == "KRW"
    assert (bal.of("KRW").available, bal.of("KRW").held) == (Decimal(1_000_000) - charged, 0)
    assert bal.of("AAPL").available == 3 and bal.of("USD").available == 0

    posts = await entries(stack.pool, req.key, "post")
    assert posts, "no fill was booked"
    for net in posts:  # each fill converts in its own entry, each currency balanced
        assert set(net) == {"KRW", "USD", "AAPL"} and not any(net.values()), net
    assert len(await entries(stack.pool, req.key, "void")) == 1
    refunded = await stack.pool.fetchval(
        "SELECT l.amount FROM journal_lines l JOIN journal_entries e ON e.id = l.entry_id"
        " WHERE e.order_id = $1 AND e.code = 'void' AND l.bucket = 'available'",
        req.key,
    )
    assert refunded == placed.held - charged  # the rest, in won, at the reserve's rate

    after = await fx_position(stack.pool)
    assert after.krw - before.krw == charged and before.usd - after.usd == cost_usd
    assert after.average_rate is not None and BID <= after.average_rate <= ASK + 1


async def test_a_stale_fx_quote_refuses_the_order_and_holds_nothing(
    stack: Stack, redis_client: aioredis.Redis
) -> None:
    acct = await won_account(stack)
    now = time.time()
    old = fx_record(BID, ASK, datetime.now(UTC), now - 120, now - 60)  # expired a minute ago
    await redis_client.set(RedisKeys(stack.settings.redis_prefix).fx(PAIR), old)
    try:
        req = stack.limit_buy(acct, await stack.price("0.5"))
        req = req.model_copy(update={"pay": "KRW"})
        placed = await stack.orders.place_order(req)
    finally:
        await fresh_rate(stack, redis_client)
    assert not placed.accepted and placed.status == OrderStatus.REJECTED, placed
    assert placed.reason is not None and placed.reason.startswith("no FX rate: "), placed.reason
    assert "stale" in placed.reason
    bal = await stack.orders.balance(acct)
    assert (bal.of("KRW").available, bal.of("KRW").held) == (Decimal(1_000_000), 0)
    assert await stack.pool.fetchval("SELECT count(*) FROM holds WHERE order_id = $1", req.key) == 0
    row = await stack.orders.get_order(acct, req.order_id)
    assert row.status == OrderStatus.REJECTED


async def test_a_sale_paid_out_in_won_pays_the_proceeds_at_the_bid(
    stack: Stack, redis_client: aioredis.Redis
) -> None:
    await fresh_rate(stack, redis_client)
    acct = await won_account(stack, "1")
    await stack.orders.deposit(acct, "2", asset="AAPL")
    req = stack.orders.build_request(
        account_id=acct,
        symbol="AAPL",
        side="sell",
        qty="2",
        order_type="limit",
        limit_price=await stack.price("0.98"),
        pay="KRW",
    )
    placed = await stack.orders.place_order(req)
    assert placed.accepted and placed.hold_asset == "AAPL", placed
    final = await stack.orders.wait(acct, req.order_id, timeout_s=60)
    assert final.status == OrderStatus.SETTLED and final.fx_rate == BID, final
    paid = krw_proceeds(final.posted_cash - final.fees, BID)  # rounded down, once
    bal = await stack.orders.balance(acct)
    assert bal.of("KRW").available == 1 + paid and bal.of("USD").available == 0
    assert bal.of("AAPL").available == 0 and bal.of("AAPL").held == 0
    for net in await entries(stack.pool, req.key, "post"):
        assert set(net) == {"KRW", "USD", "AAPL"} and not any(net.values()), net


async def test_an_order_paid_in_won_is_not_replaced(
    stack: Stack, redis_client: aioredis.Redis
) -> None:
    await fresh_rate(stack, redis_client)
    acct = await won_account(stack)
    req = stack.limit_buy(acct, await stack.price("0.5")).model_copy(update={"pay": "KRW"})
    assert (await stack.orders.place_order(req)).accepted
    for _ in range(100):  # until the broker has it
        if (await stack.orders.get_order(acct, req.order_id)).broker_order_id:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(UserError, match="paid in KRW cannot be replaced"):
        await stack.orders.replace_order(acct, req.order_id, limit_price="1.00")
    await stack.orders.cancel_order(acct, req.order_id)
    final = await stack.orders.wait(acct, req.order_id, timeout_s=60)
    assert final.status == OrderStatus.CANCELED
    bal = await stack.orders.balance(acct)
    assert (bal.of("KRW").available, bal.of("KRW").held) == (Decimal(1_000_000), 0)
