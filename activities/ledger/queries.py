"""Reads of the ledger that are not activities: a customer's balances, the fence floor the lock
seeds its counter from, and the whole-ledger invariant check.

The check is shared by ``ordersaga ledger check``, the tests and the chaos harness. Read-only;
it runs in one REPEATABLE READ transaction so every query sees one snapshot. Checked:
- conservation: per asset, the sum of available + held over every ledger account is zero
  ('$external' is where deposits come from, so it carries the negative of what came in);
- no customer balance below zero;
- every journal entry balances per asset;
- every account's balance equals the sum of its journal lines (nothing changed unjournaled);
- every hold has an owner: an orders row or its own reserve entry in the journal;
- no hold is still open once its order is terminal.
Open holds are listed too (not a violation: their orders may be live), so callers that know
every order has finished can assert there are none.
"""

from __future__ import annotations

from decimal import Decimal

import asyncpg
from pydantic import BaseModel

from activities.ledger import store
from activities.ledger.models import AccountBalances, Balance
from activities.ledger.postings import Refused, q
from activities.ledger.settlement import UnsettledCash, open_lots, unsettled_cash
from core.statuses import TERMINAL_STATUS_NAMES

_BALANCES = (
    "SELECT asset, available, held, version FROM ledger_accounts"
    " WHERE owner = $1 ORDER BY asset = 'USD' DESC, asset"
)
_MAX_FENCE = (
    "SELECT GREATEST("
    " (SELECT last_fence FROM customers WHERE account_id = $1),"
    " (SELECT max(last_fence) FROM ledger_accounts WHERE owner = $1))"
)


async def get_balances(pool: asyncpg.Pool, account_id: str) -> AccountBalances:
    """Available, held and version per asset of a customer account (UnknownAccount if none)."""
    async with pool.acquire() as conn:
        try:
            customer = await store.customer(conn, account_id)
        except Refused as exc:
            raise store.application_error(exc) from None
        rows = await conn.fetch(_BALANCES, account_id)
        lots = await open_lots(conn, account_id)
    return AccountBalances(
        account_id=account_id,
        currency=customer["currency"],
        last_fence=customer["last_fence"],
        balances=[
            Balance(
                asset=r["asset"],
                available=q(r["available"], r["asset"]),
                held=q(r["held"], r["asset"]),
                version=r["version"],
                **unsettled_of(r["available"], lots.get(r["asset"])),
            )
            for r in rows
        ],
    )


def unsettled_of(available: Decimal, lot: UnsettledCash | None) -> dict[str, object]:
    """A cash row's unsettled part (the open lots, at most what is available; unsettled cash
    is spent last) and the earliest date one of its lots settles."""
    if lot is None:
        return {}
    return {"unsettled": unsettled_cash(available, lot.amount), "next_settles": lot.next_settles}


async def max_fence(pool: asyncpg.Pool, account_id: str) -> int:
    """The newest fencing token the ledger has seen for the account (0 if none): the floor the
    lock seeds a lost fence counter above."""
    value = await pool.fetchval(_MAX_FENCE, account_id)
    return int(value or 0)


# ---------------------------------------------------------------- the invariant check

_CONSERVATION = """
SELECT asset, sum(available + held) AS total FROM ledger_accounts
GROUP BY asset HAVING sum(available + held) <> 0 ORDER BY asset
"""
_NEGATIVE = """
SELECT owner, asset, available, held FROM ledger_accounts
WHERE kind = 'customer' AND (available < 0 OR held < 0) ORDER BY owner, asset
"""
_UNBALANCED = """
SELECT entry_id, asset, sum(amount) AS total FROM journal_lines
GROUP BY entry_id, asset HAVING sum(amount) <> 0 ORDER BY entry_id, asset
"""
_UNJOURNALED = """
SELECT a.owner, a.asset, a.available, a.held,
       coalesce(j.available, 0) AS journal_available, coalesce(j.held, 0) AS journal_held
FROM ledger_accounts a
LEFT JOIN (
    SELECT ledger_account_id,
           sum(amount) FILTER (WHERE bucket = 'available') AS available,
           sum(amount) FILTER (WHERE bucket = 'held') AS held
    FROM journal_lines GROUP BY ledger_account_id
) j ON j.ledger_account_id = a.id
WHERE a.available <> coalesce(j.available, 0) OR a.held <> coalesce(j.held, 0)
ORDER BY a.owner, a.asset
"""
_HOLDS = """
SELECT h.order_id, h.owner, h.asset, h.amount, h.held_remaining, h.status,
       o.status AS order_status,
       EXISTS (SELECT 1 FROM journal_entries e
               WHERE e.order_id = h.order_id AND e.code = 'reserve') AS journaled
-- The saga's holds are keyed by the order key '<account>/<order>'; bare ids are accepted too.
FROM holds h LEFT JOIN orders o
  ON o.account_id = h.owner AND h.order_id IN (o.order_id, o.account_id || '/' || o.order_id)
ORDER BY h.id
"""

