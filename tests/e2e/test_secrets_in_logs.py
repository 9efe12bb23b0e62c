"""No secret is ever printed or logged: ``ordersaga demo`` (the dev stack up, accounts, a mix of
orders) then ``dev status``, ``dev status --json`` and ``dev down``, all as real CLI processes
on ports and a state folder of their own, with a non-default broker secret, passwords in the
ledger's URLs, and the stack's own codec keys and codec server token. Then every log under the
state folder and everything the commands printed is searched for each secret; none may appear.
``stack.json`` legitimately holds them (the env the processes get): it must be its owner's only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.stack import CODEC_KEYS_FILE, CODEC_TOKEN_FILE, STACK_FILE, free_port, port_answers

pytestmark = [pytest.mark.integration, pytest.mark.temporal, pytest.mark.slow]

CLI = [sys.executable, "-m", "cli"]


def temporal_port() -> int:
    """A free port whose dev server neighbours (metrics +2000, HTTP +10) are free too."""
    while True:
        port = free_port()
        if port + 2000 < 65_536 and not any(port_answers(port + d) for d in (10, 2000)):
            return port


@pytest.fixture
def state() -> Iterator[Path]:
    # Not pytest's tmp_path: its root is mode 0700, which embedded Postgres' own user (postgres
    # refuses to run as root) could not traverse.
    folder = Path(tempfile.mkdtemp(prefix="ordersaga-secrets-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_demo_run_prints_and_logs_no_secret(state: Path) -> None:
    pg, redis = free_port(), free_port()
    passwords = {"app": secrets.token_hex(12), "owner": secrets.token_hex(12)}
    broker_secret = f"broker-{secrets.token_hex(12)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORDERSAGA_")}
    env.update(
        {
            "ORDERSAGA_STATE_DIR": str(state),
            # Nothing answers on these ports: the stack runs embedded Postgres and Redis there.
            "ORDERSAGA_DATABASE_URL": (
                f"postgresql://ordersaga_app:{passwords['app']}@127.0.0.1:{pg}/ordersaga"
            ),
            "ORDERSAGA_DATABASE_OWNER_URL": (
                f"postgresql://ordersaga_owner:{passwords['owner']}@127.0.0.1:{pg}/ordersaga"
            ),
            "ORDERSAGA_DATABASE_ADMIN_URL": f"postgresql://postgres@127.0.0.1:{pg}/postgres",
            "ORDERSAGA_REDIS_URL": f"redis://127.0.0.1:{redis}/0",
            "ORDERSAGA_TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port()}",
            "ORDERSAGA_TEMPORAL_UI_PORT": str(free_port()),
            "ORDERSAGA_BROKER_URL": f"http://127.0.0.1:{free_port()}",
            "ORDERSAGA_CODEC_SERVER_PORT": str(free_port()),
            "ORDERSAGA_BROKER_SECRET_KEY": broker_secret,
            "ORDERSAGA_MARKETDATA_INTERVAL_S": "0.2",
        }
    )
    printed: list[str] = []

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [*CLI, *args], capture_output=True, text=True, timeout=180, env=env, cwd=state
        )
        printed.append(f"$ ordersaga {' '.join(args)}\n{done.stdout}\n{done.stderr}")
        return done

    try:
        demo = cli("demo")
        assert demo.returncode == 0, printed[-1][-3000:]
        assert "ledger check: OK" in demo.stdout
        # The demo's issue-17 parts: an order paid in won (charged, refunded, the desk's
        # position), one refused for the account's limit, one QUEUED while the simulated market
        # was closed that filled once the demo opened it.
        out = demo.stdout
        assert "paid in KRW" in out and "REFUNDED_KRW" in out and "FX desk position:" in out, out
        assert "over the per-order maximum 1000.00 USD" in out, out[-3000:]
        assert "simulated market closed" in out and ": QUEUED until the open" in out
        assert "simulated market open" in out and ": SETTLED, 1 filled" in out, out[-3000:]
        for name in (STACK_FILE, CODEC_KEYS_FILE, CODEC_TOKEN_FILE):
            mode = stat.S_IMODE((state / name).stat().st_mode)
            assert mode == 0o600, f"{name}: {oct(mode)}"
        codec_keys = [
            entry.partition(":")[2]  # the key material; its id ("dev-1") is not a secret
            for entry in (state / CODEC_KEYS_FILE).read_text().split()
            if ":" in entry
        ]
        token = (state / CODEC_TOKEN_FILE).read_text().strip()
        status = cli("dev", "status")
        assert status.returncode == 0 and "worker" in status.stdout, printed[-1]
        as_json = cli("dev", "status", "--json")
        assert as_json.returncode == 0 and "ORDERSAGA_CODEC_SERVER_TOKEN" in as_json.stdout
        # the stack's env really held them (or the search below would prove nothing)
        stack = (state / STACK_FILE).read_text()
        assert token in stack and passwords["app"] in stack and passwords["owner"] in stack
    finally:
        down = cli("dev", "down")
    assert down.returncode == 0, printed[-1]

    found = {str(p.relative_to(state)): p.read_text(errors="replace") for p in state.rglob("*.log")}
    assert {"logs/worker.log", "logs/broker-sim.log", "logs/codec-server.log"} <= set(found)
    found["printed"] = "\n".join(printed)
    values = {
        "broker secret": broker_secret,
        "app password": passwords["app"],
        "owner password": passwords["owner"],
        "codec token": token,
        **{f"codec key {i}": key for i, key in enumerate(codec_keys)},
    }
    assert codec_keys and token
    leaks = [(what, where) for what, v in values.items() for where, t in found.items() if v in t]
    assert not leaks, leaks
