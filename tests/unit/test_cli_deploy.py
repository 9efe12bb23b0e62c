"""``ordersaga deploy``: arguments refused before connecting, an unreachable server in one line.
What it does against a server: tests/e2e/test_worker_versioning.py."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
from click.testing import CliRunner

import ordersaga.deployment as deployment
from cli.main import cli
from tests.unit.test_cli_input import ORDERSAGA, unused_port


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    def connect(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("connected before the arguments were checked")

    monkeypatch.setattr(deployment, "connect_temporal", connect)


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["deploy", "promote", "B", "--ramp", "0"], "--ramp must be above 0 and below 100, got 0"),
        (["deploy", "promote", "B", "--ramp", "100"], "got 100"),
        (["deploy", "promote", "B", "--ramp", "-5"], "got -5"),
        (["deploy", "promote", "B", "--ramp", "nan"], "got nan"),
        (["deploy", "promote", "a b"], "invalid build id"),
        (["deploy", "promote", "B\x00"], "control"),
        (["deploy", "status", "--deployment", "x\n"], "control"),
    ],
)
def test_bad_arguments_are_refused_before_connecting(args: list[str], says: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and says in lines[0], result.output


@pytest.mark.parametrize("args", [["status"], ["promote", "B"], ["promote", "B", "--ramp", "10"]])
def test_an_unreachable_server_is_one_line(args: list[str]) -> None:
    env = {**os.environ, "ORDERSAGA_TEMPORAL_ADDRESS": f"127.0.0.1:{unused_port()}"}
    done = subprocess.run(
        [ORDERSAGA, "deploy", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot connect to Temporal" in lines[0], done.stderr
