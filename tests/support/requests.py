"""An order request for unit tests: a one-share market buy of AAPL by alice, changed by keyword."""

from __future__ import annotations

from decimal import Decimal

from workflows.models import OrderRequest


def order_request(**fields: object) -> OrderRequest:
    values: dict[str, object] = {
        "account_id": "alice",
        "order_id": "o1",
        "symbol": "AAPL",
        "side": "buy",
        "qty": Decimal(1),
    }
    values.update(fields)
    return OrderRequest.model_validate(values)
