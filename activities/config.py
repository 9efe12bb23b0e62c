"""The orders worker's own saga settings, handed to each order through a local activity.

An order reads them once per run; the answer is recorded in its history (a local-activity
marker), so a replay sees the settings the order ran with even after the worker's changed. The
caller who starts an order has no say in them: not the commission, not the buffers or timeouts,
not the task queue its broker calls go to.
"""

from __future__ import annotations

from pydantic import BaseModel
from temporalio import activity

from core.settings import SagaConfig


class SagaConfigInput(BaseModel):
    """Nothing: the worker answers with its own settings (a model, so fields can be added)."""


class ConfigActivities:
    def __init__(self, config: SagaConfig) -> None:
        self._config = config

    @activity.defn
    async def saga_config(self, _: SagaConfigInput) -> SagaConfig:
        """The worker's saga settings. A read of memory: retried, it answers the same."""
        return self._config
