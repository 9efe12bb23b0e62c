"""Pre-trade risk in Postgres: the check the reserve makes in its own transaction, and the
reads and writes of the limits' overrides and the trading state (the CLI and the SDK).

The rules are core/risk.py's; this module only reads what they decide on and writes what they
say. ``check_and_count`` runs inside ``Ledger.reserve``'s transaction, after the reserve has
found no earlier decision for the order and before it holds anything: the trading state, the
account's limits and its usage of the day are read there, and the usage is counted there with a
compare-and-set on its version. So the check, the count and the hold commit together or not at
all: N orders racing on one account with a daily count limit K get exactly K holds (a lost race
reruns the whole reserve, which then sees the winner's count), and a refusal counts nothing.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import asyncpg
from pydantic import BaseModel

from activities.ledger.postings import Refused
from activities.ledger.store import Conflict, transact
from core import errors
from core import risk as rules
from core.risk import Overrides, RiskLimits, TradingState, Usage

# The New York calendar date of the transaction's start: the day an order's acceptance counts on
# (docs/OPERATIONS.md, "Pre-trade risk limits"). The database's clock, one for every worker.
NY_DAY = "(now() AT TIME ZONE 'America/New_York')::date"

RISK_VIEW = f"""
SELECT t.state, t.reason, t.changed_by, {NY_DAY} AS day,
       l.max_order_notional, l.max_order_qty, l.max_daily_notional, l.max_daily_orders,
       u.notional AS used_notional, u.orders AS used_orders, u.version AS usage_version
  FROM trading_state t
  LEFT JOIN risk_limits l ON l.account_id = $1
  LEFT JOIN risk_usage u ON u.account_id = $1 AND u.day = {NY_DAY}
 WHERE t.id = 1
"""
INSERT_USAGE = """
INSERT INTO risk_usage (account_id, day, notional, orders, version) VALUES ($1, $2, $3, $4, 1)
ON CONFLICT (account_id, day) DO NOTHING
"""
CAS_USAGE = """
UPDATE risk_usage SET notional = $3, orders = $4, version = version + 1, updated_at = now()
 WHERE account_id = $1 AND day = $2 AND version = $5
"""
SELECT_STATE = (
    "SELECT state, reason, changed_by, changed_at, version FROM trading_state WHERE id = 1"
)
CAS_STATE = """
UPDATE trading_state SET state = $1, reason = $2, changed_by = $3, changed_at = now(),
       version = version + 1
 WHERE id = 1 AND version = $4
