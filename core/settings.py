"""One settings class for every process; environment variables prefixed ``ORDERSAGA_``.

Defaults work on a developer's machine: the machine's Postgres and Redis on loopback, the
Temporal dev server on 7233, the broker simulator on 8787.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STATE_DIR = Path(".state")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORDERSAGA_", extra="ignore")

    # Stores
    database_url: str = "postgresql://postgres@127.0.0.1:5432/ordersaga"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "ordersaga:"
    db_pool_min: int = 1
    db_pool_max: int = 10

    # Temporal
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_api_key: str = ""  # Temporal Cloud API key; setting it turns TLS on
    temporal_tls: bool = False
    temporal_ui_url: str = "http://127.0.0.1:8233"
    orders_task_queue: str = "orders"
    broker_task_queue: str = "broker"

    # Broker (Alpaca Trading API v2 compatible) and market data
    broker_url: str = "http://127.0.0.1:8787"
    market_data_url: str = ""  # defaults to broker_url (Alpaca serves them from different hosts)
    broker_key_id: str = "ordersaga-dev-key"
    broker_secret_key: str = "ordersaga-dev-secret"
    broker_connect_timeout_s: float = 2.0
    broker_request_timeout_s: float = 5.0
    broker_max_connections: int = 50
    market_data_feed: str = ""  # Alpaca quote feed ("iex" on free plans); empty: the API's default

    # Account lock
    lock_ttl_ms: int = 10_000
    lock_acquire_timeout_ms: int = 5_000

    # Ledger
    ledger_cas_attempts: int = 50

    # Market data
    quote_max_age_s: float = 10.0
    marketdata_symbols: str = "AAPL,MSFT,TSLA,NVDA,AMZN"
    marketdata_interval_s: float = 1.0

    # Orders
    commission_rate: Decimal = Decimal("0.0025")
    commission_minimum: Decimal = Decimal("0.50")
    market_buy_buffer: Decimal = Decimal("0.05")
    fill_poll_interval_s: float = 5.0
    reconcile_every_s: float = 300.0
    # The saga's broker timing: per-attempt and total submit timeouts, and how long an order the
    # broker does not know must stay absent before its hold is voided (longer than any request
    # can remain in flight).
    submit_start_to_close_s: float = 15.0
    submit_schedule_to_close_s: float = 120.0
    absent_grace_s: float = 180.0
    reconcile_stuck_after_s: float = 900.0

    # Worker pools (the bulkhead: the broker queue has its own slots)
    orders_max_concurrent_activities: int = 100
    # the saga's quote, lock, ledger and orders-table steps (local activities of the orders worker)
    orders_max_concurrent_local_activities: int = 100
    broker_max_concurrent_activities: int = 20
    worker_grace_s: float = 10.0

    # Local dev stack
    state_dir: Path = DEFAULT_STATE_DIR
    temporal_ui_port: int = 8233

    @model_validator(mode="after")
    def _market_data_defaults_to_broker(self) -> Settings:
        if not self.market_data_url:
            self.market_data_url = self.broker_url
        return self

    @property
    def symbols(self) -> list[str]:
        return [s.strip().upper() for s in self.marketdata_symbols.split(",") if s.strip()]
