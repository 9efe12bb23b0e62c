"""The HTTP face of the simulator (aiohttp.web): Alpaca-style routes, auth, faults, SSE.

Faults are applied here, around the handlers, so the engine never knows about them: latency,
hangs, 5xx, late execution and dropped replies for trading requests; latency, 5xx and
unreachable for quotes; dropped and duplicated live events on the stream. Never for /admin.
So is Alpaca's per-key rate limit (``ratelimit.py``): counted after the key check, before any
fault, a 429 with the ``X-Ratelimit-*`` headers when the window is spent.

Every refusal is a 4xx with Alpaca's body ``{"code", "message"}``: inputs are read strictly
(``inputs.py``), and aiohttp's own answers (404, 405, 413) are rewritten into that shape. An
exception nothing foresaw is logged and answered 500 ``{"code": 50000000}``, a last line of
defence that the hostile-input tests make sure is never reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date, timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from pydantic import ValidationError

from brokersim.account import account_json, holdings, position_json, positions_json
from brokersim.assets import ASSET_CLASSES, ASSET_STATUSES, asset_json, find_asset
from brokersim.clock import (
    MARKET_HOURS,
    NEW_YORK,
    MarketHours,
    OutsideCalendar,
    SimClock,
    calendar,
    market_clock,
    next_close,
    next_open,
    parse_rfc3339,
    rfc3339,
)
from brokersim.engine import Engine
from brokersim.faults import FaultConfig, Faults
from brokersim.inputs import (
    MAX_ADVANCE_S,
    MAX_BODY_BYTES,
    MAX_SYMBOLS,
    SYMBOL,
    ApiError,
    invalid,
    number,
    parse_json_object,
    read_json_object,
    shown,
    whole,
)
from brokersim.ratelimit import LIMITED_CODE, RateLimitConfig, RateLimiter
from brokersim.store import Store
from brokersim.stream import TradingStream
from core.calendar import xnys

log = logging.getLogger("brokersim")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
KEEPALIVE_S = 10.0
MAX_LIST_LIMIT = 500
MAX_EVENT_LIMIT = 10_000
CALENDAR_DEFAULT_DAYS = 30
CALENDAR_MAX_DAYS = 3660
_STATUSES = {s.value for s in HTTPStatus}


def _json(data: object, status: int = 200) -> web.Response:
    return web.json_response(data, status=status)


def _error(exc: ApiError) -> web.Response:
    return _json({"code": exc.code, "message": exc.message}, status=exc.status)


class _AlpacaErrorsHandler(RequestHandler):
    """aiohttp answers the requests its HTTP parser refuses (control bytes in a header, bytes
    that are not UTF-8 in the request line, headers past its limits) itself, before any
    middleware, in plain text. Here they get Alpaca's error body like every other refusal."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs it; no answer once sending
        phrase = HTTPStatus(status).phrase.lower() if status in _STATUSES else "error"
        answer = _json(
            {"code": status * 100_000 + 10_000, "message": f"malformed request: {phrase}"}, status
        )
        answer.force_close()
        return answer


