"""One source of configuration: the saga's knobs nested in Settings, each with one default."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from core.settings import SagaConfig, SagaSettings, Settings
from workflows.models import OrderInput


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in [v for v in os.environ if v.startswith("ORDERSAGA_")]:
        monkeypatch.delenv(var)


def test_saga_knobs_come_from_nested_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSAGA_SAGA__COMMISSION_RATE", "0.003")
    monkeypatch.setenv("ORDERSAGA_SAGA__ABSENT_GRACE_S", "240")
    saga = Settings().saga
    assert saga.commission_rate == Decimal("0.003")
    assert saga.absent_grace_s == 240.0
    assert saga.lock_wait_ms == SagaSettings().lock_wait_ms


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ORDERSAGA_COMMISSION_RATE", "ORDERSAGA_SAGA__COMMISSION_RATE"),
        ("ORDERSAGA_LOCK_ACQUIRE_TIMEOUT_MS", "ORDERSAGA_SAGA__LOCK_WAIT_MS"),
    ],
)
def test_a_flat_name_from_before_is_refused_not_ignored(
    monkeypatch: pytest.MonkeyPatch, old: str, new: str
) -> None:
    monkeypatch.setenv(old, "0")
    with pytest.raises(ValidationError, match=new):
        Settings()


def test_a_flat_keyword_from_before_is_refused() -> None:
    with pytest.raises(ValidationError, match="ORDERSAGA_SAGA__ABSENT_GRACE_S"):
        Settings(absent_grace_s=1)  # type: ignore[call-arg]


def test_the_workflow_input_carries_the_settings_and_queues() -> None:
    settings = Settings(broker_task_queue="b2", saga=SagaSettings(fill_poll_interval_s=2))
    config = SagaConfig.from_settings(settings)
    assert config.broker_task_queue == "b2"
    assert config.fill_poll_interval_s == 2
    assert (
        SagaSettings.model_validate(
            config.model_dump(exclude={"orders_task_queue", "broker_task_queue"})
        )
        == settings.saga
    )


def test_one_default_each() -> None:
    # The asks queue is the one field a config's default differs in: empty in configs recorded
    # before it existed (those orders ask on the broker queue), derived in a worker's own.
    derived = SagaConfig.from_settings(Settings())
    assert derived.model_dump(exclude={"broker_asks_task_queue"}) == SagaConfig().model_dump(
        exclude={"broker_asks_task_queue"}
    )
    assert derived.broker_asks_task_queue == f"{derived.broker_task_queue}-asks"


def test_the_workflow_input_carries_no_settings_of_the_callers() -> None:
    assert OrderInput.model_fields["config"].default is None
    # whatever a caller puts there decodes (and is ignored): no value can wedge the input
    inp = OrderInput.model_validate(
        {
            "request": {
                "account_id": "a",
                "order_id": "o",
                "symbol": "AAPL",
                "side": "buy",
                "qty": "1",
            },
            "config": {"commission_rate": "-0.5", "broker_task_queue": "mine"},
        }
    )
    assert inp.config is not None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COMMISSION_RATE", "-0.5"),
        ("COMMISSION_RATE", "NaN"),
        ("MARKET_BUY_BUFFER", "-0.01"),
        ("LOCK_TTL_MS", "0"),
        ("FILL_POLL_INTERVAL_S", "-1"),
        ("ABSENT_GRACE_S", "inf"),
    ],
)
def test_out_of_range_saga_settings_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"ORDERSAGA_SAGA__{name}", value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()


def test_an_old_workflow_input_still_decodes() -> None:
    """Inputs recorded before the nesting carry the same field names."""
    old = {
        "orders_task_queue": "orders",
        "broker_task_queue": "broker",
        "commission_rate": "0.0025",
        "commission_minimum": "0.50",
        "market_buy_buffer": "0.05",
        "lock_ttl_ms": 10000,
        "lock_wait_ms": 5000,
        "fill_poll_interval_s": 5.0,
        "absent_grace_s": 120.0,
        "submit_start_to_close_s": 15.0,
        "submit_schedule_to_close_s": 120.0,
        "max_history_events": 2000,
    }
    config = SagaConfig.model_validate(old)
    assert config.absent_grace_s == 120.0 and config.lock_wait_ms == 5000


def test_the_listener_stream_is_sse_or_websocket(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().broker_stream == "sse"
    monkeypatch.setenv("ORDERSAGA_BROKER_STREAM", "websocket")
    assert Settings().broker_stream == "websocket"
    monkeypatch.setenv("ORDERSAGA_BROKER_STREAM", "kafka")
    with pytest.raises(ValidationError, match="broker_stream"):
        Settings()
