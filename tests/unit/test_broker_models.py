"""BrokerOrder: Decimal fields, derived notional, and which statuses count as terminal."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from core.broker_client import BrokerOrder, InvalidTradeEvent, parse_trade_event, stream_url_for
from core.statuses import BROKER_STATUSES
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


# Alpaca's sample order (https://docs.alpaca.markets/reference/orders) with every field, as the
# simulator also sends it now; the adapter reads what it needs and ignores the rest.
ALPACA_ORDER = {
    **ORDER,
    "expires_at": "2026-03-02T21:00:00Z",
    "replaced_at": None,
    "replaced_by": None,
    "replaces": None,
    "asset_id": "b0b6dd9d-8b9b-48a9-ba46-b9d54906e415",
    "asset_class": "us_equity",
    "notional": None,
    "order_class": "simple",
    "position_intent": "buy_to_open",
    "stop_price": None,
    "extended_hours": False,
    "legs": None,
    "trail_percent": None,
    "trail_price": None,
    "hwm": None,
    "subtag": None,
    "source": None,
}


@pytest.mark.parametrize("status", sorted(BROKER_STATUSES))
def test_every_alpaca_status_and_field_parses(status: str) -> None:
    order = BrokerOrder.model_validate({**ALPACA_ORDER, "status": status})
    assert order.status == status
    # Only the statuses that end the saga's order are terminal for it: a "replaced" order's
    # money follows its replacement, which the saga never makes (docs/BROKER.md).
    assert order.is_terminal == (status in {"filled", "canceled", "expired", "rejected"})


def test_a_websocket_event_has_no_offset() -> None:
    event = {"event": "fill", "execution_id": "e1", "order": ALPACA_ORDER}
    parsed = parse_trade_event(json.dumps(event), offset_required=False)
    assert parsed.offset is None and parsed.order.filled_qty == Decimal(2)
    with pytest.raises(InvalidTradeEvent, match="offset"):
        parse_trade_event(json.dumps(event))
    with pytest.raises(InvalidTradeEvent, match="offset must be positive"):
        parse_trade_event(json.dumps({**event, "offset": 0}), offset_required=False)


@pytest.mark.parametrize(
    "base,stream",
    [
        ("https://paper-api.alpaca.markets", "wss://paper-api.alpaca.markets/stream"),
        ("https://api.alpaca.markets/", "wss://api.alpaca.markets/stream"),
        ("http://127.0.0.1:8787", "ws://127.0.0.1:8787/stream"),
    ],
)
def test_the_trading_stream_beside_the_trading_api(base: str, stream: str) -> None:
    assert stream_url_for(base) == stream
