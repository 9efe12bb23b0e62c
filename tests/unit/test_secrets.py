"""Secrets in settings: SecretStr fields that never print, URLs whose passwords are masked
wherever they are shown, and the refusal of the dev defaults outside the dev stack."""

from __future__ import annotations

import asyncio
import os

import pytest
from pydantic import SecretStr

from core.errors import UserError
from core.settings import (
    DEV_BROKER_SECRET_KEY,
    SECRET_VARIABLES,
    Settings,
    masked,
    masked_env,
)

SECRET = "s3cr3t-p4ss"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("ORDERSAGA_")]:
        monkeypatch.delenv(var)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://app:{SECRET}@db:5432/ordersaga", "postgresql://app:***@db:5432/ordersaga"),
        (f"redis://default:{SECRET}@redis:6379/0", "redis://default:***@redis:6379/0"),
        (f"rediss://:{SECRET}@redis:6380/0", "rediss://:***@redis:6380/0"),
        (f"https://key:{SECRET}@broker.example/v2?x=1", "https://key:***@broker.example/v2?x=1"),
        # a password holding the URL's own delimiters, percent-encoded
        ("postgresql://app:p%40ss%3Aw@db/x", "postgresql://app:***@db/x"),
        ("postgresql://app@db:5432/ordersaga", "postgresql://app@db:5432/ordersaga"),
        ("http://127.0.0.1:8787", "http://127.0.0.1:8787"),
        ("127.0.0.1:7233", "127.0.0.1:7233"),
        ("not a url", "not a url"),
        ("", ""),
    ],
)
def test_masked_hides_only_the_password(url: str, shown: str) -> None:
    assert masked(url) == shown


def test_secret_settings_are_secret_str_and_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSAGA_BROKER_SECRET_KEY", f"broker-{SECRET}")
    monkeypatch.setenv("ORDERSAGA_TEMPORAL_API_KEY", f"temporal-{SECRET}")
    monkeypatch.setenv("ORDERSAGA_CODEC_SERVER_TOKEN", f"token-{SECRET}")
    monkeypatch.setenv("ORDERSAGA_DATABASE_URL", f"postgresql://app:{SECRET}@db/ordersaga")
    monkeypatch.setenv("ORDERSAGA_DATABASE_OWNER_URL", f"postgresql://own:{SECRET}@db/ordersaga")
    monkeypatch.setenv("ORDERSAGA_DATABASE_ADMIN_URL", f"postgresql://adm:{SECRET}@db/postgres")
    monkeypatch.setenv("ORDERSAGA_REDIS_URL", f"redis://u:{SECRET}@redis:6379/0")
    settings = Settings()
    for name in SECRET_VARIABLES:
        field = name.removeprefix("ORDERSAGA_").lower()
        assert isinstance(getattr(settings, field), SecretStr), field
        assert field in Settings.model_fields
    assert settings.broker_secret_key.get_secret_value() == f"broker-{SECRET}"
    assert settings.database_url == f"postgresql://app:{SECRET}@db/ordersaga"  # drivers get it
    for shown in (repr(settings), str(settings)):
        assert SECRET not in shown, shown
        assert "postgresql://app:***@db/ordersaga" in shown
    assert settings.broker_key_id == "ordersaga-dev-key"  # an identifier, shown as is


def test_masked_env_for_printing() -> None:
    env = {
        "ORDERSAGA_CODEC_SERVER_TOKEN": SECRET,
        "ORDERSAGA_BROKER_SECRET_KEY": SECRET,
        "ORDERSAGA_DATABASE_URL": f"postgresql://app:{SECRET}@db/x",
        "ORDERSAGA_TEMPORAL_ADDRESS": "127.0.0.1:7233",
        "ORDERSAGA_TEMPORAL_API_KEY": "",
    }
    shown = masked_env(env)
    assert SECRET not in str(shown)
    assert shown["ORDERSAGA_TEMPORAL_ADDRESS"] == "127.0.0.1:7233"
    assert shown["ORDERSAGA_DATABASE_URL"] == "postgresql://app:***@db/x"
    assert shown["ORDERSAGA_TEMPORAL_API_KEY"] == ""  # empty: nothing to hide, and says so


def test_the_dev_broker_secret_is_refused_outside_the_dev_stack(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings()
    assert settings.broker_secret_key.get_secret_value() == DEV_BROKER_SECRET_KEY
    with pytest.raises(UserError) as refused:
        settings.check_secrets(broker=True)
    message = str(refused.value)
    assert "ORDERSAGA_BROKER_SECRET_KEY" in message and "\n" not in message
    assert DEV_BROKER_SECRET_KEY not in message
    settings.check_secrets()  # a process that does not talk to the broker needs no key
    Settings(broker_secret_key=f"real-{SECRET}").check_secrets(broker=True)
    monkeypatch.setenv("ORDERSAGA_DEV_STACK", "1")
    Settings().check_secrets(broker=True)  # the dev stack's processes run on the dev keys


def test_a_broker_error_names_the_url_without_its_credentials() -> None:
    from core.broker_client import BrokerClient, BrokerUnavailable
    from devstack.stack import free_port

    async def ask() -> str:
        url = f"http://key:{SECRET}@127.0.0.1:{free_port()}"  # nothing listens there
        async with BrokerClient(url, key_id="k", secret_key=SECRET) as client:
            with pytest.raises(BrokerUnavailable) as refused:
                await client.get_order("o-1")
        return str(refused.value)

    message = asyncio.run(ask())
    assert "key:***@127.0.0.1" in message and SECRET not in message
