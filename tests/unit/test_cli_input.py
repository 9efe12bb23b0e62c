"""The CLI checks its arguments before it connects to anything: a refusal is one line and a
non-zero exit, also with the whole stack down (every address an unused port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import cli.commands.account as account_commands
from cli.main import cli
from ordersaga.client import OrderClient

ORDERSAGA = str(Path(sys.executable).with_name("ordersaga"))


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def stack_down(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    port = unused_port()
    env = {
        "ORDERSAGA_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/nothing",
        "ORDERSAGA_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "ORDERSAGA_REDIS_URL": f"redis://127.0.0.1:{port}/0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


@pytest.fixture
def no_connections(stack_down: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to connect fails the test: the refusals must come first."""

    def connect(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("connected before the arguments were checked")

    monkeypatch.setattr(OrderClient, "connect", connect)
    monkeypatch.setattr(account_commands, "ledger_pool", connect)


def refused(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


PLACE = ["order", "place", "--account", "alice", "--symbol", "AAPL", "--side", "buy"]


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([*PLACE, "--qty", "1e-1000030"], "decimals"),
        ([*PLACE, "--qty", "1e400"], "exceeds the maximum"),
        ([*PLACE, "--qty", "1", "--type", "limit", "--limit-price", "1.00001"], "decimals"),
        (
            [*PLACE, "--qty", "1000000", "--type", "limit", "--limit-price", "1000000"],
            "notional",
        ),
        ([*PLACE, "--qty", "1", "--order-id", "a/b"], "invalid id"),
        (
            [
                "order",
                "place",
                "--account",
                "al\x00ice",
                "--symbol",
                "AAPL",
                "--side",
                "buy",
                "--qty",
                "1",
            ],
            "control",
        ),
        (["order", "list", "--limit", "-1"], "from 1 to 1000"),
        (["order", "list", "--limit", "0"], "from 1 to 1000"),
        (["order", "list", "--limit", "1001"], "from 1 to 1000"),
        (["order", "list", "--status", "SETTLED\x00"], "control"),
        (["order", "list", "--status", "BOGUS"], "unknown status"),
        (["order", "list", "--account", "alice\n"], "control"),
        (["order", "list", "--symbol", "AA PL"], "invalid symbol"),
        (["order", "status", "--account", "alice", "o/1"], "invalid id"),
        (["order", "cancel", "--account", "a\x1b[2J", "o1"], "control"),
        (["order", "replace", "--account", "alice", "o1"], "give a new quantity"),
        (["order", "replace", "--account", "alice", "o1", "--qty", "-2"], "must be > 0"),
        (["order", "replace", "--account", "alice", "o1", "--qty", "1e400"], "maximum"),
        (["order", "replace", "--account", "alice", "o1", "--limit-price", "1.00001"], "decimals"),
        (["order", "replace", "--account", "alice", "o/1", "--qty", "2"], "invalid id"),
        (["order", "replace", "--account", "alice", "o1", "--qty", "2\x00"], "control"),
        (["account", "deposit", "alice", "1." + "0" * 30 + "1"], "decimals"),
        (["account", "deposit", "alice", "10", "--asset", "US D"], "unknown asset"),
        (["account", "withdraw", "alice", "1e-1000030"], "decimals"),
        (["account", "show", "al/ice"], "invalid id"),
        (["account", "open", "alice", "--currency", "USD\x00"], "control"),
        (["breaks", "show", "abc"], "invalid break id"),
        (["breaks", "show", "0"], "invalid break id"),
        (["breaks", "resolve", "7"], "--by is required"),
        (["breaks", "resolve", "7", "--by", " "], "--by is required"),
        (["breaks", "resolve", "7", "--by", "ops\x00"], "control"),
        (["breaks", "list", "--limit", "0"], "from 1 to 1000"),
    ],
)
def test_bad_arguments_are_refused_before_connecting(args: list[str], says: str) -> None:
    assert says in refused(*args)


def test_a_stack_that_is_down_is_one_line_not_a_traceback(stack_down: dict[str, str]) -> None:
    """Good arguments, nothing listening: one line and a non-zero exit, through the real entry
    point (a subprocess); bad arguments are refused as such, not as a connection failure."""
    env = {**os.environ, **stack_down}
    for args, says in (
        ([*PLACE, "--qty", "1"], "cannot connect"),
        ([*PLACE, "--qty", "1e-1000030"], "decimals"),
    ):
        done = subprocess.run(
            [ORDERSAGA, *args], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode != 0
        assert "Traceback" not in done.stderr, done.stderr
        assert done.stderr.strip().count("\n") == 0 and says in done.stderr, done.stderr


@pytest.mark.usefixtures("no_connections")
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["reconcile", "--bogus"], "No such option '--bogus'"),
        (["reconcile", "extra"], "unexpected extra argument (extra)"),
        ([*PLACE, "--qty", "1", "--side", "sideways"], "'sideways' is not one of 'buy', 'sell'"),
        ([*PLACE, "--qty", "1", "--type", "stop"], "'stop' is not one of 'market', 'limit'"),
        ([*PLACE], "Missing option '--qty'"),
    ],
)
def test_a_malformed_command_line_is_a_usage_error_before_connecting(
    args: list[str], says: str
) -> None:
    """Options the parser itself refuses: click's usage error (exit 2, the usage, then one
    'Error:' line naming the problem), and nothing connected."""
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and says in errors[0], result.output
