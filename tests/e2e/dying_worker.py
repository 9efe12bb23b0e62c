"""``python -m tests.e2e.dying_worker reserve|refuse``: an orders worker that kills itself
(SIGKILL) the instant a step of the accept phase has committed, before its result can return.

``reserve``: after the ledger's reserve transaction (the hold and the orders row) commits.
``refuse``: after a refused order's row is written.

It is what a power cut at that instant does: the step's effect is in Postgres, the workflow task
that ran it never completes, and Temporal hands the task to another worker once it times out.
Everything else is the real worker (worker/main.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from activities.ledger.service import Ledger
from activities.orders import OrderStore
from core.settings import Settings
from worker.main import run_workers

STEPS: dict[str, tuple[type, str]] = {
    "reserve": (Ledger, "reserve"),
    "refuse": (OrderStore, "record"),
}


def die_after(cls: type, name: str) -> None:
    step: Callable[..., Awaitable[Any]] = getattr(cls, name)

    async def then_die(self: object, *args: Any, **kwargs: Any) -> Any:
        await step(self, *args, **kwargs)
        print(f"dying after {cls.__name__}.{name}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")

    setattr(cls, name, then_die)


def main(argv: list[str]) -> None:
    if len(argv) != 1 or argv[0] not in STEPS:
        sys.exit(f"usage: python -m tests.e2e.dying_worker {'|'.join(STEPS)}")
    die_after(*STEPS[argv[0]])
    asyncio.run(run_workers(Settings.load(), ["orders"]))


if __name__ == "__main__":
    main(sys.argv[1:])
