"""The replace's pure rules (workflows/replace.py, workflows/pricing.hold_budget): what a replace
may not do, what it holds while it is on its way, and what it holds once the broker confirms."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.money import round_cash
from core.settings import SagaSettings
from core.statuses import OrderStatus
from tests.support.requests import order_request
from workflows.models import OrderState, ReplaceRequest
from workflows.pricing import cumulative_fee, hold_budget, hold_for
from workflows.replace import plan_replace, replace_problem, settled_budget

SAGA = SagaSettings()


def live(side: str = "buy", qty: str = "4", limit: str = "100", **state: object) -> OrderState:
    """A limit order at the broker, nothing filled, holding what ``hold_for`` says."""
    req = order_request(side=side, qty=D(qty), order_type="limit", limit_price=D(limit))
    hold = hold_for(req, None, SAGA)
    values: dict[str, object] = {
        "request": req,
        "status": OrderStatus.SUBMITTED,
        "broker_order_id": "b-1",
        "limit_sent": hold.limit_sent,
        "held": hold.amount,
    }
    values.update(state)
    return OrderState.model_validate(values)


@pytest.mark.parametrize(
    ("state", "ask", "says"),
    [
        (live(status=OrderStatus.SETTLED), ReplaceRequest(qty=D(5)), "already SETTLED"),
        (
            OrderState(request=order_request(), broker_order_id="b", status=OrderStatus.SUBMITTED),
            ReplaceRequest(qty=D(5)),
            "only a limit order",
        ),
        (live(status=OrderStatus.NEEDS_ATTENTION), ReplaceRequest(qty=D(5)), "parked"),
        (live(cancel_requested=True), ReplaceRequest(qty=D(5)), "being canceled"),
        (live(broker_order_id=None), ReplaceRequest(qty=D(5)), "not at the broker yet"),
        (live(status=OrderStatus.QUEUED, broker_order_id=None), ReplaceRequest(qty=D(5)), "queued"),
        (live(), ReplaceRequest(), "give a new quantity"),
        (live(), ReplaceRequest(qty=D("-1")), "must be > 0"),
        (live(), ReplaceRequest(qty=D("1.0000000001")), "decimals"),
        (live(), ReplaceRequest(limit_price=D("NaN")), "limit price"),
        (live(filled_qty=D(2)), ReplaceRequest(qty=D(2)), "not above the 2 filled"),
        (live(), ReplaceRequest(qty=D(4), limit_price=D(100)), "nothing changes"),
        (live(replaces=999), ReplaceRequest(qty=D(5)), "999 times"),
    ],
)
def test_a_replace_the_order_cannot_take_is_refused_with_its_reason(
    state: OrderState, ask: ReplaceRequest, says: str
) -> None:
    reason = replace_problem(state, ask)
    assert reason is not None and says in reason, reason


def test_a_replace_that_changes_something_may_be_tried() -> None:
    assert replace_problem(live(), ReplaceRequest(limit_price=D("100.5"))) is None
    assert replace_problem(live(filled_qty=D(1)), ReplaceRequest(qty=D(2))) is None


def test_while_on_its_way_the_hold_covers_the_larger_order_within_the_wider_bounds() -> None:
    # 1 of 4 filled at 99; the rest of the order moves to 3 more at 101 (a larger order).
    st = live(filled_qty=D(1), filled_notional=D(99))
    up = plan_replace(st, D(4), D(101), SAGA)
    assert (up.leg_qty, up.grow_qty, up.grow_bound) == (D(3), D(4), D(101))
    assert up.grow_budget == hold_budget(
        "buy", qty=D(4), filled_qty=D(1), filled_notional=D(99), limit=D(101), saga=SAGA
    )
    assert up.grow_budget > st.held
    # a smaller order keeps the hold it has (the old one may still fill) and its bounds
    down = plan_replace(st, D(2), D(98), SAGA)
    assert (down.leg_qty, down.grow_budget, down.grow_qty, down.grow_bound) == (
        D(1),
        st.held,
        D(4),
        D(100),
    )


def test_a_sells_bound_is_the_lowest_limit_and_its_budget_its_shares() -> None:
    st = live(side="sell", qty="3", limit="50")
    plan = plan_replace(st, D(5), D(48), SAGA)
    assert (plan.grow_budget, plan.grow_qty, plan.grow_bound) == (D(5), D(5), D(48))


@given(
    qty=st.decimals(min_value=D("0.001"), max_value=D(10_000), places=3),
    limit=st.decimals(min_value=D("0.01"), max_value=D(10_000), places=2),
)
def test_an_unfilled_orders_budget_is_exactly_what_it_held(qty: D, limit: D) -> None:
    """The budget formula meets the reserve's: an order that has filled nothing, replaced by
    itself, holds what ``hold_for`` held at the start (so a settle changes nothing)."""
    st = live(qty=str(qty), limit=str(limit))
    assert settled_budget(st, SAGA) == st.held


@given(
    filled=st.integers(min_value=0, max_value=9),
    price=st.decimals(min_value=D("0.01"), max_value=D(1000), places=2),
    limit=st.decimals(min_value=D("0.01"), max_value=D(1000), places=2),
)
def test_a_budget_covers_the_fills_so_far_and_the_rest_at_the_limit(
    filled: int, price: D, limit: D
) -> None:
    """What the order has paid plus the rest filled at its limit never costs more than its
    budget (fees included): the hold is never short of a fill within the order."""
    notional = price * filled
    budget = hold_budget(
        "buy", qty=D(10), filled_qty=D(filled), filled_notional=notional, limit=limit, saga=SAGA
    )
    total = notional + (10 - filled) * limit
    assert round_cash(total) + cumulative_fee("buy", total, SAGA) <= budget
