"""The event bus contract (ordered, retained, resumable feed with live fan-out), against Valkey and the fake.

The Valkey-only tests at the end cover what a single process cannot show: processes that publish and follow
through separate connections, one shared pub/sub connection for many subscriptions, slow consumers, and a lost
pub/sub connection.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast
from urllib.parse import urlsplit
from uuid import UUID

import pytest
from valkey.asyncio import Valkey

from support.adapters.memory.customer_memory import InMemoryHotStateEraser
from support.adapters.memory.events import InMemoryEventBus
from support.adapters.valkey.erasure import ValkeyHotStateEraser
from support.adapters.valkey.events import ValkeyEventBus, encode_payload, feed_keys
from support.devservers.postgres import free_port
from support.domain.conversations import (
    AnswerStatus,
    Citation,
    ConversationStatus,
    Message,
    MessageRole,
    ReasonCode,
    TokenUsage,
)
from support.domain.feed import (
    CitationAdded,
    FeedEvent,
    FeedPayload,
    HandoffChanged,
    MessagePosted,
    ReplyDelta,
    ReplyDone,
    StreamFailed,
    ToolUsed,
    Typing,
)
from support.domain.ids import new_id
from support.ports.conversations import EventBus, FeedErasedError, FeedLostError, TakenOverError
from support.ports.errors import CacheUnavailableError

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RETENTION = 10
# Signals the tests send to learn that a subscription is live; never part of what a test checks.
PROBE = Typing(role="probe", active=True)
WAIT_S = 5.0  # an upper bound against hangs on a loaded machine, not a latency expectation


@dataclass
class Feed:
    bus: EventBus
    # Listeners of a conversation as the backend sees them: subscriptions (memory), or PUBSUB NUMSUB of the
    # channel (Valkey, where one connection serves every subscription of a bus).
    listeners: Callable[[UUID], Awaitable[int]]
    # The backend's hot state eraser, run on one conversation (``gone``: after its records were deleted).
    erase: Callable[[UUID, bool], Awaitable[None]]


@pytest.fixture
def memory_feed() -> Feed:
    bus = InMemoryEventBus(retention=RETENTION)
    eraser = InMemoryHotStateEraser(bus=bus)

    async def listeners(conversation_id: UUID) -> int:
        return bus.subscriber_count(conversation_id)

    async def erase(conversation_id: UUID, gone: bool) -> None:
        await eraser.erase(new_id(), [conversation_id], gone=gone)

    return Feed(bus, listeners, erase)


async def numsub(client: Valkey, channel: bytes) -> int:
    counts = await client.pubsub_numsub(channel)
    return int(counts[0][1])


@pytest.fixture
async def valkey_feed(valkey: Valkey) -> AsyncIterator[Feed]:
    bus = ValkeyEventBus(valkey, "test:", retention=RETENTION, ttl_s=60)
    eraser = ValkeyHotStateEraser(valkey, "test:")

    async def listeners(conversation_id: UUID) -> int:
        return await numsub(valkey, bus.channel(conversation_id))

    async def erase(conversation_id: UUID, gone: bool) -> None:
        await eraser.erase(new_id(), [conversation_id], gone=gone)

    yield Feed(bus, listeners, erase)
    await bus.close()


@pytest.fixture(params=["memory", pytest.param("valkey", marks=pytest.mark.valkey)])
def feed(request: pytest.FixtureRequest) -> Feed:
    result: Feed = request.getfixturevalue(f"{request.param}_feed")
    return result


def follow(bus: EventBus, conversation_id: UUID, after: int | None) -> AsyncGenerator[FeedEvent, None]:
    return bus.subscribe(conversation_id, after=after)


@dataclass
class Reader:
    """Drains a subscription from a task, so a test can wait with a timeout without cancelling the subscription."""

    bus: EventBus
    conversation_id: UUID
    subscription: AsyncGenerator[FeedEvent, None]
    inbox: asyncio.Queue[FeedEvent | BaseException] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    live: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(cls, bus: EventBus, conversation_id: UUID, after: int | None) -> "Reader":
        reader = cls(bus, conversation_id, follow(bus, conversation_id, after))
        reader.task = asyncio.create_task(reader._pump())
        await reader._until_live()
        return reader

    async def _pump(self) -> None:
        try:
            async for event in self.subscription:
                if event.payload != PROBE:
                    self.inbox.put_nowait(event)
                elif not self.live.is_set():
                    self.live.set()
        except Exception as error:  # noqa: BLE001 - handed to the test
            self.inbox.put_nowait(error)

    async def _until_live(self) -> None:
        # Signal until a probe comes back: from then on, everything published reaches this subscription.
        async with asyncio.timeout(WAIT_S):
            while not self.live.is_set():
                await self.bus.signal(self.conversation_id, PROBE)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self.live.wait()
                if self.task is not None and self.task.done():
                    break  # failed: the error waits in the inbox

    async def _next(self) -> FeedEvent:
        item = await self.inbox.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def take(self, count: int) -> list[FeedEvent]:
        async with asyncio.timeout(WAIT_S):
            return [await self._next() for _ in range(count)]

    async def take_until(self, last_id: int) -> list[FeedEvent]:
        events: list[FeedEvent] = []
        async with asyncio.timeout(WAIT_S):
            while not events or events[-1].id != last_id:
                events.append(await self._next())
        return events

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def readers() -> AsyncIterator[list[Reader]]:
    """Readers a test starts (append them) are stopped at its end, whatever happens."""
    started: list[Reader] = []
    yield started
    for reader in started:
        await reader.stop()


async def start(readers: list[Reader], bus: EventBus, conversation_id: UUID, after: int | None) -> Reader:
    reader = await Reader.start(bus, conversation_id, after)
    readers.append(reader)
    return reader


async def eventually(condition: Callable[[], Awaitable[bool]], within_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + within_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def deltas(*texts: str) -> list[FeedPayload]:
    return [ReplyDelta(text) for text in texts]


def ids(events: list[FeedEvent]) -> list[int]:
    return [event.id for event in events]


def every_payload() -> list[FeedPayload]:
    conversation_id = new_id()
    citation = Citation(new_id(), 2, new_id(), "Returns", "https://help.example/returns", "within 30 days")
    customer = Message(new_id(), conversation_id, MessageRole.CUSTOMER, "Can I return it? ✓", NOW, metadata={"a": "b"})
    reply = Message(
        new_id(),
        conversation_id,
        MessageRole.ASSISTANT,
        "Yes [1].",
        NOW,
        reply_to=(customer.id,),
        citations=(citation,),
        answer_status=AnswerStatus.ANSWERED,
        usage=TokenUsage(10, 3),
        ttft_ms=4.5,
        total_ms=9.0,
    )
    return [
        MessagePosted(customer),
        ToolUsed("search", "done"),
        ReplyDelta("Yes "),
        CitationAdded(citation),
        ReplyDone(reply),
        HandoffChanged(ConversationStatus.PENDING_HUMAN, ReasonCode.CUSTOMER_REQUEST),
        HandoffChanged(ConversationStatus.BOT, None),
        StreamFailed(503, "llm_unavailable", "Unavailable", "try again"),
        Typing("agent", active=False),
    ]


async def test_ids_start_at_one_and_increase_per_conversation(feed: Feed) -> None:
    conversation_id, other_id = new_id(), new_id()
    first = await feed.bus.publish(conversation_id, deltas("a", "b"))
    assert first == [FeedEvent(1, ReplyDelta("a")), FeedEvent(2, ReplyDelta("b"))]
    assert ids(await feed.bus.publish(conversation_id, deltas("c"))) == [3]
    assert ids(await feed.bus.publish(other_id, deltas("x"))) == [1]
    assert await feed.bus.publish(conversation_id, []) == []
    assert ids(await feed.bus.publish(conversation_id, deltas("d"))) == [4]


async def test_head_is_the_newest_id(feed: Feed) -> None:
    conversation_id = new_id()
    assert await feed.bus.head(conversation_id) == 0
    await feed.bus.publish(conversation_id, deltas("a", "b", "c"))
    assert await feed.bus.head(conversation_id) == 3


async def test_a_takeover_after_owned_since_refuses_the_assistants_events(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    await feed.bus.publish(conversation_id, deltas("before"))
    owned_since = await feed.bus.head(conversation_id)
    reader = await start(readers, feed.bus, conversation_id, after=0)
    assert ids(await feed.bus.publish(conversation_id, deltas("one"), owned_since=owned_since)) == [2]
    # An agent takes over (another publisher, unguarded): the assistant's next words are refused, not appended.
    await feed.bus.publish(conversation_id, [HandoffChanged(ConversationStatus.HUMAN, None)])
    with pytest.raises(TakenOverError):
        await feed.bus.publish(conversation_id, deltas("two"), owned_since=owned_since)
    # Refused for good: handing back does not revive a reply written under the old ownership...
    await feed.bus.publish(conversation_id, [HandoffChanged(ConversationStatus.BOT, None)])
    with pytest.raises(TakenOverError):
        await feed.bus.publish(conversation_id, deltas("three"), owned_since=owned_since)
    # ...while a turn that looked after the handback may speak.
    later = await feed.bus.head(conversation_id)
    assert ids(await feed.bus.publish(conversation_id, deltas("four"), owned_since=later)) == [5]
    seen = await reader.take(5)
    assert [event.payload for event in seen if isinstance(event.payload, ReplyDelta)] == deltas("before", "one", "four")


async def test_ownership_changes_that_keep_the_assistant_do_not_refuse(feed: Feed) -> None:
    conversation_id = new_id()
    owned_since = await feed.bus.head(conversation_id)
    await feed.bus.publish(conversation_id, [HandoffChanged(ConversationStatus.BOT, None)])
    assert ids(await feed.bus.publish(conversation_id, deltas("still mine"), owned_since=owned_since)) == [2]
    # A takeover within the guarded batch itself (the turn handing over) is the turn's own: published.
    own: list[FeedPayload] = [
        ReplyDelta("passing you on"),
        HandoffChanged(ConversationStatus.PENDING_HUMAN, ReasonCode.FRUSTRATION),
    ]
    assert ids(await feed.bus.publish(conversation_id, own, owned_since=owned_since)) == [3, 4]
    with pytest.raises(TakenOverError):
        await feed.bus.publish(conversation_id, deltas("after it"), owned_since=owned_since)


async def test_an_erased_feed_refuses_every_publish_and_stays_gone(feed: Feed, readers: list[Reader]) -> None:
    # A customer's erasure, once their records are deleted, leaves a tombstone: a reply still being written, or an
    # agent's late announcement, must not publish the erased feed (and the customer's words) back into existence.
    conversation_id, other_id = new_id(), new_id()
    await feed.bus.publish(conversation_id, deltas("your order NW-1", "ships Monday"))
    await feed.bus.publish(other_id, deltas("kept"))
    follower = await start(readers, feed.bus, conversation_id, after=None)
    owned_since = await feed.bus.head(conversation_id)

    await feed.erase(conversation_id, True)

    for guard in (None, 0, owned_since):
        with pytest.raises(FeedErasedError) as refused:
            await feed.bus.publish(conversation_id, deltas("NW-1 again"), owned_since=guard)
        assert refused.value.code == "conversation_not_found"
    with pytest.raises(FeedErasedError):
        await feed.bus.publish(conversation_id, [HandoffChanged(ConversationStatus.HUMAN, None)])
    assert await feed.bus.head(conversation_id) == 0
    # Nothing to replay, and the open subscription heard nothing of the refused publishes: a signal sent after them
    # is the first thing either one gets.
    replay = await start(readers, feed.bus, conversation_id, after=0)
    mark = Typing("agent", active=True)
    await feed.bus.signal(conversation_id, mark)
    assert await replay.take(1) == [FeedEvent(0, mark)]
    assert await follower.take(1) == [FeedEvent(0, mark)]
    # Another conversation's feed goes on.
    assert ids(await feed.bus.publish(other_id, deltas("more"))) == [2]


async def test_a_feed_erased_before_its_records_are_deleted_may_begin_again(feed: Feed) -> None:
    # Erasure's first pass runs before the records are deleted (which may still fail): no tombstone yet.
    conversation_id = new_id()
    await feed.bus.publish(conversation_id, deltas("a", "b"))

    await feed.erase(conversation_id, False)

    assert await feed.bus.head(conversation_id) == 0
    assert ids(await feed.bus.publish(conversation_id, deltas("c"), owned_since=0)) == [1]


async def test_replay_returns_every_payload_type_as_published(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    published = await feed.bus.publish(conversation_id, every_payload())
    reader = await start(readers, feed.bus, conversation_id, after=0)
    assert await reader.take(len(published)) == published


async def test_resumes_after_a_given_id_then_goes_live(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    await feed.bus.publish(conversation_id, deltas("1", "2", "3", "4", "5"))
    reader = await start(readers, feed.bus, conversation_id, after=3)
    assert await reader.take(2) == [FeedEvent(4, ReplyDelta("4")), FeedEvent(5, ReplyDelta("5"))]
    await feed.bus.publish(conversation_id, deltas("6"))
    assert await reader.take(1) == [FeedEvent(6, ReplyDelta("6"))]


async def test_after_none_starts_with_the_next_event(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    await feed.bus.publish(conversation_id, deltas("old", "older"))
    reader = await start(readers, feed.bus, conversation_id, after=None)
    await feed.bus.publish(conversation_id, deltas("new"))
    assert await reader.take(1) == [FeedEvent(3, ReplyDelta("new"))]


async def test_after_none_on_a_new_conversation_starts_at_one(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    reader = await start(readers, feed.bus, conversation_id, after=None)
    await feed.bus.publish(conversation_id, deltas("first"))
    assert ids(await reader.take(1)) == [1]


async def test_an_id_beyond_the_head_replays_what_is_retained(feed: Feed, readers: list[Reader]) -> None:
    # A Last-Event-ID from before the feed expired and restarted must not silence the stream.
    conversation_id = new_id()
    await feed.bus.publish(conversation_id, deltas("a", "b"))
    reader = await start(readers, feed.bus, conversation_id, after=99)
    assert ids(await reader.take(2)) == [1, 2]


async def test_every_subscriber_receives_every_event(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    await feed.bus.publish(conversation_id, deltas("before"))
    early = await start(readers, feed.bus, conversation_id, after=0)
    late = await start(readers, feed.bus, conversation_id, after=None)
    await feed.bus.publish(conversation_id, deltas("x", "y"))
    assert ids(await early.take(3)) == [1, 2, 3]
    assert ids(await late.take(2)) == [2, 3]
    assert await feed.listeners(conversation_id) >= 1


async def test_concurrent_publishers_get_unique_increasing_ids(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    reader = await start(readers, feed.bus, conversation_id, after=0)
    batches = await asyncio.gather(*(feed.bus.publish(conversation_id, deltas(f"{n}a", f"{n}b")) for n in range(50)))
    for n, batch in enumerate(batches):
        assert [event.payload for event in batch] == deltas(f"{n}a", f"{n}b")
        assert batch[1].id == batch[0].id + 1  # one call's payloads get consecutive ids
    assert sorted(event.id for batch in batches for event in batch) == list(range(1, 101))
    received = await reader.take(100)
    assert ids(received) == list(range(1, 101))
    assert sorted(received, key=lambda event: event.id) == sorted(
        (event for batch in batches for event in batch), key=lambda event: event.id
    )


async def test_signals_reach_live_subscribers_only(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    reader = await start(readers, feed.bus, conversation_id, after=None)
    await feed.bus.publish(conversation_id, deltas("a"))
    await feed.bus.signal(conversation_id, Typing("agent", active=True))
    await feed.bus.publish(conversation_id, deltas("b"))
    assert await reader.take(3) == [
        FeedEvent(1, ReplyDelta("a")),
        FeedEvent(0, Typing("agent", active=True)),
        FeedEvent(2, ReplyDelta("b")),
    ]
    replay = await start(readers, feed.bus, conversation_id, after=0)
    assert ids(await replay.take(2)) == [1, 2]  # the signal was not retained and took no id


async def test_retention_drops_the_oldest_events(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    for start_at in range(0, 250, 50):
        await feed.bus.publish(conversation_id, deltas(*(str(n) for n in range(start_at, start_at + 50))))
    reader = await start(readers, feed.bus, conversation_id, after=0)
    retained = await reader.take_until(250)
    # Valkey trims approximately (whole stream nodes), so at least the newest RETENTION events remain.
    assert len(retained) >= RETENTION
    assert retained[0].id > 1
    assert ids(retained) == list(range(retained[0].id, 251))
    assert retained[-1].payload == ReplyDelta("249")


async def test_closing_a_subscription_removes_its_listener(feed: Feed) -> None:
    conversation_id = new_id()
    await feed.bus.publish(conversation_id, deltas("a"))
    first, second = follow(feed.bus, conversation_id, after=0), follow(feed.bus, conversation_id, after=0)
    assert (await anext(first)).id == 1
    assert (await anext(second)).id == 1
    assert await feed.listeners(conversation_id) >= 1
    await first.aclose()
    await feed.bus.publish(conversation_id, deltas("b"))
    assert (await anext(second)).id == 2  # the other subscription is unaffected
    await second.aclose()
    await eventually(lambda: listening(feed, conversation_id, 0))


async def test_cancelling_the_consumer_removes_its_listener(feed: Feed, readers: list[Reader]) -> None:
    conversation_id = new_id()
    reader = await start(readers, feed.bus, conversation_id, after=0)
    assert await feed.listeners(conversation_id) == 1
    await reader.stop()
    await eventually(lambda: listening(feed, conversation_id, 0))
    again = await start(readers, feed.bus, conversation_id, after=None)  # and a new one works
    await feed.bus.publish(conversation_id, deltas("a"))
    assert ids(await again.take(1)) == [1]


# Valkey only ------------------------------------------------------------------------------------------------


@pytest.fixture
async def second_client(valkey_url: str) -> AsyncIterator[Valkey]:
    """Another process's connection pool."""
    client = Valkey.from_url(valkey_url)
    yield client
    await client.aclose()


