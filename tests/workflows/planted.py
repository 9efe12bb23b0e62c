"""A workflow with a planted bug, in a module of its own: the sandbox imports it afresh."""

from __future__ import annotations

from decimal import Decimal

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.ledger import ReserveResult
    from workflows.models import OrderInput, OrderState
    from workflows.order import OrderWorkflow
    from workflows.saga_base import Refusal


@workflow.defn(name="OrderWorkflow")
class PlantedBugOrderWorkflow(OrderWorkflow):
    """The saga with a bug right after the reserve: a plain KeyError, as a typo would raise."""

    @workflow.run
    async def run(self, inp: OrderInput) -> OrderState:
        return await super().run(inp)

    async def _reserve_under_lock(self, asset: str, amount: Decimal) -> ReserveResult | Refusal:
        await super()._reserve_under_lock(asset, amount)
        raise KeyError("a bug")


@workflow.defn(name="LazyImportWorkflow")
class LazyImportWorkflow:
    """Imports modules the way a client object's ``__del__`` does when it is collected in the
    middle of a run: lazily, from inside the sandbox. Answers each module's identity."""

    @workflow.run
    async def run(self, names: list[str]) -> list[int]:
        return [id(__import__(name, fromlist=["_"])) for name in names]
