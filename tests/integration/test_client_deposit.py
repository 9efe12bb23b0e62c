"""The SDK's deposits and withdrawals refuse bad amounts with a one-line UserError and write
nothing (the chaos harness's ``extreme_decimals`` kind does the same against a full stack)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import asyncpg
import pytest

from core.errors import UserError
from core.settings import Settings
from ordersaga.client import OrderClient

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]

BAD = ("1e-1000030", "1e400", "NaN", "-Infinity", "0." + "1" * 31, "1E+999999999", "-1", "0")


async def test_bad_amounts_are_one_line_user_errors_and_write_nothing(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        oc = OrderClient(None, pool, Settings(database_url=database_url))  # type: ignore[arg-type]
        acct = f"sdk-{uuid.uuid4().hex[:8]}"
        await oc.open_account(acct)
        await oc.deposit(acct, "10.00")
        for value in BAD:
            for call in (
                oc.deposit(acct, value),
                oc.deposit(acct, value, asset="AAPL"),
                oc.withdraw(acct, value),
            ):
                with pytest.raises(UserError) as caught:
                    await call
                assert "\n" not in str(caught.value) and str(caught.value)
        with pytest.raises(UserError, match="insufficient"):
            await oc.withdraw(acct, "11.00")
        taken = await oc.withdraw(acct, "4.00")
        assert (taken.amount, taken.available_after) == (Decimal("4.00"), Decimal("6.00"))
        balances = await oc.balance(acct)
        assert [(b.asset, b.available, b.held) for b in balances.balances] == [
            ("USD", Decimal("6.00"), Decimal("0.00"))
        ]
    finally:
        await pool.close()
