"""docker-compose.yml, the Dockerfile and deploy/: Docker cannot run here, so the file is checked as
data: every service the stack needs, pinned images, one project image, addresses that point at the
services and ports they name, settings that exist, and a start order that holds. Where
a compose is installed (``docker compose``, ``docker-compose``; .ci/run installs one) it also
renders the file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import redis.asyncio as aioredis
import yaml

from cli.main import cli
from core.keys import RedisKeys
from core.redisconn import acl_rules
from core.settings import Settings
from core.temporal import SEARCH_ATTRIBUTES
from tests.conftest import APP_REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"

INFRA = ("temporal-db", "temporal", "temporal-setup", "temporal-ui", "ledger-db", "redis")
PROJECT = (
    "migrate",
    "reconcile-schedule",
    "broker-sim",
    "marketdata",
    "worker-orders",
    "worker-broker",
    "broker-listener",
    "codec-server",
)
# Long-running project processes that poll Temporal or signal workflows.
TEMPORAL_APPS = ("worker-orders", "worker-broker", "broker-listener")
ONE_SHOTS = ("migrate", "temporal-setup", "reconcile-schedule")

_VAR = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|(:?\?)([^}]*))?\}")
# The variables compose refuses to start without (``${NAME:?message}``: passwords and secrets),
# with the values the tests render the file with (a .env in a deployment).
REQUIRED = {
    "LEDGER_DB_PASSWORD": "test-ledger-superuser-pw",
    "LEDGER_OWNER_DB_PASSWORD": "test-ledger-owner-pw",
    "LEDGER_APP_DB_PASSWORD": "test-ledger-app-pw",
    "TEMPORAL_DB_PASSWORD": "test-temporal-db-pw",
    "ORDERSAGA_BROKER_SECRET_KEY": "test-broker-secret",
    "ORDERSAGA_CODEC_KEYS": "test:" + "A" * 43 + "=",
    "ORDERSAGA_CODEC_SERVER_TOKEN": "test-codec-token",
    "REDIS_ADMIN_PASSWORD": "test-redis-admin-pw",
    "REDIS_APP_PASSWORD": "test-redis-app-pw",
}


def _resolve_one(m: re.Match[str]) -> str:
    name, default, required = m.group(1), m.group(3), m.group(4)
    if required:
        assert m.group(5).strip(), f"${{{name}:?}} needs a message saying what to set"
        assert name in REQUIRED, f"{name} is required by the file: add it to REQUIRED"
        return REQUIRED[name]
    return default or ""


def resolve(value: object) -> str:
    """The value compose would use with REQUIRED as the .env file: each ${NAME:-default} becomes
    its default, each ${NAME:?message} its value in REQUIRED."""
    return _VAR.sub(_resolve_one, str(value))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def service_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: resolve(v) for k, v in service.get("environment", {}).items()}


@pytest.fixture(scope="module")
def env(services: dict[str, Any]) -> dict[str, str]:
    """Every ORDERSAGA_* variable any project service gets, with its value (one per name)."""
    merged: dict[str, str] = {}
    for name in (*PROJECT, "ordersaga"):
        for var, value in service_env(services[name]).items():
            assert merged.setdefault(var, value) == value, f"{name}: {var} differs between services"
    return merged


def argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def container_ports(service: dict[str, Any]) -> dict[int, int]:
    """Published ports as {container port: host port}."""
    published = {}
    for spec in service.get("ports", []):
        *_, host, container = str(spec).split(":")
        published[int(container.split("/")[0])] = int(host)
    return published


def dependencies(service: dict[str, Any]) -> dict[str, str]:
    return {name: dep["condition"] for name, dep in service.get("depends_on", {}).items()}


def test_every_service_the_stack_needs_is_there(services: dict[str, Any]) -> None:
    missing = set(INFRA + PROJECT) - set(services)
    assert not missing, f"missing services: {sorted(missing)}"


def test_third_party_images_are_pinned(services: dict[str, Any]) -> None:
    expected_repos = {
        "temporal": "temporalio/auto-setup",
        "temporal-setup": "temporalio/admin-tools",
        "temporal-ui": "temporalio/ui",
        "temporal-db": "postgres",
        "ledger-db": "postgres",
        "redis": "redis",
    }
    for name, svc in services.items():
        image = svc["image"]
        repo, _, tag = image.split("@", 1)[0].rpartition(":")  # a digest may follow the tag
        assert repo and tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        assert "$" not in image, f"{name}: image {image!r} depends on the environment"
        if name in expected_repos:
            assert repo == expected_repos[name], f"{name}: {image}"
    # One Temporal release across the server and its tools.
    server_tag = services["temporal"]["image"].split("@", 1)[0].rpartition(":")[2]
    admin_tag = services["temporal-setup"]["image"].split("@", 1)[0].rpartition(":")[2]
    assert admin_tag.startswith(server_tag + "-")


def test_project_services_share_one_image_built_from_the_dockerfile(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    project_image = f"ordersaga:{version}"
    built = {name for name, svc in services.items() if "build" in svc}
    assert built == set(PROJECT) | {"ordersaga"}
    for name in built:
        svc = services[name]
        assert svc["image"] == project_image, name
        assert svc["build"] is compose["x-ordersaga-app"]["build"], name
        assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]) == DOCKERFILE
    assert project_image not in {services[n]["image"] for n in INFRA}


# Postgres roles: only the one-shot migrate service may connect as the owner or the admin.
PRIVILEGED_ENV = ("ORDERSAGA_DATABASE_OWNER_URL", "ORDERSAGA_DATABASE_ADMIN_URL")
# Who gets what (docs/DEPLOY.md, "Settings"): each project service exactly these variables.
CODEC_KEYS = {"ORDERSAGA_CODEC_KEYS"}
TEMPORAL_ENV = CODEC_KEYS | {
    "ORDERSAGA_TEMPORAL_ADDRESS",
    "ORDERSAGA_TEMPORAL_NAMESPACE",
    "ORDERSAGA_TEMPORAL_API_KEY",
    "ORDERSAGA_ORDERS_TASK_QUEUE",
    "ORDERSAGA_BROKER_TASK_QUEUE",
}
LEDGER_ENV = {"ORDERSAGA_DATABASE_URL"}
REDIS_ENV = {"ORDERSAGA_REDIS_URL", "ORDERSAGA_REDIS_PREFIX"}
BROKER_KEYS = {"ORDERSAGA_BROKER_KEY_ID", "ORDERSAGA_BROKER_SECRET_KEY"}
BROKER_ENV = BROKER_KEYS | {
    "ORDERSAGA_BROKER_URL",
    "ORDERSAGA_MARKET_DATA_URL",
    "ORDERSAGA_MARKET_DATA_FEED",
}
WORKER_ENV = {"ORDERSAGA_WORKER_GRACE_S"}
METRICS_ENV = {"ORDERSAGA_METRICS_HOST"}
SERVICE_ENV = {
    "migrate": LEDGER_ENV | set(PRIVILEGED_ENV),
    "reconcile-schedule": TEMPORAL_ENV,
    "broker-sim": BROKER_KEYS,
    "marketdata": REDIS_ENV | BROKER_ENV | METRICS_ENV | {"ORDERSAGA_MARKETDATA_SYMBOLS"},
    "worker-orders": TEMPORAL_ENV | LEDGER_ENV | REDIS_ENV | WORKER_ENV | METRICS_ENV,
    "worker-broker": TEMPORAL_ENV | BROKER_ENV | WORKER_ENV | METRICS_ENV,
    "broker-listener": TEMPORAL_ENV | REDIS_ENV | BROKER_ENV | METRICS_ENV,
    "codec-server": CODEC_KEYS
    | {"ORDERSAGA_CODEC_SERVER_TOKEN", "ORDERSAGA_CODEC_SERVER_CORS_ORIGIN"},
    "ordersaga": TEMPORAL_ENV | LEDGER_ENV | REDIS_ENV | {"ORDERSAGA_TEMPORAL_UI_URL"},
}


def test_each_service_gets_only_the_variables_it_needs(services: dict[str, Any]) -> None:
    assert set(SERVICE_ENV) == {*PROJECT, "ordersaga"}
    for name, expected in SERVICE_ENV.items():
        assert set(services[name].get("environment", {})) == expected, name


def who_gets(services: dict[str, Any], var: str) -> set[str]:
    return {n for n, s in services.items() if var in s.get("environment", {})}


def test_secrets_go_only_where_they_are_used(services: dict[str, Any]) -> None:
    # The ledger: never the simulator or the market-data feed; owner and admin: migrate only.
    ledger = who_gets(services, "ORDERSAGA_DATABASE_URL")
    assert not ledger & {"broker-sim", "marketdata", "codec-server", "worker-broker"}
    for var in PRIVILEGED_ENV:
        assert who_gets(services, var) == {"migrate"}, var
    # The broker's secret: the simulator (which accepts it) and the processes that call it.
    assert who_gets(services, "ORDERSAGA_BROKER_SECRET_KEY") == {
        "broker-sim", "marketdata", "worker-broker", "broker-listener",
    }  # fmt: skip
    assert who_gets(services, "ORDERSAGA_CODEC_SERVER_TOKEN") == {"codec-server"}
    # The codec's keys: every process that talks to Temporal, and the codec server.
    assert who_gets(services, "ORDERSAGA_CODEC_KEYS") == {
        "reconcile-schedule", "worker-orders", "worker-broker", "broker-listener", "ordersaga",
        "codec-server",
    }  # fmt: skip


def test_passwords_and_secrets_have_no_default(compose: dict[str, Any]) -> None:
    """Each is ``${NAME:?what to set}``: compose refuses to start without it, never falls back
    to a value anyone can read in this file."""
    text = COMPOSE_FILE.read_text()
    for name in REQUIRED:
        uses = re.findall(rf"\$\{{{name}(:?[-?])", text)
        assert uses and set(uses) == {":?"}, f"{name}: {uses}"
    secret_vars = {
        "ORDERSAGA_BROKER_SECRET_KEY", "ORDERSAGA_CODEC_KEYS", "ORDERSAGA_CODEC_SERVER_TOKEN",
    }  # fmt: skip
    for name, svc in compose["services"].items():
        for var, value in svc.get("environment", {}).items():
            if var in secret_vars or "PASSWORD" in var or "PWD" in var:
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", str(value)), f"{name}: {var}"
            if var.endswith("_URL") and "@" in str(value):  # a password inside a URL
                assert ":?" in str(value), f"{name}: {var}"


def test_the_codec_server_serves_the_web_ui(services: dict[str, Any]) -> None:
    codec, ui = services["codec-server"], services["temporal-ui"]
    args = argv(codec)
    assert args == ["codec-server", "--host", "0.0.0.0", "--port", "8234"]
    assert container_ports(codec) == {8234: 8234}
    assert codec["ports"] == ["127.0.0.1:8234:8234"]
    ui_env = service_env(ui)
    ui_origin = f"http://localhost:{container_ports(ui)[8080]}"
    assert service_env(codec)["ORDERSAGA_CODEC_SERVER_CORS_ORIGIN"] == ui_origin
    # The browser calls the endpoint: the published port, not the container's name.
    assert ui_env["TEMPORAL_CODEC_ENDPOINT"] == "http://localhost:8234"
    assert ui_env["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "true"
    assert "/healthz" in " ".join(codec["healthcheck"]["test"])


def test_migrate_creates_the_roles_and_runs_as_the_owner(
    env: dict[str, str], services: dict[str, Any]
) -> None:
    migrate = {k: resolve(v) for k, v in services["migrate"]["environment"].items()}
    assert argv(services["migrate"]) == ["db", "migrate", "--init-roles"]
    app = urlsplit(env["ORDERSAGA_DATABASE_URL"])
    owner = urlsplit(migrate["ORDERSAGA_DATABASE_OWNER_URL"])
    admin = urlsplit(migrate["ORDERSAGA_DATABASE_ADMIN_URL"])
    db = {k: resolve(v) for k, v in services["ledger-db"]["environment"].items()}
    assert len({app.username, owner.username, admin.username}) == 3
    assert (admin.username, admin.password) == (db["POSTGRES_USER"], db["POSTGRES_PASSWORD"])
    assert owner.password and app.password and owner.password != app.password
    for url in (owner, admin):
        assert (url.hostname, url.port) == ("ledger-db", 5432)
    assert owner.path == app.path


def test_every_ordersaga_variable_is_a_settings_field(services: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    seen = set()
    for name, svc in services.items():
        for var in svc.get("environment", {}):
            if var.startswith("ORDERSAGA_"):
                seen.add(var)
                field = var.removeprefix("ORDERSAGA_").lower()
                assert field in fields, f"{name}: {var} is not a field of Settings"
    assert "ORDERSAGA_TEMPORAL_ADDRESS" in seen


def test_each_service_env_parses_as_settings_and_passes_the_secrets_check(
    env: dict[str, str], services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in [v for v in os.environ if v.startswith("ORDERSAGA_")]:
        monkeypatch.delenv(var)
    for name in (*PROJECT, "ordersaga"):
        with monkeypatch.context() as m:
            for var, value in service_env(services[name]).items():
                m.setenv(var, value)
            settings = Settings()
            # Outside the dev stack: a broker-facing process starts only on a real secret.
            settings.check_secrets(
                broker="ORDERSAGA_BROKER_SECRET_KEY" in services[name]["environment"]
            )
            assert not settings.dev_stack, name
    monkeypatch.setenv("ORDERSAGA_TEMPORAL_ADDRESS", env["ORDERSAGA_TEMPORAL_ADDRESS"])
    monkeypatch.setenv("ORDERSAGA_WORKER_GRACE_S", env["ORDERSAGA_WORKER_GRACE_S"])
    settings = Settings()
    assert settings.temporal_address == env["ORDERSAGA_TEMPORAL_ADDRESS"]
    assert settings.worker_grace_s == float(env["ORDERSAGA_WORKER_GRACE_S"])
    assert settings.saga.commission_rate == Decimal("0.0025")  # untouched: its default


def test_temporal_address_points_at_the_temporal_service(
    env: dict[str, str], services: dict[str, Any]
) -> None:
    address = env["ORDERSAGA_TEMPORAL_ADDRESS"]
    host, port = address.rsplit(":", 1)
    assert host == "temporal"
    assert int(port) in container_ports(services["temporal"])
    assert resolve(services["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"]) == address
    assert resolve(services["temporal-setup"]["environment"]["TEMPORAL_ADDRESS"]) == address
    assert f"--address {address}" in " ".join(services["temporal"]["healthcheck"]["test"])
    namespace = env["ORDERSAGA_TEMPORAL_NAMESPACE"]
    assert services["temporal"]["environment"]["DEFAULT_NAMESPACE"] == namespace
    assert services["temporal-setup"]["environment"]["TEMPORAL_NAMESPACE"] == namespace
    assert services["temporal-ui"]["environment"]["TEMPORAL_DEFAULT_NAMESPACE"] == namespace


def test_temporal_persists_to_its_postgres(services: dict[str, Any]) -> None:
    temporal = {k: resolve(v) for k, v in services["temporal"]["environment"].items()}
    db = {k: resolve(v) for k, v in services["temporal-db"]["environment"].items()}
    assert temporal["DB"] == temporal["SQL_PLUGIN"] == "postgres12"
    assert temporal["POSTGRES_SEEDS"] == temporal["SQL_HOST"] == "temporal-db"
    assert temporal["DB_PORT"] == temporal["SQL_PORT"] == "5432"
    assert temporal["POSTGRES_USER"] == temporal["SQL_USER"] == db["POSTGRES_USER"]
    assert temporal["POSTGRES_PWD"] == temporal["SQL_PASSWORD"] == db["POSTGRES_PASSWORD"]
    assert "-p 5432" in services["temporal-db"]["healthcheck"]["test"][1]


def test_database_url_points_at_the_ledger_postgres(
    env: dict[str, str], services: dict[str, Any]
) -> None:
    url = urlsplit(env["ORDERSAGA_DATABASE_URL"])
    db = {k: resolve(v) for k, v in services["ledger-db"]["environment"].items()}
    assert (url.hostname, url.port) == ("ledger-db", 5432)
    assert url.username != db["POSTGRES_USER"]  # the application role, never the superuser
    assert url.password != db["POSTGRES_PASSWORD"]
    assert url.path.lstrip("/") == db["POSTGRES_DB"]


def test_redis_url_points_at_the_redis_service(
    env: dict[str, str], services: dict[str, Any]
) -> None:
    url = urlsplit(env["ORDERSAGA_REDIS_URL"])
    assert url.hostname == "redis"
    assert str(url.port) == option(argv(services["redis"]), "--port")
    assert str(url.port) in services["redis"]["healthcheck"]["test"]


def test_redis_has_a_password_and_the_applications_acl_user(
    env: dict[str, str], services: dict[str, Any]
) -> None:
    redis = services["redis"]
    args = [resolve(a) for a in argv(redis)]
    url = urlsplit(env["ORDERSAGA_REDIS_URL"])
    start = args.index("--user") + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
    user, rule = args[start], args[start + 1 : end]
    # the processes log in as the user the server defines at every start, with the rule
    # `ordersaga redis init-acl` sets (keys under the prefix, the project's commands only)
    assert (url.username, url.password) == (user, rule[2].removeprefix(">"))
    assert rule == acl_rules(env["ORDERSAGA_REDIS_PREFIX"], url.password or "")
    # the default user (the admin) has a password of its own, which the health check uses
    admin = option(args, "--requirepass")
    assert admin and admin != url.password
    assert resolve(redis["environment"]["REDISCLI_AUTH"]) == admin
    for name, svc in services.items():
        assert admin not in json.dumps(svc.get("environment", {})) or name == "redis", name


def test_broker_urls_point_at_the_simulator(env: dict[str, str], services: dict[str, Any]) -> None:
    args = argv(services["broker-sim"])
    for var in ("ORDERSAGA_BROKER_URL", "ORDERSAGA_MARKET_DATA_URL"):
        url = urlsplit(env[var])
        assert url.hostname == "broker-sim", var
        assert str(url.port) == option(args, "--port"), var
    assert option(args, "--host") == "0.0.0.0"  # reachable from the other containers
    assert option(args, "--state").startswith("/data/")
    assert any(str(v).endswith(":/data") for v in services["broker-sim"]["volumes"])
    health = " ".join(services["broker-sim"]["healthcheck"]["test"])
    assert f":{option(args, '--port')}/healthz" in health


def test_ui_url_is_the_published_ui_port(env: dict[str, str], services: dict[str, Any]) -> None:
    url = urlsplit(env["ORDERSAGA_TEMPORAL_UI_URL"])
    assert container_ports(services["temporal-ui"]) == {8080: url.port}


def test_commands_are_real_cli_commands(services: dict[str, Any]) -> None:
    ctx = click.Context(cli)
    for name in (*PROJECT, "ordersaga"):
        if "entrypoint" in services[name] or not argv(services[name]):
            continue
        args = argv(services[name])
        command: click.Command | None = cli
        while isinstance(command, click.Group) and args:
            command = command.get_command(ctx, args.pop(0))
        assert command is not None, f"{name}: not an ordersaga command: {argv(services[name])}"
        # Parsing checks every option and its type without running the command.
        command.make_context(name, args)
    assert argv(services["worker-orders"])[:3] == ["worker", "--queues", "orders"]
    assert argv(services["worker-broker"])[:3] == ["worker", "--queues", "broker"]
    assert argv(services["migrate"]) == ["db", "migrate", "--init-roles"]
    assert argv(services["marketdata"])[:1] == ["marketdata"]
    assert argv(services["broker-listener"])[:1] == ["broker-listener"]


# The long-running project services: each serves /metrics, /healthz and /readyz (core/telemetry.py).
SERVED = ("worker-orders", "worker-broker", "broker-listener", "marketdata")


def test_long_running_services_serve_metrics_and_are_healthy_when_ready(
    env: dict[str, str], services: dict[str, Any]
) -> None:
    # Reachable from a Prometheus on the compose network, never published on the host.
    assert env["ORDERSAGA_METRICS_HOST"] == "0.0.0.0"
    ports = {}
    for name in SERVED:
        svc = services[name]
        ports[name] = int(option(argv(svc), "--metrics-port"))
        assert "ports" not in svc, name
        # The health check asks /readyz on the service's own port: ready means Temporal, Postgres
        # and Redis answer as this process uses them; a broker outage does not make it unhealthy.
        test = svc["healthcheck"]["test"]
        assert test[:4] == ["CMD", "python", "/app/deploy/healthcheck.py", "http"], name
        assert test[4] == f"http://127.0.0.1:{ports[name]}/readyz", name
        assert svc["healthcheck"]["interval"] and svc["healthcheck"]["retries"], name
    assert len(set(ports.values())) == len(SERVED), ports  # each service its own port
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        f"{sd['names'][0]}:{sd['port']}"
        for job in scrape["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
    }
    assert targets == {f"{name}:{port}" for name, port in ports.items()}
    assert scrape["rule_files"] == ["alerts.yml"]


def test_start_order(services: dict[str, Any]) -> None:
    for name in TEMPORAL_APPS:
        deps = dependencies(services[name])
        assert deps.get("migrate") == "service_completed_successfully", name
        assert deps.get("temporal-setup") == "service_completed_successfully", name
        assert deps.get("temporal") == "service_healthy", name
        assert deps.get("redis") == "service_healthy", name
    for name in ("worker-broker", "broker-listener", "marketdata"):
        assert dependencies(services[name]).get("broker-sim") == "service_healthy", name
    assert dependencies(services["migrate"]) == {"ledger-db": "service_healthy"}
    assert dependencies(services["temporal"]) == {"temporal-db": "service_healthy"}
    assert dependencies(services["temporal-setup"]) == {"temporal": "service_healthy"}
    assert dependencies(services["reconcile-schedule"]).get("temporal") == "service_healthy"


def test_dependency_conditions_can_be_met(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for dep, condition in dependencies(svc).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s health"
            if condition == "service_completed_successfully":
                assert dep in ONE_SHOTS, f"{name} waits for {dep} to exit"
    for name in ONE_SHOTS:
        assert services[name]["restart"] == "no", f"one-shot {name} must not be restarted"


def test_start_order_has_no_cycle(services: dict[str, Any]) -> None:
    started: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(dependencies(s)) <= set(started)]
        assert ready, f"dependency cycle among {sorted(pending)}"
        for n in ready:
            started.append(n)
            del pending[n]
    assert started.index("temporal-db") < started.index("temporal")


def test_workers_can_scale_and_drain(env: dict[str, str], services: dict[str, Any]) -> None:
    for name in ("worker-orders", "worker-broker"):
        svc = services[name]
        # A fixed name or host port would stop `--scale` from starting a second container.
        assert "container_name" not in svc and "ports" not in svc, name
        grace = re.fullmatch(r"(\d+)s", svc["stop_grace_period"])
        assert grace is not None
        assert int(grace.group(1)) > float(env["ORDERSAGA_WORKER_GRACE_S"]), name


def test_search_attributes_are_registered_by_the_setup_one_shot(services: dict[str, Any]) -> None:
    setup = services["temporal-setup"]
    mounts = dict(str(v).rsplit(":", 1)[0].split(":", 1) for v in setup["volumes"])
    script_in_container = setup["entrypoint"][-1]
    script = ROOT / next(h for h, c in mounts.items() if c == script_in_container)
    text = script.read_text()
    assert re.search(r"^ATTRIBUTES=\"(.*)\"$", text, re.M).group(1).split() == list(  # type: ignore[union-attr]
        SEARCH_ATTRIBUTES
    )
    assert "--type Keyword" in text


def test_mounted_deploy_files_exist(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
    for name in (*PROJECT, "ordersaga"):
        for part in [
            *services[name].get("entrypoint", []),
            *services[name].get("healthcheck", {}).get("test", []),
        ]:
            if str(part).startswith("/app/"):
                assert (ROOT / str(part).removeprefix("/app/")).is_file(), f"{name}: {part}"


def test_dockerfile_builds_a_non_root_image_running_ordersaga() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    entry = json.loads(re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1))  # type: ignore[union-attr]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["ordersaga"] and "ordersaga" in scripts
    assert re.search(r"pip install (--\S+ )*\.(\s|$)", text, re.M)
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for needed in ("ordersaga", "workflows", "activities", "worker", "brokersim", "deploy"):
        assert needed not in ignored, needed


class _OverrideLoader(yaml.SafeLoader):
    """Reads Compose's !override / !reset tags as plain values."""


