"""The dev stack brought up fully embedded, on free ports, in a temporary state folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError
from temporalio.client import Client

from core.db import role_of
from core.keys import RedisKeys
from core.settings import Settings
from devstack.stack import (
    DevStack,
    StackOptions,
    StackPorts,
    free_port,
    load_stack_env,
    port_answers,
)
from tests.conftest import REDIS_URL, SERVER_DSN

pytestmark = [
    pytest.mark.asyncio(loop_scope="session"),
    pytest.mark.integration,
    pytest.mark.temporal,
]


def quiet(_: str) -> None:
    pass


@pytest_asyncio.fixture(loop_scope="session")
async def stack() -> AsyncIterator[DevStack]:
    # Not pytest's tmp_path: its root is mode 0700, which embedded Postgres' own user (postgres
    # refuses to run as root) could not traverse.
    state = Path(tempfile.mkdtemp(prefix="ordersaga-devstack-"))
    ports = StackPorts(
        postgres=free_port(), redis=free_port(), temporal=free_port(),
        temporal_ui=free_port(), temporal_metrics=free_port(), temporal_http=free_port(),
        broker=free_port(), codec=free_port(),
    )  # fmt: skip
    options = StackOptions(
        state_dir=state, ports=ports, force_embedded=True, apps=(),
        redis_persistent=False, health_timeout_s=30,
    )  # fmt: skip
    dev = DevStack(Settings(), options, echo=quiet)
    yield dev
    await dev.down()  # also when the test failed half way
    shutil.rmtree(state, ignore_errors=True)


def pids(rows: list) -> dict[str, int]:
    return {r.name: r.pid for r in rows if r.pid}


async def test_up_runs_embedded_services_and_down_stops_them(stack: DevStack) -> None:
    rows = await stack.up()
    assert {r.name: r.state for r in rows} == {
        "postgres": "running", "redis": "running", "temporal": "running",
    }  # fmt: skip
    env = load_stack_env(stack.state_dir)
    assert env == stack.env()

    client = await Client.connect(env["ORDERSAGA_TEMPORAL_ADDRESS"])
    assert await client.service_client.check_health()
    # Redis: the stack's ACL user, its password generated in a file only its owner reads
    url = urlsplit(env["ORDERSAGA_REDIS_URL"])
    assert url.username == stack.redis_user()[0] and url.username.startswith("ordersaga_dev_")
    assert url.password == (stack.state_dir / "redis.password").read_text().strip()
    assert (stack.state_dir / "redis.password").stat().st_mode & 0o777 == 0o600
    assert (stack.state_dir / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600
    r = aioredis.Redis.from_url(env["ORDERSAGA_REDIS_URL"], driver_info=None)
    assert await r.ping()
    assert await r.set(f"{env['ORDERSAGA_REDIS_PREFIX']}probe", 1)
    with pytest.raises(NoPermissionError):
        await r.flushall()
    with pytest.raises(NoPermissionError):
        await r.set("outside-the-prefix", 1)
    await r.aclose()
    conn = await asyncpg.connect(env["ORDERSAGA_DATABASE_URL"])
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") > 0
    # the processes' URL is the application role's, migrated by the owner
    assert await conn.fetchval("SELECT current_user") == "ordersaga_app"
    assert not await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    assert (
        await conn.fetchval(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class WHERE relname LIKE 'journal_%'"
        )
        == "ordersaga_owner"
    )
    await conn.close()
    assert role_of(env["ORDERSAGA_DATABASE_OWNER_URL"]) == "ordersaga_owner"

    # A second up starts nothing new.
    again = await stack.up()
    assert pids(again) == pids(rows)

    started = pids(rows)
    stopped = await stack.down()
    assert set(stopped) == set(started)
    for pid in started.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert await stack.status() == []
    assert not port_answers(stack.ports["temporal"])
    assert await stack.down() == []  # nothing left to stop

    # The machine's own services were never touched.
    conn = await asyncpg.connect(SERVER_DSN)
    await conn.close()
    machine = aioredis.Redis.from_url(REDIS_URL)
    assert await machine.ping()
    await machine.aclose()


async def test_kill_and_restart_one_service(stack: DevStack) -> None:
    await stack.up()
    old = stack.pid_of("redis")
    assert old is not None
    assert await stack.kill("redis", signal.SIGKILL)
    assert stack.pid_of("redis") is None
    assert not port_answers(stack.ports["redis"])
    assert {r.name: r.state for r in await stack.status()}["redis"] == "stopped"

    await stack.restart("redis")
    new = stack.pid_of("redis")
    assert new is not None and new != old
    # the restarted server read the ACL user from its config again
    r = aioredis.Redis.from_url(stack.env()["ORDERSAGA_REDIS_URL"], driver_info=None)
    assert await r.ping()
    with pytest.raises(NoPermissionError):
        await r.config_get("*")
    await r.aclose()


async def test_on_the_machines_redis_up_creates_the_stacks_acl_user_and_down_deletes_it(
    redis_keys: RedisKeys,
) -> None:
    state = Path(tempfile.mkdtemp(prefix="ordersaga-devstack-"))
    ports = StackPorts(
        postgres=free_port(), temporal=free_port(), temporal_ui=free_port(),
        temporal_metrics=free_port(), temporal_http=free_port(), broker=free_port(),
        codec=free_port(),
    )  # fmt: skip
    options = StackOptions(
        state_dir=state, ports=ports, force_embedded=frozenset({"postgres"}), apps=(),
        health_timeout_s=30,
    )  # fmt: skip
    prefix = f"{redis_keys.prefix}dev:"
    settings = Settings(redis_url=REDIS_URL, redis_admin_url=REDIS_URL, redis_prefix=prefix)
    dev = DevStack(settings, options, echo=quiet)
    admin = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        rows = await dev.up()
        assert {r.name: r.state for r in rows}["redis"] == "external"
        user, password = dev.redis_user()
        env = dev.env()
        assert urlsplit(env["ORDERSAGA_REDIS_URL"]).username == user
        assert env["ORDERSAGA_REDIS_PREFIX"] == prefix
        assert password not in json.dumps(await dev.status(), default=str)
        rule = await admin.execute_command("ACL", "GETUSER", user)
        assert f"~{prefix}*" in str(rule)
        r = aioredis.Redis.from_url(env["ORDERSAGA_REDIS_URL"], driver_info=None)
        assert await r.set(f"{prefix}probe", 1)
        with pytest.raises(NoPermissionError):
            await r.get("ordersaga:lock:a1")  # the machine's own stack's keys
        await r.aclose()
    finally:
        await dev.down()
        shutil.rmtree(state, ignore_errors=True)
    assert await admin.execute_command("ACL", "GETUSER", user) is None
    await admin.aclose()
