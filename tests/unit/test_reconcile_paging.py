"""The reconciler's page cursor with orders that share a timestamp (a hand-written fake broker:
the simulator's clock rarely gives two orders one microsecond)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from activities.broker import BrokerActivities, ListBrokerOrdersPageInput
from core.broker_client import BrokerOrder

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def order(n: int, at: datetime) -> BrokerOrder:
    return BrokerOrder(
        id=f"b{n}", client_order_id=f"a/o{n}", symbol="AAPL", side="buy", qty=Decimal(1),
        status="filled", created_at=at, submitted_at=at,
    )  # fmt: skip


class FakeBroker:
    """Alpaca's listing: created strictly after ``after``, oldest first, at most ``limit``."""

    def __init__(self, orders: list[BrokerOrder]) -> None:
        self.orders = orders

    async def list_orders(
        self, status: str, limit: int, after: datetime | None, direction: str
    ) -> list[BrokerOrder]:
        assert direction == "asc"
        found = [o for o in self.orders if after is None or (o.created_at or T0) > after]
        return found[:limit]


def pages(orders: list[BrokerOrder], limit: int) -> tuple[list[str], bool]:
    acts = BrokerActivities(FakeBroker(orders))  # type: ignore[arg-type]
    req = ListBrokerOrdersPageInput(limit=limit)
    got: list[str] = []
    for _ in range(50):
        page = asyncio.run(acts.list_broker_orders_page(req))
        got += [o.id for o in page.orders]
        if page.last:
            return got, page.stalled
        req = req.model_copy(update={"after": page.next_after, "skip_ids": page.next_skip_ids})
    raise AssertionError("never ended")


def test_orders_sharing_the_boundary_time_are_listed_once_each() -> None:
    # pages of 3 that end between orders of one microsecond: 1 at T0, 2 at T1, 2 at T2, 1 at T3
    at = [T0 + timedelta(microseconds=us) for us in (0, 1, 1, 2, 2, 3)]
    orders = [order(i, t) for i, t in enumerate(at)]
    got, stalled = pages(orders, limit=3)
    assert got == [o.id for o in orders] and not stalled


def test_a_full_page_of_one_timestamp_is_reported_not_looped() -> None:
    same = T0 + timedelta(seconds=1)
    orders = [order(0, T0), *(order(i, same) for i in range(1, 6))]
    got, stalled = pages(orders, limit=3)
    assert stalled and len(got) == len(set(got))
