"""The talk's three claims, as experiments, each beside its deliberately broken variant.

    .venv/bin/python -m bench.claims [--writers 8] [--updates 10] [--orders 40] [--skip-b]

(a) Lock alone is not enough. Writers update one balance under the product's Redis lock with a
    TTL shorter than a pause injected between taking the lock and writing. Lock alone (a blind
    read-pause-write, bench/broken.py) loses updates; lock + fencing token + compare-and-set (the
    product's Ledger.reserve, the reserve_funds activity's work, re-locking on a stale fence as the
    saga does) loses none. Lost updates = what the writers were told they applied minus what the
    balance shows.
(b) Threads: shared versus separate pools under a slow broker (bench.isolation, fewer orders).
(c) Idempotency. Submissions through a broker that executes and then drops the reply, retried
    until answered: with a fresh client_order_id per attempt (bench/broken.py) versus the
    product's BrokerActivities.submit_order (the order's own id). Duplicates = broker orders
    beyond the first per customer order.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import random
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.broker import BrokerActivities, SubmitOrderInput
from activities.ledger import (
    DepositInput,
    Ledger,
    OpenAccountInput,
    ReserveInput,
    get_balances,
    max_fence,
)
from activities.lock import AccountLock
from bench import isolation
from bench.broken import BlindLedger, submit_with_fresh_id
from bench.common import (
    REDIS_URL,
    bar_chart,
    finish,
    infra,
    print_header,
    progress,
    table,
    write_json,
)
from core import errors
from core.broker_client import BrokerClient, BrokerError
from core.keys import RedisKeys
from core.settings import Settings
from tests.support.brokersim import BrokerSim
from tests.support.saga import NO_FAULTS

NAME = "claims"
AMOUNT = Decimal("1.00")
START = Decimal("100000")
MAX_ATTEMPTS = 12


class Writers:
    """The writers' shared setup: one account, the product's lock, a seeded pause."""

    def __init__(self, pool: asyncpg.Pool, lock: AccountLock, cfg: dict[str, Any]) -> None:
        self.pool, self.lock, self.cfg = pool, lock, cfg
        self.rng = random.Random(cfg["seed"])
        self.applied = 0
        self.refused = 0

    async def pause(self) -> None:
        if self.rng.random() < self.cfg["pause_prob"]:
            await asyncio.sleep(self.cfg["pause_ms"] / 1000)

    async def locked(self, account_id: str, owner: str) -> int:
        got = await self.lock.acquire(account_id, owner, self.cfg["ttl_ms"], wait_ms=30_000)
        assert got is not None, "lock not acquired in 30 s"
        return got.fence


async def fresh_account(pool: asyncpg.Pool, tag: str) -> str:
    account_id = f"claim-{tag}-{uuid.uuid4().hex[:8]}"
    ledger = Ledger(pool)
    await ledger.open_account(OpenAccountInput(account_id=account_id))
    await ledger.deposit(
        DepositInput(
            account_id=account_id, amount=START, asset="USD", idempotency_key=f"{account_id}:in"
        )
    )
    return account_id


async def lock_alone(w: Writers, account_id: str, writer: int) -> None:
    blind = BlindLedger(w.pool)
    for i in range(w.cfg["updates"]):
        owner = f"{account_id}/{writer}-{i}"
        await w.locked(account_id, owner)
        try:
            await blind.reserve(account_id, "USD", AMOUNT, w.pause)
            w.applied += 1
        finally:
            await w.lock.release(account_id, owner)


async def lock_and_cas(w: Writers, account_id: str, writer: int) -> None:
    ledger = Ledger(w.pool)
    for i in range(w.cfg["updates"]):
        owner = f"{account_id}/{writer}-{i}"
        while True:
            fence = await w.locked(account_id, owner)
            try:
                await w.pause()
                await ledger.reserve(
                    ReserveInput(
                        account_id=account_id,
                        order_key=owner,
                        asset="USD",
                        amount=AMOUNT,
                        fence=fence,
                        idempotency_key=f"{owner}:reserve",
                        side="buy",
                        symbol="AAPL",
                    )
                )
                w.applied += 1
                break
            except ApplicationError as err:
                if err.type != errors.STALE_FENCE:
                    raise
                w.refused += 1  # the database refused a writer whose lock had expired
            finally:
                await w.lock.release(account_id, owner)


async def claim_a(database_url: str, keys: RedisKeys, cfg: dict[str, Any]) -> dict[str, Any]:
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=cfg["writers"] + 4)
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    lock = AccountLock(redis, keys, fence_floor=functools.partial(max_fence, pool))
    out: dict[str, Any] = {"config": cfg}
    try:
        for label, writer in (("lock alone", lock_alone), ("lock + CAS (product)", lock_and_cas)):
            progress(f"(a) {label}: {cfg['writers']} writers x {cfg['updates']} updates")
            account_id = await fresh_account(pool, "a")
            w = Writers(pool, lock, cfg)
            await asyncio.gather(*(writer(w, account_id, n) for n in range(cfg["writers"])))
            bal = (await get_balances(pool, account_id)).of("USD")
            moved = (START - bal.available) / AMOUNT
            out[label] = {
                "updates_applied": w.applied,
                "refused_stale_fence": w.refused,
                "balance_moves_seen": int(moved),
                "held_seen": str(bal.held),
                "lost_updates": w.applied - int(moved),
            }
    finally:
        await redis.aclose()
        await pool.close()
    return out


async def attempts(submit: Any) -> tuple[bool, int]:
    """Retry one submission until it is answered, as Temporal's retry policy would."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            await submit()
            return True, attempt
        except ApplicationError as err:
            if err.non_retryable:
                return False, attempt
        except BrokerError:
            pass
    return False, MAX_ATTEMPTS


