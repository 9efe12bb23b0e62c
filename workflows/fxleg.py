"""An order paid in won (issue 17, part 1): the FX leg of the accept phase.

A buy paid in won holds won: its dollar hold (``pricing.hold_for``) times the firm's FX ask,
rounded up to the won (``core.fx.krw_cost``). A sell paid out in won holds its shares as any
sell, and its proceeds are paid in won at the firm's bid. The rate is read in the accept phase
from the quote cache, like the stock quote (a local activity; a stale or missing quote refuses
the order, "no FX rate", holding nothing), sent with the reserve, and kept by the hold: each fill
converts at it, through the FX desk, in the fill's own journal entry, and the void refunds the
rest of the won at it (the ledger does both; docs/LEDGER.md). The rate the order records is the
ledger's answer, not this try's quote: a retried workflow task that read another rate gets the
first reserve's rate back with its amount (``first_reserve``), as it gets the first amount.

Behind ``workflow.patched(FX_LEG_PATCH)``: a run that reached the accept phase before the patch
(on a worker that did not know the ``pay`` field) replays as the USD order it was.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.marketdata import GetFxQuoteInput, MarketDataActivities
    from core.fx import PAIR, krw_cost
    from core.money import CASH_ASSET, KRW, MAX_AMOUNT
    from workflows.pricing import Hold
    from workflows.saga_base import SagaBase

FX_LEG_PATCH = "fx-leg-v1"


class FxLeg(SagaBase):
    """The accept phase's conversion of an order paid in won."""

    def _pays_in_won(self) -> bool:
        return self._state.request.pay != CASH_ASSET and workflow.patched(FX_LEG_PATCH)

    async def _in_won(self, hold: Hold) -> Hold | str:
        """The hold of an order paid in won (the rate noted in the state), or why it is refused."""
        req = self._state.request
        self._stage = "reading the FX rate"
        q = await self._step(
            MarketDataActivities.get_fx_quote,
            GetFxQuoteInput(pair=PAIR),
            start_to_close=timedelta(seconds=5),
            # As the stock quote: a few quick tries, the customer is waiting.
            retry=RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_attempts=5),
        )
        rate = q.ask if req.side == "buy" else q.bid
        if not q.fresh or rate is None or rate <= 0:
            if q.refused:
                why = f"the quote is unusable: {q.refused}"
            elif q.age_s is not None:
                why = f"the quote is stale ({q.age_s:.0f} s old)"
            else:
                why = "no quote"
            return f"no FX rate: no fresh {PAIR} quote ({why})"
        self._state.pay_asset, self._state.fx_rate = KRW, rate
        if req.side == "sell":  # the shares are held; the proceeds convert at each fill
            return hold
        won = krw_cost(hold.amount, rate)
        if won > MAX_AMOUNT:
            return f"the order would hold {won} {KRW}, more than {MAX_AMOUNT}"
        self._state.held_usd = hold.amount
        return Hold(asset=KRW, amount=won, limit_sent=hold.limit_sent)
