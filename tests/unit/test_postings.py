"""The posting rules without a database: examples, then properties over generated fills.

``Book`` stands in for the ledger's rows: it applies the moves a rule returns the way the store
does (never-negative check, then the new balances), so a property can follow a hold from its
reserve through any sequence of fill reports to its void.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from activities.ledger import postings as rules
from activities.ledger.postings import (
    ERROR,
    EXTERNAL,
    FEES,
    OMNIBUS,
    ErrorPosition,
    Hold,
    Move,
    Refused,
    Row,
)
from core import errors
from core.money import commission, round_cash

PROPERTY = settings(max_examples=150, deadline=None, derandomize=True)
RATE, MINIMUM = D("0.0025"), D("0.50")
ACCOUNT = "acct-1"
KEY = f"{ACCOUNT}/o-1"


class Book:
    """In-memory ledger rows keyed by (owner, asset)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}

    def row(self, owner: str, asset: str) -> Row:
        if (owner, asset) not in self.rows:
            kind = rules.firm_kind(owner)
            self.rows[owner, asset] = Row(len(self.rows) + 1, owner, kind, asset, D(0), D(0), 0, 0)
        return self.rows[owner, asset]

    def fund(self, owner: str, asset: str, amount: D) -> None:
        self.apply(rules.transfer(self.row(owner, asset), self.row(EXTERNAL, asset), amount,
                                  into_customer=True))  # fmt: skip

    def apply(self, moves: list[Move]) -> None:
        assert all(v == 0 for v in rules.net_by_asset(moves).values()), moves
        after = rules.balances_after(moves)
        rules.check_not_negative(after.values())
        for row, available, held in after.values():
            self.rows[row.owner, row.asset] = Row(
                row.id, row.owner, row.kind, row.asset, available, held, row.version + 1, 0
            )

    def of(self, owner: str, asset: str) -> tuple[D, D]:
        r = self.row(owner, asset)
        return r.available, r.held

    def total(self, asset: str) -> D:
        return sum((r.available + r.held for r in self.rows.values() if r.asset == asset), D(0))


def reserved(book: Book, side: str, value: D, symbol: str = "AAPL") -> Hold:
    asset = "USD" if side == "buy" else symbol
    book.apply(rules.reserve(book.row(ACCOUNT, asset), account_id=ACCOUNT, asset=asset,
                             value=value, fence=1, order_key=KEY, customer_fence=0,
                             customer_fence_owner=None))  # fmt: skip
    return Hold(order_id=KEY, owner=ACCOUNT, asset=asset, held_remaining=value, side=side,
                symbol=symbol)  # fmt: skip


def booked(book: Book, hold: Hold, cum_qty: D, cum_notional: D, cum_fee: D) -> Hold:
    """Book one cumulative report as the service does; the hold after it."""
    post = rules.fill(hold, cum_qty, cum_notional, cum_fee)
    if post is None:
        return hold
    rows = [book.row(owner, asset) for owner, asset in rules.fill_rows(hold)]
    book.apply(rules.fill_moves(post, rows))
    return post.hold_after(hold)


def voided(book: Book, hold: Hold) -> tuple[Hold, D]:
    book.apply(rules.void_moves(hold, book.row(hold.owner, hold.asset)))
    return rules.voided(hold), rules.released(hold)


def refusal(call: object, *args: object, **kw: object) -> Refused:
    with pytest.raises(Refused) as info:
        call(*args, **kw)  # type: ignore[operator]
    return info.value


# ------------------------------------------------------------------ examples


def test_a_deposit_and_a_withdrawal_move_between_the_customer_and_external() -> None:
    book = Book()
    book.fund(ACCOUNT, "USD", D("100.00"))
    assert book.of(ACCOUNT, "USD") == (D("100.00"), 0)
    assert book.of(EXTERNAL, "USD") == (D("-100.00"), 0)
    out = rules.transfer(book.row(ACCOUNT, "USD"), book.row(EXTERNAL, "USD"), D("30"),
                         into_customer=False)  # fmt: skip
    book.apply(out)
    assert book.of(ACCOUNT, "USD") == (D("70.00"), 0)
    exc = refusal(rules.transfer, book.row(ACCOUNT, "USD"), book.row(EXTERNAL, "USD"), D("70.01"),
                  into_customer=False)  # fmt: skip
    assert exc.error_type == errors.INSUFFICIENT_FUNDS
    assert exc.details == ({"asset": "USD", "available": "70.00", "requested": "70.01"},)


