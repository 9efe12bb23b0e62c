"""The chaos harness's own stack: every service its own process on its own port, so each can be
SIGKILLed and restarted without touching anything else on the machine.

It is the dev stack (ordersaga/devstack.py) with embedded Postgres and Redis, free ports, a temp
state folder, and the workers split in two processes (orders queue, broker queue) so each queue's
pool can be killed on its own. Redis keeps nothing on disk: a restart loses every lock and
fencing counter, which is the fault we want.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from core.settings import Settings
from devstack.stack import (
    APPS,
    INFRA,
    AppSpec,
    DevStack,
    Launch,
    StackOptions,
    StackPorts,
    free_port,
)

_SIM = next(a for a in APPS if a.name == "broker-sim")
CHAOS_APPS: tuple[AppSpec, ...] = (
    # The simulator keeps market hours (matching only while its clock says open), as on the dev
    # stack: the harness moves its clock (chaos/drills.py), so a run trades at any real hour.
    _SIM,
    next(a for a in APPS if a.name == "marketdata"),
    AppSpec("worker-orders", ("worker", "--queues", "orders"), ready_line="worker ready"),
    AppSpec("worker-broker", ("worker", "--queues", "broker"), ready_line="worker ready"),
    AppSpec("broker-listener", ("broker-listener",)),
)

# Timing for the processes of a chaos stack: fast polls and short timeouts so faults resolve in
# seconds, and an absent grace above the simulator's late-execution delay plus a request timeout.
CHAOS_ENV = {
    "ORDERSAGA_SAGA__FILL_POLL_INTERVAL_S": "2",
    "ORDERSAGA_BROKER_REQUEST_TIMEOUT_S": "2",
    "ORDERSAGA_BROKER_CONNECT_TIMEOUT_S": "1",
    "ORDERSAGA_SAGA__SUBMIT_START_TO_CLOSE_S": "4",
    "ORDERSAGA_SAGA__SUBMIT_SCHEDULE_TO_CLOSE_S": "12",
    "ORDERSAGA_SAGA__ABSENT_GRACE_S": "20",
    # An order accepted while the simulator's market is closed waits QUEUED, asking its clock
    # again every 2 s (the market-closed drill opens it after a few seconds).
    "ORDERSAGA_SAGA__MARKET_HOURS": "enforce",
    "ORDERSAGA_SAGA__MARKET_RECHECK_S": "2",
    "ORDERSAGA_MARKETDATA_INTERVAL_S": "0.5",
    "ORDERSAGA_QUOTE_MAX_AGE_S": "30",
    "ORDERSAGA_WORKER_GRACE_S": "2",
    "ORDERSAGA_DB_POOL_MAX": "20",
    # The chaos stack's simulator has no rate limit: the harness measures recovery from faults,
    # not the broker key's quota (bench.ratelimit does).
    "ORDERSAGA_BROKER_MAX_ACTIVITIES_PER_SECOND": "0",
    "ORDERSAGA_BROKER_ASKS_MAX_ACTIVITIES_PER_SECOND": "0",
}


def chaos_settings(**overrides: object) -> Settings:
    """Settings for the harness's own client side, matching what its processes run with."""
    values: dict[str, object] = {
        "broker_request_timeout_s": 2.0,
        "broker_connect_timeout_s": 1.0,
        "saga": {
            "fill_poll_interval_s": 2.0,
            "submit_start_to_close_s": 4.0,
            "submit_schedule_to_close_s": 12.0,
            "absent_grace_s": 20.0,
            "market_hours": "enforce",
            "market_recheck_s": 2.0,
        },
        "quote_max_age_s": 30.0,
        "database_url": "postgresql://ordersaga_app@127.0.0.1:5432/ordersaga_chaos",
        "database_owner_url": "postgresql://ordersaga_owner@127.0.0.1:5432/ordersaga_chaos",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class ChaosStack(DevStack):
    """A DevStack whose apps are :data:`CHAOS_APPS` and whose processes get :data:`CHAOS_ENV`."""

    def __init__(self, settings: Settings, state_dir: Path) -> None:
        ports = StackPorts(
            postgres=free_port(),
            redis=free_port(),
            temporal=free_port(),
            temporal_ui=free_port(),
            temporal_metrics=free_port(),
            temporal_http=free_port(),
            broker=free_port(),
            codec=free_port(),
            worker_metrics=free_port(),
            listener_metrics=free_port(),
            marketdata_metrics=free_port(),
        )
        options = StackOptions(
            state_dir=state_dir, ports=ports, force_embedded=True, redis_persistent=False
        )
        super().__init__(settings, options, echo=lambda _line: None)

    def stack_env(self, dsn: str, redis_url: str) -> dict[str, str]:
        return {**super().stack_env(dsn, redis_url), **CHAOS_ENV}

    def app_names(self) -> list[str]:
        return [a.name for a in CHAOS_APPS]

    def _known_names(self) -> list[str]:
        return [*INFRA, *self.app_names()]

    def _launch(self, name: str) -> Launch:
        spec = next((a for a in CHAOS_APPS if a.name == name), None)
        if spec is not None:
            return self._app_launch(spec)
        return super()._launch(name)

    async def _start_apps(self, env: dict[str, str]) -> None:
        for name in self.app_names():
            await self._ensure_running(name, env)

    def settings_for_client(self) -> Settings:
        """The stack's URLs and timing as a Settings object for the harness itself."""
        env = self.env()
        return chaos_settings(
            database_url=env["ORDERSAGA_DATABASE_URL"],
            redis_url=env["ORDERSAGA_REDIS_URL"],
            temporal_address=env["ORDERSAGA_TEMPORAL_ADDRESS"],
            broker_url=env["ORDERSAGA_BROKER_URL"],
            market_data_url=env["ORDERSAGA_BROKER_URL"],
            state_dir=self.state_dir,
            codec_keys_file=Path(env["ORDERSAGA_CODEC_KEYS_FILE"]),  # the workers' key
        )

    async def terminate_pg_backends(self) -> int:
        """pg_terminate_backend on every other connection to the ledger database."""
        conn = await asyncpg.connect(self.env()["ORDERSAGA_DATABASE_URL"], timeout=5)
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM"
                    " pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()"
                )
            )
        finally:
            await conn.close()
