"""In-memory event bus: the same contract as the Valkey one, within one process."""

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from uuid import UUID

from support.domain.feed import FeedEvent, FeedPayload, last_takeover
from support.ports.conversations import FeedErasedError, TakenOverError


class _Feed:
    __slots__ = ("inboxes", "retained", "sequence", "taken_over")

    def __init__(self, retention: int) -> None:
        self.sequence = 0
        self.taken_over = 0  # the id of the newest ownership change away from the assistant
        self.retained: deque[FeedEvent] = deque(maxlen=retention)
        self.inboxes: set[asyncio.Queue[FeedEvent]] = set()


class InMemoryEventBus:
    """Keeps the newest ``retention`` events of each conversation; delivers to subscribers of this process."""

    def __init__(self, retention: int) -> None:
        self._retention = retention
        self._feeds: dict[UUID, _Feed] = {}
        # Tombstones: erased conversations, whose feeds refuse every publish (kept for good here; Valkey expires them).
        self._erased: set[UUID] = set()

    def _feed(self, conversation_id: UUID) -> _Feed:
        feed = self._feeds.get(conversation_id)
        if feed is None:
            feed = self._feeds[conversation_id] = _Feed(self._retention)
        return feed

    def subscriber_count(self, conversation_id: UUID) -> int:
        """Open subscriptions of a conversation (tests check that closed ones are gone)."""
        feed = self._feeds.get(conversation_id)
        return 0 if feed is None else len(feed.inboxes)

    def erase(self, conversation_id: UUID, *, gone: bool) -> None:
        """What the hot state eraser does to the Valkey feed: forget its events; ``gone`` leaves a tombstone.

        Open subscriptions stay (as they stay subscribed to a Valkey channel whose stream was deleted).
        """
        if gone:
            self._erased.add(conversation_id)
        feed = self._feeds.get(conversation_id)
        if feed is not None:
            feed.sequence = feed.taken_over = 0
            feed.retained.clear()

    async def publish(
        self, conversation_id: UUID, payloads: Sequence[FeedPayload], *, owned_since: int | None = None
    ) -> list[FeedEvent]:
        if conversation_id in self._erased:
            raise FeedErasedError
        feed = self._feed(conversation_id)
        if owned_since is not None and feed.taken_over > owned_since:
            raise TakenOverError
        takeover = last_takeover(payloads)
        if takeover is not None:
            feed.taken_over = feed.sequence + 1 + takeover
        events: list[FeedEvent] = []
        for payload in payloads:
            feed.sequence += 1
            event = FeedEvent(feed.sequence, payload)
            feed.retained.append(event)
            events.append(event)
            for inbox in feed.inboxes:
                inbox.put_nowait(event)
        return events

    async def head(self, conversation_id: UUID) -> int:
        return self._feed(conversation_id).sequence

    async def signal(self, conversation_id: UUID, payload: FeedPayload) -> None:
        feed = self._feed(conversation_id)
        for inbox in feed.inboxes:
            inbox.put_nowait(FeedEvent(0, payload))

    def subscribe(self, conversation_id: UUID, *, after: int | None) -> AsyncGenerator[FeedEvent, None]:
        return self._follow(conversation_id, after)

    async def close(self) -> None:
        """Nothing to release; here for parity with the Valkey bus."""

    async def _follow(self, conversation_id: UUID, after: int | None) -> AsyncGenerator[FeedEvent, None]:
        feed = self._feed(conversation_id)
        inbox: asyncio.Queue[FeedEvent] = asyncio.Queue()
        feed.inboxes.add(inbox)
        try:
            if after is None:
                last = feed.sequence
            else:
                # An id beyond the head is from before the feed restarted (the Valkey feed expires): replay it all.
                last = 0 if after > feed.sequence else max(after, 0)
                for event in [event for event in feed.retained if event.id > last]:
                    yield event
                    last = event.id
            while True:
                event = await inbox.get()
                if event.id == 0:
                    yield event
                elif event.id > last:
                    yield event
                    last = event.id
        finally:
            feed.inboxes.discard(inbox)
