"""The chaos workload: seeded accounts and orders, placed by several concurrent clients.

A few hot accounts take most orders (contention on one lock and one balance row); one poor account
exists to be refused for funds. Limit orders priced away from the market always get a cancel (or
are day orders the broker expires at the end), so every order can end.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from core.keys import RedisKeys
from core.redisconn import redis_client
from core.settings import Settings
from ordersaga.client import OrderClient
from workflows.models import OrderRequest
from workflows.saga_base import RELOCK_NOTE

SYMBOLS = ("AAPL", "MSFT", "TSLA", "NVDA", "AMZN")
START_CASH = Decimal("50000")
START_SHARES = Decimal("40")
POOR_CASH = Decimal("5")
# Won accounts (currency KRW, funded in whole won, about START_CASH at the FX feed's mid): their
# orders are paid in won through the FX desk (pay=KRW). WON_SHARE of the plan goes to them.
WON_ACCOUNTS = 3
START_WON = Decimal("70000000")
WON_SHARE = 0.15
# A short-lock-TTL window: every account lock taken lives at most this long (the workers own
# the saga's settings, so the fault shortens the locks in Redis, as a short TTL would).
SHORT_LOCK_TTL_MS = 20
# It also sends a burst of orders at once to one hot account: a holder's lock expires before its
# reserve commits while the next order waits for it, so reserves are refused for stale fences
# and the saga locks again.
BURST_ORDERS = 12
# Cut each lock key's expiry to ARGV[1] ms where it is later (or unset); the embedded Redis of
# the chaos stack predates PEXPIRE's LT option.
SHORTEN_LOCKS = """
for _, key in ipairs(KEYS) do
  local ttl = redis.call('PTTL', key)
  if ttl == -1 or ttl > tonumber(ARGV[1]) then redis.call('PEXPIRE', key, ARGV[1]) end
end
return 0
"""
BURST_STALLED = 3  # orders whose reserve is held up, so that another order's lock overtakes it
BURST_STALL_S = 1.5
# The session-level form of the ledger's per-order lock (store.LOCK_ORDER, a transaction's).
STALL_ORDER = "SELECT pg_advisory_lock(hashtextextended($1, 0))"


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
    # Orders accepted while the short-lock-TTL window was open (account id, order id): the
    # orders whose lock can expire under their reserve.
    short_ttl_orders: list[tuple[str, str]] = field(default_factory=list)
    burst_keys: list[str] = field(default_factory=list)  # the hot-account bursts' orders
    # Why orders were refused at once, by the reason's first words (numbers and ids cut off).
    refused_reasons: Counter[str] = field(default_factory=Counter)


def reason_kind(reason: str | None) -> str:
    """A refusal's reason without its particulars ("insufficient funds", "no price", ...)."""
    text = (reason or "none").split(":")[0]
    return " ".join(w for w in text.split()[:4] if not any(c.isdigit() for c in w))


def account_ids(seed: int, n: int) -> list[str]:
    return [f"chaos{seed}-a{i:03d}" for i in range(n)]


def poor_account(seed: int) -> str:
    return f"chaos{seed}-poor"


def won_account_ids(seed: int) -> list[str]:
    return [f"chaos{seed}-w{i:02d}" for i in range(WON_ACCOUNTS)]


async def open_accounts(oc: OrderClient, seed: int, n: int) -> list[str]:
    accounts = account_ids(seed, n)
    for acct in accounts:
        await oc.open_account(acct)
        await oc.deposit(acct, START_CASH)
        for symbol in SYMBOLS:
            await oc.deposit(acct, START_SHARES, asset=symbol)
    await oc.open_account(poor_account(seed))
    await oc.deposit(poor_account(seed), POOR_CASH)
    for acct in won_account_ids(seed):
        await oc.open_account(acct, currency="KRW")
        await oc.deposit(acct, START_WON, currency="KRW")
        for symbol in SYMBOLS:
            await oc.deposit(acct, START_SHARES, asset=symbol)
    return accounts


