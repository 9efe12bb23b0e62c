"""``python -m worker [--queues orders,broker]``: the worker process, without the CLI.

Bad arguments, settings out of range and a default secret outside the dev stack
(``Settings.check_secrets``) print one line and exit 2. The process ends with ``os._exit`` once
output is flushed: the Temporal SDK can abort at interpreter exit (sdk-python#300).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from core.errors import UserError
from core.settings import Settings
from worker.main import parse_queues, run_workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description=run_workers.__doc__)
    parser.add_argument(
        "--queues",
        default="orders,broker",
        help="task queues to poll: orders, broker, or both (comma-separated; default both)",
    )
    args = parser.parse_args(argv)
    try:
        queues = parse_queues(args.queues)
    except ValueError as exc:
        parser.exit(2, f"python -m worker: {exc}\n")
    try:
        settings = Settings.load()
        settings.check_secrets(broker="broker" in queues)
    except UserError as exc:
        parser.exit(2, f"python -m worker: {exc}\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(run_workers(settings, queues))
    except UserError as exc:  # e.g. Redis refused the user or its password
        parser.exit(2, f"python -m worker: {exc}\n")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
