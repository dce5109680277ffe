"""Feeds end cleanly: a keepalive is a comment alone, and a client that leaves closes the feed's source."""

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import pytest

from support.api.streaming import LiveFeeds, until_refused, with_heartbeats
from support.domain.feed import FeedEvent, Typing


class Source:
    """A feed with no event coming, which notes when it is closed (its subscription given up)."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def events(self) -> AsyncGenerator[FeedEvent, None]:
        try:
            await asyncio.Event().wait()
            yield  # type: ignore[misc]  # never reached: a generator that waits
        finally:
            self.closed.set()


async def allowed() -> None:
    return None


async def test_a_feed_left_while_it_waits_closes_its_source() -> None:
    source = Source()
    feed = until_refused(source.events(), allowed, every_s=60)
    reading = asyncio.ensure_future(anext(feed))
    await asyncio.sleep(0.05)  # waiting for the next event

    reading.cancel()  # the client went away
    with contextlib.suppress(asyncio.CancelledError):
        await reading

    await asyncio.wait_for(source.closed.wait(), 1)


async def test_a_relay_with_heartbeats_left_while_it_waits_closes_its_source() -> None:
    source = Source()
    relay = with_heartbeats(until_refused(source.events(), allowed, every_s=60), heartbeat_s=60)
    reading = asyncio.ensure_future(anext(relay))
    await asyncio.sleep(0.05)

    reading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reading

    await asyncio.wait_for(source.closed.wait(), 1)


async def test_a_keepalive_is_a_comment_alone_not_an_empty_message_event() -> None:
    source = Source()
    relay = with_heartbeats(source.events(), heartbeat_s=0.01)

    keepalive = await anext(relay)
    await relay.aclose()

    # A "data:" line would make a browser's EventSource fire an empty `message` event.
    assert keepalive.encode() == b": keepalive\r\n\r\n"
    assert source.closed.is_set()


async def test_ended_live_feeds_finish_after_what_they_hold_and_close_their_sources() -> None:
    feeds = LiveFeeds()
    waiting, late = Source(), Source()

    async def one_event_then_wait() -> AsyncGenerator[FeedEvent, None]:
        yield FeedEvent(7, Typing("agent", active=True))
        async for event in waiting.events():
            yield event

    relay = with_heartbeats(one_event_then_wait(), heartbeat_s=60, feeds=feeds)
    first = await anext(relay)
    pending = asyncio.ensure_future(anext(relay))
    await asyncio.sleep(0.05)
    assert not pending.done()

    feeds.end_all()

    assert first.id == 7
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 1)
    await asyncio.wait_for(waiting.closed.wait(), 1)
    # A feed opened while the process is stopping ends at once.
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(with_heartbeats(late.events(), heartbeat_s=60, feeds=feeds)), 1)
