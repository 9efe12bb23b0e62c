"""The metrics' labels and the readiness rule, without services (the real stack:
tests/e2e/test_metrics.py)."""

from __future__ import annotations

import asyncio

import pytest

from core.telemetry import OpsServer
from workflows.metrics import REFUSAL_CATEGORIES, refusal_category
from workflows.saga_base import ORDER_CONFLICT_REASON


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("invalid request: qty: not a number", "invalid"),
        ("no price: no fresh quote for AAPL", "no_price"),
        ("the order would hold 1e12 USD, more than 1e11", "too_large"),
        ("insufficient funds: available 10.00 USD, needed 200.50", "insufficient_funds"),
        ("unknown account a1", "unknown_account"),
        (f"{ORDER_CONFLICT_REASON} (o-1)", "order_conflict"),
        ("account busy: other orders kept the account locked for 30 s", "account_busy"),
        ("could not be placed (pricing): boom", "not_placed"),
        ("a limit order needs a limit price", "other"),
        (None, "other"),
    ],
)
def test_refusals_are_labelled_by_category_never_by_their_text(
    reason: str | None, category: str
) -> None:
    assert refusal_category(reason) == category
    assert category in REFUSAL_CATEGORIES


async def _ok() -> None:
    pass


async def _down() -> None:
    raise ConnectionRefusedError("connection refused")


async def _hangs() -> None:
    await asyncio.sleep(60)


@pytest.mark.asyncio(loop_scope="session")
async def test_ready_needs_every_required_check_and_ignores_the_reported_ones() -> None:
    server = OpsServer("127.0.0.1", 0, required={"postgres": _ok, "redis": _ok})
    assert (await server.readiness())[0]

    server.reported = {"broker": _down}
    ready, body = await server.readiness()
    assert ready and body["reported"]["broker"].startswith("error: ConnectionRefusedError")

    server.required = {"postgres": _ok, "redis": _hangs}
    server.timeout_s = 0.1
    ready, body = await server.readiness()
    assert not ready
    assert body["checks"] == {"postgres": "ok", "redis": "error: TimeoutError: "}
