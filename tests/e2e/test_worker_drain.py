"""SIGTERM drains a worker (issue 13: a claim no test backed), on the real stack: a submit in
flight at the broker when the worker process is told to stop finishes on that worker, in its
first attempt; the process exits cleanly, and the next worker takes the order on."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.testing import WorkflowEnvironment

from core.keys import RedisKeys
from core.statuses import OrderStatus
from tests.support.brokersim import StartSim, brokersim_factory  # noqa: F401
from tests.support.e2e import e2e_stack
from tests.support.workerproc import start_worker, worker_env, workers_running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def test_sigterm_lets_the_submit_in_flight_finish_then_exits(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
    tmp_path: Path,
) -> None:
    sim = brokersim_factory(
        faults={"latency_ms": 1500}, fill_model={"mode": "instant", "parts": 1, "auto": True}
    )
    async with e2e_stack(
        temporal_env.client, redis_keys, sim, "drain", worker_grace_s=10.0
    ) as stack:
        settings, oc = stack.settings, stack.orders
        env = worker_env(settings, temporal_env.client.service_client.config.target_host)
        env["ORDERSAGA_WORKER_GRACE_S"] = "10"
        log = tmp_path / "worker.log"
        worker = start_worker(env, log)
        try:
            acct = await stack.funded_account()
            limit = await stack.price("1.1")
            placed = await oc.place_order(
                account_id=acct, symbol="AAPL", side="buy", qty="1",
                order_type="limit", limit_price=limit,
            )  # fmt: skip
            handle = oc.temporal.get_workflow_handle(f"order/{acct}/{placed.order_id}")
            for _ in range(100):  # until the submit is running at the (slow) broker
                pending = (await handle.describe()).raw_description.pending_activities
                if any(
                    p.activity_type.name == "submit_order"
                    and p.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                    for p in pending
                ):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the submit never started")
            os.killpg(worker.pid, signal.SIGTERM)
            code = await asyncio.to_thread(worker.wait, 30)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        assert code == 0, log.read_text()[-2000:]
        assert "draining" in log.read_text()

        async with workers_running(temporal_env.client, settings):
            final = await oc.wait(acct, placed.order_id, timeout_s=60)
        assert final.status == OrderStatus.SETTLED, (final.status, final.reason)
        history = await handle.fetch_history()
        submits = [
            e.activity_task_scheduled_event_attributes.activity_type.name == "submit_order"
            for e in history.events
            if e.HasField("activity_task_scheduled_event_attributes")
        ]
        assert submits.count(True) == 1
        started = [
            e.activity_task_started_event_attributes.attempt
            for e in history.events
            if e.HasField("activity_task_started_event_attributes")
        ]
        completed = [
            e for e in history.events if e.HasField("activity_task_completed_event_attributes")
        ]
        # The submit's one attempt completed (the drained worker finished it); nothing timed out.
        assert started[0] == 1 and completed, started
        timed_out = [
            e for e in history.events if e.HasField("activity_task_timed_out_event_attributes")
        ]
        assert timed_out == []
