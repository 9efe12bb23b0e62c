"""Hot account: 200 concurrent buys on one account versus 200 on 200 accounts, in one run.

    .venv/bin/python -m bench.contention [--orders 200]

Every order goes through the full saga (lock, reserve, submit, fills, void). On one account the
lock serialises the reserves and the posts and voids of the same balance row race on its version
(compare-and-set, rerun on conflict). Reported for each case: orders accepted and settled per
second, the ratio hot/spread, CAS conflicts retried (counted by a wrapper around the product's
ledger transaction), lock waits (acquires that found the lock busy, and how long they waited),
and the final ledger check.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from activities.ledger import check_ledger
from bench.common import (
    finish,
    infra,
    pct,
    print_header,
    progress,
    publish,
    ratio,
    summary_ms,
    table,
)
from bench.stack import Running, bench_settings, funded_accounts, saga_workers

NAME = "contention"
TIMING: dict[str, Any] = {"saga": {"fill_poll_interval_s": 5.0, "submit_start_to_close_s": 15.0}}


async def run_case(run: Running, accounts: list[str]) -> dict[str, Any]:
    accepted_at: list[float] = []
    settled_at: list[float] = []
    latencies: list[float] = []
    statuses: dict[str, int] = {}

    async def one(account_id: str) -> None:
        t = time.monotonic()
        placed = await run.orders.place_order(
            account_id=account_id, symbol="AAPL", side="buy", qty="1", order_id=uuid.uuid4().hex
        )
        accepted_at.append(time.monotonic())
        final = await run.orders.wait(account_id, placed.order_id, timeout_s=900)
        settled_at.append(time.monotonic())
        latencies.append(settled_at[-1] - t)
        statuses[final.status.value] = statuses.get(final.status.value, 0) + 1

    c0 = run.counters
    before = (c0.cas_conflicts_retried, c0.lock_waited, c0.lock_busy_attempts, len(c0.lock_wait_s))
    t0 = time.monotonic()
    await asyncio.gather(*(one(a) for a in accounts))
    n = len(accounts)
    waits = c0.lock_wait_s[before[3] :]
    report = await check_ledger(run.pool)
    return {
        "orders": n,
        "accounts": len(set(accounts)),
        "accepted_per_s": round(n / (max(accepted_at) - t0), 2),
        "settled_per_s": round(n / (max(settled_at) - t0), 2),
        "statuses": statuses,
        "place_to_settled": summary_ms(latencies),
        "cas_conflicts_retried": c0.cas_conflicts_retried - before[0],
        "lock_waits": c0.lock_waited - before[1],
        "lock_busy_attempts": c0.lock_busy_attempts - before[2],
        "lock_wait_p50_ms": round(pct(waits, 50) * 1000, 1) if waits else 0.0,
        "lock_wait_p99_ms": round(pct(waits, 99) * 1000, 1) if waits else 0.0,
        "ledger_check_ok": report.ok,
        "ledger_violations": report.violations(),
    }


HEADERS = ["case", "accepted/s", "settled/s", "p50 ms", "p99 ms", "CAS retried", "lock waits"]
HEADERS += ["lock wait p99 ms", "ledger ok"]


def row(label: str, c: dict[str, Any]) -> list[Any]:
    lat = c["place_to_settled"]
    return [
        label,
        c["accepted_per_s"],
        c["settled_per_s"],
        lat["p50_ms"],
        lat["p99_ms"],
        c["cas_conflicts_retried"],
        c["lock_waits"],
        c["lock_wait_p99_ms"],
        c["ledger_check_ok"],
    ]


async def main(n: int) -> dict[str, Any]:
    info = print_header(NAME)
    cases: dict[str, Any] = {}
    async with infra() as inf:
        settings = bench_settings(inf, **TIMING)
        async with saga_workers(inf, settings) as run:
            progress("warm-up: 5 orders")
            await run_case(run, await funded_accounts(run.orders, 5, tag="warm"))
            progress(f"spread: {n} buys on {n} accounts")
            cases[f"{n} accounts"] = await run_case(run, await funded_accounts(run.orders, n))
            progress(f"hot: {n} buys on one account")
            [hot] = await funded_accounts(run.orders, 1, usd="10000000", tag="hot")
            cases["1 account (hot)"] = await run_case(run, [hot] * n)
    spread, hot = cases[f"{n} accounts"], cases["1 account (hot)"]
    ratios = {
        "accepted_per_s hot/spread": ratio(hot["accepted_per_s"], spread["accepted_per_s"]),
        "settled_per_s hot/spread": ratio(hot["settled_per_s"], spread["settled_per_s"]),
    }
    print(table(HEADERS, [row(k, c) for k, c in cases.items()]))
    for k, v in ratios.items():
        print(f"{k}: {v}")
    data = {"machine": info, "orders": n, "cases": cases, "ratios": ratios}
    return publish(
        NAME,
        data,
        f"{n} concurrent buys: one account vs {n} accounts",
        {
            k: {"accepted/s": c["accepted_per_s"], "settled/s": c["settled_per_s"]}
            for k, c in cases.items()
        },
        "orders per second",
    )


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.contention", description=__doc__)
    parser.add_argument("--orders", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(main(args.orders))
    finish(0)


if __name__ == "__main__":
    cli()
