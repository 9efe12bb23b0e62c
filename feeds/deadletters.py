"""The broker listener's dead letters: events it could not parse or that did not add up.

One Redis list per listener (``RedisKeys.listener_dead_letters(name)``), newest first, at most
``MAX_DEAD_LETTERS`` long (the oldest fall off). Each entry is JSON: the raw event text as it
arrived, the reason, the offset (None when the event carried none) and when it was set aside.
The listener writes the entry before it moves its offset past the event, so a crash between the
two sets the event aside twice, never loses it.

``ordersaga broker dead-letters`` lists them; ``--replay OFFSET`` parses the raw text again
and, if it now passes (a rule was fixed), hands it to the same callback the listener uses and
removes the entry; if it still fails, it is refused with the reason and left in place.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError

from core.broker_client import InvalidTradeEvent, TradeEvent, parse_trade_event
from core.keys import RedisKeys

MAX_DEAD_LETTERS = 10_000


class DeadLetter(BaseModel):
    offset: int | None
    reason: str
    raw: str
    listener: str
    at: float
    """Epoch seconds when the listener set it aside."""


class DeadLetterNotFound(LookupError):
    pass


class DeadLetters:
    def __init__(self, redis: aioredis.Redis, keys: RedisKeys, name: str = "default") -> None:
        self._redis = redis
        self._key = keys.listener_dead_letters(name)
        self.name = name

    async def add(self, offset: int | None, reason: str, raw: str) -> DeadLetter:
        letter = DeadLetter(
            offset=offset, reason=reason, raw=raw, listener=self.name, at=time.time()
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self._key, letter.model_dump_json())
            pipe.ltrim(self._key, 0, MAX_DEAD_LETTERS - 1)
            await pipe.execute()
        return letter

    async def recent(self, limit: int = MAX_DEAD_LETTERS) -> list[DeadLetter]:
        """Newest first."""
        return [letter for _, letter in await self._entries(limit)]

    async def _entries(self, limit: int) -> list[tuple[str, DeadLetter]]:
        stored = await self._redis.lrange(self._key, 0, limit - 1)
        entries = []
        for item in stored:
            text = item.decode() if isinstance(item, bytes) else item
            try:
                entries.append((text, DeadLetter.model_validate_json(text)))
            except ValidationError:
                continue  # not written by us; left for a human to look at with redis-cli
        return entries

    async def replay(
        self, offset: int, on_event: Callable[[TradeEvent], Awaitable[None]]
    ) -> TradeEvent:
        """Parse the newest dead letter at ``offset`` again and deliver it; then remove it.

        Raises DeadLetterNotFound, or InvalidTradeEvent (the entry stays) when it is still bad.
        A failing callback raises its error and the entry stays too.
        """
        for text, letter in await self._entries(MAX_DEAD_LETTERS):
            if letter.offset == offset:
                event = parse_trade_event(letter.raw)
                if event.offset != offset:
                    raise InvalidTradeEvent(f"offset mismatch: payload says {event.offset}")
                await on_event(event)
                await self._redis.lrem(self._key, 1, text)
                return event
        raise DeadLetterNotFound(f"no dead letter at offset {offset} for listener {self.name!r}")
