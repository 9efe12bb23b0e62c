"""The application's Redis ACL rules and connection options (core/redisconn.py), without Redis."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from core.errors import UserError
from core.redisconn import (
    APP_COMMANDS,
    FORBIDDEN_COMMANDS,
    acl_rules,
    app_acl_rules,
    check_redis,
    key_pattern,
    redis_client,
    tls_options,
)
from core.settings import Settings


def test_the_rule_resets_the_user_and_allows_the_prefix_and_the_projects_commands_only() -> None:
    rules = acl_rules("ordersaga:", "pw")
    assert rules[:6] == ["reset", "on", ">pw", "~ordersaga:*", "resetchannels", "-@all"]
    assert rules[6:] == [f"+{c}" for c in APP_COMMANDS]
    assert not {r.lstrip("+") for r in rules} & set(FORBIDDEN_COMMANDS)
    assert "+select" not in rules
    assert "+select" in acl_rules("ordersaga:", "pw", db=2)  # redis-py selects on connect


def test_glob_characters_in_the_prefix_are_escaped_and_an_empty_prefix_is_refused() -> None:
    assert key_pattern("a*b?[c]\\:") == "~a\\*b\\?\\[c\\]\\\\:*"
    with pytest.raises(UserError):
        key_pattern("")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://127.0.0.1:6379/0", "names no application user"),
        ("redis://default:pw@127.0.0.1:6379/0", "names no application user"),
        ("redis://ordersaga@127.0.0.1:6379/0", "has no password"),
    ],
)
def test_init_acl_needs_a_user_and_a_password_in_the_url(url: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        app_acl_rules(Settings(redis_url=url))


def test_the_user_and_password_come_from_the_url_percent_decoded() -> None:
    user, rules = app_acl_rules(Settings(redis_url="redis://app:p%40ss@h:6379/0"))
    assert user == "app" and rules[2] == ">p@ss"


def test_tls_options_only_for_rediss_and_tls_files_with_redis_url_are_refused() -> None:
    ca = Path("/tmp/ca.pem")
    s = Settings(redis_url="rediss://app:pw@h:6380/0", redis_tls_ca_file=ca)
    assert tls_options(s, s.redis_url) == {"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca)}
    assert tls_options(Settings(), "redis://h:6379/0") == {}
    plain = Settings(redis_url="redis://app:secret@h:6379/0", redis_tls_ca_file=ca)
    with pytest.raises(UserError, match="not rediss://") as refused:
        redis_client(plain)
    assert "secret" not in str(refused.value)


class Refusing:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    async def ping(self) -> bool:
        raise self.exc


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "exc",
    [
        redis.AuthenticationError("invalid username-password pair or user is disabled."),
        redis.exceptions.NoPermissionError("this user has no permissions to run the 'ping'"),
    ],
)
async def test_a_refused_login_at_start_is_one_line_without_the_password(exc: Exception) -> None:
    s = Settings(redis_url="redis://app:secret@h:6379/0")
    with pytest.raises(UserError) as refused:
        await check_redis(Refusing(exc), s)  # type: ignore[arg-type]
    assert "\n" not in str(refused.value) and "secret" not in str(refused.value)
    assert str(refused.value).startswith("redis: redis://app:***@h:6379/0: ")
    await check_redis(Refusing(redis.ConnectionError("down")), s)  # type: ignore[arg-type]
