"""The conversation feed in Valkey: a stream per conversation to replay from, pub/sub for live fan-out.

Keys of one conversation share a hash tag (``{<id>}``) so the publish script touches a single cluster slot:
``<prefix>feed:{<id>}:seq`` (the sequence counter), ``<prefix>feed:{<id>}:log`` (the stream), the channel
``<prefix>feed:{<id>}``, and ``<prefix>feed:{<id>}:erased``, the tombstone erasure leaves so that nothing publishes
the feed back. Stream entry ids are ``<seq>-0``: the sequence number is the whole id, so a feed id maps to a
stream id without a lookup, ``XRANGE`` bounds are plain ``<n>-0``, and the smallest id Valkey accepts (``0-1``)
is never needed because sequences start at 1.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from typing import Any, get_args
from uuid import UUID

import msgspec
from valkey.asyncio import Valkey
from valkey.asyncio.connection import AbstractConnection
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import ValkeyError

from support.adapters.valkey.errors import cache_errors
from support.domain.feed import FeedEvent, FeedPayload, last_takeover
from support.ports.conversations import FeedErasedError, FeedLostError, TakenOverError
from support.ports.errors import CacheUnavailableError

_logger = logging.getLogger(__name__)

# Entries per XRANGE call when replaying or filling a gap.
_PAGE = 500
# Reconnect backoff of the shared pub/sub connection.
_RETRY_MIN_S = 0.05
_RETRY_MAX_S = 2.0

# The newest id of a feed: its counter, its newest retained entry, or its newest takeover, whichever is highest
# (any of them may have expired or been evicted alone). KEYS: counter, log, takeover.
_HEAD_OF = """
local function retained_or_taken()
  local known = tonumber(redis.call('GET', KEYS[3]) or '0')
  local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #newest > 0 then known = math.max(known, tonumber(string.match(newest[1][1], '^%d+'))) end
  return known
end
local function head_of()
  return math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), retained_or_taken())
end
"""
# Atomic, so ids are gap-free and strictly increasing per conversation whichever process publishes, and every
# process sees the channel messages in id order. Returns the first id, or 0 / -1 / -2 when refused (below).
# KEYS: counter, log, takeover (the id of the newest ownership change away from the assistant), tombstone.
# ARGV: channel, retention, ttl, owned_since (-1: unguarded), takeover offset in the batch (-1: none), payloads.
_PUBLISH = (
    _HEAD_OF
    + """
-- Refused for an erased conversation (-2), guarded or not: publishing would recreate the feed it erased.
if redis.call('EXISTS', KEYS[4]) == 1 then return -2 end
local count = #ARGV - 5
local owned_since = tonumber(ARGV[4])
if owned_since >= 0 then
  -- Refused when a person took over after the publisher last saw the assistant own the conversation (0), or
  -- when the feed lost its keys since (-1: ids restarted below what the publisher saw; a takeover may hide there).
  if tonumber(redis.call('GET', KEYS[3]) or '0') > owned_since then return 0 end
  if tonumber(redis.call('GET', KEYS[1]) or '0') < owned_since and head_of() < owned_since then return -1 end
end
local last = redis.call('INCRBY', KEYS[1], count)
if last == count then
  -- A fresh counter: when only the counter was lost (evicted), continue after the newest id still known.
  local known = retained_or_taken()
  if known > 0 then
    last = known + count
    redis.call('SET', KEYS[1], last)
  end
end
local first = last - count + 1
for i = 1, count do
  local id = first + i - 1
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id .. '-0', 'p', ARGV[5 + i])
  redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[5 + i])
