"""The simulator's account and positions (GET /v2/account, /v2/positions, /v2/positions/{symbol})
follow its fills, in Alpaca's shapes, read through the project's broker client."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from brokersim.account import STARTING_CASH
from core.broker_client import BrokerClient
from core.settings import Settings
from tests.support.brokersim import BrokerSim, brokersim_fixture

pytestmark = pytest.mark.asyncio(loop_scope="session")

sim = brokersim_fixture(fill_model={"mode": "instant", "parts": 1, "auto": False, "walk": False})


async def test_cash_and_positions_follow_the_fills(sim: BrokerSim) -> None:
    settings = Settings(broker_url=sim.url)
    async with BrokerClient.from_settings(settings) as client:
        before = await client.get_account()
        assert before.cash == STARTING_CASH and before.status == "ACTIVE"
        assert await client.list_positions() == []
        for side, qty in (("buy", "3"), ("buy", "2"), ("sell", "1.5")):
            await client.submit_order("AAPL", Decimal(qty), side, client_order_id=uuid.uuid4().hex)
        await client.submit_order("MSFT", Decimal(1), "buy", client_order_id=uuid.uuid4().hex)
        # Not filled yet: nothing moved.
        assert (await client.get_account()).cash == STARTING_CASH
        await sim.admin("POST", "/admin/tick")
        orders = await client.list_orders(status="all")
        spent = sum(
            (o.filled_notional * (1 if o.side == "buy" else -1) for o in orders), Decimal(0)
        )
        account = await client.get_account()
        positions = {p.symbol: p for p in await client.list_positions()}
    assert account.cash == (STARTING_CASH - spent).quantize(Decimal("0.01"))
    assert {s: p.qty for s, p in positions.items()} == {"AAPL": Decimal("3.5"), "MSFT": 1}
    assert all(p.side == "long" for p in positions.values())
    aapl_cost = sum(
        (o.filled_notional * (1 if o.side == "buy" else -1) for o in orders if o.symbol == "AAPL"),
        Decimal(0),
    )
    assert positions["AAPL"].avg_entry_price == (aapl_cost / Decimal("3.5")).quantize(
        Decimal("0.0001")
    )


async def test_one_position_and_a_missing_one(sim: BrokerSim) -> None:
    async with BrokerClient.from_settings(Settings(broker_url=sim.url)) as client:
        await client.submit_order("AAPL", Decimal(2), "buy", client_order_id=uuid.uuid4().hex)
    await sim.admin("POST", "/admin/tick")
    status, body = await sim.request("GET", "/v2/positions/AAPL")
    assert status == 200 and body["symbol"] == "AAPL" and body["asset_class"] == "us_equity"
    assert body["qty"] == "2" and body["side"] == "long"
    status, body = await sim.request("GET", "/v2/positions/TSLA")
    assert (status, body) == (404, {"code": 40410000, "message": "position does not exist"})
