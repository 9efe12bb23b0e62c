"""The order key: built and parsed in one place, strict on what it reads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from core.orderkey import InvalidOrderKey, OrderKey

ids = st.from_regex(r"\A[A-Za-z0-9_.-]{1,64}\Z")


@given(account=ids, order=ids)
def test_a_key_parses_back_into_its_parts(account: str, order: str) -> None:
    key = OrderKey.of(account, order)
    assert key == f"{account}/{order}"
    parsed = OrderKey.parse(str(key))
    assert (parsed.account_id, parsed.order_id) == (account, order)
    assert OrderKey.from_workflow_id(key.workflow_id) == key


@pytest.mark.parametrize(
    "text",
    ["", "alice", "alice/", "/o1", "alice/o1/x", "al ice/o1", "alice/" + "o" * 65, "a\n/o1"],
)
def test_malformed_keys_are_refused(text: str) -> None:
    with pytest.raises(InvalidOrderKey):
        OrderKey.parse(text)


def test_only_text_is_a_key() -> None:
    with pytest.raises(InvalidOrderKey):
        OrderKey.parse(12)


def test_a_workflow_id_that_is_not_an_orders_is_refused() -> None:
    with pytest.raises(InvalidOrderKey):
        OrderKey.from_workflow_id("reconcile/alice/o1")


def test_step_keys_hang_off_the_order_key() -> None:
    assert OrderKey.of("alice", "o1").step("reserve") == "alice/o1:reserve"


class Carrier(BaseModel):
    order_key: OrderKey


def test_as_a_field_it_is_parsed_and_serialised_as_plain_text() -> None:
    model = Carrier.model_validate_json('{"order_key": "alice/o1"}')
    assert isinstance(model.order_key, OrderKey)
    assert model.order_key.order_id == "o1"
    assert model.model_dump_json() == '{"order_key":"alice/o1"}'
    with pytest.raises(ValidationError):
        Carrier.model_validate({"order_key": "alice/o1/../x"})


@given(account=ids, order=ids, replaces=st.integers(min_value=0, max_value=999))
def test_a_replacements_client_order_id_leads_back_to_its_order(
    account: str, order: str, replaces: int
) -> None:
    key = OrderKey.of(account, order)
    cid = key.leg(replaces)
    assert cid == (key if replaces == 0 else f"{key}/r{replaces}")
    assert OrderKey.of_client_order_id(cid) == (key, replaces)


@pytest.mark.parametrize(
    "text",
    ["alice/o1/r0", "alice/o1/r01", "alice/o1/r1000", "alice/o1/x1", "alice/o1/r", "a/o/r\u0661"],
)
def test_client_order_ids_that_are_not_ours_are_refused(text: str) -> None:
    with pytest.raises(InvalidOrderKey):
        OrderKey.of_client_order_id(text)


def test_a_replacement_number_out_of_range_has_no_client_order_id() -> None:
    with pytest.raises(InvalidOrderKey):
        OrderKey.of("alice", "o1").leg(1000)
