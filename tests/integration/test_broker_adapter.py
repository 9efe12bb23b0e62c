"""BrokerActivities against the real simulator over real sockets.

Each fault test drives retries the way Temporal would (call the activity again after a retryable
ApplicationError) and ends by counting the broker's orders for that client order id: exactly one.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from activities.broker import (
    BrokerActivities,
    CancelOrderInput,
    GetBrokerOrdersInput,
    ListBrokerOrdersInput,
    ListBrokerOrdersPageInput,
    ReconcileOrderInput,
    ReplaceOrderInput,
    SubmitOrderInput,
)
from core import errors
from core.broker_client import BrokerClient
from tests.support.brokersim import BrokerSim, brokersim_fixture

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Matching runs only when a test asks (POST /admin/tick), so fills are deterministic.
sim = brokersim_fixture(scope="module", fill_model={"mode": "instant", "auto": False})

NO_FAULTS: dict[str, Any] = {
    "latency_ms": 0,
    "jitter_ms": 0,
    "spike_prob": 0.0,
    "hang_prob": 0.0,
    "error_5xx_prob": 0.0,
    "drop_reply_prob": 0.0,
    "late_prob": 0.0,
    "unreachable": False,
}
TIMEOUT_S = 0.4
T = TypeVar("T")


@pytest_asyncio.fixture(loop_scope="session")
async def client(sim: BrokerSim) -> AsyncIterator[BrokerClient]:
    async with BrokerClient(
        sim.url,
        key_id=sim.key_id,
        secret_key=sim.secret_key,
        connect_timeout_s=TIMEOUT_S,
        request_timeout_s=TIMEOUT_S,
    ) as broker_client:
        yield broker_client
    await sim.admin("PUT", "/admin/faults", NO_FAULTS)


@pytest.fixture
def acts(client: BrokerClient) -> BrokerActivities:
    return BrokerActivities(client)


def new_id() -> str:
    return f"ord-{uuid.uuid4().hex[:12]}"


def market_buy(order_id: str, qty: str = "1") -> SubmitOrderInput:
    return SubmitOrderInput(client_order_id=order_id, symbol="AAPL", qty=Decimal(qty), side="buy")


def resting_limit_buy(order_id: str) -> SubmitOrderInput:
    # Far enough below the market never to fill, close enough (< 50%) not to be rejected.
    return SubmitOrderInput(
        client_order_id=order_id,
        symbol="MSFT",
        qty=Decimal("2"),
        side="buy",
        order_type="limit",
        time_in_force="gtc",
        limit_price=Decimal("300.00"),
    )


async def faults(sim: BrokerSim, **config: Any) -> None:
    await sim.admin("PUT", "/admin/faults", {**NO_FAULTS, **config})


async def orders_for(sim: BrokerSim, client_order_id: str) -> list[dict[str, Any]]:
    orders = await sim.admin("GET", "/v2/orders?status=all&limit=500")
    return [o for o in orders if o["client_order_id"] == client_order_id]


async def like_temporal(
    call: Callable[[], Awaitable[T]],
    *,
    heal: Callable[[], Awaitable[None]] | None = None,
    heal_after: int = 2,
    attempts: int = 10,
) -> tuple[T, list[str]]:
    """Call until it succeeds, as Temporal retries; ``heal`` lifts the fault after some attempts.

    Returns the result and the retryable error types seen, so a test can show the fault bit.
    """
    seen: list[str] = []
    try:
        for attempt in range(attempts):
            if heal is not None and attempt == heal_after:
                await heal()
            try:
                return await call(), seen
            except ApplicationError as exc:
                if exc.non_retryable:
                    raise
                seen.append(exc.type or "")
    finally:
        if heal is not None:
            await heal()  # the test counts orders afterwards, without faults
    raise AssertionError(f"still failing after {attempts} attempts: {seen}")


async def test_duplicate_submit_returns_the_same_broker_order(
    sim: BrokerSim, acts: BrokerActivities
) -> None:
    order_id = new_id()
    first = await acts.submit_order(market_buy(order_id))
    second = await acts.submit_order(market_buy(order_id))
    assert second.broker_order_id == first.broker_order_id
    assert len(await orders_for(sim, order_id)) == 1


async def test_same_id_different_order_is_a_conflict(acts: BrokerActivities) -> None:
    order_id = new_id()
    await acts.submit_order(market_buy(order_id, "1"))
    with pytest.raises(ApplicationError) as info:
        await acts.submit_order(market_buy(order_id, "2"))
    assert info.value.type == errors.ORDER_CONFLICT
    assert info.value.non_retryable


async def test_rejection_is_non_retryable_with_reason(
    sim: BrokerSim, acts: BrokerActivities
) -> None:
    order_id = new_id()
    bad = SubmitOrderInput(client_order_id=order_id, symbol="XYZ", qty=Decimal(1), side="buy")
    with pytest.raises(ApplicationError) as info:
        await acts.submit_order(bad)
    assert info.value.type == errors.BROKER_REJECTED
    assert info.value.non_retryable
    assert 'asset "XYZ" not found' in str(info.value)
    assert await orders_for(sim, order_id) == []


async def test_wrong_keys_are_a_non_retryable_auth_error(sim: BrokerSim) -> None:
    async with BrokerClient(sim.url, key_id="nope", secret_key="nope") as wrong:
        with pytest.raises(ApplicationError) as info:
            await BrokerActivities(wrong).submit_order(market_buy(new_id()))
    assert info.value.type == errors.BROKER_AUTH
    assert info.value.non_retryable


async def test_submit_through_a_hang(sim: BrokerSim, acts: BrokerActivities) -> None:
    order_id = new_id()
    await faults(sim, hang_prob=1.0)
    result, seen = await like_temporal(
        lambda: acts.submit_order(market_buy(order_id)), heal=lambda: faults(sim)
    )
    assert seen and set(seen) == {errors.BROKER_OUTCOME_UNKNOWN}
    assert [o["id"] for o in await orders_for(sim, order_id)] == [result.broker_order_id]


async def test_submit_through_5xx(sim: BrokerSim, acts: BrokerActivities) -> None:
    order_id = new_id()
    await faults(sim, seed=7, error_5xx_prob=0.6)
    result, seen = await like_temporal(
        lambda: acts.submit_order(market_buy(order_id)), heal=lambda: faults(sim), heal_after=5
    )
    assert errors.BROKER_OUTCOME_UNKNOWN in seen
    assert [o["id"] for o in await orders_for(sim, order_id)] == [result.broker_order_id]


async def test_submit_through_dropped_replies(sim: BrokerSim, acts: BrokerActivities) -> None:
    order_id = new_id()
    await faults(sim, drop_reply_prob=1.0)
    result, seen = await like_temporal(
        lambda: acts.submit_order(market_buy(order_id)), heal=lambda: faults(sim)
    )
    # The first attempt executed at the broker; later attempts found it instead of re-creating.
    assert seen and set(seen) == {errors.BROKER_OUTCOME_UNKNOWN}
    assert [o["id"] for o in await orders_for(sim, order_id)] == [result.broker_order_id]


async def test_submit_through_random_faults_with_a_seed(
    sim: BrokerSim, acts: BrokerActivities
) -> None:
    order_id = new_id()
    await faults(sim, seed=11, error_5xx_prob=0.3, drop_reply_prob=0.4, latency_ms=5)
    result, _ = await like_temporal(
        lambda: acts.submit_order(market_buy(order_id)), heal=lambda: faults(sim), heal_after=30
    )
    assert [o["id"] for o in await orders_for(sim, order_id)] == [result.broker_order_id]


LATE_MS = 900


async def wait_until_at_broker(client: BrokerClient, order_id: str) -> str:
    for _ in range(100):
        order = await client.get_order_by_client_id(order_id)
        if order is not None:
            return order.id
        await asyncio.sleep(0.02)
    raise AssertionError(f"late order {order_id} never reached the broker")


async def test_late_order_found_by_the_retry(
    sim: BrokerSim, acts: BrokerActivities, client: BrokerClient
) -> None:
    order_id = new_id()
    await faults(sim, late_prob=1.0, late_ms=LATE_MS)
    with pytest.raises(ApplicationError) as info:
        await acts.submit_order(market_buy(order_id))
    assert info.value.type == errors.BROKER_OUTCOME_UNKNOWN
    assert not info.value.non_retryable
    await faults(sim)
    late_id = await wait_until_at_broker(client, order_id)
    result = await acts.submit_order(market_buy(order_id))
    assert result.broker_order_id == late_id
    assert len(await orders_for(sim, order_id)) == 1


async def test_retry_that_beats_the_late_order(sim: BrokerSim, acts: BrokerActivities) -> None:
    order_id = new_id()
    await faults(sim, late_prob=1.0, late_ms=LATE_MS)
    with pytest.raises(ApplicationError):
        await acts.submit_order(market_buy(order_id))
    await faults(sim)
    result = await acts.submit_order(market_buy(order_id))
    # Let the held request execute too (the simulator handles no trading request any more):
    # the broker must refuse it as a duplicate.
    await sim.held_drained("late")
    assert [o["id"] for o in await orders_for(sim, order_id)] == [result.broker_order_id]


async def test_submit_while_unreachable_then_recovered(
    sim: BrokerSim, acts: BrokerActivities
) -> None:
    order_id = new_id()
    await faults(sim, unreachable=True)
    result, seen = await like_temporal(
        lambda: acts.submit_order(market_buy(order_id)), heal=lambda: faults(sim)
    )
    assert seen
    assert [o["id"] for o in await orders_for(sim, order_id)] == [result.broker_order_id]


async def test_submit_while_broker_down_then_restarted(
    sim: BrokerSim, acts: BrokerActivities
) -> None:
    order_id = new_id()
    sim.stop()
    try:
        with pytest.raises(ApplicationError) as info:
            await acts.submit_order(market_buy(order_id))
    finally:
        sim.restart()
    assert info.value.type == errors.BROKER_UNAVAILABLE
    assert not info.value.non_retryable
    assert info.value.category == ApplicationErrorCategory.BENIGN  # an expected retry
    result = await acts.submit_order(market_buy(order_id))
    assert [o["id"] for o in await orders_for(sim, order_id)] == [result.broker_order_id]


async def test_cancel_open_order(sim: BrokerSim, acts: BrokerActivities) -> None:
    order_id = new_id()
    submitted = await acts.submit_order(resting_limit_buy(order_id))
    cancel = await acts.cancel_order(
        CancelOrderInput(client_order_id=order_id, broker_order_id=submitted.broker_order_id)
    )
    assert cancel.status in ("pending_cancel", "canceled")
    await sim.admin("POST", "/admin/tick")
    after = await acts.reconcile_order(ReconcileOrderInput(client_order_id=order_id))
    assert after.order is not None and after.order.status == "canceled"
    again = await acts.cancel_order(CancelOrderInput(client_order_id=order_id))
    assert again.status == "canceled"


async def test_cancel_filled_order_answers_filled(sim: BrokerSim, acts: BrokerActivities) -> None:
    order_id = new_id()
    await acts.submit_order(market_buy(order_id, "3"))
    await sim.admin("POST", "/admin/tick")
    cancel = await acts.cancel_order(CancelOrderInput(client_order_id=order_id))
    assert cancel.status == "filled"
    assert cancel.order is not None
    assert cancel.order.filled_qty == Decimal(3)
    assert cancel.order.filled_notional > 0


def replace_of(broker_order_id: str, order_id: str, n: int = 1) -> ReplaceOrderInput:
    """The resting MSFT buy's n-th replacement: 3 shares at 301."""
    return ReplaceOrderInput(
        broker_order_id=broker_order_id,
        client_order_id=f"{order_id}/r{n}",
        qty=Decimal(3),
        limit_price=Decimal("301.00"),
    )


