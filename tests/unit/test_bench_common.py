"""The benchmarks' shared helpers: percentiles, ratios, tables and charts."""

from __future__ import annotations

from pathlib import Path

from bench.common import bar_chart, machine, pct, ratio, summary_ms, table


def test_percentiles_are_measured_samples_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert pct(values, 50) == 50.0
    assert pct(values, 99) == 99.0
    assert pct(values, 100) == 100.0
    assert pct([3.0, 1.0, 2.0], 50) == 2.0


def test_summary_reports_milliseconds() -> None:
    s = summary_ms([0.010, 0.020, 0.030, 0.040])
    assert s == {"n": 4, "p50_ms": 20.0, "p95_ms": 40.0, "p99_ms": 40.0}


def test_ratio_of_zero_is_not_a_number() -> None:
    assert ratio(3, 2) == 1.5
    assert ratio(1, 0) != ratio(1, 0)  # NaN, never a division error


def test_table_aligns_columns_under_a_rule() -> None:
    lines = table(["name", "n"], [["saga", 1.5], ["floor", 12]]).splitlines()
    assert lines == [
        " name      n",
        "-----  -----",
        " saga  1.500",
        "floor     12",
    ]


def test_chart_is_a_png(tmp_path: Path) -> None:
    path = bar_chart("t", "title", {"a": {"x": 1.0, "y": 2.0}, "b": {"x": 3.0}}, "n", tmp_path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_machine_names_cores_and_cpu() -> None:
    info = machine()
    assert isinstance(info["nproc"], int) and info["nproc"] >= 1
    assert info["cpu"]


def test_cpu_spent_groups_processes_and_counts_new_ones_whole() -> None:
    from bench.cpu import spent

    before = {1: ("postgres", 1.0), 2: ("postgres", 2.0), 3: ("temporal server", 5.0)}
    after = {1: ("postgres", 1.5), 2: ("postgres", 2.25), 3: ("temporal server", 9.0)}
    after[4] = ("postgres", 0.5)  # a backend started during the run
    assert spent(before, after) == {"temporal server": 4.0, "postgres": 1.25}


def test_cpu_snapshot_sees_this_process() -> None:
    from bench.cpu import snapshot

    mine = [group for group, _ in snapshot().values() if group.startswith("bench process")]
    assert mine == ["bench process (workers, client)"]


def test_throughput_alternates_the_core_runs_and_tries_the_rest_once() -> None:
    from bench.throughput import FLOOR, MINIMAL, ORDINARY, SAGA, schedule

    order = schedule([SAGA, FLOOR, MINIMAL, ORDINARY, "tuned"], rounds=3)
    core = [SAGA, FLOOR, MINIMAL, ORDINARY]
    assert order == [*core, "tuned", *core[::-1], *core]


def test_throughput_takes_each_kinds_best_round() -> None:
    from bench.throughput import combine

    rounds = [{"per_s": 9.0, "p50_ms": 3.0}, {"per_s": 11.0, "p50_ms": 2.0}]
    best = combine(rounds)
    assert best["per_s"] == 11.0 and best["p50_ms"] == 2.0
    assert best["rounds"] == [9.0, 11.0]
