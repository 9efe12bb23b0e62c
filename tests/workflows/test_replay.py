"""Recorded OrderWorkflow histories replay without non-determinism errors.

The histories in tests/histories/ come from real runs (tests/chaos/record_histories.py): a cancel,
partial fills, unknown submit outcomes reconciled with the broker, submit retries, an expiry, a
refusal. A workflow change that would break a running order fails here. Re-record only for an
intended change that running workflows can never meet (or one guarded by workflow.patched).

Each set was recorded by the code of its time, and orders started then must still finish on
today's code, so every set replays:
- tests/histories/: today's (every patch: local steps, the worker's settings, the trust
  boundary), with two more paths: a forged signal checked with the broker, a parked order resumed;
- tests/histories/local-steps/: before the worker owned the saga's settings and before the trust
  boundary (``WORKER_SETTINGS_PATCH``, ``TRUST_BOUNDARY_PATCH``);
- tests/histories/ordinary-steps/: before the quote, lock, ledger and orders-table steps became
  local activities (``LOCAL_STEPS_PATCH``).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from core.codec import CodecKeys
from core.temporal import converter_for
from tests.support.saga import TEST_CODEC_KEYS
from workflows.order import (
    DECIDED_OR_REFUSED_PATCH,
    FX_LEG_PATCH,
    LOCAL_STEPS_PATCH,
    TRUST_BOUNDARY_PATCH,
    WORKER_SETTINGS_PATCH,
    OrderWorkflow,
)
from workflows.reconcile import IncrementalReconcileWorkflow, ReconcileWorkflow
from workflows.replace import REPLACE_PATCH
from workflows.saga_base import POLL_BACKOFF_PATCH

HISTORIES = Path(__file__).resolve().parent.parent / "histories"
LOCAL_STEPS = HISTORIES / "local-steps"
BEFORE_LOCAL_STEPS = HISTORIES / "ordinary-steps"
SETS = [HISTORIES, LOCAL_STEPS, BEFORE_LOCAL_STEPS]
SET_IDS = ["current", "local", "before"]
# The patches each set's runs took.
PATCHES = {
    HISTORIES: {LOCAL_STEPS_PATCH, WORKER_SETTINGS_PATCH, TRUST_BOUNDARY_PATCH},
    LOCAL_STEPS: {LOCAL_STEPS_PATCH},
    BEFORE_LOCAL_STEPS: set(),
}
# Patches a history took beyond its set's: the paths only some runs reach.
PATH_PATCHES = {
    "refused_account_busy": {DECIDED_OR_REFUSED_PATCH},
    "replaced_then_filled": {POLL_BACKOFF_PATCH, REPLACE_PATCH},
    "won_market_buy": {POLL_BACKOFF_PATCH, FX_LEG_PATCH},
}
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
    # The workers' converter, payload codec included: histories recorded before the codec (plain
    # payloads) replay through it unchanged.
    return Replayer(
        workflows=[OrderWorkflow, ReconcileWorkflow, IncrementalReconcileWorkflow],
        data_converter=converter_for(CodecKeys.parse(TEST_CODEC_KEYS)),
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
    # Replayed under the id it ran with: the saga refuses a request that is not its workflow's.
    started = data["events"][0]["workflowExecutionStartedEventAttributes"]
    return WorkflowHistory.from_json(started["workflowId"], data)


@pytest.mark.parametrize("directory", SETS, ids=SET_IDS)
def test_the_required_histories_are_recorded(directory: Path) -> None:
    assert REQUIRED <= {p.stem for p in directory.glob("*.json")}


def _patches(events: list[dict[str, Any]]) -> set[str]:
    found = set()
    for e in events:
        marker = e.get("markerRecordedEventAttributes", {})
        if marker.get("markerName") == "core_patch":
            payload = marker["details"]["patch-data"]["payloads"][0]["data"]
            found.add(json.loads(base64.b64decode(payload))["id"])
    return found


def _workflow_type(events: list[dict[str, Any]]) -> str:
    return str(events[0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"])


def test_the_reconciler_has_a_recorded_history() -> None:
    types = {_workflow_type(json.loads(p.read_text())["events"]) for p in HISTORIES.glob("*.json")}
    assert {"ReconcileWorkflow", "IncrementalReconcileWorkflow"} <= types


@pytest.mark.parametrize("directory", SETS, ids=SET_IDS)
def test_each_set_ran_its_steps_the_way_its_name_says(directory: Path) -> None:
    for path in directory.glob("*.json"):
        events = json.loads(path.read_text())["events"]
        if _workflow_type(events) != "OrderWorkflow":
            continue  # the reconciler: no patches, no order steps
        scheduled = {
            e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
            for e in events
            if "activityTaskScheduledEventAttributes" in e
        }
        took = PATCHES[directory] | PATH_PATCHES.get(path.stem, set())
        assert _patches(events) == took, path.name
        assert ("reserve_funds" in scheduled) == (directory == BEFORE_LOCAL_STEPS), path.name


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