@pytest.mark.valkey
async def test_processes_see_each_others_events(valkey: Valkey, second_client: Valkey, readers: list[Reader]) -> None:
    here = ValkeyEventBus(valkey, "test:", retention=RETENTION, ttl_s=60)
    there = ValkeyEventBus(second_client, "test:", retention=RETENTION, ttl_s=60)
    try:
        conversation_id = new_id()
        watching_here = await start(readers, here, conversation_id, after=0)
        watching_there = await start(readers, there, conversation_id, after=0)
        batches = await asyncio.gather(
            *(bus.publish(conversation_id, deltas(str(n))) for n in range(20) for bus in (here, there))
        )
        assert sorted(batch[0].id for batch in batches) == list(range(1, 41))
        assert ids(await watching_here.take(40)) == list(range(1, 41))
        assert ids(await watching_there.take(40)) == list(range(1, 41))
    finally:
        for reader in readers:
            await reader.stop()
        await here.close()
        await there.close()


@pytest.mark.valkey
async def test_a_feed_that_lost_its_keys_since_the_head_was_read_refuses_guarded_words(valkey: Valkey) -> None:
    bus = ValkeyEventBus(valkey, "test:", retention=RETENTION, ttl_s=60)
    conversation_id = new_id()
    await bus.publish(conversation_id, deltas("a", "b", "c", "d", "e"))
    owned_since = await bus.head(conversation_id)
    # The feed's keys expire (or are evicted) before a takeover is announced: its ids start again at 1.
    await valkey.delete(*await valkey.keys(f"test:feed:{{{conversation_id}}}*"))
    await bus.publish(conversation_id, [HandoffChanged(ConversationStatus.HUMAN, None)])
    with pytest.raises(FeedLostError):
        await bus.publish(conversation_id, deltas("after the takeover"), owned_since=owned_since)
    await bus.close()