def test_a_reserve_is_refused_for_a_stale_fence_before_insufficient_funds() -> None:
    row = Row(1, ACCOUNT, "customer", "USD", D(10), D(0), 3, 5)
    kw = {"account_id": ACCOUNT, "asset": "USD", "value": D(20), "order_key": KEY,
          "customer_fence_owner": KEY}  # fmt: skip
    assert refusal(rules.reserve, row, fence=4, customer_fence=5, **kw).error_type == (
        errors.STALE_FENCE
    )
    assert refusal(rules.reserve, row, fence=9, customer_fence=5, **kw).error_type == (
        errors.INSUFFICIENT_FUNDS
    )
    assert refusal(rules.reserve, None, fence=9, customer_fence=0, **kw).error_type == (
        errors.INSUFFICIENT_FUNDS
    )
    small = {**kw, "value": D(4)}
    assert refusal(rules.reserve, row, fence=4, customer_fence=0, **small).error_type == (
        errors.STALE_FENCE  # the row has seen fence 5
    )
    moves = rules.reserve(row, fence=5, customer_fence=5, **small)
    assert [(m.bucket, m.amount) for m in moves] == [("available", D(-4)), ("held", D(4))]


def test_an_equal_fence_is_accepted_only_from_the_order_that_wrote_it() -> None:
    """Two orders holding one fence means the lock's counter went back: the second is refused
    with the fence the ledger has seen, which the saga passes to the lock as its floor."""
    row = Row(1, ACCOUNT, "customer", "USD", D(10), D(0), 3, 5)
    kw = {"account_id": ACCOUNT, "asset": "USD", "value": D(4), "fence": 5, "customer_fence": 5}
    moves = rules.reserve(row, order_key=KEY, customer_fence_owner=KEY, **kw)  # its own retry
    assert [(m.bucket, m.amount) for m in moves] == [("available", D(-4)), ("held", D(4))]
    other = refusal(rules.reserve, row, order_key=f"{ACCOUNT}/o-2", customer_fence_owner=KEY, **kw)
    assert other.error_type == errors.STALE_FENCE
    assert other.details == ({"fence": 5, "last_fence": 5},)
    # A fence recorded before owners were (NULL): equal is refused from everyone.
    legacy = refusal(rules.reserve, row, order_key=KEY, customer_fence_owner=None, **kw)
    assert legacy.error_type == errors.STALE_FENCE
    # A greater fence needs no owner match.
    assert rules.reserve(row, **{**kw, "fence": 6}, order_key=f"{ACCOUNT}/o-2",
                         customer_fence_owner=KEY)  # fmt: skip


def test_a_buy_fill_pays_the_omnibus_and_the_fee_from_the_hold() -> None:
    book = Book()
    book.fund(ACCOUNT, "USD", D("1000.00"))
    hold = reserved(book, "buy", D("400.00"))
    hold = booked(book, hold, D(2), D("300.505"), D("0.75"))
    assert (hold.posted_qty, hold.posted_cash, hold.posted_fee) == (D(2), D("300.51"), D("0.75"))
    assert hold.held_remaining == D("98.74")
    assert book.of(ACCOUNT, "USD") == (D("600.00"), D("98.74"))
    assert book.of(ACCOUNT, "AAPL") == (D(2), 0)
    omnibus, fees = (rules.firm_shard(o, KEY) for o in (OMNIBUS, FEES))
    assert book.of(omnibus, "USD") == (D("300.51"), 0)
    assert book.of(omnibus, "AAPL") == (D(-2), 0)
    assert book.of(fees, "USD") == (D("0.75"), 0)


def test_a_sell_fill_pays_the_customer_the_proceeds_less_the_fee() -> None:
    book = Book()
    book.fund(ACCOUNT, "AAPL", D(3))
    hold = reserved(book, "sell", D(3))
    hold = booked(book, hold, D(1), D("150.25"), D("0.50"))
    assert hold.held_remaining == D(2)
    assert book.of(ACCOUNT, "AAPL") == (0, D(2))
    assert book.of(ACCOUNT, "USD") == (D("149.75"), 0)


