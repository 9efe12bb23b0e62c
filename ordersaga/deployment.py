"""The saga's Worker Deployment: which build new orders start on, and which builds still run
orders (``ordersaga deploy status | promote``). A thin layer over Temporal's deployment API;
docs/DEPLOY.md, "Rolling out a new build", says how a rollout goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from temporalio.api.deployment.v1 import WorkerDeploymentVersion as VersionProto
from temporalio.api.enums.v1 import (
    TaskQueueType,
    VersionDrainageStatus,
    WorkerDeploymentVersionStatus,
)
from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    DescribeWorkerDeploymentResponse,
    DescribeWorkerDeploymentVersionRequest,
    SetWorkerDeploymentCurrentVersionRequest,
    SetWorkerDeploymentRampingVersionRequest,
)
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from core.errors import UserError
from core.settings import Settings
from core.temporal import connect


@dataclass
class TaskQueueInfo:
    name: str
    kind: str  # "workflow" or "activity"
    backlog: int  # tasks waiting for this version's workers (approximate)


@dataclass
class VersionInfo:
    build_id: str
    status: str  # current, ramping, draining, drained, inactive, created
    drainage: str  # for a version no longer current or ramping: draining or drained; else ""
    created: datetime | None
    task_queues: list[TaskQueueInfo] = field(default_factory=list)


@dataclass
class DeploymentStatus:
    name: str
    current: str | None  # build id; None: unversioned workers get new work
    ramping: str | None
    ramp_percent: float
    versions: list[VersionInfo]

    def version(self, build_id: str) -> VersionInfo | None:
        return next((v for v in self.versions if v.build_id == build_id), None)


def _enum_word(name: str, prefix: str) -> str:
    word = name.removeprefix(prefix).lower()
    return "" if word == "unspecified" else word


def _status(value: int) -> str:
    name = WorkerDeploymentVersionStatus.Name(value)  # type: ignore[arg-type]
    return _enum_word(name, "WORKER_DEPLOYMENT_VERSION_STATUS_")


def _drainage(value: int) -> str:
    name = VersionDrainageStatus.Name(value)  # type: ignore[arg-type]
    return _enum_word(name, "VERSION_DRAINAGE_STATUS_")


async def connect_temporal(settings: Settings) -> Client:
    """The project's client, or a UserError of one line when the server cannot be reached."""
    try:
        return await connect(settings)
    except RuntimeError as exc:  # the SDK's "Failed client connect"
        raise UserError(
            f"cannot connect to Temporal at {settings.temporal_address}: {str(exc).splitlines()[0]}"
        ) from None


def _rpc_error(what: str, err: RPCError) -> UserError:
    return UserError(f"{what}: {err.status.name.lower()}: {err.message.splitlines()[0]}")


async def _describe(client: Client, name: str) -> DescribeWorkerDeploymentResponse:
    try:
        return await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=name)
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise UserError(
                f"no worker deployment {name!r}: no versioned worker of it has polled"
                " (start workers with ORDERSAGA_BUILD_ID set)"
            ) from None
        raise _rpc_error(f"describing deployment {name!r}", err) from None


async def _task_queues(client: Client, name: str, build_id: str) -> list[TaskQueueInfo]:
    try:
        described = await client.workflow_service.describe_worker_deployment_version(
            DescribeWorkerDeploymentVersionRequest(
                namespace=client.namespace,
                deployment_version=VersionProto(deployment_name=name, build_id=build_id),
                report_task_queue_stats=True,
            )
        )
    except RPCError as err:
        raise _rpc_error(f"describing version {name}.{build_id}", err) from None
    return [
        TaskQueueInfo(
            name=tq.name,
            kind=_enum_word(TaskQueueType.Name(tq.type), "TASK_QUEUE_TYPE_"),
            backlog=tq.stats.approximate_backlog_count,
        )
        for tq in described.version_task_queues
    ]


async def deployment_status(client: Client, name: str) -> DeploymentStatus:
    """The deployment's routing (current and ramping build) and every version it knows, newest
    first, with its drainage and task queues."""
    info = (await _describe(client, name)).worker_deployment_info
    routing = info.routing_config
    versions = []
    for summary in info.version_summaries:
        build = summary.deployment_version.build_id
        versions.append(
            VersionInfo(
                build_id=build,
                status=_status(summary.status),
                drainage=_drainage(summary.drainage_status),
                created=(
                    summary.create_time.ToDatetime(tzinfo=UTC)
                    if summary.HasField("create_time")
                    else None
                ),
                task_queues=await _task_queues(client, name, build),
            )
        )
    versions.sort(key=lambda v: v.created or datetime.min.replace(tzinfo=UTC), reverse=True)
    current = routing.current_deployment_version.build_id
    ramping = routing.ramping_deployment_version.build_id
    return DeploymentStatus(
        name=name,
        current=current or None,
        ramping=ramping or None,
        ramp_percent=routing.ramping_version_percentage if ramping else 0.0,
        versions=versions,
    )


def check_ramp(percent: float | None) -> None:
    if percent is not None and not 0 < percent < 100:
        raise UserError(
            f"--ramp must be above 0 and below 100, got {percent:g}"
            " (without --ramp the build becomes current)"
        )


async def promote(
    client: Client, name: str, build_id: str, ramp_percent: float | None = None
) -> DeploymentStatus:
    """Make ``build_id`` the deployment's current version (every new order starts on it), or with
    ``ramp_percent`` its ramping version (that share of new orders, picked by workflow id). The
    server refuses a build none of whose workers polls every task queue of the current one; a
    build it has never seen is refused here, naming the ones it knows."""
    check_ramp(ramp_percent)
    before = await deployment_status(client, name)
    if before.version(build_id) is None:
        known = ", ".join(v.build_id for v in before.versions) or "none"
        raise UserError(
            f"unknown build {build_id!r} in deployment {name!r} (known: {known});"
            " its workers must have polled before it can be promoted"
        )
    try:
        if ramp_percent is None:
            await client.workflow_service.set_worker_deployment_current_version(
                SetWorkerDeploymentCurrentVersionRequest(
                    namespace=client.namespace,
                    deployment_name=name,
                    build_id=build_id,
                    identity=client.identity,
                )
            )
        else:
            await client.workflow_service.set_worker_deployment_ramping_version(
                SetWorkerDeploymentRampingVersionRequest(
                    namespace=client.namespace,
                    deployment_name=name,
                    build_id=build_id,
                    percentage=ramp_percent,
                    identity=client.identity,
                )
            )
    except RPCError as err:
        raise _rpc_error(f"promoting {name}.{build_id}", err) from None
    return await deployment_status(client, name)
