"""Outside the dev stack, a process that talks to the broker refuses to start on the dev broker
secret: one line naming the variable, a non-zero exit, no traceback. With the dev stack's marker
(``ORDERSAGA_DEV_STACK=1``, which ``ordersaga dev up`` gives its processes) the same process
starts. Real processes, started the way a deployment starts them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from core.settings import DEV_BROKER_SECRET_KEY
from tests.support.saga import TEST_CODEC_KEYS
from tests.support.workerproc import start_worker

CLI = [sys.executable, "-m", "cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """The machine's environment without any ORDERSAGA_* variable (the suite's marker
    included): the settings' defaults, as a process deployed without them would get."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSAGA_")}
    return {**env, **extra}


def refused(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert done.stdout == "", done.stdout  # refused before it started anything
    return done


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "worker", "--queues", "broker"],
        [*CLI, "worker", "--queues", "orders,broker"],
        [*CLI, "marketdata"],
        [*CLI, "broker-listener"],
        [*CLI, "broker-sim", "--port", "0"],
        [sys.executable, "-m", "brokersim", "--port", "0"],
    ],
    ids=["python-m-worker", "worker", "marketdata", "broker-listener", "broker-sim", "brokersim"],
)
def test_a_broker_facing_process_refuses_the_dev_secret_in_one_line(
    argv: list[str], tmp_path: Path
) -> None:
    done = refused(argv, clean_env(ORDERSAGA_STATE_DIR=str(tmp_path)))
    assert "ORDERSAGA_BROKER_SECRET_KEY" in done.stderr
    assert DEV_BROKER_SECRET_KEY not in done.stderr  # names the variable, never the value


def test_the_simulator_refuses_the_dev_secret_given_on_its_command_line(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "brokersim", "--port", "0", "--state", str(tmp_path / "s.db")]
    done = refused([*argv, "--secret-key", DEV_BROKER_SECRET_KEY], clean_env())
    assert "ORDERSAGA_BROKER_SECRET_KEY" in done.stderr


def test_the_codec_server_refuses_to_start_without_its_token(tmp_path: Path) -> None:
    env = clean_env(ORDERSAGA_CODEC_KEYS=TEST_CODEC_KEYS, ORDERSAGA_STATE_DIR=str(tmp_path))
    done = refused([*CLI, "codec-server", "--port", "1"], env)
    assert "ORDERSAGA_CODEC_SERVER_TOKEN" in done.stderr


def test_an_orders_only_worker_needs_no_broker_secret(tmp_path: Path) -> None:
    """It never talks to the broker (compose gives it no broker keys): no refusal; it gets as
    far as connecting to a Temporal that is not there."""
    env = clean_env(ORDERSAGA_TEMPORAL_ADDRESS="127.0.0.1:1", ORDERSAGA_STATE_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--queues", "orders"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert "ORDERSAGA_BROKER_SECRET_KEY" not in done.stderr, done.stderr


@pytest.mark.temporal
@pytest.mark.asyncio(loop_scope="session")
async def test_with_the_dev_stack_marker_the_worker_starts(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    env = clean_env(
        ORDERSAGA_TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
        ORDERSAGA_CODEC_KEYS=TEST_CODEC_KEYS,
        ORDERSAGA_BROKER_TASK_QUEUE=f"broker-{uuid.uuid4().hex[:8]}",
        ORDERSAGA_DEV_STACK="1",
    )
    log = tmp_path / "worker.log"
    proc = start_worker(env, log, "--queues", "broker")  # waits for "worker ready"
    try:
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)
    assert "ORDERSAGA_BROKER_SECRET_KEY" not in log.read_text()
