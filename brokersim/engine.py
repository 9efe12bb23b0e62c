"""The matching engine: orders, prices, fills, cancels, expiries and the event log.

Every public method that changes state writes all of its changes (orders, events, meta) in one
SQLite transaction before returning, so an answer the client saw is never lost by a restart.
All methods are synchronous and run on the event loop's thread, so they never interleave.
"""

from __future__ import annotations

import bisect
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from brokersim import inputs
from brokersim.clock import (
    MarketHours,
    SimClock,
    is_open,
    next_close,
    next_open,
    parse_rfc3339,
    rfc3339,
)
from brokersim.inputs import ApiError, Parts, TickMillis, bad_request, invalid, shown
from brokersim.orders import (
    REPLACEABLE,
    TERMINAL,
    Order,
    fill_parts,
    parse_order_request,
    parse_replace_request,
    plain,
)
from brokersim.store import Store

CENT = Decimal("0.01")
M = TypeVar("M", bound=BaseModel)
# A limit more than this fraction away from the market is rejected (a fat finger).
MAX_LIMIT_DEVIATION = Decimal("0.5")
# Random-walk step: up to this many basis points per tick, with a gentle pull to the base price.
WALK_MAX_BPS = 10
WALK_REVERSION_BPS = 20

BASE_PRICES: dict[str, Decimal] = {
    s: Decimal(p)
    for s, p in {
        "AAPL": "190.00",
        "MSFT": "420.00",
        "TSLA": "250.00",
        "NVDA": "130.00",
        "AMZN": "180.00",
        "GOOGL": "170.00",
        "META": "500.00",
        "NFLX": "650.00",
        "AMD": "150.00",
        "INTC": "30.00",
        "SPY": "550.00",
        "QQQ": "480.00",
    }.items()
}


class FillModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["instant", "partial"] = "instant"
    parts: Parts = 3
    tick_ms: TickMillis = 50
    auto: bool = True
    # Extension: walk=false freezes prices so tests can make limit orders cross exactly.
    walk: bool = True


def merge_model(model: M, patch: object) -> M:
    """``model`` with the fields of ``patch`` replaced; 422 on unknown or bad fields."""
    if not isinstance(patch, dict):
        raise bad_request("request body must be a JSON object")
    try:
        return type(model).model_validate({**model.model_dump(), **patch})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise invalid(f"invalid configuration: {problems}") from None


