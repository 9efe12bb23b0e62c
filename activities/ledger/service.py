"""``Ledger``: the ledger's operations as plain async code (no Temporal activity context).

Each operation validates its input, then runs one transaction (``store.transact``): read what it
decides on, let the posting rules (postings.py) say what moves, compare-and-set and journal the
moves, record the result under the operation's idempotency key. A repeat of the key returns the
first result and changes nothing. The activities (activities.py), the SDK and the CLI call this.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

import asyncpg

from activities.ledger import postings as rules
from activities.ledger import settlement, store
from activities.ledger.models import (
    DepositInput,
    ErrorFillInput,
    ErrorFillResult,
    OpenAccountInput,
    OpenAccountResult,
    PostFillInput,
    PostFillResult,
    ReserveInput,
    ReserveResult,
    ResizeHoldInput,
    ResizeHoldResult,
    TransferResult,
    VoidInput,
    VoidResult,
)
from activities.ledger.postings import EXTERNAL, Hold, Refused, firm_shard, q
from activities.ledger.risk import check_amendment, check_and_count
from activities.orders import REFUSED_STATUS, RESERVED_STATUS, insert_order
from core import errors
from core.money import CASH_ASSET, is_currency
from core.risk import RiskLimits, order_notional

T = TypeVar("T")
ZERO = Decimal(0)


@contextmanager
def refusals() -> Iterator[None]:
    """The posting rules' refusals leave as non-retryable ApplicationErrors."""
    try:
        yield
    except Refused as exc:
        raise store.application_error(exc) from None


