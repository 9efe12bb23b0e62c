"""The ledger as the integration tests drive it: its activities over a pool, with the reads
(balances, the fence floor) the tests check results through."""

from __future__ import annotations

import asyncpg

from activities.ledger import AccountBalances, Ledger, LedgerActivities, get_balances, max_fence


class LedgerUnderTest(LedgerActivities):
    def __init__(self, pool: asyncpg.Pool, cas_attempts: int = 50) -> None:
        super().__init__(Ledger(pool, cas_attempts=cas_attempts))
        self.pool = pool

    async def get_balances(self, account_id: str) -> AccountBalances:
        return await get_balances(self.pool, account_id)

    async def max_fence(self, account_id: str) -> int:
        return await max_fence(self.pool, account_id)
