"""A rollout under worker versioning (issue 15, part 6), on a dev server and the real workers:
build A runs with orders resting at the broker; build B's workers start and B is promoted (a 10%
ramp, then current) with the CLI; new orders run on B. Once everything fills, every order has
settled and the histories show who ran what: the day orders placed on A finished on A (every
WorkflowTaskCompleted event carries deployment version A, also those after the promotion), the
gtc order moved onto B at a continue-as-new, the new orders ran on B alone, and ``deploy status``
shows B current and A drained, so A's workers may stop.

The test starts a dev server of its own: the drainage check runs every 3 minutes by default; here
every second (``matching.wv.VersionDrainageStatus*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import VersioningBehavior
from temporalio.client import Client, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.ledger import check_ledger
from core.codec import CodecKeys
from core.errors import UserError
from core.keys import RedisKeys
from core.settings import Settings
from core.statuses import OrderStatus
from core.temporal import converter_for
from ordersaga.deployment import DeploymentStatus, deployment_status, promote
from tests.support.brokersim import StartSim, brokersim_factory  # noqa: F401
from tests.support.e2e import Stack, e2e_stack
from tests.support.saga import SEARCH_ATTRIBUTES, TEST_CODEC_KEYS, temporal_binary
from tests.support.workerproc import workers_running
from worker.main import WORKFLOWS

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

ORDERSAGA = str(Path(sys.executable).with_name("ordersaga"))
T = TypeVar("T")


@pytest_asyncio.fixture(loop_scope="session")
async def versioning_server() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        data_converter=converter_for(CodecKeys.parse(TEST_CODEC_KEYS)),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_existing_path=temporal_binary(),
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--dynamic-config-value",
            'matching.wv.VersionDrainageStatusRefreshInterval="1s"',
            "--dynamic-config-value",
            'matching.wv.VersionDrainageStatusVisibilityGracePeriod="1s"',
        ],
    )
    yield env
    await env.shutdown()


async def until(what: str, probe: Callable[[], Awaitable[T | None]], timeout_s: float = 30) -> T:
    """Ask ``probe`` every 0.2 s until it answers something other than None (a UserError counts
    as not yet)."""
    last: object = None
    for _ in range(int(timeout_s / 0.2)):
        try:
            got = await probe()
        except UserError as exc:
            got, last = None, exc
        if got is not None:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s (last: {last})")


async def run_deploy(
    env: WorkflowEnvironment, settings: Settings, *args: str
) -> tuple[int, str, str]:
    """``ordersaga deploy ARGS`` as an operator runs it: exit status, output, errors."""
    proc = await asyncio.create_subprocess_exec(
        ORDERSAGA,
        "deploy",
        *args,
        env={
            **os.environ,
            "ORDERSAGA_TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
            "ORDERSAGA_DEPLOYMENT_NAME": settings.deployment_name,
        },
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def deploy_cli(env: WorkflowEnvironment, settings: Settings, *args: str) -> Any:
    """``ordersaga deploy ARGS --json``; its JSON."""
    code, out, err = await run_deploy(env, settings, *args, "--json")
    assert code == 0, err
    return json.loads(out)


async def polled_by_all_queues(client: Client, settings: Settings, build: str) -> DeploymentStatus:
    """Once the build's workers have polled its three task queues, the deployment's status."""

    async def probe() -> DeploymentStatus | None:
        status = await deployment_status(client, settings.deployment_name)
        version = status.version(build)
        queues = {tq.name for tq in version.task_queues} if version else set()
        wanted = {settings.orders_task_queue, settings.broker_task_queue, settings.asks_task_queue}
        return status if wanted <= queues else None

    return await until(f"build {build} polling", probe)


async def histories(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """The history of each run of the workflow, first to last (following continue-as-new)."""
    found: list[WorkflowHistory] = []
    run_id: str | None = (await client.get_workflow_handle(workflow_id).describe()).run_id
    while run_id:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        found.insert(0, history)
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id or None
    return found


async def runs_of(client: Client, workflow_id: str) -> list[list[tuple[str, int, datetime]]]:
    """Each run of the workflow, first to last: (build id, versioning behaviour, time) of every
    WorkflowTaskCompleted event, read from the event's ``deployment_version.build_id`` and
    ``versioning_behavior``."""
    return [
        [
            (
                e.workflow_task_completed_event_attributes.deployment_version.build_id,
                e.workflow_task_completed_event_attributes.versioning_behavior,
                e.event_time.ToDatetime(tzinfo=UTC),
            )
            for e in history.events
            if e.HasField("workflow_task_completed_event_attributes")
        ]
        for history in await histories(client, workflow_id)
    ]


async def replays_its_move(client: Client, workflow_id: str) -> None:
    """The gtc order's first run, which continued as new because a newer build was the target,
    replays without a nondeterminism error: the flag it decided on is read from its history."""
    first = (await histories(client, workflow_id))[0]
    assert any(
        e.workflow_task_started_event_attributes.target_worker_deployment_version_changed
        for e in first.events
        if e.HasField("workflow_task_started_event_attributes")
    )
    replayer = Replayer(workflows=list(WORKFLOWS), data_converter=client.data_converter)
    result = await replayer.replay_workflow(first, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


async def resting(stack: Stack, account: str, order_id: str) -> None:
    async def probe() -> bool | None:
        state = await stack.orders.get_order(account, order_id)
        return True if state.broker_order_id else None

    await until(f"order {order_id} at the broker", probe)


async def test_in_flight_orders_finish_on_their_build_while_new_ones_run_on_the_next(
    versioning_server: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    client = versioning_server.client
    sim = brokersim_factory(fill_model={"mode": "instant", "parts": 1, "auto": False})
    name = f"ordersaga-{uuid.uuid4().hex[:6]}"
    versioned = {"deployment_name": name, "build_id": "A"}
    saga = {"fill_poll_max_interval_s": 2.0}
    async with (
        e2e_stack(client, redis_keys, sim, "versions", saga=saga, **versioned) as stack,
        contextlib.AsyncExitStack() as builds,
    ):  # fmt: skip
        oc, settings_a = stack.orders, stack.settings
        settings_b = settings_a.model_copy(update={"build_id": "B"})
        limit = await stack.price("1.1")

        # Build A: its workers poll, it becomes current, orders start on it and rest at the broker.
        build_a = contextlib.AsyncExitStack()
        await build_a.enter_async_context(workers_running(client, settings_a))
        builds.push_async_callback(build_a.aclose)
        await polled_by_all_queues(client, settings_a, "A")
        await until("A current", lambda: promote(client, name, "A"))
        old: list[tuple[str, str]] = []
        for tif in ("day", "day", "gtc"):
            acct = await stack.funded_account()
            placed = await oc.place_order(
                account_id=acct, symbol="AAPL", side="buy", qty="1", order_type="limit",
                limit_price=limit, time_in_force=tif,
            )  # fmt: skip
            assert placed.accepted, placed
            old.append((acct, placed.order_id))
        for acct, order_id in old:
            await resting(stack, acct, order_id)

        # Build B: its workers start; the operator ramps it, then makes it current.
        await builds.enter_async_context(workers_running(client, settings_b))
        await polled_by_all_queues(client, settings_a, "B")
        code, _, err = await run_deploy(versioning_server, settings_a, "promote", "C")
        assert code != 0 and err.strip().count("\n") == 0, err
        assert "unknown build 'C'" in err and "known: B, A" in err, err
        ramped = await deploy_cli(versioning_server, settings_a, "promote", "B", "--ramp", "10")
        assert (ramped["current"], ramped["ramping"], ramped["ramp_percent"]) == ("A", "B", 10)
        promoted_at = datetime.now(UTC)
        shown = await deploy_cli(versioning_server, settings_a, "promote", "B")
        assert (shown["current"], shown["ramping"]) == ("B", None), shown

        new: list[tuple[str, str]] = []
        for _ in range(2):
            acct = await stack.funded_account()
            placed = await oc.place_order(stack.limit_buy(acct, limit))
            assert placed.accepted, placed
            new.append((acct, placed.order_id))
        for acct, order_id in new:
            await resting(stack, acct, order_id)
        gtc_id = f"order/{old[2][0]}/{old[2][1]}"

        async def gtc_moved() -> bool | None:
            runs = await runs_of(client, gtc_id)
            return True if len(runs) > 1 and runs[-1] and runs[-1][0][0] == "B" else None

        await until("the gtc order on B", gtc_moved)

        # Everything fills at the broker; every order settles.
        await sim.admin("POST", "/admin/tick")
        for acct, order_id in old + new:
            final = await oc.wait(acct, order_id, timeout_s=60)
            assert final.status == OrderStatus.SETTLED, (order_id, final.status, final.reason)
            bal = await oc.balance(acct)
            assert bal.of("AAPL").available == 1 and bal.of("USD").held == 0, bal
        assert (await check_ledger(stack.pool)).ok

        pinned = VersioningBehavior.VERSIONING_BEHAVIOR_PINNED
        for acct, order_id in old[:2]:  # the day orders: one run, every task on A
            [run] = await runs_of(client, f"order/{acct}/{order_id}")
            assert {(build, behaviour) for build, behaviour, _ in run} == {("A", pinned)}, run
            assert any(at > promoted_at for _, _, at in run), "no task after the promotion"
        first, *_, last = await runs_of(client, gtc_id)
        await replays_its_move(client, gtc_id)
        assert {build for build, _, _ in first} == {"A"}, first
        assert {build for build, _, _ in last} == {"B"}, last
        final = await oc.get_order(*old[2])
        notes = [e.event for e in final.timeline]
        assert "continued as new (moving onto the current build); fills carried over" in notes
        for acct, order_id in new:
            runs = await runs_of(client, f"order/{acct}/{order_id}")
            assert {build for run in runs for build, _, _ in run} == {"B"}, runs

        # Nothing runs on A any more: the server says it is drained, and its workers may stop.
        async def a_drained() -> Any:
            status = await deploy_cli(versioning_server, settings_a, "status")
            [a] = [v for v in status["versions"] if v["build_id"] == "A"]
            return status if a["drainage"] == "drained" else None

        status = await until("A drained", a_drained)
        assert status["current"] == "B", status
        code, out, err = await run_deploy(versioning_server, settings_a, "status")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0] == f"deployment {name}: current B; ramping none", out
        assert [line.split()[:3] for line in lines[2:]] == [
            ["B", "current", "-"],
            ["A", "drained", "drained"],
        ], out
        await build_a.aclose()