@pytest.mark.valkey
async def test_a_feed_that_lost_its_keys_without_a_takeover_is_lost_not_taken_over(valkey: Valkey) -> None:
    bus = ValkeyEventBus(valkey, "test:", retention=RETENTION, ttl_s=60)
    conversation_id = new_id()
    await bus.publish(conversation_id, deltas("a", "b", "c"))
    owned_since = await bus.head(conversation_id)
    await valkey.delete(*await valkey.keys(f"test:feed:{{{conversation_id}}}*"))
    with pytest.raises(FeedLostError):
        await bus.publish(conversation_id, deltas("d"), owned_since=owned_since)
    assert ids(await bus.publish(conversation_id, deltas("unguarded"))) == [1]
    await bus.close()


@pytest.mark.valkey
async def test_a_takeover_id_that_outlived_the_feed_does_not_refuse_later_turns(valkey: Valkey) -> None:
    bus = ValkeyEventBus(valkey, "test:", retention=RETENTION, ttl_s=60)
    conversation_id = new_id()
    await bus.publish(conversation_id, [*deltas("a", "b"), HandoffChanged(ConversationStatus.HUMAN, None)])
    await bus.publish(conversation_id, [HandoffChanged(ConversationStatus.BOT, None)])
    # The counter and the log are evicted, the takeover's id (3) is not: ids go on after it, and a turn that
    # reads the head now may speak.
    await valkey.delete(f"test:feed:{{{conversation_id}}}:seq", f"test:feed:{{{conversation_id}}}:log")
    owned_since = await bus.head(conversation_id)
    assert owned_since == 3
    assert ids(await bus.publish(conversation_id, deltas("hello"), owned_since=owned_since)) == [4]
    await bus.close()