def plan_orders(
    seed: int, count: int, accounts: list[str], prices: dict[str, Decimal]
) -> list[PlannedOrder]:
    rng = random.Random(seed * 7919 + 1)
    hot = accounts[: max(1, len(accounts) // 5)]
    won = won_account_ids(seed)
    return [_plan_one(rng, seed, i, accounts, hot, won, prices) for i in range(count)]


def _plan_one(
    rng: random.Random,
    seed: int,
    i: int,
    accounts: list[str],
    hot: list[str],
    won: list[str],
    prices: dict[str, Decimal],
) -> PlannedOrder:
    symbol = rng.choice(SYMBOLS)
    roll = rng.random()
    pay = "USD"
    if roll < 0.05:
        acct, side = poor_account(seed), "buy"
    elif roll < 0.05 + WON_SHARE:
        acct, pay = rng.choice(won), "KRW"
        side = "buy" if rng.random() < 0.6 else "sell"
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
        pay=pay,  # type: ignore[arg-type]
        **fields,
    )
    return PlannedOrder(request=request, cancel_after_s=cancel_after, rests=rests)


class Clients:
    """Several concurrent clients placing the plan at a steady pace over ``duration_s``."""

    def __init__(self, oc: OrderClient, lock_short: Any, concurrency: int) -> None:
        self.oc = oc
        self._bursts = 0
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
        short = bool(self.lock_short())
        client = self.oc
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
            self.tally.refused_reasons[reason_kind(result.reason)] += 1
            return
        if short:
            self.tally.short_ttl_orders.append(
                (planned.request.account_id, planned.request.order_id)
            )
        if planned.cancel_after_s is not None:
            self._cancels.append(asyncio.create_task(self._cancel(planned)))

    async def burst(
        self, account_id: str, symbol: str, price: Decimal, pool: asyncpg.Pool | None = None
    ) -> None:
        """``BURST_ORDERS`` marketable limit buys placed at once on ``account_id``, while a
        short-lock-TTL window is open: the orders fight for one short-lived lock.

        With ``pool``, the first ``BURST_STALLED`` orders' reserves are stalled for
        ``BURST_STALL_S`` (the ledger's per-order lock is held from outside, as a slow ledger
        connection would hold them up): each holds the account lock when it stalls, the lock
        expires, the next order takes it with a greater fence and reserves first, and the
        stalled reserve is refused for a stale fence when it goes on.
        """
        self._bursts += 1
        limit = (price * Decimal("1.03")).quantize(Decimal("0.01"))
        requests = [
            OrderRequest(
                account_id=account_id,
                order_id=f"burst{self._bursts:03d}-{i:02d}",
                symbol=symbol,
                side="buy",
                qty=Decimal("0.25"),
                order_type="limit",
                limit_price=limit,
                time_in_force="day",
            )
            for i in range(BURST_ORDERS)
        ]
        self.tally.burst_keys += [r.key for r in requests]

        async def place(req: OrderRequest) -> None:
            try:
                result = await self.oc.place_order(req)
            except Exception as exc:
                self.tally.place_errors.append(f"{req.key}: {exc!r}")
                return
            if result.accepted:
                self.tally.short_ttl_orders.append((req.account_id, req.order_id))

        async with _stalled(pool, [r.key for r in requests[:BURST_STALLED]]):
            placing = asyncio.gather(*(place(r) for r in requests))
            await asyncio.sleep(BURST_STALL_S)
        await placing

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


async def stale_fence_relocks(oc: OrderClient, tally: ClientTally, concurrency: int = 16) -> int:
    """How many orders placed in a short-lock-TTL window had a reserve refused for a stale fence
    and locked again (their timeline says so): the re-lock path the fault exists to exercise."""
    gate = asyncio.Semaphore(concurrency)

    async def relocked(account_id: str, order_id: str) -> bool:
        async with gate:
            state = await oc.get_order(account_id, order_id)
        return any(e.event == RELOCK_NOTE for e in state.timeline)

    found = await asyncio.gather(*(relocked(a, o) for a, o in tally.short_ttl_orders))
    return sum(found)


@contextlib.asynccontextmanager
async def _stalled(pool: asyncpg.Pool | None, order_keys: list[str]) -> AsyncIterator[None]:
    """Hold the ledger's per-order lock of ``order_keys`` (activities/ledger/store.py,
    ``lock_order``: every reserve of the order takes it first) for the block; nothing without a
    pool or when Postgres cannot be reached (a restart fault may be under way)."""
    conn: asyncpg.Connection | None = None
    if pool is not None:
        try:
            conn = await pool.acquire(timeout=5)
            for key in order_keys:
                await conn.execute(STALL_ORDER, key)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            conn = None
    try:
        yield
    finally:
        if conn is not None:
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await conn.execute("SELECT pg_advisory_unlock_all()")
            await pool.release(conn)  # type: ignore[union-attr]


async def shorten_locks(
    settings: Settings, accounts: list[str], ttl_ms: int, window_s: float
) -> None:
    """For ``window_s``, no account lock of ``accounts`` lives longer than ``ttl_ms``: each
    lock's expiry is cut to ``ttl_ms`` within a few ms of being taken, as if the workers' lock
    TTL were that short."""
    keys = RedisKeys(settings.redis_prefix)
    client = redis_client(settings)
    shorten = client.register_script(SHORTEN_LOCKS)
    lock_keys = [keys.lock(account) for account in accounts]
    deadline = time.monotonic() + window_s
    try:
        while time.monotonic() < deadline:
            try:
                await shorten(keys=lock_keys, args=[ttl_ms])
            except (OSError, aioredis.RedisError):  # a Redis restart fault may be under way
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.003)
    finally:
        await client.aclose()
