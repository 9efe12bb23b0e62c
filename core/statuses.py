"""Order statuses, each set defined once: the saga's, and the broker's (Alpaca's names).

The orders table, the ledger check, the reconciler and the saga all read these; nothing else
spells a terminal status.
"""

from __future__ import annotations

from enum import StrEnum


class OrderStatus(StrEnum):
    """The saga's status of an order (the orders table's ``status``, the ``OrderStatus`` search
    attribute)."""

    NEW = "NEW"  # validating, pricing, reserving
    ACCEPTED = "ACCEPTED"  # funds or shares held; going to the broker
    # Held, and waiting for the market to open before it goes to the broker (the saga's
    # market_hours setting "enforce"); cancelable, and nothing is at the broker yet.
    QUEUED = "QUEUED"
    SUBMITTED = "SUBMITTED"  # the broker has it
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    # Past the pivot a step could not go on (reason says which); the hold stays until an
    # operator resumes the order. Never terminal.
    NEEDS_ATTENTION = "NEEDS_ATTENTION"
    SETTLED = "SETTLED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    REJECTED = "REJECTED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {OrderStatus.SETTLED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REJECTED}
)
# The same set as plain text, for SQL parameters (``status <> ALL($n::text[])``).
TERMINAL_STATUS_NAMES: tuple[str, ...] = tuple(sorted(s.value for s in TERMINAL_STATUSES))

# Broker statuses that end an order, and the saga status each ends it in.
BROKER_FINAL: dict[str, OrderStatus] = {
    "filled": OrderStatus.SETTLED,
    "canceled": OrderStatus.CANCELED,
    "expired": OrderStatus.EXPIRED,
    "rejected": OrderStatus.REJECTED,
}
BROKER_TERMINAL_STATUSES = frozenset(BROKER_FINAL)

# Every order status Alpaca documents (the simulator uses a subset). The adapter treats a status
# outside BROKER_TERMINAL_STATUSES as open; a trade event carrying a status outside this set is
# refused by the listener (core/broker_client.parse_trade_event), and a broker answer
# carrying one is not booked by the saga.
BROKER_STATUSES = frozenset(
    {
        "new",
        "partially_filled",
        "filled",
        "done_for_day",
        "canceled",
        "expired",
        "replaced",
        "pending_cancel",
        "pending_replace",
        "pending_review",
        "accepted",
        "pending_new",
        "accepted_for_bidding",
        "stopped",
        "rejected",
        "suspended",
        "calculated",
        "held",
    }
)
