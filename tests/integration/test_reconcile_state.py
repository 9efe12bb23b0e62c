"""The reconciler's state on the real Postgres (issue 15): a page classified in a constant number
of statements, breaks recorded once and updated when found again, the open orders followed, the
watermark that only moves forward, stuck and parked orders as breaks; and `ordersaga breaks` as a
user runs it (list, show, resolve, one-line refusals)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from activities.reconcile import (
    ClassifyPageInput,
    FollowedInput,
    OrderBreaksInput,
    ReconcileActivities,
    WatermarkInput,
    resolve_break,
)
from tests.conftest import scratch_database
from tests.integration.test_cli_ledger import cli
from tests.support.reconcile import row, view

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]

MARK = datetime(2026, 11, 1, tzinfo=UTC)


class CountingConnection(asyncpg.Connection):  # type: ignore[misc]
    """Counts the statements sent (each a round trip)."""

    statements = 0

    async def _execute(self, *args: Any, **kwargs: Any) -> Any:
        CountingConnection.statements += 1
        return await super()._execute(*args, **kwargs)

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args:  # a simple query (BEGIN, COMMIT) does not go through _execute
            CountingConnection.statements += 1
        return await super().execute(query, *args, **kwargs)


@pytest_asyncio.fixture(loop_scope="session")
async def state() -> AsyncIterator[tuple[str, asyncpg.Pool, str]]:
    async with scratch_database("recstate") as url:
        pool = await asyncpg.create_pool(
            url, min_size=1, max_size=4, connection_class=CountingConnection
        )
        assert pool is not None
        try:
            yield url, pool, f"acct-{uuid.uuid4().hex[:8]}"
        finally:
            await pool.close()


async def breaks_of(pool: asyncpg.Pool, key: str) -> list[asyncpg.Record]:
    return await pool.fetch("SELECT * FROM reconcile_breaks WHERE order_key = $1", key)


async def test_a_page_is_classified_in_a_constant_number_of_statements(
    state: tuple[str, asyncpg.Pool, str],
) -> None:
    _, pool, acct = state
    acts = ReconcileActivities(pool)
    counts = []
    for n in (5, 400):
        oids = [f"n{n}-{i}" for i in range(n)]
        for oid in oids:
            await row(pool, acct, oid, "SETTLED", "2")
        page = [view(acct, oid, "filled", "2", terminal=True) for oid in oids]
        page[0] = view(acct, oids[0], "filled", "1", terminal=True)  # a mismatch
        page.append(view(acct, f"ghost-{n}", "new", "0", terminal=False))  # late, open
        CountingConnection.statements = 0
        got = await acts.classify_page(ClassifyPageInput(broker_orders=page, mark=MARK))
        counts.append(CountingConnection.statements)
        assert got.checked == n + 1 and got.breaks == 2
        assert [bo.client_order_id for bo in got.late] == [f"{acct}/ghost-{n}"]
    # the rows, the breaks' upsert, follow, unfollow, BEGIN, COMMIT, and the pool's release reset
    assert counts[0] == counts[1] <= 7, counts


async def test_a_break_found_again_is_updated_not_duplicated(
    state: tuple[str, asyncpg.Pool, str],
) -> None:
    _, pool, acct = state
    acts = ReconcileActivities(pool)
    await row(pool, acct, "short", "SETTLED", "1")
    key = f"{acct}/short"
    page = [view(acct, "short", "filled", "2", terminal=True)]
    for _ in range(3):
        await acts.classify_page(ClassifyPageInput(broker_orders=page, mark=MARK))
    [found] = await breaks_of(pool, key)
    assert (found["kind"], found["times_seen"]) == ("fill_mismatch", 3)
    assert found["last_seen"] >= found["first_seen"]
    # resolved, then found again as it was: stays resolved, still one row
    await resolve_break(pool, found["id"], "ops-kim", "booked by hand")
    await acts.classify_page(ClassifyPageInput(broker_orders=page, mark=MARK))
    [again] = await breaks_of(pool, key)
    assert (again["times_seen"], again["resolved_by"]) == (4, "ops-kim")
    # found with another detail (the broker's fill moved): open again
    page = [view(acct, "short", "filled", "1.5", terminal=True)]
    await acts.classify_page(ClassifyPageInput(broker_orders=page, mark=MARK))
    [moved] = await breaks_of(pool, key)
    assert moved["resolved_at"] is None and moved["resolved_by"] is None
    assert moved["detail"] == "ledger filled 1.000000000, broker 1.5"


async def test_open_orders_are_followed_until_final(state: tuple[str, asyncpg.Pool, str]) -> None:
    _, pool, acct = state
    acts = ReconcileActivities(pool)
    await row(pool, acct, "rest", "SUBMITTED")
    await row(pool, acct, "gone", "SUBMITTED")
    first = [
        view(acct, "rest", "new", "0", terminal=False),
        view(acct, "gone", "new", "0", terminal=False),
    ]
    await acts.classify_page(ClassifyPageInput(broker_orders=first, mark=MARK))
    later = MARK + timedelta(minutes=5)
    # the next run has not seen them open yet: both are asked for
    assert set((await acts.followed_not_seen(FollowedInput(mark=later))).broker_order_ids) >= {
        "b-rest",
        "b-gone",
    }
    # one filled since, the other the broker no longer has: neither is followed any more
    await acts.classify_page(
        ClassifyPageInput(
            broker_orders=[view(acct, "rest", "filled", "2", terminal=True)],
            mark=later,
            forget_ids=["b-gone"],
        )
    )
    left = (await acts.followed_not_seen(FollowedInput(mark=later))).broker_order_ids
    assert "b-rest" not in left and "b-gone" not in left


async def test_the_watermark_only_moves_forward(state: tuple[str, asyncpg.Pool, str]) -> None:
    _, pool, _ = state
    acts = ReconcileActivities(pool)
    assert (await acts.read_watermark(WatermarkInput())).created_up_to is None
    t1, t0 = MARK, MARK - timedelta(hours=1)
    assert (await acts.advance_watermark(WatermarkInput(created_up_to=t1))).created_up_to == t1
    assert (await acts.advance_watermark(WatermarkInput(created_up_to=t0))).created_up_to == t1
    assert (await acts.read_watermark(WatermarkInput())).created_up_to == t1


async def test_stuck_and_parked_orders_are_breaks_cleared_when_they_move(
    state: tuple[str, asyncpg.Pool, str],
) -> None:
    _, pool, acct = state
    acts = ReconcileActivities(pool)
    await row(pool, acct, "old", "SUBMITTED", age_s=3_600)
    await row(pool, acct, "young", "SUBMITTED", age_s=10)
    await row(pool, acct, "parked", "NEEDS_ATTENTION", reason="hold closed", age_s=10)
    got = await acts.find_order_breaks(OrderBreaksInput(stuck_after_s=600))
    assert (got.stuck, got.parked) >= (1, 1)
    [stuck] = await breaks_of(pool, f"{acct}/old")
    [parked] = await breaks_of(pool, f"{acct}/parked")
    assert stuck["kind"] == "stuck" and parked["kind"] == "parked"
    assert parked["detail"] == "parked: hold closed"
    assert await breaks_of(pool, f"{acct}/young") == []
    # the parked order is resumed and settles: its break is resolved by the reconciler
    await pool.execute(
        "UPDATE orders SET status = 'SETTLED' WHERE account_id = $1 AND order_id = 'parked'", acct
    )
    got = await acts.find_order_breaks(OrderBreaksInput(stuck_after_s=600))
    assert got.cleared == 1
    [parked] = await breaks_of(pool, f"{acct}/parked")
    assert parked["resolved_by"] == "reconciler"
    [stuck] = await breaks_of(pool, f"{acct}/old")
    assert stuck["resolved_at"] is None and stuck["times_seen"] == 2


async def test_breaks_cli_lists_shows_and_resolves(state: tuple[str, asyncpg.Pool, str]) -> None:
    url, pool, acct = state
    await row(pool, acct, "cli-short", "SETTLED", "1")
    await ReconcileActivities(pool).classify_page(
        ClassifyPageInput(
            broker_orders=[view(acct, "cli-short", "filled", "2", terminal=True)], mark=MARK
        )
    )
    [found] = await breaks_of(pool, f"{acct}/cli-short")
    done = await cli(url, "breaks", "list", "--json", "--kind", "fill_mismatch")
    assert done.returncode == 0, done.stderr
    assert found["id"] in [b["id"] for b in json.loads(done.stdout)]
    done = await cli(url, "breaks", "show", str(found["id"]))
    assert done.returncode == 0 and f"{acct}/cli-short" in done.stdout, done.stderr

    done = await cli(url, "breaks", "resolve", str(found["id"]))
    assert (done.returncode, done.stderr.strip().splitlines()) == (
        1,
        ["Error: --by is required: who resolves the break"],
    )
    done = await cli(url, "breaks", "resolve", str(found["id"]), "--by", "ops-lee", "--json")
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)
    assert resolved["resolved_by"] == "ops-lee" and resolved["resolved_at"]
    done = await cli(url, "breaks", "list", "--json")
    assert found["id"] not in [b["id"] for b in json.loads(done.stdout)]  # open ones only
    done = await cli(url, "breaks", "list", "--resolved", "--json")
    assert found["id"] in [b["id"] for b in json.loads(done.stdout)]

    resolved_already = f"break {found['id']} was resolved by ops-lee"
    for args, message in [
        (("resolve", str(found["id"]), "--by", "x"), resolved_already),
        (("resolve", "987654321", "--by", "x"), "no break 987654321"),
        (("show", "987654321"), "no break 987654321"),
        (("show", "abc"), "invalid break id 'abc'"),
    ]:
        done = await cli(url, "breaks", *args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode != 0 and len(lines) == 1 and message in lines[0], done.stderr
