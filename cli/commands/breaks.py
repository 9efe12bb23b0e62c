"""``ordersaga breaks list | show | resolve``: the reconciler's breaks (``reconcile_breaks``)."""

from __future__ import annotations

from typing import Any

import click

from activities.reconcile import (
    BREAK_KINDS,
    BreakAlreadyResolved,
    BreakRecord,
    UnknownBreak,
    get_break,
    list_breaks,
    resolve_break,
)
from cli.commands import account
from cli.commands.common import echo_json, int_between, printable, run, table, text_value
from core.errors import UserError


def _break_id(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A break's id: a positive whole number (one line otherwise, before connecting)."""
    text = printable(value, param)
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 2**63:
        raise click.ClickException(f"BREAK_ID: invalid break id {value[:40]!r}")
    return int(text)


async def _pooled(fn: Any) -> Any:
    async with account.ledger_pool() as pool:
        try:
            return await fn(pool)
        except (UnknownBreak, BreakAlreadyResolved) as exc:
            raise UserError(str(exc)) from None


def _row(b: BreakRecord) -> dict[str, object]:
    return {
        "id": b.id,
        "kind": b.kind,
        "order": b.order_key,
        "last_seen": b.last_seen.isoformat(timespec="seconds"),
        "seen": b.times_seen,
        "resolved": b.resolved_by or "",
        "detail": b.detail,
    }


def register(cli: click.Group) -> None:
    @cli.group()
    def breaks() -> None:
        """The reconciler's breaks: late orders, fill mismatches, stuck and parked orders."""

    @breaks.command("list")
    @click.option("--all", "show_all", is_flag=True, help="Resolved breaks too.")
    @click.option("--resolved", is_flag=True, help="Only resolved breaks.")
    @click.option("--kind", type=click.Choice(BREAK_KINDS), default=None)
    @click.option(
        "--limit", type=int, default=100, show_default=True, callback=int_between(1, 1000)
    )
    @click.option("--json", "as_json", is_flag=True)
    def list_cmd(
        show_all: bool, resolved: bool, kind: str | None, limit: int, as_json: bool
    ) -> None:
        """Open breaks, most recently seen first."""
        which = None if show_all else resolved
        rows = run(_pooled(lambda p: list_breaks(p, resolved=which, kind=kind, limit=limit)))
        if as_json:
            echo_json([b.model_dump(mode="json") for b in rows])
        elif rows:
            click.echo(
                table(
                    [_row(b) for b in rows],
                    ["id", "kind", "order", "last_seen", "seen", "resolved", "detail"],
                )
            )
        else:
            click.echo("no breaks")

    @breaks.command("show")
    @click.argument("break_id", callback=_break_id)
    @click.option("--json", "as_json", is_flag=True)
    def show(break_id: int, as_json: bool) -> None:
        """One break, whole."""
        found = run(_pooled(lambda p: get_break(p, break_id)))
        _print(found, as_json)

    @breaks.command("resolve")
    @click.argument("break_id", callback=_break_id)
    @click.option("--by", default=None, callback=text_value, help="Who resolves it (required).")
    @click.option("--note", default="", callback=text_value, help="How it was resolved.")
    @click.option("--json", "as_json", is_flag=True)
    def resolve(break_id: int, by: str | None, note: str, as_json: bool) -> None:
        """Mark a break resolved, by whom (found again with another detail, it opens again)."""
        if by is None or not by.strip():
            raise click.ClickException("--by is required: who resolves the break")
        if len(by) > 200 or len(note) > 2000:
            raise click.ClickException("--by takes up to 200 characters, --note up to 2000")
        done = run(_pooled(lambda p: resolve_break(p, break_id, by.strip(), note)))
        _print(done, as_json)


def _print(b: BreakRecord, as_json: bool) -> None:
    if as_json:
        echo_json(b.model_dump(mode="json"))
        return
    fields: dict[str, object] = {
        "id": b.id,
        "kind": b.kind,
        "order": b.order_key,
        "broker_order": b.broker_order_id or "",
        "detail": b.detail,
        "first_seen": b.first_seen.isoformat(timespec="seconds"),
        "last_seen": b.last_seen.isoformat(timespec="seconds"),
        "times_seen": b.times_seen,
        "resolved_at": b.resolved_at.isoformat(timespec="seconds") if b.resolved_at else "",
        "resolved_by": b.resolved_by or "",
        "resolution": b.resolution or "",
    }
    width = max(len(k) for k in fields)
    for k, v in fields.items():
        click.echo(f"{k.ljust(width)}  {v}")
