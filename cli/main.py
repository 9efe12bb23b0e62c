"""The ``ordersaga`` command line.

Each command group lives in ``ordersaga/commands/``. User errors print one line and exit
non-zero, never a traceback. The process ends with ``os._exit`` once output is flushed: the
Temporal SDK can abort at interpreter exit (sdk-python#300), which must not turn a success into
a crash.
"""

from __future__ import annotations

import os
import sys

import click
from pydantic import ValidationError

from cli.commands import register_all
from core.settings import settings_error
from devstack.stack import apply_stack_env


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ordersaga")
def cli() -> None:
    """Order-execution saga for overseas stock trading."""


register_all(cli)


def main(argv: list[str] | None = None) -> None:
    code = 0
    # Addresses of a stack started by `ordersaga dev up` (embedded stores, ports); variables
    # already set in the environment win.
    apply_stack_env()
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except ValidationError as exc:  # settings out of range, wherever a command built them
        click.echo(f"Error: {settings_error(exc)}", err=True)
        code = 2
    except SystemExit as exc:  # click's --help / --version / ctx.exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