RETURNING state, reason, changed_by, changed_at, version
"""
INSERT_STATE_LOG = """
INSERT INTO trading_state_log (version, state, previous, reason, changed_by, changed_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""
SELECT_STATE_LOG = """
SELECT version, state, previous, reason, changed_by, changed_at FROM trading_state_log
 ORDER BY version DESC LIMIT $1
"""
SELECT_LIMITS = f"""
SELECT c.account_id, l.max_order_notional, l.max_order_qty, l.max_daily_notional,
       l.max_daily_orders, l.updated_by, l.updated_at, {NY_DAY} AS day,
       u.notional AS used_notional, u.orders AS used_orders
  FROM customers c
  LEFT JOIN risk_limits l ON l.account_id = c.account_id
  LEFT JOIN risk_usage u ON u.account_id = c.account_id AND u.day = {NY_DAY}
 WHERE c.account_id = $1
"""
# Only the limits given change (a NULL argument keeps the stored value); clear sets all to NULL.
UPSERT_LIMITS = """
INSERT INTO risk_limits (account_id, max_order_notional, max_order_qty, max_daily_notional,
                         max_daily_orders, updated_by)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (account_id) DO UPDATE SET
    max_order_notional = coalesce(EXCLUDED.max_order_notional, risk_limits.max_order_notional),
    max_order_qty = coalesce(EXCLUDED.max_order_qty, risk_limits.max_order_qty),
    max_daily_notional = coalesce(EXCLUDED.max_daily_notional, risk_limits.max_daily_notional),
    max_daily_orders = coalesce(EXCLUDED.max_daily_orders, risk_limits.max_daily_orders),
    updated_by = EXCLUDED.updated_by, updated_at = now()
"""
CLEAR_LIMITS = """
UPDATE risk_limits SET max_order_notional = NULL, max_order_qty = NULL,
       max_daily_notional = NULL, max_daily_orders = NULL, updated_by = $2, updated_at = now()
 WHERE account_id = $1
"""
CENTS_ZERO = Decimal("0.00")
CUSTOMER_EXISTS = "SELECT EXISTS (SELECT 1 FROM customers WHERE account_id = $1)"


def _overrides(rec: asyncpg.Record) -> Overrides:
    return Overrides(**{name: rec[name] for name in rules.LIMIT_NAMES})


async def check_and_count(
    conn: asyncpg.Connection,
    *,
    account_id: str,
    side: str,
    qty: Decimal | None,
    notional: Decimal | None,
    defaults: RiskLimits,
) -> None:
    """Refuse (Refused, RiskLimit) an order the trading state or the account's limits do not
    allow; else count it on the day's usage. Inside the reserve's transaction (see above)."""
    view = await conn.fetchrow(RISK_VIEW, account_id)
    if view is None:  # the migration's row is gone: fail closed
        raise Refused("trading state unknown: no new orders", errors.RISK_LIMIT)
    why = rules.state_refusal(TradingState(view["state"]), side, view["reason"], view["changed_by"])
    if why is not None:
        raise Refused(why, errors.RISK_LIMIT)
    limits = rules.effective(defaults, _overrides(view))
    usage = Usage(notional=view["used_notional"] or CENTS_ZERO, orders=view["used_orders"] or 0)
    why = rules.limit_refusal(limits, usage, qty or Decimal(0), notional)
    if why is not None:
        raise Refused(why, errors.RISK_LIMIT)
    after = rules.counted(usage, notional)
    args = (account_id, view["day"], after.notional, after.orders)
    if view["usage_version"] is None:
        status = await conn.execute(INSERT_USAGE, *args)
        done = status == "INSERT 0 1"
    else:
        done = await conn.execute(CAS_USAGE, *args, view["usage_version"]) == "UPDATE 1"
    if not done:
        raise Conflict  # another order of the account counted first: the rerun sees it


async def check_amendment(
    conn: asyncpg.Connection,
    *,
    account_id: str,
    side: str,
    qty: Decimal,
    notional: Decimal,
    added: Decimal,
    defaults: RiskLimits,
) -> None:
    """Refuse (Refused, RiskLimit) a replace the trading state or the account's limits do not
    allow; else count the notional it adds on the day's usage. Inside the replace's resize
    transaction, as ``check_and_count`` is inside the reserve's."""
    view = await conn.fetchrow(RISK_VIEW, account_id)
    if view is None:
        raise Refused("trading state unknown: no replaces", errors.RISK_LIMIT)
    why = rules.state_refusal(TradingState(view["state"]), side, view["reason"], view["changed_by"])
    if why is not None:
        raise Refused(why, errors.RISK_LIMIT)
    limits = rules.effective(defaults, _overrides(view))
    usage = Usage(notional=view["used_notional"] or CENTS_ZERO, orders=view["used_orders"] or 0)
    why = rules.amendment_refusal(limits, usage, qty, notional, added)
    if why is not None:
        raise Refused(why, errors.RISK_LIMIT)
    if added <= 0:
        return
    args = (account_id, view["day"], usage.notional + added, usage.orders)
    if view["usage_version"] is None:
        done = await conn.execute(INSERT_USAGE, *args) == "INSERT 0 1"
    else:
        done = await conn.execute(CAS_USAGE, *args, view["usage_version"]) == "UPDATE 1"
    if not done:
        raise Conflict


# ---------------------------------------------------------------- the trading state


class TradingStatus(BaseModel):
    state: TradingState
    reason: str
    changed_by: str
    changed_at: datetime
    version: int


class TradingChange(TradingStatus):
    previous: TradingState


async def trading_status(pool: asyncpg.Pool) -> TradingStatus:
    rec = await pool.fetchrow(SELECT_STATE)
    if rec is None:
        raise errors.UserError("the trading state's row is missing: run `ordersaga db migrate`")
    return TradingStatus(**dict(rec))


async def set_trading_state(
    pool: asyncpg.Pool, state: TradingState, reason: str, by: str, attempts: int = 50
) -> TradingChange:
    """Set the firm's trading state (compare-and-set on its version) and append the change to
    the log, in one transaction. The reserve reads it in its own transaction, so the next order
    decided after this commits sees it. Setting the state it already has is recorded too (who
    said it again, and why)."""
    state, reason, by = rules.parse_state(state), rules.parse_reason(reason), rules.parse_actor(by)

    async def body(conn: asyncpg.Connection) -> TradingChange:
        now = await conn.fetchrow(SELECT_STATE)
        if now is None:
            raise errors.UserError("the trading state's row is missing: run `ordersaga db migrate`")
        rec = await conn.fetchrow(CAS_STATE, state.value, reason, by, now["version"])
        if rec is None:
            raise Conflict
        await conn.execute(
            INSERT_STATE_LOG,
            rec["version"],
            rec["state"],
            now["state"],
            rec["reason"],
            rec["changed_by"],
            rec["changed_at"],
        )
        return TradingChange(**dict(rec), previous=now["state"])

    return await transact(pool, body, attempts)


async def trading_history(pool: asyncpg.Pool, limit: int = 20) -> list[TradingChange]:
    return [TradingChange(**dict(r)) for r in await pool.fetch(SELECT_STATE_LOG, limit)]


# ---------------------------------------------------------------- an account's limits


class AccountRisk(BaseModel):
    """An account's overrides, the limits in force (overrides over the defaults) and today's
    usage (the New York date)."""

    account_id: str
    overrides: Overrides
    limits: RiskLimits
    day: str
    usage: Usage
    updated_by: str | None = None
    updated_at: datetime | None = None


async def account_risk(pool: asyncpg.Pool, account_id: str, defaults: RiskLimits) -> AccountRisk:
    rec = await pool.fetchrow(SELECT_LIMITS, account_id)
    if rec is None:
        raise errors.UserError(f"unknown account {account_id!r}")
    overrides = _overrides(rec)
    return AccountRisk(
        account_id=account_id,
        overrides=overrides,
        limits=rules.effective(defaults, overrides),
        day=rec["day"].isoformat(),
        usage=Usage(notional=rec["used_notional"] or CENTS_ZERO, orders=rec["used_orders"] or 0),
        updated_by=rec["updated_by"],
        updated_at=rec["updated_at"],
    )


async def set_account_limits(
    pool: asyncpg.Pool, account_id: str, overrides: Overrides, by: str
) -> None:
    """Set the given overrides (the others stay as they are); parsed again here, so an SDK
    caller's values meet the same bounds as the CLI's."""
    checked = {
        name: rules.parse_limit(name, getattr(overrides, name))
        for name in rules.LIMIT_NAMES
        if getattr(overrides, name) is not None
    }
    if not checked:
        raise errors.UserError("give at least one limit to set")
    by = rules.parse_actor(by)
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(CUSTOMER_EXISTS, account_id):
            raise errors.UserError(f"unknown account {account_id!r}")
        await conn.execute(
            UPSERT_LIMITS, account_id, *(checked.get(n) for n in rules.LIMIT_NAMES), by
        )


async def clear_account_limits(pool: asyncpg.Pool, account_id: str, by: str) -> None:
    """The firm's defaults apply to the account again (its row stays, emptied)."""
    by = rules.parse_actor(by)
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(CUSTOMER_EXISTS, account_id):
            raise errors.UserError(f"unknown account {account_id!r}")
        await conn.execute(CLEAR_LIMITS, account_id, by)
