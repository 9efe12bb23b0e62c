"""BrokerClient: models and the mapping of HTTP answers and socket failures to typed errors.

A tiny in-process aiohttp server plays the broker; the real simulator is exercised in
tests/integration/test_broker_adapter*.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import pytest
import pytest_asyncio
from aiohttp import web

from core.broker_client import (
    BrokerAuthError,
    BrokerClient,
    BrokerOutcomeUnknown,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    DuplicateClientOrderId,
    OrderNotFound,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

ORDER = {
    "id": "b-1",
    "client_order_id": "o-1",
    "symbol": "AAPL",
    "side": "buy",
    "type": "limit",
    "time_in_force": "day",
    "qty": "3",
    "filled_qty": "2",
    "filled_avg_price": "100.5",
    "limit_price": "101",
    "status": "partially_filled",
    "created_at": "2026-11-25T14:30:00.123456Z",
}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeBroker:
    """Routes every request to ``self.handler``; records the bodies it saw."""

    def __init__(self) -> None:
        self.handler: Handler = self._ok
        self.bodies: list[dict[str, object]] = []
        self.url = ""

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(ORDER)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.can_read_body:
            self.bodies.append(await request.json())
        return await self.handler(request)


@pytest_asyncio.fixture(loop_scope="session")
async def fake() -> AsyncIterator[FakeBroker]:
    broker = FakeBroker()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", broker.dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    broker.url = f"http://127.0.0.1:{port}"
    yield broker
    await runner.cleanup()


def client_for(url: str, timeout: float = 0.5) -> BrokerClient:
    return BrokerClient(url, key_id="k", secret_key="s", request_timeout_s=timeout)


def error(status: int, code: int, message: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"code": code, "message": message}, status=status)

    return handler


async def test_submit_sends_strings_and_keys(fake: FakeBroker) -> None:
    seen_headers: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen_headers.update(request.headers)
        return web.json_response(ORDER)

    fake.handler = handler
    async with client_for(fake.url) as client:
        order = await client.submit_order(
            "AAPL", Decimal("1E+1"), "buy", "limit", "day", Decimal("101.50"), "o-1"
        )
    assert order.id == "b-1"
    assert fake.bodies[-1]["qty"] == "10"
    assert fake.bodies[-1]["limit_price"] == "101.50"
    assert fake.bodies[-1]["client_order_id"] == "o-1"
    assert seen_headers["APCA-API-KEY-ID"] == "k"
    assert seen_headers["APCA-API-SECRET-KEY"] == "s"


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (422, 40010001, "client_order_id must be unique", DuplicateClientOrderId),
        (422, 40010001, 'asset "XYZ" not found', BrokerRejected),
        (400, 40010000, "malformed JSON", BrokerRejected),
        (401, 40110000, "request is not authorized", BrokerAuthError),
        (403, 40310000, "insufficient buying power", BrokerRejected),
        (404, 40410000, "order not found", OrderNotFound),
        (503, 50000000, "injected", BrokerOutcomeUnknown),
        (429, 42910000, "rate limit exceeded", BrokerUnavailable),
    ],
)
async def test_http_errors_map_to_types(
    fake: FakeBroker, status: int, code: int, message: str, expected: type[Exception]
) -> None:
    fake.handler = error(status, code, message)
    async with client_for(fake.url) as client:
        with pytest.raises(expected) as info:
            await client.submit_order("AAPL", Decimal(1), "buy", client_order_id="o-1")
    if isinstance(info.value, BrokerRejected):
        assert info.value.reason == message
        assert info.value.code == code


async def test_duplicate_is_not_a_plain_rejection(fake: FakeBroker) -> None:
    fake.handler = error(422, 40010001, "client_order_id must be unique")
    async with client_for(fake.url) as client:
        with pytest.raises(DuplicateClientOrderId):
            await client.submit_order("AAPL", Decimal(1), "buy", client_order_id="o-1")


async def test_404_without_broker_body_is_not_order_absent(fake: FakeBroker) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound()

    fake.handler = handler
    async with client_for(fake.url) as client:
        with pytest.raises(BrokerRejected):
            await client.get_order_by_client_id("o-1")


async def test_by_client_id_absent_is_none(fake: FakeBroker) -> None:
    fake.handler = error(404, 40410000, "order not found")
    async with client_for(fake.url) as client:
        assert await client.get_order_by_client_id("o-1") is None


async def test_cancel_of_terminal_order_returns_its_state(fake: FakeBroker) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "DELETE":
            return web.json_response(
                {"code": 42210000, "message": "order is not cancelable"}, status=422
            )
        return web.json_response({**ORDER, "status": "filled"})

    fake.handler = handler
    async with client_for(fake.url) as client:
        order = await client.cancel_order("b-1")
    assert order is not None
    assert order.status == "filled"


async def test_cancel_accepted_returns_none(fake: FakeBroker) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=204)

    fake.handler = handler
    async with client_for(fake.url) as client:
        assert await client.cancel_order("b-1") is None


async def test_read_timeout_is_outcome_unknown(fake: FakeBroker) -> None:
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response(ORDER)

    fake.handler = handler
    try:
        async with client_for(fake.url, timeout=0.2) as client:
            with pytest.raises(BrokerOutcomeUnknown):
                await client.submit_order("AAPL", Decimal(1), "buy", client_order_id="o-1")
    finally:
        release.set()


async def test_dropped_reply_is_outcome_unknown(fake: FakeBroker) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.05)
        return web.Response()

    fake.handler = handler
    async with client_for(fake.url) as client:
        with pytest.raises(BrokerOutcomeUnknown):
            await client.submit_order("AAPL", Decimal(1), "buy", client_order_id="o-1")


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client_for(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(BrokerUnavailable):
            await client.submit_order("AAPL", Decimal(1), "buy", client_order_id="o-1")


async def test_quotes_parse_numbers_as_decimal(fake: FakeBroker) -> None:
    quote = '{"ap": 190.13, "as": 3, "bp": 190.11, "bs": 2, "t": "2026-11-25T14:30:00.000001Z"}'
    body = '{"quotes": {"AAPL": ' + quote + "}}"

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.query["symbols"] == "AAPL,XYZ"
        return web.Response(text=body, content_type="application/json")

    fake.handler = handler
    async with client_for(fake.url) as client:
        quotes = await client.latest_quotes(["AAPL", "XYZ"])
    assert set(quotes) == {"AAPL"}
    assert quotes["AAPL"].ask == Decimal("190.13")
    assert quotes["AAPL"].bid == Decimal("190.11")


async def test_sse_stream_parses_events_and_skips_comments(fake: FakeBroker) -> None:
    events = [
        {"offset": n, "event": "fill", "execution_id": f"x{n}", "order": ORDER} for n in (4, 5)
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.query["since"] == "3"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": keep-alive\n\n")
        for ev in events:
            payload = json.dumps(ev)
            await resp.write(
                f"id: {ev['offset']}\nevent: trade_update\ndata: {payload}\n\n".encode()
            )
        await resp.write_eof()
        return resp

    fake.handler = handler
    async with client_for(fake.url) as client:
        got = [e async for e in client.trade_updates(since=3)]
    assert [e.offset for e in got] == [4, 5]
    assert got[0].execution_id == "x4"
    assert got[0].order.filled_qty == Decimal(2)


async def test_quotes_ask_for_the_configured_feed_on_the_market_data_host(fake: FakeBroker) -> None:
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.update(request.query)
        return web.json_response({"quotes": {}})

    fake.handler = handler
    client = BrokerClient("http://127.0.0.1:9", fake.url, "k", "s", market_data_feed="iex")
    async with client:
        assert await client.latest_quotes(["AAPL"]) == {}
    assert seen == {"symbols": "AAPL", "feed": "iex"}


# -- rate limits: back off on the broker's headers, never hammer -------------------------------


def limited(
    reset_in_s: float | None, remaining: str = "0", status: int = 429, **extra: str
) -> Handler:
    """Answers ``status`` with Alpaca's rate-limit headers (the reset ``reset_in_s`` from now);
    counts the requests that reached it in ``handler.seen``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        handler.seen += 1  # type: ignore[attr-defined]
        headers = {"X-Ratelimit-Limit": "200", "X-Ratelimit-Remaining": remaining, **extra}
        if reset_in_s is not None:
            headers["X-Ratelimit-Reset"] = str(int(time.time() + reset_in_s))
        if status == 429:
            body = {"code": 42910000, "message": "rate limit exceeded"}
            return web.json_response(body, status=429, headers=headers)
        return web.json_response(ORDER, headers=headers)

    handler.seen = 0  # type: ignore[attr-defined]
    return handler


