"""The worker's workflow sandbox passes redis, asyncpg, aiohttp and pydantic_settings through
(issue 12, part 8), on a real dev server: a lazy import inside a run (what a client pool's
``__del__`` does when collected there) gets the process's own module, never a fresh copy."""

from __future__ import annotations

import asyncio
import importlib
import uuid

import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from tests.workflows.planted import LazyImportWorkflow
from worker.main import WORKFLOW_RUNNER

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

MODULES = ["redis.asyncio.connection", "asyncpg.pool", "aiohttp.client", "pydantic_settings"]


async def identities(
    env: WorkflowEnvironment, runner: SandboxedWorkflowRunner, timeout_s: float = 20
) -> list[int]:
    queue = f"sandbox-{uuid.uuid4().hex[:8]}"
    async with Worker(
        env.client, task_queue=queue, workflows=[LazyImportWorkflow], workflow_runner=runner
    ):
        return await asyncio.wait_for(
            env.client.execute_workflow(
                LazyImportWorkflow.run, MODULES, id=queue, task_queue=queue
            ),
            timeout_s,
        )


async def test_a_lazy_import_in_a_run_gets_the_process_module(
    temporal_env: WorkflowEnvironment,
) -> None:
    own = [id(importlib.import_module(name)) for name in MODULES]
    assert await identities(temporal_env, WORKFLOW_RUNNER) == own
    # The control: the sandbox's defaults do not hand the process's module to a lazy import (it
    # fails the workflow task, "imported after initial workflow load", or imports a fresh copy).
    try:
        fresh = await identities(temporal_env, SandboxedWorkflowRunner(), timeout_s=5)
    except TimeoutError:
        return
    assert fresh != own
