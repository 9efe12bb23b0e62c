"""The payload codec: every payload the project hands Temporal is compressed, then encrypted.

AES-256-GCM (the ``cryptography`` package) with a fresh 96-bit nonce per payload. The key id is
in each payload's metadata, so keys rotate: new payloads are encrypted with the first key of the
key set; payloads written with an older key decode as long as that key is still in the set.
The whole original payload (its metadata and data) is what is encrypted, so the encoding and
the type hints are hidden too; the key id and the encoding name are bound to the ciphertext as
associated data, so a payload cannot be relabelled with another key id.

Payloads that are not ours (no ``binary/encrypted`` encoding: histories recorded before the
codec, search attributes) pass through untouched: old histories still decode and replay.

Keys never live in code: ``ORDERSAGA_CODEC_KEYS`` or a file (``ORDERSAGA_CODEC_KEYS_FILE``),
``id:base64`` entries separated by commas or newlines, the newest first (``ordersaga codec
new-key`` prints one).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
COMPRESSION = "compression"
NONCE_BYTES = 12
KEY_BYTES = 32
# Compression is skipped for payloads this small: zlib's header would only add to them.
COMPRESS_FROM = 64
_KEY_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class CodecKeyError(ValueError):
    """A key set that cannot be used (its text is wrong), or a payload no key here decodes."""


@dataclass(frozen=True)
class CodecKeys:
    """Keys by id; ``current`` encrypts new payloads."""

    current: str
    keys: dict[str, bytes]

    @classmethod
    def parse(cls, text: str) -> CodecKeys:
        """``id:base64`` entries separated by commas or newlines (``#`` starts a comment), the
        newest first; each key is 32 bytes. Raises CodecKeyError naming the bad entry, never
        echoing key material."""
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for n, raw in enumerate(re.split(r"[,\n]", text), start=1):
            entry = raw.split("#", 1)[0].strip()
            if not entry:
                continue
            key_id, sep, material = entry.partition(":")
            key_id = key_id.strip()
            if not sep or not _KEY_ID_RE.fullmatch(key_id):
                raise CodecKeyError(
                    f"codec key entry {n}: expected id:base64 with an id of letters, digits,"
                    " '.', '_' or '-'"
                )
            try:
                key = base64.b64decode(material.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise CodecKeyError(f"codec key {key_id!r}: not base64") from None
            if len(key) != KEY_BYTES:
                raise CodecKeyError(
                    f"codec key {key_id!r}: {len(key)} bytes, AES-256 needs {KEY_BYTES}"
                )
            if key_id in keys:
                raise CodecKeyError(f"codec key {key_id!r} is listed twice")
            keys[key_id] = key
            order.append(key_id)
        if not order:
            raise CodecKeyError("no codec key given")
        return cls(current=order[0], keys=keys)


def new_key_entry(key_id: str) -> str:
    """A fresh random key as a key-set entry (``id:base64``)."""
    if not _KEY_ID_RE.fullmatch(key_id):
        raise CodecKeyError("a key id is letters, digits, '.', '_' or '-' (at most 64)")
    return f"{key_id}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


class EncryptionCodec(PayloadCodec):
    """Compress (zlib) then encrypt (AES-256-GCM) each payload; decode the reverse."""

    def __init__(self, keys: CodecKeys) -> None:
        self._keys = keys
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.keys.items()}

    @property
    def current_key_id(self) -> str:
        return self._keys.current

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encode_one(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decode_one(p) for p in payloads]

    def encode_one(self, payload: Payload) -> Payload:
        plain = payload.SerializeToString(deterministic=True)
        compression = b""
        if len(plain) >= COMPRESS_FROM:
            packed = zlib.compress(plain, 6)
            if len(packed) < len(plain):
                plain, compression = packed, b"zlib"
        key_id = self._keys.current
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, plain, _aad(key_id, compression))
        metadata = {"encoding": ENCODING, KEY_ID: key_id.encode()}
        if compression:
            metadata[COMPRESSION] = compression
        return Payload(metadata=metadata, data=nonce + sealed)

    def decode_one(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # not ours: written before the codec, or never encoded
        key_id = payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CodecKeyError(f"payload encrypted with key {key_id!r}, which is not in the set")
        compression = payload.metadata.get(COMPRESSION, b"")
        if compression not in (b"", b"zlib"):
            raise CodecKeyError("payload compressed with an unknown method")
        data = payload.data
        try:
            plain = cipher.decrypt(
                data[:NONCE_BYTES], data[NONCE_BYTES:], _aad(key_id, compression)
            )
        except InvalidTag:
            raise CodecKeyError(
                f"payload under key {key_id!r} does not authenticate (altered, or another key)"
            ) from None
        if compression:
            plain = zlib.decompress(plain)
        out = Payload()
        out.ParseFromString(plain)
        return out


def _aad(key_id: str, compression: bytes) -> bytes:
    return ENCODING + b"\0" + key_id.encode() + b"\0" + compression