class _AlpacaErrorsServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _AlpacaErrorsHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """``AppRunner`` whose connections answer parser errors as Alpaca would."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        made.__class__ = _AlpacaErrorsServer  # the same object, handing out our handler
        return made


def _http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's own refusal (404, 405, 413, ...) in Alpaca's shape: 404 -> 40410000."""
    response = _json({"code": exc.status * 100_000 + 10_000, "message": exc.reason.lower()})
    response.set_status(exc.status)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def _int_param(request: web.Request, name: str, default: int, maximum: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    return min(whole(raw, name, 0, 2**62), maximum)


def _date_param(request: web.Request, name: str, default: date) -> date:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return date.fromisoformat(raw) if len(raw) == 10 else parse_rfc3339(raw).date()
    except ValueError:
        raise invalid(f"invalid {name}: {shown(raw)} (a date or an RFC 3339 time)") from None


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _drop_connection(request: web.Request) -> web.Response:
    """Close the socket without a reply; the response returned is never written."""
    if request.transport is not None:
        request.transport.close()
    return web.Response(status=204)


def _rate_lane(kind: str, request: web.Request) -> str | None:
    """The rate-limit lane a request counts in (ratelimit.py), None when it is not counted."""
    if kind == "trading":
        return "trading"
    if kind == "quotes":
        return "market_data"
    if kind == "events" and request.query.get("stream", "true").lower() in ("false", "0", "no"):
        return "trading"  # the stored-events list is a REST call; an open stream is not
    return None


def _route_kind(path: str) -> str | None:
    if path.startswith(("/v2/orders", "/v2/account", "/v2/positions")):
        return "trading"
    if path.startswith("/v2/stocks"):
        return "quotes"
    if path.startswith("/v2/events"):
        return "events"
    if path.startswith(("/v2/", "/admin/")):
        return "other"
    return None


# An API key or secret the admin endpoint accepts: printable ASCII, no spaces.
API_KEY = re.compile(r"[!-~]{1,128}")


class BrokerSimServer:
    def __init__(
        self,
        engine: Engine,
        faults: Faults,
        key_id: str,
        secret_key: str,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.engine = engine
        self.faults = faults
        self.limiter = limiter or RateLimiter(RateLimitConfig())
        self._key_id = key_id
        self._secret_key = secret_key
        self._wakeup = asyncio.Event()
        self.closing = False
        # Trading requests being handled, those of them held by a hang or a late fault, and
        # handled in all: a test waits for a count to drain instead of sleeping past a fault.
        self.requests: Counter[str] = Counter()
        engine.listeners.append(self._wake)
        self.stream = TradingStream(engine, lambda: (self._key_id, self._secret_key))

    def close_streams(self) -> None:
        """End open event streams so shutdown need not wait for them."""
        self.closing = True
        self._wake()

    def _wake(self) -> None:
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    # -- plumbing -------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES)
        r = app.router
        r.add_post("/v2/orders", self.post_order)
        r.add_get("/v2/orders", self.list_orders)
        r.add_get("/v2/orders:by_client_order_id", self.get_by_client_order_id)
        r.add_get("/v2/orders/{id}", self.get_order)
        r.add_delete("/v2/orders", self.cancel_all_orders)
        r.add_delete("/v2/orders/{id}", self.cancel_order)
        r.add_patch("/v2/orders/{id}", self.replace_order)
        r.add_get("/v2/account", self.get_account)
        r.add_get("/v2/positions", self.get_positions)
        r.add_get("/v2/positions/{symbol}", self.get_position)
        r.add_get("/v2/clock", self.get_market_clock)
        r.add_get("/v2/calendar", self.get_calendar)
        r.add_get("/v2/assets", self.list_assets)
        r.add_get("/v2/assets/{symbol}", self.get_asset)
        r.add_get("/v2/stocks/quotes/latest", self.quotes)
        r.add_get("/v2/stocks/{symbol}/quotes/latest", self.quote)
        r.add_get("/v2/events/trade_updates", self.trade_updates)
        r.add_get("/stream", self.trading_stream)
        r.add_get("/admin/streams", self.get_streams)
        r.add_post("/admin/streams/drop", self.drop_streams)
        r.add_post("/admin/streams/allow", self.allow_streams)
        r.add_get("/admin/faults", self.get_faults)
        r.add_put("/admin/faults", self.put_faults)
        r.add_get("/admin/clock", self.get_clock)
        r.add_post("/admin/clock/advance", self.advance_clock)
        r.add_get("/admin/prices", self.get_prices)
        r.add_put("/admin/prices", self.put_prices)
        r.add_post("/admin/tick", self.tick)
        r.add_put("/admin/quote_overrides", self.put_quote_overrides)
        r.add_post("/admin/events", self.post_event)
        r.add_get("/admin/fill_model", self.get_fill_model)
        r.add_put("/admin/fill_model", self.put_fill_model)
        r.add_put("/admin/keys", self.put_keys)
        r.add_get("/admin/requests", self.get_requests)
        r.add_get("/admin/rate_limit", self.get_rate_limit)
        r.add_put("/admin/rate_limit", self.put_rate_limit)
        r.add_get("/admin/health", self.health)
        r.add_get("/healthz", self.health)
        return app

    def _authorized(self, request: web.Request) -> bool:
        # Compared as bytes: compare_digest refuses non-ASCII str (a TypeError, so a 500), and
        # aiohttp hands header bytes above 0x7f over as surrogates, which "surrogatepass" keeps.
        def raw(name: str) -> bytes:
            return request.headers.get(name, "").encode("utf-8", "surrogatepass")

        key_ok = hmac.compare_digest(raw("APCA-API-KEY-ID"), self._key_id.encode())
        secret_ok = hmac.compare_digest(raw("APCA-API-SECRET-KEY"), self._secret_key.encode())
        return key_ok and secret_ok

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await self._guarded(request, handler)
        except ApiError as exc:
            return _error(exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _http_error(exc)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return _json({"code": 50000000, "message": "internal error"}, status=500)

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        kind = _route_kind(request.path)
        if kind is None:
            return await handler(request)
        if kind != "other" and self.faults.config.unreachable:
            return _drop_connection(request)
        if not self._authorized(request):
            return _json({"code": 40110000, "message": "request is not authorized"}, status=401)
        if (request.content_length or 0) > MAX_BODY_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, request.content_length or 0)
        lane = _rate_lane(kind, request)
        decision = self.limiter.take(lane, self._key_id) if lane else None
        if decision is None:
            return await self._dispatch(kind, request, handler)
        if not decision.allowed:
            refused = _json({"code": LIMITED_CODE, "message": "rate limit exceeded"}, status=429)
            refused.headers.update(decision.headers)
            return refused
        response = await self._dispatch(kind, request, handler)
        if not response.prepared:  # a dropped reply is never written anyway
            response.headers.update(decision.headers)
        return response

    async def _dispatch(
        self, kind: str, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if kind == "trading":
            self.requests["in_flight"] += 1
            try:
                return await self._trading_faults(request, handler)
            finally:
                self.requests["in_flight"] -= 1
                self.requests["handled"] += 1
        if kind == "quotes":
            return await self._quote_faults(request, handler)
        return await self._call(request, handler)

    async def _call(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc)

    async def _quote_faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        delay = self.faults.delay_s()
        if delay:
            await asyncio.sleep(delay)
        if self.faults.chance(self.faults.config.error_5xx_prob):
            return _json({"code": 50000000, "message": "injected fault: internal error"}, 503)
        return await self._call(request, handler)

    async def _trading_faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        config, faults = self.faults.config, self.faults
        # Read the body now: a late request executes after its client has hung up.
        await request.read()
        delay = faults.delay_s()
        if delay:
            await asyncio.sleep(delay)
        if faults.chance(config.hang_prob):
            async with self._held("hung"):
                await asyncio.sleep(config.hang_ms / 1000)
            if _gone(request):
                return _drop_connection(request)
        if faults.chance(config.error_5xx_prob):
            return _json({"code": 50000000, "message": "injected fault: internal error"}, 503)
        late = faults.chance(config.late_prob)
        drop = faults.chance(config.drop_reply_prob)
        if late:
            # The client gives up meanwhile; the order is still executed: a late order.
            async with self._held("late"):
                await asyncio.sleep(config.late_ms / 1000)
                response = await self._call(request, handler)
        else:
            response = await self._call(request, handler)
        return _drop_connection(request) if drop else response

    @contextlib.asynccontextmanager
    async def _held(self, why: str) -> AsyncIterator[None]:
        self.requests[why] += 1
        try:
            yield
        finally:
            self.requests[why] -= 1

    # -- trading --------------------------------------------------------------------------

    async def post_order(self, request: web.Request) -> web.Response:
        order = self.engine.submit(await read_json_object(request))
        return _json(order.to_json())

    async def get_order(self, request: web.Request) -> web.Response:
        return _json(self.engine.get(request.match_info["id"]).to_json())

    async def get_by_client_order_id(self, request: web.Request) -> web.Response:
        client_order_id = request.query.get("client_order_id", "")
        return _json(self.engine.get_by_client_order_id(client_order_id).to_json())

    async def list_orders(self, request: web.Request) -> web.Response:
        status = request.query.get("status", "open")
        direction = request.query.get("direction", "desc")
        if status not in ("open", "closed", "all"):
            raise invalid(f"invalid status: {shown(status)}")
        if direction not in ("asc", "desc"):
            raise invalid(f"invalid direction: {shown(direction)}")
        limit = _int_param(request, "limit", 50, MAX_LIST_LIMIT)
        after_raw = request.query.get("after")
        try:
            after = parse_rfc3339(after_raw) if after_raw else None
        except ValueError:
            raise invalid(f"invalid after: {shown(after_raw)}") from None
        orders = self.engine.list_orders(status, limit, after, direction)
        return _json([o.to_json() for o in orders])

    async def cancel_order(self, request: web.Request) -> web.Response:
        self.engine.cancel(request.match_info["id"])
        return web.Response(status=204)

    async def cancel_all_orders(self, request: web.Request) -> web.Response:
        """Alpaca's 207 multi-status: one ``{id, status, body}`` per open order."""
        canceled = self.engine.cancel_all()
        return _json([{"id": o.id, "status": 200, "body": o.to_json()} for o in canceled], 207)

    async def replace_order(self, request: web.Request) -> web.Response:
        order = self.engine.get(request.match_info["id"])  # 404 before the body is read
        body = await read_json_object(request)
        delay_s = self.faults.config.replace_delay_ms / 1000
        if delay_s:
            # The replacement on its way to the venue: the old order can still fill meanwhile,
            # and one that fills (or is canceled) first is not replaced (Alpaca's rule).
            self.requests["replacing"] += 1
            try:
                await asyncio.sleep(delay_s)
            finally:
                self.requests["replacing"] -= 1
        return _json(self.engine.replace(order.id, body).to_json())

    # -- the account ------------------------------------------------------------------------

    async def get_account(self, request: web.Request) -> web.Response:
        engine = self.engine
        return _json(account_json(engine.orders.values(), engine.prices, engine.account_created))

    async def get_positions(self, request: web.Request) -> web.Response:
        return _json(positions_json(self.engine.orders.values(), self.engine.prices))

    async def get_position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"].upper()
        _, held = holdings(self.engine.orders.values())
        if symbol not in held:
            raise ApiError(404, 40410000, "position does not exist")
        return _json(position_json(symbol, held[symbol], self.engine.prices[symbol]))

    # -- clock, calendar, assets -------------------------------------------------------------

    async def get_market_clock(self, request: web.Request) -> web.Response:
        return _json(market_clock(self.engine.clock.now()))

    async def get_calendar(self, request: web.Request) -> web.Response:
        today = self.engine.clock.now().astimezone(NEW_YORK).date()
        start = _date_param(request, "start", today)
        end = _date_param(request, "end", start + timedelta(days=CALENDAR_DEFAULT_DAYS))
        if end < start:
            raise invalid("end must not be before start")
        if (end - start).days > CALENDAR_MAX_DAYS:
            raise invalid(f"at most {CALENDAR_MAX_DAYS} days at once")
        try:
            return _json(calendar(start, end))
        except OutsideCalendar as exc:
            raise invalid(str(exc)) from None

    async def list_assets(self, request: web.Request) -> web.Response:
        status = request.query.get("status")  # Alpaca: every status unless one is named
        asset_class = request.query.get("asset_class", "us_equity")
        if status is not None and status not in ASSET_STATUSES:
            raise invalid(f"invalid status: {shown(status)}")
        if asset_class not in ASSET_CLASSES:
            raise invalid(f"invalid asset_class: {shown(asset_class)}")
        exchange = request.query.get("exchange")
        assets = [asset_json(s) for s in sorted(self.engine.prices)]
        if status not in (None, "active") or asset_class != "us_equity":
            assets = []  # every simulated asset is an active US equity
        return _json([a for a in assets if exchange in (None, "", a["exchange"])])

    async def get_asset(self, request: web.Request) -> web.Response:
        found = find_asset(set(self.engine.prices), request.match_info["symbol"])
        if found is None:
            raise ApiError(404, 40410000, "asset not found")
        return _json(found)

    # -- market data ----------------------------------------------------------------------

    async def quotes(self, request: web.Request) -> web.Response:
        symbols = [s.strip().upper() for s in request.query.get("symbols", "").split(",")]
        symbols = [s for s in symbols if s]
        if not symbols:
            raise invalid("symbols is required")
        if len(symbols) > MAX_SYMBOLS:
            raise invalid(f"at most {MAX_SYMBOLS} symbols")
        if malformed := [s for s in symbols if not SYMBOL.fullmatch(s)]:
            raise invalid(f"invalid symbol: {shown(malformed[0])}")
        found = {s: q for s in symbols if (q := self.engine.quote(s)) is not None}
        return _json({"quotes": found})

    async def quote(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"].upper()
        found = self.engine.quote(symbol)
        if found is None:
            raise ApiError(404, 40410000, f'asset "{shown(symbol)[1:-1]}" not found')
        return _json({"symbol": symbol, "quote": found})

    # -- events ---------------------------------------------------------------------------

    async def trade_updates(self, request: web.Request) -> web.StreamResponse:
        since = _int_param(request, "since", 0, 2**62)
        if request.query.get("stream", "true").lower() in ("false", "0", "no"):
            limit = _int_param(request, "limit", 1000, MAX_EVENT_LIMIT)
            return _json(self.engine.events_after(since, limit))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            await self._stream(request, response, since)
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse, since: int) -> None:
        # Events stored before the client connected are a replay: delivered exactly once.
        replay_end = self.engine.last_offset
        last = since
        while not _gone(request) and not self.closing:
            if self.faults.config.unreachable:
                _drop_connection(request)
                return
            wakeup = self._wakeup
            events = self.engine.event_rows_after(last, 500)
            if not events:
                try:
                    await asyncio.wait_for(wakeup.wait(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                continue
            for offset, text in events:
                await self._send_event(response, offset, text, live=offset > replay_end)
                last = offset

    async def _send_event(
        self, response: web.StreamResponse, offset: int, text: str, *, live: bool
    ) -> None:
        copies = 1
        if live and self.faults.chance(self.faults.config.event_drop_prob):
            copies = 0
        elif live and self.faults.chance(self.faults.config.event_dup_prob):
            copies = 2
        frame = f"id: {offset}\nevent: trade_update\ndata: {text}\n\n"
        for _ in range(copies):
            await response.write(frame.encode())

    async def trading_stream(self, request: web.Request) -> web.StreamResponse:
        """Alpaca's trading websocket (brokersim/stream.py); its own authenticate message
        checks the keys, so the route is outside the header check."""
        return await self.stream.handle(request, self.faults.config.unreachable)

    # -- admin ----------------------------------------------------------------------------

    async def get_streams(self, request: web.Request) -> web.Response:
        return _json(self.stream.status())

    async def drop_streams(self, request: web.Request) -> web.Response:
        """Drop every websocket (no close frame); ``{"refuse": true}`` also turns new ones away
        until ``POST /admin/streams/allow``."""
        raw = await request.read()
        body = parse_json_object(raw) if raw else {}
        if set(body) - {"refuse"} or not isinstance(body.get("refuse", False), bool):
            raise invalid('body must be {} or {"refuse": true|false}')
        dropped = self.stream.drop_all(refuse=body.get("refuse", False))
        return _json({"dropped": dropped, **self.stream.status()})

    async def allow_streams(self, request: web.Request) -> web.Response:
        self.stream.refusing = False
        return _json(self.stream.status())

    async def get_requests(self, request: web.Request) -> web.Response:
        names = ("in_flight", "hung", "late", "handled", "replacing")
        return _json({name: self.requests[name] for name in names})

    def _rate_limit_info(self) -> dict[str, Any]:
        counts = {"allowed": self.limiter.allowed, "refused": self.limiter.refused}
        return {**self.limiter.config.model_dump(), **counts}

    async def get_rate_limit(self, request: web.Request) -> web.Response:
        return _json(self._rate_limit_info())

    async def put_rate_limit(self, request: web.Request) -> web.Response:
        await _patched(request, self.limiter.update, "rate limit")
        self.engine.save_meta(rate_limit=self.limiter.config.model_dump())
        return _json(self._rate_limit_info())

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(self.faults.config.model_dump())

    async def put_faults(self, request: web.Request) -> web.Response:
        config = await _patched(request, self.faults.update, "fault configuration")
        self.engine.save_meta(faults=config.model_dump())
        self._wake()  # open streams re-check the unreachable switch
        if config.unreachable:
            self.stream.drop_all()
        return _json(config.model_dump())

    def _clock_info(self) -> dict[str, Any]:
        engine = self.engine
        now = engine.clock.now()
        return {
            "now": rfc3339(now),
            "market_open": engine.market_open(now),
            "next_open": rfc3339(next_open(now)),
            "next_close": rfc3339(next_close(now)),
            # "always": matching runs around the clock; "enforce": only while open.
            "market_hours": engine.market_hours,
        }

    async def get_clock(self, request: web.Request) -> web.Response:
        return _json(self._clock_info())

    async def advance_clock(self, request: web.Request) -> web.Response:
        """``{"seconds": S}`` forward by S seconds, or ``{"to": "next_open" | "next_close"}``
        to the calendar's next open or close."""
        body = await read_json_object(request)
        if len(body) != 1 or set(body) - {"seconds", "to"}:
            raise invalid('body must be {"seconds": S} or {"to": "next_open" | "next_close"}')
        if "to" in body:
            if body["to"] not in ("next_open", "next_close"):
                raise invalid(f'to must be "next_open" or "next_close", not {shown(body["to"])}')
            expired = self.engine.advance_clock_to(body["to"])
        else:
            seconds = number(body["seconds"], "seconds", places=6, maximum=MAX_ADVANCE_S)
            expired = self.engine.advance_clock(seconds)
        return _json({**self._clock_info(), "expired": expired})

    async def get_prices(self, request: web.Request) -> web.Response:
        return _json({s: str(p) for s, p in sorted(self.engine.prices.items())})

    async def put_prices(self, request: web.Request) -> web.Response:
        return _json(self.engine.set_prices(await read_json_object(request)))

    async def tick(self, request: web.Request) -> web.Response:
        return _json(self.engine.tick())

    async def put_quote_overrides(self, request: web.Request) -> web.Response:
        return _json(self.engine.set_quote_overrides(await read_json_object(request, exact=False)))

    async def post_event(self, request: web.Request) -> web.Response:
        return _json(
            {"offset": self.engine.append_raw_event(await read_json_object(request, exact=False))}
        )

    async def get_fill_model(self, request: web.Request) -> web.Response:
        return _json(self.engine.fill_model.model_dump())

    async def put_fill_model(self, request: web.Request) -> web.Response:
        model = self.engine.set_fill_model(await read_json_object(request))
        return _json(model.model_dump())

    async def put_keys(self, request: web.Request) -> web.Response:
        """Rotate the API keys the simulator accepts (the broker's side of a key rotation):
        requests with the old keys are refused from now on. The answer names the key id only."""
        body = await read_json_object(request)
        keys = {name: body.get(name) for name in ("key_id", "secret_key")}
        for name, value in keys.items():
            if not (isinstance(value, str) and API_KEY.fullmatch(value)):
                raise invalid(f"{name} must be 1 to 128 printable ASCII characters")
        if set(body) - set(keys):
            raise invalid(f"unknown fields: {', '.join(sorted(set(body) - set(keys)))}")
        self._key_id, self._secret_key = str(keys["key_id"]), str(keys["secret_key"])
        return _json({"key_id": self._key_id})

    async def health(self, request: web.Request) -> web.Response:
        return _json({"ok": True})

    # -- background matching --------------------------------------------------------------

    async def tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.engine.fill_model.tick_ms / 1000)
            if self.engine.fill_model.auto:
                try:
                    self.engine.tick()
                except Exception:
                    log.exception("tick failed")


def open_state(
    state: Path | str,
    seed: int = 0,
    faults: dict[str, Any] | None = None,
    fill_model: dict[str, Any] | None = None,
    market_hours: MarketHours | None = None,
) -> tuple[Engine, Faults]:
    """Load (or create) the state file; ``faults``/``fill_model`` are merged over what it holds,
    ``market_hours`` replaces its mode (None keeps it; a fresh file starts in ``always``).

    Raises ValueError (one line) on a bad ``faults`` or ``fill_model`` field.
    """
    engine = Engine.open(Store(state), SimClock(), seed)
    stored = engine.store.load_meta().get("faults", {"seed": engine.seed})
    fault_state = Faults(FaultConfig.model_validate(stored))
    try:
        if faults:
            fault_state.update(faults)
        if fill_model:
            engine.set_fill_model(fill_model)
    except ValidationError as exc:
        raise ValueError(_one_line(exc)) from None
    except ApiError as exc:
        raise ValueError(exc.message) from None
    if market_hours is not None:
        if market_hours not in MARKET_HOURS:
            raise ValueError(f"market hours must be one of {', '.join(MARKET_HOURS)}")
        engine.set_market_hours(market_hours)
    engine.save_meta(faults=fault_state.config.model_dump())
    return engine, fault_state


def open_rate_limit(engine: Engine, rate_limit: dict[str, Any] | None = None) -> RateLimiter:
    """The limiter from the state file's configuration with ``rate_limit`` merged over it.

    Raises ValueError (one line) on a bad field."""
    limiter = RateLimiter(RateLimitConfig())
    try:
        limiter.update({**engine.store.load_meta().get("rate_limit", {}), **(rate_limit or {})})
    except ValidationError as exc:
        raise ValueError(_one_line(exc)) from None
    engine.save_meta(rate_limit=limiter.config.model_dump())
    return limiter


M = TypeVar("M")


async def _patched(request: web.Request, update: Callable[[dict[str, Any]], M], what: str) -> M:
    """Merge the request's JSON object into a configuration (``update``); 422 naming ``what``
    and every bad field, and nothing changed, when it does not validate."""
    patch = await read_json_object(request)
    try:
        return update(patch)
    except ValidationError as exc:
        raise invalid(f"invalid {what}: {_one_line(exc)}") from None


def _one_line(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


async def serve(
    host: str,
    port: int,
    state: Path | str,
    *,
    key_id: str,
    secret_key: str,
    seed: int = 0,
    faults: dict[str, Any] | None = None,
    fill_model: dict[str, Any] | None = None,
    rate_limit: dict[str, Any] | None = None,
    market_hours: MarketHours | None = None,
) -> None:
    """Run until SIGTERM/SIGINT; prints one ready line once the port accepts connections."""
    # The market calendar is built before the port opens (about 0.3 s, seconds on a loaded
    # machine): built by the first day order instead, it held up that request and every one
    # behind it on the event loop, past a client's timeout.
    xnys()
    engine, fault_state = open_state(state, seed, faults, fill_model, market_hours)
    limiter = open_rate_limit(engine, rate_limit)
    server = BrokerSimServer(engine, fault_state, key_id, secret_key, limiter)
    runner = _Runner(server.build_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Handlers first: whoever saw the ready line may send SIGTERM at once.
    bound_port = runner.addresses[0][1]
    print(f"broker-sim listening on http://{host}:{bound_port}", flush=True)
    ticker = asyncio.create_task(server.tick_loop())
    try:
        await stop.wait()
    finally:
        server.close_streams()
        await server.stream.close_all()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await runner.cleanup()
        engine.store.close()
