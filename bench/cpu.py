"""Where the CPU went: CPU seconds per process group, read from /proc before and after a run.

On a small machine every process of the stack (the Temporal server, this process with its
workers, Postgres, Redis, the broker simulator) shares the same cores, so a benchmark that is
CPU-bound is explained by who spent the CPU. Linux only; elsewhere the figures are empty.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

Snapshot = dict[int, tuple[str, float]]


def _group(pid: int, comm: str, cmdline: str) -> str:
    if pid == os.getpid():
        return "bench process (workers, client)"
    if "brokersim" in cmdline:
        return "broker simulator"
    if comm.startswith("postgres"):
        return "postgres"
    if comm.startswith("redis"):
        return "redis"
    if "temporal" in cmdline and "server" in cmdline:
        return "temporal server"
    return "other"


def snapshot() -> Snapshot:
    """CPU seconds (user + system) so far of every process, with its group."""
    out: Snapshot = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # ended meanwhile
        comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
        fields = rest.split()
        cpu = (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
        out[int(entry.name)] = (_group(int(entry.name), comm, cmdline), cpu)
    return out


def spent(before: Snapshot, after: Snapshot) -> dict[str, float]:
    """CPU seconds per group between two snapshots (processes started in between count whole;
    processes that ended in between are missed, so runs keep their processes alive)."""
    groups: dict[str, float] = {}
    for pid, (group, cpu) in after.items():
        was = before.get(pid)
        groups[group] = groups.get(group, 0.0) + cpu - (was[1] if was else 0.0)
    return {g: round(v, 2) for g, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v >= 0.05}


class Meter:
    """Measures one run's load phase: ``start`` once set up, ``stop`` before tearing down (a
    process that ends inside the window, such as a pool's Postgres backend, is not counted)."""

    def __init__(self) -> None:
        self._before: Snapshot = {}
        self.spent: dict[str, float] = {}

    def start(self) -> None:
        self._before = snapshot()

    def stop(self) -> None:
        self.spent = spent(self._before, snapshot())
