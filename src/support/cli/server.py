"""The HTTP server of ``support serve``: uvicorn, ending live feeds when it begins to stop, and late replies after.

Replies still being written when the grace period runs out are answered properly rather than cut.
"""

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from support.api.streaming import LiveFeeds, OpenReplies

_logger = logging.getLogger(__name__)

# After the grace period, how long the requests that were ended have to send their last bytes before uvicorn
# cancels whatever is still open.
FINISH_S = 5.0


class FeedEndingServer(uvicorn.Server):
    """uvicorn's server, which ends the open live feeds when it starts shutting down (Ctrl-C, SIGTERM).

    uvicorn waits for open responses before it stops, up to its graceful-shutdown timeout, and then cancels them
    with a traceback. A feed has no end of its own, so one open browser tab held every restart for the whole
    timeout. Feeds end first instead: their clients reconnect, with ``Last-Event-ID``, to a process that is still
    up; sockets are closed by uvicorn (1012, service restart). Reply streams and JSON sends get ``grace_s`` to
    finish their replies; then the server ends those still waiting itself, properly (an ``error`` event, a 503
    problem with ``Retry-After``: :class:`OpenReplies`), before uvicorn's timeout (``FINISH_S`` later) would cut
    them. The turns are stopped with the application, and store what they wrote, marked interrupted.
    """

    def __init__(self, config: uvicorn.Config, feeds: LiveFeeds, replies: OpenReplies, grace_s: float) -> None:
        config.timeout_graceful_shutdown = round(grace_s + FINISH_S)
        super().__init__(config)
        self._feeds = feeds
        self._replies = replies
        self._grace_s = grace_s

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn raises the signal again once it has stopped, and SIGTERM's default action ends the process on
        # the spot: the embedded PostgreSQL and Valkey that `support serve` started outlived it. Stopped by a
        # signal, the server returns instead, and `serve` stops them on its way out.
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._feeds.end_all()
        grace = asyncio.get_running_loop().call_later(self._grace_s, self._end_replies)
        try:
            await super().shutdown(sockets)
        finally:
            grace.cancel()

    def _end_replies(self) -> None:
        if self.server_state.tasks:
            _logger.warning(
                "the %g s shutdown grace period ran out: replies still being written are answered 503", self._grace_s
            )
        self._replies.end_all()