async def test_replace_makes_one_replacement_and_reports_the_replaced_orders_end(
    sim: BrokerSim, acts: BrokerActivities
) -> None:
    order_id = new_id()
    submitted = await acts.submit_order(resting_limit_buy(order_id))
    first = await acts.replace_order(replace_of(submitted.broker_order_id, order_id))
    assert (first.order.qty, first.order.limit_price) == (Decimal(3), Decimal("301.00"))
    assert first.order.replaces == submitted.broker_order_id
    assert (first.replaced.status, first.replaced.replaced_by) == ("replaced", first.order.id)
    # Retried (its answer lost): the same replacement, found by its client order id.
    again = await acts.replace_order(replace_of(submitted.broker_order_id, order_id))
    assert again.order.id == first.order.id
    assert len(await orders_for(sim, f"{order_id}/r1")) == 1


async def test_replace_through_dropped_replies_makes_one_replacement(
    sim: BrokerSim, acts: BrokerActivities
) -> None:
    order_id = new_id()
    submitted = await acts.submit_order(resting_limit_buy(order_id))
    await faults(sim, drop_reply_prob=1.0)
    result, seen = await like_temporal(
        lambda: acts.replace_order(replace_of(submitted.broker_order_id, order_id)),
        heal=lambda: faults(sim),
    )
    assert seen and set(seen) == {errors.BROKER_OUTCOME_UNKNOWN}
    assert [o["id"] for o in await orders_for(sim, f"{order_id}/r1")] == [result.order.id]
    assert result.replaced.status == "replaced"


