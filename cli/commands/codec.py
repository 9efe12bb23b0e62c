"""``ordersaga codec-server`` (decodes payloads for the Web UI and the CLI) and ``ordersaga codec
new-key`` (a fresh payload key to put first in the key set)."""

from __future__ import annotations

import logging

import click

from cli.commands.common import run
from core.codec import CodecKeyError, new_key_entry
from core.settings import Settings


def register(cli: click.Group) -> None:
    @cli.command("codec-server")
    @click.option("--host", default=None, help="Address to listen on (default: settings).")
    @click.option(
        "--port", type=click.IntRange(1, 65_535), default=None, help="Port (default: settings)."
    )
    def codec_server_cmd(host: str | None, port: int | None) -> None:
        """Serve /encode and /decode for the Temporal Web UI and CLI (runs until interrupted).

        Requests need 'Authorization: Bearer <ORDERSAGA_CODEC_SERVER_TOKEN>'."""
        from ordersaga.codec_server import serve

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        settings = Settings()
        run(serve(settings, host or settings.codec_server_host, port or settings.codec_server_port))

    @cli.group("codec")
    def codec_group() -> None:
        """The payload codec's keys."""

    @codec_group.command("new-key")
    @click.argument("key_id")
    def new_key_cmd(key_id: str) -> None:
        """Print a fresh key entry (KEY_ID:base64); put it first in the key set to rotate."""
        try:
            click.echo(new_key_entry(key_id))
        except CodecKeyError as exc:
            raise click.ClickException(str(exc)) from None
