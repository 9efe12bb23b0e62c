"""Run the broker simulator as a real subprocess on a free port, with its own state file.

Usage in a test module::

    from tests.support.brokersim import BrokerSim, brokersim, brokersim_factory  # noqa: F401

    async def test_x(brokersim: BrokerSim) -> None:
        await brokersim.admin("PUT", "/admin/fill_model", {"auto": False})

``brokersim_factory`` starts as many simulators as a test needs (``factory(faults=..., seed=...)``)
and stops them all at teardown. ``brokersim_fixture(scope=..., **start_kwargs)`` builds a fixture
with another scope or start arguments. ``start``/``restart``/``stop`` are synchronous (they
block for well under a second), so they work in sync and async fixtures alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from core.settings import Settings

READY_PREFIX = "broker-sim listening on "
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0


class BrokerSimError(RuntimeError):
    """The simulator did not start (its log is in the message)."""


class BrokerSim:
    def __init__(
        self,
        state_path: Path,
        *,
        faults: dict[str, Any] | None = None,
        seed: int = 0,
        fill_model: dict[str, Any] | None = None,
        rate_limit: dict[str, Any] | None = None,
        market_hours: str | None = None,
        key_id: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        settings = Settings()
        self.state_path = Path(state_path)
        self.faults = faults
        self.seed = seed
        self.fill_model = fill_model
        self.rate_limit = rate_limit
        self.market_hours = market_hours
        self.key_id = key_id or settings.broker_key_id
        self.secret_key = secret_key or settings.broker_secret_key.get_secret_value()
        self.port = 0
        self.url = ""
        self.log_path = self.state_path.with_suffix(".log")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"APCA-API-KEY-ID": self.key_id, "APCA-API-SECRET-KEY": self.secret_key}

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @classmethod
    def start(
        cls,
        state_path: Path | str,
        faults: dict[str, Any] | None = None,
        seed: int = 0,
        fill_model: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> BrokerSim:
        sim = cls(Path(state_path), faults=faults, seed=seed, fill_model=fill_model, **kwargs)
        sim._launch()
        return sim

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", "brokersim", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--state", str(self.state_path), "--seed", str(self.seed)]
        cmd += ["--key-id", self.key_id, "--secret-key", self.secret_key]
        if self.faults:
            cmd += ["--faults", json.dumps(self.faults)]
        if self.fill_model:
            cmd += ["--fill-model", json.dumps(self.fill_model)]
        if self.rate_limit:
            cmd += ["--rate-limit", json.dumps(self.rate_limit)]
        if self.market_hours:
            cmd += ["--market-hours", self.market_hours]
        return cmd

    def _launch(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            start_offset = log.tell()
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self.url = self._wait_ready(start_offset)
        except BaseException:
            self._terminate()
            raise
        self.port = int(self.url.rsplit(":", 1)[1])

    def _wait_ready(self, offset: int) -> str:
        assert self._proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                for line in log.read().decode(errors="replace").splitlines():
                    if line.startswith(READY_PREFIX):
                        return line[len(READY_PREFIX) :].strip()
            if self._proc.poll() is not None:
                raise BrokerSimError(f"broker-sim exited {self._proc.returncode}: {self._log()}")
            time.sleep(0.02)
        raise BrokerSimError(f"broker-sim not ready after {START_TIMEOUT_S}s: {self._log()}")

    def _log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def _terminate(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after a few seconds); returns the exit status."""
        return self._terminate()

    def kill(self) -> None:
        """SIGKILL: a crash, without a clean shutdown (state must survive it too)."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            self._proc = None

    def restart(self, *, crash: bool = False) -> None:
        """Stop (or kill) and start again on the same port and state file."""
        if crash:
            self.kill()
        else:
            self.stop()
        self._launch()

    async def request(
        self, method: str, path: str, json_body: object = None, *, timeout_s: float = 10.0
    ) -> tuple[int, Any]:
        """One authenticated request; returns (status, parsed JSON or None)."""
        client_timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(headers=self.headers, timeout=client_timeout) as session,
            session.request(method, self.url + path, json=json_body) as resp,
        ):
            text = await resp.text()
            return resp.status, (json.loads(text) if text else None)

    async def admin(self, method: str, path: str, json_body: object = None) -> Any:
        """An admin call that must succeed; returns its JSON."""
        status, body = await self.request(method, path, json_body)
        if status >= 300:
            raise AssertionError(f"{method} {path} -> {status} {body}")
        return body

    async def held_drained(self, held: str, timeout_s: float = 30.0) -> None:
        """Wait until no trading request is held by the ``held`` fault ("hung" or "late"): the
        held request has run its course. Not a sleep that passes by default."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = await self.admin("GET", "/admin/requests")
            if counts[held] == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"trading requests still {held}: {counts}")
            await asyncio.sleep(0.02)

    def __enter__(self) -> BrokerSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


StartSim = Callable[..., BrokerSim]


def _factory(base: Path) -> Iterator[StartSim]:
    started: list[BrokerSim] = []

    def start(**kwargs: Any) -> BrokerSim:
        state = kwargs.pop("state_path", base / f"brokersim-{len(started)}.sqlite")
        sim = BrokerSim.start(state, **kwargs)
        started.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in started:
            sim.stop()


@pytest.fixture
def brokersim_factory(tmp_path: Path) -> Iterator[StartSim]:
    """Start simulators: ``factory(faults=..., seed=..., fill_model=...)``; all stopped after."""
    yield from _factory(tmp_path)


@pytest.fixture
def brokersim(tmp_path: Path) -> Iterator[BrokerSim]:
    """A fresh simulator (its own port and state file) for one test."""
    for start in _factory(tmp_path):
        yield start()


def brokersim_fixture(scope: str = "function", **start_kwargs: Any) -> Any:
    """Build a BrokerSim fixture with the given scope and start arguments."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload, misc]
    def _sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerSim]:
        base = tmp_path_factory.mktemp("brokersim")
        for start in _factory(base):
            yield start(**start_kwargs)

    return _sim
