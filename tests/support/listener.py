"""A broker listener running in the test's event loop, stopped when the test is done."""

from __future__ import annotations

import asyncio

from feeds.listener import BrokerListener


class Running:
    def __init__(self, listener: BrokerListener) -> None:
        self.listener = listener
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(listener.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)
