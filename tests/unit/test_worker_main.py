"""The worker's composition root: what each worker runs and with which limits, and the workflow
modules' cached bytecode (so the sandbox need not compile them for every run)."""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from pydantic import ValidationError
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion

import worker.main as composition
from core.errors import UserError
from core.settings import Settings
from worker.main import WORKFLOWS, cache_workflow_bytecode, deployment_config


def specs(settings: Settings) -> dict[str, dict[str, Any]]:
    """The keyword arguments build_workers gives each Worker, by task queue."""
    made: dict[str, dict[str, Any]] = {}

    def record(_client: object, **kwargs: Any) -> None:
        made[kwargs["task_queue"]] = kwargs

    res = composition.Resources(settings, pool=mock.Mock(), redis=mock.Mock(), broker=mock.Mock())
    with mock.patch.object(composition, "Worker", record):
        composition.build_workers(mock.Mock(), res, ["orders", "broker"])
    return made


def test_each_queue_gets_its_own_work_and_limits() -> None:
    settings = Settings(
        orders_max_concurrent_activities=7,
        orders_max_concurrent_local_activities=9,
        broker_max_concurrent_activities=3,
    )
    made = specs(settings)
    orders, broker = made[settings.orders_task_queue], made[settings.broker_task_queue]
    assert orders["workflows"] == list(WORKFLOWS)
    assert (orders["max_concurrent_activities"], orders["max_concurrent_local_activities"]) == (
        7,
        9,
    )
    assert broker["max_concurrent_activities"] == 3
    assert "workflows" not in broker
    names = {a.__name__ for a in orders["activities"]}
    # the saga's local steps must be registered where its workflows run
    assert {"get_quote", "acquire_lock", "reserve_funds", "post_fill", "update_order"} <= names
    assert not names & {a.__name__ for a in broker["activities"]}
    assert {a.__name__ for a in broker["activities"]} >= {"submit_order", "cancel_order"}


def test_the_broker_queues_keep_the_brokers_rate_limit() -> None:
    settings = Settings()
    made = specs(settings)
    broker, asks = made[settings.broker_task_queue], made[settings.asks_task_queue]
    rates = [w["max_task_queue_activities_per_second"] for w in (broker, asks)]
    assert rates == [1.6, 1.6]
    assert sum(rates) < 200 / 60  # Alpaca's 200 a minute per key, both queues together
    orders = made[settings.orders_task_queue]
    assert orders.get("max_task_queue_activities_per_second") is None  # no broker calls there
    unlimited = Settings(
        broker_max_activities_per_second=0, broker_asks_max_activities_per_second=0
    )
    made = specs(unlimited)
    assert [
        made[q]["max_task_queue_activities_per_second"]
        for q in (unlimited.broker_task_queue, unlimited.asks_task_queue)
    ] == [composition.UNLIMITED_RATE] * 2


def test_bytecode_is_written_even_when_python_is_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.dont_write_bytecode", True)
    monkeypatch.setattr("sys.pycache_prefix", str(tmp_path))  # keep the checkout untouched
    cache_workflow_bytecode()
    sources = [inspect.getsourcefile(wf) for wf in WORKFLOWS]
    sources += [str(Path(s).parent / "saga_base.py") for s in sources if s]  # order.py's parts
    for source in sources:
        assert source is not None
        cached = Path(importlib.util.cache_from_source(source))
        assert cached.is_relative_to(tmp_path)
        assert cached.stat().st_size > 0
        # the loader accepts it: the header records the source's current mtime
        header = cached.read_bytes()[:16]
        assert int.from_bytes(header[8:12], "little") == int(os.stat(source).st_mtime) & 0xFFFFFFFF


def test_an_unwritable_cache_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setattr("sys.pycache_prefix", str(blocker / "cache"))
    cache_workflow_bytecode()  # nothing can be written there; nothing is raised
    assert blocker.is_file()


def test_the_orders_worker_passes_the_client_libraries_through_the_sandbox() -> None:
    made = specs(Settings())
    runner = made[Settings().orders_task_queue]["workflow_runner"]
    assert {"redis", "asyncpg", "aiohttp"} <= set(runner.restrictions.passthrough_modules)


def test_unversioned_by_default() -> None:
    made = specs(Settings())
    assert {spec["deployment_config"] for spec in made.values()} == {None}


def test_every_queue_of_a_build_is_one_version_and_its_workflows_are_pinned() -> None:
    settings = Settings(build_id="2026.11.29-a", deployment_name="saga")
    made = specs(settings)
    assert set(made) == {
        settings.orders_task_queue,
        settings.broker_task_queue,
        settings.asks_task_queue,
    }
    for spec in made.values():
        config = spec["deployment_config"]
        assert config.use_worker_versioning
        assert config.version == WorkerDeploymentVersion("saga", "2026.11.29-a")
        assert config.default_versioning_behavior == VersioningBehavior.PINNED


def test_versioning_required_without_a_build_id_is_one_line() -> None:
    with pytest.raises(UserError, match="ORDERSAGA_BUILD_ID is empty") as caught:
        deployment_config(Settings(worker_versioning=True))
    assert "\n" not in str(caught.value)
    assert deployment_config(Settings(worker_versioning=True, build_id="b1")) is not None


@pytest.mark.parametrize(
    ("field", "value"), [("deployment_name", "a.b"), ("deployment_name", ""), ("build_id", "a b")]
)
def test_names_the_server_would_misread_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError):
        Settings(**{field: value})
