"""What every benchmark needs: the machine, percentiles, a table, JSON and PNG output, and the
infrastructure (Temporal dev server, a fresh database, a Redis prefix, the broker simulator)
brought up on free ports and torn down afterwards.

Every script reports ratios measured side by side in one run; absolute times depend on the
machine and are printed only to show where a ratio comes from.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
import temporalio
from temporalio.testing import WorkflowEnvironment

from core.db import drop_database, ensure_database, migrate, with_database
from core.keys import RedisKeys
from tests.support.brokersim import BrokerSim
from tests.support.saga import start_dev_server

OUT_DIR = Path(__file__).resolve().parent / "out"
SERVER_DSN = os.environ.get(
    "ORDERSAGA_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("ORDERSAGA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ZERO_LATENCY_FILLS = {"mode": "instant", "parts": 1, "tick_ms": 20, "auto": True}


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "temporalio": temporalio.__version__,
        "platform": platform.platform(),
    }


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: every figure is a measured sample)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(seconds),
        "p50_ms": round(pct(seconds, 50) * 1000, 1),
        "p95_ms": round(pct(seconds, 95) * 1000, 1),
        "p99_ms": round(pct(seconds, 99) * 1000, 1),
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def print_header(name: str) -> dict[str, Any]:
    info = machine()
    print(f"== bench.{name} on {info['nproc']} cores, {info['cpu']} ==", flush=True)
    return info


def write_json(name: str, data: dict[str, Any], out_dir: Path = OUT_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def bar_chart(
    name: str,
    title: str,
    groups: dict[str, dict[str, float]],
    ylabel: str,
    out_dir: Path = OUT_DIR,
    log: bool = False,
) -> Path:
    """Grouped bars: ``groups[group][series] = value``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    series = list(dict.fromkeys(s for g in groups.values() for s in g))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    for i, s in enumerate(series):
        xs = [j + i * width for j in range(len(groups))]
        ys = [groups[g].get(s, 0) for g in groups]
        ax.bar(xs, ys, width, label=s)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def publish(
    name: str,
    data: dict[str, Any],
    title: str,
    groups: dict[str, dict[str, float]],
    ylabel: str,
    log: bool = False,
) -> dict[str, Any]:
    """Write a benchmark's results (``<name>.json``) and its chart (``<name>.png``), saying
    where; ``data`` back."""
    print(f"wrote {write_json(name, data)}")
    print(f"wrote {bar_chart(name, title, groups, ylabel, log=log)}")
    return data


@dataclass
class Infra:
    env: WorkflowEnvironment
    database_url: str
    keys: RedisKeys
    sim: BrokerSim
    state_dir: Path


@contextlib.asynccontextmanager
async def infra(
    *, with_sim: bool = True, fill_model: dict[str, Any] | None = None
) -> AsyncIterator[Infra]:
    """Dev server, fresh migrated database, unique Redis prefix, simulator; all removed after."""
    tag = uuid.uuid4().hex[:10]
    dsn = with_database(SERVER_DSN, f"ordersaga_bench_{tag}")
    keys = RedisKeys(prefix=f"ordersaga_bench_{tag}:")
    with tempfile.TemporaryDirectory(prefix="ordersaga-bench-") as tmp:
        state = Path(tmp)
        await ensure_database(dsn)
        sim: BrokerSim | None = None
        env: WorkflowEnvironment | None = None
        try:
            await migrate(dsn)
            if with_sim:
                sim = BrokerSim.start(
                    state / "broker.db", seed=11, fill_model=fill_model or ZERO_LATENCY_FILLS
                )
            env = await start_dev_server()
            yield Infra(env, dsn, keys, sim, state)  # type: ignore[arg-type]
        finally:
            if env is not None:
                await env.shutdown()
            if sim is not None:
                sim.stop()
            await drop_redis_prefix(keys)
            await drop_database(dsn)


@contextlib.asynccontextmanager
async def fresh_server(inf: Infra, server_args: Sequence[str] = ()) -> AsyncIterator[Infra]:
    """A new, empty dev server for one measured run, swapped into ``inf`` and removed after.

    The in-memory dev server keeps every workflow it ran, and its CPU per workflow grows with
    them (measured here: a 300-workflow floor run cost the server 65 ms per workflow on a fresh
    server and 108 ms after two earlier runs). Runs compared with each other each get their own.
    """
    env = await start_dev_server(extra_args=server_args)
    previous, inf.env = inf.env, env
    try:
        yield inf
    finally:
        inf.env = previous
        await env.shutdown()


async def drop_redis_prefix(keys: RedisKeys) -> None:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        found = [k async for k in client.scan_iter(match=keys.pattern(), count=500)]
        if found:
            await client.delete(*found)
    finally:
        await client.aclose()


def finish(code: int = 0) -> None:
    """Exit without the interpreter's teardown (the SDK can abort there: sdk-python#300)."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
