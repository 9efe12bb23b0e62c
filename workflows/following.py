"""The saga past the pivot: submit, find an order whose submit outcome is unknown, follow the
broker (signals make it ask, polls when they stop), book what the broker's answers show, end when
the broker says the order is final.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.broker import (
        BrokerActivities,
        CancelOrderInput,
        ReconcileOrderInput,
        ReconcileOrderResult,
        SubmitOrderInput,
    )
    from activities.ledger import (
        LedgerActivities,
        PostFillInput,
    )
    from core import errors
    from core.broker_client import BrokerOrder
    from core.money import round_cash
    from core.statuses import BROKER_FINAL, OrderStatus
    from workflows.evidence import report_problem
    from workflows.models import (
        BrokerReport,
        OrderInput,
    )
    from workflows.pricing import cumulative_fee
    from workflows.saga_base import (
        BROKER_ASK_RETRY,
        BROKER_SUBMIT_RETRY,
        POLL_BACKOFF_PATCH,
        SIGNALS_BEFORE_GIVE_UP_PATCH,
        SagaBase,
        error_message,
        error_type,
    )


class FollowBroker(SagaBase):
    """Submit and follow: the phases from the pivot on."""

    async def _submit(self) -> bool:
        """Send the order; False when it ended here (rejected, or never reached the broker)."""
        req = self._state.request
        self._pivoted = True
        self._compensations.clear()  # from here on nothing is compensated blindly
        try:
            res = await self._broker(
                BrokerActivities.submit_order,
                SubmitOrderInput(
                    client_order_id=req.key,
                    symbol=req.symbol,
                    qty=req.qty,
                    side=req.side,
                    order_type="limit" if self._state.limit_sent is not None else "market",
                    time_in_force=req.time_in_force,
                    limit_price=self._state.limit_sent,
                ),
                retry=self._submit_retry(),
                park=False,
            )
        except ActivityError as err:
            if error_type(err) == errors.BROKER_REJECTED:
                reason = error_message(err, "rejected by the broker")
                await self._void(f"broker rejected: {reason}")
                await self._finish(OrderStatus.REJECTED, f"broker rejected: {reason}")
                return False
            self._note("submit outcome unknown; asking the broker")
            return await self._find_after_unknown()
        self._reports.append(self._report_from(res.order, "submit"))
        return True

    def _submit_retry(self) -> RetryPolicy:
        """The submit's tries: as many per-attempt timeouts as fit in its total. A bound on
        attempts, not a schedule-to-close: time the submit waits in the broker queue for a free
        worker is not the broker's silence and must not turn into an unknown outcome."""
        cfg = self._cfg
        attempts = max(1, int(cfg.submit_schedule_to_close_s // cfg.submit_start_to_close_s))
        return dataclasses.replace(BROKER_SUBMIT_RETRY, maximum_attempts=attempts)

    async def _find_after_unknown(self) -> bool:
        """After an unknown submit outcome: does the broker have the order?

        It is voided only once it has stayed absent longer than any request can remain in flight,
        and the signals that arrived meanwhile are read first: one that says the broker has the
        order (its lookup lagging behind its events) buys one more grace period of asking. Only
        one: a signal is anyone's word and must not keep the customer's money held for ever.
        """
        gave_up_at = workflow.now()
        extended = False
        while True:
            view = await self._ask_broker()
            if view.order is not None:  # open or terminal: the broker has it
                self._reports.append(self._report_from(view.order, "poll"))
                return True
            waited = (workflow.now() - gave_up_at).total_seconds()
            if waited >= self._cfg.absent_grace_s:
                if (
                    not extended
                    and any(r.source == "event" for r in self._reports)
                    and workflow.patched(SIGNALS_BEFORE_GIVE_UP_PATCH)
                ):
                    extended, gave_up_at = True, workflow.now()
                    self._note("a signal says the broker has the order; asking a while longer")
                    continue
                reason = "the broker never received the order"
                await self._void(reason)
                ended = (
                    OrderStatus.CANCELED if self._state.cancel_requested else OrderStatus.REJECTED
                )
                await self._finish(ended, reason)
                return False
            await workflow.sleep(min(self._cfg.fill_poll_interval_s, self._cfg.absent_grace_s))

    async def _follow(self) -> None:
        """Book fills until the broker says the order is final, then finish it."""
        final: BrokerReport | None = None
        self._backoff = workflow.patched(POLL_BACKOFF_PATCH)
        self._poll_s = self._cfg.fill_poll_interval_s
        while final is None:
            if self._state.cancel_requested and not self._state.cancel_sent:
                await self._send_cancel()
            if self._replace_asked is not None:
                final = await self._replace()
                continue
            await self._wait_for_reports()
            reports, self._reports = self._reports, []
            final = await self._apply_reports(reports)
            why = self._should_continue_as_new() if final is None else None
            if why is not None:
                # A replace's update waits for this loop: go round and carry it out first.
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() or self._replace_asked is not None
                )
                if not self._reports and self._replace_asked is None:
                    self._note(f"continued as new ({why}); fills carried over")
                    self._continue()
        if self._replace_asked is not None:  # asked as the order ended
            self._answer_replace(False, f"the order is {final.status}")
        status = BROKER_FINAL[final.status]
        await self._void(f"broker says {final.status}")
        await self._finish(status, f"broker: {final.status}")

    def _continue(self) -> None:
        """Continue as new carrying the whole state. A versioned run (pinned to the build that
        started it) starts the new run on the deployment's target build, as a new order would:
        the carried state is plain data, which every build reads, while the history it leaves
        behind replays only on the build that wrote it."""
        versioned = workflow.info().get_current_deployment_version() is not None
        workflow.continue_as_new(
            OrderInput(request=self._state.request, carried=self._state),
            initial_versioning_behavior=(
                workflow.ContinueAsNewVersioningBehavior.AUTO_UPGRADE if versioned else None
            ),
        )

    async def _wait_for_reports(self) -> None:
        """Until a report or a cancel arrives, or the poll interval passes: then ask the broker.

        The interval backs off while the broker has no news (each quiet poll doubles it, up to
        ``fill_poll_max_interval_s``) and is back at ``fill_poll_interval_s`` on any news: a
        resting order costs the broker's rate limit a few asks an hour, not 720."""
        try:
            await workflow.wait_condition(
                lambda: (
                    bool(self._reports)
                    or (self._state.cancel_requested and not self._state.cancel_sent)
                    or self._replace_asked is not None
                ),
                timeout=timedelta(seconds=self._poll_s),
            )
            self._poll_s = self._cfg.fill_poll_interval_s  # a report or a cancel: news
        except TimeoutError:
            # Events stopped (lost, or the listener is down): ask the broker ourselves.
            view = await self._ask_broker()
            if view.order is not None:
                report = self._report_from(view.order, "poll")
                if self._backoff and not self._is_news(report):
                    cfg = self._cfg  # a maximum below the interval leaves the interval as is
                    ceiling = max(cfg.fill_poll_max_interval_s, cfg.fill_poll_interval_s)
                    self._poll_s = min(self._poll_s * 2, ceiling)
                else:
                    self._poll_s = self._cfg.fill_poll_interval_s
                self._reports.append(report)

    async def _apply_reports(self, reports: list[BrokerReport]) -> BrokerReport | None:
        """Book the largest cumulative fill among the reports; the final report, if any."""
        if self._guarded:
            reports = await self._evidence(reports)
        if not reports:
            return None
        best = max(reports, key=lambda r: r.filled_qty)
        final = next((r for r in reports if r.status in BROKER_FINAL), None)
        if best.broker_order_id and not self._state.broker_order_id:
            self._state.broker_order_id = best.broker_order_id
            if self._state.status == OrderStatus.ACCEPTED:
                self._set_status(OrderStatus.SUBMITTED, f"broker order {best.broker_order_id}")
            await self._store(self._state.status)
        if final is not None and final.filled_qty > best.filled_qty:
            best = final
        self._state.broker_status = (final or best).status
        await self._book(best)
        return final

    async def _evidence(self, reports: list[BrokerReport]) -> list[BrokerReport]:
        """The reports that may be booked: only the broker's own answers to our calls.

        A signalled report is anyone's word (the Temporal frontend takes signals from whoever
        reaches it), so it is never booked: one that brings news (a fill or a status the order
        has not seen) makes the saga ask the broker at once, and the answer is booked. An answer
        of the broker's that does not fit the order (``_report_problem``) parks it.
        """
        kept: list[BrokerReport] = []
        news = False
        for report in reports:
            if report.source == "event":
                news = news or self._is_news(report)
                continue
            problem = report_problem(self._state, report, self._cfg)
            if problem is None:
                kept.append(report)
            else:
                await self._park_for(f"the broker's {report.source} answer: {problem}")
        if news:
            view = await self._ask_broker()
            if view.order is not None:
                answer = self._report_from(view.order, "poll")
                problem = report_problem(self._state, answer, self._cfg)
                if problem is None:
                    kept.append(answer)
                else:
                    await self._park_for(f"the broker's answer: {problem}")
        return kept

    def _is_news(self, report: BrokerReport) -> bool:
        st = self._state
        return report.filled_qty != st.filled_qty or report.status != st.broker_status

    async def _book(self, report: BrokerReport) -> None:
        """Post the increase of the broker's cumulative fill (booked once, whoever reports it)."""
        st, req = self._state, self._state.request
        if report.filled_qty <= st.filled_qty:
            return
        cum_cash = round_cash(report.filled_notional)
        cum_fee = cumulative_fee(req.side, report.filled_notional, self._cfg)
        res = await self._ledger(
            LedgerActivities.post_fill,
            PostFillInput(
                order_key=req.key,
                cum_qty=report.filled_qty,
                cum_notional=report.filled_notional,
                cum_fee=cum_fee,
            ),
        )
        st.filled_qty, st.filled_notional, st.fees = (
            report.filled_qty,
            report.filled_notional,
            cum_fee,
        )
        st.posted_cash = res.posted_cash
        total = st.order_qty
        if st.filled_qty < total and st.status != OrderStatus.CANCEL_REQUESTED:
            self._set_status(OrderStatus.PARTIALLY_FILLED, f"filled {st.filled_qty}/{total}")
        else:
            self._note(f"filled {st.filled_qty}/{total} for {cum_cash} USD")
        await self._store(st.status)

    async def _send_cancel(self) -> None:
        self._state.cancel_sent = True
        res = await self._broker(
            BrokerActivities.cancel_order,
            CancelOrderInput(
                client_order_id=self._state.leg_id,
                broker_order_id=self._state.broker_order_id,
            ),
            retry=BROKER_ASK_RETRY,
        )
        if res.order is not None:
            self._reports.append(self._report_from(res.order, "cancel"))

    async def _ask_broker(self) -> ReconcileOrderResult:
        return await self._broker(
            BrokerActivities.reconcile_order,
            ReconcileOrderInput(client_order_id=self._state.leg_id),
            retry=BROKER_ASK_RETRY,
            ask=True,
        )

    def _report_from(self, order: BrokerOrder, source: str) -> BrokerReport:
        """The broker's answer about one of the order's broker orders, as the order's report
        (a replaced order's cumulative fills span its broker orders: ``_lift``)."""
        report = BrokerReport(
            source=source,  # type: ignore[arg-type]
            broker_order_id=order.id,
            status=order.status,
            filled_qty=order.filled_qty,
            filled_notional=order.filled_notional,
            terminal=order.status in BROKER_FINAL,
        )
        return self._lift(report) or report

    def _lift(self, report: BrokerReport) -> BrokerReport | None:
        return report  # ReplaceOrder's, for an order that was replaced

    async def _replace(self) -> BrokerReport | None:
        raise NotImplementedError  # ReplaceOrder's

    def _answer_replace(self, accepted: bool, detail: str) -> None:
        raise NotImplementedError  # ReplaceOrder's
