"""The invariant checker's order-by-order rules find planted violations (and pass clean data)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chaos.invariants import (
    _error_account,
    _every_order_terminal,
    _fills_match,
    _one_broker_order,
    _status_agrees,
)
from core.broker_client import BrokerOrder


def broker(key: str, status: str, filled: str = "0", notional: str = "0", **kw: Any) -> BrokerOrder:
    return BrokerOrder(
        id=kw.pop("id", f"b-{key}"),
        client_order_id=key,
        symbol=kw.pop("symbol", "AAPL"),
        side=kw.pop("side", "buy"),
        qty=Decimal(1),
        filled_qty=Decimal(filled),
        filled_notional=Decimal(notional),
        status=status,
    )


def row(status: str, filled: str = "0", notional: str = "0", broker_id: str | None = "b") -> dict:
    d = Decimal(filled)
    return {
        "status": status,
        "broker_order_id": broker_id,
        "filled_qty": d,
        "posted_qty": d,
        "posted_notional": Decimal(notional),
    }


def test_clean_orders_pass_every_rule() -> None:
    rows = {"a/1": row("SETTLED", "1", "100.5"), "a/2": row("REJECTED", broker_id=None)}
    by_client = {"a/1": [broker("a/1", "filled", "1", "100.5")]}
    assert _fills_match(rows, by_client).ok
    assert _status_agrees(rows, by_client).ok
    assert _one_broker_order(by_client).ok
    assert _every_order_terminal(rows, {"a/1", "a/2"}).ok


def test_a_fill_the_ledger_missed_is_found() -> None:
    rows = {"a/1": row("SETTLED", "0.5", "50")}
    result = _fills_match(rows, {"a/1": [broker("a/1", "filled", "1", "100")]})
    assert not result.ok and "a/1" in result.violations[0]


def test_two_broker_orders_for_one_order_are_found() -> None:
    result = _one_broker_order({"a/1": [broker("a/1", "filled"), broker("a/1", "new", id="x")]})
    assert not result.ok


def test_a_status_the_broker_disagrees_with_is_found() -> None:
    rows = {"a/1": row("SETTLED", "1", "10"), "a/2": row("EXPIRED")}
    by_client = {"a/1": [broker("a/1", "canceled", "1", "10")], "a/2": [broker("a/2", "filled")]}
    assert len(_status_agrees(rows, by_client).violations) == 2


def test_an_open_or_missing_order_is_found() -> None:
    result = _every_order_terminal({"a/1": row("SUBMITTED")}, {"a/1", "a/9"})
    assert len(result.violations) == 2


def test_error_account_must_hold_exactly_the_late_fills() -> None:
    late = [
        broker("x/1", "canceled", "2", "200.004", symbol="MSFT"),
        broker("x/2", "filled", "1", "50", side="sell", symbol="MSFT"),
    ]
    exact = {"MSFT": Decimal(1), "USD": Decimal("-150.00")}
    assert _error_account(late, exact).ok
    assert not _error_account(late, {**exact, "MSFT": Decimal(2)}).ok
    assert not _error_account(late[:1], exact).ok
    still_open = [broker("x/3", "new")]
    assert not _error_account(still_open, {}).ok
