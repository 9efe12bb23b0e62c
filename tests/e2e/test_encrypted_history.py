"""An order's history as Temporal stores it (and as anyone reading it without the keys sees it):
no payload holds the order's quantity, limit price or account, on the real stack.

The workflow id (``order/<account>/<order>``) and the search attributes (``AccountId``,
``Symbol``, ``OrderStatus``) stay readable by design: Temporal indexes them, so they are not
payloads the codec may touch (docs/SECURITY.md says so).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal

import pytest
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, SearchAttributes
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from core.codec import ENCODING
from core.keys import RedisKeys
from core.statuses import OrderStatus
from devstack.stack import free_port
from tests.support.brokersim import StartSim, brokersim_factory  # noqa: F401
from tests.support.e2e import e2e_stack
from tests.support.saga import temporal_binary
from tests.support.workerproc import workers_running

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]

QTY = "13.579"


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload in a history event, search attributes left out."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = list(value.values())
        elif isinstance(value, Message):
            values = [value]
        else:  # a repeated field
            values = list(value)
        for item in values:
            if isinstance(item, SearchAttributes):
                continue
            if isinstance(item, Payload):
                yield item
            elif isinstance(item, Message):
                yield from payloads_in(item)


def core_marker_data(event: HistoryEvent) -> Iterator[Payload]:
    """The payloads of a marker the SDK's core writes for itself: all but a local activity's
    ``result``."""
    if event.HasField("marker_recorded_event_attributes"):
        details = event.marker_recorded_event_attributes.details
        for key, payloads in details.items():
            if key != "result":
                yield from payloads.payloads


async def test_an_orders_history_holds_none_of_its_numbers_or_its_account_in_plain_text(
    temporal_env: WorkflowEnvironment,
    redis_keys: RedisKeys,
    brokersim_factory: StartSim,  # noqa: F811
) -> None:
    sim = brokersim_factory(fill_model={"mode": "instant", "parts": 1, "auto": True})
    client = temporal_env.client
    async with e2e_stack(client, redis_keys, sim, "encrypted") as stack:
        oc = stack.orders
        acct = await stack.funded_account("50000")
        limit = await stack.price("1.05") + Decimal("0.0037")  # a price no other field holds
        req = stack.limit_buy(acct, limit, qty=QTY)
        async with workers_running(client, stack.settings):
            assert (await oc.place_order(req)).accepted
            final = await oc.wait(acct, req.order_id, timeout_s=60)
        assert final.status == OrderStatus.SETTLED, (final.status, final.reason)
        assert final.filled_qty == Decimal(QTY)

    # Read as the Web UI or `temporal workflow show` without the codec server would.
    plain = await Client.connect(
        client.service_client.config.target_host,
        namespace=client.namespace,
        data_converter=pydantic_data_converter,
    )
    history = await plain.get_workflow_handle(req.workflow_id).fetch_history()
    found = [p for event in history.events for p in payloads_in(event)]
    # Temporal's own marker bookkeeping (a patch's id; a local activity's type, attempt and
    # times) is written by the SDK's core in plain JSON; every payload of ours is encrypted.
    core_markers = [p for event in history.events for p in core_marker_data(event)]
    ours = [p for p in found if p not in core_markers]
    assert len(ours) >= 10, len(ours)  # input, update, local activities' results, result...
    assert all(p.metadata.get("encoding") == ENCODING for p in ours), [
        p.data[:80] for p in ours if p.metadata.get("encoding") != ENCODING
    ]
    blob = b"".join(p.SerializeToString() for p in found)
    for secret in (QTY, str(limit), acct, req.order_id):
        assert secret.encode() not in blob, secret
    # The readable parts are the indexed ones only: the workflow id and search attributes.
    assert acct in req.workflow_id

    # `temporal workflow show` shows it decoded through the codec server (`ordersaga
    # codec-server`, a process of its own), with the server's token only.
    keys = stack.settings.codec_keys.get_secret_value()
    target = client.service_client.config.target_host
    await asyncio.to_thread(shown_through_codec_server, req.workflow_id, target, keys, limit)


def shown_through_codec_server(workflow_id: str, target: str, keys: str, limit: Decimal) -> None:
    show = [temporal_binary(), "workflow", "show", "-w", workflow_id, "--address", target]
    show += ["-o", "json"]
    port, token = free_port(), "show-test-token"
    env = {**os.environ, "ORDERSAGA_CODEC_KEYS": keys, "ORDERSAGA_CODEC_SERVER_TOKEN": token}
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "codec-server", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert server.stdout is not None
        for line in server.stdout:
            if b"codec server ready" in line:
                break
        endpoint = ["--codec-endpoint", f"http://127.0.0.1:{port}"]
        decoded = payload_bytes(run_cli([*show, *endpoint, "--codec-auth", f"Bearer {token}"]))
        assert QTY.encode() in decoded and str(limit).encode() in decoded
        assert QTY.encode() not in payload_bytes(run_cli(show))
        # The wrong token: the CLI gets no decoded payload.
        refused = subprocess.run(
            [*show, *endpoint, "--codec-auth", "Bearer wrong"], capture_output=True, text=True
        )
        assert QTY not in refused.stdout + refused.stderr
        assert QTY.encode() not in payload_bytes(refused.stdout)
    finally:
        server.terminate()
        server.wait(10)


def payload_bytes(shown: str) -> bytes:
    """Every payload's data in `temporal workflow show -o json` output, base64-decoded."""
    out: list[bytes] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and "metadata" in node:
                out.append(base64.b64decode(node["data"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    if shown.strip():
        walk(json.loads(shown))
    return b"\n".join(out)


def run_cli(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout
