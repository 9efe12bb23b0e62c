"""Recorded OrderWorkflow histories replay without non-determinism errors.

The histories in tests/histories/ come from real runs (tests/chaos/record_histories.py): a cancel,
partial fills, unknown submit outcomes reconciled with the broker, submit retries, an expiry, a
refusal. A workflow change that would break a running order fails here. Re-record only for an
intended change that running workflows can never meet (or one guarded by workflow.patched).

tests/histories/ordinary-steps/ holds the same paths recorded before the quote, lock, ledger and
orders-table steps became local activities (``LOCAL_STEPS_PATCH``): orders started then must
still finish on today's code, so both sets replay.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from workflows.order import OrderWorkflow
from workflows.reconcile import ReconcileWorkflow

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
BEFORE_LOCAL_STEPS = HISTORIES / "ordinary-steps"
RECORDED = sorted(HISTORIES.rglob("*.json"))
# The paths a change is most likely to break; each must keep a recorded history.
REQUIRED = {
    "cancel_resting_limit",
    "partial_fills_buy",
    "unknown_outcome_found_late",
    "unknown_outcome_never_arrived",
    "submit_retries_after_5xx",
}


def _replayer() -> Replayer:
    return Replayer(
        workflows=[OrderWorkflow, ReconcileWorkflow], data_converter=pydantic_data_converter
    )


def _history(path: Path, tamper: bool = False) -> WorkflowHistory:
    data = json.loads(path.read_text())
    if tamper:
        scheduled = next(
            e["activityTaskScheduledEventAttributes"]
            for e in data["events"]
            if "activityTaskScheduledEventAttributes" in e
        )
        scheduled["activityType"]["name"] = "renamed_activity"
    return WorkflowHistory.from_json(path.stem, data)


@pytest.mark.parametrize("directory", [HISTORIES, BEFORE_LOCAL_STEPS], ids=["local", "before"])
def test_the_required_histories_are_recorded(directory: Path) -> None:
    assert REQUIRED <= {p.stem for p in directory.glob("*.json")}


@pytest.mark.parametrize("directory", [HISTORIES, BEFORE_LOCAL_STEPS], ids=["local", "before"])
def test_each_set_ran_its_steps_the_way_its_name_says(directory: Path) -> None:
    for path in directory.glob("*.json"):
        events = json.loads(path.read_text())["events"]
        markers = {
            e["markerRecordedEventAttributes"]["markerName"]
            for e in events
            if "markerRecordedEventAttributes" in e
        }
        scheduled = {
            e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
            for e in events
            if "activityTaskScheduledEventAttributes" in e
        }
        if directory == HISTORIES:
            assert {"core_patch", "core_local_activity"} <= markers, path.name
            assert "reserve_funds" not in scheduled, path.name
        else:
            assert not markers, path.name
            assert "reserve_funds" in scheduled, path.name


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(
    "path", RECORDED, ids=[str(p.relative_to(HISTORIES).with_suffix("")) for p in RECORDED]
)
async def test_history_replays_deterministically(path: Path) -> None:
    history = _history(path)
    result = await _replayer().replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


@pytest.mark.asyncio(loop_scope="session")
async def test_a_changed_workflow_fails_replay() -> None:
    """The check can fail: a history whose first activity is renamed no longer replays."""
    history = _history(HISTORIES / "partial_fills_buy.json", tamper=True)
    result = await _replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