async def test_replace_of_a_filled_order_is_refused_and_changes_nothing(
    sim: BrokerSim, acts: BrokerActivities
) -> None:
    order_id = new_id()
    submitted = await acts.submit_order(market_buy(order_id, "2"))
    await sim.admin("POST", "/admin/tick")
    with pytest.raises(ApplicationError) as info:
        await acts.replace_order(replace_of(submitted.broker_order_id, order_id))
    assert info.value.type == errors.BROKER_REJECTED and info.value.non_retryable
    assert await orders_for(sim, f"{order_id}/r1") == []


async def test_a_replacement_id_taken_by_another_order_is_a_conflict(
    acts: BrokerActivities,
) -> None:
    order_id, other = new_id(), new_id()
    mine = await acts.submit_order(resting_limit_buy(order_id))
    theirs = await acts.submit_order(resting_limit_buy(other))
    await acts.replace_order(replace_of(theirs.broker_order_id, other))
    taken = replace_of(mine.broker_order_id, order_id).model_copy(
        update={"client_order_id": f"{other}/r1"}
    )
    with pytest.raises(ApplicationError) as info:
        await acts.replace_order(taken)
    assert info.value.type == errors.ORDER_CONFLICT and info.value.non_retryable


async def test_cancel_absent_order(acts: BrokerActivities) -> None:
    assert (await acts.cancel_order(CancelOrderInput(client_order_id=new_id()))).status == "absent"


