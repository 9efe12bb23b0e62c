"""Async HTTP client for an Alpaca Trading API v2 compatible broker (the simulator or Alpaca).

The client makes exactly one HTTP request per call and never retries: Temporal owns retries, and
a hidden retry of a POST could create a second order. What it adds is a precise answer to "did
the broker get my request?", expressed as exception types:

- ``BrokerUnavailable``: certainly not received (connect refused / DNS / connect timeout).
  Safe to send again. Its ``BrokerRateLimited`` is a 429 the broker answered without acting,
  carrying how long until the key's window resets (``X-Ratelimit-Reset`` or ``Retry-After``).

It never hammers a rate-limited broker: once an answer says the window has no requests left
(``X-Ratelimit-Remaining: 0``), or a 429 says so, requests to that API (trading or market data,
counted apart) are refused here, unsent, with ``BrokerRateLimited``, until the reset.
- ``BrokerOutcomeUnknown``: maybe received (read timeout, reset or disconnect after sending, 5xx).
  Before sending an order again, look it up by client order id.
- ``BrokerRejected`` (with the broker's reason), ``DuplicateClientOrderId``, ``OrderNotFound``,
  ``OrderNotCancelable`` and ``BrokerAuthError``: the broker answered and said no.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiohttp

from core.broker_models import (  # the models and errors, importable from here as before
    DUPLICATE_CLIENT_ORDER_ID,
    NOT_CANCELABLE_CODE,
    BrokerAccount,
    BrokerAuthError,
    BrokerError,
    BrokerOrder,
    BrokerOutcomeUnknown,
    BrokerPosition,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    DuplicateClientOrderId,
    EventFrame,
    InvalidMarketClock,
    InvalidTradeEvent,
    MarketClock,
    OrderNotCancelable,
    OrderNotFound,
    Quote,
    TradeEvent,
    loads,
    parse_trade_event,
    plain,
)
from core.quotes import InvalidQuote
from core.settings import Settings, masked

__all__ = [
    "BrokerAccount",
    "BrokerAuthError",
    "BrokerClient",
    "BrokerError",
    "BrokerOrder",
    "BrokerOutcomeUnknown",
    "BrokerPosition",
    "BrokerRateLimited",
    "BrokerRejected",
    "BrokerUnavailable",
    "DuplicateClientOrderId",
    "EventFrame",
    "InvalidMarketClock",
    "InvalidTradeEvent",
    "MarketClock",
    "OrderNotCancelable",
    "OrderNotFound",
    "Quote",
    "TradeEvent",
    "parse_trade_event",
]

log = logging.getLogger(__name__)
# The longest a rate-limit answer may make the client wait: Alpaca's window is a minute, so a
# reset further away is a clock apart from ours, not a reason to stop for longer.
MAX_RATE_LIMIT_WAIT_S = 60.0
TRADING, MARKET_DATA = "trading", "market_data"  # the broker counts their requests apart


class BrokerClient:
    """One pooled aiohttp session per client; use ``async with`` or call ``close()``."""

    def __init__(
        self,
        base_url: str,
        market_data_url: str | None = None,
        key_id: str = "",
        secret_key: str = "",
        connect_timeout_s: float = 2.0,
        request_timeout_s: float = 5.0,
        max_connections: int = 50,
        market_data_feed: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.market_data_url = (market_data_url or base_url).rstrip("/")
        self._headers = {"APCA-API-KEY-ID": key_id, "APCA-API-SECRET-KEY": secret_key}
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.market_data_feed = market_data_feed
        self._session: aiohttp.ClientSession | None = None
        # Per API (TRADING, MARKET_DATA): the epoch second its rate-limit window resets, while
        # the broker has said no requests are left in it.
        self._spent_until: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerClient:
        return cls(
            base_url=settings.broker_url,
            market_data_url=settings.market_data_url,
            key_id=settings.broker_key_id,
            secret_key=settings.broker_secret_key.get_secret_value(),
            connect_timeout_s=settings.broker_connect_timeout_s,
            request_timeout_s=settings.broker_request_timeout_s,
            max_connections=settings.broker_max_connections,
            market_data_feed=settings.market_data_feed,
        )

    async def __aenter__(self) -> BrokerClient:
        self._ensure_session()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                headers=self._headers,
                timeout=self._timeout(),
            )
        return self._session

    def _timeout(self, total: float | None = None) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(
            total=total if total is not None else self.request_timeout_s,
            connect=self.connect_timeout_s,
        )

    # --- transport ------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        raw: bool = False,
        api: str = TRADING,
    ) -> tuple[int, Any]:
        """One request; the parsed JSON answer (its bytes when ``raw``) or a typed error."""
        what = f"{method} {masked(url)}"  # a URL with credentials in it prints without them
        self._hold_back(api, what)
        session = self._ensure_session()
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else None
        try:
            async with session.request(
                method, url, params=params, data=data, headers=headers
            ) as resp:
                content = await resp.read()
                status = resp.status
                wait_s = self._note_limit(api, status, resp.headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Raised only while opening the connection: nothing was sent.
            raise BrokerUnavailable(f"{what}: cannot connect: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Read timeout, reset or disconnect after the request went out (or while it did).
            raise BrokerOutcomeUnknown(f"{what}: {type(exc).__name__}: {exc}") from exc
        if status == 429:
            _, message = _error_fields(content)
            raise BrokerRateLimited(f"{what}: rate limited: {message}", wait_s)
        if raw and 200 <= status < 300:
            return status, content
        return status, _check(status, content, what)

    def _hold_back(self, api: str, what: str) -> None:
        """Refuse, unsent, a request the broker has already said it would refuse."""
        until = self._spent_until.get(api)
        if until is None:
            return
        left = until - time.time()
        if left <= 0:
            del self._spent_until[api]
            return
        raise BrokerRateLimited(
            f"{what}: not sent: the broker's rate limit resets in {left:.1f}s", left
        )

    def _note_limit(self, api: str, status: int, headers: Mapping[str, str]) -> float | None:
        """Read the answer's rate-limit headers; the seconds until the window resets when this
        answer says it is spent (a 429, or nothing remaining), else None."""
        wait_s = _rate_limit_wait(headers, time.time())
        spent = status == 429 or headers.get("X-Ratelimit-Remaining", "").strip() == "0"
        if spent and wait_s is not None and wait_s > 0:
            self._spent_until[api] = time.time() + wait_s
        return wait_s

    async def _trading(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None
    ) -> Any:
        return (await self._request(method, self.base_url + path, params=params, body=body))[1]

    # --- orders ---------------------------------------------------------------------------

    async def submit_order(
        self,
        symbol: str,
        qty: Decimal,
        side: str,
        type: str = "market",
        time_in_force: str = "day",
        limit_price: Decimal | None = None,
        client_order_id: str | None = None,
    ) -> BrokerOrder:
        body: dict[str, Any] = {
            "symbol": symbol,
            "qty": plain(qty),
            "side": side,
            "type": type,
            "time_in_force": time_in_force,
        }
        if limit_price is not None:
            body["limit_price"] = plain(limit_price)
        if client_order_id is not None:
            body["client_order_id"] = client_order_id
        return BrokerOrder.model_validate(await self._trading("POST", "/v2/orders", body=body))

    async def replace_order(
        self,
        broker_order_id: str,
        *,
        client_order_id: str,
        qty: Decimal | None = None,
        limit_price: Decimal | None = None,
    ) -> BrokerOrder:
        """PATCH /v2/orders/{id}: a new order (``client_order_id``) that replaces this one; the
        answer is the new order. The old one goes ``replaced`` and keeps its fills."""
        body: dict[str, Any] = {"client_order_id": client_order_id}
        if qty is not None:
            body["qty"] = plain(qty)
        if limit_price is not None:
            body["limit_price"] = plain(limit_price)
        return BrokerOrder.model_validate(
            await self._trading("PATCH", f"/v2/orders/{broker_order_id}", body=body)
        )

    async def get_order(self, broker_order_id: str) -> BrokerOrder:
        return BrokerOrder.model_validate(
            await self._trading("GET", f"/v2/orders/{broker_order_id}")
        )

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """The order with this client order id, or None when the broker has none."""
        try:
            raw = await self._trading(
                "GET",
                "/v2/orders:by_client_order_id",
                params={"client_order_id": client_order_id},
            )
        except OrderNotFound:
            return None
        return BrokerOrder.model_validate(raw)

    async def list_orders(
        self,
        status: str = "all",
        limit: int = 500,
        after: datetime | str | None = None,
        direction: str = "asc",
    ) -> list[BrokerOrder]:
        params = {"status": status, "limit": str(limit), "direction": direction}
        if after is not None:
            params["after"] = after if isinstance(after, str) else _rfc3339(after)
        raw = await self._trading("GET", "/v2/orders", params=params)
        return [BrokerOrder.model_validate(o) for o in raw]

    async def cancel_order(self, broker_order_id: str) -> BrokerOrder | None:
        """Ask the broker to cancel; cancellation is asynchronous.

        Returns None when the request was accepted (the order goes pending_cancel, and fills can
        still race it), or the order's current state when it is already terminal.
        """
        try:
            await self._trading("DELETE", f"/v2/orders/{broker_order_id}")
        except OrderNotCancelable:
            return await self.get_order(broker_order_id)
        return None

    # --- the account ----------------------------------------------------------------------

    async def get_account(self) -> BrokerAccount:
        return BrokerAccount.model_validate(await self._trading("GET", "/v2/account"))

    async def list_positions(self) -> list[BrokerPosition]:
        raw = await self._trading("GET", "/v2/positions")
        if not isinstance(raw, list):
            raise BrokerError("GET /v2/positions: the broker's answer is not a list")
        return [BrokerPosition.model_validate(p) for p in raw]

    async def market_clock(self) -> MarketClock:
        """The broker's market clock (GET /v2/clock), parsed strictly (InvalidMarketClock)."""
        return MarketClock.from_alpaca(await self._trading("GET", "/v2/clock"))

    # --- market data ----------------------------------------------------------------------

    async def latest_quotes(
        self, symbols: list[str], refused: dict[str, str] | None = None
    ) -> dict[str, Quote]:
        """Latest quote per symbol; symbols the broker does not know are left out, and so are
        quotes that are not usable prices (core/quotes.py): their reasons go to ``refused``."""
        if not symbols:
            return {}
        params = {"symbols": ",".join(symbols)}
        if self.market_data_feed:
            params["feed"] = self.market_data_feed
        _, raw = await self._request(
            "GET", self.market_data_url + "/v2/stocks/quotes/latest", params=params, api=MARKET_DATA
        )
        quotes = (raw.get("quotes") or {}) if isinstance(raw, dict) else None
        if not isinstance(quotes, dict):
            raise BrokerOutcomeUnknown(f"latest quotes: no quotes object in {str(raw)[:100]!r}")
        good: dict[str, Quote] = {}
        for sym, q in quotes.items():
            try:
                good[sym] = Quote.from_alpaca(sym, q)
            except InvalidQuote as exc:
                if refused is not None:
                    refused[sym] = str(exc)
        return good

    # --- events ---------------------------------------------------------------------------

    async def events_since(self, since: int = 0, limit: int = 1000) -> list[TradeEvent]:
        """Stored trade events after offset ``since`` (the non-streaming form), in order.

        Raises InvalidTradeEvent on the first event that does not parse (see
        ``event_frames_since`` for the unparsed form the listener uses)."""
        return [parse_trade_event(f.text) for f in await self.event_frames_since(since, limit)]

    async def event_frames_since(self, since: int = 0, limit: int = 1000) -> list[EventFrame]:
        """Stored trade events after ``since``, unparsed, each with its offset when it has one."""
        _, body = await self._request(
            "GET",
            self.base_url + "/v2/events/trade_updates",
            params={"since": str(since), "stream": "false", "limit": str(limit)},
            raw=True,
        )
        try:
            items = json.loads(body, parse_float=Decimal)
        except ValueError:
            raise BrokerOutcomeUnknown(f"events since {since}: not JSON") from None
        if not isinstance(items, list):
            raise BrokerOutcomeUnknown(f"events since {since}: not a list")
        frames = []
        for item in items:
            # Re-serialised, JSON numbers as decimal text (exact): what the SSE stream carries.
            text = item if isinstance(item, str) else json.dumps(item, default=str)
            offset = item.get("offset") if isinstance(item, dict) else None
            frames.append(EventFrame(_positive_int(offset), text))
        return frames

    async def trade_updates(
        self, since: int = 0, idle_timeout_s: float | None = None
    ) -> AsyncGenerator[TradeEvent, None]:
        """``trade_update_frames``, each parsed (InvalidTradeEvent ends the stream)."""
        frames = self.trade_update_frames(since, idle_timeout_s)
        try:
            async for frame in frames:
                yield parse_trade_event(frame.text)
        finally:
            await frames.aclose()

    async def trade_update_frames(
        self, since: int = 0, idle_timeout_s: float | None = None
    ) -> AsyncGenerator[EventFrame, None]:
        """Server-Sent trade events after ``since``, then live, until the connection ends.

        ``idle_timeout_s`` ends the stream (with BrokerOutcomeUnknown) when no byte arrives for
        that long, so a silently dead connection is noticed. Events are yielded as they come,
        unparsed (one malformed event must not end the stream): the stream may drop or
        duplicate them, which the caller handles by offset.
        """
        session = self._ensure_session()
        url = self.base_url + "/v2/events/trade_updates"
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.connect_timeout_s, sock_read=idle_timeout_s
        )
        try:
            async with session.get(
                url,
                params={"since": str(since)},
                timeout=timeout,
                headers={"Accept": "text/event-stream"},
            ) as resp:
                if resp.status != 200:
                    _check(resp.status, await resp.read(), f"GET {masked(url)}")
                async for frame in _parse_sse(resp.content):
                    yield frame
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise BrokerUnavailable(f"GET {masked(url)}: cannot connect: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BrokerOutcomeUnknown(f"GET {masked(url)}: {type(exc).__name__}: {exc}") from exc

    async def trade_stream_frames(
        self, url: str | None = None, heartbeat_s: float | None = 15.0
    ) -> AsyncGenerator[EventFrame | None, None]:
        """Alpaca's trading websocket (``url``, default ``stream_url_for(base_url)``):
        authenticate with the client's keys, listen to ``trade_updates``, yield None once the
        broker confirmed the listen (whatever happens from then on comes on the stream), then
        each ``trade_updates`` message's ``data`` as an EventFrame without an offset, unparsed.

        There is no replay: what happened before the listen, or while the socket was down, is
        not sent; the caller looks such orders up. Wrong keys raise BrokerAuthError; a socket
        that closes ends the generator; ``heartbeat_s`` pings notice a silently dead one.
        """
        url = url or stream_url_for(self.base_url)
        session = self._ensure_session()
        what = f"websocket {masked(url)}"
        try:
            async with session.ws_connect(url, heartbeat=heartbeat_s, max_msg_size=4 << 20) as ws:
                await ws.send_json(
                    {
                        "action": "authenticate",
                        "data": {
                            "key_id": self._headers["APCA-API-KEY-ID"],
                            "secret_key": self._headers["APCA-API-SECRET-KEY"],
                        },
                    }
                )
                await _expect(ws, "authorization", what)
                await ws.send_json({"action": "listen", "data": {"streams": ["trade_updates"]}})
                await _expect(ws, "listening", what)
                yield None
                async for msg in ws:
                    if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                        break
                    payload = _ws_json(msg)
                    if not isinstance(payload, dict) or payload.get("stream") != "trade_updates":
                        if payload is None:  # not JSON: the listener sets it aside
                            yield EventFrame(None, _frame_text(msg.data))
                        continue  # another stream's message (an ack, an error)
                    data = payload.get("data")
                    text = json.dumps(data, default=str) if isinstance(data, dict) else None
                    yield EventFrame(None, text or _frame_text(msg.data))
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise BrokerAuthError(f"{what}: 401 {exc.message}") from exc
            raise BrokerUnavailable(
                f"{what}: handshake refused: {exc.status} {exc.message}"
            ) from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise BrokerUnavailable(f"{what}: cannot connect: {exc}") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise BrokerOutcomeUnknown(f"{what}: {type(exc).__name__}: {exc}") from exc


async def _expect(ws: aiohttp.ClientWebSocketResponse, stream: str, what: str) -> None:
    """Read the broker's answer to authenticate or listen; refusals raise."""
    msg = await ws.receive()
    payload = (
        _ws_json(msg) if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY) else None
    )
    data = payload.get("data") if isinstance(payload, dict) else None
    data = data if isinstance(data, dict) else {}
    got = payload.get("stream") if isinstance(payload, dict) else None
    if stream == "authorization" and data.get("status") != "authorized":
        raise BrokerAuthError(f"{what}: not authorized: {str(payload or msg.type)[:200]}")
    if got != stream or (stream == "listening" and "trade_updates" not in data.get("streams", [])):
        raise BrokerOutcomeUnknown(
            f"{what}: expected {stream!r}, got {str(payload or msg.type)[:200]}"
        )


