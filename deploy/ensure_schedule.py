"""One-shot for the compose stack: create the reconciler's and the settlement job's Temporal
Schedules, or bring existing ones up to date (action, timeout, retries and timing; a paused
schedule stays paused).

Run inside the project image (``python /app/deploy/ensure_schedule.py``).
"""

from __future__ import annotations

import asyncio
import os
import sys

from core.settings import Settings
from core.temporal import connect
from ordersaga.schedules import (
    SCHEDULE_ID,
    SETTLEMENT_AT,
    SETTLEMENT_SCHEDULE_ID,
    ensure_reconcile_schedule,
    ensure_settlement_schedule,
)


async def _main() -> None:
    settings = Settings()
    client = await connect(settings)
    created = await ensure_reconcile_schedule(client, settings)
    state = "created" if created else "updated"
    print(f"schedule {SCHEDULE_ID} {state} (every {settings.reconcile_every_s:.0f}s)", flush=True)
    created = await ensure_settlement_schedule(client, settings)
    state = "created" if created else "updated"
    hour, minute = SETTLEMENT_AT
    print(
        f"schedule {SETTLEMENT_SCHEDULE_ID} {state} (weekdays {hour:02d}:{minute:02d} New York)",
        flush=True,
    )


if __name__ == "__main__":
    code = 0
    try:
        asyncio.run(_main())
    except Exception as exc:
        print(f"cannot ensure the schedules: {exc}", file=sys.stderr, flush=True)
        code = 1
    # The Temporal SDK can abort at interpreter exit (sdk-python#300); a finished one-shot must
    # not report failure for it.
    os._exit(code)