end
local takeover = tonumber(ARGV[5])
if takeover >= 0 then redis.call('SET', KEYS[3], first + takeover) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return first
"""
)
_HEAD = _HEAD_OF + "return head_of()"


def feed_keys(key_prefix: str, conversation_id: UUID) -> tuple[str, str, str]:
    """A conversation's feed keys: its id counter, its retained log, and the id of its newest takeover.

    One hash tag, so a cluster keeps them in one slot (the publish script touches all three).
    """
    tag = f"{key_prefix}feed:{{{conversation_id}}}"
    return tag + ":seq", tag + ":log", tag + ":takeover"


def feed_tombstone(key_prefix: str, conversation_id: UUID) -> str:
    """The key whose presence marks a conversation's feed as erased: the publish script refuses to recreate it.

    In the feed's slot (same hash tag), so the script checks it atomically with the publish.
    """
    return f"{key_prefix}feed:{{{conversation_id}}}:erased"


class _Envelope(msgspec.Struct, frozen=True):
    event: str
    data: msgspec.Raw


_encoder = msgspec.json.Encoder()
_envelope_decoder = msgspec.json.Decoder(_Envelope)
_payload_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    kind.name: msgspec.json.Decoder(kind) for kind in get_args(FeedPayload)
}


def encode_payload(payload: FeedPayload) -> bytes:
    """``{"event": <name>, "data": <payload>}`` as JSON: the name tells the decoder which dataclass to build."""
    return _encoder.encode(_Envelope(payload.name, msgspec.Raw(_encoder.encode(payload))))


def decode_payload(data: bytes) -> FeedPayload:
    """The payload :func:`encode_payload` wrote.

    Raises:
        msgspec.DecodeError: not an encoded payload, or an event this version does not know.
    """
    envelope = _envelope_decoder.decode(data)
    decoder = _payload_decoders.get(envelope.event)
    if decoder is None:
        msg = f"unknown feed event {envelope.event!r}"
        raise msgspec.DecodeError(msg)
    payload: FeedPayload = decoder.decode(envelope.data)
    return payload


def _sequence_of(entry_id: bytes) -> int:
    return int(entry_id.partition(b"-")[0])


def _decode_message(data: bytes) -> FeedEvent | None:
    # Channel messages are "<id> <envelope>"; id 0 marks an ephemeral signal.
    head, _, body = data.partition(b" ")
    try:
        return FeedEvent(int(head), decode_payload(body))
    except (ValueError, msgspec.DecodeError):
        _logger.warning("skipping an undecodable feed message: %.80r", data)
        return None


class _Subscriber:
    """One local subscription's inbox, filled by the listener and drained by its iterator."""

    __slots__ = ("capacity", "channel", "error", "events", "live", "resync", "wakeup")

    def __init__(self, channel: bytes, capacity: int) -> None:
        self.channel = channel
        self.capacity = capacity
        self.events: deque[FeedEvent] = deque()
        # Set when live messages may have been missed: the iterator re-reads the stream after its last id.
        self.resync = False
        # False until the subscription is in place and the iterator has started reading the stream.
        self.live = False
        self.error: BaseException | None = None
        self.wakeup = asyncio.Event()

    def deliver(self, event: FeedEvent) -> None:
        if len(self.events) >= self.capacity:
            # A slow consumer: forget the backlog and re-read the stream later, instead of growing without bound.
            self.events.clear()
            self.resync = True
        else:
            self.events.append(event)
        self.wakeup.set()

    def request_resync(self) -> None:
        self.resync = True
        self.wakeup.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.wakeup.set()

    def check(self) -> None:
        if self.error is not None:
            raise CacheUnavailableError from self.error

    async def wait(self) -> None:
        self.check()
        self.wakeup.clear()
        await self.wakeup.wait()
        self.check()

    async def next(self) -> FeedEvent | None:
        """The next live event, or None when the stream must be re-read first."""
        while True:
            self.check()
            if self.resync:
                self.resync = False
                return None
            if self.events:
                return self.events.popleft()
            await self.wait()


class _Channel:
    __slots__ = ("ready", "subscribers")

    def __init__(self) -> None:
        self.subscribers: set[_Subscriber] = set()
        # True once the server confirmed the subscription on the current connection.
        self.ready = False