def _frame_text(data: str | bytes) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)


def stream_url_for(base_url: str) -> str:
    """Alpaca's trading stream beside a trading API: ``https://paper-api.alpaca.markets`` ->
    ``wss://paper-api.alpaca.markets/stream`` (``http`` -> ``ws`` for the simulator)."""
    scheme, sep, rest = base_url.rstrip("/").partition("://")
    ws_scheme = {"https": "wss", "http": "ws"}.get(scheme.lower(), scheme)
    return f"{ws_scheme}{sep}{rest}/stream"


def _ws_json(msg: aiohttp.WSMessage) -> Any:
    """A text or binary frame's JSON (Alpaca's paper stream sends binary frames), else None."""
    try:
        return json.loads(msg.data, parse_float=Decimal)
    except (ValueError, TypeError, RecursionError):
        return None


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and int(value) > 0:
        return int(value)
    return None


def _frame(event_id: str | None, text: str) -> EventFrame:
    offset = _positive_int(event_id)
    if offset is None:
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            payload = None
        offset = _positive_int(payload.get("offset")) if isinstance(payload, dict) else None
    return EventFrame(offset, text)


async def _parse_sse(content: aiohttp.StreamReader) -> AsyncIterator[EventFrame]:
    data: list[str] = []
    event_type = "message"
    event_id: str | None = None
    async for raw_line in content:
        line = raw_line.decode("utf-8", "replace").rstrip("\r\n")
        if line == "":
            if data and event_type == "trade_update":
                yield _frame(event_id, "\n".join(data))
            data, event_type, event_id = [], "message", None
            continue
        if line.startswith(":"):
            continue  # SSE comment: a keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event_type = value
        elif field == "id":
            event_id = value  # the offset, also for an event whose payload does not parse