async def test_reconcile_absent_open_terminal(sim: BrokerSim, acts: BrokerActivities) -> None:
    absent = await acts.reconcile_order(ReconcileOrderInput(client_order_id=new_id()))
    assert (absent.state, absent.order) == ("absent", None)

    resting = new_id()
    await acts.submit_order(resting_limit_buy(resting))
    opened = await acts.reconcile_order(ReconcileOrderInput(client_order_id=resting))
    assert opened.state == "open"
    assert opened.order is not None and opened.order.client_order_id == resting

    filled = new_id()
    await acts.submit_order(market_buy(filled))
    await sim.admin("POST", "/admin/tick")
    done = await acts.reconcile_order(ReconcileOrderInput(client_order_id=filled))
    assert done.state == "terminal"
    assert done.order is not None and done.order.status == "filled"


async def test_list_broker_orders_pages_through_everything(acts: BrokerActivities) -> None:
    first = await acts.submit_order(market_buy(new_id()))
    ids = [first.broker_order_id]
    for _ in range(4):
        ids.append((await acts.submit_order(market_buy(new_id()))).broker_order_id)
    after = first.order.created_at
    assert after is not None
    listed = await acts.list_broker_orders(ListBrokerOrdersInput(after=after, page_size=2))
    assert [o.id for o in listed.orders] == ids[1:]
    assert not listed.truncated


async def test_list_broker_orders_page_by_page_each_once(acts: BrokerActivities) -> None:
    """The incremental reconciler's listing: one page per call and the cursor of the next."""
    first = await acts.submit_order(market_buy(new_id()))
    ids = [first.broker_order_id]
    for _ in range(4):
        ids.append((await acts.submit_order(market_buy(new_id()))).broker_order_id)
    req = ListBrokerOrdersPageInput(after=first.order.created_at, limit=2)
    got: list[str] = []
    for _ in range(10):
        page = await acts.list_broker_orders_page(req)
        assert len(page.orders) <= 2 and not page.stalled
        got += [o.id for o in page.orders]
        if page.last:
            break
        req = req.model_copy(update={"after": page.next_after, "skip_ids": page.next_skip_ids})
    assert got == ids[1:]
    found = await acts.get_broker_orders(GetBrokerOrdersInput(broker_order_ids=[ids[0], "nope"]))
    assert [o.id for o in found.orders] == [ids[0]] and found.missing == ["nope"]
