"""The payload codec (core/codec.py): what it hides, how keys rotate, what it refuses."""

from __future__ import annotations

import asyncio
import base64
from decimal import Decimal

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DefaultFailureConverterWithEncodedAttributes

from core.codec import ENCODING, KEY_ID, CodecKeyError, CodecKeys, EncryptionCodec, new_key_entry
from core.errors import UserError
from core.settings import Settings
from core.temporal import converter_for
from workflows.models import OrderRequest

OLD, NEW = new_key_entry("k1"), new_key_entry("k2")


def order_payload() -> Payload:
    req = OrderRequest(
        account_id="acct-secret-7",
        order_id="o-1",
        symbol="AAPL",
        side="buy",
        qty=Decimal("3.25"),
        order_type="limit",
        limit_price=Decimal("187.4321"),
    )
    [payload] = asyncio.run(pydantic_data_converter.encode([req]))
    return payload


def test_an_encoded_payload_hides_the_order_and_decodes_back() -> None:
    codec = EncryptionCodec(CodecKeys.parse(OLD))
    plain = order_payload()
    assert b"187.4321" in plain.data  # the test's premise: the plain payload shows it
    sealed = codec.encode_one(plain)
    blob = sealed.SerializeToString()
    for secret in (b"187.4321", b"3.25", b"acct-secret-7", b"json/plain", b"AAPL"):
        assert secret not in blob, secret
    assert sealed.metadata["encoding"] == ENCODING and sealed.metadata[KEY_ID] == b"k1"
    assert codec.decode_one(sealed) == plain


def test_each_payload_gets_its_own_nonce() -> None:
    codec = EncryptionCodec(CodecKeys.parse(OLD))
    plain = order_payload()
    assert codec.encode_one(plain).data != codec.encode_one(plain).data


def test_large_payloads_are_compressed_before_encryption() -> None:
    codec = EncryptionCodec(CodecKeys.parse(OLD))
    big = Payload(metadata={"encoding": b"json/plain"}, data=b'"' + b"fill " * 2000 + b'"')
    sealed = codec.encode_one(big)
    assert sealed.metadata["compression"] == b"zlib"
    assert len(sealed.data) < len(big.data) // 10
    assert codec.decode_one(sealed) == big


def test_keys_rotate_new_payloads_use_the_newest_and_old_ones_still_decode() -> None:
    before = EncryptionCodec(CodecKeys.parse(OLD))
    written_before = before.encode_one(order_payload())
    after = EncryptionCodec(CodecKeys.parse(f"{NEW},{OLD}"))
    assert after.current_key_id == "k2"
    assert after.encode_one(order_payload()).metadata[KEY_ID] == b"k2"
    assert after.decode_one(written_before) == order_payload()
    # Once the old key is retired, its payloads no longer decode: said, not garbage.
    retired = EncryptionCodec(CodecKeys.parse(NEW))
    with pytest.raises(CodecKeyError, match="key 'k1', which is not in the set"):
        retired.decode_one(written_before)


def test_an_altered_or_relabelled_payload_is_refused() -> None:
    codec = EncryptionCodec(CodecKeys.parse(f"{NEW},{OLD}"))
    sealed = codec.encode_one(order_payload())
    flipped = Payload(metadata=dict(sealed.metadata), data=sealed.data[:-1] + b"\0")
    with pytest.raises(CodecKeyError, match="does not authenticate"):
        codec.decode_one(flipped)
    relabelled = Payload(metadata={**sealed.metadata, KEY_ID: b"k1"}, data=sealed.data)
    with pytest.raises(CodecKeyError, match="does not authenticate"):
        codec.decode_one(relabelled)


def test_payloads_written_before_the_codec_pass_through() -> None:
    codec = EncryptionCodec(CodecKeys.parse(OLD))
    plain = order_payload()
    assert codec.decode_one(plain) == plain


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no codec key given"),
        ("k1", "expected id:base64"),
        ("bad id:" + base64.b64encode(b"x" * 32).decode(), "expected id:base64"),
        ("k1:not base64!", "not base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "5 bytes, AES-256 needs 32"),
        (f"{OLD},{OLD}", "listed twice"),
    ],
)
def test_unusable_key_sets_are_refused_without_echoing_keys(text: str, message: str) -> None:
    with pytest.raises(CodecKeyError, match=message) as info:
        CodecKeys.parse(text)
    assert OLD.split(":")[1] not in str(info.value)


def test_settings_read_keys_from_a_file_first(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "keys"  # type: ignore[operator]
    path.write_text(f"# rotated 2026-11\n{NEW}\n{OLD}\n")
    keys = Settings(codec_keys=OLD, codec_keys_file=path).codec_key_set()
    assert keys is not None and keys.current == "k2" and set(keys.keys) == {"k1", "k2"}
    assert Settings(codec_keys="").codec_key_set() is None
    with pytest.raises(UserError, match="ORDERSAGA_CODEC_KEYS: codec key entry 1"):
        Settings(codec_keys="nonsense").codec_key_set()
    assert OLD not in repr(Settings(codec_keys=OLD))  # a SecretStr: never printed


def test_the_converter_encrypts_values_and_failures() -> None:
    converter = converter_for(CodecKeys.parse(OLD))
    [payload] = asyncio.run(converter.encode(["limit 187.4321"]))
    assert payload.metadata["encoding"] == ENCODING
    assert asyncio.run(converter.decode([payload])) == ["limit 187.4321"]
    assert converter_for(None) is pydantic_data_converter
    assert isinstance(converter.failure_converter, DefaultFailureConverterWithEncodedAttributes)
