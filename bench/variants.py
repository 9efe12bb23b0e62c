"""Bench-only workflow variants: what the saga would gain from a change to its workflow code.

``LocalStepsOrderWorkflow`` is the product's OrderWorkflow with the lock, ledger and orders-table
steps run as local activities (on the orders worker, no task-queue round trip); the broker calls
stay ordinary activities on the broker queue. It is registered under the product's workflow name
so the product's OrderClient drives it unchanged. It lives here and not in workflows/ because it
changes the saga: a local activity is retried by the worker inside one workflow task, and its
start-to-close must stay short, so a slow lock wait holds the workflow task's heartbeat.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.lock import AcquireLockInput, LockActivities, ReleaseLockInput
    from activities.orders import OrderStoreActivities, UpdateOrderInput
    from workflows.models import OrderInput, OrderState
    from workflows.order import LEDGER_RETRY, LOCK_RETRY, OrderWorkflow


@workflow.defn(name="OrderWorkflow")
class LocalStepsOrderWorkflow(OrderWorkflow):
    @workflow.run
    async def run(self, inp: OrderInput) -> OrderState:
        return await super().run(inp)

    async def _acquire_lock(self) -> int:
        req = self._state.request
        res = await workflow.execute_local_activity_method(
            LockActivities.acquire_lock,
            AcquireLockInput(
                account_id=req.account_id,
                owner=req.key,
                ttl_ms=self._cfg.lock_ttl_ms,
                wait_ms=self._cfg.lock_wait_ms,
            ),
            start_to_close_timeout=timedelta(milliseconds=self._cfg.lock_wait_ms + 5_000),
            retry_policy=LOCK_RETRY,
        )
        return int(res.fence)

    async def _release_lock(self) -> None:
        req = self._state.request
        await workflow.execute_local_activity_method(
            LockActivities.release_lock,
            ReleaseLockInput(account_id=req.account_id, owner=req.key),
            start_to_close_timeout=timedelta(seconds=5),
            retry_policy=LOCK_RETRY,
        )

    async def _ledger(self, method: Any, arg: Any) -> Any:
        return await workflow.execute_local_activity_method(
            method, arg, start_to_close_timeout=timedelta(seconds=30), retry_policy=LEDGER_RETRY
        )

    async def _store(self, status: Any) -> None:
        st, req = self._state, self._state.request
        await workflow.execute_local_activity_method(
            OrderStoreActivities.update_order,
            UpdateOrderInput(
                account_id=req.account_id,
                order_id=req.order_id,
                status=status.value,
                reason=st.reason,
                broker_order_id=st.broker_order_id,
                filled_qty=st.filled_qty,
                filled_notional=st.filled_notional,
                fees=st.fees,
            ),
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=LEDGER_RETRY,
        )