# Every unsettled lot (migrations/0014) is a sale's proceeds: its entry is a post, of the lot's
# order, whose lines credit exactly the lot's amount to the lot's account in the lot's asset.
_LOTS_ASTRAY = """
SELECT l.id, l.account_id, l.asset, l.amount, l.order_id, e.code,
       coalesce(sum(j.amount), 0) AS credited
FROM unsettled_lots l
JOIN journal_entries e ON e.id = l.entry_id
LEFT JOIN journal_lines j ON j.entry_id = l.entry_id AND j.bucket = 'available'
  AND j.asset = l.asset
  AND j.ledger_account_id = (SELECT a.id FROM ledger_accounts a
                             WHERE a.owner = l.account_id AND a.asset = l.asset)
GROUP BY l.id, e.code, e.order_id
HAVING e.code <> 'post' OR e.order_id IS DISTINCT FROM l.order_id
    OR coalesce(sum(j.amount), 0) <> l.amount
ORDER BY l.id
"""


class AssetTotal(BaseModel):
    asset: str
    total: Decimal


class NegativeBalance(BaseModel):
    owner: str
    asset: str
    available: Decimal
    held: Decimal


class UnbalancedEntry(BaseModel):
    entry_id: int
    asset: str
    total: Decimal


class UnjournaledBalance(BaseModel):
    owner: str
    asset: str
    available: Decimal
    held: Decimal
    journal_available: Decimal
    journal_held: Decimal


class HoldRef(BaseModel):
    order_id: str
    owner: str
    asset: str
    amount: Decimal
    held_remaining: Decimal
    status: str
    order_status: str | None = None


class LotAstray(BaseModel):
    id: int
    account_id: str
    asset: str
    amount: Decimal
    order_id: str
    code: str
    credited: Decimal


class LedgerReport(BaseModel):
    ok: bool
    conservation: list[AssetTotal]
    negative_balances: list[NegativeBalance]
    unbalanced_entries: list[UnbalancedEntry]
    unjournaled_balances: list[UnjournaledBalance]
    holds_without_owner: list[HoldRef]
    open_holds_of_finished_orders: list[HoldRef]
    open_holds: list[HoldRef]
    lots_astray: list[LotAstray] = []

    def violations(self) -> list[str]:
        """One line per violation, for people."""
        out = [f"asset {t.asset} not conserved: total {t.total}" for t in self.conservation]
        out += [
            f"negative balance {n.owner} {n.asset}: available {n.available} held {n.held}"
            for n in self.negative_balances
        ]
        out += [
            f"journal entry {u.entry_id} unbalanced in {u.asset} by {u.total}"
            for u in self.unbalanced_entries
        ]
        out += [
            f"{u.owner} {u.asset} balance ({u.available}/{u.held}) disagrees with its journal "
            f"({u.journal_available}/{u.journal_held})"
            for u in self.unjournaled_balances
        ]
        out += [f"hold of order {h.order_id} has no owner" for h in self.holds_without_owner]
        out += [
            f"hold of order {h.order_id} still open ({h.held_remaining} {h.asset}) "
            f"but the order is {h.order_status}"
            for h in self.open_holds_of_finished_orders
        ]
        out += [
            f"unsettled lot {lot.id} ({lot.amount} {lot.asset} of {lot.account_id}) does not "
            f"match its {lot.code} entry (credited {lot.credited})"
            for lot in self.lots_astray
        ]
        return out


async def check_ledger(pool: asyncpg.Pool | asyncpg.Connection) -> LedgerReport:
    if isinstance(pool, asyncpg.Connection):
        return await _check(pool)
    async with pool.acquire() as conn:
        return await _check(conn)


async def _check(conn: asyncpg.Connection) -> LedgerReport:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        conservation = [AssetTotal(**dict(r)) for r in await conn.fetch(_CONSERVATION)]
        negative = [NegativeBalance(**dict(r)) for r in await conn.fetch(_NEGATIVE)]
        unbalanced = [UnbalancedEntry(**dict(r)) for r in await conn.fetch(_UNBALANCED)]
        unjournaled = [UnjournaledBalance(**dict(r)) for r in await conn.fetch(_UNJOURNALED)]
        holds = await conn.fetch(_HOLDS)
        astray = [LotAstray(**dict(r)) for r in await conn.fetch(_LOTS_ASTRAY)]
    refs = [(HoldRef(**{k: r[k] for k in HoldRef.model_fields}), r["journaled"]) for r in holds]
    orphans = [h for h, journaled in refs if h.order_status is None and not journaled]
    open_holds = [h for h, _ in refs if h.status == "open"]
    finished = [h for h in open_holds if h.order_status in TERMINAL_STATUS_NAMES]
    ok = not (
        conservation or negative or unbalanced or unjournaled or orphans or finished or astray
    )
    return LedgerReport(
        ok=ok,
        conservation=conservation,
        negative_balances=negative,
        unbalanced_entries=unbalanced,
        unjournaled_balances=unjournaled,
        holds_without_owner=orphans,
        open_holds_of_finished_orders=finished,
        open_holds=open_holds,
        lots_astray=astray,
    )
