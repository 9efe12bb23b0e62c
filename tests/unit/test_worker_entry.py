"""``python -m worker``: its own entry point, refusing bad arguments with one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker.main import parse_queues


def test_queues_parse() -> None:
    assert parse_queues("orders, broker") == ["orders", "broker"]
    with pytest.raises(ValueError, match="subset"):
        parse_queues("orders,ledger")
    with pytest.raises(ValueError):
        parse_queues(" , ")


def test_bad_queues_exit_2_with_one_line_and_no_traceback() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--queues", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_the_entry_point_does_not_go_through_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys, worker.__main__; print('cli' in sys.modules)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "False", done.stderr


def test_a_worker_with_a_negative_commission_does_not_start() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--queues", "orders"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ORDERSAGA_SAGA__COMMISSION_RATE": "-0.5"},
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ORDERSAGA_SAGA__COMMISSION_RATE" in lines[0], done.stderr


def test_a_versioned_worker_without_a_build_id_does_not_start() -> None:
    env = {**os.environ, "ORDERSAGA_WORKER_VERSIONING": "true"}
    env.pop("ORDERSAGA_BUILD_ID", None)
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--queues", "broker"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "ORDERSAGA_BUILD_ID" in lines[0], done.stderr
    assert "worker ready" not in done.stdout
