"""The FX leg's pure rules: the quote record, the conversions (rounded in the firm's favour), and
the postings of orders paid in won, followed from reserve to void on an in-memory book."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from hypothesis import given
from hypothesis import strategies as st

from activities.ledger import postings as rules
from activities.ledger.postings import FX, Hold, Refused
from core import errors
from core.fx import (
    PAIR,
    InvalidQuote,
    firm_quote,
    fx_record,
    krw_cost,
    krw_proceeds,
    parse_fx_record,
)
from core.ids import is_symbol
from core.money import InvalidAmount, validate_amount
from tests.unit.test_postings import ACCOUNT, KEY, PROPERTY, STEPS, Book, cumulative, refusal

NOW = 1_700_000_000.0
T = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
RATES = st.integers(100_000, 200_000_000).map(lambda n: D(n) / 10_000)  # 10 .. 20000 won/$


def record(**changes: object) -> str:
    base = json.loads(fx_record(D("1378.10"), D("1391.95"), T, NOW, NOW + 15))
    base.update(changes)
    return json.dumps(base)


# ------------------------------------------------------------------ the quote record


def test_a_written_record_reads_back_and_goes_stale_at_expiry_or_age() -> None:
    q = parse_fx_record(fx_record(D("1378.10"), D("1391.95"), T, NOW, NOW + 15), PAIR, NOW)
    assert (q.bid, q.ask, q.timestamp) == (D("1378.10"), D("1391.95"), T)
    assert not q.stale(NOW + 14, max_age_s=30)
    assert q.stale(NOW + 15, max_age_s=30)  # its own expiry
    assert q.stale(NOW + 11, max_age_s=10)  # the reader's limit, whichever is first


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"pair": "USDJPY"}, "wrong pair"),
        ({"ask": 1391.95}, "ask must be decimal text"),
        ({"bid": "NaN"}, "bid is not decimal text"),
        ({"bid": "1e3"}, "bid is not decimal text"),
        ({"ask": "-5"}, "ask is not decimal text"),
        ({"ask": "0"}, "ask must be in"),
        ({"ask": "1391.12345"}, "more than 4 decimals"),
        ({"bid": "1400"}, "bid 1400 above ask"),
        ({"timestamp": "2026-01-05T14:30:00"}, "timestamp has no zone"),
        ({"received_at": NOW + 60}, "received_at in the future"),
        ({"expires_at": NOW}, "expires_at is not after"),
        ({"expires_at": "soon"}, "expires_at must be a number"),
    ],
)
def test_a_record_that_is_not_a_rate_is_refused_with_its_reason(
    changes: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidQuote, match=reason):
        parse_fx_record(record(**changes), PAIR, NOW)


def test_the_firms_quote_rounds_the_bid_down_and_the_ask_up() -> None:
    assert firm_quote(D("1385"), D("0.01")) == (D("1378.07"), D("1391.93"))
    assert firm_quote(D("1385.001"), D("0")) == (D("1385.00"), D("1385.01"))


# ------------------------------------------------------------------ conversions and currencies


@given(st.integers(0, 10**12).map(lambda n: D(n) / 100), RATES)
def test_won_are_rounded_in_the_firms_favour_and_by_less_than_one(usd: D, rate: D) -> None:
    cost, proceeds = krw_cost(usd, rate), krw_proceeds(usd, rate)
    assert cost == cost.to_integral_value() and proceeds == proceeds.to_integral_value()
    assert usd * rate <= cost < usd * rate + 1
    assert usd * rate - 1 < proceeds <= usd * rate


def test_krw_has_no_minor_unit_and_is_no_symbol() -> None:
    assert validate_amount("250000", "KRW") == D("250000")
    with pytest.raises(InvalidAmount, match="more than 0 decimals for KRW"):
        validate_amount("1.5", "KRW")
    assert not is_symbol("KRW") and not is_symbol("USD") and is_symbol("AAPL")
    assert rules.check_asset("KRW") == "KRW"
    assert refusal(rules.check_asset, "krw").error_type == errors.INVALID_REQUEST


def test_a_rate_must_be_a_positive_rate_for_won() -> None:
    assert rules.fx_rate(D("1391.95"), "KRW") == D("1391.95")
    assert "unknown payment currency" in refusal(rules.fx_rate, D("1"), "EUR").message
    for bad in (D(0), D(-1), D("NaN"), D(10**6)):
        assert refusal(rules.fx_rate, bad, "KRW").error_type == errors.INVALID_AMOUNT


# ------------------------------------------------------------------ postings


def won_buy(book: Book, usd_hold: D, rate: D) -> Hold:
    won = krw_cost(usd_hold, rate)
    book.fund(ACCOUNT, "KRW", won)
    book.apply(rules.reserve(book.row(ACCOUNT, "KRW"), account_id=ACCOUNT, asset="KRW",
                             value=won, fence=1, order_key=KEY, customer_fence=0,
                             customer_fence_owner=None))  # fmt: skip
    return Hold(order_id=KEY, owner=ACCOUNT, asset="KRW", held_remaining=won, side="buy",
                symbol="AAPL", pay_asset="KRW", fx_rate=rate)  # fmt: skip


def book_fill(book: Book, hold: Hold, cum: tuple[D, D, D]) -> Hold:
    post = rules.fill(hold, *cum)
    if post is None:
        return hold
    moves = rules.fill_moves(post, [book.row(o, a) for o, a in rules.fill_rows(hold)])
    net = rules.net_by_asset(moves)
    assert not any(net.values()), net  # each currency (and the shares) balances on its own
    book.apply(moves)
    return post.hold_after(hold)


def desk(book: Book, asset: str) -> D:
    return sum((r.available for (o, a), r in book.rows.items() if a == asset and
                rules.firm_kind(o) == "fx"), D(0))  # fmt: skip


def test_a_won_buy_fill_moves_won_to_the_desk_and_the_desks_dollars_to_the_omnibus() -> None:
    book, rate = Book(), D("1391.95")
    hold = won_buy(book, D("192.48"), rate)  # 1 AAPL at 191.00 + 1.48 fee room
    assert hold.held_remaining == D(267_923)  # 192.48 x 1391.95 = 267922.536, rounded up
    hold = book_fill(book, hold, (D(1), D("190.10"), D("0.50")))
    # 190.60 USD with the fee cost 190.60 x 1391.95 = 265305.67 -> 265306 won
    assert book.of(ACCOUNT, "KRW") == (D(0), D(267_923 - 265_306))
    assert book.of(ACCOUNT, "AAPL") == (D(1), D(0))
    assert (desk(book, "KRW"), desk(book, "USD")) == (D(265_306), D("-190.60"))
    assert book.of(rules.firm_shard(FX, KEY), "KRW")[0] == D(265_306)  # the order's shard
    rest = rules.released(hold)
    book.apply(rules.void_moves(hold, book.row(ACCOUNT, "KRW")))
    assert rest == D(2_617) and book.of(ACCOUNT, "KRW") == (D(2_617), D(0))
    assert all(book.total(a) == 0 for a in ("KRW", "USD", "AAPL"))


def test_a_won_sell_pays_the_proceeds_less_the_fee_in_won_at_the_bid() -> None:
    book, bid = Book(), D("1378.10")
    book.fund(ACCOUNT, "AAPL", D(2))
    book.apply(rules.reserve(book.row(ACCOUNT, "AAPL"), account_id=ACCOUNT, asset="AAPL",
                             value=D(2), fence=1, order_key=KEY, customer_fence=0,
                             customer_fence_owner=None))  # fmt: skip
    hold = Hold(order_id=KEY, owner=ACCOUNT, asset="AAPL", held_remaining=D(2), side="sell",
                symbol="AAPL", pay_asset="KRW", fx_rate=bid)  # fmt: skip
    hold = book_fill(book, hold, (D(1), D("190.005"), D("0.50")))  # cash 190.01, net 189.51
    assert book.of(ACCOUNT, "KRW") == (krw_proceeds(D("189.51"), bid), D(0))  # 261166 won
    hold = book_fill(book, hold, (D(2), D("380.01"), D("0.95")))  # net 379.06 in all
    assert book.of(ACCOUNT, "KRW") == (D(522_382), D(0))  # floor(379.06 x 1378.10)
    assert book.of(ACCOUNT, "USD") == (D(0), D(0))  # the customer's dollars are untouched
    assert (desk(book, "KRW"), desk(book, "USD")) == (D(-522_382), D("379.06"))


def test_a_won_hold_is_not_resized() -> None:
    book = Book()
    hold = won_buy(book, D(100), D(1400))
    got = refusal(rules.resize, hold, hold.held_remaining, book.row(ACCOUNT, "KRW"),
                  budget=D(200_000), qty=D(1), limit_price=None, fence=2, customer_fence=1,
                  customer_fence_owner=KEY)  # fmt: skip
    assert got.error_type == errors.HOLD_STATE and "paid in KRW" in got.message


@PROPERTY
@given(STEPS, RATES, st.integers(0, 500).map(lambda n: D(n) / 100), st.data())
def test_won_charged_plus_won_refunded_is_what_was_held_whatever_the_fills(
    steps: list[tuple[D, D, D]], rate: D, slack: D, data: st.DataObject
) -> None:
    reports = cumulative(steps)
    _, notional, fee = reports[-1]
    usd_hold = rules.round_cash(notional) + fee + slack
    book = Book()
    hold = start = won_buy(book, usd_hold, rate)
    for cum in data.draw(st.permutations(reports)):  # in any order, the last figures win
        hold = book_fill(book, hold, cum)
    charged = start.held_remaining - hold.held_remaining
    book.apply(rules.void_moves(hold, book.row(ACCOUNT, "KRW")))
    refunded = rules.released(hold)
    assert charged == krw_cost(rules.round_cash(notional) + fee, rate)  # the cumulative figures
    assert charged + refunded == start.held_remaining
    assert refunded == krw_cost(usd_hold, rate) - charged >= 0
    assert desk(book, "KRW") == charged and desk(book, "USD") == -(rules.round_cash(notional) + fee)
    assert all(book.total(a) == 0 for a in ("KRW", "USD", "AAPL"))


def test_a_won_fill_needing_more_won_than_held_is_refused() -> None:
    book = Book()
    hold = won_buy(book, D("100.00"), D(1400))
    hold = dataclasses.replace(hold, held_remaining=hold.held_remaining - 1)
    got = refusal(rules.fill, hold, D(1), D("99.50"), D("0.50"))
    assert got.error_type == errors.HOLD_STATE and "needs 140000 KRW" in got.message
    with pytest.raises(Refused):
        rules.fill(dataclasses.replace(hold, status="voided"), D(1), D(1), D(0))
