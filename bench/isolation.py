"""Isolation: the customer never waits for the broker.

    .venv/bin/python -m bench.isolation [--per-phase 30] [--interval 0.5] [--shared-slots 4]

Orders are placed at a steady pace (each on its own account) while the broker answers in 0 s,
then in 5 s, then hangs (simulator faults ``latency_ms`` and ``hang_prob``); every tick also
queries the status of the latest accepted order. A placement unanswered after 30 s is counted
at 30 s (``capped``), so a starved variant ends in bounded time. Reported: p50/p99 of
``place_order`` (call to return) and of the status query per phase, and their ratios to the
0 s phase. Two layouts in the same run: the product's (broker activities on their own queue
and worker; the customer's steps are local activities of the orders worker) and a bench-only
one where broker activities and the customer's steps, as ordinary activities, share the orders
worker's few activity slots (one queue).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

from bench.common import (
    finish,
    infra,
    print_header,
    progress,
    publish,
    ratio,
    summary_ms,
    table,
)
from bench.stack import Layout, Running, bench_settings, funded_accounts, saga_workers
from tests.support.saga import NO_FAULTS

NAME = "isolation"

# A place_order still unanswered after this long is counted at this value.
CAP_S = 30.0

PHASES: dict[str, dict[str, Any]] = {
    "broker 0 s": {},
    "broker 5 s": {"latency_ms": 5000},
    "broker hangs": {"hang_prob": 1.0},
}

# Product timing: a 5 s answer is an answer (not a timeout), a hang costs a full request timeout.
ISOLATION_TIMING: dict[str, Any] = {
    "broker_request_timeout_s": 10.0,
    "saga": {
        "submit_start_to_close_s": 15.0,
        "submit_schedule_to_close_s": 120.0,
        "fill_poll_interval_s": 5.0,
    },
}


async def run_phase(
    run: Running, accounts: list[str], interval: float, cap_s: float, placed: list[str]
) -> dict[str, Any]:
    """Place one order per tick and query the latest accepted one (``placed`` grows)."""
    place_s: list[float] = []
    query_s: list[float] = []
    capped = 0

    async def place(account_id: str) -> None:
        nonlocal capped
        t = time.monotonic()
        try:
            res = await asyncio.wait_for(
                run.orders.place_order(account_id=account_id, symbol="AAPL", side="buy", qty=1),
                cap_s,
            )
        except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
            # Cancelling the update's wait surfaces as the SDK's error rather than TimeoutError.
            # Starved: counted at the cap (a lower bound) so the phase ends in bounded time.
            capped += 1
            place_s.append(cap_s)
            return
        place_s.append(time.monotonic() - t)
        placed.append(f"{account_id}\n{res.order_id}")

    async def query(key: str) -> None:
        account_id, order_id = key.split("\n")
        t = time.monotonic()
        await run.orders.get_order(account_id, order_id)
        query_s.append(time.monotonic() - t)

    tasks = []
    for account_id in accounts:
        tasks.append(asyncio.create_task(place(account_id)))
        if placed:
            tasks.append(asyncio.create_task(query(placed[-1])))
        await asyncio.sleep(interval)
    await asyncio.gather(*tasks)
    return {"place": {**summary_ms(place_s), "capped": capped}, "query": summary_ms(query_s)}


async def measure_layout(
    inf: Any,
    layout: Layout,
    per_phase: int,
    interval: float,
    shared_slots: int,
    cap_s: float = CAP_S,
) -> dict[str, Any]:
    settings = bench_settings(inf, layout=layout, **ISOLATION_TIMING)
    results: dict[str, Any] = {}
    async with saga_workers(inf, settings, layout=layout, shared_slots=shared_slots) as run:
        accounts = await funded_accounts(run.orders, per_phase * len(PHASES) + 5, tag=layout)
        # Warm the worker (first workflow tasks import and cache) before anything is measured.
        placed: list[str] = []
        await run_phase(run, accounts[:5], interval, cap_s, placed)
        accounts = accounts[5:]
        for i, (phase, faults) in enumerate(PHASES.items()):
            await inf.sim.admin("PUT", "/admin/faults", {**NO_FAULTS, **faults})
            progress(f"{layout}: {phase}, {per_phase} orders")
            chunk = accounts[i * per_phase : (i + 1) * per_phase]
            results[phase] = await run_phase(run, chunk, interval, cap_s, placed)
            p = results[phase]["place"]
            progress(f"{layout}: {phase}: place p50 {p['p50_ms']} ms p99 {p['p99_ms']} ms")
        await inf.sim.admin("PUT", "/admin/faults", NO_FAULTS)
    base = results["broker 0 s"]
    for phase in PHASES:
        for what in ("place", "query"):
            r = results[phase][what]
            r["p50_ratio"] = ratio(r["p50_ms"], base[what]["p50_ms"])
            r["p99_ratio"] = ratio(r["p99_ms"], base[what]["p99_ms"])
    return results


def rows_of(label: str, results: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for phase, r in results.items():
        p, q = r["place"], r["query"]
        rows.append(
            [
                label,
                phase,
                p["p50_ms"],
                p["p99_ms"],
                p["p99_ratio"],
                q["p50_ms"],
                q["p99_ms"],
                q["p99_ratio"],
            ]
        )
    return rows


HEADERS = ["layout", "phase", "place p50", "place p99", "p99 ratio", "query p50", "query p99"]
HEADERS += ["q p99 ratio"]


async def main(per_phase: int, interval: float, shared_slots: int) -> dict[str, Any]:
    info = print_header(NAME)
    layouts: dict[str, Any] = {}
    async with infra() as inf:
        layouts["separate queues (product)"] = await measure_layout(
            inf, "separate", per_phase, interval, shared_slots
        )
        layouts[f"shared slots ({shared_slots}, bench-only)"] = await measure_layout(
            inf, "shared", per_phase, interval, shared_slots
        )
    rows = [row for label, res in layouts.items() for row in rows_of(label, res)]
    print(table(HEADERS, rows))
    data = {
        "machine": info,
        "per_phase": per_phase,
        "interval_s": interval,
        "shared_slots": shared_slots,
        "timing": ISOLATION_TIMING,
        "layouts": layouts,
    }
    return publish(
        NAME,
        data,
        "place_order p99 (ms) while the broker slows down",
        {
            phase: {label: res[phase]["place"]["p99_ms"] for label, res in layouts.items()}
            for phase in PHASES
        },
        "place_order p99 ms (log)",
        log=True,
    )


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.isolation", description=__doc__)
    parser.add_argument("--per-phase", type=int, default=30)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--shared-slots", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(main(args.per_phase, args.interval, args.shared_slots))
    finish(0)


if __name__ == "__main__":
    cli()
