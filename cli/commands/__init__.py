"""Command groups of the ``ordersaga`` CLI, one module per area, each with ``register(cli)``."""

from __future__ import annotations

import click

from cli.commands import (
    account,
    breaks,
    broker,
    chaos,
    codec,
    db,
    demo,
    deploy,
    dev,
    feeds,
    fx,
    ledger,
    market,
    orders,
    redisacl,
    risk,
    settle,
    worker,
)

_MODULES = (
    db,
    account,
    ledger,
    dev,
    broker,
    feeds,
    orders,
    fx,
    market,
    risk,
    breaks,
    settle,
    worker,
    codec,
    chaos,
    demo,
    redisacl,
    deploy,
)


def register_all(cli: click.Group) -> None:
    for module in _MODULES:
        module.register(cli)
