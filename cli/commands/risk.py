"""``ordersaga trading halt|reduce|resume|status|history`` and ``ordersaga risk show|set|clear``.

The trading state is Postgres' (the reserve reads it in its transaction: the next order any
worker decides follows it); after the change the command updates the Web UI's mirror, the
``trading-state`` workflow. A mirror that cannot be updated is a warning on stderr, not a
failure: the change stands (``trading status --mirror`` updates it later). Every argument is
checked while the command line is parsed, before anything is contacted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click

from cli.commands.account import ledger_pool
from cli.commands.common import echo_json, id_value, int_between, run, table
from core import risk as rules
from core.errors import UserError
from core.money import InvalidAmount
from core.risk import TradingState
from core.settings import Settings

T = TypeVar("T")


def _checked(parse: Callable[[Any], T]) -> Callable[[click.Context, click.Parameter, Any], T]:
    """A click callback running one of core/risk.py's parsers: one line on a bad value."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> T:
        if value is None:
            return None  # type: ignore[return-value]
        try:
            return parse(value)
        except (UserError, InvalidAmount) as exc:
            name = max(param.opts, key=len) if isinstance(param, click.Option) else param.name
            raise click.ClickException(f"{name}: {exc}") from None

    return check


def _limit(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    return _checked(lambda value: rules.parse_limit(name, value))


async def _admin(action: Callable[[Any], Awaitable[T]], temporal: bool = False) -> T:
    """Run ``action`` with a RiskAdmin on the migrated database (and Temporal when asked)."""
    from ordersaga.risk import RiskAdmin

    settings = Settings()
    async with ledger_pool(settings) as pool:
        client = None
        if temporal:
            from core.temporal import connect

            try:
                client = await connect(settings)
            except RuntimeError as exc:  # the SDK's "Failed client connect": warned below
                click.echo(f"warning: cannot connect to Temporal: {exc}", err=True)
        return await action(RiskAdmin(pool, settings, client))


def _status_line(state: Any) -> str:
    return (
        f"trading {state.state} since {state.changed_at.isoformat(timespec='seconds')}"
        f" by {state.changed_by}: {state.reason}"
    )


reason_option = click.option(
    "--reason", required=True, callback=_checked(rules.parse_reason), help="Why (1-200 chars)."
)
by_option = click.option(
    "--by", default=None, callback=_checked(rules.parse_actor), help="Who (default: OS user)."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _set_state(state: TradingState, reason: str, by: str | None, as_json: bool) -> None:
    from ordersaga.risk import MirrorFailed

    async def go(admin: Any) -> tuple[Any, str | None]:
        try:
            return await admin.set_trading_state(state, reason, by), None
        except MirrorFailed as exc:
            return exc.change, str(exc)

    change, mirror_error = run(_admin(go, temporal=True))
    if as_json:
        echo_json({**change.model_dump(mode="json"), "mirror_error": mirror_error})
    else:
        click.echo(f"{_status_line(change)} (was {change.previous}; version {change.version})")
    if mirror_error:
        click.echo(
            f"warning: the Web UI's trading-state workflow was not updated ({mirror_error});"
            " orders follow the new state already. Run `ordersaga trading status --mirror`.",
            err=True,
        )


def register(cli: click.Group) -> None:
    @cli.group()
    def trading() -> None:
        """The firm-wide trading state: ACTIVE, REDUCING (sells only), HALTED (no new orders)."""

    @trading.command("halt")
    @reason_option
    @by_option
    @json_option
    def halt(reason: str, by: str | None, as_json: bool) -> None:
        """Refuse every new order (cancels still work)."""
        _set_state(TradingState.HALTED, reason, by, as_json)

    @trading.command("reduce")
    @reason_option
    @by_option
    @json_option
    def reduce(reason: str, by: str | None, as_json: bool) -> None:
        """Refuse new buys; sells and cancels still work."""
        _set_state(TradingState.REDUCING, reason, by, as_json)

    @trading.command("resume")
    @reason_option
    @by_option
    @json_option
    def resume(reason: str, by: str | None, as_json: bool) -> None:
        """Take every order again (ACTIVE)."""
        _set_state(TradingState.ACTIVE, reason, by, as_json)

    @trading.command("status")
    @click.option("--mirror", is_flag=True, help="Also update the Web UI's trading-state workflow.")
    @json_option
    def status(mirror: bool, as_json: bool) -> None:
        """The trading state as Postgres has it (the authority)."""

        async def go(admin: Any) -> Any:
            if mirror:
                await admin.mirror()
            return await admin.trading_status()

        state = run(_admin(go, temporal=mirror))
        if as_json:
            echo_json(state.model_dump(mode="json"))
        else:
            click.echo(_status_line(state))

    @trading.command("history")
    @click.option("--limit", type=int, default=20, show_default=True, callback=int_between(1, 1000))
    @json_option
    def history(limit: int, as_json: bool) -> None:
        """Every change of the trading state, newest first: who, why, when."""
        changes = run(_admin(lambda admin: admin.trading_history(limit)))
        rows = [c.model_dump(mode="json") for c in changes]
        if as_json:
            echo_json(rows)
        elif rows:
            click.echo(
                table(rows, ["version", "changed_at", "previous", "state", "changed_by", "reason"])
            )
        else:
            click.echo("no changes")

    @cli.group("risk")
    def risk_group() -> None:
        """Pre-trade risk limits: an account's overrides of the firm's defaults."""

    account_argument = click.argument("account_id", callback=id_value)

    @risk_group.command("show")
    @account_argument
    @json_option
    def show(account_id: str, as_json: bool) -> None:
        """The account's limits in force (its overrides over this environment's defaults) and
        its usage today (the New York date)."""
        got = run(_admin(lambda admin: admin.account_risk(account_id)))
        _print_risk(got, as_json)

    @risk_group.command("set")
    @account_argument
    @click.option("--max-order-notional", callback=_limit("max_order_notional"), help="USD.")
    @click.option("--max-order-qty", callback=_limit("max_order_qty"), help="Shares.")
    @click.option("--max-daily-notional", callback=_limit("max_daily_notional"), help="USD.")
    @click.option("--max-daily-orders", callback=_limit("max_daily_orders"), help="Orders.")
    @by_option
    @json_option
    def set_cmd(
        account_id: str,
        max_order_notional: Any,
        max_order_qty: Any,
        max_daily_notional: Any,
        max_daily_orders: Any,
        by: str | None,
        as_json: bool,
    ) -> None:
        """Override some of the account's limits (the others stay as they are)."""
        given = {
            "max_order_notional": max_order_notional,
            "max_order_qty": max_order_qty,
            "max_daily_notional": max_daily_notional,
            "max_daily_orders": max_daily_orders,
        }
        if all(v is None for v in given.values()):
            raise click.ClickException("give at least one limit to set")
        got = run(_admin(lambda admin: admin.set_limits(account_id, by=by, **given)))
        _print_risk(got, as_json)

    @risk_group.command("clear")
    @account_argument
    @by_option
    @json_option
    def clear(account_id: str, by: str | None, as_json: bool) -> None:
        """The firm's defaults apply to the account again."""
        got = run(_admin(lambda admin: admin.clear_limits(account_id, by=by)))
        _print_risk(got, as_json)


def _print_risk(got: Any, as_json: bool) -> None:
    if as_json:
        echo_json(got.model_dump(mode="json"))
        return
    overrides = got.overrides.model_dump()
    rows: list[dict[str, object]] = [
        {
            "limit": name.replace("_", "-"),
            "in_force": str(getattr(got.limits, name)),
            "source": "account" if overrides[name] is not None else "default",
        }
        for name in rules.LIMIT_NAMES
    ]
    click.echo(f"account {got.account_id}")
    click.echo(table(rows, ["limit", "in_force", "source"]))
    click.echo(f"today ({got.day}, New York): {got.usage.orders} orders, {got.usage.notional} USD")