for _tag in ("!override", "!reset"):
    _OverrideLoader.add_constructor(
        _tag, lambda loader, node: loader.construct_mapping(node, deep=True)
    )


def test_real_broker_override_drops_only_the_simulator(services: dict[str, Any]) -> None:
    text = (ROOT / "deploy" / "compose.real-broker.yml").read_text()
    override = yaml.load(text, Loader=_OverrideLoader)["services"]
    assert override["broker-sim"]["profiles"], "the simulator must not start by default"
    waiting = {n for n, s in services.items() if "broker-sim" in dependencies(s)}
    assert waiting == set(override) - {"broker-sim"}
    for name in waiting:
        expected = {d: c for d, c in dependencies(services[name]).items() if d != "broker-sim"}
        assert dependencies(override[name]) == expected, name
    assert "-f deploy/compose.real-broker.yml" in text


def _docker_compose() -> list[str] | None:
    explicit = os.environ.get("ORDERSAGA_DOCKER_COMPOSE")
    if explicit:
        return shlex.split(explicit)
    docker = shutil.which("docker")
    if docker:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if plugin.returncode == 0:
            return [docker, "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def test_docker_compose_renders_the_file() -> None:
    command = _docker_compose()
    if command is None:
        pytest.skip(
            "no compose is installed (docker compose, docker-compose, or set"
            " ORDERSAGA_DOCKER_COMPOSE to one; .ci/run installs docker-compose)"
        )
    # Only what a .env would hold: the required variables, nothing else of ours.
    base = {k: v for k, v in os.environ.items() if k not in REQUIRED and "ORDERSAGA_" not in k}
    render = [*command, "-f", str(COMPOSE_FILE), "config", "-q"]

    def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(render, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)

    result = config({**base, **REQUIRED})
    assert result.returncode == 0, result.stderr
    # Without a secret, compose refuses with the line saying what to set.
    missing = config(
        {**base, **{k: v for k, v in REQUIRED.items() if k != "LEDGER_APP_DB_PASSWORD"}}
    )
    assert missing.returncode != 0
    assert "set LEDGER_APP_DB_PASSWORD" in missing.stderr, missing.stderr


def _load_healthcheck() -> Any:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", HEALTHCHECK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_marketdata_healthcheck_wants_fresh_quotes(
    redis_client: aioredis.Redis, redis_keys: RedisKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A prefix of its own: other tests' quote feeds write into the session's prefix.
    keys = RedisKeys(f"{redis_keys.prefix}healthcheck:")
    monkeypatch.setenv("ORDERSAGA_REDIS_URL", APP_REDIS_URL)
    monkeypatch.setenv("ORDERSAGA_REDIS_PREFIX", keys.prefix)
    monkeypatch.setenv("ORDERSAGA_MARKETDATA_SYMBOLS", "AAPL,MSFT")
    monkeypatch.setenv("ORDERSAGA_QUOTE_MAX_AGE_S", "10")
    healthcheck = _load_healthcheck()

    async def store(symbol: str, age_s: float) -> None:
        record = {"symbol": symbol, "received_at": time.time() - age_s}
        await redis_client.set(keys.quote(symbol), json.dumps(record))

    await store("AAPL", 0)
    assert healthcheck.main(["quotes"]) == 1  # MSFT has no quote yet
    await store("MSFT", 60)
    assert healthcheck.main(["quotes"]) == 1  # older than the saga would price with
    await store("MSFT", 1)
    assert healthcheck.main(["quotes"]) == 0


def test_http_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _load_healthcheck().main(["http", f"http://127.0.0.1:{port}/healthz"]) == 1
