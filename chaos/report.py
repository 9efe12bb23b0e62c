"""The chaos run's report (text for people, JSON for machines) and its progress line."""

from __future__ import annotations

import sys
from typing import TextIO

from pydantic import BaseModel, Field

from chaos.invariants import InvariantResult


class ChaosReport(BaseModel):
    seed: int
    orders: int
    accounts: int
    duration_s: float
    fault_kinds: list[str]
    ok: bool = False
    orders_by_status: dict[str, int] = Field(default_factory=dict)
    faults_by_kind: dict[str, int] = Field(default_factory=dict)
    fault_failures: list[str] = Field(default_factory=list)
    fault_timeline: list[str] = Field(default_factory=list)
    # What the hostile faults did (signals sent, dead letters, refusals), and hostile input that
    # got through where it must be refused (each one a violation).
    hostile: dict[str, int] = Field(default_factory=dict)
    hostile_findings: list[str] = Field(default_factory=list)
    # The market-closed and trading-halt drills: what they did, and what did not happen as it
    # must (each one a violation).
    drills: dict[str, int] = Field(default_factory=dict)
    drill_findings: list[str] = Field(default_factory=list)
    won_orders_by_status: dict[str, int] = Field(default_factory=dict)
    # Per asset (USD, KRW, each symbol): the balances by owner kind, as decimal text.
    currencies: dict[str, dict[str, str]] = Field(default_factory=dict)
    fx_desk: dict[str, str] = Field(default_factory=dict)
    invariants: list[InvariantResult] = Field(default_factory=list)
    client: dict[str, int] = Field(default_factory=dict)
    client_errors: list[str] = Field(default_factory=list)
    broker_orders: int = 0
    late_orders: int = 0
    # Orders whose reserve was refused for a stale fence and that locked again (short_lock_ttl).
    stale_fence_relocks: int = 0
    refused_reasons: dict[str, int] = Field(default_factory=dict)  # refused at once, why
    reconcile: dict[str, int] = Field(default_factory=dict)
    placing_s: float = 0.0
    settling_s: float = 0.0
    total_s: float = 0.0
    throughput_orders_per_s: float = 0.0
    error: str | None = None

    def violations(self) -> list[str]:
        out = [f"{r.name}: {v}" for r in self.invariants for v in r.violations]
        out += [f"fault not injected: {f}" for f in self.fault_failures]
        out += [f"hostile input got through: {f}" for f in self.hostile_findings]
        out += [f"drill: {f}" for f in self.drill_findings]
        if self.error:
            out.append(self.error)
        return out

    def render(self) -> str:
        lines = [
            f"chaos run: seed {self.seed}, {self.orders} orders, {self.accounts} accounts,"
            f" {self.duration_s:.0f} s of faults",
            "",
            "orders by status: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.orders_by_status.items())),
            "client: " + ", ".join(f"{k} {v}" for k, v in sorted(self.client.items())),
            f"stale-fence re-locks: {self.stale_fence_relocks}",
            "refused at once: "
            + (", ".join(f"{k} {v}" for k, v in self.refused_reasons.items()) or "none"),
            f"broker orders: {self.broker_orders} (late: {self.late_orders});"
            " reconcile: " + ", ".join(f"{k} {v}" for k, v in sorted(self.reconcile.items())),
            "faults injected: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.faults_by_kind.items())),
            "hostile: " + ", ".join(f"{k} {v}" for k, v in sorted(self.hostile.items())),
            "drills: " + ", ".join(f"{k} {v}" for k, v in sorted(self.drills.items())),
            "won orders by status: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.won_orders_by_status.items())),
            "FX desk: " + ", ".join(f"{k} {v}" for k, v in self.fx_desk.items()),
            "",
            "per currency (balances by owner kind; each sums to 0):",
            *(
                f"  {asset:<5} " + ", ".join(f"{k} {v}" for k, v in kinds.items())
                for asset, kinds in self.currencies.items()
            ),
            "",
            "invariants:",
        ]
        for r in self.invariants:
            mark = "ok  " if r.ok else "FAIL"
            lines.append(f"  {mark} {r.name} ({r.checked} checked)")
            lines += [f"         {v}" for v in r.violations[:20]]
            if len(r.violations) > 20:
                lines.append(f"         ... {len(r.violations) - 20} more")
        lines += [f"  fault not injected: {f}" for f in self.fault_failures]
        lines += [f"  hostile input got through: {f}" for f in self.hostile_findings[:20]]
        lines += [f"  drill: {f}" for f in self.drill_findings[:20]]
        lines += [f"  client error: {e}" for e in self.client_errors[:20]]
        if self.error:
            lines.append(f"  error: {self.error}")
        lines += [
            "",
            f"throughput: {self.throughput_orders_per_s:.1f} orders/s placed;"
            f" placing {self.placing_s:.1f} s, settling {self.settling_s:.1f} s,"
            f" total {self.total_s:.1f} s",
            "result: "
            + ("OK, no violations" if self.ok else f"{len(self.violations())} VIOLATION(S)"),
        ]
        return "\n".join(lines)


class Progress:
    """One updating line: a bar of orders placed, then of orders terminal."""

    def __init__(self, out: TextIO | None = None, width: int = 30) -> None:
        self.out = out or sys.stderr
        self.width = width
        self.tty = self.out.isatty()
        self._last = ""

    def show(self, label: str, done: int, total: int, extra: str = "") -> None:
        filled = self.width * done // max(1, total)
        line = f"{label:<9} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} {extra}"
        if line == self._last:
            return
        self._last = line
        # A terminal gets one updating line; a log file gets a line per update.
        self.out.write(("\r" + line.ljust(100)) if self.tty else line + "\n")
        self.out.flush()

    def end(self) -> None:
        if self.tty:
            self.out.write("\n")
            self.out.flush()
        self._last = ""
