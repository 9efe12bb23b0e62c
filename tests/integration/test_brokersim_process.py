"""The simulator as a process: both entry points print the ready line; SIGTERM ends it cleanly."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_brokersim_orders import order_body
from tests.support.brokersim import BrokerSim, brokersim  # noqa: F401

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-c", "from cli.main import main; main()", "broker-sim"]


@pytest.mark.asyncio(loop_scope="session")
async def test_sigterm_exits_cleanly_even_with_a_hung_request(brokersim) -> None:  # noqa: F811
    await brokersim.admin("PUT", "/admin/faults", {"hang_prob": 1.0})  # hang_ms: 10 minutes
    async with aiohttp.ClientSession(headers=brokersim.headers) as session:
        hung = asyncio.create_task(session.post(brokersim.url + "/v2/orders", json=order_body()))
        await brokersim.admin("GET", "/admin/health")
        await asyncio.sleep(0.2)  # let the POST reach the server
        assert brokersim.stop() == 0  # 0, not -SIGKILL: the helper only kills on a timeout
        with pytest.raises(aiohttp.ClientError):
            await hung


@pytest.mark.parametrize(
    "entry",
    [
        [sys.executable, "-m", "brokersim"],
        CLI,
    ],
    ids=["python-m-brokersim", "ordersaga-broker-sim"],
)
def test_entry_points_print_the_ready_line_and_stop_on_sigterm(
    entry: list[str], tmp_path: Path
) -> None:
    state = tmp_path / "sim.sqlite"
    proc = subprocess.Popen(
        [*entry, "--host", "127.0.0.1", "--port", "0", "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("broker-sim listening on http://127.0.0.1:"), line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert state.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_bad_fault_config_on_the_command_line_is_one_error_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "--port", "0", "--state", str(tmp_path / "s.sqlite"), "--faults", '{"nope": 1}'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["Error: nope: Extra inputs are not permitted"]


def test_helper_restart_keeps_url(tmp_path: Path) -> None:
    with BrokerSim.start(tmp_path / "s.sqlite") as sim:
        url = sim.url
        sim.restart()
        assert sim.url == url
