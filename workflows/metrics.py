"""The saga's business metrics, recorded from workflow code.

Through ``workflow.metric_meter()`` only: the SDK suppresses it while a workflow replays (a
worker restart, a cache eviction), so an order is counted when its decision or its end happens,
not again on every replay; it adds no command to the history. A workflow task that is retried
after its worker died runs its code again live and counts again: rare, and documented in
docs/OPERATIONS.md. The meter adds the namespace, task queue and workflow type as labels; ours
are a status, an outcome or a reason category, never an account or order id.

Workflow time (``workflow.now()``) moves once per workflow task, so the placement time is the
customer's wait at that grain: the time before a worker took the order, lock waits and retried
tasks, not the milliseconds of the local steps inside one task.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from core import telemetry
    from core.statuses import OrderStatus

# Refusal reasons by the text the saga writes (workflows/order.py, saga_base.py), first match.
REFUSAL_PREFIXES = (
    ("invalid request", "invalid"),
    ("no price", "no_price"),
    ("the order would hold", "too_large"),
    ("insufficient funds", "insufficient_funds"),
    ("unknown account", "unknown_account"),
    ("order id already used", "order_conflict"),
    ("account busy", "account_busy"),
    ("could not be placed", "not_placed"),
    ("risk limit", "risk_limit"),  # core/risk.py
    ("trading", "trading_state"),
)
REFUSAL_CATEGORIES = (*(c for _, c in REFUSAL_PREFIXES), "other")


def refusal_category(reason: str | None) -> str:
    """The label for a refusal's reason: a fixed set of categories, never the text itself."""
    text = (reason or "").lower()
    return next((cat for prefix, cat in REFUSAL_PREFIXES if text.startswith(prefix)), "other")


def _since_start() -> float:
    return max(0.0, (workflow.now() - workflow.info().start_time).total_seconds())


def record_decision(status: OrderStatus, reason: str | None, kind: str | None = None) -> None:
    """The order was decided (``place`` answers): accepted, or refused with its category."""
    meter = workflow.metric_meter()
    accepted = status != OrderStatus.REJECTED
    outcome = "accepted" if accepted else "refused"
    meter.create_counter(telemetry.ORDERS_PLACED, "Orders decided (accepted or refused)").add(
        1, {"outcome": outcome}
    )
    if accepted:
        meter.create_counter(telemetry.ORDERS_ACCEPTED, "Orders accepted (held)").add(1)
    else:
        meter.create_counter(telemetry.ORDERS_REFUSED, "Orders refused, by reason").add(
            1, {"reason": kind or refusal_category(reason)}
        )
    meter.create_histogram_float(
        telemetry.PLACEMENT_SECONDS, "Workflow start to the order's decision", "s"
    ).record(_since_start(), {"outcome": outcome})


def record_terminal(status: OrderStatus, pivoted: bool) -> None:
    """The order ended; orders that reached the broker also record their time to settle."""
    meter = workflow.metric_meter()
    meter.create_counter(telemetry.ORDERS_TERMINAL, "Orders ended, by status").add(
        1, {"status": status.value}
    )
    if pivoted:
        meter.create_histogram_float(
            telemetry.SETTLE_SECONDS, "Workflow start to the order's end, past the pivot", "s"
        ).record(_since_start(), {"status": status.value})