def test_fill_refusals() -> None:
    hold = Hold(order_id=KEY, owner=ACCOUNT, asset="USD", held_remaining=D(100), side="buy",
                symbol="AAPL", posted_qty=D(1), posted_notional=D(50), posted_cash=D(50),
                posted_fee=D("0.50"))  # fmt: skip
    assert rules.fill(hold, D(1), D(50), D("0.50")) is None  # already booked
    assert rules.fill(hold, D("0.5"), D(1), D(0)) is None  # an older report
    backwards = refusal(rules.fill, hold, D(2), D(49), D(1))
    assert backwards.error_type == errors.HOLD_STATE and "backwards" in backwards.message
    assert "backwards" in refusal(rules.fill, hold, D(2), D(60), D("0.25")).message
    over = refusal(rules.fill, hold, D(3), D("150.01"), D(1))
    assert over.error_type == errors.HOLD_STATE
    assert over.details == ({"needed": "100.51", "held": "100"},)
    closed = rules.voided(hold)
    assert refusal(rules.fill, closed, D(2), D(60), D(1)).error_type == errors.HOLD_STATE
    assert rules.fill(closed, D(1), D(50), D("0.50")) is None  # a repeat still answers


def test_a_fill_beyond_the_orders_quantity_or_price_bound_is_refused() -> None:
    buy = Hold(order_id=KEY, owner=ACCOUNT, asset="USD", held_remaining=D(1000), side="buy",
               symbol="AAPL", qty=D(2), limit_price=D(50))  # fmt: skip
    assert rules.fill(buy, D(2), D(100), D(1)) is not None  # exactly at both bounds
    assert "quantity" in refusal(rules.fill, buy, D("2.000000001"), D(100), D(1)).message
    above = refusal(rules.fill, buy, D(1), D("50.01"), D(1))
    assert above.error_type == errors.HOLD_STATE and "above its limit" in above.message
    sell = Hold(order_id=KEY, owner=ACCOUNT, asset="AAPL", held_remaining=D(2), side="sell",
                symbol="AAPL", qty=D(2), limit_price=D(50))  # fmt: skip
    assert rules.fill(sell, D(1), D("50.5"), D(1)) is not None
    assert "below its limit" in refusal(rules.fill, sell, D(1), D("49.99"), D(1)).message
    market_sell = dataclasses.replace(sell, limit_price=None)
    assert rules.fill(market_sell, D(1), D("0.01"), D(0)) is not None


def test_a_void_releases_the_rest_once() -> None:
    book = Book()
    book.fund(ACCOUNT, "USD", D(10))
    hold, released = voided(book, reserved(book, "buy", D(10)))
    assert released == D(10) and book.of(ACCOUNT, "USD") == (D(10), 0)
    assert rules.released(hold) == 0 and rules.void_moves(hold, book.row(ACCOUNT, "USD")) == []


def test_error_fills_book_against_the_error_account_and_refuse_another_shape() -> None:
    book = Book()
    pos = ErrorPosition(broker_order_id="b1", symbol="TSLA", side="buy")
    post = rules.error_fill(pos, "TSLA", "buy", D(1), D("250.125"))
    assert post is not None and post.cash_delta == D("250.13")
    book.apply(
        rules.error_fill_moves(pos, post, [book.row(*w) for w in rules.error_fill_rows(pos)])
    )
    assert book.of(ERROR, "TSLA") == (D(1), 0) and book.of(ERROR, "USD") == (D("-250.13"), 0)
    done = ErrorPosition("b1", "TSLA", "buy", D(1), D("250.125"), D("250.13"))
    assert rules.error_fill(done, "TSLA", "buy", D(1), D("250.125")) is None
    assert refusal(rules.error_fill, done, "TSLA", "sell", D(2), D(500)).error_type == (
        errors.HOLD_STATE
    )
    assert "backwards" in refusal(rules.error_fill, done, "TSLA", "buy", D(2), D(1)).message


