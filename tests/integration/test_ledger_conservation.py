"""Randomized sequences of ledger operations keep every invariant (hypothesis state machine).

The machine keeps a model of one customer's balances and open holds, runs each operation on the
real ledger and checks, after every step, that the customer's balances equal the model and that
check_ledger finds nothing (every asset conserved, every entry balanced, nothing unjournaled).
It runs its coroutines on an event loop of its own, with its own small pool.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal as D
from typing import Any, ClassVar

import asyncpg
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from temporalio.exceptions import ApplicationError

from activities.ledger import (
    DepositInput,
    OpenAccountInput,
    PostFillInput,
    ReserveInput,
    VoidInput,
    WithdrawInput,
    check_ledger,
)
from core import errors
from core.money import round_cash
from tests.integration.test_ledger import scratch_database
from tests.support.ledger import LedgerUnderTest

pytestmark = pytest.mark.integration

SYMBOL = "AAPL"
CASH = st.decimals(min_value=D("0.01"), max_value=D(500), places=2)
SHARES = st.decimals(min_value=D("0.001"), max_value=D(5), places=3)
PRICES = st.decimals(min_value=D(1), max_value=D(300), places=4)
FEES = st.decimals(min_value=D(0), max_value=D(2), places=2)


@dataclass
class ModelHold:
    side: str
    remaining: D
    qty: D = D(0)
    notional: D = D(0)
    cash: D = D(0)
    fee: D = D(0)


class LedgerMachine(RuleBasedStateMachine):
    dsn: ClassVar[str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.pool = self.run(self._pool())
        self.ledger = LedgerUnderTest(self.pool)
        self.account = f"sm-{uuid.uuid4().hex[:12]}"
        self.run(self.ledger.open_account(OpenAccountInput(account_id=self.account)))
        self.balance = {"USD": [D(0), D(0)], SYMBOL: [D(0), D(0)]}  # [available, held]
        self.holds: dict[str, ModelHold] = {}
        self.last_deposit: DepositInput | None = None
        self.fence = 0  # the lock's counter: each reserve carries a greater fence
        self.unsettled = D(0)  # sale proceeds not yet settled (T+1): they are not withdrawn

    async def _pool(self) -> asyncpg.Pool:
        # made inside the loop: asyncpg binds a pool to the event loop current at creation
        return await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def expect_refusal(self, coro: Any, type_: str) -> None:
        with pytest.raises(ApplicationError) as info:
            self.run(coro)
        assert info.value.type == type_

    def teardown(self) -> None:
        self.run(self.pool.close())
        self.loop.close()

    @rule(amount=CASH, asset=st.sampled_from(["USD", SYMBOL]))
    def deposit(self, amount: D, asset: str) -> None:
        inp = DepositInput(
            account_id=self.account, amount=amount, asset=asset, idempotency_key=str(uuid.uuid4())
        )
        self.run(self.ledger.deposit(inp))
        self.balance[asset][0] += amount
        self.last_deposit = inp

    @precondition(lambda self: self.last_deposit is not None)
    @rule()
    def replay_deposit(self) -> None:
        self.run(self.ledger.deposit(self.last_deposit))  # applies nothing the second time

    @rule(amount=CASH)
    def withdraw(self, amount: D) -> None:
        inp = WithdrawInput(
            account_id=self.account, amount=amount, idempotency_key=str(uuid.uuid4())
        )
        available = self.balance["USD"][0]
        if amount > available - min(available, self.unsettled):  # settled cash only
            self.expect_refusal(self.ledger.withdraw(inp), errors.INSUFFICIENT_FUNDS)
            return
        self.run(self.ledger.withdraw(inp))
        self.balance["USD"][0] -= amount

    @rule(side=st.sampled_from(["buy", "sell"]), cash=CASH, shares=SHARES)
    def reserve(self, side: str, cash: D, shares: D) -> None:
        asset, amount = ("USD", cash) if side == "buy" else (SYMBOL, shares)
        order_id = f"{self.account}/{uuid.uuid4().hex[:8]}"
        self.fence += 1
        inp = ReserveInput(
            account_id=self.account,
            order_key=order_id,
            asset=asset,
            amount=amount,
            fence=self.fence,
            idempotency_key=f"{order_id}:reserve",
            side=side,  # type: ignore[arg-type]
            symbol=SYMBOL,
        )
        if amount > self.balance[asset][0]:
            self.expect_refusal(self.ledger.reserve_funds(inp), errors.INSUFFICIENT_FUNDS)
            return
        self.run(self.ledger.reserve_funds(inp))
        self.balance[asset][0] -= amount
        self.balance[asset][1] += amount
        self.holds[order_id] = ModelHold(side=side, remaining=amount)

    @precondition(lambda self: self.holds)
    @rule(data=st.data(), qty=SHARES, price=PRICES, fee=FEES)
    def post(self, data: st.DataObject, qty: D, price: D, fee: D) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.holds)))
        hold = self.holds[order_id]
        if hold.side == "sell":
            qty = min(qty, hold.remaining)  # the broker never fills more than the order
        if qty == 0:
            return  # a fully filled sell gets no further fills
        cum_qty, cum_notional, cum_fee = hold.qty + qty, hold.notional + qty * price, hold.fee + fee
        cash = round_cash(cum_notional) - hold.cash
        inp = PostFillInput(
            order_key=order_id, cum_qty=cum_qty, cum_notional=cum_notional, cum_fee=cum_fee
        )
        if not self._fits(hold, qty, cash, fee):
            self.expect_refusal(self.ledger.post_fill(inp), errors.HOLD_STATE)
            return
        self.run(self.ledger.post_fill(inp))
        if hold.side == "buy":
            hold.remaining -= cash + fee
            self.balance["USD"][1] -= cash + fee
            self.balance[SYMBOL][0] += qty
        else:
            hold.remaining -= qty
            self.balance[SYMBOL][1] -= qty
            self.balance["USD"][0] += cash - fee
            self.unsettled += max(cash - fee, D(0))
        hold.qty, hold.notional, hold.fee = cum_qty, cum_notional, cum_fee
        hold.cash += cash

    def _fits(self, hold: ModelHold, qty: D, cash: D, fee: D) -> bool:
        if hold.side == "buy":
            return cash + fee <= hold.remaining
        return self.balance["USD"][0] + cash - fee >= 0

    @precondition(lambda self: self.holds)
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.holds)))
        hold = self.holds.pop(order_id)
        result = self.run(
            self.ledger.void_funds(
                VoidInput(order_key=order_id, idempotency_key=f"{order_id}:void")
            )
        )
        assert result.released == hold.remaining
        asset = "USD" if hold.side == "buy" else SYMBOL
        self.balance[asset][0] += hold.remaining
        self.balance[asset][1] -= hold.remaining

    @invariant()
    def balances_match_the_model(self) -> None:
        balances = self.run(self.ledger.get_balances(self.account))
        for asset, (available, held) in self.balance.items():
            row = balances.of(asset)
            assert (row.available, row.held) == (available, held), asset

    @invariant()
    def ledger_is_consistent(self) -> None:
        report = self.run(check_ledger(self.pool))
        assert not report.conservation and not report.unbalanced_entries, report.violations()
        assert report.ok, report.violations()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scratch_dsn() -> AsyncIterator[str]:
    async with scratch_database("conservation") as dsn:
        yield dsn


def test_random_operations_keep_the_ledger_consistent(scratch_dsn: str) -> None:
    LedgerMachine.dsn = scratch_dsn
    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=12,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
