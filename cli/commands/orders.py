"""``ordersaga order place|status|replace|cancel|list`` and ``ordersaga reconcile``."""

from __future__ import annotations

import uuid
from typing import Any

import click

from cli.commands.common import (
    currency_value,
    echo_json,
    id_value,
    int_between,
    run,
    status_value,
    symbol_value,
    table,
    text_value,
)
from core.errors import UserError
from core.orderkey import OrderKey
from core.settings import Settings


def _state_summary(state: Any) -> dict[str, Any]:
    req = state.request
    return {
        "order": req.key,
        "status": state.status.value,
        "side": req.side,
        "qty": str(state.order_qty),
        "symbol": req.symbol,
        "type": req.order_type,
        "limit": "" if state.limit_sent is None else str(state.limit_sent),
        "tif": req.time_in_force,
        "filled": str(state.filled_qty),
        "cost": str(state.posted_cash),
        "fees": str(state.fees),
        "held": f"{state.held} {state.hold_asset or ''}".strip(),
        "released": str(state.released),
        "broker_order": state.broker_order_id or "",
        "replaced": ", ".join(state.replaced_ids) if state.replaced_ids else "",
        "reason": state.reason or "",
    }


def _print_state(state: Any, as_json: bool) -> None:
    if as_json:
        echo_json(state.model_dump(mode="json"))
        return
    summary = _state_summary(state)
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        click.echo(f"{k.ljust(width)}  {v}")
    if state.timeline:
        click.echo("timeline:")
        for entry in state.timeline:
            click.echo(f"  {entry.at.isoformat(timespec='seconds')}  {entry.event}")


async def _with_client(fn: Any) -> Any:
    from ordersaga.client import OrderClient

    async with OrderClient.connect(Settings()) as oc:
        return await fn(oc)


