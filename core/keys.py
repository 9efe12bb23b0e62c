"""Every Redis key the project writes, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    prefix: str = "ordersaga:"

    def lock(self, account_id: str) -> str:
        return f"{self.prefix}lock:{account_id}"

    def fence(self, account_id: str) -> str:
        return f"{self.prefix}fence:{account_id}"

    def quote(self, symbol: str) -> str:
        return f"{self.prefix}quote:{symbol.upper()}"

    def fx(self, pair: str) -> str:
        """The firm's FX quote for a currency pair (core/fx.py, feeds/fx.py)."""
        return f"{self.prefix}fx:{pair.upper()}"

    def listener_offset(self, name: str = "default") -> str:
        return f"{self.prefix}listener:offset:{name}"

    def listener_dead_letters(self, name: str = "default") -> str:
        """A list, newest first: events the listener could not parse (``feeds/deadletters.py``)."""
        return f"{self.prefix}listener:dead:{name}"

    def pattern(self) -> str:
        """Glob matching every key under this prefix (tests drop them afterwards)."""
        return f"{self.prefix}*"
