"""The project's named error types.

``UserError`` is anything the person at the keyboard can fix (bad input, unknown account): the
CLI prints its message on one line. Activity failures that must not be retried are raised as
``temporalio.exceptions.ApplicationError(non_retryable=True, type=<one of the names below>)``;
each type name is defined once, here, so the workflow's retry policies name the same strings.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unknown object; printed as one line by the CLI."""


# ApplicationError type names (non-retryable unless said otherwise)
INSUFFICIENT_FUNDS = "InsufficientFunds"
STALE_FENCE = "StaleFence"
IDEMPOTENCY_MISMATCH = "IdempotencyMismatch"
INVALID_AMOUNT = "InvalidAmount"
UNKNOWN_ACCOUNT = "UnknownAccount"
HOLD_STATE = "HoldState"
LEDGER_CONFLICT = "LedgerConflict"  # retryable: CAS retries ran out
LOCK_NOT_ACQUIRED = "LockNotAcquired"  # retryable
LOCK_LOST = "LockLost"
LOCK_INVALID_ARGUMENT = "LockInvalidArgument"  # ttl <= 0, empty owner
BROKER_REJECTED = "BrokerRejected"
BROKER_UNAVAILABLE = "BrokerUnavailable"  # retryable
BROKER_OUTCOME_UNKNOWN = "BrokerOutcomeUnknown"  # retryable: look the order up by client id
BROKER_AUTH = "BrokerAuth"  # wrong broker keys: a configuration error
BROKER_ORDER_NOT_FOUND = "BrokerOrderNotFound"  # a broker order id the broker does not know
ORDER_CONFLICT = "OrderConflict"  # same order id, different parameters
# The order's row says it was refused already (an earlier try of the same decision): the first
# decision stands, and a reserve retried after it holds nothing.
ORDER_REFUSED = "OrderRefused"
INVALID_REQUEST = "InvalidRequest"  # malformed input other than an amount (asset, side, ...)
# Pre-trade risk refused the order: a limit (per order, per account per day) or the firm's
# trading state (REDUCING, HALTED). The message is the reason the customer sees.
RISK_LIMIT = "RiskLimit"
# The broker's market clock does not parse or does not add up (core/broker_models.MarketClock).
BROKER_BAD_CLOCK = "BrokerBadClock"

NON_RETRYABLE_LEDGER = [
    INSUFFICIENT_FUNDS,
    STALE_FENCE,
    IDEMPOTENCY_MISMATCH,
    INVALID_AMOUNT,
    UNKNOWN_ACCOUNT,
    HOLD_STATE,
    ORDER_CONFLICT,
    ORDER_REFUSED,
    INVALID_REQUEST,
    RISK_LIMIT,
]
