"""Command groups of the ``ordersaga`` CLI, one module per area."""

from __future__ import annotations

import importlib

import click

# Modules that define a ``register(cli)`` function. A module listed here that does not exist yet
# is skipped, so areas can land independently.
_MODULES = (
    "db",
    "account",
    "ledger",
    "dev",
    "broker",
    "feeds",
    "orders",
    "worker",
    "chaos",
    "demo",
)


def register_all(cli: click.Group) -> None:
    for name in _MODULES:
        try:
            module = importlib.import_module(f"ordersaga.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"ordersaga.commands.{name}":
                continue
            raise
        module.register(cli)
