"""Temporal's own floor, for comparison with the saga (bench-only; never part of the product).

``FloorWorkflow`` runs one no-op activity per entry of its ``queues`` list, in order, each on the
task queue named there: given the saga's own sequence of activity queues it has the saga's shape
with none of its work. With ``local`` it runs the steps marked there as local activities.
``MinimalWorkflow`` runs a single no-op activity.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel


class NoopInput(BaseModel):
    step: int


class NoopResult(BaseModel):
    step: int


class FloorInput(BaseModel):
    queues: list[str]
    # per step: run it as a local activity (its queue is then the workflow's own)
    local: list[bool] = []


class FloorResult(BaseModel):
    steps: int


@activity.defn(name="bench_noop")
async def noop(input: NoopInput) -> NoopResult:
    """Does nothing; retrying it is harmless."""
    return NoopResult(step=input.step)


@workflow.defn(name="BenchFloorWorkflow")
class FloorWorkflow:
    @workflow.run
    async def run(self, inp: FloorInput) -> FloorResult:
        for step, queue in enumerate(inp.queues):
            if step < len(inp.local) and inp.local[step]:
                await workflow.execute_local_activity(
                    noop, NoopInput(step=step), start_to_close_timeout=timedelta(seconds=30)
                )
                continue
            await workflow.execute_activity(
                noop,
                NoopInput(step=step),
                task_queue=queue,
                start_to_close_timeout=timedelta(seconds=30),
            )
        return FloorResult(steps=len(inp.queues))


@workflow.defn(name="BenchMinimalWorkflow")
class MinimalWorkflow:
    @workflow.run
    async def run(self) -> FloorResult:
        await workflow.execute_activity(
            noop, NoopInput(step=0), start_to_close_timeout=timedelta(seconds=30)
        )
        return FloorResult(steps=1)
