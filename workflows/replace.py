"""Replace: a live limit order amended (a new total quantity, a new limit, or both) at the
broker with Alpaca's PATCH, which answers with a new broker order that ``replaces`` the old one.

The steps (docs/ARCHITECTURE.md has the picture):

1. ask   book what the broker has now: the replace starts from the order's latest fills;
2. grow  under the account lock, the hold grows (compare-and-set, fenced like a reserve) to cover
         the larger of the old and the new order: whichever the broker ends up working, the
         money is there;
3. send  the replace, as ``<key>/r<n>`` (n: this order's replace number); a refusal (the order
         filled or was canceled first, say) shrinks the hold back and leaves the order as it was;
4. switch the replaced broker order's final fills are booked on the order, then the order
         follows the new broker order, whose cumulative fills add to the replaced ones';
5. settle the hold shrinks to what the new order can still cost.

If the old order filled while the replace was on its way (between the ask and the broker's
book), the new order's quantity (the total asked less the fills seen) is too large by those
fills: the saga replaces it again, at once, with the same target.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.broker import BrokerActivities, ReplaceOrderInput
    from activities.ledger import LedgerActivities, ResizeHoldInput
    from core import errors
    from core.money import (
        MAX_LIMIT_PRICE,
        MAX_NOTIONAL,
        MAX_ORDER_QTY,
        PRICE_PLACES,
        SHARE_PLACES,
        InvalidAmount,
        canonical,
        exact_product,
        parse_bounded,
    )
    from core.orderkey import MAX_REPLACES
    from core.risk import order_notional
    from core.settings import SagaSettings
    from core.statuses import OrderStatus
    from workflows.following import FollowBroker
    from workflows.models import BrokerReport, OrderState, ReplaceRequest, ReplaceResult
    from workflows.pricing import hold_budget
    from workflows.saga_base import (
        BROKER_SUBMIT_RETRY,
        STEP_ERRORS,
        Refusal,
        error_message,
        error_type,
    )

# Runs that take a replace mark their history here (an order replaced is followed through the
# broker orders it has had: state fields every run reads, 0 and None until a replace).
REPLACE_PATCH = "replace-v1"
REPLACE_REFUSED = "ReplaceRefused"
# Replaces of one request in a row before the saga stops chasing fills that raced them.
MAX_CHASE = 3


# ---------------------------------------------------------------- pure rules


def replace_problem(state: OrderState, ask: ReplaceRequest) -> str | None:
    """Why ``ask`` cannot replace the order as it stands (None: it can be tried)."""
    st, req = state, state.request
    if st.terminal:
        return f"order is already {st.status.value}"
    if st.fx_rate is not None:  # its won were converted at the reserve's rate (docs/LEDGER.md)
        return f"an order paid in {st.pay_asset} cannot be replaced: cancel it and place another"
    if req.order_type != "limit":
        return "only a limit order can be replaced"
    if st.status == OrderStatus.NEEDS_ATTENTION:
        return "order is parked; resume it first"
    if st.cancel_requested:
        return "order is being canceled"
    if st.status == OrderStatus.QUEUED:
        return "order is queued for the market's open; cancel it and place a new one"
    if st.broker_order_id is None:
        return "order is not at the broker yet; try again in a moment"
    if st.replaces >= MAX_REPLACES:
        return f"order was replaced {MAX_REPLACES} times already"
    if ask.qty is None and ask.limit_price is None:
        return "give a new quantity, a new limit price, or both"
    try:
        qty = st.order_qty if ask.qty is None else _qty(ask.qty)
        limit = st.limit_sent if ask.limit_price is None else _price(ask.limit_price)
    except InvalidAmount as exc:
        return str(exc)
    assert limit is not None  # a limit order's
    if qty <= st.filled_qty:
        return f"quantity {canonical(qty)} is not above the {canonical(st.filled_qty)} filled"
    if exact_product(qty, limit) > MAX_NOTIONAL:
        return f"the order's notional would exceed the maximum of {MAX_NOTIONAL}"
    if qty == st.order_qty and limit == st.limit_sent:
        return "nothing changes: the order already has that quantity and limit"
    return None


def _qty(value: object) -> Decimal:
    return parse_bounded(value, "quantity", places=SHARE_PLACES, maximum=MAX_ORDER_QTY)


def _price(value: object) -> Decimal:
    return parse_bounded(value, "limit price", places=PRICE_PLACES, maximum=MAX_LIMIT_PRICE)


@dataclass(frozen=True)
class ReplacePlan:
    """One replace as sent: the new broker order's quantity and limit, the order's total, and
    the hold while it is on its way (covering the old order and the new one)."""

    qty: Decimal  # the order's total quantity asked
    limit: Decimal
    leg_qty: Decimal  # the new broker order's: the total less what has filled
    grow_budget: Decimal
    grow_qty: Decimal
    grow_bound: Decimal


def plan_replace(st: OrderState, qty: Decimal, limit: Decimal, saga: SagaSettings) -> ReplacePlan:
    """The replace of an order (with its fills as booked) to ``qty`` in all at ``limit``."""
    side, bound = st.request.side, st.bound
    assert bound is not None  # a limit order's
    leg_qty = qty - st.filled_qty
    new_budget = hold_budget(
        side, qty=qty, filled_qty=st.filled_qty, filled_notional=st.filled_notional,
        limit=limit, saga=saga,
    )  # fmt: skip
    widest = max(bound, limit) if side == "buy" else min(bound, limit)
    return ReplacePlan(
        qty=qty,
        limit=limit,
        leg_qty=leg_qty,
        grow_budget=max(st.held, new_budget),
        grow_qty=max(st.order_qty, qty),
        grow_bound=widest,
    )


def settled_budget(st: OrderState, saga: SagaSettings) -> Decimal:
    """The hold's budget once the broker works the new order: what the order can still cost."""
    return hold_budget(
        st.request.side, qty=st.order_qty, filled_qty=st.filled_qty,
        filled_notional=st.filled_notional, limit=st.limit_sent, saga=saga,
    )  # fmt: skip


