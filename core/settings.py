"""One settings class for every process; environment variables prefixed ``ORDERSAGA_``.

Defaults work on a developer's machine: the machine's Postgres and Redis on loopback, the
Temporal dev server on 7233, the broker simulator on 8787.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.codec import CodecKeyError, CodecKeys
from core.errors import UserError
from core.risk import RiskLimits

DEFAULT_STATE_DIR = Path(".state")
# The broker simulator's keys on a developer's machine. Only a process that runs under the dev
# stack (ORDERSAGA_DEV_STACK) may start on them: anywhere else they are a forgotten setting.
DEV_BROKER_KEY_ID = "ordersaga-dev-key"
DEV_BROKER_SECRET_KEY = "ordersaga-dev-secret"
MASK = "***"
ORDERS_TASK_QUEUE = "orders"
BROKER_TASK_QUEUE = "broker"


class SagaSettings(BaseModel):
    """The order saga's knobs, ``ORDERSAGA_SAGA__<NAME>`` in the environment.

    The orders worker owns them: each order reads its worker's (``SagaConfig``) once, through a
    local activity recorded in its history, so workflow code never reads the environment and no
    caller can tune what an order costs. Each has its only default here, and a range: a worker
    whose settings are out of range does not start.
    """

    commission_rate: Decimal = Field(Decimal("0.0025"), ge=0, le=Decimal("0.05"))
    commission_minimum: Decimal = Field(Decimal("0.50"), ge=0, le=Decimal(100), decimal_places=2)
    # A market buy is held, and sent as a limit, at ask x (1 + buffer).
    market_buy_buffer: Decimal = Field(Decimal("0.05"), ge=0, le=Decimal("0.5"))
    lock_ttl_ms: int = Field(10_000, ge=100, le=600_000)
    # How long one acquire waits for a busy account lock (then it is retried).
    lock_wait_ms: int = Field(5_000, ge=0, le=600_000)
    # How long an order waits for its account's lock in all before it is refused, account busy:
    # the customer's answer is never held up for longer by other orders on the account.
    lock_wait_total_s: float = Field(30.0, gt=0, le=3_600)
    # With no broker report for this long, the saga asks the broker itself; each ask that brings
    # no news doubles the wait, up to the maximum, and any news (an event, a fill, a new status,
    # a cancel) brings it back. Alpaca allows 200 requests a minute per key: at a steady 5 s,
    # 16 resting orders would use them all.
    fill_poll_interval_s: float = Field(5.0, gt=0, le=86_400)
    fill_poll_max_interval_s: float = Field(300.0, gt=0, le=86_400)
    # The broker timing: per-attempt and total submit timeouts (also each broker question's), and
    # how long an order the broker does not know must stay absent before its hold is voided
    # (longer than any request can remain in flight: the client's timeout plus the broker's own
    # late-execution window). The total counts the submit's attempts, not time it waits in the
    # broker queue for a worker: it is spent as total // per-attempt attempts.
    submit_start_to_close_s: float = Field(15.0, gt=0, le=3_600)
    submit_schedule_to_close_s: float = Field(120.0, gt=0, le=86_400)
    absent_grace_s: float = Field(180.0, gt=0, le=30 * 86_400)
    # Past this many history events an order continues as new.
    max_history_events: int = Field(2_000, ge=20, le=40_000)
    # "enforce": an order accepted while the broker's market clock says closed waits, QUEUED and
    # cancelable, until the broker's next open before it is submitted, asking the broker's clock
    # again at least every market_recheck_s (the broker's clock is the authority: a simulator's
    # may run ahead of real time). "off": submitted at once at any hour (the broker holds it).
    market_hours: Literal["off", "enforce"] = "off"
    market_recheck_s: float = Field(1_800.0, gt=0, le=86_400)


class SagaConfig(SagaSettings):
    """What an order runs with: its worker's saga settings and task queues."""

    orders_task_queue: str = ORDERS_TASK_QUEUE
    broker_task_queue: str = BROKER_TASK_QUEUE
    # Where an order's questions to the broker (status lookups, polls) go; empty (as in configs
    # recorded before it existed): the broker queue.
    broker_asks_task_queue: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> SagaConfig:
        return cls(
            orders_task_queue=settings.orders_task_queue,
            broker_task_queue=settings.broker_task_queue,
            broker_asks_task_queue=settings.asks_task_queue,
            **settings.saga.model_dump(),
        )


