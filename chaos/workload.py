"""The chaos workload: seeded accounts and orders, placed by several concurrent clients.

A few hot accounts take most orders (contention on one lock and one balance row); one poor account
exists to be refused for funds. Limit orders priced away from the market always get a cancel (or
are day orders the broker expires at the end), so every order can end.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from core.settings import Settings
from ordersaga.client import OrderClient
from workflows.models import OrderRequest

SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA", "AMZN")
START_CASH = Decimal("50000")
START_SHARES = Decimal("40")
POOR_CASH = Decimal("5")
SHORT_LOCK_TTL_MS = 50  # shorter than a reserve takes under load: holders expire mid-operation


@dataclass
class PlannedOrder:
    request: OrderRequest
    cancel_after_s: float | None  # None: never canceled by the client
    rests: bool  # priced away from the market: it only ends by cancel or expiry


@dataclass
class ClientTally:
    placed: int = 0
    refused: int = 0
    place_errors: list[str] = field(default_factory=list)
    cancels_sent: int = 0
    cancels_refused: int = 0


def account_ids(seed: int, n: int) -> list[str]:
    return [f"chaos{seed}-a{i:03d}" for i in range(n)]


def poor_account(seed: int) -> str:
    return f"chaos{seed}-poor"


async def open_accounts(oc: OrderClient, seed: int, n: int) -> list[str]:
    accounts = account_ids(seed, n)
    for acct in accounts:
        await oc.open_account(acct)
        await oc.deposit(acct, START_CASH)
        for symbol in SYMBOLS:
            await oc.deposit(acct, START_SHARES, asset=symbol)
    await oc.open_account(poor_account(seed))
    await oc.deposit(poor_account(seed), POOR_CASH)
    return accounts


def plan_orders(
    seed: int, count: int, accounts: list[str], prices: dict[str, Decimal]
) -> list[PlannedOrder]:
    rng = random.Random(seed * 7919 + 1)
    hot = accounts[: max(1, len(accounts) // 5)]
    return [_plan_one(rng, seed, i, accounts, hot, prices) for i in range(count)]


def _plan_one(
    rng: random.Random,
    seed: int,
    i: int,
    accounts: list[str],
    hot: list[str],
    prices: dict[str, Decimal],
) -> PlannedOrder:
    symbol = rng.choice(SYMBOLS)
    roll = rng.random()
    if roll < 0.05:
        acct, side = poor_account(seed), "buy"
    else:
        acct = rng.choice(hot) if rng.random() < 0.5 else rng.choice(accounts)
        side = "buy" if rng.random() < 0.6 else "sell"
    qty = rng.choice((Decimal(1), Decimal("0.5"), Decimal(2), Decimal("0.25"), Decimal(3)))
    kind = rng.random()
    fields: dict[str, Any] = {"order_type": "market", "time_in_force": "day"}
    rests = False
    if kind >= 0.65:
        price = prices[symbol]
        # Marketable limits fill; resting ones (20 % away from the market) end by cancel/expiry.
        rests = kind >= 0.85
        away = Decimal("0.8") if rests else Decimal("1.03")
        factor = away if side == "buy" else 2 - away
        fields = {
            "order_type": "limit",
            "limit_price": (price * factor).quantize(Decimal("0.01")),
            "time_in_force": rng.choice(("day", "gtc", "ioc")),
        }
    cancel_after = None
    if (rests and fields["time_in_force"] != "day") or rng.random() < 0.08:
        cancel_after = round(rng.uniform(0.2, 4.0), 2)
    request = OrderRequest(
        account_id=acct,
        order_id=f"o{i:05d}",
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        qty=qty,
        **fields,
    )
    return PlannedOrder(request=request, cancel_after_s=cancel_after, rests=rests)


class Clients:
    """Several concurrent clients placing the plan at a steady pace over ``duration_s``."""

    def __init__(
        self,
        oc: OrderClient,
        short_ttl: OrderClient,
        lock_short: Any,
        concurrency: int,
    ) -> None:
        self.oc = oc
        self.short_ttl = short_ttl
        self.lock_short = lock_short  # callable: is the short-lock-TTL window open?
        self.concurrency = concurrency
        self.tally = ClientTally()
        self.done = 0
        self._cancels: list[asyncio.Task[None]] = []

    async def run(self, plan: list[PlannedOrder], duration_s: float) -> None:
        queue: asyncio.Queue[tuple[int, PlannedOrder]] = asyncio.Queue()
        for item in enumerate(plan):
            queue.put_nowait(item)
        gap = duration_s / max(1, len(plan))
        started = time.monotonic()
        await asyncio.gather(*(self._client(queue, gap, started) for _ in range(self.concurrency)))
        await asyncio.gather(*self._cancels)

    async def _client(
        self, queue: asyncio.Queue[tuple[int, PlannedOrder]], gap: float, started: float
    ) -> None:
        while not queue.empty():
            index, planned = queue.get_nowait()
            wait = index * gap - (time.monotonic() - started)
            if wait > 0:
                await asyncio.sleep(wait)
            await self._place(planned)
            self.done += 1

    async def _place(self, planned: PlannedOrder) -> None:
        client = self.short_ttl if self.lock_short() else self.oc
        for attempt in range(20):
            try:
                result = await client.place_order(planned.request)
                break
            except Exception as exc:  # the same order id makes a retry safe
                if attempt == 19:
                    self.tally.place_errors.append(f"{planned.request.key}: {exc!r}")
                    return
                await asyncio.sleep(min(0.5 * (attempt + 1), 3))
        self.tally.placed += 1
        if not result.accepted:
            self.tally.refused += 1
            return
        if planned.cancel_after_s is not None:
            self._cancels.append(asyncio.create_task(self._cancel(planned)))

    async def _cancel(self, planned: PlannedOrder) -> None:
        assert planned.cancel_after_s is not None
        await asyncio.sleep(planned.cancel_after_s)
        req = planned.request
        for attempt in range(20):
            try:
                res = await self.oc.cancel_order(req.account_id, req.order_id)
            except Exception as exc:
                if "already" in str(exc):
                    self.tally.cancels_refused += 1  # it ended first: a fine answer
                    return
                if attempt == 19:
                    self.tally.place_errors.append(f"cancel {req.key}: {exc!r}")
                    return
                await asyncio.sleep(min(0.5 * (attempt + 1), 3))
                continue
            self.tally.cancels_sent += int(res.accepted)
            return


def short_ttl_settings(settings: Settings) -> Settings:
    saga = settings.saga.model_copy(update={"lock_ttl_ms": SHORT_LOCK_TTL_MS})
    return settings.model_copy(update={"saga": saga})
