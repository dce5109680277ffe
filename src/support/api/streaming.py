"""Server-sent events: feed events to SSE messages, with heartbeats on idle streams and errors as events."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from litestar import Litestar
from litestar.response import ServerSentEvent, ServerSentEventMessage

from support.api.problems import ReplyFailedError, status_for
from support.api.schemas.conversations import encode_data
from support.domain.errors import (
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    SupportError,
)
from support.domain.feed import FeedEvent, StreamFailed

_logger = logging.getLogger(__name__)
T = TypeVar("T")
_END = object()
_MAX_EVENT_ID_DIGITS = 20
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # Proxies (nginx) must not buffer the stream, or the first delta arrives late.
    "X-Accel-Buffering": "no",
}


# Where the application's LiveFeeds and OpenReplies are kept in its state (see live_feeds, open_replies).
LIVE_FEEDS_STATE = "live_feeds"
OPEN_REPLIES_STATE = "open_replies"


class LiveFeeds:
    """The live feeds (``GET …/events``) a process is serving, so that shutting down can end them.

    A server stops once its open responses have finished, and a feed never finishes on its own: each open one held
    the shutdown for the whole grace period and was then cancelled, with a traceback in the log. Ended cleanly
    instead, a browser's EventSource reconnects at once, with ``Last-Event-ID``, to a process that is still up.
    Reply streams are not feeds: they end with their reply, within the grace period (see :class:`OpenReplies`).
    """

    def __init__(self) -> None:
        self._ends: set[Callable[[], None]] = set()
        self.ended = False

    def end_all(self) -> None:
        """End every open feed, and any opened from now on (the process is going away)."""
        self.ended = True
        for end in list(self._ends):
            end()

    def add(self, end: Callable[[], None]) -> None:
        """A feed opens: :meth:`end_all` will call ``end`` (at once when it already has)."""
        self._ends.add(end)
        if self.ended:
            end()

    def discard(self, end: Callable[[], None]) -> None:
        """The feed has ended."""
        self._ends.discard(end)


def live_feeds(app: Litestar) -> LiveFeeds:
    """The live feeds of an application built by ``build_app`` (the server ends them when it begins to stop)."""
    feeds: LiveFeeds = app.state[LIVE_FEEDS_STATE]
    return feeds


class OpenReplies(LiveFeeds):
    """The replies requests wait for (``POST …/messages``, ``…/messages/stream``), for the end of the grace period.

    A shutdown whose grace period runs out ends them properly.

    Left to the server, a request still open then was cancelled: the JSON send got a plain-text 500, the reply
    stream a truncated body without an ``error`` event, and the log a traceback. Ended here, the stream gets an
    ``error`` event and the JSON send a 503 problem with ``Retry-After`` (:data:`STOPPING`); the turn goes on until
    the application stops it, and stores what it wrote, marked interrupted.
    """


def open_replies(app: Litestar) -> OpenReplies:
    """The replies requests of an application built by ``build_app`` wait for (the server ends them at the end)."""
    replies: OpenReplies = app.state[OPEN_REPLIES_STATE]
    return replies


# What a request still waiting for its reply is told when the process stops before the reply is written.
STOPPING = StreamFailed(
    503,
    "service_unavailable",
    "The service is restarting",
    "The service stopped before the reply was finished. Your message is stored, and what the reply had said is "
    "stored marked interrupted: send again in a moment (with the same Idempotency-Key to get them back).",
)


async def unless_stopping(awaitable: Awaitable[T], replies: OpenReplies) -> T:
    """``awaitable``'s result, unless ``replies`` are ended first (the process stops): then ReplyFailedError 503.

    ``awaitable`` is cancelled then; what it waited for (a turn, a background task) goes on.
    """
    task = asyncio.ensure_future(awaitable)
    ended = asyncio.get_running_loop().create_future()

    def end() -> None:
        if not ended.done():
            ended.set_result(None)

    replies.add(end)
    try:
        await asyncio.wait({task, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        replies.discard(end)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if not task.cancelled():
        return task.result()
    raise ReplyFailedError(STOPPING.status, STOPPING.code, STOPPING.detail)


def resume_after(text: str, name: str) -> int:
    """The event id a client resumes after (``Last-Event-ID``, ``last_event_id``): ASCII digits only.

    One reading for the SSE header and query and the socket's query, so a value one of them takes the others take
    too; a header's surrounding spaces are allowed (HTTP strips them). Python's ``int`` would also take signs,
    underscores and other scripts' digits.

    Raises:
        InvalidInputError: anything else; the message names ``name``.
    """
    value = text.strip(" \t")
    # Event ids are 64-bit counters (at most 20 digits): a longer run of digits is no id, and Python refuses to
    # convert more than 4,300 of them (a ValueError, which was a 500).
    if not (value.isascii() and value.isdigit() and len(value) <= _MAX_EVENT_ID_DIGITS):
        raise InvalidInputError(f"{name} is the id of an event (a whole number).")
    return int(value)


def stream_failure(error: SupportError) -> FeedEvent:
    """The ``error`` event that ends a stream which failed after it began (status from the one table)."""
    return FeedEvent(0, StreamFailed(status_for(error), error.code, "The stream failed", error.message))


# What ends a feed when its caller is asked again: the credentials no longer reach the conversation. Anything else
# (PostgreSQL down, say) leaves it open: feeds run on Valkey and keep working through a database outage.
ACCESS_REFUSALS = (AuthenticationError, NotFoundError, PermissionDeniedError)


async def until_refused(
    events: AsyncGenerator[FeedEvent, None], recheck: Callable[[], Awaitable[object]], every_s: float
) -> AsyncGenerator[FeedEvent, None]:
    """``events``, asking ``recheck`` every ``every_s`` whether the caller may still follow them.

    When it refuses (a revoked key, an expired token, an erased customer), one ``error`` event with its code ends
    the feed.
    """
    refused: asyncio.Future[FeedEvent] = asyncio.get_running_loop().create_future()

    async def watch() -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await recheck()
            except ACCESS_REFUSALS as error:
                refused.set_result(stream_failure(error))
                return
            except Exception:
                # The check failed, not the caller (the database is down, say): keep following, ask again later.
                _logger.warning("could not check a feed's access; it stays open", exc_info=True)

    watcher = asyncio.create_task(watch())
    step: asyncio.Future[FeedEvent] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(events))
            await asyncio.wait({step, refused}, return_when=asyncio.FIRST_COMPLETED)
            if refused.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                yield refused.result()
                return
            try:
                event = step.result()
            except StopAsyncIteration:
                return
            yield event
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        # A client that leaves while the feed waits for its next event stops this generator inside the wait: the
        # pending step must be stopped first, or closing the source fails ("already running") and its
        # subscription stays until the conversation's next event.
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await step
        with contextlib.suppress(Exception):
            await events.aclose()


def sse_message(event: FeedEvent) -> ServerSentEventMessage:
    """One event in SSE framing; ephemeral events (id 0) carry no id, so they never move a resume point."""
    return ServerSentEventMessage(data=encode_data(event), event=event.payload.name, id=event.id or None)


async def with_heartbeats(
    events: AsyncGenerator[FeedEvent, None],
    heartbeat_s: float,
    feeds: LiveFeeds | None = None,
    *,
    replies: OpenReplies | None = None,
) -> AsyncGenerator[ServerSentEventMessage, None]:
    """Relay ``events`` as SSE messages; a comment goes out after ``heartbeat_s`` without one.

    A failure while iterating becomes an ``error`` event that ends the stream (headers are long gone).
    When the client goes away the relay stops; the source is closed, not the work behind it. A live feed is
    listed in ``feeds``, and ends (without an event) when they are ended; a reply stream is listed in ``replies``,
    and ends with the :data:`STOPPING` error event when they are.
    """
    queue: asyncio.Queue[FeedEvent | object] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                queue.put_nowait(event)
        except SupportError as error:
            queue.put_nowait(stream_failure(error))
        except Exception:
            _logger.exception("event stream failed")
            queue.put_nowait(FeedEvent(0, StreamFailed(500, "internal_error", "The stream failed", "Reconnect.")))
        finally:
            queue.put_nowait(_END)

    task = asyncio.create_task(pump())

    def end() -> None:
        queue.put_nowait(_END)

    def stop() -> None:
        queue.put_nowait(FeedEvent(0, STOPPING))

    listed, ending = (replies, stop) if replies is not None else (feeds or LiveFeeds(), end)
    listed.add(ending)
    try:
        while True:
            if queue.empty():
                try:
                    # A timeout scope, not wait_for: no task per event (a reply is a few dozen events).
                    async with asyncio.timeout(heartbeat_s):
                        item = await queue.get()
                except TimeoutError:
                    # data=None: a comment alone. Litestar otherwise adds an empty "data:" line, and an
                    # EventSource then fires an empty `message` event, the name stored messages arrive under.
                    yield ServerSentEventMessage(comment="keepalive", data=None)
                    continue
            else:
                item = queue.get_nowait()
            if item is _END:
                return
            assert isinstance(item, FeedEvent)  # noqa: S101 - the queue carries events and the end marker
            yield sse_message(item)
            if isinstance(item.payload, StreamFailed):
                return
    finally:
        listed.discard(ending)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await events.aclose()


def event_stream(
    events: AsyncGenerator[FeedEvent, None],
    heartbeat_s: float,
    feeds: LiveFeeds | None = None,
    *,
    replies: OpenReplies | None = None,
) -> ServerSentEvent:
    """The SSE response for ``events``.

    Pass ``feeds`` for a live feed (ended when the process shuts down), or ``replies`` for a reply stream (ended
    with an ``error`` event when the shutdown's grace period runs out).
    """
    return ServerSentEvent(with_heartbeats(events, heartbeat_s, feeds, replies=replies), headers=SSE_HEADERS)
