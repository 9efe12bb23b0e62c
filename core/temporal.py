"""Connecting to Temporal with the project's data converter: pydantic models on the wire,
every payload encrypted when codec keys are configured (core/codec.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.runtime import Runtime
from temporalio.service import TLSConfig

from core.codec import CodecKeys, EncryptionCodec
from core.errors import UserError
from core.settings import Settings

SEARCH_ATTRIBUTES = ("OrderStatus", "AccountId", "Symbol")


def data_converter(settings: Settings) -> DataConverter:
    """The converter every client and worker of the project uses (the settings' keys)."""
    return converter_for(settings.codec_key_set())


def converter_for(keys: CodecKeys | None) -> DataConverter:
    """Pydantic on the wire; with keys, every payload encrypted, and failures' messages and
    stack traces moved into an encrypted payload too (they can carry an order's numbers)."""
    if keys is None:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def tls_config(settings: Settings) -> TLSConfig | bool:
    """How to reach Temporal: mTLS from the certificate files, TLS with the system's roots
    (``temporal_tls``, or an API key), or plain. A UserError of one line for files that do not go
    together or cannot be read (a process refuses to start on them)."""
    s = settings
    cert, key, ca = s.temporal_tls_cert_file, s.temporal_tls_key_file, s.temporal_tls_ca_file
    if (cert is None) != (key is None):
        raise UserError(
            "ORDERSAGA_TEMPORAL_TLS_CERT_FILE and ORDERSAGA_TEMPORAL_TLS_KEY_FILE go together:"
            " set both or neither"
        )
    if cert is None and ca is None and not s.temporal_tls_server_name:
        return s.temporal_tls or bool(s.temporal_api_key.get_secret_value())
    return TLSConfig(
        client_cert=_pem("ORDERSAGA_TEMPORAL_TLS_CERT_FILE", cert),
        client_private_key=_pem("ORDERSAGA_TEMPORAL_TLS_KEY_FILE", key),
        server_root_ca_cert=_pem("ORDERSAGA_TEMPORAL_TLS_CA_FILE", ca),
        domain=s.temporal_tls_server_name or None,
    )


def _pem(variable: str, path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{variable}: cannot read {path}: {exc.strerror}") from None
    if b"-----BEGIN " not in data:
        raise UserError(f"{variable}: {path} is not a PEM file")
    return data


async def connect(settings: Settings, runtime: Runtime | None = None) -> Client:
    """The project's client; ``runtime``: the process's one runtime (core/telemetry.py), whose
    exporter carries the SDK's metrics and the workflows' (None: the SDK's default runtime)."""
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        api_key=settings.temporal_api_key.get_secret_value() or None,
        tls=tls_config(settings),
        runtime=runtime,
    )
