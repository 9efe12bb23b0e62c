"""The saga against the broker key's rate limit, with and without the limiter, side by side.

    .venv/bin/python -m bench.ratelimit [--orders 200] [--limit 40] [--window-s 10] [--skip-before]

The simulator enforces Alpaca's kind of limit (``--limit`` trading requests per ``--window-s``
window per key; Alpaca's is 200 a minute, 3.33/s: the default here is the same order, 4/s, in
10 s windows so that a run spans several windows in about a minute). N market buys, each on its
own funded account, are placed at once through the product's OrderClient, far faster than the
limit allows (the saga settles about 13 orders a second unlimited), and each is awaited until its
workflow returns. Three runs, each on a fresh dev server:

- **the limiter (the product)**: the broker and asks queues' Temporal rate limits at the
  product's defaults scaled to this limit (defaults are for Alpaca's 200 a minute), and the
  client backing off on the broker's headers; the task queues in one partition each, as the
  deployment sets them (and once more in the dev server's default four, to show why);
- **back-off only**: no queue rate limit; the client still backs off on the headers;
- **retries only (the client before)**: neither; a 429 is a plain retryable error, retried on
  the retry policy's intervals (bench-only: the header reading is switched off).

Reported: orders settled per second, the broker requests the simulator let through per second
and their ratio to the allowed rate (requests, not orders, are what the limit counts: a saga
order makes two, its submit and the ask that confirms the fill the listener signalled, and more
when a submit has to be looked up), over the whole run and in steady state (between 10% and 90%
of the run's requests: the two rate-limited queues work in series, so the run starts with
submits alone and ends with asks alone), the 429s the simulator answered, total time,
place-to-settled latency, and how the orders ended. The simulator's counters
(``GET /admin/rate_limit``) are the source of the counts. The saga runs with the product's
timing (8 submit attempts, 180 s absent grace), not the tests' short one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

from bench import cpu
from bench.common import (
    Infra,
    finish,
    fresh_server,
    infra,
    print_header,
    progress,
    publish,
    ratio,
    table,
)
from bench.stack import bench_settings, saga_workers
from bench.throughput import run_saga
from core.settings import SagaSettings, Settings

NAME = "ratelimit"
LIMITED = "the limiter: queue rate + header back-off (product)"
LIMITED_4 = "the limiter, task queues in 4 partitions (the server's default)"
BACKOFF = "header back-off only, no queue rate"
BEFORE = "retries only (the client before)"
ALPACA_PER_S = 200 / 60
# The product's saga timing throughout (not the tests' short one): a rate-limited submit attempt
# waits for the window's reset, and the submit's attempts (total // per-attempt timeout: 8) and
# the absent grace (180 s) are what decide whether a submit that kept meeting 429s is given up.
PRODUCT_TIMING: dict[str, Any] = {"saga": SagaSettings().model_dump()}
# Temporal applies a task queue's rate per partition (rate / partitions each), and a partition
# whose tasks run out leaves its share unused: at a few activities a second, one partition keeps
# the rate. The deployment sets it for the broker queues (docs/DEPLOY.md); here, every queue.
ONE_PARTITION = [
    "--dynamic-config-value",
    "matching.numTaskqueueReadPartitions=1",
    "--dynamic-config-value",
    "matching.numTaskqueueWritePartitions=1",
]


def product_rates(allowed_per_s: float) -> dict[str, float]:
    """The product's default queue rates (set for Alpaca's 200 a minute), scaled to this limit."""
    scale = allowed_per_s / ALPACA_PER_S
    names = ("broker_max_activities_per_second", "broker_asks_max_activities_per_second")
    return {name: round(Settings.model_fields[name].default * scale, 3) for name in names}


@contextlib.contextmanager
def headers_ignored(on: bool) -> Iterator[None]:
    """The client as it was: a 429 says nothing about when to retry, and nothing is held back."""
    if not on:
        yield
        return
    with mock.patch("core.broker_client._rate_limit_wait", return_value=None):
        yield


async def sim_counts(inf: Infra) -> tuple[int, int]:
    got = await inf.sim.admin("GET", "/admin/rate_limit")
    return int(got["allowed"]), int(got["refused"])


async def sample_counts(inf: Infra, into: list[tuple[float, int]], every_s: float = 0.5) -> None:
    """(time, requests let through so far), every ``every_s``, until cancelled."""
    while True:
        into.append((time.monotonic(), (await sim_counts(inf))[0]))
        await asyncio.sleep(every_s)


def steady_rate(samples: list[tuple[float, int]], low: float = 0.1, high: float = 0.9) -> float:
    """Requests per second between the samples where the run had made ``low`` and ``high`` of
    its requests: the rate once the pipeline is full (the saga's submits and asks are two rate
    limited queues in series, so the first orders' asks and the last orders' asks run with the
    other queue idle: a ramp and a drain that the whole-run rate includes)."""
    first, total = samples[0][1], samples[-1][1] - samples[0][1]
    if total <= 0:
        return float("nan")
    t_low, n_low = next((t, n) for t, n in samples if n - first >= low * total)
    t_high, n_high = next((t, n) for t, n in samples if n - first >= high * total)
    return (n_high - n_low) / (t_high - t_low) if t_high > t_low else float("nan")


async def measure(
    inf: Infra,
    label: str,
    n: int,
    limit: dict[str, int],
    rates: dict[str, float],
    before: bool,
    server_args: list[str],
) -> dict[str, Any]:
    allowed_per_s = limit["limit"] / limit["window_s"]
    async with fresh_server(inf, server_args):
        progress(f"{label}: {n} orders, queue rates {rates}")
        settings = bench_settings(inf, **{**PRODUCT_TIMING, **rates})
        await inf.sim.admin("PUT", "/admin/rate_limit", limit)  # fresh windows
        with headers_ignored(before):
            async with saga_workers(inf, settings) as run:
                allowed0, refused0 = await sim_counts(inf)  # funding the accounts asks no broker
                samples: list[tuple[float, int]] = []
                sampler = asyncio.create_task(sample_counts(inf, samples))
                result = await run_saga(run, n, cpu.Meter())  # timed from the first placement
                sampler.cancel()
                allowed1, refused1 = await sim_counts(inf)
                samples.append((time.monotonic(), allowed1))
    requests = allowed1 - allowed0
    seconds = result["seconds"]
    settled = result["statuses"].get("SETTLED", 0)
    result.update(
        queue_rates=rates,
        settled=settled,
        requests=requests,
        requests_per_order=ratio(requests, n),
        requests_per_s=round(requests / seconds, 3),
        per_s=round(settled / seconds, 3),
        ratio_to_allowed=ratio(requests / seconds, allowed_per_s),
        steady_requests_per_s=round(steady_rate(samples), 3),
        steady_ratio_to_allowed=ratio(steady_rate(samples), allowed_per_s),
        rate_limited_429=refused1 - refused0,
    )
    progress(
        f"{label}: {result['requests_per_s']} requests/s = {result['ratio_to_allowed']} of the"
        f" allowed {allowed_per_s:.3f}/s ({result['steady_ratio_to_allowed']} in steady state),"
        f" {result['rate_limited_429']} 429s, {seconds} s,"
        f" statuses {result['statuses']}"
    )
    return result


async def main(n: int, limit: int, window_s: int, skip_before: bool) -> dict[str, Any]:
    info = print_header(NAME)
    allowed_per_s = limit / window_s
    sim_limit = {"limit": limit, "market_data_limit": 0, "window_s": window_s}
    off = {"broker_max_activities_per_second": 0.0, "broker_asks_max_activities_per_second": 0.0}
    limiter = product_rates(allowed_per_s)
    plan = [
        (LIMITED, limiter, False, ONE_PARTITION),
        (LIMITED_4, limiter, False, []),
        (BACKOFF, off, False, ONE_PARTITION),
    ]
    if not skip_before:
        plan.append((BEFORE, off, True, ONE_PARTITION))
    rows: dict[str, dict[str, Any]] = {}
    async with infra() as inf:
        for label, rates, before, server_args in plan:
            rows[label] = await measure(inf, label, n, sim_limit, rates, before, server_args)
    print(
        table(
            [
                "run",
                "orders/s",
                "requests/s",
                "/ allowed",
                "steady / allowed",
                "429s",
                "req/order",
                "s",
                "p50 ms",
                "p99 ms",
                "statuses",
            ],
            [
                [
                    k,
                    r["per_s"],
                    r["requests_per_s"],
                    r["ratio_to_allowed"],
                    r["steady_ratio_to_allowed"],
                    r["rate_limited_429"],
                    r["requests_per_order"],
                    r["seconds"],
                    r["p50_ms"],
                    r["p99_ms"],
                    " ".join(f"{st} {c}" for st, c in sorted(r["statuses"].items())),
                ]
                for k, r in rows.items()
            ],
        )
    )
    print(f"allowed: {limit} requests per {window_s} s = {allowed_per_s:.3f}/s per key")
    data = {"machine": info, "orders": n, "sim_limit": sim_limit, "results": rows}
    return publish(
        NAME,
        data,
        f"{n} orders against {limit} requests / {window_s} s",
        {
            k.replace(" (", "\n("): {"/ allowed rate": r["ratio_to_allowed"]}
            for k, r in rows.items()
        },
        "broker requests per second / allowed",
    )


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit", description=__doc__)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--limit", type=int, default=40, help="requests per window per key")
    parser.add_argument("--window-s", type=int, default=10, help="the window, seconds")
    parser.add_argument("--skip-before", action="store_true", help="skip the retries-only run")
    args = parser.parse_args()
    if args.orders < 1 or args.limit < 1 or not 1 <= args.window_s <= 3600:
        parser.error("--orders and --limit at least 1, --window-s 1 to 3600")
    asyncio.run(main(args.orders, args.limit, args.window_s, args.skip_before))
    finish(0)


if __name__ == "__main__":
    cli()
