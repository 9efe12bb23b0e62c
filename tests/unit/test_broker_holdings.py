"""The broker side of the positions reconciliation (``BrokerActivities.get_holdings``): one
consistent snapshot, cash and positions read around the in-flight orders, the read repeated while
a fill lands in between (a hand-written fake broker whose account moves on a script)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from activities.broker import BrokerActivities, GetHoldingsInput
from core.broker_client import BrokerAccount, BrokerOrder, BrokerPosition, OrderNotFound


class MovingBroker:
    """Its cash is ``cash[i]`` at the i-th account read (the last one after that)."""

    def __init__(self, cash: list[str]) -> None:
        self.cash = [Decimal(c) for c in cash]
        self.reads = 0
        self.order_reads = 0
        self.now = self.cash[0]

    async def get_account(self) -> BrokerAccount:
        self.now = self.cash[min(self.reads, len(self.cash) - 1)]
        self.reads += 1
        return BrokerAccount(id="a", status="ACTIVE", currency="USD", cash=self.now)

    async def list_positions(self) -> list[BrokerPosition]:  # as of the last account read
        return [BrokerPosition(symbol="AAPL", qty=Decimal(10_000_000) - self.now)]

    async def get_order(self, broker_order_id: str) -> BrokerOrder:
        self.order_reads += 1
        if broker_order_id == "gone":
            raise OrderNotFound(broker_order_id)
        return BrokerOrder(
            id=broker_order_id, client_order_id="a/o", symbol="AAPL", side="buy",
            qty=Decimal(1), status="filled",
        )  # fmt: skip


def holdings(broker: MovingBroker, ids: list[str], attempts: int = 3):  # type: ignore[no-untyped-def]
    acts = BrokerActivities(broker)  # type: ignore[arg-type]
    return asyncio.run(acts.get_holdings(GetHoldingsInput(broker_order_ids=ids, attempts=attempts)))


def test_an_account_that_stands_still_is_read_once_around_the_orders() -> None:
    broker = MovingBroker(["9999000"])
    got = holdings(broker, ["b1", "gone"])
    assert got.stable and got.cash == Decimal(9999000)
    assert got.positions == {"AAPL": Decimal(1000)}
    assert [o.id for o in got.orders] == ["b1"] and got.missing == ["gone"]
    assert (broker.reads, broker.order_reads) == (2, 2)


def test_a_fill_landing_during_the_read_repeats_it() -> None:
    broker = MovingBroker(["9999000", "9998000"])  # moved between the first two account reads
    got = holdings(broker, ["b1"])
    assert got.stable and got.cash == Decimal(9998000)
    assert broker.reads == 3 and broker.order_reads == 2


def test_an_account_that_keeps_moving_is_reported_unstable() -> None:
    broker = MovingBroker(["1", "2", "3", "4", "5"])
    got = holdings(broker, ["b1"], attempts=3)
    assert not got.stable
    assert broker.reads == 4 and broker.order_reads == 3
