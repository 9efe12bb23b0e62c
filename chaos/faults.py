"""The fault schedule (seeded, so a run repeats) and the injector that plays it on a ChaosStack.

Faults run one at a time, in schedule order: a broker fault is a window (set on the simulator
through PUT /admin/faults, cleared after), a process fault is a SIGKILL followed by a restart,
a store fault is a restart or a sweep of pg_terminate_backend. Short lock TTLs are a window in
which new orders carry a lock TTL shorter than their reserve takes. Hostile faults (lies sent
through the parts an attacker reaches: forged signals, poison events, bad quotes, the caller's
settings, absurd numbers) are played by chaos/hostile.py. The drills (the market closed for a
window, trading halted for a window) are played by chaos/drills.py.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from chaos.drills import DRILL_KINDS, DRILL_WINDOWS, Drills
from chaos.hostile import HOSTILE_KINDS, PENDING_KINDS, Hostile
from chaos.stack import ChaosStack
from chaos.workload import SYMBOLS

LATE_LOST_MS = 45_000

# Simulator fault patches per broker fault kind; each is cleared again after its window.
BROKER_FAULTS: dict[str, dict[str, Any]] = {
    "broker_latency": {"latency_ms": 300, "jitter_ms": 400, "spike_prob": 0.3, "spike_ms": 3_000},
    "broker_hang": {"hang_prob": 0.3, "hang_ms": 6_000},
    "broker_5xx": {"error_5xx_prob": 0.4},
    "broker_drop_reply": {"drop_reply_prob": 0.4},
    # Answered after the client gave up, executed all the same: the saga finds it by id.
    "broker_late": {"late_prob": 0.4, "late_ms": 3_000},
    # Executed only after the saga gave the order up (past its absent grace): a late broker
    # order the reconciler must find, cancel and book to the firm error account.
    "broker_late_lost": {"late_prob": 1.0, "late_ms": LATE_LOST_MS},
    "event_drop": {"event_drop_prob": 0.6},
    "event_dup": {"event_dup_prob": 0.6},
}
# Windows of a fixed length: a lost order needs every submit attempt late, so the window must
# outlast the submit's schedule-to-close (12 s on a chaos stack).
FIXED_WINDOWS = {"broker_late_lost": 14.0, **DRILL_WINDOWS}
CLEAR: dict[str, Any] = {
    "latency_ms": 0,
    "jitter_ms": 0,
    "spike_prob": 0,
    "hang_prob": 0,
    "error_5xx_prob": 0,
    "drop_reply_prob": 0,
    "late_prob": 0,
    "event_drop_prob": 0,
    "event_dup_prob": 0,
    "unreachable": False,
}
PROCESS_FAULTS = {
    "kill_worker_orders": "worker-orders",
    "kill_worker_broker": "worker-broker",
    "kill_listener": "broker-listener",
}
RESTART_FAULTS = {
    "restart_broker": "broker-sim",
    "restart_redis": "redis",
    "restart_postgres": "postgres",
}
OTHER_FAULTS = ("pg_terminate", "short_lock_ttl")
FAULT_KINDS: tuple[str, ...] = (
    *BROKER_FAULTS,
    *PROCESS_FAULTS,
    *RESTART_FAULTS,
    *OTHER_FAULTS,
    *HOSTILE_KINDS,
    *DRILL_KINDS,
)
# What ``all`` means: every kind but those waiting for a fix on another branch (PENDING_KINDS).
DEFAULT_KINDS: tuple[str, ...] = tuple(k for k in FAULT_KINDS if k not in PENDING_KINDS)


@dataclass(frozen=True)
class FaultEvent:
    at_s: float  # seconds after the run starts
    kind: str
    window_s: float  # how long a window fault lasts, or how long a killed process stays down


def parse_kinds(text: str | None) -> list[str]:
    """``all`` (or nothing) means :data:`DEFAULT_KINDS`; else a comma list of
    :data:`FAULT_KINDS` (pending kinds run only when named)."""
    if not text or text.strip() == "all":
        return list(DEFAULT_KINDS)
    if text.strip() == "none":
        return []
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}; known: {FAULT_KINDS}")
    return kinds


def build_schedule(seed: int, kinds: list[str], duration_s: float) -> list[FaultEvent]:
    """Every kind at least once, in a seeded order, spread over the run; more when time allows."""
    rng = random.Random(seed)
    if not kinds:
        return []
    slots = max(len(kinds), int(duration_s // 6))
    chosen = list(kinds) + [rng.choice(kinds) for _ in range(slots - len(kinds))]
    rng.shuffle(chosen)
    if "broker_late_lost" in chosen:
        # First, so its requests (held 45 s) execute while the run still goes on.
        chosen.remove("broker_late_lost")
        chosen.insert(0, "broker_late_lost")
    step = duration_s / (len(chosen) + 1)
    return [
        FaultEvent(
            at_s=round(step * (i + 0.5) + rng.uniform(0, step / 2), 2),
            kind=kind,
            window_s=FIXED_WINDOWS.get(kind, round(rng.uniform(1.5, 4.0), 2)),
        )
        for i, kind in enumerate(chosen)
    ]


@dataclass
class FaultLog:
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


class Injector:
    """Plays a schedule against the stack; ``short_lock_ttl`` flips ``lock_ttl_short`` and runs
    ``short_ttl`` for its window; hostile kinds go to ``hostile``."""

    def __init__(
        self,
        stack: ChaosStack,
        session: aiohttp.ClientSession,
        broker_url: str,
        hostile: Hostile | None = None,
        short_ttl: Callable[[float], Awaitable[None]] | None = None,
        drills: Drills | None = None,
    ) -> None:
        self.stack = stack
        self.hostile = hostile
        self.drills = drills  # the market-closed and trading-halt drills (chaos/drills.py)
        # What a short-lock-TTL window does for its length (shorten the locks, a burst of orders)
        self.short_ttl = short_ttl
        self.session = session
        self.broker_url = broker_url
        self.log = FaultLog()
        self.lock_ttl_short = False
        self.late_until = 0.0  # monotonic time by which every late request has executed

    async def play(self, schedule: list[FaultEvent], started: float, stop: asyncio.Event) -> None:
        for event in schedule:
            delay = event.at_s - (time.monotonic() - started)
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    return
                except TimeoutError:
                    pass
            await self.inject(event)

    async def inject(self, event: FaultEvent) -> None:
        try:
            await self._do(event)
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            self.log.failures.append(f"{event.kind} at {event.at_s}s: {exc!r}")
            await self.heal()
            return
        self.log.counts[event.kind] += 1
        self.log.lines.append(f"{event.at_s:7.1f}s {event.kind} ({event.window_s}s)")

    async def _do(self, event: FaultEvent) -> None:
        kind, window = event.kind, event.window_s
        if kind in BROKER_FAULTS:
            await self._broker_faults(BROKER_FAULTS[kind])
            await asyncio.sleep(window)
            await self._broker_faults(CLEAR)
            late_ms = BROKER_FAULTS[kind].get("late_ms", 0)
            self.late_until = max(self.late_until, time.monotonic() + late_ms / 1000 + 2)
        elif kind in PROCESS_FAULTS:
            name = PROCESS_FAULTS[kind]
            await self.stack.kill(name, signal.SIGKILL)
            await asyncio.sleep(window)
            await self._retrying(lambda: self.stack.restart(name))
        elif kind in RESTART_FAULTS:
            if kind == "restart_broker":
                # A restart would drop the requests the broker still holds late, unexecuted.
                await asyncio.sleep(max(0.0, self.late_until - time.monotonic()))
            await self._retrying(lambda: self.stack.restart(RESTART_FAULTS[kind]))
        elif kind == "pg_terminate":
            await self.stack.terminate_pg_backends()
        elif kind in HOSTILE_KINDS:
            if self.hostile is None:
                raise RuntimeError("no hostile injector for a hostile fault")
            await self.hostile.inject(kind, window)
        elif kind in DRILL_KINDS:
            if self.drills is None:
                raise RuntimeError("no drills for a drill kind")
            await self.drills.inject(kind, window)
        elif kind == "short_lock_ttl":
            self.lock_ttl_short = True
            try:
                await (self.short_ttl(window) if self.short_ttl else asyncio.sleep(window))
            finally:
                self.lock_ttl_short = False

    async def _broker_faults(self, patch: dict[str, Any]) -> None:
        async with self.session.put(f"{self.broker_url}/admin/faults", json=patch) as resp:
            resp.raise_for_status()

    @staticmethod
    async def _retrying(action: Callable[[], Awaitable[None]], attempts: int = 3) -> None:
        for attempt in range(attempts):
            try:
                await action()
                return
            except Exception:
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(1)

    async def heal(self) -> None:
        """Every process running, no broker fault, normal lock TTLs: the state checks run in."""
        self.lock_ttl_short = False
        for name in self.stack._known_names():
            if self.stack.pid_of(name) is None:
                await self._retrying(lambda n=name: self.stack.restart(n))  # type: ignore[misc]
        await self._retrying(lambda: self._broker_faults(CLEAR))
        clear_quotes = dict.fromkeys(SYMBOLS)  # a quote fault cut short leaves its override
        await self._retrying(lambda: self._admin("PUT", "/admin/quote_overrides", clear_quotes))

    async def _admin(self, method: str, path: str, body: object) -> None:
        async with self.session.request(method, self.broker_url + path, json=body) as resp:
            resp.raise_for_status()
