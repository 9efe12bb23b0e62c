"""The order request's validation: ids and symbols are matched whole (a trailing newline too)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tests.support.requests import order_request as request
from workflows.models import validate_request


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