class _Link:
    """The current pub/sub connection and what it asked the server, to tell when a subscription is in place."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.subscribed: set[bytes] = set()
        # SUBSCRIBE/UNSUBSCRIBE commands per channel whose confirmation has not arrived yet.
        self.unconfirmed: dict[bytes, int] = {}
        self.awaiting_pong = False

    def note(self, channel: bytes, *, subscribe: bool) -> None:
        if subscribe:
            self.subscribed.add(channel)
        else:
            self.subscribed.discard(channel)
        self.unconfirmed[channel] = self.unconfirmed.get(channel, 0) + 1


class _Listener:
    """One pub/sub connection shared by every subscription of a bus, fanning messages out to local inboxes.

    A reader task owns the reads; subscribing tasks only send (UN)SUBSCRIBE, under a lock shared with
    reconnection. When the connection breaks, the reader reconnects and resubscribes; each resubscribed channel
    tells its subscribers to re-read the stream, which recovers what was published meanwhile. When Valkey stays
    unreachable for ``grace_s``, every subscriber fails with :class:`CacheUnavailableError`.
    """

    def __init__(self, client: Valkey, *, capacity: int, poll_s: float, grace_s: float) -> None:
        self._client = client
        self._capacity = capacity
        self._poll_s = poll_s
        self._grace_s = grace_s
        self._channels: dict[bytes, _Channel] = {}
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._closed = False

    async def join(self, channel: bytes) -> _Subscriber:
        """A subscriber of ``channel``, returned once the server delivers the channel's messages to us."""
        if self._closed:
            msg = "The event bus is closed."
            raise CacheUnavailableError(msg)
        subscriber = _Subscriber(channel, self._capacity)
        state = self._channels.setdefault(channel, _Channel())
        state.subscribers.add(subscriber)
        if self._reader is None:
            self._reader = asyncio.create_task(self._run(), name="event-bus-listener")
        try:
            await self._sync(channel)
            while not state.ready:
                await subscriber.wait()
        except BaseException:
            self.leave(subscriber)
            raise
        subscriber.live = True
        return subscriber

    def leave(self, subscriber: _Subscriber) -> None:
        """Stop delivering to ``subscriber``; the last one of a channel unsubscribes it (in the background)."""
        state = self._channels.get(subscriber.channel)
        if state is None or subscriber not in state.subscribers:
            return
        state.subscribers.discard(subscriber)
        if state.subscribers:
            return
        del self._channels[subscriber.channel]
        if not self._closed and self._link is not None:
            # Not awaited: a cancelled consumer must not wait on the lock (a reconnect may hold it).
            task = asyncio.create_task(self._sync(subscriber.channel))
            self._chores.add(task)
            task.add_done_callback(self._chores.discard)

    async def close(self) -> None:
        self._closed = True
        tasks = [task for task in (self._reader, *self._chores) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reader = None
        await self._drop(self._link)
        self._fail_all(CacheUnavailableError("The event bus was closed."))

    async def _sync(self, channel: bytes) -> None:
        # Make the server's subscription to ``channel`` match whether anyone here listens to it.
        async with self._lock:
            link = self._link
            if link is None:
                return  # the reader subscribes to every wanted channel when it connects
            wanted = channel in self._channels
            if wanted == (channel in link.subscribed):
                if wanted and not link.unconfirmed.get(channel):
                    # Still subscribed: the last subscriber left and this one came before the UNSUBSCRIBE went out.
                    self._channels[channel].ready = True
                return
            link.note(channel, subscribe=wanted)
            try:
                await link.connection.send_command(
                    "SUBSCRIBE" if wanted else "UNSUBSCRIBE", channel, check_health=False
                )
            except (ValkeyError, OSError):
                _logger.warning("the event bus's pub/sub connection failed; reconnecting", exc_info=True)
                await self._drop_locked(link)

    async def _run(self) -> None:
        down_since: float | None = None
        delay = _RETRY_MIN_S
        while True:
            link = self._link
            try:
                if link is None:
                    link = await self._connect()
                    down_since = None  # the outage is over; the backoff resets only once the server answers
                response = await link.connection.read_response(timeout=self._poll_s, disconnect_on_error=False)
                if response is None:
                    await self._ping(link)
                    continue
                delay = _RETRY_MIN_S
                link.awaiting_pong = False
                self._handle(link, response)
            except (ValkeyError, OSError) as error:
                await self._drop(link)
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    _logger.warning("the event bus lost its pub/sub connection (%s); reconnecting", error)
                if now - down_since >= self._grace_s:
                    self._fail_all(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)
            except Exception:
                # A bug must not silently end live delivery for the whole process: log, reconnect, carry on.
                _logger.exception("the event bus listener failed; reconnecting")
                await self._drop(link)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX_S)

    async def _connect(self) -> _Link:
        async with self._lock:
            pool = self._client.connection_pool
            # A dedicated connection, not one of the pool's: it stays in subscribed mode for the bus's lifetime,
            # and speaks RESP2 so messages arrive as plain [kind, channel, data] lists.
            options = {**pool.connection_kwargs, "protocol": 2, "decode_responses": False}
            connection: AbstractConnection = pool.connection_class(**options)
            try:
                await connection.connect()  # type: ignore[no-untyped-call]  # untyped in valkey-py
                link = _Link(connection)
                channels = list(self._channels)
                if channels:
                    for channel in channels:
                        link.note(channel, subscribe=True)
                    await connection.send_command("SUBSCRIBE", *channels, check_health=False)
            except BaseException:
                with contextlib.suppress(ValkeyError, OSError):
                    await connection.disconnect(nowait=True)
                raise
            self._link = link
            return link

    async def _drop(self, link: _Link | None) -> None:
        async with self._lock:
            await self._drop_locked(link)

    async def _drop_locked(self, link: _Link | None) -> None:
        if link is None:
            return
        if self._link is link:
            self._link = None
            for state in self._channels.values():
                state.ready = False
        with contextlib.suppress(ValkeyError, OSError):
            await link.connection.disconnect(nowait=True)

    async def _ping(self, link: _Link) -> None:
        # Idle for a poll period: a PING unanswered by the next one means the connection is dead (half-open).
        if link.awaiting_pong:
            msg = "no answer to PING on the pub/sub connection"
            raise ValkeyConnectionError(msg)
        link.awaiting_pong = True
        async with self._lock:
            if self._link is link:
                await link.connection.send_command("PING", check_health=False)

    def _handle(self, link: _Link, response: object) -> None:
        if link is not self._link or not isinstance(response, list) or len(response) != 3:  # noqa: PLR2004
            return  # a PONG, or a message read from a connection already dropped
        kind, channel, data = response
        if kind == b"message":
            state = self._channels.get(channel)
            event = _decode_message(data) if state is not None else None
            if state is not None and event is not None:
                for subscriber in state.subscribers:
                    subscriber.deliver(event)
        elif kind in {b"subscribe", b"unsubscribe"}:
            self._confirm(link, channel)

    def _confirm(self, link: _Link, channel: bytes) -> None:
        left = link.unconfirmed.get(channel, 0) - 1
        if left > 0:
            link.unconfirmed[channel] = left
            return
        link.unconfirmed.pop(channel, None)
        state = self._channels.get(channel)
        # The server answers in order, so once nothing is pending its state is what we last asked for.
        if state is None or state.ready or channel not in link.subscribed:
            return
        state.ready = True
        for subscriber in state.subscribers:
            if subscriber.live:
                subscriber.request_resync()  # resubscribed after a reconnect: messages may have been missed
            else:
                subscriber.wakeup.set()

    def _fail_all(self, error: BaseException) -> None:
        for state in self._channels.values():
            for subscriber in state.subscribers:
                subscriber.fail(error)


