"""Properties of the matching engine, in process over a real SQLite file (no HTTP)."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from brokersim.clock import SimClock
from brokersim.engine import Engine
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


@settings(max_examples=60, deadline=None)
@given(qty=quantities, parts=st.integers(1, 7), price_path=prices)
def test_partial_fills_sum_to_qty_and_the_average_matches_the_notional(
    qty: Decimal, parts: int, price_path: list[Decimal]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = open_engine(Path(tmp) / "sim.sqlite")
        engine.set_fill_model({"mode": "partial", "parts": parts})
        order = engine.submit(
            {
                "symbol": "AAPL",
                "qty": str(qty),
                "side": "buy",
                "type": "market",
                "time_in_force": "gtc",
            }
        )
        step = 0
        while order.is_open:
            engine.set_prices({"AAPL": str(price_path[step % len(price_path)])})
            engine.tick()
            step += 1
        fills = [e for e in engine.events_after(0, 1000) if e["qty"]]
        assert 1 <= len(fills) <= parts
        assert sum(Decimal(e["qty"]) for e in fills) == qty
        notional = sum(Decimal(e["qty"]) * Decimal(e["price"]) for e in fills)
        assert order.filled_notional == notional
        assert abs(order.filled_avg_price * order.filled_qty - notional) <= qty * Decimal("1e-9")
        reopened = Engine.open(Store(Path(tmp) / "sim.sqlite"), SimClock(now_fn=lambda: NOON), 1)
        assert reopened.get(order.id).to_json() == order.to_json()
        engine.store.close()
        reopened.store.close()