def _check(status: int, raw: bytes, what: str) -> Any:
    """Map an HTTP answer to its parsed body or to this module's typed errors."""
    if 200 <= status < 300:
        return loads(raw) if raw else None
    code, message = _error_fields(raw)
    if status == 401:
        raise BrokerAuthError(f"{what}: {status} {message}")
    if status == 404 and code is not None:
        raise OrderNotFound(f"{what}: {message}")
    if status == 404:
        # No broker error body: a wrong URL, not a missing order. Saying "absent" here could
        # make a caller believe an order does not exist.
        raise BrokerRejected(f"endpoint not found: {message}", status, code)
    if status == 429:  # the streams' answers (_request raises with the reset time itself)
        raise BrokerRateLimited(f"{what}: rate limited: {message}")
    if status >= 500:
        raise BrokerOutcomeUnknown(f"{what}: {status} {message}")
    if status == 422 and message == DUPLICATE_CLIENT_ORDER_ID:
        raise DuplicateClientOrderId(message, status, code)
    if status == 422 and code == NOT_CANCELABLE_CODE:
        raise OrderNotCancelable(message, status, code)
    raise BrokerRejected(message, status, code)


def _rate_limit_wait(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds until the broker's rate-limit window resets, from ``Retry-After`` (seconds) or
    Alpaca's ``X-Ratelimit-Reset`` (epoch seconds), within 0 .. MAX_RATE_LIMIT_WAIT_S; None when
    neither header is there or readable."""
    for name, base in (("Retry-After", 0.0), ("X-Ratelimit-Reset", now)):
        try:
            value = float(headers.get(name, "").strip()) - base
        except ValueError:
            continue
        if math.isfinite(value):
            return min(max(value, 0.0), MAX_RATE_LIMIT_WAIT_S)
    return None


def _error_fields(raw: bytes) -> tuple[int | None, str]:
    try:
        body = json.loads(raw)
    except ValueError:
        return None, raw.decode("utf-8", "replace")[:500]
    if not isinstance(body, dict):
        return None, str(body)[:500]
    code = body.get("code")
    return (code if isinstance(code, int) else None), str(body.get("message", ""))


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
