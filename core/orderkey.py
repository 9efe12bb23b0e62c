"""The order key ``<account>/<order>``: an order's one global identity.

It is the broker's ``client_order_id``, the account lock's owner, the hold's order, the prefix of
the saga's idempotency keys, and (behind ``order/``) the workflow id. Built and parsed only here.
An ``OrderKey`` is a ``str``, so it goes into SQL, JSON and f-strings as the text itself; as a
pydantic field it is parsed strictly, so a malformed key from a caller, a broker event or an old
payload is refused where it enters.
"""

from __future__ import annotations

from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from core.ids import is_id

WORKFLOW_PREFIX = "order/"


class InvalidOrderKey(ValueError):
    """Text that is not ``<account>/<order>`` with two valid ids."""


class OrderKey(str):
    """``<account>/<order>``; ``OrderKey.of`` builds one, ``OrderKey.parse`` reads one."""

    __slots__ = ()

    @classmethod
    def of(cls, account_id: str, order_id: str) -> OrderKey:
        return cls.parse(f"{account_id}/{order_id}")

    @classmethod
    def parse(cls, text: object) -> OrderKey:
        if not isinstance(text, str):
            raise InvalidOrderKey(f"an order key is text, got {type(text).__name__}")
        account_id, sep, order_id = text.partition("/")
        if not sep or not is_id(account_id) or not is_id(order_id):
            raise InvalidOrderKey(
                f"invalid order key {text[:140]!r}: expected <account>/<order>, each 1-64 "
                "letters, digits, '_', '.', '-'"
            )
        return text if isinstance(text, cls) else cls(text)

    @classmethod
    def from_workflow_id(cls, workflow_id: str) -> OrderKey:
        if not workflow_id.startswith(WORKFLOW_PREFIX):
            raise InvalidOrderKey(f"{workflow_id[:140]!r} is not an order's workflow id")
        return cls.parse(workflow_id[len(WORKFLOW_PREFIX) :])

    @property
    def account_id(self) -> str:
        return self.partition("/")[0]

    @property
    def order_id(self) -> str:
        return self.partition("/")[2]

    @property
    def workflow_id(self) -> str:
        return f"{WORKFLOW_PREFIX}{self}"

    def step(self, name: str) -> str:
        """The idempotency key of one of the order's steps (``<key>:reserve``, ``<key>:void``)."""
        return f"{self}:{name}"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            json_schema_input_schema=core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str),
        )
