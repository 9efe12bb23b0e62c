"""BrokerOrder: Decimal fields, derived notional, and which statuses count as terminal."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.broker_client import BrokerOrder
from tests.unit.test_broker_client import ORDER


def test_unknown_status_is_open_never_terminal() -> None:
    order = BrokerOrder.model_validate({**ORDER, "status": "done_for_day"})
    assert order.is_open
    assert not order.is_terminal


@pytest.mark.parametrize("status", ["filled", "canceled", "expired", "rejected"])
def test_known_final_statuses_are_terminal(status: str) -> None:
    assert BrokerOrder.model_validate({**ORDER, "status": status}).is_terminal


def test_order_fields_are_decimal_and_notional_derived() -> None:
    order = BrokerOrder.model_validate(ORDER)
    assert order.order_type == "limit"
    assert order.filled_notional == Decimal("201.0")
    assert order.limit_price == Decimal("101")


def test_filled_notional_from_the_order_when_present() -> None:
    order = BrokerOrder.model_validate({**ORDER, "filled_notional": "200.99"})
    assert order.filled_notional == Decimal("200.99")


def test_unfilled_order_has_zero_notional() -> None:
    order = BrokerOrder.model_validate({**ORDER, "filled_qty": "0", "filled_avg_price": None})
    assert order.filled_notional == 0


def test_broker_inputs_recorded_before_the_rename_still_decode() -> None:
    """In-flight orders and recorded histories carry ``order_id`` for the client order id."""
    from activities.broker import CancelOrderInput, ReconcileOrderInput, SubmitOrderInput

    old = {"order_id": "alice/o1", "symbol": "AAPL", "qty": "1", "side": "buy"}
    assert SubmitOrderInput.model_validate(old).client_order_id == "alice/o1"
    assert CancelOrderInput.model_validate({"order_id": "alice/o1"}).client_order_id == "alice/o1"
    new = ReconcileOrderInput(client_order_id="alice/o1")
    assert new.model_dump() == {"client_order_id": "alice/o1"}
