"""Connections to Redis, and the application's ACL user.

Every process connects through :func:`redis_client` (or :func:`sync_redis_client`), so TLS
options apply to every connection alike: a ``rediss://`` URL verifies the server against
``redis_tls_ca_file`` (the system's CAs when unset) and presents ``redis_tls_cert_file`` /
``redis_tls_key_file`` when the server asks for a client certificate.

The application's user travels in ``redis_url`` (``redis://user:password@host:port/0``). Its ACL
(:func:`acl_rules`) allows the keys under ``redis_prefix`` only, no channels, and only the commands
in :data:`APP_COMMANDS`: what the lock, the quote cache, the listener, the dead letters, the
health check and the chaos harness send, plus what redis-py sends on connect. Lua scripts run
with the caller's permissions and Redis checks each key a script touches against the pattern,
so the lock's scripts take every key in KEYS. ``ordersaga redis init-acl`` creates or updates
the user as the admin (``redis_admin_url``); docs/SECURITY.md.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis

from core.errors import UserError
from core.settings import Settings

# What the project sends as the application, by who sends it. Keep in step with the code: a
# command missing here fails with NOPERM under the ACL (tests/integration/test_redis_acl.py runs
# the lock, the quote cache, the listener and a saga as such a user).
APP_COMMANDS: tuple[str, ...] = (
    # redis-py on connect (with ``driver_info=None``: no CLIENT SETINFO); SELECT is added for a
    # database other than 0
    "auth",
    "ping",
    # the lock (activities/lock.py): its scripts, through EVALSHA and, after a restart, SCRIPT
    # LOAD; inside them GET, SET, PEXPIRE, DEL; holder() reads in a MULTI
    "evalsha",
    "eval",
    "script|load",
    "get",
    "set",
    "pexpire",
    "pttl",
    "del",
    "multi",
    "exec",
    "discard",
    # the quote cache and the deploy health check; the chaos harness's EXISTS
    "mget",
    "exists",
    # the listener's dead letters (feeds/deadletters.py) and the chaos harness's LLEN
    "lpush",
    "ltrim",
    "lrange",
    "lrem",
    "llen",
)

# Never granted, whatever APP_COMMANDS becomes (tests check both lists).
FORBIDDEN_COMMANDS: tuple[str, ...] = (
    "flushall",
    "flushdb",
    "keys",
    "scan",
    "config",
    "debug",
    "acl",
    "shutdown",
    "script|flush",
    "function",
    "module",
    "monitor",
    "save",
    "bgsave",
    "replicaof",
    "client|kill",
)

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def key_pattern(prefix: str) -> str:
    """The ACL key pattern for everything under ``prefix`` (its glob characters escaped)."""
    if not prefix:
        raise UserError("ORDERSAGA_REDIS_PREFIX: an empty prefix would give the ACL user every key")
    return "~" + _GLOB_SPECIAL.sub(r"\\\1", prefix) + "*"


def _db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def acl_rules(prefix: str, password: str, db: int = 0) -> list[str]:
    """The application user's ACL, as ``ACL SETUSER <user>`` arguments (or a ``user`` line)."""
    commands = [*APP_COMMANDS, *(["select"] if db else [])]
    return [
        "reset",
        "on",
        f">{password}",
        key_pattern(prefix),
        "resetchannels",
        "-@all",
        *(f"+{c}" for c in commands),
    ]


def url_user(url: str) -> tuple[str, str]:
    """The user and password a Redis URL carries (``("", "")`` when it has none)."""
    parts = urlsplit(url)
    return unquote(parts.username or ""), unquote(parts.password or "")


def app_acl_rules(settings: Settings) -> tuple[str, list[str]]:
    """The application user named in ``redis_url`` and its rules; a UserError of one line when
    the URL names no user to create (none, ``default``, or no password)."""
    user, password = url_user(settings.redis_url)
    if not user or user == "default":
        raise UserError(
            "ORDERSAGA_REDIS_URL names no application user"
            " (redis://USER:PASSWORD@host:port/0, a user other than 'default')"
        )
    if not password:
        raise UserError(f"ORDERSAGA_REDIS_URL: user {user!r} has no password")
    return user, acl_rules(settings.redis_prefix, password, _db(settings.redis_url))


def tls_options(settings: Settings, url: str) -> dict[str, Any]:
    """redis-py's TLS keywords for ``url`` (none for ``redis://``)."""
    files = {
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
    }
    if urlsplit(url).scheme != "rediss":
        named = [k for k, v in files.items() if v is not None]
        if named:
            raise UserError(
                "ORDERSAGA_REDIS_TLS_* is set but the Redis URL is not rediss:// (TLS):"
                f" {_safe(url)}"
            )
        return {}
    return {"ssl_cert_reqs": "required", **{k: str(v) for k, v in files.items() if v is not None}}


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + parts.netloc.rpartition("@")[2]).geturl()


def redis_client(settings: Settings, url: str | None = None, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` (default: the application's ``redis_url``) with the
    settings' TLS options. No CLIENT SETINFO on connect: the ACL user is not granted it."""
    url = url or settings.redis_url
    return aioredis.Redis.from_url(url, driver_info=None, **tls_options(settings, url), **kwargs)


def sync_redis_client(settings: Settings, url: str | None = None, **kwargs: Any) -> redis.Redis:
    """The blocking twin of :func:`redis_client` (the container health check)."""
    url = url or settings.redis_url
    return redis.Redis.from_url(url, driver_info=None, **tls_options(settings, url), **kwargs)


async def check_redis(client: aioredis.Redis, settings: Settings, what: str = "") -> None:
    """PING at process start: a wrong user or password, or a user without the commands, is a
    UserError of one line (the process refuses to start). An unreachable Redis is not: the
    processes ride out a Redis that is down, as before."""
    url = _safe(what or settings.redis_url)
    try:
        await client.ping()
    except redis.AuthenticationError as exc:  # WRONGPASS, NOAUTH
        raise UserError(f"redis: {url}: authentication refused: {exc}") from None
    except redis.exceptions.NoPermissionError as exc:  # NOPERM: a user without the commands
        raise UserError(f"redis: {url}: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return


async def init_acl(settings: Settings) -> str:
    """Create or update the application user of ``redis_url`` as the admin
    (``redis_admin_url``), then log in as it once. Idempotent: the rules start with ``reset``,
    so a second run leaves the same user (and a changed password or prefix replaces the old).
    Returns a one-line summary; failures are UserErrors of one line."""
    user, rules = app_acl_rules(settings)
    admin = redis_client(settings, settings.redis_admin_url, socket_timeout=5)
    try:
        await admin.execute_command("ACL", "SETUSER", user, *rules)
    except redis.RedisError as exc:
        raise UserError(
            f"redis: cannot create ACL user {user!r} as the admin"
            f" ({_safe(settings.redis_admin_url)}): {exc}"
        ) from None
    except OSError as exc:
        raise UserError(f"redis: {_safe(settings.redis_admin_url)}: {exc}") from None
    finally:
        await admin.aclose()
    app = redis_client(settings, socket_timeout=5)
    try:
        await app.ping()
    except (redis.RedisError, OSError) as exc:
        raise UserError(f"redis: {_safe(settings.redis_url)}: {exc}") from None
    finally:
        await app.aclose()
    granted = sum(rule.startswith("+") for rule in rules)
    return f"ACL user {user!r}: keys {key_pattern(settings.redis_prefix)}, {granted} commands"
