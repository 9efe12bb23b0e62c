"""The simulator's tradable assets in the shape of Alpaca's Asset entity (GET /v2/assets,
GET /v2/assets/{symbol_or_asset_id}); their ids are also each order's and position's
``asset_id``. Every asset is an active, tradable, fractionable US equity."""

from __future__ import annotations

import uuid
from typing import Any

# Stable asset ids per symbol (Alpaca's are UUIDs; any fixed ones do).
_ASSET_NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")

# symbol: (name, listing exchange); the symbols are the engine's (engine.BASE_PRICES).
ASSETS: dict[str, tuple[str, str]] = {
    "AAPL": ("Apple Inc. Common Stock", "NASDAQ"),
    "MSFT": ("Microsoft Corporation Common Stock", "NASDAQ"),
    "TSLA": ("Tesla, Inc. Common Stock", "NASDAQ"),
    "NVDA": ("NVIDIA Corporation Common Stock", "NASDAQ"),
    "AMZN": ("Amazon.com, Inc. Common Stock", "NASDAQ"),
    "GOOGL": ("Alphabet Inc. Class A Common Stock", "NASDAQ"),
    "META": ("Meta Platforms, Inc. Class A Common Stock", "NASDAQ"),
    "NFLX": ("Netflix, Inc. Common Stock", "NASDAQ"),
    "AMD": ("Advanced Micro Devices, Inc. Common Stock", "NASDAQ"),
    "INTC": ("Intel Corporation Common Stock", "NASDAQ"),
    "SPY": ("SPDR S&P 500 ETF Trust", "ARCA"),
    "QQQ": ("Invesco QQQ Trust, Series 1", "NASDAQ"),
}
ASSET_STATUSES = ("active", "inactive")
ASSET_CLASSES = ("us_equity", "us_option", "crypto")


def asset_id(symbol: str) -> str:
    return str(uuid.uuid5(_ASSET_NAMESPACE, f"us_equity/{symbol}"))


def exchange(symbol: str) -> str:
    return ASSETS.get(symbol, ("", "NASDAQ"))[1]


def asset_json(symbol: str) -> dict[str, Any]:
    name, listed_on = ASSETS.get(symbol, (symbol, "NASDAQ"))
    return {
        "id": asset_id(symbol),
        "class": "us_equity",
        "exchange": listed_on,
        "symbol": symbol,
        "name": name,
        "status": "active",
        "tradable": True,
        "marginable": True,
        "shortable": True,
        "easy_to_borrow": True,
        "fractionable": True,
        "maintenance_margin_requirement": 30,
        "margin_requirement_long": "30",
        "margin_requirement_short": "30",
        "attributes": ["fractional_eh_enabled"],
    }


def find_asset(symbols: set[str], key: str) -> dict[str, Any] | None:
    """The asset whose symbol (any case) or id is ``key``; None when there is none."""
    if key.upper() in symbols:
        return asset_json(key.upper())
    by_id = {asset_id(s): s for s in symbols}
    return asset_json(by_id[key]) if key in by_id else None