class Ledger:
    def __init__(
        self, pool: asyncpg.Pool, cas_attempts: int = 50, risk: RiskLimits | None = None
    ) -> None:
        self._pool = pool
        self._cas_attempts = cas_attempts
        self._risk = risk or RiskLimits()  # the firm's default limits (settings.risk)

    async def _transact(self, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """The unit of work; one method so a benchmark can count the reruns."""
        return await store.transact(self._pool, body, self._cas_attempts)

    # -- accounts

    async def open_account(self, input: OpenAccountInput) -> OpenAccountResult:
        """Open a customer account and its row in its currency (USD, or KRW for a won account,
        which may still hold dollars and shares); opening twice is a no-op."""
        with refusals():
            account_id = rules.check_account_id(input.account_id)
            if not is_currency(input.currency):
                raise Refused(
                    f"unsupported currency {str(input.currency)[:20]!r} (USD, KRW)",
                    errors.INVALID_REQUEST,
                )
        async with self._pool.acquire() as conn, conn.transaction():
            await store.ensure_firm_accounts(conn)
            created = await conn.fetchval(store.INSERT_CUSTOMER, account_id, input.currency)
            await conn.execute(store.INSERT_ROW, account_id, "customer", input.currency)
        return OpenAccountResult(
            account_id=account_id, currency=input.currency, created=bool(created)
        )

    async def deposit(self, input: DepositInput) -> TransferResult:
        """Move ``amount`` of ``asset`` from '$external' to the customer."""
        return await self._transfer("deposit", input, into_customer=True)

    async def withdraw(self, input: DepositInput) -> TransferResult:
        """Move ``amount`` from the customer's available balance to '$external'."""
        return await self._transfer("withdraw", input, into_customer=False)

    async def _transfer(
        self, code: str, input: DepositInput, into_customer: bool
    ) -> TransferResult:
        with refusals():
            asset = rules.check_asset(input.asset)
            amount = rules.amount(input.amount, asset)
            caller_key = rules.check_idempotency_key(input.idempotency_key)
        account_id = input.account_id
        # The caller's key, scoped by account (migrations/0006): another customer's choice of
        # the same key is another transfer, never a refusal of this one.
        key = f"{account_id}/{caller_key}"
        args = store.args_hash(code, {"account_id": account_id, "asset": asset, "amount": amount})

        async def body(conn: asyncpg.Connection) -> TransferResult:
            done = await store.recorded(conn, key, code, args, TransferResult)
            if done is not None:
                return done
            await store.customer(conn, account_id)
            customer, external = await store.rows(
                conn, (account_id, asset), (firm_shard(EXTERNAL, account_id), asset)
            )
            if not into_customer:  # only settled cash leaves (settlement.py)
                await settlement.check_settled(conn, account_id, asset, customer.available, amount)
            moves = rules.transfer(customer, external, amount, into_customer=into_customer)
            entry_id = await store.apply(conn, moves, key=key, code=code, order_id=None)
            assert entry_id is not None
            _, available_after, _ = rules.balances_after(moves)[customer.id]
            result = TransferResult(
                account_id=account_id,
                asset=asset,
                amount=amount,
                available_after=q(available_after, asset),
                entry_id=entry_id,
            )
            await store.record(conn, key, code, args, result)
            return result

        with refusals():
            return await self._transact(body)

    # -- holds

    async def reserve(self, input: ReserveInput) -> ReserveResult:
        """Hold ``amount`` of ``asset`` for an order (cash for a buy, shares for a sell), and
        record the order row if given, in one transaction guarded by the fencing token."""
        with refusals():
            symbol = rules.check_symbol(input.symbol)
            pay_asset = input.pay_asset
            rate = None if pay_asset is None else rules.fx_rate(input.fx_rate, pay_asset)
            asset = rules.held_asset(input.side, symbol, input.asset, pay_asset)
            amount = rules.amount(input.amount, asset)
            qty, limit_price = hold_bounds(input, symbol)
            notional = risk_notional(input, qty, limit_price)
        order_key, key, fence = input.order_key, input.idempotency_key, input.fence
        args = reserve_args_hash(input, asset=asset, amount=amount, symbol=symbol)

        async def body(conn: asyncpg.Connection) -> ReserveResult:
            await store.lock_order(conn, order_key)
            bare_id = input.order.order_id if input.order is not None else None
            view = await conn.fetchrow(
                store.RESERVE_VIEW, key, order_key, input.account_id, asset, bare_id
            )
            done = first_reserve(view, input, key=key, args=args, asset=asset)
            if done is not None:
                return done
            if view["order_status"] == REFUSED_STATUS and (
                input.order is not None and view["order_params_hash"] == input.order.params_hash
            ):
                # An earlier try of this order refused it (a quote stale then, say) and wrote its
                # row: that answer stands, and this retry holds nothing.
                raise Refused(view["order_reason"] or "refused", errors.ORDER_REFUSED)
            if view["tombstoned"]:
                raise Refused(f"order {order_key!r} was already voided", errors.HOLD_STATE)
            if view["has_hold"]:
                raise Refused(
                    f"order {order_key!r} already has a hold under another idempotency key",
                    errors.HOLD_STATE,
                )
            if not view["customer_exists"]:
                raise Refused(f"unknown account {input.account_id!r}", errors.UNKNOWN_ACCOUNT)
            await check_and_count(  # pre-trade risk, counted in this transaction
                conn,
                account_id=input.account_id,
                side=input.side,
                qty=qty if qty is not None else (amount if asset == symbol else None),
                notional=notional,
                defaults=self._risk,
            )
            row = store.row_of(view)
            moves = rules.reserve(
                row,
                account_id=input.account_id,
                asset=asset,
                value=amount,
                fence=fence,
                order_key=order_key,
                customer_fence=view["customer_fence"],
                customer_fence_owner=view["customer_fence_owner"],
            )
            assert row is not None
            status = await conn.execute(
                store.ADVANCE_CUSTOMER_FENCE, input.account_id, fence, order_key
            )
            if status != "UPDATE 1":
                raise store.Conflict  # a newer fence landed meanwhile; the rerun reports it
            await store.apply(
                conn,
                moves,
                key=key,
                code="reserve",
                order_id=order_key,
                fence=store.Fence(fence, order_key),
            )
            if input.order is not None:
                await insert_order(conn, input.order, RESERVED_STATUS)
            hold_id = await conn.fetchval(
                store.INSERT_HOLD,
                order_key,
                input.account_id,
                row.id,
                asset,
                amount,
                input.side,
                symbol,
                qty,
                limit_price,
                pay_asset,
                rate,
            )
            _, available_after, _ = rules.balances_after(moves)[row.id]
            result = ReserveResult(
                hold_id=hold_id,
                order_key=order_key,
                asset=asset,
                amount=amount,
                available_after=q(available_after, asset),
                fence=fence,
                price_bound=limit_price,
                fx_rate=rate,
            )
            await store.record(conn, key, "reserve", args, result)
            return result

        with refusals():
            return await self._transact(body)

    async def post_fill(self, input: PostFillInput) -> PostFillResult:
        """Book the increase of an order's cumulative fill (qty, exact notional, fee) against
        its hold, keyed by order key + cumulative qty."""
        with refusals():
            cum_qty = rules.cumulative(input.cum_qty, "cum_qty", rules.QTY_QUANTUM)
            cum_notional = rules.cumulative(input.cum_notional, "cum_notional")
            cum_fee = rules.cumulative(input.cum_fee, "cum_fee", rules.FEE_QUANTUM)
        order_key = input.order_key
        key = f"{order_key}:fill:{store.plain(cum_qty)}"
        args = store.args_hash("post", {"notional": cum_notional, "fee": cum_fee})

        async def body(conn: asyncpg.Connection) -> PostFillResult:
            rec = await conn.fetchrow(store.SELECT_OPERATION_AND_HOLD, key, order_key, "post")
            done = store.replay(rec, key, "post", args, PostFillResult)
            if done is not None:
                return done
            hold = store.hold_of(rec)
            if hold is None:
                raise Refused(f"no hold for order {order_key!r}", errors.HOLD_STATE)
            post = rules.fill(hold, cum_qty, cum_notional, cum_fee)
            if post is None:
                return _posted(hold, applied=False)
            rows = await store.rows(conn, *rules.fill_rows(hold))
            moves = rules.fill_moves(post, rows)
            entry_id = await store.apply(conn, moves, key=key, code="post", order_id=order_key)
            await settlement.book_proceeds(conn, hold, moves, entry_id, datetime.now(UTC))
            after = post.hold_after(hold)
            await store.cas_hold(conn, rec, after)
            result = _posted(after, applied=True, post=post)
            await store.record(conn, key, "post", args, result)
            return result

        with refusals():
            return await self._transact(body)

    async def resize_hold(self, input: ResizeHoldInput) -> ResizeHoldResult:
        """Give an order's open hold a new budget and bounds (the order was replaced): grow it
        from the account's available funds, fenced like a reserve, or release what it no longer
        needs. One transaction; a repeat of the key returns the first result."""
        order_key, key = input.order_key, input.idempotency_key
        with refusals():
            budget = rules.cumulative(input.budget, "budget")
            qty = rules.cumulative(input.qty, "qty", rules.QTY_QUANTUM)
            if qty <= 0:
                raise Refused("qty must be positive", errors.INVALID_AMOUNT)
            limit = None if input.limit_price is None else rules.price_bound(input.limit_price)
        args = store.args_hash("resize", {"budget": budget, "qty": qty, "limit": limit})

        async def body(conn: asyncpg.Connection) -> ResizeHoldResult:
            await store.lock_order(conn, order_key)
            rec = await conn.fetchrow(store.SELECT_OPERATION_AND_HOLD, key, order_key, "resize")
            done = store.replay(rec, key, "resize", args, ResizeHoldResult)
            if done is not None:
                return done
            hold = store.hold_of(rec)
            if hold is None:
                raise Refused(f"no hold for order {order_key!r}", errors.HOLD_STATE)
            budget_q = q(budget, hold.asset)
            if budget_q != budget:
                raise Refused(f"budget {budget} is finer than {hold.asset}", errors.INVALID_AMOUNT)
            if input.fence is not None and input.notional is not None:
                await check_amendment(  # pre-trade risk on the amended order, counted here
                    conn,
                    account_id=hold.owner,
                    side=hold.side,
                    qty=rules.cumulative(input.amended_qty or qty, "amended qty"),
                    notional=rules.cumulative(input.notional, "notional"),
                    added=rules.cumulative(max(input.added_notional or 0, 0), "added notional"),
                    defaults=self._risk,
                )
            fences = await conn.fetchrow(store.SELECT_CUSTOMER_FENCE, hold.owner)
            (row,) = await store.rows(conn, (hold.owner, hold.asset))
            after, moves = rules.resize(
                hold,
                rec["amount"],
                row,
                budget=budget,
                qty=qty,
                limit_price=limit,
                fence=input.fence,
                customer_fence=fences["last_fence"],
                customer_fence_owner=fences["last_fence_owner"],
            )
            fence = None
            if input.fence is not None and after.held_remaining > hold.held_remaining:
                status = await conn.execute(
                    store.ADVANCE_CUSTOMER_FENCE, hold.owner, input.fence, order_key
                )
                if status != "UPDATE 1":
                    raise store.Conflict  # a newer fence landed meanwhile; the rerun reports it
                fence = store.Fence(input.fence, order_key)
            await store.apply(conn, moves, key=key, code="resize", order_id=order_key, fence=fence)
            await store.cas_resize(conn, rec, budget, after)
            result = ResizeHoldResult(
                order_key=order_key,
                asset=hold.asset,
                budget=budget_q,
                held_remaining=q(after.held_remaining, hold.asset),
                moved=q(after.held_remaining - hold.held_remaining, hold.asset),
            )
            await store.record(conn, key, "resize", args, result)
            return result

        with refusals():
            return await self._transact(body)

    async def void(self, input: VoidInput) -> VoidResult:
        """Release whatever is left of the order's hold and close it; an order with no hold
        answers found=False and no later reserve can create one."""
        order_key, key = input.order_key, input.idempotency_key
        args = store.args_hash("void", {"order_id": order_key})

        async def body(conn: asyncpg.Connection) -> VoidResult:
            await store.lock_order(conn, order_key)
            rec = await conn.fetchrow(store.SELECT_OPERATION_AND_HOLD, key, order_key, "void")
            done = store.replay(rec, key, "void", args, VoidResult)
            if done is not None:
                return done
            hold = store.hold_of(rec)
            if hold is None:
                await conn.execute(store.INSERT_TOMBSTONE, order_key)
                result = VoidResult(order_key=order_key, found=False, released=ZERO)
            else:
                if hold.status == "open":
                    (row,) = await store.rows(conn, (hold.owner, hold.asset))
                    moves = rules.void_moves(hold, row)
                    await store.apply(conn, moves, key=key, code="void", order_id=hold.order_id)
                    await store.cas_hold(conn, rec, rules.voided(hold))
                result = VoidResult(
                    order_key=hold.order_id,
                    found=True,
                    released=q(rules.released(hold), hold.asset),
                    asset=hold.asset,
                )
            await store.record(conn, key, "void", args, result)
            return result

        with refusals():
            return await self._transact(body)

    async def book_error_fill(self, input: ErrorFillInput) -> ErrorFillResult:
        """Book the increase of a stray broker order's cumulative fill between '$omnibus' and
        '$error' (never a customer), keyed by broker order id + cumulative qty."""
        with refusals():
            symbol = rules.check_symbol(input.symbol)
            cum_qty = rules.cumulative(input.cum_qty, "cum_qty", rules.QTY_QUANTUM)
            cum_notional = rules.cumulative(input.cum_notional, "cum_notional")
        broker_id = input.broker_order_id
        key = f"error:{broker_id}:fill:{store.plain(cum_qty)}"
        args = store.args_hash(
            "error_fill", {"symbol": symbol, "side": input.side, "notional": cum_notional}
        )

        async def body(conn: asyncpg.Connection) -> ErrorFillResult:
            done = await store.recorded(conn, key, "error_fill", args, ErrorFillResult)
            if done is not None:
                return done
            pos, version = await store.error_position(
                conn, broker_id, input.client_order_id, symbol, input.side
            )
            post = rules.error_fill(pos, symbol, input.side, cum_qty, cum_notional)
            if post is None:
                return ErrorFillResult(
                    broker_order_id=broker_id,
                    applied=False,
                    qty_delta=ZERO,
                    cash_delta=ZERO,
                    posted_qty=pos.posted_qty,
                    posted_cash=pos.posted_cash,
                )
            rows = await store.rows(conn, *rules.error_fill_rows(pos))
            moves = rules.error_fill_moves(pos, post, rows)
            await store.apply(conn, moves, key=key, code="error_fill", order_id=broker_id)
            await store.cas_error_position(
                conn, broker_id, cum_qty, cum_notional, post.cash_after, version
            )
            result = ErrorFillResult(
                broker_order_id=broker_id,
                applied=True,
                qty_delta=post.qty_delta,
                cash_delta=post.cash_delta,
                posted_qty=cum_qty,
                posted_cash=post.cash_after,
            )
            await store.record(conn, key, "error_fill", args, result)
            return result

        with refusals():
            return await self._transact(body)


def hold_bounds(input: ReserveInput, symbol: str) -> tuple[Decimal | None, Decimal | None]:
    """The order's quantity and price bound the hold records (None: not known). The bound is the
    one the saga sends (a market buy's cap), else the order's limit (None for a market sell)."""
    order = input.order
    qty = rules.amount(order.qty, symbol, "order qty") if order is not None else None
    bound = input.price_bound
    if bound is None and order is not None:
        bound = order.limit_price
    return qty, rules.price_bound(bound) if bound is not None else None


def risk_notional(
    input: ReserveInput, qty: Decimal | None, bound: Decimal | None
) -> Decimal | None:
    """The order's notional for the risk check: qty x the price bound the hold records, else
    (a market sell) the saga's figure from its quote; None when neither is known."""
    if qty is not None and bound is not None:
        return order_notional(qty, bound)
    if input.notional is not None:
        return rules.amount(input.notional, CASH_ASSET, "notional")
    return None


def first_reserve(
    view: asyncpg.Record, input: ReserveInput, *, key: str, args: str, asset: str
) -> ReserveResult | None:
    """The reserve this order made before, if any: it wins over this try's numbers.

    A retried workflow task runs the accept phase again, quote included; a quote that moved
    since gives another amount and price bound for the same order. The hold made first is what
    the order holds (the customer has been told nothing yet, and the first try's amount is as
    good as this one's): return its result, with its bound, instead of refusing the key's reuse.
    Only for the same order: the row's parameters must match, and the hold's asset; anything
    else reusing the key is refused as before (IdempotencyMismatch).
    """
    try:
        done = store.replay(view, key, "reserve", args, ReserveResult)
    except Refused as exc:
        same_order = (
            exc.error_type == errors.IDEMPOTENCY_MISMATCH
            and input.order is not None
            and view["has_hold"]
            and view["hold_asset"] == asset
            and view["order_params_hash"] == input.order.params_hash
        )
        if not same_order:
            raise
        done = ReserveResult.model_validate(json.loads(view["op_result"]))
    if done is not None and done.price_bound is None and view["has_hold"]:
        done = done.model_copy(update={"price_bound": view["hold_limit"]})
    return done


def reserve_args_hash(input: ReserveInput, *, asset: str, amount: Decimal, symbol: str) -> str:
    """The reserve's idempotency hash. The fence is left out: a retry after a lost answer may
    carry a newer token. So is the price bound: a reserve first tried by a worker that did not
    send it must still match its retry from one that does (the saga derives it from the same
    quote and request as the amount, which is hashed). The order key is hashed under its old
    name, ``order_id``, so a retry of a reserve recorded before the rename still matches."""
    return store.args_hash(
        "reserve",
        {
            "account_id": input.account_id,
            "order_id": input.order_key,
            "asset": asset,
            "amount": amount,
            "side": input.side,
            "symbol": symbol,
            "order": input.order.model_dump(mode="json") if input.order else None,
            # Only when paid in won, so the hashes of USD reserves recorded before are unchanged.
            **(
                {"pay_asset": input.pay_asset, "fx_rate": input.fx_rate}
                if input.pay_asset is not None
                else {}
            ),
        },
    )


def _posted(hold: Hold, *, applied: bool, post: rules.Fill | None = None) -> PostFillResult:
    """A post's result: the hold's figures, with the deltas when this call booked them."""
    return PostFillResult(
        order_key=hold.order_id,
        applied=applied,
        qty_delta=post.qty_delta if post else ZERO,
        cash_delta=post.cash_delta if post else ZERO,
        fee_delta=post.fee_delta if post else ZERO,
        posted_qty=hold.posted_qty,
        posted_notional=hold.posted_notional,
        posted_cash=hold.posted_cash,
        posted_fee=hold.posted_fee,
        held_remaining=q(hold.held_remaining, hold.asset),
    )