async def pubsub_connections(client: Valkey) -> int:
    return len(await client.client_list(_type="pubsub"))


@pytest.mark.valkey
async def test_one_pubsub_connection_serves_every_subscription(
    valkey: Valkey, valkey_feed: Feed, readers: list[Reader]
) -> None:
    before = await pubsub_connections(valkey)
    conversations = [new_id() for _ in range(20)]
    followers = [await start(readers, valkey_feed.bus, conversation_id, after=0) for conversation_id in conversations]
    assert await pubsub_connections(valkey) == before + 1
    await asyncio.gather(*(valkey_feed.bus.publish(conversation_id, deltas("hi")) for conversation_id in conversations))
    for reader in followers:
        assert ids(await reader.take(1)) == [1]


@pytest.mark.valkey
async def test_an_idle_subscription_keeps_its_connection(valkey: Valkey, readers: list[Reader]) -> None:
    # Silence past the health check interval sends PINGs; their answers must not be taken for failures.
    bus = ValkeyEventBus(valkey, "test:", retention=RETENTION, ttl_s=60, health_check_s=0.05)
    try:
        conversation_id = new_id()
        reader = await start(readers, bus, conversation_id, after=None)
        connections = [client["id"] for client in await valkey.client_list(_type="pubsub")]
        await asyncio.sleep(0.3)
        assert [client["id"] for client in await valkey.client_list(_type="pubsub")] == connections
        await bus.publish(conversation_id, deltas("still here"))
        assert ids(await reader.take(1)) == [1]
    finally:
        for reader in readers:
            await reader.stop()
        await bus.close()


