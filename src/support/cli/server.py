"""The HTTP server of ``support serve``: uvicorn, ending the live feeds as soon as it begins to stop."""

import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from support.api.streaming import LiveFeeds


class FeedEndingServer(uvicorn.Server):
    """uvicorn's server, which ends the open live feeds when it starts shutting down (Ctrl-C, SIGTERM).

    uvicorn waits for open responses before it stops, up to its graceful-shutdown timeout, and then cancels them
    with a traceback. A feed has no end of its own, so one open browser tab held every restart for the whole
    timeout. Feeds end first instead: their clients reconnect, with ``Last-Event-ID``, to a process that is still
    up; reply streams finish their replies; sockets are closed by uvicorn (1012, service restart).
    """

    def __init__(self, config: uvicorn.Config, feeds: LiveFeeds) -> None:
        super().__init__(config)
        self._feeds = feeds

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
        await super().shutdown(sockets)
