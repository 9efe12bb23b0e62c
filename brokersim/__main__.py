"""``python -m brokersim --host H --port P --state FILE [--seed N] [--faults JSON]
[--market-hours always|enforce]``.

The keys it accepts are ORDERSAGA_BROKER_KEY_ID and ORDERSAGA_BROKER_SECRET_KEY (or --key-id and
--secret-key); outside the dev stack it refuses the dev secret with one line (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging

from pydantic import SecretStr

from brokersim.server import serve
from core.errors import UserError
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
    parser.add_argument(
        "--rate-limit", type=json.loads, default=None, help='JSON, e.g. {"limit": 200}; off'
    )
    parser.add_argument(
        "--market-hours",
        choices=("always", "enforce"),
        default=None,
        help="always: match around the clock (a new state file's default); enforce: only while"
        " the NYSE calendar says open, orders submitted while closed wait for the open",
    )
    parser.add_argument("--key-id", default=settings.broker_key_id)
    parser.add_argument("--secret-key", default=None, help="default: ORDERSAGA_BROKER_SECRET_KEY")
    args = parser.parse_args(argv)
    if args.secret_key is not None:
        settings = settings.model_copy(update={"broker_secret_key": SecretStr(args.secret_key)})
    try:
        settings.check_secrets(broker=True)
    except UserError as exc:
        parser.exit(2, f"brokersim: {exc}\n")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(
        serve(
            args.host,
            args.port,
            args.state,
            key_id=args.key_id,
            secret_key=settings.broker_secret_key.get_secret_value(),
            seed=args.seed,
            faults=args.faults,
            fill_model=args.fill_model,
            rate_limit=args.rate_limit,
            market_hours=args.market_hours,
        )
    )


if __name__ == "__main__":
    main()
