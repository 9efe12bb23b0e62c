"""The order request's validation: ids and symbols are matched whole (a trailing newline too)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from core.errors import UserError
from ordersaga.client import build_request
from tests.support.requests import order_request as request
from workflows.models import foreign_ids, validate_request


def test_a_good_request_passes() -> None:
    assert validate_request(request()) is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"account_id": "alice\n"}, "account id"),
        ({"order_id": "o1\n"}, "order id"),
        ({"account_id": "a/b"}, "account id"),
        ({"symbol": "AAPL\n"}, "invalid symbol"),
    ],
)
def test_a_trailing_newline_or_a_slash_is_refused(fields: dict[str, object], says: str) -> None:
    reason = validate_request(request(**fields))
    assert reason is not None and says in reason


def test_the_place_answer_says_whether_the_order_was_held() -> None:
    from core.statuses import OrderStatus
    from workflows.models import OrderState, place_result

    held = OrderState(request=request(), status=OrderStatus.REJECTED, held=Decimal("10.50"))
    refused = OrderState(request=request(), status=OrderStatus.REJECTED, reason="no price")
    assert place_result(held).accepted  # rejected by the broker after it was held
    assert not place_result(refused).accepted
    assert place_result(held).workflow_id == "order/alice/o1"


@pytest.mark.parametrize("side", ["buy", "sell"])
@pytest.mark.parametrize("qty", ["1e-1000030", "1e400", "0.0000000001", "1000000.5", "0E-1000030"])
def test_a_quantity_the_parser_refuses_is_refused_by_the_workflow_too(side: str, qty: str) -> None:
    """1e-1000030 passed (normalised to 0 in the default context): a sell then retried a
    DataError forever and a buy held 0.00."""
    reason = validate_request(request(side=side, qty=Decimal(qty)))
    assert reason is not None and "quantity" in reason


def test_a_notional_beyond_the_maximum_is_refused_at_validation() -> None:
    """1e6 x 1e6: the ledger refused its hold, and the workflow failed after compensating."""
    huge = request(order_type="limit", qty=Decimal(1_000_000), limit_price=Decimal(1_000_000))
    reason = validate_request(huge)
    assert reason is not None and "notional" in reason and "maximum" in reason
    assert validate_request(request(order_type="limit", limit_price=Decimal("1000000"))) is None


@pytest.mark.parametrize("price", ["100.00001", "1e-1000030", "1e400", "-1", "1000000.01"])
def test_a_limit_price_the_parser_refuses_is_refused(price: str) -> None:
    reason = validate_request(request(order_type="limit", limit_price=Decimal(price)))
    assert reason is not None and "limit price" in reason


def test_the_parameters_hash_is_exact() -> None:
    tiny, tinier = (request(qty=Decimal(q)) for q in ("1e-1000030", "1e-1000031"))
    assert tiny.params_hash() != tinier.params_hash()
    assert request(qty=Decimal("1.50")).params_hash() == request(qty=Decimal("1.5")).params_hash()


def test_a_request_must_carry_its_workflows_ids() -> None:
    own = request()
    assert foreign_ids(own, "order/alice/o1") is None
    for wid in ("order/alice/o2", "order/mallory/o1", "order/alice", "alice/o1"):
        reason = foreign_ids(own, wid)
        assert reason is not None and "workflow" in reason


# ---------------------------------------------------------------- the SDK, with no connection


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"qty": "1e-1000030"}, "decimals"),
        ({"qty": "1e400"}, "maximum"),
        ({"qty": "1_0"}, "not a number"),
        ({"account_id": "alice\n"}, "account id"),
        ({"order_id": "o\x00"}, "order id"),
        ({"symbol": "AAPL\n"}, "symbol"),
        ({"side": "hold"}, "side"),
        (
            {"order_type": "limit", "qty": "1000000", "limit_price": "1000000"},
            "notional",
        ),
    ],
)
def test_build_request_refuses_with_one_line(fields: dict[str, object], says: str) -> None:
    values: dict[str, object] = {"account_id": "alice", "symbol": "AAPL", "side": "buy", "qty": "1"}
    with pytest.raises(UserError) as err:
        build_request(**{**values, **fields})  # type: ignore[arg-type]
    assert says in str(err.value) and "\n" not in str(err.value)


def test_build_request_keeps_the_numbers_as_written() -> None:
    req = build_request(account_id="alice", symbol="aapl", side="buy", qty=2, order_id="o1")
    assert (req.symbol, req.qty) == ("AAPL", Decimal(2))
    req = build_request(account_id="alice", symbol="MSFT", side="buy", qty="0.123456789")
    assert str(req.qty) == "0.123456789"