async def claim_c(sim: BrokerSim, cfg: dict[str, Any]) -> dict[str, Any]:
    settings = Settings(broker_url=sim.url, broker_request_timeout_s=5.0)
    client = BrokerClient.from_settings(settings)
    acts = BrokerActivities(client)
    env = ActivityEnvironment()
    faults = {**NO_FAULTS, "drop_reply_prob": cfg["drop_reply_prob"], "seed": 5}
    run = uuid.uuid4().hex[:6]
    out: dict[str, Any] = {"config": cfg}
    try:
        variants = {
            "fresh id per attempt": lambda oid: submit_with_fresh_id(
                client, oid, "AAPL", Decimal(1)
            ),
            "order's own id (product)": lambda oid: env.run(
                acts.submit_order,
                SubmitOrderInput(client_order_id=oid, symbol="AAPL", qty=Decimal(1), side="buy"),
            ),
        }
        for n, (label, submit) in enumerate(variants.items()):
            progress(
                f"(c) {label}: {cfg['orders']} orders, drop_reply_prob {faults['drop_reply_prob']}"
            )
            ids = [f"c{n}-{run}-{i}" for i in range(cfg["orders"])]
            await sim.admin("PUT", "/admin/faults", faults)
            answered = await asyncio.gather(*(attempts(functools.partial(submit, o)) for o in ids))
            # The listing is a trading request too: count with the faults off.
            await sim.admin("PUT", "/admin/faults", NO_FAULTS)
            out[label] = await count_duplicates(sim, ids, answered)
    finally:
        await sim.admin("PUT", "/admin/faults", NO_FAULTS)
        await client.close()
    return out


async def count_duplicates(
    sim: BrokerSim, ids: list[str], answered: list[tuple[bool, int]]
) -> dict[str, Any]:
    listed = await sim.admin("GET", "/v2/orders?status=all&limit=500&direction=asc")
    per_order = dict.fromkeys(ids, 0)
    for o in listed:
        base = o["client_order_id"].split("~", 1)[0]
        if base in per_order:
            per_order[base] += 1
    return {
        "orders": len(ids),
        "answered": sum(ok for ok, _ in answered),
        "attempts": sum(n for _, n in answered),
        "broker_orders": sum(per_order.values()),
        "missing_at_broker": sum(1 for c in per_order.values() if c == 0),
        "duplicate_broker_orders": sum(max(c - 1, 0) for c in per_order.values()),
    }