def test_firm_shards_are_stable_and_keep_their_kind() -> None:
    shards = {rules.firm_shard(OMNIBUS, f"a/{i}") for i in range(200)}
    assert shards == {OMNIBUS} | {f"{OMNIBUS}~{n}" for n in range(1, rules.FIRM_SHARDS)}
    assert rules.firm_shard(FEES, KEY) == rules.firm_shard(FEES, KEY)
    assert {rules.firm_kind(s) for s in shards} == {"omnibus"}
    assert rules.firm_kind(ACCOUNT) == "customer"


@pytest.mark.parametrize(
    ("call", "args"),
    [
        (rules.amount, ("1.001", "USD")),
        (rules.amount, ("0", "USD")),
        (rules.amount, ("NaN", "AAPL")),
        (rules.cumulative, ("-1", "cum_qty")),
        (rules.cumulative, ("1.0000000001", "cum_qty", rules.QTY_QUANTUM)),
        (rules.check_asset, ("aapl",)),
        (rules.check_symbol, ("USD!",)),
        (rules.check_account_id, ("bad id",)),
        (rules.held_asset, ("sell", "AAPL", "USD")),
        (rules.check_idempotency_key, ("",)),
        (rules.check_idempotency_key, ("k" * (rules.MAX_KEY_LENGTH + 1),)),
        (rules.check_idempotency_key, ("a\x00b",)),
        (rules.check_idempotency_key, ("\udc80",)),
        (rules.check_idempotency_key, (None,)),
        (rules.price_bound, ("0",)),
        (rules.price_bound, ("-1",)),
        (rules.price_bound, ("NaN",)),
    ],
)
def test_validation_refusals(call: object, args: tuple[object, ...]) -> None:
    assert refusal(call, *args).error_type in (errors.INVALID_AMOUNT, errors.INVALID_REQUEST)


@pytest.mark.parametrize("key", ["k", "k" * rules.MAX_KEY_LENGTH, "a/o:void", "error:b:fill:1 é"])
def test_a_caller_key_may_be_any_text_up_to_the_limit(key: str) -> None:
    assert rules.check_idempotency_key(key) == key


# ------------------------------------------------------------------ properties

CENTS = st.integers(min_value=1, max_value=10_000_000).map(lambda c: D(c) / 100)
# cumulative reports of one order: (qty, notional, fee) growing together
STEPS = st.lists(
    st.tuples(
        st.integers(1, 5_000).map(lambda n: D(n) / 1000),  # qty increase
        st.integers(1, 40_000_000).map(lambda n: D(n) / 1000),  # notional increase (exact)
        st.integers(0, 300).map(lambda n: D(n) / 100),  # fee increase
    ),
    min_size=1,
    max_size=6,
)


def cumulative(steps: list[tuple[D, D, D]]) -> list[tuple[D, D, D]]:
    out, q, n, f = [], D(0), D(0), D(0)
    for dq, dn, df in steps:
        q, n, f = q + dq, n + dn, f + df
        out.append((q, n, f))
    return out


def buy_hold_for(reports: list[tuple[D, D, D]], slack: D) -> D:
    _, notional, fee = reports[-1]
    return round_cash(notional) + fee + slack


@PROPERTY
@given(STEPS, CENTS, st.data())
def test_fills_in_any_order_or_repeated_book_the_final_figures_once(
    steps: list[tuple[D, D, D]], slack: D, data: st.DataObject
) -> None:
    reports = cumulative(steps)
    arrivals = [*data.draw(st.lists(st.sampled_from(reports), max_size=12)), reports[-1]]
    arrivals = data.draw(st.permutations(arrivals))
    book = Book()
    value = buy_hold_for(reports, slack)
    book.fund(ACCOUNT, "USD", value)
    hold = reserved(book, "buy", value)
    for report in arrivals:
        hold = booked(book, hold, *report)
    qty, notional, fee = reports[-1]
    assert (hold.posted_qty, hold.posted_notional, hold.posted_fee) == (qty, notional, fee)
    assert hold.held_remaining == value - round_cash(notional) - fee
    assert book.of(ACCOUNT, "AAPL") == (qty, 0)
    assert book.of(ACCOUNT, "USD") == (0, hold.held_remaining)
    assert book.total("USD") == 0 and book.total("AAPL") == 0