@pytest.mark.valkey
async def test_a_slow_consumer_catches_up_from_the_stream(valkey: Valkey) -> None:
    bus = ValkeyEventBus(valkey, "test:", retention=1000, ttl_s=60, queue_size=4)
    conversation_id = new_id()
    await bus.publish(conversation_id, deltas("first"))
    subscription = follow(bus, conversation_id, after=0)
    try:
        async with asyncio.timeout(WAIT_S):
            assert (await anext(subscription)).id == 1  # replayed: the subscription is live from here on
        for n in range(50):  # one message each, while nobody reads: the inbox of 4 overflows
            await bus.publish(conversation_id, deltas(str(n)))
        await eventually(lambda: overflowed(bus))
        async with asyncio.timeout(WAIT_S):
            received = [await anext(subscription) for _ in range(50)]
        assert ids(received) == list(range(2, 52))
        assert received[-1].payload == ReplyDelta("49")
    finally:
        await subscription.aclose()
        await bus.close()


async def listening(feed: Feed, conversation_id: UUID, count: int) -> bool:
    return await feed.listeners(conversation_id) == count


async def overflowed(bus: ValkeyEventBus) -> bool:
    channels = list(bus._listener._channels.values())
    return any(subscriber.resync for channel in channels for subscriber in channel.subscribers)


