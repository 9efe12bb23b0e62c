"""The invariant checker's order-by-order rules find planted violations (and pass clean data)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from chaos.invariants import (
    _caller_settings_ignored,
    _error_account,
    _every_order_terminal,
    _fills_match,
    _no_failed_workflows,
    _no_fill_above_broker,
    _no_parked_order,
    _one_broker_order,
    _status_agrees,
    fx_desk_matches_won_orders,
)
from core.broker_client import BrokerOrder
from core.settings import SagaSettings


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


def row(
    status: str,
    filled: str = "0",
    notional: str = "0",
    broker_id: str | None = "b",
    **kw: Any,
) -> dict:
    d = Decimal(filled)
    return {
        "status": status,
        "reason": kw.get("reason"),
        "broker_order_id": broker_id,
        "side": kw.get("side", "buy"),
        "filled_qty": d,
        "filled_notional": Decimal(notional),
        "fees": Decimal(kw.get("fees", "0")),
        "posted_qty": Decimal(kw.get("posted", filled)),
        "posted_notional": Decimal(notional),
    }


def test_clean_orders_pass_every_rule() -> None:
    rows = {"a/1": row("SETTLED", "1", "100.5"), "a/2": row("REJECTED", broker_id=None)}
    by_client = {"a/1": [broker("a/1", "filled", "1", "100.5")]}
    assert _fills_match(rows, by_client).ok
    assert _status_agrees(rows, by_client).ok
    assert _one_broker_order(by_client).ok
    assert _every_order_terminal(rows, {"a/1", "a/2"}).ok
    assert _no_fill_above_broker(rows, by_client).ok
    assert _no_parked_order(rows).ok
    assert _no_failed_workflows([]).ok


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


def test_a_booked_fill_above_the_brokers_is_found() -> None:
    # A forged report booked: the hold posted 2 (the row says 1) where the broker filled 1.
    rows = {"a/1": row("SETTLED", "1", "100", posted="2"), "a/2": row("CANCELED", "0.5")}
    by_client = {"a/1": [broker("a/1", "filled", "1", "100")]}
    result = _no_fill_above_broker(rows, by_client)
    assert not result.ok and len(result.violations) == 2
    assert "a/1: posted 2" in result.violations[0]
    assert "a/2: posted 0.5" in result.violations[1]  # no broker order at all


def test_a_failed_order_workflow_is_found() -> None:
    result = _no_failed_workflows(["order/a/1"])
    assert not result.ok and result.violations == ["order/a/1: workflow FAILED"]


def test_a_parked_order_is_found_and_one_without_a_reason_is_named() -> None:
    rows = {
        "a/1": row("NEEDS_ATTENTION", reason="void_funds: IdempotencyMismatch"),
        "a/2": row("NEEDS_ATTENTION"),
        "a/3": row("SETTLED", "1", "10"),
    }
    result = _no_parked_order(rows)
    assert not result.ok and len(result.violations) == 2
    assert "IdempotencyMismatch" in result.violations[0]
    assert "WITHOUT A REASON" in result.violations[1]


def test_an_order_that_ran_with_the_callers_settings_is_found() -> None:
    saga = SagaSettings()  # commission 0.25 %, at least 0.50
    by_client = {"h/1": [broker("h/1", "filled", "1", "200")]}
    paid = {"h/1": row("SETTLED", "1", "200", fees="0.50")}
    assert _caller_settings_ignored(paid, by_client, {"h/1"}, saga).ok
    free = {"h/1": row("SETTLED", "1", "200", fees="0")}
    assert "fees 0" in _caller_settings_ignored(free, by_client, {"h/1"}, saga).violations[0]
    # Settled on a queue of the caller's: the real broker never had it.
    assert not _caller_settings_ignored(paid, {}, {"h/1"}, saga).ok
    assert not _caller_settings_ignored({}, by_client, {"h/1"}, saga).ok


def won(key: str, side: str, cash: str, fee: str, customer_krw: int, desk_usd: str) -> Any:
    """A won order's row as the checker reads it (rate 1400.5): the customer's and the desk's
    won are opposite, the desk's dollars as given."""
    return {
        "order_id": key, "side": side, "fx_rate": Decimal("1400.5"), "posted_cash": Decimal(cash),
        "posted_fee": Decimal(fee), "customer_krw": Decimal(customer_krw),
        "desk_krw": -Decimal(customer_krw), "desk_usd": Decimal(desk_usd),
    }  # fmt: skip


def test_fx_desk_rule_checks_a_won_sale_paid_rounded_down_and_the_desk_totals() -> None:
    # A buy of 100.01 + a 0.50 fee: 100.51 x 1400.5 = 140764.255, charged 140765 (rounded up);
    # a sale of 49.76 - a 0.25 fee: 49.51 x 1400.5 = 69338.755, paid 69338 (rounded down).
    rows = [
        won("a/buy", "buy", "100.01", "0.50", -140765, "-100.51"),
        won("a/sell", "sell", "49.76", "0.25", 69338, "49.51"),
    ]
    desk = {"KRW": Decimal(140765 - 69338), "USD": Decimal("-100.51") + Decimal("49.51")}
    result = fx_desk_matches_won_orders(rows, desk)
    assert result.ok and result.checked == 2, result.violations
    # The sale paid the rounded-up 69339 (a won in the customer's favour): found on the order;
    # the desk's dollars a cent off: found on the desk.
    rows[1] = won("a/sell", "sell", "49.76", "0.25", 69339, "49.51")
    desk["KRW"] -= 1
    desk["USD"] += Decimal("0.01")
    bad = fx_desk_matches_won_orders(rows, desk).violations
    assert any(v.startswith("a/sell: customer's won moved") for v in bad), bad
    assert any(v.startswith("$fx USD") for v in bad), bad
