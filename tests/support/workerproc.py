"""Workers for tests that stop or kill them: a worker process pointed at a test's stack (started
once it polls), and the real workers in the test's own process for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from core.settings import Settings
from worker.main import build_workers, resources


def worker_env(settings: Settings, temporal_address: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ORDERSAGA_TEMPORAL_ADDRESS": temporal_address,
            "ORDERSAGA_DATABASE_URL": settings.database_url,
            "ORDERSAGA_REDIS_URL": settings.redis_url,
            "ORDERSAGA_REDIS_PREFIX": settings.redis_prefix,
            "ORDERSAGA_BROKER_URL": settings.broker_url,
            "ORDERSAGA_ORDERS_TASK_QUEUE": settings.orders_task_queue,
            "ORDERSAGA_BROKER_TASK_QUEUE": settings.broker_task_queue,
            "ORDERSAGA_CODEC_KEYS": settings.codec_keys.get_secret_value(),
            "ORDERSAGA_BROKER_SECRET_KEY": settings.broker_secret_key.get_secret_value(),
            "ORDERSAGA_BROKER_MAX_ACTIVITIES_PER_SECOND": str(
                settings.broker_max_activities_per_second
            ),
            "ORDERSAGA_BROKER_ASKS_MAX_ACTIVITIES_PER_SECOND": str(
                settings.broker_asks_max_activities_per_second
            ),
        }
    )
    if settings.dev_stack:  # the dev broker keys are accepted only with the dev stack's marker
        env["ORDERSAGA_DEV_STACK"] = "1"
    return env


def start_worker(
    env: dict[str, str], log: Path, *argv: str, module: str = "worker"
) -> subprocess.Popen[bytes]:
    """``python -m MODULE ARGV...`` in a session of its own (so a kill takes its children), once
    it prints "worker ready"; its output goes to ``log``."""
    out = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *(argv or ("--queues", "orders,broker"))],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while b"worker ready" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"worker did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc


async def run_until_it_dies(env: dict[str, str], log: Path, step: str) -> None:
    """Run ``tests.e2e.dying_worker STEP`` until it SIGKILLs itself right after ``step``
    committed (at most 30 s); fails if it died otherwise."""
    dying = start_worker(env, log, step, module="tests.e2e.dying_worker")
    try:
        await asyncio.wait_for(asyncio.to_thread(dying.wait), 30)
    finally:
        if dying.poll() is None:
            dying.kill()
            dying.wait()
    text = await asyncio.to_thread(log.read_text)
    assert "dying after" in text, text[-2000:]


@contextlib.asynccontextmanager
async def workers_running(
    temporal: Client, settings: Settings, queues: tuple[str, ...] = ("orders", "broker")
) -> AsyncIterator[list[Worker]]:
    """The real orders and broker workers, in this process, for the length of the block."""
    async with resources(settings, queues) as res:
        workers = build_workers(temporal, res, queues)
        running = [asyncio.create_task(w.run()) for w in workers]
        try:
            yield workers
        finally:
            await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
            await asyncio.gather(*running, return_exceptions=True)