# Flat names the saga's knobs had before they were nested; setting one now is refused, never
# silently ignored (a commission a deployer set must not quietly fall back to the default).
RENAMED = {
    **{name: f"saga__{name}" for name in SagaSettings.model_fields if name != "lock_wait_ms"},
    "lock_acquire_timeout_ms": "saga__lock_wait_ms",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ORDERSAGA_", env_nested_delimiter="__", extra="ignore"
    )

    # Stores. Postgres roles (docs/DEPLOY.md): every process connects as the application role
    # (DML only); `ordersaga db migrate` alone as the schema's owner, and with --init-roles first
    # as the admin (a role that may create roles and databases) to create both.
    database_url: str = "postgresql://ordersaga_app@127.0.0.1:5432/ordersaga"
    database_owner_url: str = "postgresql://ordersaga_owner@127.0.0.1:5432/ordersaga"
    database_admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "ordersaga:"
    # Redis' ACL user (core/redisconn.py, docs/SECURITY.md): the user and password travel in
    # redis_url; `ordersaga redis init-acl` creates the user as the admin of redis_admin_url.
    # rediss:// URLs verify the server with the CA file and may present a client certificate.
    redis_admin_url: str = "redis://127.0.0.1:6379/0"
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    db_pool_min: int = 1
    db_pool_max: int = 10

    # Temporal
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_api_key: SecretStr = SecretStr("")  # Temporal Cloud API key; setting it turns TLS on
    temporal_tls: bool = False
    temporal_ui_url: str = "http://127.0.0.1:8233"
    orders_task_queue: str = ORDERS_TASK_QUEUE
    broker_task_queue: str = BROKER_TASK_QUEUE
    # The broker questions' own queue, served by the broker workers beside the broker queue, so
    # polls never keep a submit or a cancel waiting for a slot. Empty: "<broker_task_queue>-asks".
    broker_asks_task_queue: str = ""
    # How long a worker may take over one workflow task before Temporal hands it to another: a
    # worker that dies mid-task (during an order's accept phase, say) delays its customer's answer
    # by this much. Temporal's default; set on the orders started from then on.
    workflow_task_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # The payload codec's keys (core/codec.py): "id:base64" entries, the newest first, from the
    # variable or a file (the file wins). Empty: payloads go to Temporal unencrypted.
    codec_keys: SecretStr = SecretStr("")
    codec_keys_file: Path | None = None
    # The codec server (`ordersaga codec-server`): the bearer token it requires, where it listens
    # and the Web UI origin it answers (CORS).
    codec_server_token: SecretStr = SecretStr("")
    codec_server_host: str = "127.0.0.1"
    codec_server_port: int = Field(default=8234, ge=1, le=65_535)
    codec_server_cors_origin: str = "http://127.0.0.1:8233"
    # Temporal over mTLS (a self-hosted cluster that authenticates clients by certificate): PEM
    # files. A certificate and its key are presented together; the CA verifies the server (the
    # system's roots without it); the server name is the one its certificate must carry when it
    # is not the address's host. Any of them turns TLS on.
    temporal_tls_cert_file: Path | None = None
    temporal_tls_key_file: Path | None = None
    temporal_tls_ca_file: Path | None = None
    temporal_tls_server_name: str = ""
    # Worker versioning (docs/DEPLOY.md, "Rolling out a new build"): the workers of one build
    # (orders and broker queues alike) are one version, <deployment_name>.<build_id>, of the
    # Worker Deployment. An empty build id runs the workers unversioned (the dev stack, the
    # tests); worker_versioning makes a build id mandatory, so a worker started without one
    # refuses to start instead of polling unversioned beside the versioned ones.
    deployment_name: str = Field("ordersaga", min_length=1, max_length=200, pattern=r"^[^.\s]+$")
    build_id: str = Field("", max_length=200, pattern=r"^[^\s]*$")
    worker_versioning: bool = False

    # Broker (Alpaca Trading API v2 compatible) and market data
    broker_url: str = "http://127.0.0.1:8787"
    market_data_url: str = ""  # defaults to broker_url (Alpaca serves them from different hosts)
    # The key id names the key (like a user name: it shows in the broker's dashboard and in our
    # logs' context), so it is plain; the secret key is the credential.
    broker_key_id: str = DEV_BROKER_KEY_ID
    broker_secret_key: SecretStr = SecretStr(DEV_BROKER_SECRET_KEY)
    broker_connect_timeout_s: float = 2.0
    broker_request_timeout_s: float = 5.0
    broker_max_connections: int = 50
    market_data_feed: str = ""  # Alpaca quote feed ("iex" on free plans); empty: the API's default
    # Where the broker listener reads trade events: "sse", the simulator's stream with replay from
    # an offset, or "websocket", Alpaca's trading stream (no replay: after each reconnect the
    # listener looks up the orders open during the gap). broker_stream_url defaults to the
    # broker URL's ws(s)://host/stream.
    broker_stream: Literal["sse", "websocket"] = "sse"
    broker_stream_url: str = ""

    # Ledger
    ledger_cas_attempts: int = 50
    # Pre-trade risk (core/risk.py, docs/OPERATIONS.md): the firm's default limits per order and
    # per account per New York day, ORDERSAGA_RISK__MAX_ORDER_NOTIONAL and so on; an account's
    # overrides (`ordersaga risk set`) replace them one by one. The ledger checks them in the
    # reserve's transaction.
    risk: RiskLimits = Field(default_factory=RiskLimits)

    # Market data
    quote_max_age_s: float = 10.0
    marketdata_symbols: str = "AAPL,MSFT,TSLA,NVDA,AMZN"
    marketdata_interval_s: float = 1.0
    # The firm's KRW/USD quote (core/fx.py, feeds/fx.py; docs/OPERATIONS.md): an order paid in
    # won is refused once the quote is older than fx_max_age_s or past its expiry. The feed
    # (inside `ordersaga marketdata`) quotes fx_spread (the whole spread, a fraction of the mid)
    # around a mid that starts at fx_mid and walks up to fx_walk per update, each quote valid
    # for fx_quote_ttl_s. fx_feed=false leaves the quote to another writer.
    fx_max_age_s: float = Field(30.0, gt=0, le=3_600)
    fx_feed: bool = True
    fx_mid: Decimal = Field(Decimal("1385"), gt=0, le=Decimal(100_000))
    fx_spread: Decimal = Field(Decimal("0.01"), ge=0, le=Decimal("0.2"))
    fx_walk: Decimal = Field(Decimal("0.0005"), ge=0, le=Decimal("0.05"))
    fx_quote_ttl_s: float = Field(15.0, gt=0, le=3_600)

    # The order saga (nested: ORDERSAGA_SAGA__COMMISSION_RATE, ...)
    saga: SagaSettings = Field(default_factory=SagaSettings)
    reconcile_every_s: float = 300.0
    reconcile_stuck_after_s: float = 900.0
    # Each run lists the broker orders created after the watermark minus this much again (an
    # order the broker shows a moment after a newer one is not missed), page by page.
    reconcile_overlap_s: float = Field(default=300.0, ge=0)
    reconcile_page_size: int = Field(default=500, ge=1, le=500)  # Alpaca's and the simulator's max
    # Pages per workflow run before it continues as new (a long catch-up keeps histories small).
    reconcile_pages_per_run: int = Field(default=8, ge=1)
    # The scheduled run's execution timeout and attempts: a stuck run ends, and the schedule's
    # next run starts from the watermark the stuck one left.
    reconcile_run_timeout_s: float = Field(default=900.0, gt=0)
    reconcile_run_attempts: int = Field(default=2, ge=1)
    # The cash the firm funded at the broker, against which the omnibus ledger's cash is
    # reconciled (activities/positions.py): the simulator's starting cash; at a real broker the
    # funded amount plus every transfer since (transfers must be booked here too).
    broker_cash_baseline: Decimal = Decimal("10000000")

    # Worker pools (the bulkhead: the broker queue has its own slots)
    orders_max_concurrent_activities: int = 100
    # the saga's quote, lock, ledger and orders-table steps (local activities of the orders worker)
    orders_max_concurrent_local_activities: int = 100
    broker_max_concurrent_activities: int = 20
    # The broker key's rate limit, kept by Temporal (max_task_queue_activities_per_second: the
    # server hands out at most this many activity tasks a second on the queue, across all its
    # workers). Alpaca allows 200 requests a minute per account (3.33/s); every order makes a
    # submit (broker queue) and at least one ask (asks queue: its fill report confirmed), so
    # each queue gets 1.6/s, 96% together. The rest, and an activity's second request (a lookup
    # after an unknown submit, a cancel's), are covered by the client backing off on the
    # broker's headers. 0: no limit (a broker without one, the tests' simulator).
    broker_max_activities_per_second: float = Field(default=1.6, ge=0, le=10_000)
    broker_asks_max_activities_per_second: float = Field(default=1.6, ge=0, le=10_000)
    worker_grace_s: float = 10.0

    # Metrics and health (core/telemetry.py): each long-running process serves /metrics, /healthz
    # and /readyz on metrics_host:metrics_port (0: off; the CLI's --metrics-port sets it per
    # process), and reads its gauges from Postgres, the broker and Redis every metrics_interval_s.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=0, ge=0, le=65_535)
    metrics_interval_s: float = Field(default=15.0, gt=0, le=3_600)

    # Local dev stack
    state_dir: Path = DEFAULT_STATE_DIR
    temporal_ui_port: int = 8233
    # Set by `ordersaga dev up` in the environment of every process it starts (and by the test
    # suite): the only place the dev defaults of secrets are accepted (check_secrets).
    dev_stack: bool = False

    @model_validator(mode="before")
    @classmethod
    def _refuse_renamed(cls, values: Any) -> Any:
        given = [k for k in RENAMED if isinstance(values, dict) and k in values]
        given += [k for k in RENAMED if f"ORDERSAGA_{k.upper()}" in os.environ]
        if given:
            old = given[0]
            raise ValueError(
                f"ORDERSAGA_{old.upper()} is now ORDERSAGA_{RENAMED[old].upper()}"
                f" (Settings(saga=SagaSettings({RENAMED[old].removeprefix('saga__')}=...)))"
            )
        return values

    def codec_key_set(self) -> CodecKeys | None:
        """The payload codec's keys, None when none are configured; a UserError of one line
        when they are unusable (a process refuses to start on them)."""
        text = self.codec_keys.get_secret_value()
        if self.codec_keys_file is not None:
            try:
                text = self.codec_keys_file.read_text()
            except OSError as exc:
                raise UserError(
                    f"ORDERSAGA_CODEC_KEYS_FILE: cannot read {self.codec_keys_file}: {exc.strerror}"
                ) from None
        if not text.strip():
            return None
        try:
            return CodecKeys.parse(text)
        except CodecKeyError as exc:
            raise UserError(f"ORDERSAGA_CODEC_KEYS: {exc}") from None

    def check_secrets(self, *, broker: bool = False) -> None:
        """Refuse, with a UserError of one line naming the variable, to run on a default secret
        outside the dev stack: a process that talks to the broker (``broker``) calls it at
        start-up, before it connects to anything."""
        if self.dev_stack:
            return
        if broker and self.broker_secret_key.get_secret_value() == DEV_BROKER_SECRET_KEY:
            raise UserError(
                "ORDERSAGA_BROKER_SECRET_KEY is the dev stack's default: set the broker's secret"
                " key (only processes of `ordersaga dev up` may run on it)"
            )

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # URLs stay strings (the drivers need them), but a printed Settings masks their passwords.
        for name, value in super().__repr_args__():
            yield name, masked(value) if name and name.endswith("_url") else value

    @model_validator(mode="after")
    def _market_data_defaults_to_broker(self) -> Settings:
        if not self.market_data_url:
            self.market_data_url = self.broker_url
        return self

    @classmethod
    def load(cls) -> Settings:
        """Settings from the environment; out-of-range or unparsable values raise a UserError
        of one line naming the variable (a process refuses to start on it)."""
        try:
            return cls()
        except ValidationError as exc:
            raise UserError(settings_error(exc)) from None

    @property
    def asks_task_queue(self) -> str:
        return self.broker_asks_task_queue or f"{self.broker_task_queue}-asks"

    @property
    def symbols(self) -> list[str]:
        return [s.strip().upper() for s in self.marketdata_symbols.split(",") if s.strip()]


def masked(url: str) -> str:
    """``url`` with its password, if it has one, replaced by ``***``: for every URL a process
    prints or logs (postgresql://app:***@db:5432/ordersaga). Anything else comes back as is."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}"))


# The settings whose values are secrets (SecretStr fields), as environment variables.
SECRET_VARIABLES = (
    "ORDERSAGA_BROKER_SECRET_KEY",
    "ORDERSAGA_TEMPORAL_API_KEY",
    "ORDERSAGA_CODEC_KEYS",
    "ORDERSAGA_CODEC_SERVER_TOKEN",
)


def masked_env(env: dict[str, str]) -> dict[str, str]:
    """An ``ORDERSAGA_*`` environment fit to print: secrets replaced by ``***``, URLs masked."""
    return {k: MASK if k in SECRET_VARIABLES and v else masked(v) for k, v in env.items()}


def settings_error(exc: ValidationError) -> str:
    """One line for the first problem: the environment variable and what is wrong with it."""
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    if not loc:  # a check of the whole (a renamed variable): the message names it
        return f"invalid settings: {message}"
    return f"invalid settings: ORDERSAGA_{'__'.join(loc).upper()}: {message}"
