"""The chaos harness reads the broker's whole order listing or says it could not: a listing cut
short would let "one broker order per order" and "fills match the broker" pass on part of it."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from chaos.harness import IncompleteListing, all_broker_orders
from core.broker_client import BrokerClient
from core.settings import Settings
from tests.support.brokersim import BrokerSim, brokersim  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_listing_cut_at_its_maximum_is_an_error_not_a_partial_view(
    brokersim: BrokerSim,  # noqa: F811
) -> None:
    settings = Settings(broker_url=brokersim.url)
    async with BrokerClient.from_settings(settings) as client:
        for _ in range(3):
            await client.submit_order("AAPL", Decimal(1), "buy", client_order_id=uuid.uuid4().hex)
    assert len(await all_broker_orders(settings, max_orders=10, page_size=2)) == 3
    with pytest.raises(IncompleteListing, match="stopped at 2 orders"):
        await all_broker_orders(settings, max_orders=2, page_size=2)
