"""The order key ``<account>/<order>``: an order's one global identity.

It is the broker's ``client_order_id`` (a replaced order's later broker orders carry
``<account>/<order>/r<n>``, its n-th replacement: ``leg``, ``of_client_order_id``), the account
lock's owner, the hold's order, the prefix of
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
# The n-th replacement of an order at the broker: ``<account>/<order>/r<n>``, n from 1 to this.
MAX_REPLACES = 999


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

    def leg(self, replaces: int) -> str:
        """The client order id of the order's broker order after ``replaces`` replacements (the
        order key itself before any)."""
        if not 0 <= replaces <= MAX_REPLACES:
            raise InvalidOrderKey(f"replacement number {replaces} is not 0-{MAX_REPLACES}")
        return str(self) if replaces == 0 else f"{self}/r{replaces}"

    @classmethod
    def of_client_order_id(cls, text: object) -> tuple[OrderKey, int]:
        """The order a broker order of ours belongs to, and which replacement it is (0: the
        first); InvalidOrderKey for a client order id that is not ours."""
        if isinstance(text, str) and text.count("/") == 2:
            key, _, leg = text.rpartition("/")
            number = leg[1:]
            if leg[:1] == "r" and number.isascii() and number.isdigit() and number[0] != "0":
                if int(number) <= MAX_REPLACES:
                    return cls.parse(key), int(number)
            raise InvalidOrderKey(f"invalid client order id {text[:140]!r}")
        return cls.parse(text), 0

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