# ---------------------------------------------------------------- the saga's steps


class ReplaceOrder(FollowBroker):
    """The follow loop's replace (``_replace``), asked for by the ``replace`` update."""

    _replace_asked: ReplaceRequest | None
    _replace_answer: ReplaceResult | None

    def _lift(self, report: BrokerReport) -> BrokerReport | None:
        """A broker order's report as the order's: None for a broker order it replaced (its
        fills are booked already), the current one's fills added to the replaced ones'."""
        st = self._state
        if not st.replaced_ids:
            return report
        if report.broker_order_id in st.replaced_ids:
            return None
        return report.model_copy(
            update={
                "filled_qty": report.filled_qty + st.prior_filled_qty,
                "filled_notional": report.filled_notional + st.prior_filled_notional,
            }
        )

    def _answer_replace(self, accepted: bool, detail: str) -> None:
        st = self._state
        self._note(f"replace {'done' if accepted else 'refused'}: {detail}")
        self._replace_answer = ReplaceResult(
            accepted=accepted,
            status=st.status,
            qty=st.order_qty,
            limit_price=st.limit_sent,
            held=st.held,
            broker_order_id=st.broker_order_id,
            detail=detail,
        )
        self._replace_asked = None

    async def _replace(self) -> BrokerReport | None:
        """Carry out the replace asked for; the broker's final report if the order ended."""
        ask = self._replace_asked
        assert ask is not None
        workflow.patched(REPLACE_PATCH)
        st = self._state
        qty = st.order_qty if ask.qty is None else _qty(ask.qty)
        limit = st.limit_sent if ask.limit_price is None else _price(ask.limit_price)
        assert limit is not None
        detail = ""
        for _ in range(MAX_CHASE):
            view = await self._ask_broker()
            if view.order is not None:
                self._reports.append(self._report_from(view.order, "poll"))
            reports, self._reports = self._reports, []
            final = await self._apply_reports(reports)
            if final is not None or st.status == OrderStatus.NEEDS_ATTENTION:
                self._answer_replace(False, f"the order is {final.status if final else 'parked'}")
                return final
            if qty <= st.filled_qty:
                if not detail:
                    self._answer_replace(False, f"{canonical(st.filled_qty)} filled already")
                    return None
                # Fills that raced the replace reached the quantity asked: the rest is canceled.
                st.cancel_requested = True
                self._note("fills that raced the replace reached its quantity; canceling the rest")
                break
            plan = plan_replace(st, qty, limit, self._cfg)
            outcome = await self._replace_once(plan)
            if isinstance(outcome, Refusal):
                self._answer_replace(bool(detail), detail or outcome.reason)
                return None
            final, raced = outcome
            detail = f"{canonical(st.order_qty)} at {st.limit_sent} as {st.broker_order_id}"
            if final is not None or not raced:
                break
            self._note("the replaced order filled while the replace was on its way; again")
        self._answer_replace(True, detail)
        return final

    async def _replace_once(self, plan: ReplacePlan) -> Refusal | tuple[BrokerReport | None, bool]:
        """One replace at the broker: grow, send, switch, settle. A refusal (the hold could not
        grow, the broker said no) leaves the order as it was; else the new broker order's final
        report (if it ended already) and whether fills raced the replace."""
        st = self._state
        key = st.request.key
        number = st.replaces + 1
        st.replaces = number  # spent, whatever the broker says: never sent twice
        before = (st.held, st.order_qty, st.bound)
        grown = await self._resize(
            plan.grow_budget, plan.grow_qty, plan.grow_bound, f"replace:{number}:grow",
            locked=True, risk=plan,
        )  # fmt: skip
        if isinstance(grown, Refusal):
            return grown
        st.held = plan.grow_budget
        sent = ReplaceOrderInput(
            broker_order_id=st.broker_order_id or "",
            client_order_id=key.leg(number),
            qty=plan.leg_qty,
            limit_price=plan.limit,
        )
        while True:
            try:
                res = await self._broker(
                    BrokerActivities.replace_order, sent, retry=BROKER_SUBMIT_RETRY, park=False
                )
                break
            except ActivityError as err:
                if error_type(err) in (errors.BROKER_REJECTED, errors.ORDER_CONFLICT):
                    why = error_message(err, "refused")
                    await self._resize(*before, f"replace:{number}:undo", locked=False)
                    st.held = before[0]
                    return Refusal(f"the broker refused the replace: {why}")
                await self._park_for(
                    f"replace at the broker: {error_message(err, str(err))}", broker_fault=True
                )
        # The replaced order's last fills, on the order, before it follows the new one.
        ended = self._report_from(res.replaced, "replace")
        await self._apply_reports([ended])
        st.prior_filled_qty, st.prior_filled_notional = st.filled_qty, st.filled_notional
        st.replaced_ids.append(res.replaced.id)
        st.broker_order_id, st.client_order_id = res.order.id, sent.client_order_id
        st.qty, st.limit_sent = st.prior_filled_qty + res.order.qty, plan.limit
        st.price_bound = plan.grow_bound
        st.broker_status = res.order.status
        self._note(f"replaced by broker order {res.order.id}: {res.order.qty} at {plan.limit}")
        raced = st.order_qty > plan.qty  # the replaced order filled more than was seen
        budget = settled_budget(st, self._cfg)
        if not raced and budget < st.held:
            await self._resize(
                budget, st.order_qty, plan.grow_bound, f"replace:{number}:settle", locked=False
            )
            st.held = budget
        await self._store(st.status)
        final = await self._apply_reports([self._report_from(res.order, "replace")])
        return final, raced

    async def _resize(
        self,
        budget: Decimal,
        qty: Decimal,
        bound: Decimal | None,
        step: str,
        *,
        locked: bool,
        risk: ReplacePlan | None = None,
    ) -> Refusal | None:
        """Resize the order's hold; under the account lock when it may grow, with the
        pre-trade check of the replace ``risk`` (the trading state, the account's limits)."""
        st = self._state
        inp = ResizeHoldInput(
            order_key=st.request.key,
            budget=budget,
            qty=qty,
            limit_price=bound,
            idempotency_key=st.request.key.step(step),
        )
        if risk is not None:
            before = order_notional(st.order_qty, st.limit_sent) or Decimal(0)
            after = order_notional(risk.qty, risk.limit) or Decimal(0)
            inp = inp.model_copy(
                update={
                    "amended_qty": risk.qty,
                    "notional": after,
                    "added_notional": max(after - before, Decimal(0)),
                }
            )
        if not locked:
            await self._ledger(LedgerActivities.resize_hold, inp)
            return None

        async def grow(fence: int) -> None:
            fenced = inp.model_copy(update={"fence": fence})
            await self._ledger(LedgerActivities.resize_hold, fenced, park=False)

        while True:
            try:
                await self._fenced(grow, "a replace's hold")
                return None
            except STEP_ERRORS as err:
                if error_type(err) == errors.INSUFFICIENT_FUNDS:
                    return Refusal(f"insufficient funds: {error_message(err, str(err))}")
                if error_type(err) == errors.RISK_LIMIT:  # core/risk.py
                    return Refusal(error_message(err, "refused by pre-trade risk"))
                # Past the pivot nothing fails the order: it waits, visibly, and tries again.
                await self._park_for(f"resize_hold: {error_message(err, str(err))}")


def replace_refused(reason: str) -> ApplicationError:
    return ApplicationError(reason, type=REPLACE_REFUSED)


__all__ = [
    "REPLACE_PATCH",
    "REPLACE_REFUSED",
    "ReplaceOrder",
    "ReplacePlan",
    "plan_replace",
    "replace_problem",
    "replace_refused",
    "settled_budget",
]
