"""The Temporal Web UI in a real browser (Debian's chromium, driven by Playwright): an operator
finds an order by ``AccountId``, opens it and reads its quantity and limit price, decoded by the
dev stack's codec server; with the codec server stopped, the same page shows neither.

The dev stack here is the product's own (``ordersaga dev up``'s DevStack: the dev server with
``--ui-codec-endpoint``, the codec server, the simulator, the feed and a worker) on ports and a
state folder of its own. The browser carries the codec server's bearer token as an SSO proxy in
front of both would (docs/SECURITY.md). Screenshots go to ``test-artifacts/web-ui/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import pytest_asyncio

from core.broker_client import BrokerClient
from core.settings import Settings
from core.statuses import OrderStatus
from devstack.stack import DevStack, StackOptions, StackPorts, free_port
from ordersaga.client import OrderClient
from tests.conftest import owner_url, scratch_database

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

CHROMIUM = os.environ.get("ORDERSAGA_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web-ui"
QTY = "13.579"
# Chromium as root in a container, on a machine with no route out: no sandbox, and none of the
# background connections it would otherwise keep trying.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.asynccontextmanager
async def ui_page(settings: Settings) -> AsyncIterator[Page]:
    """A page in Debian's chromium (Playwright) that sends the codec server's token, as the
    dev stack's UI is told to; the browser is closed afterwards. Screenshots go to ARTIFACTS."""
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    token = settings.codec_server_token.get_secret_value()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(
                extra_http_headers={"Authorization": f"Bearer {token}"}
            )
            yield await context.new_page()
        finally:
            await browser.close()


def _browser_or_skip() -> None:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def browser_available() -> Iterator[None]:
    _browser_or_skip()
    yield


@pytest_asyncio.fixture(loop_scope="session")
async def ui_stack(browser_available: None) -> AsyncIterator[DevStack]:
    # Not pytest's tmp_path: its root is mode 0700, which embedded services' users may not pass.
    state = Path(tempfile.mkdtemp(prefix="ordersaga-webui-"))
    async with scratch_database("webui") as database_url:
        settings = Settings(
            database_url=database_url,
            database_owner_url=owner_url(database_url),
            redis_prefix=f"ordersaga-webui-{uuid.uuid4().hex[:6]}:",
            marketdata_interval_s=0.2,
        )
        ports = StackPorts(
            temporal=free_port(), temporal_ui=free_port(), temporal_metrics=free_port(),
            temporal_http=free_port(), broker=free_port(), codec=free_port(),
            worker_metrics=free_port(), listener_metrics=free_port(),
            marketdata_metrics=free_port(),
        )  # fmt: skip
        options = StackOptions(
            state_dir=state,
            ports=ports,
            apps=("broker-sim", "marketdata", "worker", "codec-server"),
            health_timeout_s=60,
        )
        dev = DevStack(settings, options, echo=lambda _line: None)
        try:
            await dev.up()
            yield dev
        finally:
            await dev.down()
            shutil.rmtree(state, ignore_errors=True)


def stack_settings(dev: DevStack) -> Settings:
    env = dev.env()
    return Settings(**{k.removeprefix("ORDERSAGA_").lower(): v for k, v in env.items()})


async def test_the_web_ui_shows_an_order_decoded_and_nothing_without_the_codec_server(
    ui_stack: DevStack,
) -> None:
    settings = stack_settings(ui_stack)
    async with OrderClient.connect(settings) as oc:
        acct = f"webui-{uuid.uuid4().hex[:8]}"
        await oc.open_account(acct)
        await oc.deposit(acct, "50000")
        async with BrokerClient.from_settings(settings) as broker:
            [quote] = (await broker.latest_quotes(["AAPL"])).values()
        # Marketable, and a number no other field holds.
        limit = (quote.ask * Decimal("1.05")).quantize(Decimal("0.01")) + Decimal("0.0037")
        placed = await oc.place_order(
            account_id=acct, symbol="AAPL", side="buy", qty=QTY, order_type="limit",
            limit_price=limit,
        )  # fmt: skip
        assert placed.accepted, placed
        final = await oc.wait(acct, placed.order_id, timeout_s=60)
        assert final.status == OrderStatus.SETTLED, (final.status, final.reason)

    ui = settings.temporal_ui_url
    async with ui_page(settings) as page:
        query = f"AccountId = '{acct}'"
        await page.goto(f"{ui}/namespaces/default/workflows?query={query}")
        link = page.get_by_role("link", name=placed.workflow_id)
        await link.first.wait_for(timeout=30_000)
        await link.first.click()
        await page.get_by_text(QTY).first.wait_for(timeout=30_000)
        text = await page.content()
        await page.screenshot(path=str(ARTIFACTS / "decoded.png"), full_page=True)
        assert QTY in text and str(limit) in text

        await ui_stack.stop("codec-server")
        await page.reload()
        # The payloads are on the page, as the UI got them: encrypted.
        await page.get_by_text("encryption-key-id").first.wait_for(timeout=30_000)
        await page.screenshot(path=str(ARTIFACTS / "without-codec-server.png"), full_page=True)
        text = await page.content()
        assert QTY not in text and str(limit) not in text
