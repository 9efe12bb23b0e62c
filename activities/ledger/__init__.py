"""The Postgres ledger: accounts per (owner, asset), two-phase holds, an immutable journal.

- ``postings``: the posting rules, pure functions on plain values (what each operation moves);
- ``store``: the SQL, the compare-and-sets, the journal, idempotency records, the unit of work;
- ``service``: ``Ledger``, the operations as plain async code (the SDK and the CLI use it);
- ``activities``: ``LedgerActivities``, the thin Temporal activities over ``Ledger``;
- ``queries``: reads that are not activities (balances, the fence floor, the invariant check);
- ``fxdesk``: the FX desk's position (orders paid in won convert through it);
- ``models``: the inputs and results.

See docs/LEDGER.md. The names other packages use are re-exported here.
"""

from __future__ import annotations

from activities.ledger.activities import LedgerActivities
from activities.ledger.fxdesk import FxPosition, fx_position
from activities.ledger.models import (
    AccountBalances,
    Balance,
    DepositInput,
    ErrorFillInput,
    ErrorFillResult,
    OpenAccountInput,
    OpenAccountResult,
    OrderRecord,
    PostFillInput,
    PostFillResult,
    ReserveInput,
    ReserveResult,
    ResizeHoldInput,
    ResizeHoldResult,
    TransferResult,
    VoidInput,
    VoidResult,
    WithdrawInput,
)
from activities.ledger.postings import ERROR, EXTERNAL, FEES, FX, OMNIBUS, firm_shard
from activities.ledger.queries import LedgerReport, check_ledger, get_balances, max_fence
from activities.ledger.service import Ledger

__all__ = [
    "ERROR",
    "EXTERNAL",
    "FEES",
    "FX",
    "OMNIBUS",
    "AccountBalances",
    "Balance",
    "DepositInput",
    "ErrorFillInput",
    "ErrorFillResult",
    "FxPosition",
    "Ledger",
    "LedgerActivities",
    "LedgerReport",
    "OpenAccountInput",
    "OpenAccountResult",
    "OrderRecord",
    "PostFillInput",
    "PostFillResult",
    "ReserveInput",
    "ReserveResult",
    "ResizeHoldInput",
    "ResizeHoldResult",
    "TransferResult",
    "VoidInput",
    "VoidResult",
    "WithdrawInput",
    "check_ledger",
    "firm_shard",
    "fx_position",
    "get_balances",
    "max_fence",
]