@PROPERTY
@given(STEPS, CENTS, st.integers(0, 6))
def test_buy_then_void_returns_exactly_the_rest_of_the_hold(
    steps: list[tuple[D, D, D]], slack: D, fills: int
) -> None:
    reports = cumulative(steps)
    book = Book()
    value = buy_hold_for(reports, slack)
    book.fund(ACCOUNT, "USD", value + D("5.00"))
    hold = reserved(book, "buy", value)
    for report in reports[:fills]:
        hold = booked(book, hold, *report)
    hold, released = voided(book, hold)
    paid = hold.posted_cash + hold.posted_fee
    assert released == value - paid
    assert book.of(ACCOUNT, "USD") == (value + D("5.00") - paid, 0)
    assert hold.held_remaining == 0 and hold.status == "voided"
    assert book.total("USD") == 0


@PROPERTY
@given(STEPS, CENTS)
def test_a_fill_never_uses_more_than_is_held(steps: list[tuple[D, D, D]], value: D) -> None:
    """Reports may add up to more than the hold: each is booked whole or refused whole."""
    book = Book()
    book.fund(ACCOUNT, "USD", value)
    hold = reserved(book, "buy", value)
    for report in cumulative(steps):
        _qty, notional, fee = report
        needed = round_cash(notional) + fee - hold.posted_cash - hold.posted_fee
        try:
            rules.fill(hold, *report)  # the rule itself refuses, not the never-negative backstop
        except Refused as exc:
            assert exc.error_type == errors.HOLD_STATE and needed > hold.held_remaining
            continue
        assert needed <= hold.held_remaining
        hold = booked(book, hold, *report)
        assert hold.held_remaining >= 0
        assert book.of(ACCOUNT, "USD") == (0, hold.held_remaining)
    assert hold.posted_cash + hold.posted_fee + hold.held_remaining == value


@PROPERTY
@given(STEPS, st.integers(1, 10).map(D))
def test_a_sell_fee_capped_at_the_proceeds_never_takes_the_customers_cash(
    steps: list[tuple[D, D, D]], extra: D
) -> None:
    """The workflow caps a sell's cumulative fee at its proceeds: then no sell fill is refused
    and the customer's cash only grows, even on proceeds below the minimum commission."""
    reports = [(q, n / 1000, D(0)) for q, n, _ in cumulative(steps)]  # small proceeds too
    book = Book()
    shares = reports[-1][0] + extra
    book.fund(ACCOUNT, "AAPL", shares)
    hold = reserved(book, "sell", shares)
    cash = D(0)
    for qty, notional, _ in reports:
        proceeds = round_cash(notional)
        fee = min(commission(proceeds, RATE, MINIMUM), proceeds)
        hold = booked(book, hold, qty, notional, fee)
        now, _ = book.of(ACCOUNT, "USD")
        assert now >= cash
        cash = now
    assert cash == hold.posted_cash - hold.posted_fee
    assert book.of(ACCOUNT, "AAPL") == (0, extra)


@PROPERTY
@given(st.sampled_from(["buy", "sell"]), STEPS, CENTS)
def test_every_posting_balances_per_asset(side: str, steps: list[tuple[D, D, D]], fund: D) -> None:
    book = Book()
    reports = cumulative(steps)
    cash = buy_hold_for(reports, fund)  # a sell's fees here are not capped: cash pays them
    value = cash if side == "buy" else reports[-1][0]
    book.fund(ACCOUNT, "USD", cash)
    book.fund(ACCOUNT, "AAPL", reports[-1][0])
    hold = reserved(book, side, value)
    for report in reports:
        post = rules.fill(hold, *report)
        assert post is not None
        rows = [book.row(owner, asset) for owner, asset in rules.fill_rows(hold)]
        moves = rules.fill_moves(post, rows)
        assert all(total == 0 for total in rules.net_by_asset(moves).values())
        hold = booked(book, hold, *report)
    pos = ErrorPosition(broker_order_id="b1", symbol="AAPL", side=side)
    post = rules.error_fill(pos, "AAPL", side, *reports[-1][:2])
    assert post is not None
    moves = rules.error_fill_moves(pos, post, [book.row(*w) for w in rules.error_fill_rows(pos)])
    assert all(total == 0 for total in rules.net_by_asset(moves).values())