@dataclass
class _Batch:
    orders: dict[str, Order] = field(default_factory=dict)
    events: list[tuple[int, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


class Engine:
    def __init__(self, store: Store, clock: SimClock, seed: int) -> None:
        self.store = store
        self.clock = clock
        self.seed = seed
        self.prices = dict(BASE_PRICES)
        self.price_time = clock.now()
        self.tick_no = 0
        self.fill_model = FillModel()
        self.orders: dict[str, Order] = {}
        self.by_client: dict[str, Order] = {}
        # The listing's indexes, as a real broker's: (created_at, seq, id) in order, and the
        # orders not final; a listing or a tick costs what it returns, not every order ever kept.
        self.by_created: list[tuple[datetime, int, str]] = []
        self.open_orders: dict[str, Order] = {}
        self.last_offset = 0
        # Net filled quantity per symbol (fill events carry it as position_qty), kept as fills
        # happen: summing every order's fills at each fill would be quadratic.
        self.positions: dict[str, Decimal] = {}
        self.next_seq = 1
        self.listeners: list[Callable[[], None]] = []
        # Raw quote objects served instead of the computed ones (hostile-input tests; not kept
        # across a restart).
        self.quote_overrides: dict[str, Any] = {}
        self.account_created = clock.now()  # the account's (GET /v2/account), kept in meta
        # "always": matching runs around the clock (the default: tests pass at any real hour);
        # "enforce": only while the calendar says open, and orders submitted while it is closed
        # wait, status accepted, until the open (Alpaca's behaviour).
        self.market_hours: MarketHours = "always"

    @classmethod
    def open(cls, store: Store, clock: SimClock, seed: int) -> Engine:
        """Load the state in ``store``; a fresh store starts from ``seed`` and the base prices."""
        meta = store.load_meta()
        clock.offset_us = int(meta.get("clock_offset_us", 0))
        engine = cls(store, clock, int(meta.get("seed", seed)))
        if "prices" in meta:
            engine.prices = {s: Decimal(p) for s, p in meta["prices"].items()}
            engine.price_time = parse_rfc3339(meta["price_time"])
        engine.tick_no = int(meta.get("tick_no", 0))
        engine.fill_model = FillModel.model_validate(meta.get("fill_model", {}))
        engine.market_hours = "enforce" if meta.get("market_hours") == "enforce" else "always"
        for record in store.load_orders():
            order = Order.from_record(record)
            engine.orders[order.id] = order
            engine.by_client[order.client_order_id] = order
            engine.next_seq = max(engine.next_seq, order.seq + 1)
            if order.is_open:
                engine.open_orders[order.id] = order
        engine.by_created = sorted((o.created_at, o.seq, o.id) for o in engine.orders.values())
        engine.last_offset = store.last_offset()
        for order in engine.orders.values():
            engine._move_position(order, order.filled_qty)
        if "account_created" in meta:
            engine.account_created = parse_rfc3339(meta["account_created"])
        engine.save_meta(seed=engine.seed, account_created=rfc3339(engine.account_created))
        return engine

    # -- persistence ----------------------------------------------------------------------

    def _commit(self, batch: _Batch) -> None:
        rows = [
            (o.id, o.client_order_id, o.seq, json.dumps(o.to_record()))
            for o in batch.orders.values()
        ]
        self.store.commit(rows, batch.events, batch.meta)
        if batch.events:
            for listener in self.listeners:
                listener()

    def save_meta(self, **values: Any) -> None:
        self._commit(_Batch(meta=values))

    def _emit(
        self,
        batch: _Batch,
        order: Order,
        kind: str,
        now: datetime,
        price: Decimal | None = None,
        qty: Decimal | None = None,
    ) -> None:
        order.updated_at = now
        self.last_offset += 1
        event: dict[str, Any] = {
            "offset": self.last_offset,
            "event": kind,
            "execution_id": str(uuid.uuid4()),
            "timestamp": rfc3339(now),
            "price": None if price is None else str(price),
            "qty": None if qty is None else str(qty),
            "order": order.to_json(),
        }
        if qty is not None:
            # Alpaca's fill events carry the account's position in the symbol after the fill.
            event["position_qty"] = str(plain(self.positions.get(order.symbol, Decimal(0))))
        batch.orders[order.id] = order
        batch.events.append((self.last_offset, json.dumps(event)))

    # -- orders ---------------------------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> Order:
        req = parse_order_request(body, set(self.prices))
        if req.client_order_id in self.by_client:
            raise invalid("client_order_id must be unique")
        now = self.clock.now()
        order = self._new_order(
            req.client_order_id, req.symbol, req.qty, req.side, req.order_type,
            req.time_in_force, req.limit_price, now,
        )  # fmt: skip
        batch = _Batch()
        if self._far_from_market(order):
            order.status = "rejected"
            order.failed_at = now
            self._emit(batch, order, "rejected", now)
        else:
            self._announce(batch, order, now)
        self._admit(batch, order)
        return order

    def market_open(self, now: datetime) -> bool:
        return is_open(now)

    def _matching(self, now: datetime) -> bool:
        """Whether orders are matched now: always, or in the enforce mode while open."""
        return self.market_hours != "enforce" or is_open(now)

    def _announce(self, batch: _Batch, order: Order, now: datetime) -> None:
        """A new order's first event: ``new``; none for one held for the open (``accepted``,
        which Alpaca's trade updates have no event for: its ``new`` comes at the open)."""
        if order.status == "accepted":
            order.updated_at = now
            batch.orders[order.id] = order
        else:
            self._emit(batch, order, "new", now)

    def _route_accepted(self, batch: _Batch, now: datetime) -> None:
        """At the open the orders held for it go to the market: ``accepted`` -> ``new``."""
        for order in self._open_orders():
            if order.status == "accepted":
                order.status = "new"
                self._emit(batch, order, "new", now)

    def set_market_hours(self, mode: MarketHours) -> None:
        self.market_hours = mode
        self.save_meta(market_hours=mode)

    def _new_order(
        self,
        client_order_id: str,
        symbol: str,
        qty: Decimal,
        side: str,
        order_type: str,
        time_in_force: str,
        limit_price: Decimal | None,
        now: datetime,
        replaces: str | None = None,
    ) -> Order:
        parts = self.fill_model.parts if self.fill_model.mode == "partial" else 1
        return Order(
            id=str(uuid.uuid4()),
            client_order_id=client_order_id,
            seq=self.next_seq,
            symbol=symbol,
            qty=qty,
            side=side,
            order_type=order_type,
            time_in_force=time_in_force,
            limit_price=limit_price,
            status="new" if self._matching(now) else "accepted",
            created_at=now,
            updated_at=now,
            expires_at=next_close(now) if time_in_force == "day" else None,
            parts=fill_parts(qty, parts),
            replaces=replaces,
        )

    def _admit(self, batch: _Batch, order: Order) -> None:
        """Commit ``batch`` and enter ``order`` in every index: by id, by client order id, by
        creation time (the listings) and, while it is open, the open set (matching, listings)."""
        self.next_seq += 1
        self._commit(batch)
        self.orders[order.id] = order
        self.by_client[order.client_order_id] = order
        bisect.insort(self.by_created, (order.created_at, order.seq, order.id))
        if order.is_open:
            self.open_orders[order.id] = order

    def _move_position(self, order: Order, qty: Decimal) -> None:
        signed = qty if order.side == "buy" else -qty
        self.positions[order.symbol] = self.positions.get(order.symbol, Decimal(0)) + signed

    def replace(self, order_id: str, body: dict[str, Any]) -> Order:
        """PATCH /v2/orders/{id}: a new order with the changed fields that ``replaces`` the old
        one; the old one goes ``pending_replace`` then ``replaced`` (with ``replaced_by`` and
        ``replaced_at``) and keeps its fills. The new order is a fresh order: its qty is the
        request's (default the old order's qty), and it starts unfilled."""
        old = self.get(order_id)
        if old.status not in REPLACEABLE:
            raise ApiError(422, 42210000, "order is not open")
        req = parse_replace_request(body, old)
        if req.client_order_id in self.by_client:
            raise invalid("client_order_id must be unique")
        now = self.clock.now()
        new = self._new_order(
            req.client_order_id, old.symbol, req.qty, old.side, old.order_type,
            req.time_in_force, req.limit_price, now, replaces=old.id,
        )  # fmt: skip
        if self._far_from_market(new):
            raise invalid("limit_price is more than 50% away from the market")
        batch = _Batch()
        old.status = "pending_replace"
        self._emit(batch, old, "pending_replace", now)
        old.status, old.replaced_at, old.replaced_by = "replaced", now, new.id
        self._emit(batch, old, "replaced", now)
        self._announce(batch, new, now)
        self.open_orders.pop(old.id, None)  # replaced: final, never matched again
        self._admit(batch, new)
        return new

    def cancel_all(self) -> list[Order]:
        """DELETE /v2/orders: a cancel request for every open order (each goes pending_cancel
        unless it already is), in one transaction."""
        batch = _Batch()
        now = self.clock.now()
        orders = self._open_orders()
        for order in orders:
            if order.status != "pending_cancel":
                order.status = "pending_cancel"
                self._emit(batch, order, "pending_cancel", now)
        self._commit(batch)
        return orders

    def _far_from_market(self, order: Order) -> bool:
        if order.limit_price is None:
            return False
        market = self.prices[order.symbol]
        return abs(order.limit_price - market) > market * MAX_LIMIT_DEVIATION

    def get(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise ApiError(404, 40410000, "order not found")
        return order

    def get_by_client_order_id(self, client_order_id: str) -> Order:
        order = self.by_client.get(client_order_id)
        if order is None:
            raise ApiError(404, 40410000, "order not found")
        return order

    def list_orders(
        self, status: str, limit: int, after: datetime | None, direction: str
    ) -> list[Order]:
        """Orders created after ``after`` by (created_at, seq), ``asc`` or ``desc``, at most
        ``limit``; ``open`` from the open orders only, the others from the creation index."""
        if status == "open":
            found = sorted(
                (o for o in self.open_orders.values() if after is None or o.created_at > after),
                key=lambda o: (o.created_at, o.seq),
                reverse=direction == "desc",
            )
            return found[:limit]
        start = 0
        if after is not None:  # past every entry created at or before ``after``
            start = bisect.bisect_right(self.by_created, (after, float("inf"), ""))
        entries = self.by_created[start:]
        ids = (e[2] for e in (reversed(entries) if direction == "desc" else entries))
        out: list[Order] = []
        for order_id in ids:
            order = self.orders[order_id]
            if status == "all" or not order.is_open:
                out.append(order)
                if len(out) == limit:
                    break
        return out

    def cancel(self, order_id: str) -> Order:
        """Mark an order pending_cancel; a later tick cancels it (fills may still race it)."""
        order = self.get(order_id)
        if order.status in TERMINAL:
            raise ApiError(422, 42210000, "order is not cancelable")
        if order.status != "pending_cancel":
            batch = _Batch()
            order.status = "pending_cancel"
            self._emit(batch, order, "pending_cancel", self.clock.now())
            self._commit(batch)
        return order

    # -- matching -------------------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """One matching step: move prices, expire day orders, fill, then process cancels."""
        batch = _Batch()
        self.tick_no += 1
        now = self.clock.now()
        if self.fill_model.walk:
            self._walk(now)
        expired = self._expire_due(batch, now)
        fills = canceled = 0
        if self._matching(now):
            self._route_accepted(batch, now)
            for order in self._open_orders():
                fills += self._match(batch, order, now)
                if order.time_in_force == "ioc" and order.is_open:
                    self._finish(batch, order, "canceled", now)
                    canceled += 1
        for order in self._open_orders():
            if order.status == "pending_cancel":
                self._finish(batch, order, "canceled", now)
                canceled += 1
        batch.meta.update(self._price_meta(), tick_no=self.tick_no)
        self._commit(batch)
        return {"tick": self.tick_no, "fills": fills, "canceled": canceled, "expired": expired}

    def _open_orders(self) -> list[Order]:
        return sorted(self.open_orders.values(), key=lambda o: o.seq)

    def _walk(self, now: datetime) -> None:
        # One RNG per (seed, tick): the walk repeats for a seed, also across restarts.
        rng = random.Random(f"{self.seed}:{self.tick_no}")
        for symbol in sorted(self.prices):
            price = self.prices[symbol]
            base = BASE_PRICES.get(symbol, price)
            bps = rng.randint(-WALK_MAX_BPS, WALK_MAX_BPS)
            bps += int((base - price) / base * WALK_REVERSION_BPS)
            step = (price * bps / 10_000).quantize(CENT, rounding=ROUND_HALF_UP)
            self.prices[symbol] = max(CENT, price + step)
        self.price_time = now

    def _match(self, batch: _Batch, order: Order, now: datetime) -> int:
        price = self.prices[order.symbol]
        limit = order.limit_price
        if limit is not None and (price > limit if order.side == "buy" else price < limit):
            return 0
        qty = order.next_fill()
        order.filled_qty += qty
        order.filled_notional += qty * price
        self._move_position(order, qty)
        if order.remaining == 0:
            order.status = "filled"
            order.filled_at = now
            self.open_orders.pop(order.id, None)
            kind = "fill"
        else:
            # A pending cancel stays pending: the cancel is processed after this fill.
            if order.status != "pending_cancel":
                order.status = "partially_filled"
            kind = "partial_fill"
        self._emit(batch, order, kind, now, price=price, qty=qty)
        return 1

    def _finish(self, batch: _Batch, order: Order, status: str, now: datetime) -> None:
        order.status = status
        self.open_orders.pop(order.id, None)
        if status == "canceled":
            order.canceled_at = now
        else:
            order.expired_at = now
        self._emit(batch, order, status, now)

    def _expire_due(self, batch: _Batch, now: datetime) -> int:
        due = [o for o in self._open_orders() if o.expires_at is not None and o.expires_at <= now]
        for order in due:
            self._finish(batch, order, "expired", now)
        return len(due)

    # -- admin ----------------------------------------------------------------------------

    def advance_clock_to(self, target: Literal["next_open", "next_close"]) -> int:
        """Move the simulated clock to the calendar's next open or close (just past it)."""
        now = self.clock.now()
        moment = next_open(now) if target == "next_open" else next_close(now)
        return self.advance_clock(Decimal((moment - now) // timedelta(microseconds=1)) / 10**6)

    def advance_clock(self, seconds: Decimal) -> int:
        """Move the simulated clock forward and expire the day orders whose close passed."""
        try:
            self.clock.advance(int(seconds * 1_000_000))
        except ValueError as exc:
            raise invalid(str(exc)) from None
        batch = _Batch(meta={"clock_offset_us": self.clock.offset_us})
        expired = self._expire_due(batch, self.clock.now())
        self._commit(batch)
        return expired

    def set_prices(self, body: object) -> dict[str, str]:
        if not isinstance(body, dict):
            raise bad_request("request body must be a JSON object")
        updates: dict[str, Decimal] = {}
        for symbol, value in body.items():
            if symbol.upper() not in self.prices:
                raise invalid(f'asset "{shown(symbol)[1:-1]}" not found')
            # Quotes are whole cents: a finer price is refused, not rounded.
            updates[symbol.upper()] = inputs.price(value, f"price of {symbol}", places=2)
        self.prices.update(updates)
        self.price_time = self.clock.now()
        self.save_meta(**self._price_meta())
        return {s: str(p) for s, p in sorted(self.prices.items())}

    def set_fill_model(self, patch: object) -> FillModel:
        self.fill_model = merge_model(self.fill_model, patch)
        self.save_meta(fill_model=self.fill_model.model_dump())
        return self.fill_model

    def _price_meta(self) -> dict[str, Any]:
        return {
            "prices": {s: str(p) for s, p in self.prices.items()},
            "price_time": rfc3339(self.price_time),
        }

    def quote(self, symbol: str) -> Any:
        if symbol.upper() in self.quote_overrides:
            return self.quote_overrides[symbol.upper()]
        price = self.prices.get(symbol.upper())
        if price is None:
            return None
        # Floats of 2-decimal prices print exactly ("190.13"): what Alpaca's JSON numbers carry.
        return {
            "ap": float(price + CENT),
            "as": 100,
            "bp": float(max(CENT, price - CENT)),
            "bs": 100,
            "t": rfc3339(self.price_time),
        }

    def set_quote_overrides(self, body: object) -> dict[str, Any]:
        """Serve these raw quote objects as given (``null`` removes one): bad input on purpose."""
        if not isinstance(body, dict):
            raise ApiError(400, 40010000, "request body must be a JSON object")
        for symbol, raw in body.items():
            if raw is None:
                self.quote_overrides.pop(symbol.upper(), None)
            else:
                self.quote_overrides[symbol.upper()] = raw
        return dict(self.quote_overrides)

    def append_raw_event(self, body: object) -> int:
        """Append an event as given, unchecked (hostile-input tests): ``{"event": {...}}`` gets
        the next offset written into it; ``{"raw": "text"}`` is stored as that text."""
        if not isinstance(body, dict) or not (
            isinstance(body.get("event"), dict) or isinstance(body.get("raw"), str)
        ):
            raise invalid('body must be {"event": {...}} or {"raw": "text"}')
        self.last_offset += 1
        if "raw" in body:
            text = body["raw"]
        else:
            text = json.dumps({**body["event"], "offset": self.last_offset})
        self._commit(_Batch(events=[(self.last_offset, text)]))
        return self.last_offset

    def event_rows_after(self, offset: int, limit: int) -> list[tuple[int, str]]:
        """(offset, JSON text) of the stored events after ``offset``."""
        return self.store.events_after(offset, limit)

    def events_after(self, offset: int, limit: int) -> list[Any]:
        return [_event_value(text) for _, text in self.store.events_after(offset, limit)]


def _event_value(text: str) -> Any:
    """A stored event as JSON; one appended as raw non-JSON text stays that text."""
    try:
        return json.loads(text)
    except ValueError:
        return text
