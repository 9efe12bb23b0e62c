"""The settlement job: every unsettled lot (a sale's proceeds) due on or before a session date
becomes settled cash (activities/ledger/settlement.py). Run daily by a Temporal Schedule
(ordersaga/schedules.py) and on demand by ``ordersaga settle [--date D]``.

Deterministic: the Postgres work is an activity, one page of lots per call; the date is the
one asked for, else the first page resolves New York's date and the later pages reuse it.
Idempotent: a lot is settled once, by compare-and-set, whichever run (or retry) gets there first.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.ledger.settlement import SettleDueInput, SettlementActivities
    from core import errors

PAGE = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
    non_retryable_error_types=[errors.INVALID_REQUEST],
)
# Pages per run before it continues as new (a long backlog keeps the history small).
PAGES_PER_RUN = 200


class SettleInput(BaseModel):
    as_of: date | None = None  # None: today in New York
    page_size: int = 500
    # carried over a continue-as-new
    after_id: int = 0
    settled: int = 0
    amounts: dict[str, Decimal] = Field(default_factory=dict)


class SettleReport(BaseModel):
    as_of: date
    settled: int
    pages: int
    amounts: dict[str, Decimal] = Field(default_factory=dict)  # settled per asset


@workflow.defn
class SettlementWorkflow:
    @workflow.run
    async def run(self, input: SettleInput) -> SettleReport:
        as_of, after_id = input.as_of, input.after_id
        settled, amounts = input.settled, dict(input.amounts)
        pages = 0
        while True:
            page = await workflow.execute_activity_method(
                SettlementActivities.settle_due,
                SettleDueInput(as_of=as_of, after_id=after_id, limit=input.page_size),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=PAGE,
            )
            pages += 1
            as_of, after_id = page.as_of, page.last_id
            settled += page.settled
            for asset, amount in page.amounts.items():
                amounts[asset] = amounts.get(asset, Decimal(0)) + amount
            if page.seen < input.page_size:
                return SettleReport(as_of=as_of, settled=settled, pages=pages, amounts=amounts)
            if pages >= PAGES_PER_RUN:
                workflow.continue_as_new(
                    input.model_copy(
                        update={
                            "as_of": as_of,
                            "after_id": after_id,
                            "settled": settled,
                            "amounts": amounts,
                        }
                    )
                )
