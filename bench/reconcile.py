"""The reconciler at scale: one scheduled run with 1k, 10k and 100k broker orders already
reconciled and the same 500 new ones.

    .venv/bin/python -m bench.reconcile [--sizes 1000,10000,100000] [--new 500] [--repeat 3]
                                        [--full-sizes 1000,10000]

Each size gets a fresh stack (a dev server, a migrated database, a simulator) so no size pays for
another's leftovers. The history is *seeded*, not placed (100k orders through the HTTP API and
the saga would take hours):
- the simulator's state file (SQLite, ``brokersim/store.py``) is written before the simulator
  starts: the old orders filled, 10 s apart and ending a day ago, 20 of them still open (gtc
  limits far below the market: the bounded set every run re-lists), and the new ones filled,
  created in the last half hour (``brokersim.orders.Order.to_record``, as the simulator writes);
- the ledger's orders table gets a row per order of ours that agrees with the broker (SETTLED,
  the broker order id and the filled quantity; the open ones SUBMITTED), by COPY;
- the watermark is set to the newest old order and the open old orders are followed, as the run
  that reconciled them would have left them.
Of the new orders, 10 are late orders (no row: already filled, so their fills are booked to the
error account) and 5 disagree on the fill (a fill-mismatch break each).

The measured run is ``IncrementalReconcileWorkflow`` with the product's settings (overlap 300 s,
pages of 500) on the product's workers, in this process. Reported: its wall time, the peak of
Python memory allocated in this process during the run (``tracemalloc``: the workers, their
activities and the workflow code), the statements sent to Postgres (every asyncpg statement of
this process, counted while the run lasts: a round trip each), broker requests (list and get),
pages, workflow runs (continue-as-new), and the CPU seconds this process spent (the workers). Each
size runs ``--repeat`` times on fresh stacks, sizes interleaved; the run of median wall time is
reported. With ``--full-sizes``, a full sweep (``ordersaga reconcile --full``) is measured the same
way on those sizes: its memory must not grow with the history either.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
from asyncpg.connection import Connection

import tests.support.brokersim as simsupport
from activities.reconcile import WATERMARK
from bench.common import finish, infra, print_header, progress, ratio, table, write_json
from bench.cpu import Meter
from bench.stack import bench_settings, saga_workers
from brokersim.orders import Order
from brokersim.store import Store
from core.broker_client import BrokerClient
from tests.support.brokersim import BrokerSim
from workflows.reconcile import IncrementalReconcileWorkflow, ReconcileReport, SweepInput

NAME = "reconcile"
OPEN_OLD = 20  # old orders still open at the broker: followed, re-listed every run
LATE_NEW = 10  # new broker orders with no row of ours
MISMATCH_NEW = 5  # new orders whose row disagrees with the broker's fill
OLD_SPACING = timedelta(seconds=10)


def broker_order(n: int, key: str, created: datetime, *, open_: bool) -> Order:
    qty = Decimal(1)
    return Order(
        id=f"bench-{n:07d}",
        client_order_id=key,
        seq=n,
        symbol="AAPL",
        qty=qty,
        side="buy",
        order_type="limit",
        time_in_force="gtc" if open_ else "day",
        limit_price=Decimal("1.00") if open_ else Decimal("200.00"),
        status="new" if open_ else "filled",
        created_at=created,
        updated_at=created,
        expires_at=None,
        parts=1,
        filled_qty=Decimal(0) if open_ else qty,
        filled_notional=Decimal(0) if open_ else Decimal("190.00"),
        filled_at=None if open_ else created,
        matched_once=True,
    )


def plan(old: int, new: int, now: datetime) -> list[tuple[Order, str | None]]:
    """(broker order, our row's status or None for a late order); old first, then new."""
    out: list[tuple[Order, str | None]] = []
    first_old = now - timedelta(days=1) - OLD_SPACING * old
    for i in range(old):
        is_open = i >= old - OPEN_OLD
        o = broker_order(
            i + 1, f"acct-{i % 997}/old-{i}", first_old + OLD_SPACING * i, open_=is_open
        )
        out.append((o, "SUBMITTED" if is_open else "SETTLED"))
    for j in range(new):
        created = now - timedelta(minutes=30) + timedelta(seconds=3) * j
        o = broker_order(old + j + 1, f"acct-new/new-{j}", created, open_=False)
        out.append((o, None if j < LATE_NEW else "SETTLED"))
    return out


def seed_simulator(path: Path, orders: list[tuple[Order, str | None]]) -> None:
    Store(path).close()  # the simulator's schema
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO orders (id, client_order_id, seq, data) VALUES (?, ?, ?, ?)",
            [(o.id, o.client_order_id, o.seq, json.dumps(o.to_record())) for o, _ in orders],
        )


