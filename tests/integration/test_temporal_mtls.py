"""Temporal over mTLS, on real sockets: the client presents its certificate from settings and
verifies the server against the CA from settings. The dev server speaks plain gRPC, so a
TLS-terminating proxy that requires a client certificate signed by the test CA stands in front
of it, as a cluster's frontend (or its load balancer) would."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.testing import WorkflowEnvironment

from core.errors import UserError
from core.settings import Settings
from core.temporal import connect, tls_config
from tests.support.certs import ScratchCA

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.temporal]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


@pytest_asyncio.fixture(loop_scope="session")
async def mtls_proxy(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> AsyncIterator[tuple[str, ScratchCA]]:
    """``127.0.0.1:PORT`` of a proxy that takes mTLS (client certificates from the CA only) and
    forwards to the session's dev server; and the CA."""
    ca = ScratchCA(tmp_path)
    server = ca.issue("temporal-frontend", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca.cert))
    context.load_cert_chain(server.cert, server.key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, port = temporal_env.client.service_client.config.target_host.rsplit(":", 1)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    proxy = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
    address = proxy.sockets[0].getsockname()
    yield f"127.0.0.1:{address[1]}", ca
    proxy.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proxy.wait_closed(), 5)


async def test_a_client_with_its_certificate_reaches_temporal_through_mtls(
    mtls_proxy: tuple[str, ScratchCA],
) -> None:
    address, ca = mtls_proxy
    client_cert = ca.issue("ordersaga-worker", server=False)
    settings = Settings(
        temporal_address=address,
        temporal_tls_cert_file=client_cert.cert,
        temporal_tls_key_file=client_cert.key,
        temporal_tls_ca_file=ca.cert,
        temporal_tls_server_name="localhost",
    )
    client = await asyncio.wait_for(connect(settings), 30)
    info = await client.workflow_service.get_system_info(GetSystemInfoRequest())
    assert info.server_version


@pytest.mark.parametrize("who", ["no certificate", "a certificate from another CA"])
async def test_a_client_without_a_certificate_the_server_trusts_is_refused(
    mtls_proxy: tuple[str, ScratchCA], tmp_path: Path, who: str
) -> None:
    address, ca = mtls_proxy
    values: dict[str, object] = {
        "temporal_address": address,
        "temporal_tls_ca_file": ca.cert,
        "temporal_tls_server_name": "localhost",
    }
    if who != "no certificate":
        (tmp_path / "other").mkdir()
        stranger = ScratchCA(tmp_path / "other", name="another CA")
        issued = stranger.issue("intruder", server=False)
        values |= {"temporal_tls_cert_file": issued.cert, "temporal_tls_key_file": issued.key}
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(connect(Settings(**values)), 30)  # type: ignore[arg-type]


async def test_certificate_files_that_do_not_go_together_or_cannot_be_read_are_one_line(
    tmp_path: Path,
) -> None:
    with pytest.raises(UserError, match="go together: set both or neither"):
        tls_config(Settings(temporal_tls_cert_file=tmp_path / "c.pem"))
    with pytest.raises(UserError, match="ORDERSAGA_TEMPORAL_TLS_CA_FILE: cannot read"):
        tls_config(Settings(temporal_tls_ca_file=tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(UserError, match="is not a PEM file"):
        tls_config(Settings(temporal_tls_ca_file=tmp_path / "junk.pem"))
    assert tls_config(Settings()) is False
    assert tls_config(Settings(temporal_tls=True)) is True