def register(cli: click.Group) -> None:
    @cli.group()
    def order() -> None:
        """Place, inspect, replace, cancel and list orders."""

    @order.command("place")
    @click.option("--account", "account_id", required=True, callback=id_value)
    @click.option("--symbol", required=True, callback=symbol_value)
    @click.option("--side", type=click.Choice(["buy", "sell"]), required=True)
    @click.option("--qty", required=True, callback=text_value, help="Quantity; up to 9 decimals.")
    @click.option("--type", "order_type", type=click.Choice(["market", "limit"]), default="market")
    @click.option("--limit-price", default=None, callback=text_value, help="Up to 4 decimals.")
    @click.option("--tif", type=click.Choice(["day", "gtc", "ioc"]), default="day")
    @click.option(
        "--pay",
        default="USD",
        show_default=True,
        callback=currency_value,
        help="Pay (a buy) or be paid (a sell) in USD or KRW, through the firm's FX desk.",
    )
    @click.option(
        "--order-id",
        default=None,
        callback=id_value,
        help="Your idempotency key (default: generated).",
    )
    @click.option("--wait", is_flag=True, help="Wait until the order is final.")
    @click.option("--json", "as_json", is_flag=True)
    def place(
        account_id: str,
        symbol: str,
        side: str,
        qty: str,
        order_type: str,
        limit_price: str | None,
        tif: str,
        pay: str,
        order_id: str | None,
        wait: bool,
        as_json: bool,
    ) -> None:
        """Place an order; returns once it is accepted (held) or refused."""
        from ordersaga.client import build_request

        try:  # checked whole before anything is contacted
            req = build_request(
                account_id=account_id,
                symbol=symbol,
                side=side,
                qty=qty,
                order_type=order_type,
                limit_price=limit_price,
                time_in_force=tif,
                order_id=order_id or uuid.uuid4().hex[:16],
                pay=pay,
            )
        except UserError as exc:
            raise click.ClickException(str(exc)) from None

        async def go(oc: Any) -> Any:
            placed = await oc.place_order(req)
            final = await oc.wait(account_id, req.order_id) if wait and placed.accepted else None
            return placed, final

        placed, final = run(_with_client(go))
        if final is not None:
            _print_state(final, as_json)
        elif as_json:
            echo_json(placed.model_dump(mode="json"))
        else:
            verdict = "accepted" if placed.accepted else "refused"
            extra = f" (held {placed.held} {placed.hold_asset})" if placed.accepted else ""
            reason = f": {placed.reason}" if placed.reason else ""
            click.echo(
                f"{OrderKey.of(placed.account_id, placed.order_id)} {verdict}{extra}{reason}"
            )
        if not placed.accepted:
            raise SystemExit(1)

    @order.command("status")
    @click.option("--account", "account_id", required=True, callback=id_value)
    @click.argument("order_id", callback=id_value)
    @click.option("--json", "as_json", is_flag=True)
    def status(account_id: str, order_id: str, as_json: bool) -> None:
        """Show an order's full state."""
        state = run(_with_client(lambda oc: oc.get_order(account_id, order_id)))
        _print_state(state, as_json)

    @order.command("cancel")
    @click.option("--account", "account_id", required=True, callback=id_value)
    @click.argument("order_id", callback=id_value)
    @click.option("--json", "as_json", is_flag=True)
    def cancel(account_id: str, order_id: str, as_json: bool) -> None:
        """Ask for an order to be canceled (refused once it is final)."""
        res = run(_with_client(lambda oc: oc.cancel_order(account_id, order_id)))
        if as_json:
            echo_json(res.model_dump(mode="json"))
        else:
            click.echo(f"cancel accepted: {res.status.value}; {res.detail}")

    @order.command("replace")
    @click.option("--account", "account_id", required=True, callback=id_value)
    @click.argument("order_id", callback=id_value)
    @click.option("--qty", default=None, callback=text_value, help="The new total quantity.")
    @click.option("--limit-price", default=None, callback=text_value, help="The new limit.")
    @click.option("--json", "as_json", is_flag=True)
    def replace(
        account_id: str, order_id: str, qty: str | None, limit_price: str | None, as_json: bool
    ) -> None:
        """Amend a live limit order (its total quantity, its limit, or both) at the broker.

        Returns once the broker has replaced it or refused; exits 1 when refused."""
        from ordersaga.client import build_replace

        try:  # checked before anything is contacted
            build_replace(qty=qty, limit_price=limit_price)
        except UserError as exc:
            raise click.ClickException(str(exc)) from None
        res = run(
            _with_client(
                lambda oc: oc.replace_order(account_id, order_id, qty=qty, limit_price=limit_price)
            )
        )
        if as_json:
            echo_json(res.model_dump(mode="json"))
        else:
            verdict = "replaced" if res.accepted else "not replaced"
            click.echo(
                f"{verdict}: {res.qty} at {res.limit_price}, held {res.held} "
                f"({res.status.value}); {res.detail}"
            )
        if not res.accepted:
            raise SystemExit(1)

    @order.command("resume")
    @click.option("--account", "account_id", required=True, callback=id_value)
    @click.argument("order_id", callback=id_value)
    @click.option("--json", "as_json", is_flag=True)
    def resume(account_id: str, order_id: str, as_json: bool) -> None:
        """Resume an order parked in NEEDS_ATTENTION once its cause is fixed."""
        res = run(_with_client(lambda oc: oc.resume_order(account_id, order_id)))
        if as_json:
            echo_json(res.model_dump(mode="json"))
        else:
            click.echo(f"resumed: {res.detail}")

    @order.command("list")
    @click.option("--account", "account_id", default=None, callback=id_value)
    @click.option("--status", default=None, callback=status_value, help="A status, any case.")
    @click.option("--symbol", default=None, callback=symbol_value)
    @click.option(
        "--limit", type=int, default=100, show_default=True, callback=int_between(1, 1000)
    )
    @click.option("--json", "as_json", is_flag=True)
    def list_cmd(
        account_id: str | None, status: str | None, symbol: str | None, limit: int, as_json: bool
    ) -> None:
        """List orders (Temporal visibility, then the orders table past retention)."""

        async def go(oc: Any) -> Any:
            found = await oc.list_orders(account_id, status, symbol, limit)
            return found, await oc.risk.trading_status()

        rows, trading = run(_with_client(go))
        if as_json:
            echo_json(rows)
            return
        if trading.state != "ACTIVE":  # the firm-wide state, when it refuses some orders
            click.echo(
                f"TRADING {trading.state} since {trading.changed_at.isoformat(timespec='seconds')}"
                f" by {trading.changed_by}: {trading.reason}"
            )
        if rows:
            click.echo(table(rows, ["order", "status", "symbol", "started", "source"]))
        else:
            click.echo("no orders")

    @cli.command("reconcile")
    @click.option(
        "--full", is_flag=True, help="Every broker order from the first, not from the watermark."
    )
    @click.option("--json", "as_json", is_flag=True)
    def reconcile(full: bool, as_json: bool) -> None:
        """Run the reconciler now (page by page) and print its report; breaks are recorded
        (`ordersaga breaks list`)."""
        from ordersaga.schedules import run_reconcile_now

        report = run(run_reconcile_now(Settings(), full=full))
        if as_json:
            echo_json(report.model_dump(mode="json"))
            return
        watermark = report.watermark.isoformat() if report.watermark else "none"
        click.echo(
            f"checked {report.checked} broker orders in {report.pages} pages; "
            f"late orders {report.late_orders}; "
            f"canceled at broker {report.canceled_at_broker}; "
            f"error fills booked {report.error_fills_booked}; "
            f"breaks recorded {report.breaks_recorded}; stuck {report.stuck}; "
            f"parked {report.parked}; watermark {watermark}"
        )
        if report.breaks_recorded or report.stuck or report.parked:
            click.echo("see `ordersaga breaks list`")
