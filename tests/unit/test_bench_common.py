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
