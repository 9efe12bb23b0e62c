"""Alpaca's trading stream: a websocket at ``/stream`` carrying ``trade_updates``.

The protocol is Alpaca's (https://docs.alpaca.markets/docs/websocket-streaming):

    -> {"action": "authenticate", "data": {"key_id": "...", "secret_key": "..."}}
    <- {"stream": "authorization", "data": {"status": "authorized", "action": "authenticate"}}
    -> {"action": "listen", "data": {"streams": ["trade_updates"]}}
    <- {"stream": "listening", "data": {"streams": ["trade_updates"]}}
    <- {"stream": "trade_updates", "data": {"event": "fill", "execution_id": "...",
        "order": {...}, "timestamp": "...", "price": "...", "qty": "...", "position_qty": "..."}}

Wrong keys get ``"status": "unauthorized"`` and the socket is closed; so does a ``listen``
before a successful ``authenticate``. Messages go out as binary frames of JSON, as Alpaca's
paper endpoint sends them; clients may send text or binary frames.

There is no replay: a connection receives the events stored after its ``listen``. That is the
difference from the SSE endpoint (``GET /v2/events/trade_updates?since=N``), and why a client
of this stream must look up the orders that were open while it was disconnected.

Faults: ``unreachable`` drops every socket and refuses new ones; ``drop`` (``POST
/admin/streams/drop``) closes every socket's TCP connection without a close frame, as a network
failure would, and with ``refuse`` turns new connections away (503) until ``allow``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from brokersim.engine import Engine
from brokersim.inputs import MAX_BODY_BYTES, ApiError

AUTH_TIMEOUT_S = 10.0
STREAM = "trade_updates"
# Keys of a stored event that Alpaca's message has only on executions.
_EXECUTION_ONLY = ("price", "qty", "position_qty")


@dataclass(eq=False)  # kept in a set: hashed by identity
class _Connection:
    request: web.Request
    ws: web.WebSocketResponse
    authorized: bool = False
    listening: bool = False
    last: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def drop(self) -> None:
        """Close the TCP connection without a close frame: what a network failure looks like."""
        if self.request.transport is not None:
            self.request.transport.close()


def trade_update(text: str) -> bytes:
    """A stored event as Alpaca's ``trade_updates`` message; raw text planted through
    ``POST /admin/events`` goes out as it is (a malformed message on purpose)."""
    try:
        event = json.loads(text)
    except ValueError:
        return text.encode()
    if not isinstance(event, dict) or "order" not in event:
        return text.encode()
    data = {k: v for k, v in event.items() if k != "offset"}
    if data.get("event") not in ("fill", "partial_fill"):
        for key in _EXECUTION_ONLY:
            if data.get(key) is None:
                data.pop(key, None)
    return json.dumps({"stream": STREAM, "data": data}).encode()


def _message(stream: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"stream": stream, "data": data}).encode()


UNAUTHORIZED = _message("authorization", {"status": "unauthorized", "action": "authenticate"})
AUTHORIZED = _message("authorization", {"status": "authorized", "action": "authenticate"})


class TradingStream:
    def __init__(self, engine: Engine, keys: Callable[[], tuple[str, str]]) -> None:
        self.engine = engine
        self._keys = keys  # the current (key_id, secret_key): they may be rotated
        self.connections: set[_Connection] = set()
        self.refusing = False
        engine.listeners.append(self._wake)

    def _wake(self) -> None:
        for conn in self.connections:
            conn.changed.set()

    def status(self) -> dict[str, Any]:
        listening = sum(1 for c in self.connections if c.listening)
        return {"connections": len(self.connections), "listening": listening,
                "refusing": self.refusing}  # fmt: skip

    def drop_all(self, *, refuse: bool = False) -> int:
        self.refusing = self.refusing or refuse
        dropped = list(self.connections)
        for conn in dropped:
            conn.drop()
            conn.changed.set()
        return len(dropped)

    async def close_all(self) -> None:
        """Close every socket with a close frame (shutdown)."""
        for conn in list(self.connections):
            with contextlib.suppress(Exception):
                await conn.ws.close()

    async def handle(self, request: web.Request, unreachable: bool) -> web.StreamResponse:
        if unreachable:
            if request.transport is not None:
                request.transport.close()
            return web.Response(status=204)
        if self.refusing:
            raise ApiError(503, 50300000, "the stream refuses connections (admin)")
        ws = web.WebSocketResponse(max_msg_size=MAX_BODY_BYTES, heartbeat=None)
        await ws.prepare(request)
        conn = _Connection(request, ws)
        self.connections.add(conn)
        sender = asyncio.create_task(self._send_events(conn))
        try:
            with contextlib.suppress(ConnectionError):
                await self._read(conn)
        finally:
            self.connections.discard(conn)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _read(self, conn: _Connection) -> None:
        ws = conn.ws
        while not ws.closed:
            try:
                timeout = None if conn.authorized else AUTH_TIMEOUT_S
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                await ws.send_bytes(UNAUTHORIZED)
                return
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                return  # closed, closing or a protocol error
            if not await self._on_message(conn, msg.data):
                return

    async def _on_message(self, conn: _Connection, raw: str | bytes) -> bool:
        """Answer one client message; False ends the connection."""
        try:
            message = json.loads(raw)
        except ValueError:
            message = None
        action = message.get("action") if isinstance(message, dict) else None
        data = message.get("data") if isinstance(message, dict) else None
        data = data if isinstance(data, dict) else {}
        if action == "authenticate":
            conn.authorized = self._keys_match(data)
            await conn.ws.send_bytes(AUTHORIZED if conn.authorized else UNAUTHORIZED)
            return conn.authorized
        if not conn.authorized:
            await conn.ws.send_bytes(UNAUTHORIZED)
            return False
        if action == "listen":
            streams = data.get("streams")
            streams = streams if isinstance(streams, list) else []
            wanted = STREAM in streams
            if wanted and not conn.listening:
                conn.last = self.engine.last_offset  # no replay: events from now on
            conn.listening = wanted
            await conn.ws.send_bytes(_message("listening", {"streams": [STREAM] if wanted else []}))
            conn.changed.set()
            return True
        await conn.ws.send_bytes(_message("error", {"error_message": "unknown action"}))
        return True

    def _keys_match(self, data: dict[str, Any]) -> bool:
        key_id, secret = self._keys()

        def raw(name: str) -> bytes:
            value = data.get(name)
            return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else b""

        key_ok = hmac.compare_digest(raw("key_id"), key_id.encode())
        secret_ok = hmac.compare_digest(raw("secret_key"), secret.encode())
        return key_ok and secret_ok

    async def _send_events(self, conn: _Connection) -> None:
        while not conn.ws.closed:
            conn.changed.clear()
            if conn.listening:
                rows = self.engine.event_rows_after(conn.last, 500)
                for offset, text in rows:
                    await conn.ws.send_bytes(trade_update(text))
                    conn.last = offset
                if rows:
                    continue
            await conn.changed.wait()
