"""Worker processes for tests that kill them: the environment that points one at a test's stack,
and a start that waits until it polls."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from core.settings import Settings


def worker_env(settings: Settings, temporal_address: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ORDERSAGA_TEMPORAL_ADDRESS": temporal_address,
            "ORDERSAGA_DATABASE_URL": settings.database_url,
            "ORDERSAGA_REDIS_PREFIX": settings.redis_prefix,
            "ORDERSAGA_BROKER_URL": settings.broker_url,
            "ORDERSAGA_ORDERS_TASK_QUEUE": settings.orders_task_queue,
            "ORDERSAGA_BROKER_TASK_QUEUE": settings.broker_task_queue,
        }
    )
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
