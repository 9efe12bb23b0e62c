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

With ``stream="websocket"`` it reads Alpaca's trading stream instead, which has no offsets and
no replay (docs/BROKER.md, "The listener's two modes"):
- Events carry no offset; nothing is saved in Redis. The de-duplication key is the order's state,
  ``(order id, status, filled_qty)``: an event whose state was already delivered, or whose
  ``filled_qty`` is below one already delivered, or that follows a delivered final state, is
  dropped (``execution_id`` is kept on the event for the callback, not used as the key: the
  states the listener looks up have none).
- After every (re)connect, once the broker confirmed the listen, it looks up every order that may
  have changed while it was not listening: the broker's open orders (``GET /v2/orders?status=open``,
  page by page) and every order it has seen (delivered or tried) whose last delivered state was
  not final; each one's current state is offered like an event. So a fill during the gap
  reaches the callback even when no later event for its order comes. The same lookup runs every
  ``resync_s`` while connected (a safety net for an event the broker never sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from decimal import Decimal

import redis.asyncio as aioredis
from temporalio.client import Client

from core.broker_client import (
    BrokerAuthError,
    BrokerClient,
    BrokerOrder,
    EventFrame,
    InvalidTradeEvent,
    OrderNotFound,
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
# Order states remembered for de-duplication on the websocket (oldest forgotten first).
MAX_REMEMBERED_ORDERS = 100_000
PAGE = 500  # GET /v2/orders' largest page
# The statuses after which an order never changes again (for the de-duplication only; the saga
# reads core.statuses): replaced is final for the replaced order.
_FINAL = frozenset({"filled", "canceled", "expired", "rejected", "replaced"})


async def log_event(event: TradeEvent) -> None:
    """The default callback: one log line per event (the saga replaces it with a signal)."""
    order = event.order
    log.info(
        "event %s %s %s order=%s client_order_id=%s %s filled=%s/%s avg=%s",
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
        stream: str = "sse",
        stream_url: str | None = None,
        gap_lookup: bool = True,
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
        if stream not in ("sse", "websocket"):
            raise ValueError(f"stream must be sse or websocket, not {stream!r}")
        self.stream = stream
        self.stream_url = stream_url or None
        self.gap_lookup = gap_lookup  # off only to prove the tests see the gap
        self.looked_up = 0  # order states offered by lookups
        self._states: OrderedDict[str, tuple[str, Decimal]] = OrderedDict()
        self._watch: set[str] = set()  # seen, last delivered state not final
        self._delivering = asyncio.Lock()

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
                if self.stream == "websocket":
                    await self._consume_socket()
                else:
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
        if event.offset is not None:  # always: parse_trade_event required it
            await self._advance(event.offset)

    # -- the websocket (Alpaca's trading stream) ---------------------------------------------

    async def _consume_socket(self) -> None:
        """Read the websocket until it ends; the open orders are looked up once it listens and
        every ``resync_s`` after."""
        frames = self._client.trade_stream_frames(self.stream_url, self.idle_timeout_s / 2)
        self._stream_ended = False
        try:
            if await anext(frames) is not None:
                raise InvalidTradeEvent("the stream sent an event before it listened")
            await self._look_up()  # failing here reconnects: the gap is not covered yet
            sweeper = asyncio.create_task(self._look_up_every(self.resync_s))
            try:
                async for frame in frames:
                    if frame is not None:
                        await self._accept_socket_frame(frame)
                self._stream_ended = True
            finally:
                sweeper.cancel()
                await asyncio.gather(sweeper, return_exceptions=True)
        finally:
            await frames.aclose()

    async def _accept_socket_frame(self, frame: EventFrame) -> None:
        try:
            event = parse_trade_event(frame.text, offset_required=False)
        except InvalidTradeEvent as exc:
            await self._set_aside(frame, str(exc))
            return
        await self._offer(event)

    async def _look_up_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self._look_up()
            except Exception as exc:  # the next one, or the next reconnect, tries again
                log.warning(
                    "listener %r: lookup failed: %s: %s", self.name, type(exc).__name__, exc
                )

    async def _look_up(self) -> None:
        """Offer the current state of every order that may have changed unseen."""
        if not self.gap_lookup:
            return
        found: dict[str, BrokerOrder] = {}
        after: str | None = None
        while True:
            page = await self._client.list_orders("open", PAGE, after, "asc")
            found.update((o.id, o) for o in page)
            if len(page) < PAGE or page[-1].created_at is None:
                break
            after = page[-1].created_at.isoformat().replace("+00:00", "Z")
        for order_id in sorted(self._watch - found.keys()):
            try:
                found[order_id] = await self._client.get_order(order_id)
            except OrderNotFound:
                self._watch.discard(order_id)
        for order in found.values():
            name = {"filled": "fill", "partially_filled": "partial_fill"}.get(order.status)
            event = TradeEvent(event=name or order.status, order=order, timestamp=order.updated_at)
            if await self._offer(event):
                self.looked_up += 1

    async def _offer(self, event: TradeEvent) -> bool:
        """Deliver ``event`` unless its order's state was delivered already (or a later one);
        True when delivered. One delivery at a time: the stream and the lookups share it."""
        order = event.order
        async with self._delivering:
            last = self._states.get(order.id)
            if last is not None and (
                (order.status, order.filled_qty) == last
                or order.filled_qty < last[1]
                or last[0] in _FINAL
            ):
                self.duplicates += 1
                return False
            self._watch.add(order.id)  # before the callback: a failure is looked up again
            await self._on_event(event)
            self.delivered += 1
            self._states[order.id] = (order.status, order.filled_qty)
            self._states.move_to_end(order.id)
            if len(self._states) > MAX_REMEMBERED_ORDERS:
                self._states.popitem(last=False)
            if order.status in _FINAL:
                self._watch.discard(order.id)
            return True

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
            listener = BrokerListener(
                client,
                redis,
                keys,
                on_event,
                name,
                metrics=metrics,
                stream=settings.broker_stream,
                stream_url=settings.broker_stream_url or None,
            )
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
                if listener.stream == "sse":  # the lag is in stored offsets: SSE's only
                    lag = asyncio.create_task(listener.watch_lag(settings.metrics_interval_s, stop))
                    extras.push_async_callback(_cancel, lag)
            await listener.run(stop)
    finally:
        await redis.aclose()


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
