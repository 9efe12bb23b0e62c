"""``ordersaga account open|deposit|withdraw|show``: the ledger straight from Postgres.

Needs only Postgres, migrated by ``ordersaga db migrate`` (or ``ordersaga dev up``); these
commands connect as the application role and never change the schema. Every refusal (bad
amount, unknown account, too little available, a database not migrated) is one line on stderr
and a non-zero exit.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import TypeVar

import asyncpg
import click
from temporalio.exceptions import ApplicationError

from activities.ledger import (
    AccountBalances,
    Balance,
    DepositInput,
    Ledger,
    OpenAccountInput,
    TransferResult,
    WithdrawInput,
    get_balances,
)
from activities.ledger.postings import q
from cli.commands.common import (
    asset_value,
    currency_value,
    echo_json,
    id_value,
    run,
    table,
    text_value,
)
from core.db import create_pool, pending_migrations
from core.errors import UserError
from core.money import InvalidAmount, is_currency, validate_amount
from core.settings import Settings

T = TypeVar("T")


def plain(d: Decimal) -> str:
    """Fixed-point text (never 1E+2 or 0E-9)."""
    return format(d, "f")


NOT_MIGRATED = "the ledger database is not migrated: run `ordersaga db migrate`"


@asynccontextmanager
async def ledger_pool(settings: Settings | None = None) -> AsyncIterator[asyncpg.Pool]:
    """A small pool on a migrated database; a database that is missing or behind the code's
    migrations is one line telling the user what to run (schema changes are a deliberate step)."""
    settings = settings or Settings()
    try:
        pending = await pending_migrations(settings.database_url)
    except asyncpg.exceptions.InvalidCatalogNameError:
        raise UserError(NOT_MIGRATED) from None
    except (
        asyncpg.exceptions.InvalidAuthorizationSpecificationError,
        asyncpg.exceptions.InsufficientPrivilegeError,
    ) as exc:  # no application role yet, or one without its grants
        raise UserError(f"{exc}: run `ordersaga db migrate --init-roles`") from None
    if pending:
        raise UserError(f"{NOT_MIGRATED} ({len(pending)} pending)")
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        yield pool
    finally:
        await pool.close()


async def with_ledger(action: Callable[[Ledger, asyncpg.Pool], Awaitable[T]]) -> T:
    """Run ``action`` against the ledger; refusals become one-line user errors."""
    settings = Settings()
    async with ledger_pool(settings) as pool:
        try:
            return await action(Ledger(pool, settings.ledger_cas_attempts), pool)
        except ApplicationError as exc:
            raise UserError(exc.message) from None


def _transfer_json(result: TransferResult) -> dict[str, str | int]:
    return {
        "account_id": result.account_id,
        "asset": result.asset,
        "amount": plain(result.amount),
        "available_after": plain(result.available_after),
        "entry_id": result.entry_id,
    }


def balances_json(result: AccountBalances) -> dict[str, object]:
    return {
        "account_id": result.account_id,
        "currency": result.currency,
        "last_fence": result.last_fence,
        "balances": [
            {
                "asset": b.asset,
                "available": plain(b.available),
                "held": plain(b.held),
                "version": b.version,
                **_settlement_json(b),
            }
            for b in result.balances
        ],
    }


def _settlement_json(b: Balance) -> dict[str, str | None]:
    """Cash rows: settled (withdrawable), unsettled (sale proceeds not yet settled) and when
    the first of them settles (None: nothing unsettled)."""
    if not is_currency(b.asset):
        return {}
    return {
        "settled": plain(q(b.settled, b.asset)),
        "unsettled": plain(q(b.unsettled, b.asset)),
        "settles_on": b.next_settles.isoformat() if b.next_settles else None,
    }


def _echo_transfer(verb: str, result: TransferResult, as_json: bool) -> None:
    if as_json:
        echo_json(_transfer_json(result))
        return
    click.echo(
        f"{verb} {plain(result.amount)} {result.asset} "
        f"{'to' if verb == 'deposited' else 'from'} {result.account_id}; "
        f"available {plain(result.available_after)} {result.asset}"
    )


def register(cli: click.Group) -> None:
    @cli.group()
    def account() -> None:
        """Customer accounts in the ledger."""

    json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    key_option = click.option(
        "--idempotency-key",
        default=None,
        callback=text_value,
        help="Reuse to make a retried command apply once.",
    )
    account_argument = click.argument("account_id", callback=id_value)
    asset_option = click.option(
        "--asset",
        default=None,
        callback=asset_value,
        help="USD, KRW or a symbol's shares (default USD).",
    )
    currency_option = click.option(
        "--currency",
        default=None,
        callback=currency_value,
        help="USD or KRW (whole won); the same as --asset for cash.",
    )

    @account.command("open")
    @account_argument
    @click.option("--currency", default="USD", show_default=True, callback=text_value)
    @json_option
    def open_cmd(account_id: str, currency: str, as_json: bool) -> None:
        """Open ACCOUNT_ID (a second open is a no-op)."""
        inp = OpenAccountInput(account_id=account_id, currency=currency)
        result = run(with_ledger(lambda ledger, _: ledger.open_account(inp)))
        if as_json:
            echo_json(result.model_dump(mode="json"))
        elif result.created:
            click.echo(f"opened account {result.account_id} ({result.currency})")
        else:
            click.echo(f"account {result.account_id} is already open ({result.currency})")

    @account.command("deposit")
    @account_argument
    @click.argument("amount", callback=text_value)
    @asset_option
    @currency_option
    @key_option
    @json_option
    def deposit_cmd(
        account_id: str,
        amount: str,
        asset: str | None,
        currency: str | None,
        idempotency_key: str | None,
        as_json: bool,
    ) -> None:
        """Deposit AMOUNT of an asset into ACCOUNT_ID from external funding."""
        asset = _one_asset(asset, currency)
        inp = DepositInput(
            account_id=account_id,
            amount=_amount_text(amount, asset),
            asset=asset.upper(),
            idempotency_key=idempotency_key or f"cli-deposit-{uuid.uuid4()}",
        )
        result = run(with_ledger(lambda ledger, _: ledger.deposit(inp)))
        _echo_transfer("deposited", result, as_json)

    @account.command("withdraw")
    @account_argument
    @click.argument("amount", callback=text_value)
    @asset_option
    @currency_option
    @key_option
    @json_option
    def withdraw_cmd(
        account_id: str,
        amount: str,
        asset: str | None,
        currency: str | None,
        idempotency_key: str | None,
        as_json: bool,
    ) -> None:
        """Withdraw AMOUNT from ACCOUNT_ID's available balance to external funding."""
        asset = _one_asset(asset, currency)
        inp = WithdrawInput(
            account_id=account_id,
            amount=_amount_text(amount, asset),
            asset=asset.upper(),
            idempotency_key=idempotency_key or f"cli-withdraw-{uuid.uuid4()}",
        )
        result = run(with_ledger(lambda ledger, _: ledger.withdraw(inp)))
        _echo_transfer("withdrew", result, as_json)

    @account.command("show")
    @account_argument
    @json_option
    def show_cmd(account_id: str, as_json: bool) -> None:
        """Available and held per asset, with each row's version."""
        result = run(with_ledger(lambda _, pool: get_balances(pool, account_id)))
        if as_json:
            echo_json(balances_json(result))
            return
        click.echo(f"account {result.account_id} ({result.currency})")
        rows = balances_json(result)["balances"]
        assert isinstance(rows, list)
        cols = ["asset", "available", "held", "settled", "unsettled", "settles_on", "version"]
        click.echo(table([{k: v for k, v in r.items() if v is not None} for r in rows], cols))


def _one_asset(asset: str | None, currency: str | None) -> str:
    """--asset or --currency (USD when neither); both, naming two things, is refused."""
    if asset is not None and currency is not None and asset != currency:
        raise click.ClickException(f"give --asset or --currency, not both ({asset}, {currency})")
    return currency or asset or "USD"


def _amount_text(text: str, asset: str) -> Decimal:
    """Refuse a bad amount here, before any connection is made."""
    try:
        return validate_amount(text, asset.upper())
    except InvalidAmount as exc:
        raise click.ClickException(str(exc)) from None