class ValkeyEventBus:
    """Per-conversation feeds: retained in streams (about ``retention`` events, ``ttl_s`` after the last one).

    Live delivery uses one pub/sub connection per bus, whatever the number of subscriptions; call
    :meth:`close` to stop it. Tuning: ``queue_size`` bounds each subscription's backlog (beyond it, the
    subscription re-reads the stream); ``health_check_s`` is how long the connection may stay silent before a
    PING; ``reconnect_grace_s`` is how long subscriptions wait for a lost connection to come back before they
    fail; ``read_concurrency`` is how many stream reads subscriptions may have in flight together.
    """

    def __init__(
        self,
        client: Valkey,
        key_prefix: str,
        *,
        retention: int,
        ttl_s: int,
        queue_size: int = 256,
        health_check_s: float = 10.0,
        reconnect_grace_s: float = 5.0,
        read_concurrency: int = 16,
    ) -> None:
        self._client = client
        self._key_prefix = key_prefix
        self._retention = retention
        self._ttl_s = ttl_s
        self._publish = client.register_script(_PUBLISH)
        self._head = client.register_script(_HEAD)
        self._listener = _Listener(client, capacity=queue_size, poll_s=health_check_s, grace_s=reconnect_grace_s)
        # Subscriptions start, and catch up after a reconnect, all at once: bounding their reads keeps a burst of
        # a thousand within the client's connection pool (which refuses, rather than queues, beyond its size).
        self._reads = asyncio.Semaphore(read_concurrency)

    def channel(self, conversation_id: UUID) -> bytes:
        """The pub/sub channel of a conversation's feed."""
        return f"{self._key_prefix}feed:{{{conversation_id}}}".encode()

    async def publish(
        self, conversation_id: UUID, payloads: Sequence[FeedPayload], *, owned_since: int | None = None
    ) -> list[FeedEvent]:
        if not payloads:
            return []
        encoded = [encode_payload(payload) for payload in payloads]
        takeover = last_takeover(payloads)
        guard = -1 if owned_since is None else owned_since
        args: list[bytes | int] = [
            self.channel(conversation_id),
            self._retention,
            self._ttl_s,
            guard,
            -1 if takeover is None else takeover,
            *encoded,
        ]
        keys = [*feed_keys(self._key_prefix, conversation_id), feed_tombstone(self._key_prefix, conversation_id)]
        async with cache_errors():
            first = int(await self._publish(keys=keys, args=args))
        if first == 0:
            raise TakenOverError
        if first == -1:
            raise FeedLostError
        if first < 0:
            raise FeedErasedError
        return [FeedEvent(first + offset, payload) for offset, payload in enumerate(payloads)]

    async def head(self, conversation_id: UUID) -> int:
        async with cache_errors():
            return int(await self._head(keys=feed_keys(self._key_prefix, conversation_id)))

    async def signal(self, conversation_id: UUID, payload: FeedPayload) -> None:
        async with cache_errors():
            await self._client.publish(self.channel(conversation_id), b"0 " + encode_payload(payload))

    def subscribe(self, conversation_id: UUID, *, after: int | None) -> AsyncGenerator[FeedEvent, None]:
        return self._follow(conversation_id, after)

    async def close(self) -> None:
        """Stop live delivery; open subscriptions end with :class:`CacheUnavailableError`."""
        await self._listener.close()

    async def _follow(self, conversation_id: UUID, after: int | None) -> AsyncGenerator[FeedEvent, None]:
        # Live delivery first, then the stream: whatever is published meanwhile arrives live, and ids tell
        # duplicates (skipped) and gaps (read back from the stream) apart.
        keys = feed_keys(self._key_prefix, conversation_id)
        log = keys[1]
        subscriber = await self._listener.join(self.channel(conversation_id))
        try:
            async with self._reads, cache_errors():
                head = int(await self._head(keys=keys))
            if after is None:
                last = head
            else:
                # An id beyond the head is from before the feed expired and restarted at 1: replay it all.
                last = 0 if after > head else max(after, 0)
                for event in await self._range(log, last + 1, None):
                    yield event
                    last = event.id
            while True:
                live = await subscriber.next()
                if live is None:
                    missed = await self._range(log, last + 1, None)
                elif live.id == 0:
                    yield live
                    continue
                elif live.id <= last:
                    continue
                else:
                    missed = await self._range(log, last + 1, live.id - 1) if live.id > last + 1 else []
                    missed.append(live)
                for event in missed:
                    if event.id > last:
                        yield event
                        last = event.id
        finally:
            self._listener.leave(subscriber)

    async def _range(self, log: str, first: int, last: int | None) -> list[FeedEvent]:
        # Retained events with ids in [first, last] (to the end when last is None); trimmed ones are gone.
        events: list[FeedEvent] = []
        end = "+" if last is None else f"{last}-0"
        while last is None or first <= last:
            async with self._reads, cache_errors():
                entries = await self._client.xrange(log, min=f"{first}-0", max=end, count=_PAGE)
            for entry_id, fields in entries:
                sequence = _sequence_of(entry_id)
                try:
                    events.append(FeedEvent(sequence, decode_payload(fields[b"p"])))
                except (KeyError, msgspec.DecodeError):
                    _logger.warning("skipping undecodable feed entry %s of %s", entry_id, log)
                first = sequence + 1
            if len(entries) < _PAGE:
                break
        return events
