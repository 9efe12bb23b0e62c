"""The ledger's models across the order_id -> order_key rename: old payloads (in-flight workflow
inputs, results stored in ledger_operations) still decode, and idempotency hashes are unchanged."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from pydantic import ValidationError

from activities.ledger import (
    OrderRecord,
    PostFillInput,
    PostFillResult,
    ReserveInput,
    ReserveResult,
    VoidInput,
    VoidResult,
)
from activities.ledger.service import reserve_args_hash
from activities.ledger.store import args_hash
from core.orderkey import OrderKey

OLD_RESERVE = {
    "account_id": "acct-1",
    "order_id": "acct-1/o-1",
    "asset": "USD",
    "amount": "150.5",
    "fence": 3,
    "idempotency_key": "acct-1/o-1:reserve",
    "side": "buy",
    "symbol": "AAPL",
    "order": {
        "account_id": "acct-1",
        "order_id": "o-1",
        "workflow_id": "order/acct-1/o-1",
        "symbol": "AAPL",
        "side": "buy",
        "order_type": "limit",
        "time_in_force": "day",
        "qty": "1",
        "limit_price": "150.5",
        "params_hash": "h",
    },
}
ZEROS = {"qty_delta": "0", "cash_delta": "0", "fee_delta": "0", "posted_qty": "1"}
OLD_PAYLOADS = [
    (ReserveInput, OLD_RESERVE),
    (
        ReserveResult,
        {"hold_id": 7, "order_id": "a/o", "asset": "USD", "amount": "1", "available_after": "0"}
        | {"fence": 1},
    ),
    (PostFillInput, {"order_id": "a/o", "cum_qty": "1", "cum_notional": "10"}),
    (
        PostFillResult,
        {"order_id": "a/o", "applied": True, "posted_notional": "10", "posted_cash": "10"}
        | {"posted_fee": "0.5", "held_remaining": "0"}
        | ZEROS,
    ),
    (VoidInput, {"order_id": "a/o", "idempotency_key": "a/o:void"}),
    (VoidResult, {"order_id": "a/o", "found": True, "released": "5", "asset": "USD"}),
]


@pytest.mark.parametrize(
    ("model", "payload"), OLD_PAYLOADS, ids=lambda v: getattr(v, "__name__", "")
)
def test_an_old_payload_validates_into_the_new_model(
    model: type, payload: dict[str, object]
) -> None:
    new = model.model_validate(payload)  # type: ignore[attr-defined]
    assert new.order_key == payload["order_id"]
    assert isinstance(new.order_key, OrderKey)
    # what the new code writes reads back the same
    assert model.model_validate_json(new.model_dump_json()) == new  # type: ignore[attr-defined]


def test_the_order_key_is_parsed_strictly_under_either_name() -> None:
    for name in ("order_key", "order_id"):
        with pytest.raises(ValidationError):
            VoidInput.model_validate({name: "no-slash", "idempotency_key": "k"})
    assert VoidInput(order_key="a/o", idempotency_key="k").order_key.order_id == "o"


def test_idempotency_hashes_match_those_recorded_before_the_rename() -> None:
    # Digests computed by the ledger before the rename (activities/ledger.py at 2e0e7b1) for the
    # same operations: a retry of a reserve or void recorded then must still match.
    reserve = ReserveInput.model_validate(OLD_RESERVE)
    assert isinstance(reserve.order, OrderRecord)
    assert reserve_args_hash(reserve, asset="USD", amount=D("150.50"), symbol="AAPL") == (
        "71d23f3fbe21381db1ff316d84e1b3760c15bd127060e6457ff657da612a30e7"
    )
    assert args_hash("void", {"order_id": OrderKey("acct-1/o-1")}) == (
        "bb19a2bec1f64e029c7129addb007c99a6d420135383f75eb9059916932e632d"
    )
