"""One-shot for the compose stack: create the reconciler's Temporal Schedule if it is missing.

Run inside the project image (``python /app/deploy/ensure_schedule.py``); a re-run leaves an
existing schedule as it is.
"""

from __future__ import annotations

import asyncio
import os
import sys

from core.settings import Settings
from core.temporal import connect
from ordersaga.schedules import SCHEDULE_ID, ensure_reconcile_schedule


async def _main() -> None:
    settings = Settings()
    created = await ensure_reconcile_schedule(await connect(settings), settings)
    state = "created" if created else "already exists"
    print(f"schedule {SCHEDULE_ID} {state} (every {settings.reconcile_every_s:.0f}s)", flush=True)


if __name__ == "__main__":
    code = 0
    try:
        asyncio.run(_main())
    except Exception as exc:
        print(f"cannot ensure the reconcile schedule: {exc}", file=sys.stderr, flush=True)
        code = 1
    # The Temporal SDK can abort at interpreter exit (sdk-python#300); a finished one-shot must
    # not report failure for it.
    os._exit(code)
