"""Fault injection: the configuration and the one seeded RNG every fault decision draws from.

Given the same seed, configuration and sequence of requests, the same faults happen.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, ConfigDict

from brokersim.inputs import Millis, Probability, Seed


class FaultConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: Seed = 0
    latency_ms: Millis = 0
    jitter_ms: Millis = 0
    spike_prob: Probability = 0.0
    spike_ms: Millis = 0
    hang_prob: Probability = 0.0
    # Longer than any client timeout: a hung request is one the client gives up on.
    hang_ms: Millis = 600_000
    error_5xx_prob: Probability = 0.0
    drop_reply_prob: Probability = 0.0
    late_prob: Probability = 0.0
    late_ms: Millis = 0
    event_drop_prob: Probability = 0.0
    event_dup_prob: Probability = 0.0
    unreachable: bool = False
    # How long a replace (PATCH) takes to reach the venue: the old order still fills meanwhile.
    replace_delay_ms: Millis = 0


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
