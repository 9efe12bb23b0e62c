"""The FX desk's position: what the firm's '$fx' rows hold, per currency (docs/LEDGER.md).

Each fill of an order paid in won moves won into the desk and dollars out of it (a sale paid out
in won the reverse), so the desk's won and dollars have opposite signs while customers mostly
buy: it has sold dollars for won. The implied average rate is the won per dollar of that net
position (``-krw / usd``), None when the signs do not oppose (no position, or one side flat).
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import asyncpg
from pydantic import BaseModel

from core.money import CASH_ASSET, KRW, quantum_for

FX_POSITION = (
    "SELECT a.asset, sum(a.available + a.held) AS total, count(*) AS rows"
    " FROM ledger_accounts a WHERE a.kind = 'fx' GROUP BY a.asset ORDER BY a.asset"
)
FX_FILLS = (
    "SELECT count(DISTINCT l.entry_id) FROM journal_lines l"
    " JOIN ledger_accounts a ON a.id = l.ledger_account_id WHERE a.kind = 'fx'"
)


class FxPosition(BaseModel):
    krw: Decimal
    usd: Decimal
    average_rate: Decimal | None
    """Won per dollar of the net position, to 4 decimals (None: no opposing position)."""
    entries: int
    """Journal entries (fills) that moved the desk."""


def implied_rate(krw: Decimal, usd: Decimal) -> Decimal | None:
    if krw == 0 or usd == 0 or (krw > 0) == (usd > 0):
        return None
    return (-krw / usd).quantize(Decimal("0.0001"), ROUND_HALF_UP)


async def fx_position(pool: asyncpg.Pool | asyncpg.Connection) -> FxPosition:
    totals = {r["asset"]: r["total"] for r in await pool.fetch(FX_POSITION)}
    krw = Decimal(totals.get(KRW, 0)).quantize(quantum_for(KRW))
    usd = Decimal(totals.get(CASH_ASSET, 0)).quantize(quantum_for(CASH_ASSET))
    entries = await pool.fetchval(FX_FILLS)
    return FxPosition(krw=krw, usd=usd, average_rate=implied_rate(krw, usd), entries=entries)
