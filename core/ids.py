"""One rule per kind of identifier, shared by the SDK, the workflow and the ledger.

Matched whole (``fullmatch``): with ``re.match`` and a ``$`` anchor, ``"alice\\n"`` passed as a
look-alike of ``alice``.
"""

from __future__ import annotations

import re

# Account and order ids: no '/', so ``<account>/<order>`` (core/orderkey.py) parses one way.
ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Ticker symbols, as the broker spells them (``BRK.B``).
SYMBOL = re.compile(r"[A-Z][A-Z0-9.]{0,9}")


def is_id(text: object) -> bool:
    return isinstance(text, str) and ID.fullmatch(text) is not None


# Currency codes are the ledger's cash assets (core/money.CURRENCIES), never a symbol's shares.
CURRENCY_CODES = frozenset({"USD", "KRW"})


def is_symbol(text: object) -> bool:
    return (
        isinstance(text, str) and SYMBOL.fullmatch(text) is not None and text not in CURRENCY_CODES
    )
