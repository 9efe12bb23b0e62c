"""The product's pool releases connections without a reset round trip, and still loses nothing.

``core.db.create_pool`` skips asyncpg's reset query (our code keeps no session state); what
asyncpg always does before a custom reset must still happen: a transaction left open by a
cancelled activity is rolled back before the connection serves anyone else. (As the superuser:
the probes are tables of their own, which the application role may not create.)
"""

from __future__ import annotations

import asyncio

import pytest

from core.db import create_pool
from tests.conftest import privileged

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


async def test_release_rolls_back_a_transaction_left_open(database_url: str) -> None:
    pool = await create_pool(privileged(database_url), 1, 1)  # it creates tables
    try:
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS pool_probe (v int)")
        conn = await pool.acquire()
        await conn.execute("BEGIN")  # an unmanaged transaction, as a cancelled body leaves it
        await conn.execute("INSERT INTO pool_probe VALUES (1)")
        await pool.release(conn)
        async with pool.acquire() as again:  # max_size 1: the same connection
            assert not again.is_in_transaction()
            assert await again.fetchval("SELECT count(*) FROM pool_probe") == 0
            await again.execute("DROP TABLE pool_probe")
    finally:
        await pool.close()


async def test_cancelled_transaction_body_leaves_nothing_behind(database_url: str) -> None:
    pool = await create_pool(privileged(database_url), 1, 1)  # it creates tables
    started = asyncio.Event()

    async def body() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("CREATE TABLE pool_probe2 (v int)")
            started.set()
            await asyncio.sleep(30)

    try:
        task = asyncio.create_task(body())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pool_probe2')") is None
    finally:
        await pool.close()
