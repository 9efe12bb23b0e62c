"""Whether a broker answer fits its order: a pure check, run before anything is booked.

The saga books only the broker's own answers to its calls (a signalled report only makes it
ask); this is what such an answer must satisfy, whatever the broker's bugs or an attacker's
reach: a known status, the order's own broker order, fills on the share grid within the order's
quantity, cumulative figures that never go back, a price within the order's limit, a cost within
what is held.
"""

from __future__ import annotations

from core.fx import krw_cost
from core.money import MAX_AMOUNT, SHARE_QUANTUM, round_cash
from core.settings import SagaSettings
from core.statuses import BROKER_STATUSES
from workflows.models import BrokerReport, OrderState
from workflows.pricing import cumulative_fee


def report_problem(state: OrderState, report: BrokerReport, saga: SagaSettings) -> str | None:
    """Why a report cannot be booked as it is, or None when it fits the order."""
    st, req = state, state.request
    if report.status not in BROKER_STATUSES:
        return f"unknown status {report.status[:40]!r}"
    if st.broker_order_id is not None and report.broker_order_id != st.broker_order_id:
        return f"it names broker order {str(report.broker_order_id)[:64]!r}"
    qty, notional = report.filled_qty, report.filled_notional
    if not (qty.is_finite() and notional.is_finite()) or qty < 0 or notional < 0:
        return "negative or non-finite fills"
    if qty > st.order_qty:
        return f"filled {qty} of an order for {st.order_qty}"
    if notional > MAX_AMOUNT or qty != qty.quantize(SHARE_QUANTUM):
        return "fills out of range or finer than the share's 9 decimals"
    if (qty == 0) != (notional == 0):
        return "a notional without a quantity, or the reverse"
    if qty < st.filled_qty or notional < st.filled_notional:
        return "cumulative fills went backwards"
    # The limit binds the broker order it was sent with: a replaced order's earlier fills are
    # its replaced broker orders', within their own limits (checked when they were booked).
    limit = st.limit_sent
    leg_qty, leg_notional = qty - st.prior_filled_qty, notional - st.prior_filled_notional
    if limit is not None and req.side == "buy" and leg_notional > leg_qty * limit:
        return f"paid more than the limit {limit}"
    if limit is not None and req.side == "sell" and leg_notional < leg_qty * limit:
        return f"sold below the limit {limit}"
    if req.side == "buy":
        cost = round_cash(notional) + cumulative_fee("buy", notional, saga)
        if st.fx_rate is not None:  # paid in won: what it costs in won at the order's rate
            cost = krw_cost(cost, st.fx_rate)
        if cost > st.held:
            return f"costs {cost} with fees, more than the {st.held} held"
    return None
