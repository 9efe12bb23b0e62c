"""The reconciler's classification on real Postgres (issue 13: claims no test backed): a fill the
ledger and the broker disagree on, an order stuck open, a late order; and no break for orders
that agree, are still moving, or are not final at the broker yet."""

from __future__ import annotations

import uuid

import pytest

from activities.reconcile import FindBreaksInput, ReconcileActivities
from core.db import create_pool
from tests.conftest import scratch_database
from tests.support.reconcile import row, view

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]

ACCT = "rec-acct"


async def test_breaks_are_found_and_agreeing_orders_pass() -> None:
    async with scratch_database("reconcile") as url:
        pool = await create_pool(url, 1, 4)
        try:
            await row(pool, ACCT, "agrees", "SETTLED", "2")
            await row(pool, ACCT, "short", "SETTLED", "1")  # the broker filled 2
            await row(pool, ACCT, "moving", "SUBMITTED", "0", age_s=60)
            await row(pool, ACCT, "stuck", "SUBMITTED", "0", age_s=3_600)
            await row(pool, ACCT, "gave-up", "REJECTED", "0", broker=False)
            await row(pool, ACCT, "not-final", "CANCELED", "1")  # the broker is still canceling
            listing = [
                view(ACCT, "agrees", "filled", "2", terminal=True),
                view(ACCT, "short", "filled", "2", terminal=True),
                view(ACCT, "moving", "new", "0", terminal=False),
                view(ACCT, "gave-up", "filled", "2", terminal=True),
                view(ACCT, "not-final", "pending_cancel", "2", terminal=False),
                view(ACCT, f"never-{uuid.uuid4().hex[:6]}", "filled", "1", terminal=True),
            ]
            got = await ReconcileActivities(pool).find_breaks(
                FindBreaksInput(broker_orders=listing, stuck_after_s=600)
            )
            # every break is a record too (issue 15), one row per kind and order
            recorded = {
                (r["kind"], r["order_key"])
                for r in await pool.fetch("SELECT kind, order_key FROM reconcile_breaks")
            }
        finally:
            await pool.close()
    assert got.checked == len(listing)
    kinds = {(b.kind, b.client_order_id.split("/", 1)[1].split("-")[0]) for b in got.breaks}
    assert kinds == {
        ("fill_mismatch", "short"),
        ("stuck", "stuck"),
        ("late_order", "gave"),
        ("late_order", "never"),
    }, got.breaks
    assert {bo.client_order_id.split("/", 1)[1].split("-")[0] for bo in got.late} == {
        "gave",
        "never",
    }
    assert recorded == {(b.kind, b.client_order_id) for b in got.breaks}


async def test_a_replaced_orders_broker_orders_are_its_own_not_late_nor_mismatched() -> None:
    """Issue 16: an order replaced once has two broker orders, ``<key>`` (replaced, 1 filled) and
    ``<key>/r1`` (filled 2); its row has their sum. Neither is a late order nor a mismatch."""
    async with scratch_database("reconcile") as url:
        pool = await create_pool(url, 1, 4)
        try:
            await row(pool, ACCT, "rp", "SETTLED", "3")
            old = view(ACCT, "rp", "replaced", "1", terminal=False)
            new = view(ACCT, "rp", "filled", "2", terminal=True).model_copy(
                update={"id": "b-rp-r1", "client_order_id": f"{ACCT}/rp/r1"}
            )
            foreign = view(ACCT, "rp", "filled", "2", terminal=True).model_copy(
                update={"id": "b-rp-x", "client_order_id": f"{ACCT}/rp/x1"}
            )
            got = await ReconcileActivities(pool).find_breaks(
                FindBreaksInput(broker_orders=[old, new, foreign], stuck_after_s=600)
            )
        finally:
            await pool.close()
    assert [(b.kind, b.broker_order_id) for b in got.breaks] == [("late_order", "b-rp-x")]
