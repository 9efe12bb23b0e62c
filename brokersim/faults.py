"""Fault injection: the configuration and the one seeded RNG every fault decision draws from.

Given the same seed, configuration and sequence of requests, the same faults happen.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Probability = Field(default=0.0, ge=0.0, le=1.0)
Millis = Field(default=0, ge=0)


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    latency_ms: int = Millis
    jitter_ms: int = Millis
    spike_prob: float = Probability
    spike_ms: int = Millis
    hang_prob: float = Probability
    # Longer than any client timeout: a hung request is one the client gives up on.
    hang_ms: int = Field(default=600_000, ge=0)
    error_5xx_prob: float = Probability
    drop_reply_prob: float = Probability
    late_prob: float = Probability
    late_ms: int = Millis
    event_drop_prob: float = Probability
    event_dup_prob: float = Probability
    unreachable: bool = False


class Faults:
    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)

    def update(self, patch: dict[str, Any]) -> FaultConfig:
        """Merge ``patch`` into the configuration; a new seed restarts the RNG."""
        merged = FaultConfig.model_validate({**self.config.model_dump(), **patch})
        self.config = merged
        if "seed" in patch:
            self.rng = random.Random(merged.seed)
        return merged

    def chance(self, probability: float) -> bool:
        return probability > 0 and self.rng.random() < probability

    def delay_s(self) -> float:
        """Latency for one request: fixed + jitter + an occasional spike."""
        c = self.config
        ms = float(c.latency_ms)
        if c.jitter_ms:
            ms += self.rng.uniform(0, c.jitter_ms)
        if self.chance(c.spike_prob):
            ms += c.spike_ms
        return ms / 1000.0