async def seed_ledger(dsn: str, orders: list[tuple[Order, str | None]], old: int) -> None:
    rows = []
    for n, (o, status) in enumerate(orders):
        if status is None:
            continue
        account, order_id = o.client_order_id.split("/", 1)
        filled = o.filled_qty
        if n >= old + LATE_NEW and n < old + LATE_NEW + MISMATCH_NEW:
            filled = Decimal("0.5")  # the ledger disagrees with the broker
        rows.append(
            (account, order_id, f"order/{o.client_order_id}", "AAPL", "buy", "limit",
             o.time_in_force, o.qty, o.limit_price, "h", status, o.id, filled,
             datetime.now(UTC), datetime.now(UTC))
        )  # fmt: skip
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "orders",
            records=rows,
            columns=[
                "account_id", "order_id", "workflow_id", "symbol", "side", "order_type",
                "time_in_force", "qty", "limit_price", "params_hash", "status",
                "broker_order_id", "filled_qty", "created_at", "updated_at",
            ],
        )  # fmt: skip
        newest_old = orders[old - 1][0].created_at
        await conn.execute(
            "INSERT INTO reconcile_watermarks (name, created_up_to) VALUES ($1, $2)",
            WATERMARK,
            newest_old,
        )
        await conn.executemany(
            "INSERT INTO reconcile_followed VALUES ($1, $2, true, $3)",
            [
                (o.id, o.client_order_id, newest_old)
                for o, status in orders[:old]
                if status == "SUBMITTED"
            ],
        )
        await conn.execute("ANALYZE")  # as a table that grew over time would be
    finally:
        await conn.close()


