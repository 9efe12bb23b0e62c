"""The codec server: ``POST /encode`` and ``POST /decode`` as the Temporal Web UI and CLI call them
(``temporal workflow show --codec-endpoint URL --codec-auth 'Bearer TOKEN'``, or the UI's
``--ui-codec-endpoint``), so people allowed to look see an order's payloads decoded while Temporal
stores them encrypted.

Each request must carry ``Authorization: Bearer <codec_server_token>`` (compared in constant
time); anything else is refused with 401 and decodes nothing. CORS answers the configured Web UI
origin only, so a page from elsewhere cannot use a browser's way in. Bodies are Temporal's JSON
form of ``Payloads`` (``{"payloads": [{"metadata": {...}, "data": "<base64>"}]}``), at most
``MAX_BODY_BYTES``; a body that does not parse, or a payload no key decodes, is a 400 with one
line.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads

from core.codec import CodecKeyError, EncryptionCodec
from core.errors import UserError
from core.settings import Settings

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 4 * 1024 * 1024  # Temporal's payloads are at most 2 MB each
ALLOWED_HEADERS = "authorization,content-type,x-namespace"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CodecServer:
    def __init__(self, codec: EncryptionCodec, token: str, cors_origin: str) -> None:
        if not token:
            raise UserError("ORDERSAGA_CODEC_SERVER_TOKEN is not set: the codec server needs one")
        self._codec = codec
        self._token = f"Bearer {token}".encode()
        self._origin = cors_origin

    @classmethod
    def from_settings(cls, settings: Settings) -> CodecServer:
        keys = settings.codec_key_set()
        if keys is None:
            raise UserError("no codec keys (ORDERSAGA_CODEC_KEYS or ORDERSAGA_CODEC_KEYS_FILE)")
        return cls(
            EncryptionCodec(keys),
            settings.codec_server_token.get_secret_value(),
            settings.codec_server_cors_origin,
        )

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._cors], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/encode", self._endpoint(self._codec.encode_one))
        app.router.add_post("/decode", self._endpoint(self._codec.decode_one))
        app.router.add_get("/healthz", self._health)
        return app

    @web.middleware
    async def _cors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":  # a browser's preflight: no credentials, nothing decoded
            response: web.StreamResponse = web.Response(status=204)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = web.json_response({"message": exc.text or exc.reason}, status=exc.status)
        if request.headers.get("Origin") == self._origin:
            response.headers["Access-Control-Allow-Origin"] = self._origin
            response.headers["Access-Control-Allow-Methods"] = "POST"
            response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
            response.headers["Access-Control-Allow-Credentials"] = "true"
            response.headers["Vary"] = "Origin"
        return response

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
        return hmac.compare_digest(given, self._token)

    def _endpoint(self, one: Callable[[Payload], Payload]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if not self._authorized(request):
                return web.json_response({"message": "unauthorized"}, status=401)
            try:
                payloads = json_format.Parse(await request.read(), Payloads())
                out = Payloads(payloads=[one(p) for p in payloads.payloads])
            except (json_format.ParseError, UnicodeDecodeError):
                return web.json_response({"message": "the body is not JSON Payloads"}, status=400)
            except CodecKeyError as exc:
                return web.json_response({"message": str(exc)}, status=400)
            return web.Response(
                text=json_format.MessageToJson(out), content_type="application/json"
            )

        return handle

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "key": self._codec.current_key_id})


async def serve(settings: Settings, host: str, port: int) -> None:
    """Run until SIGINT or SIGTERM."""
    server = CodecServer.from_settings(settings)
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("codec server on http://%s:%d (Web UI origin %s)", host, port, server._origin)
    print(f"codec server ready on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
