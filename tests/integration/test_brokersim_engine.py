"""Properties of the matching engine, in process over a real SQLite file (no HTTP)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from brokersim.clock import SimClock
from brokersim.engine import Engine
from brokersim.orders import QTY_QUANTUM, ZERO, Order, fill_parts, fill_size
from brokersim.store import Store

NOON = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

quantities = st.decimals(
    min_value=Decimal("0.000000001"), max_value=Decimal("100000"), places=9
).filter(lambda d: d > 0)
prices = st.lists(
    st.decimals(min_value=Decimal("150"), max_value=Decimal("250"), places=2), min_size=1
)


def open_engine(path: Path) -> Engine:
    engine = Engine.open(Store(path), SimClock(now_fn=lambda: NOON), seed=1)
    engine.set_fill_model({"auto": False, "walk": False})
    return engine


def fill_to_the_end(
    engine: Engine, qty: Decimal, parts: int, price_path: list[Decimal]
) -> tuple[Order, list[dict[str, Any]]]:
    """Submit a market buy of ``qty`` in ``parts`` partial fills and tick until it is done."""
    engine.set_fill_model({"mode": "partial", "parts": parts})
    order = engine.submit(
        {"symbol": "AAPL", "qty": str(qty), "side": "buy", "type": "market", "time_in_force": "gtc"}
    )
    step = 0
    while order.is_open:
        engine.set_prices({"AAPL": str(price_path[step % len(price_path)])})
        engine.tick()
        step += 1
    return order, [e for e in engine.events_after(0, 1000) if e["qty"]]


@settings(max_examples=60, deadline=None)
@given(qty=quantities, parts=st.integers(1, 7), price_path=prices)
@example(qty=Decimal("3E-9"), parts=2, price_path=[Decimal("200")])  # once 3 fills of 1e-9
def test_partial_fills_sum_to_qty_and_the_average_matches_the_notional(
    qty: Decimal, parts: int, price_path: list[Decimal]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(Path(tmp) / "sim.sqlite")
        order, fills = fill_to_the_end(engine, qty, parts, price_path)
        assert 1 <= len(fills) <= parts
        assert all(Decimal(e["qty"]) > 0 for e in fills)
        assert sum(Decimal(e["qty"]) for e in fills) == qty
        notional = sum(Decimal(e["qty"]) * Decimal(e["price"]) for e in fills)
        assert order.filled_notional == notional
        assert abs(order.filled_avg_price * order.filled_qty - notional) <= qty * Decimal("1e-9")
        reopened = Engine.open(Store(Path(tmp) / "sim.sqlite"), SimClock(now_fn=lambda: NOON), 1)
        assert reopened.get(order.id).to_json() == order.to_json()
        engine.store.close()
        reopened.store.close()


@pytest.mark.parametrize(
    ("qty", "parts", "expected"),
    [
        # Found by the property test on a fresh clone: 3 grid units in 2 parts gave 3 fills.
        ("3E-9", 2, ["0.000000001", "0.000000002"]),
        ("1E-9", 7, ["0.000000001"]),
        ("5E-9", 3, ["0.000000001", "0.000000001", "0.000000003"]),
        ("1.000000001", 3, ["0.333333333", "0.333333333", "0.333333335"]),
    ],
)
def test_a_qty_of_few_grid_units_fills_in_at_most_the_requested_parts(
    tmp_path: Path, qty: str, parts: int, expected: list[str]
) -> None:
    engine = open_engine(tmp_path / "sim.sqlite")
    order, fills = fill_to_the_end(engine, Decimal(qty), parts, [Decimal("190")])
    assert [Decimal(e["qty"]) for e in fills] == [Decimal(q) for q in expected]
    assert order.status == "filled" and order.filled_qty == Decimal(qty)
    engine.store.close()


def test_every_small_qty_splits_into_the_requested_parts_or_one_per_grid_unit() -> None:
    for units in range(1, 60):
        qty = units * QTY_QUANTUM
        for requested in range(1, 8):
            parts = fill_parts(qty, requested)
            fills: list[Decimal] = []
            while sum(fills, ZERO) < qty:
                fills.append(fill_size(qty, parts, sum(fills, ZERO)))
            assert len(fills) == min(units, requested), (qty, requested, fills)
            assert all(f > 0 and f == f.quantize(QTY_QUANTUM) for f in fills)
            assert sum(fills) == qty


def test_fill_events_carry_the_position_also_after_a_restart(tmp_path: Path) -> None:
    def trade(engine: Engine, side: str, qty: str) -> None:
        engine.submit(
            {"symbol": "AAPL", "qty": qty, "side": side, "type": "market", "time_in_force": "gtc"}
        )
        engine.tick()

    def positions(engine: Engine) -> list[str]:
        events = engine.events_after(0, 1000)
        return [e["position_qty"] for e in events if e["event"] in ("fill", "partial_fill")]

    engine = open_engine(tmp_path / "state.sqlite")
    trade(engine, "buy", "3")
    trade(engine, "sell", "1.5")
    engine.store.close()
    engine = open_engine(tmp_path / "state.sqlite")
    trade(engine, "buy", "0.5")
    assert positions(engine) == ["3", "1.5", "2"]
    engine.store.close()
