"""``RiskAdmin``: the operators' side of pre-trade risk in the SDK (the CLI's ``trading`` and
``risk`` commands use it; ``OrderClient.risk`` gives one).

- The firm's trading state: read it, change it (Postgres, the authority, then the Web UI's
  mirror, the ``trading-state`` workflow), read its log.
- An account's limit overrides: show (with the limits in force and today's usage), set, clear.

Every argument is parsed by core/risk.py's rules before anything is written: a bad value is a
UserError (or InvalidAmount) of one line and changes nothing.
"""

from __future__ import annotations

import getpass
from decimal import Decimal

import asyncpg
from temporalio.client import Client

from activities.ledger import risk as store
from activities.ledger.risk import AccountRisk, TradingChange, TradingStatus
from core import risk as rules
from core.errors import UserError
from core.risk import Overrides, TradingState
from core.settings import Settings
from workflows.trading import TRADING_WORKFLOW_ID, TradingStateWorkflow, TradingView

__all__ = ["RiskAdmin", "TradingChange", "TradingStatus", "current_user"]


def current_user() -> str:
    """Who changes something when no name is given: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER: a container, say
        return "unknown"


class RiskAdmin:
    def __init__(
        self, pool: asyncpg.Pool, settings: Settings, temporal: Client | None = None
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._temporal = temporal

    # ---------------------------------------------------------------- the trading state

    async def trading_status(self) -> TradingStatus:
        return await store.trading_status(self._pool)

    async def trading_history(self, limit: int = 20) -> list[TradingChange]:
        if type(limit) is not int or not 1 <= limit <= 1000:
            raise UserError(f"limit must be a whole number from 1 to 1000: {limit!r}")
        return await store.trading_history(self._pool, limit)

    async def set_trading_state(
        self, state: TradingState | str, reason: str, by: str | None = None
    ) -> TradingChange:
        """Set the state in Postgres (effective for the next order any worker decides), then
        update the Web UI's mirror (``mirror``; its failure is raised after the change stands:
        a MirrorFailed carrying the change)."""
        change = await store.set_trading_state(
            self._pool,
            rules.parse_state(state),
            rules.parse_reason(reason),
            rules.parse_actor(by if by is not None else current_user()),
            self._settings.ledger_cas_attempts,
        )
        try:
            await self.mirror()
        except Exception as exc:
            raise MirrorFailed(change, exc) from exc
        return change

    async def mirror(self) -> None:
        """Show the state as Postgres has it now in the ``trading-state`` workflow (started if
        it is not running; a signal, so no worker has to be up for this to return)."""
        if self._temporal is None:
            raise UserError("no Temporal client to update the trading-state workflow with")
        now = await self.trading_status()
        view = TradingView(**now.model_dump(mode="json"))
        await self._temporal.start_workflow(
            TradingStateWorkflow.run,
            # no input: a run's input stays on its page for ever, and would show a stale state
            None,
            id=TRADING_WORKFLOW_ID,
            task_queue=self._settings.orders_task_queue,
            start_signal="mirror",
            start_signal_args=[view],
        )

    # ---------------------------------------------------------------- an account's limits

    async def account_risk(self, account_id: str) -> AccountRisk:
        """The account's overrides, the limits in force (over this process's defaults, which
        should be the workers') and today's usage."""
        return await store.account_risk(self._pool, account_id, self._settings.risk)

    async def set_limits(
        self,
        account_id: str,
        *,
        max_order_notional: Decimal | str | None = None,
        max_order_qty: Decimal | str | None = None,
        max_daily_notional: Decimal | str | None = None,
        max_daily_orders: int | str | None = None,
        by: str | None = None,
    ) -> AccountRisk:
        given = {
            "max_order_notional": max_order_notional,
            "max_order_qty": max_order_qty,
            "max_daily_notional": max_daily_notional,
            "max_daily_orders": max_daily_orders,
        }
        parsed = {k: rules.parse_limit(k, v) for k, v in given.items() if v is not None}
        await store.set_account_limits(
            self._pool,
            account_id,
            Overrides(**parsed),
            rules.parse_actor(by if by is not None else current_user()),
        )
        return await self.account_risk(account_id)

    async def clear_limits(self, account_id: str, by: str | None = None) -> AccountRisk:
        await store.clear_account_limits(
            self._pool, account_id, rules.parse_actor(by if by is not None else current_user())
        )
        return await self.account_risk(account_id)


class MirrorFailed(Exception):
    """The trading state changed in Postgres (``change``), but the Web UI's mirror was not
    updated (``cause``): orders already follow the new state; run ``ordersaga trading
    status --mirror`` once Temporal is reachable."""

    def __init__(self, change: TradingChange, cause: BaseException) -> None:
        first = (str(cause).splitlines() or [""])[0]
        super().__init__(f"{type(cause).__name__}: {first}")
        self.change = change
        self.cause = cause
