"""Bench-only workflow variants: the saga as it was before a change, to measure the change.

``OrdinaryStepsOrderWorkflow`` is the product's OrderWorkflow with every quote, lock, ledger and
orders-table step an ordinary activity on the orders queue, as the product ran them before it
took them as local activities (``OrderWorkflow._step``); runs started before that change still
replay this way. It is registered under the product's workflow name so the product's
OrderClient drives it unchanged.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.models import OrderInput, OrderState
    from workflows.order import OrderWorkflow


@workflow.defn(name="OrderWorkflow")
class OrdinaryStepsOrderWorkflow(OrderWorkflow):
    @workflow.run
    async def run(self, inp: OrderInput) -> OrderState:
        return await super().run(inp)

    def _use_local_steps(self) -> bool:
        return False
