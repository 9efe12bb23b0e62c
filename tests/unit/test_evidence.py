"""Whether a broker answer fits its order (workflows/evidence.py), rule by rule."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.settings import SagaSettings
from tests.support.requests import order_request
from workflows.evidence import report_problem
from workflows.models import BrokerReport, OrderState


def resting_buy(**state: object) -> OrderState:
    """Two shares at a limit of 100, 201 held (200 + the minimum fee), at broker order b-1."""
    values: dict[str, object] = {
        "request": order_request(qty=Decimal(2), order_type="limit", limit_price=Decimal(100)),
        "broker_order_id": "b-1",
        "limit_sent": Decimal(100),
        "held": Decimal("200.50"),
    }
    values.update(state)
    return OrderState.model_validate(values)


def answer(**fields: object) -> BrokerReport:
    values: dict[str, object] = {
        "source": "poll",
        "broker_order_id": "b-1",
        "status": "partially_filled",
        "filled_qty": Decimal(1),
        "filled_notional": Decimal("99.50"),
    }
    values.update(fields)
    return BrokerReport.model_validate(values)


def test_an_answer_that_fits_is_booked() -> None:
    assert report_problem(resting_buy(), answer(), SagaSettings()) is None
    full = answer(status="filled", filled_qty=Decimal(2), filled_notional=Decimal(200))
    assert report_problem(resting_buy(), full, SagaSettings()) is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"status": "exploded"}, "unknown status"),
        ({"broker_order_id": "b-2"}, "names broker order"),
        ({"filled_qty": Decimal(1000), "filled_notional": Decimal(1)}, "of an order for"),
        ({"filled_qty": Decimal(-1)}, "negative"),
        ({"filled_qty": Decimal("1e-10"), "filled_notional": Decimal("0.01")}, "9 decimals"),
        ({"filled_qty": Decimal(0), "filled_notional": Decimal(5)}, "without a quantity"),
        ({"filled_notional": Decimal("100.01")}, "more than the limit"),
    ],
)
def test_an_answer_that_does_not_fit_is_refused(fields: dict[str, object], says: str) -> None:
    problem = report_problem(resting_buy(), answer(**fields), SagaSettings())
    assert problem is not None and says in problem


def test_cumulative_fills_never_go_back() -> None:
    booked = resting_buy(filled_qty=Decimal(1), filled_notional=Decimal("99.50"))
    back = answer(filled_qty=Decimal(1), filled_notional=Decimal("90"))
    assert "backwards" in (report_problem(booked, back, SagaSettings()) or "")


def test_a_buy_never_costs_more_than_is_held() -> None:
    thin = resting_buy(held=Decimal("150.00"))
    full = answer(status="filled", filled_qty=Decimal(2), filled_notional=Decimal(200))
    assert "held" in (report_problem(thin, full, SagaSettings()) or "")


def test_a_limit_sell_never_sells_below_its_limit() -> None:
    sell = resting_buy(
        request=order_request(
            side="sell", qty=Decimal(2), order_type="limit", limit_price=Decimal(100)
        ),
        held=Decimal(2),
    )
    low = answer(filled_notional=Decimal("99.99"))
    assert "below the limit" in (report_problem(sell, low, SagaSettings()) or "")
    assert report_problem(sell, answer(filled_notional=Decimal(101)), SagaSettings()) is None