class Counted:
    """Statements sent by every asyncpg connection of this process while active."""

    def __init__(self) -> None:
        self.statements = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        real_execute, real_query = Connection._execute, Connection.execute
        counter = self

        async def _execute(self: Connection, *args: Any, **kwargs: Any) -> Any:
            counter.statements += 1
            return await real_execute(self, *args, **kwargs)

        async def execute(self: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            if not args:  # a simple query does not go through _execute
                counter.statements += 1
            return await real_query(self, query, *args, **kwargs)

        Connection._execute, Connection.execute = _execute, execute  # type: ignore[method-assign]
        try:
            yield
        finally:
            Connection._execute, Connection.execute = real_execute, real_query  # type: ignore[method-assign]


class CountingBroker:
    """Counts the reconciler's broker requests (list and get by id)."""

    def __init__(self) -> None:
        self.lists = 0
        self.gets = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        real_list, real_get = BrokerClient.list_orders, BrokerClient.get_order
        counter = self

        async def list_orders(self: BrokerClient, *args: Any, **kwargs: Any) -> Any:
            counter.lists += 1
            return await real_list(self, *args, **kwargs)

        async def get_order(self: BrokerClient, *args: Any, **kwargs: Any) -> Any:
            counter.gets += 1
            return await real_get(self, *args, **kwargs)

        BrokerClient.list_orders, BrokerClient.get_order = list_orders, get_order  # type: ignore[method-assign]
        try:
            yield
        finally:
            BrokerClient.list_orders, BrokerClient.get_order = real_list, real_get  # type: ignore[method-assign]


async def measure_run(inf: Any, settings: Any, full: bool) -> dict[str, Any]:
    db, broker = Counted(), CountingBroker()
    run_id = f"reconcile/bench/{uuid.uuid4().hex[:8]}"
    async with saga_workers(inf, settings, listener=False) as running:
        del running
        tracemalloc.start()
        meter = Meter()
        try:
            with db.active(), broker.active():
                meter.start()
                started = time.monotonic()
                report: ReconcileReport = await inf.env.client.execute_workflow(
                    IncrementalReconcileWorkflow.run,
                    SweepInput.from_settings(settings, full=full),
                    id=run_id,
                    task_queue=settings.orders_task_queue,
                )
                wall = time.monotonic() - started
                meter.stop()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    runs = [wf async for wf in inf.env.client.list_workflows(f"WorkflowId = '{run_id}'")]
    return {
        "wall_s": round(wall, 3),
        "peak_mib": round(peak / 2**20, 2),
        "db_statements": db.statements,
        "broker_lists": broker.lists,
        "broker_gets": broker.gets,
        "workflow_runs": len(runs),
        "cpu_s": meter.spent,
        "report": report.model_dump(mode="json"),
    }


async def one_size(old: int, new: int, full: bool) -> dict[str, Any]:
    now = datetime.now(UTC)
    orders = plan(old, new, now)
    async with infra(with_sim=False) as inf:
        state = inf.state_dir / "broker.db"
        t = time.monotonic()
        seed_simulator(state, orders)
        await seed_ledger(inf.database_url, orders, old)
        seeded = time.monotonic() - t
        inf.sim = BrokerSim.start(state, seed=11, fill_model={"auto": False})
        try:
            settings = bench_settings(inf)
            result = await measure_run(inf, settings, full)
        finally:
            inf.sim.stop()
    result.update(old=old, new=new, full=full, seed_s=round(seeded, 1))
    rep = result["report"]
    progress(
        f"{'full sweep' if full else 'run'} with {old:,} reconciled + {new} new: "
        f"{result['wall_s']:.2f} s, peak {result['peak_mib']} MiB, "
        f"{result['db_statements']} statements, checked {rep['checked']}, pages {rep['pages']}, "
        f"late {rep['late_orders']}, breaks {rep['breaks_recorded']}"
    )
    return result


def median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median wall time (its own figures, not a mix of runs)."""
    ordered = sorted(results, key=lambda r: r["wall_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["walls"] = [r["wall_s"] for r in results]
    return chosen


def cpu_of(r: dict[str, Any], group: str) -> float:
    return float(r["cpu_s"].get(group, 0.0))


def rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [
            f"{r['old']:,}",
            r["new"],
            r["wall_s"],
            " ".join(f"{w:.2f}" for w in r["walls"]),
            r["peak_mib"],
            r["db_statements"],
            f"{r['broker_lists']} / {r['broker_gets']}",
            r["report"]["checked"],
            r["report"]["pages"],
            r["workflow_runs"],
            cpu_of(r, "bench process (workers, client)"),
        ]
        for r in results
    ]


HEADERS = [
    "reconciled",
    "new",
    "wall s (median)",
    "each run",
    "peak MiB",
    "db statements",
    "broker list / get",
    "checked",
    "pages",
    "runs",
    "CPU s (this process)",
]


async def main(sizes: list[int], new: int, repeat: int, full_sizes: list[int]) -> dict[str, Any]:
    info = print_header(NAME)
    simsupport.START_TIMEOUT_S = 180.0  # loading 100k orders takes the simulator a while
    by_size: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for _ in range(repeat):  # sizes interleaved, so the machine's moods spread over all of them
        for n in sizes:
            by_size[n].append(await one_size(n, new, full=False))
    runs = [median_run(by_size[n]) for n in sizes]
    sweeps = [median_run([await one_size(n, new, full=True)]) for n in full_sizes]
    print("\nincremental run (the schedule's):")
    print(table(HEADERS, rows(runs)))
    if sweeps:
        print("\nfull sweep (`ordersaga reconcile --full`):")
        print(table(HEADERS, rows(sweeps)))
    first, last = runs[0], runs[-1]
    ratios = {
        "wall": ratio(last["wall_s"], first["wall_s"]),
        "peak_memory": ratio(last["peak_mib"], first["peak_mib"]),
        "db_statements": ratio(last["db_statements"], first["db_statements"]),
    }
    print(f"\n{last['old']:,} / {first['old']:,}: {ratios}  (goal: wall <= 1.2)")
    data = {
        "machine": info,
        "runs": runs,
        "all_runs": by_size,
        "full_sweeps": sweeps,
        "ratios": ratios,
    }
    print(f"wrote {write_json(NAME, data)}")
    return data


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.reconcile", description=__doc__)
    parser.add_argument("--sizes", type=_sizes, default=[1_000, 10_000, 100_000])
    parser.add_argument("--new", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="fresh stacks per size; median")
    parser.add_argument("--full-sizes", type=_sizes, default=[])
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.new, args.repeat, args.full_sizes))
    finish(0)