async def test_429_carries_the_wait_and_later_calls_are_not_sent_until_the_reset(
    fake: FakeBroker,
) -> None:
    fake.handler = limited(reset_in_s=30)
    async with client_for(fake.url) as client:
        with pytest.raises(BrokerRateLimited) as info:
            await client.submit_order("AAPL", Decimal(1), "buy", client_order_id="o-1")
        assert isinstance(info.value, BrokerUnavailable)  # nothing acted on: safe to send again
        assert info.value.retry_after_s is not None and 28 <= info.value.retry_after_s <= 30
        for _ in range(5):
            with pytest.raises(BrokerRateLimited) as again:
                await client.get_order("b-1")
            assert again.value.retry_after_s is not None and again.value.retry_after_s > 27
    assert fake.handler.seen == 1  # type: ignore[attr-defined]


async def test_the_last_request_of_a_window_stops_the_next_one_unsent(fake: FakeBroker) -> None:
    fake.handler = limited(reset_in_s=30, remaining="0", status=200)
    async with client_for(fake.url) as client:
        await client.get_order("b-1")  # answered, and it was the window's last
        with pytest.raises(BrokerRateLimited):
            await client.get_order("b-1")
        # Market data is counted apart: a spent trading window does not hold it back.
        assert await client.latest_quotes(["AAPL"]) == {}  # sent (the fake has no quotes)
    assert fake.handler.seen == 2  # type: ignore[attr-defined]


async def test_requests_left_or_a_past_reset_hold_nothing_back(fake: FakeBroker) -> None:
    fake.handler = limited(reset_in_s=30, remaining="5", status=200)
    async with client_for(fake.url) as client:
        for _ in range(3):
            await client.get_order("b-1")
        fake.handler = limited(reset_in_s=-5)  # a 429 whose window already reset
        with pytest.raises(BrokerRateLimited) as info:
            await client.get_order("b-1")
        assert info.value.retry_after_s == 0
        with pytest.raises(BrokerRateLimited):
            await client.get_order("b-1")
    assert fake.handler.seen == 2  # type: ignore[attr-defined]  # both 429s were sent


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),  # preferred when given
        ({"X-Ratelimit-Reset": "far"}, None),
        ({}, None),
        ({"Retry-After": "99999"}, 60.0),  # a reset beyond a minute is a clock apart
        ({"Retry-After": "nan"}, None),
    ],
)
async def test_the_wait_comes_from_the_headers_within_bounds(
    fake: FakeBroker, headers: dict[str, str], expected: float | None
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = {"code": 42910000, "message": "rate limit exceeded"}
        return web.json_response(body, status=429, headers=headers)

    fake.handler = handler
    async with client_for(fake.url) as client:
        with pytest.raises(BrokerRateLimited) as info:
            await client.get_order("b-1")
    assert info.value.retry_after_s == expected
