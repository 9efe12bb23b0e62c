"""Connecting to Temporal with the project's data converter: pydantic models on the wire,
every payload encrypted when codec keys are configured (core/codec.py)."""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from core.codec import CodecKeys, EncryptionCodec
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


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=data_converter(settings),
        api_key=settings.temporal_api_key.get_secret_value() or None,
        tls=settings.temporal_tls or bool(settings.temporal_api_key.get_secret_value()),
    )
