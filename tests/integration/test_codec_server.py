"""The codec server over a real socket: what it decodes, for whom, and what it refuses."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from temporalio.contrib.pydantic import pydantic_data_converter

from core.codec import CodecKeys, EncryptionCodec, new_key_entry
from core.errors import UserError
from devstack.stack import free_port
from ordersaga.codec_server import CodecServer

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "codec-test-token"
UI = "http://127.0.0.1:8233"
KEYS = CodecKeys.parse(new_key_entry("k1"))


@pytest_asyncio.fixture(loop_scope="session")
async def codec_url() -> AsyncIterator[str]:
    runner = web.AppRunner(CodecServer(EncryptionCodec(KEYS), TOKEN, UI).app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def body_of(payloads: list[Any]) -> dict[str, Any]:
    return {
        "payloads": [
            {
                "metadata": {k: base64.b64encode(v).decode() for k, v in p.metadata.items()},
                "data": base64.b64encode(p.data).decode(),
            }
            for p in payloads
        ]
    }


async def post(
    url: str, path: str, body: object, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, data=json.dumps(body), headers=headers or {}) as resp,
    ):
        return resp.status, await resp.json(content_type=None), dict(resp.headers)


AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def encrypted_order() -> list[Any]:
    plain = await pydantic_data_converter.encode([{"qty": "13.579", "limit": "91.2345"}])
    return [EncryptionCodec(KEYS).encode_one(p) for p in plain]


async def test_decode_with_the_token_returns_the_plain_payloads(codec_url: str) -> None:
    status, body, _ = await post(codec_url, "/decode", body_of(await encrypted_order()), AUTH)
    assert status == 200, body
    [payload] = body["payloads"]
    assert base64.b64decode(payload["metadata"]["encoding"]) == b"json/plain"
    assert json.loads(base64.b64decode(payload["data"])) == {"qty": "13.579", "limit": "91.2345"}


async def test_encode_then_decode_round_trips(codec_url: str) -> None:
    plain = await pydantic_data_converter.encode([Decimal("187.4321")])
    status, sealed, _ = await post(codec_url, "/encode", body_of(plain), AUTH)
    assert status == 200
    assert b"187.4321" not in json.dumps(sealed).encode()
    status, opened, _ = await post(codec_url, "/decode", sealed, AUTH)
    assert status == 200 and opened == body_of(plain)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": TOKEN},  # without the scheme
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
async def test_decode_without_the_token_is_refused_and_decodes_nothing(
    codec_url: str, headers: dict[str, str]
) -> None:
    status, body, _ = await post(codec_url, "/decode", body_of(await encrypted_order()), headers)
    assert status == 401
    assert "13.579" not in json.dumps(body)


async def test_bad_bodies_and_foreign_keys_are_400s_with_one_line(codec_url: str) -> None:
    status, body, _ = await post(codec_url, "/decode", {"payloads": "nope"}, AUTH)
    assert status == 400 and body["message"] == "the body is not JSON Payloads"
    other = EncryptionCodec(CodecKeys.parse(new_key_entry("k9")))
    plain = await pydantic_data_converter.encode(["x"])
    status, body, _ = await post(
        codec_url, "/decode", body_of([other.encode_one(p) for p in plain]), AUTH
    )
    assert status == 400 and "key 'k9', which is not in the set" in body["message"]


async def test_cors_answers_the_web_ui_origin_only(codec_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        preflight = {
            "Origin": UI,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
        }
        async with session.options(codec_url + "/decode", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == UI
            assert "authorization" in resp.headers["Access-Control-Allow-Headers"]
        elsewhere = {**preflight, "Origin": "http://evil.example"}
        async with session.options(codec_url + "/decode", headers=elsewhere) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
    _, _, headers = await post(
        codec_url, "/decode", body_of(await encrypted_order()), {**AUTH, "Origin": UI}
    )
    assert headers["Access-Control-Allow-Origin"] == UI


async def test_a_server_without_a_token_does_not_start() -> None:
    with pytest.raises(UserError, match="ORDERSAGA_CODEC_SERVER_TOKEN is not set"):
        CodecServer(EncryptionCodec(KEYS), "", UI)
