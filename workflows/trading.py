"""TradingStateWorkflow: the firm's trading state, mirrored where an operator looks in the Web UI.

Postgres is the authority (the ``trading_state`` row the reserve reads, activities/ledger/
risk.py); this singleton workflow (id ``trading-state``, on the orders queue) only shows it. The
CLI and the SDK signal it with the state as committed, after the commit, and start it if it is
not running (signal-with-start). It keeps the newest version it was told (a late signal of an
older version changes nothing), and shows it as the workflow's current details and memo. It
decides nothing: if the mirror is behind or down, orders are still refused by Postgres.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from temporalio import workflow

TRADING_WORKFLOW_ID = "trading-state"
# Past this many changes the run continues as new with the newest, keeping its history short.
MAX_CHANGES_PER_RUN = 500


class TradingView(BaseModel):
    """The trading state as committed in Postgres (its version orders the signals)."""

    state: str
    reason: str
    changed_by: str
    changed_at: datetime
    version: int


def details(view: TradingView) -> str:
    """What the Web UI shows on the workflow's page (markdown)."""
    return (
        f"**Trading {view.state}** since {view.changed_at.isoformat(timespec='seconds')}\n\n"
        f"by {view.changed_by}: {view.reason}\n\n"
        "(mirror of Postgres' trading_state; `ordersaga trading status` reads the authority)"
    )


@workflow.defn
class TradingStateWorkflow:
    def __init__(self) -> None:
        self._view: TradingView | None = None
        self._changes = 0

    @workflow.run
    async def run(self, initial: TradingView | None) -> None:
        if initial is not None:
            self._show(initial)
        await workflow.wait_condition(
            lambda: self._changes >= MAX_CHANGES_PER_RUN and workflow.all_handlers_finished()
        )
        workflow.continue_as_new(self._view)

    @workflow.signal
    def mirror(self, view: TradingView) -> None:
        """The state as committed; an older version than the one shown is ignored."""
        self._changes += 1
        if self._view is None or view.version > self._view.version:
            self._show(view)

    @workflow.query
    def current(self) -> TradingView | None:
        return self._view

    def _show(self, view: TradingView) -> None:
        self._view = view
        workflow.set_current_details(details(view))
        workflow.upsert_memo(
            {
                "trading_state": view.state,
                "reason": view.reason,
                "changed_by": view.changed_by,
                "changed_at": view.changed_at.isoformat(timespec="seconds"),
                "version": view.version,
            }
        )