@pytest.mark.valkey
async def test_a_killed_pubsub_connection_is_restored_without_losing_events(
    valkey: Valkey, valkey_feed: Feed, readers: list[Reader]
) -> None:
    conversation_id = new_id()
    reader = await start(readers, valkey_feed.bus, conversation_id, after=0)
    await valkey_feed.bus.publish(conversation_id, deltas("before"))
    assert ids(await reader.take(1)) == [1]
    assert await valkey.client_kill_filter(_type="pubsub") >= 1
    # Published while the listener is disconnected or resubscribing: recovered from the stream.
    await valkey_feed.bus.publish(conversation_id, deltas("during"))
    assert ids(await reader.take(1)) == [2]
    await eventually(lambda: listening(valkey_feed, conversation_id, 1))
    await valkey_feed.bus.publish(conversation_id, deltas("after"))
    assert ids(await reader.take(1)) == [3]


@pytest.mark.valkey
async def test_an_event_missed_live_is_read_back_from_the_stream(
    valkey: Valkey, valkey_feed: Feed, readers: list[Reader]
) -> None:
    bus = cast(ValkeyEventBus, valkey_feed.bus)
    conversation_id = new_id()
    reader = await start(readers, bus, conversation_id, after=None)
    await bus.publish(conversation_id, deltas("1"))
    # Event 2 is retained but its message never arrives (as when a message is lost in transit).
    sequence, log, _ = feed_keys("test:", conversation_id)
    await valkey.incr(sequence)
    await valkey.xadd(log, {"p": encode_payload(ReplyDelta("2"))}, id="2-0")
    await bus.publish(conversation_id, deltas("3"))
    assert await reader.take(3) == [FeedEvent(n, ReplyDelta(str(n))) for n in (1, 2, 3)]


