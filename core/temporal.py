"""Connecting to Temporal with the project's data converter (pydantic models on the wire)."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from core.settings import Settings

SEARCH_ATTRIBUTES = ("OrderStatus", "AccountId", "Symbol")


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        api_key=settings.temporal_api_key or None,
        tls=settings.temporal_tls or bool(settings.temporal_api_key),
    )