async def main(cfg: dict[str, Any]) -> dict[str, Any]:
    info = print_header(NAME)
    data: dict[str, Any] = {"machine": info}
    async with infra() as inf:
        data["a_lock_vs_cas"] = await claim_a(inf.database_url, inf.keys, cfg["a"])
        data["c_idempotency"] = await claim_c(inf.sim, cfg["c"])
        if not cfg["skip_b"]:
            progress("(b) shared vs separate pools under a slow broker (bench.isolation)")
            b = cfg["b"]
            data["b_pools"] = {
                "separate queues (product)": await isolation.measure_layout(
                    inf, "separate", b["per_phase"], b["interval"], b["shared_slots"]
                ),
                "shared slots (bench-only)": await isolation.measure_layout(
                    inf, "shared", b["per_phase"], b["interval"], b["shared_slots"]
                ),
            }
    report(data)
    print(f"wrote {write_json(NAME, data)}")
    return data


def report(data: dict[str, Any]) -> None:
    a, c = data["a_lock_vs_cas"], data["c_idempotency"]
    a_rows = [
        [k, v["updates_applied"], v["refused_stale_fence"], v["lost_updates"]]
        for k, v in a.items()
        if k != "config"
    ]
    print("(a) lost updates, TTL {ttl_ms} ms < pause {pause_ms} ms".format(**a["config"]))
    print(table(["variant", "applied", "refused (stale fence)", "lost updates"], a_rows))
    c_rows = [
        [k, v["orders"], v["attempts"], v["broker_orders"], v["duplicate_broker_orders"]]
        for k, v in c.items()
        if k != "config"
    ]
    print("(c) duplicate broker orders, drop_reply_prob {drop_reply_prob}".format(**c["config"]))
    print(table(["variant", "orders", "attempts", "broker orders", "duplicates"], c_rows))
    groups: dict[str, dict[str, float]] = {
        "(a) lost updates": {
            "broken variant": a["lock alone"]["lost_updates"],
            "product": a["lock + CAS (product)"]["lost_updates"],
        },
        "(c) duplicate broker orders": {
            "broken variant": c["fresh id per attempt"]["duplicate_broker_orders"],
            "product": c["order's own id (product)"]["duplicate_broker_orders"],
        },
    }
    if "b_pools" in data:
        rows = [r for label, res in data["b_pools"].items() for r in isolation.rows_of(label, res)]
        print("(b) place_order / status query latency (ms) under a slow broker")
        print(table(isolation.HEADERS, rows))
        b = data["b_pools"]
        groups["(b) place p99 ratio, broker hangs"] = {
            "broken variant": b["shared slots (bench-only)"]["broker hangs"]["place"]["p99_ratio"],
            "product": b["separate queues (product)"]["broker hangs"]["place"]["p99_ratio"],
        }
    chart = bar_chart(NAME, "the claims: broken variant vs product", groups, "count / ratio")
    print(f"wrote {chart}")


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.claims", description=__doc__)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--ttl-ms", type=int, default=50)
    parser.add_argument("--pause-ms", type=int, default=150)
    parser.add_argument("--pause-prob", type=float, default=0.3)
    parser.add_argument("--orders", type=int, default=40)
    parser.add_argument("--drop-reply-prob", type=float, default=0.5)
    parser.add_argument("--per-phase", type=int, default=20)
    parser.add_argument("--skip-b", action="store_true")
    args = parser.parse_args()
    # Each dropped reply is logged as a warning by the submit activity; the table counts them.
    logging.getLogger("temporalio.activity").setLevel(logging.ERROR)
    cfg = {
        "a": {
            "writers": args.writers,
            "updates": args.updates,
            "ttl_ms": args.ttl_ms,
            "pause_ms": args.pause_ms,
            "pause_prob": args.pause_prob,
            "seed": 3,
        },
        "b": {"per_phase": args.per_phase, "interval": 0.5, "shared_slots": 4},
        "c": {"orders": args.orders, "drop_reply_prob": args.drop_reply_prob},
        "skip_b": args.skip_b,
    }
    asyncio.run(main(cfg))
    finish(0)


if __name__ == "__main__":
    cli()
