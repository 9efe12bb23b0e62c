"""The fault schedule: seeded, every chosen kind at least once, inside the run's duration."""

from __future__ import annotations

import pytest

from chaos.faults import DEFAULT_KINDS, FAULT_KINDS, build_schedule, parse_kinds
from chaos.hostile import HOSTILE_KINDS, PENDING_KINDS


def test_every_kind_is_scheduled_at_least_once_within_the_duration() -> None:
    schedule = build_schedule(seed=3, kinds=list(FAULT_KINDS), duration_s=60)
    assert {e.kind for e in schedule} == set(FAULT_KINDS)
    assert all(0 < e.at_s < 60 for e in schedule)
    assert [e.at_s for e in schedule] == sorted(e.at_s for e in schedule)


def test_the_same_seed_gives_the_same_schedule_and_another_seed_another() -> None:
    kinds = list(FAULT_KINDS)
    assert build_schedule(7, kinds, 90) == build_schedule(7, kinds, 90)
    assert build_schedule(7, kinds, 90) != build_schedule(8, kinds, 90)


def test_a_longer_run_gets_more_faults() -> None:
    kinds = ["broker_5xx", "kill_listener"]
    short, long = build_schedule(1, kinds, 20), build_schedule(1, kinds, 300)
    assert len(short) == 3 and len(long) == 50


def test_parse_kinds() -> None:
    assert parse_kinds("all") == list(DEFAULT_KINDS)
    assert parse_kinds(None) == list(DEFAULT_KINDS)
    assert parse_kinds("none") == []
    assert parse_kinds("broker_5xx, kill_listener") == ["broker_5xx", "kill_listener"]
    with pytest.raises(ValueError, match="unknown fault kind"):
        parse_kinds("broker_5xx,meteor")


def test_all_means_every_kind_but_the_pending_ones_which_run_when_named() -> None:
    assert set(HOSTILE_KINDS) <= set(FAULT_KINDS)
    assert set(DEFAULT_KINDS) == set(FAULT_KINDS) - set(PENDING_KINDS)
    assert {"forged_signal", "poison_event", "caller_commission"} <= set(DEFAULT_KINDS)
    for kind in PENDING_KINDS:
        assert kind in FAULT_KINDS and parse_kinds(kind) == [kind]
