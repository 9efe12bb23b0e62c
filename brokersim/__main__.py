"""``python -m brokersim --host H --port P --state FILE [--seed N] [--faults JSON]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from brokersim.server import serve
from core.settings import Settings


def main(argv: list[str] | None = None) -> None:
    settings = Settings()
    parser = argparse.ArgumentParser(prog="brokersim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--state", default=str(settings.state_dir / "brokersim.sqlite"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", type=json.loads, default=None, help="JSON fault config")
    parser.add_argument("--fill-model", type=json.loads, default=None, help="JSON fill model")
    parser.add_argument("--key-id", default=settings.broker_key_id)
    parser.add_argument("--secret-key", default=settings.broker_secret_key)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(
        serve(
            args.host,
            args.port,
            args.state,
            key_id=args.key_id,
            secret_key=args.secret_key,
            seed=args.seed,
            faults=args.faults,
            fill_model=args.fill_model,
        )
    )


if __name__ == "__main__":
    main()
