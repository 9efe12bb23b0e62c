"""The broker listener: hands each trade event from the broker's stream to a callback, in order.

Delivery is at least once, in offset order, and never skips an offset the broker stored:
- The offset is saved in Redis (``RedisKeys.listener_offset(name)``) only AFTER the callback
  returned for that event, so a crash replays the event rather than losing it. To spare a
  Redis write per event it is saved with the first event delivered ``save_every_s`` after the
  previous save, at every reconnect, and when the listener stops; a crash replays the events
  delivered since. Callbacks must therefore be idempotent (the saga books the broker's
  cumulative fills, so a report seen twice is booked once).
- Within a run, an event at or below the last delivered offset (a duplicate on the stream, or a
  replay after a reconnect) is dropped.
- A gap in offsets (an event dropped on the stream) is filled from the broker's stored events
  before the later event is delivered; every ``resync_s`` the stream is reconnected from the
  last offset, which also replays a trailing event that was dropped.
- Any error (broker down, disconnect, simulator restart, a failing callback) reconnects from the
  last delivered offset after an exponential backoff.
- A poison event (core/broker_client.parse_trade_event refuses it: not JSON, wrong shapes, NaN
  or negative fills, fills above the order's qty, an unknown status, empty ids, a payload
  offset that differs from the stream's) never reaches the callback: it goes to the dead-letter
  list (feeds/deadletters.py) and the offset moves past it, so later events are delivered.
  Only a callback's failure is retried; a malformed event would fail the same way for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from temporalio.client import Client

from core.broker_client import (
    BrokerAuthError,
    BrokerClient,
    EventFrame,
    InvalidTradeEvent,
    TradeEvent,
    parse_trade_event,
)
from core.keys import RedisKeys
from core.redisconn import check_redis, redis_client
from core.settings import Settings
from core.telemetry import (
    NOOP_METRICS,
    OpsServer,
    ProcessMetrics,
    Telemetry,
    broker_check,
    redis_check,
    temporal_check,
)
from feeds.deadletters import DeadLetters

log = logging.getLogger(__name__)

OnEvent = Callable[[TradeEvent], Awaitable[None]]
# The most stored events one lag measurement reads.
LAG_PROBE = 1000


async def log_event(event: TradeEvent) -> None:
    """The default callback: one log line per event (the saga replaces it with a signal)."""
    order = event.order
    log.info(
        "event %d %s %s order=%s client_order_id=%s %s filled=%s/%s avg=%s",
        event.offset,
        event.event,
        event.execution_id,
        order.id,
        order.client_order_id,
        order.symbol,
        order.filled_qty,
        order.qty,
        order.filled_avg_price,
    )


class BrokerListener:
    def __init__(
        self,
        client: BrokerClient,
        redis: aioredis.Redis,
        keys: RedisKeys,
        on_event: OnEvent,
        name: str = "default",
        *,
        backoff_first_s: float = 0.2,
        backoff_max_s: float = 5.0,
        idle_timeout_s: float = 30.0,
        resync_s: float = 30.0,
        save_every_s: float = 0.5,
        metrics: ProcessMetrics = NOOP_METRICS,
    ) -> None:
        self._client = client
        self._metrics = metrics
        metrics.listener_dead_letters.add(0)  # the series exists before the first poison event
        metrics.collector_errors.add(0, {"source": "broker"})
        self._redis = redis
        self._key = keys.listener_offset(name)
        self.dead_letters = DeadLetters(redis, keys, name)
        self._on_event = on_event
        self.name = name
        self.backoff_first_s = backoff_first_s
        self.backoff_max_s = backoff_max_s
        self.idle_timeout_s = idle_timeout_s
        self.resync_s = resync_s
        self.save_every_s = save_every_s
        self._save_due = 0.0
        self._stream_ended = False
        self.offset = 0
        self._saved = 0
        self.delivered = 0
        self.reconnects = 0
        self.duplicates = 0
        self.backfilled = 0
        self.dead_lettered = 0

    async def load_offset(self) -> int:
        raw = await self._redis.get(self._key)
        self.offset = self._saved = int(raw) if raw is not None else 0
        return self.offset

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume from the stored offset until ``stop`` is set (or a configuration error)."""
        stop = stop or asyncio.Event()
        await self.load_offset()
        log.info("listener %r starting after offset %d", self.name, self.offset)
        consumer = asyncio.create_task(self._consume_forever(stop))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({consumer, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (consumer, stopper):
                task.cancel()
            await asyncio.gather(consumer, stopper, return_exceptions=True)
            try:
                await self._save()  # what was delivered since the last save
            except Exception as exc:  # Redis down: the next start replays those events
                log.warning("listener %r: offset not saved: %s", self.name, exc)
        if consumer.done() and not consumer.cancelled() and consumer.exception() is not None:
            raise consumer.exception()  # type: ignore[misc]

    async def _consume_forever(self, stop: asyncio.Event) -> None:
        delay = self.backoff_first_s
        while not stop.is_set():
            try:
                await self._save()
                await self._consume_for(self.resync_s)
            except BrokerAuthError:
                raise
            except Exception as exc:  # any failure: reconnect from the last delivered offset
                log.warning("listener %r: %s: %s", self.name, type(exc).__name__, exc)
                self.reconnects += 1
                await _sleep_unless(stop, delay)
                delay = min(delay * 2, self.backoff_max_s)
                continue
            delay = self.backoff_first_s
            # A planned resync reconnects at once; a stream the broker ended waits a moment so a
            # broker that keeps closing streams is not hammered.
            if self._stream_ended:
                self.reconnects += 1
                await _sleep_unless(stop, self.backoff_first_s)

    async def _consume_for(self, seconds: float) -> None:
        """Read the stream for up to ``seconds``, then return so the caller reconnects.

        The reconnect replays from the last delivered offset, which the broker never drops:
        that is how an event dropped at the end of the live stream (no later event to reveal
        the gap) still arrives. Only the wait for the next event is timed, never a callback,
        so a callback is not cut off halfway.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        stream = self._client.trade_update_frames(self.offset, self.idle_timeout_s)
        self._stream_ended = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        frame = await anext(stream)
                except TimeoutError:
                    return
                except StopAsyncIteration:
                    self._stream_ended = True
                    return
                await self._accept(frame)
        finally:
            await stream.aclose()

    async def _accept(self, frame: EventFrame) -> None:
        if frame.offset is None:
            # Nowhere to put it in the order: set aside; a gap it hid is filled below.
            await self._set_aside(frame, "no offset")
            return
        if frame.offset <= self.offset:
            self.duplicates += 1  # a duplicate on the stream, or already delivered
            return
        if frame.offset > self.offset + 1:
            missing = frame.offset - self.offset - 1
            log.info("listener %r: %d event(s) missing before %d", self.name, missing, frame.offset)
            for earlier in await self._client.event_frames_since(self.offset, limit=missing):
                if earlier.offset is not None and self.offset < earlier.offset < frame.offset:
                    await self._handle(earlier)
                    self.backfilled += 1
        await self._handle(frame)

    async def _handle(self, frame: EventFrame) -> None:
        """Deliver one event in order, or set it aside when it is poison; either way move on."""
        try:
            event = parse_trade_event(frame.text)
            if event.offset != frame.offset:
                raise InvalidTradeEvent(
                    f"offset mismatch: stream {frame.offset}, payload {event.offset}"
                )
        except InvalidTradeEvent as exc:
            await self._set_aside(frame, str(exc))
            if frame.offset is not None:
                await self._advance(frame.offset)
            return
        await self._on_event(event)
        self.delivered += 1
        await self._advance(event.offset)

    async def _set_aside(self, frame: EventFrame, reason: str) -> None:
        await self.dead_letters.add(frame.offset, reason, frame.text)
        self.dead_lettered += 1
        self._metrics.listener_dead_letters.add(1)
        log.warning("listener %r: event %s dead-lettered: %s", self.name, frame.offset, reason)

    async def _advance(self, offset: int) -> None:
        self.offset = offset
        self._metrics.listener_offset.set(offset)
        if asyncio.get_running_loop().time() >= self._save_due:
            await self._save()

    async def _save(self) -> None:
        if self.offset != self._saved:
            await self._redis.set(self._key, self.offset)
            self._saved = self.offset
            self._save_due = asyncio.get_running_loop().time() + self.save_every_s

    async def measure_lag(self) -> int:
        """The broker's newest event offset minus the last one delivered (``ordersaga_listener_lag
        _events``): one read of the broker's stored events after ours, at most LAG_PROBE of them,
        so a lag beyond it reads as LAG_PROBE."""
        frames = await self._client.event_frames_since(self.offset, limit=LAG_PROBE)
        newest = max((f.offset for f in frames if f.offset is not None), default=self.offset)
        lag = max(0, newest - self.offset)
        self._metrics.listener_lag.set(lag)
        self._metrics.listener_offset.set(self.offset)
        return lag

    async def watch_lag(self, interval_s: float, stop: asyncio.Event) -> None:
        """``measure_lag`` every ``interval_s`` until ``stop``; a broker that does not answer
        leaves the gauge as it was (its outage is reported by /readyz and the broker errors)."""
        while not stop.is_set():
            try:
                await self.measure_lag()
            except Exception as exc:  # the broker down, a bad answer: try again next time
                self._metrics.collector_errors.add(1, {"source": "broker"})
                log.debug("listener %r: lag not measured: %s", self.name, exc)
            await _sleep_unless(stop, interval_s)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def serve(
    settings: Settings,
    on_event: OnEvent = log_event,
    name: str = "default",
    stop: asyncio.Event | None = None,
    *,
    telemetry: Telemetry | None = None,
    temporal: Client | None = None,
) -> None:
    """Run a listener built from settings (what ``ordersaga broker-listener`` does). With
    ``telemetry``: its metrics and health on ``metrics_port`` (ready: Redis and ``temporal``
    answer; the broker reported), and the lag measured every ``metrics_interval_s``."""
    stop = stop or asyncio.Event()
    redis = redis_client(settings, decode_responses=True)
    try:
        await check_redis(redis, settings)
        async with (
            BrokerClient.from_settings(settings) as client,
            contextlib.AsyncExitStack() as extras,
        ):
            keys = RedisKeys(settings.redis_prefix)
            metrics = ProcessMetrics(telemetry.meter if telemetry else None)
            listener = BrokerListener(client, redis, keys, on_event, name, metrics=metrics)
            if telemetry is not None:
                required = {"redis": redis_check(redis)}
                if temporal is not None:
                    required["temporal"] = temporal_check(temporal)
                ops = OpsServer(
                    settings.metrics_host,
                    settings.metrics_port,
                    telemetry.exporter,
                    required,
                    {"broker": broker_check(client)},
                )
                await extras.enter_async_context(ops)
                lag = asyncio.create_task(listener.watch_lag(settings.metrics_interval_s, stop))
                extras.push_async_callback(_cancel, lag)
            await listener.run(stop)
    finally:
        await redis.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
