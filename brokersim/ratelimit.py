"""Alpaca's per-key rate limit: a fixed window per key and lane, and the headers every answer
in a limited lane carries.

Alpaca allows 200 Trading API requests a minute per account and answers 429 beyond it; the
Market Data API counts separately (200 a minute on the free plan). Here each lane has its own
limit (0: not limited, the default, so the test suite and the dev stack are unaffected):

- ``trading``: every REST call under ``/v2`` that is not market data (orders, the account,
  positions, the stored-events list). An open event stream is not a request (Alpaca streams
  trade updates over a websocket, which the limit does not count).
- ``market_data``: ``/v2/stocks/...``.

A window opens at a key's first request in a lane and lasts ``window_s`` seconds (60, Alpaca's
minute; tests shorten it). ``X-Ratelimit-Reset`` is the epoch second the window ends, rounded
up, so a client that waits until then finds a fresh window. A refused request is not counted.
Counters live in memory: a restart opens fresh windows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from brokersim.inputs import RequestCount, WindowSeconds

LIMITED_CODE = 42910000


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Requests allowed per window and key; 0 = no limit.
    limit: RequestCount = 0
    market_data_limit: RequestCount = 0
    window_s: WindowSeconds = 60


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_epoch_s: int

    @property
    def headers(self) -> dict[str, str]:
        return {
            "X-Ratelimit-Limit": str(self.limit),
            "X-Ratelimit-Remaining": str(self.remaining),
            "X-Ratelimit-Reset": str(self.reset_epoch_s),
        }


@dataclass
class _Window:
    ends_at: float  # epoch seconds
    used: int = 0


class RateLimiter:
    """Fixed windows per (lane, key); ``clock`` returns epoch seconds (tests pass their own)."""

    def __init__(self, config: RateLimitConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}
        # Counted requests let through and refused (429) since the start: the benchmark's figures.
        self.allowed = 0
        self.refused = 0

    def update(self, patch: dict[str, Any]) -> RateLimitConfig:
        """Merge ``patch`` into the configuration; open windows are dropped (a fresh start)."""
        self.config = RateLimitConfig.model_validate({**self.config.model_dump(), **patch})
        self._windows.clear()
        return self.config

    def limit_of(self, lane: str) -> int:
        return self.config.market_data_limit if lane == "market_data" else self.config.limit

    def take(self, lane: str, key: str) -> Decision | None:
        """Count one request of ``key`` in ``lane``; None when the lane is not limited."""
        limit = self.limit_of(lane)
        if limit <= 0:
            return None
        now = self._clock()
        window = self._windows.get((lane, key))
        if window is None or now >= window.ends_at:
            window = self._windows[(lane, key)] = _Window(ends_at=now + self.config.window_s)
        reset = math.ceil(window.ends_at)
        if window.used >= limit:
            self.refused += 1
            return Decision(False, limit, 0, reset)
        window.used += 1
        self.allowed += 1
        return Decision(True, limit, limit - window.used, reset)