class Proxy:
    """A TCP relay to the test server that can be cut, to make Valkey unreachable for one client only."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    async def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        for writer in self.writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await self.server.wait_closed()


@pytest.mark.valkey
async def test_subscriptions_fail_when_valkey_stays_unreachable(valkey_url: str, readers: list[Reader]) -> None:
    target = urlsplit(valkey_url)
    assert target.hostname is not None
    assert target.port is not None
    proxy = Proxy(target.hostname, target.port)
    await proxy.start()
    client = Valkey(host="127.0.0.1", port=proxy.port, socket_timeout=1, socket_connect_timeout=1)
    bus = ValkeyEventBus(client, "test:", retention=RETENTION, ttl_s=60, reconnect_grace_s=0.3)
    try:
        conversation_id = new_id()
        reader = await start(readers, bus, conversation_id, after=0)
        await bus.publish(conversation_id, deltas("a"))
        assert ids(await reader.take(1)) == [1]
        await proxy.cut()
        with pytest.raises(CacheUnavailableError):
            await reader.take(1)
        with pytest.raises(CacheUnavailableError):  # a new subscription fails too, rather than hanging
            async with asyncio.timeout(WAIT_S):
                await anext(follow(bus, conversation_id, after=0))
        with pytest.raises(CacheUnavailableError):
            await bus.publish(conversation_id, deltas("b"))
    finally:
        for reader in readers:
            await reader.stop()
        await bus.close()
        await client.aclose()
