"""The trading state in the Temporal Web UI, in a real browser (Debian's chromium through
Playwright), on the product's own dev stack: after ``halt`` an operator opening the
``trading-state`` workflow reads the state, who set it and why. Screenshot:
``test-artifacts/web-ui/trading-halted.png``."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING

import pytest

from devstack.stack import DevStack
from ordersaga.client import OrderClient
from tests.e2e.test_web_ui import (  # noqa: F401 (fixtures)
    ARTIFACTS,
    browser_available,
    stack_settings,
    ui_page,
    ui_stack,
)
from workflows.trading import TRADING_WORKFLOW_ID

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def shown_text(page: Page, wanted: str, timeout_s: float = 30) -> str:
    """The text of the page and its frames (the UI renders details as markdown in a frame of
    its own) once ``wanted`` is in it."""
    deadline = time.monotonic() + timeout_s
    while True:
        texts = []
        for frame in page.frames:
            with contextlib.suppress(Exception):  # a frame still loading
                texts.append(await frame.inner_text("body"))
        text = "\n".join(texts)
        if wanted in text or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.5)


async def test_the_web_ui_shows_the_trading_state_who_and_why(
    ui_stack: DevStack,  # noqa: F811
) -> None:
    settings = stack_settings(ui_stack)
    reason = f"exchange outage {uuid.uuid4().hex[:6]}"
    async with OrderClient.connect(settings) as oc:
        await oc.risk.set_trading_state("HALTED", reason, by="webui-ops")

    async with ui_page(settings) as page:
        url = f"{settings.temporal_ui_url}/namespaces/default/workflows/{TRADING_WORKFLOW_ID}"
        await page.goto(url)
        # the state shows as the workflow's current details (and its memo)
        await page.get_by_text("User Metadata").first.click(timeout=30_000)
        text = await shown_text(page, reason)
        await page.screenshot(path=str(ARTIFACTS / "trading-halted.png"), full_page=True)
        assert "Trading HALTED" in text and "by webui-ops: " + reason in text, text
