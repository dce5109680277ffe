"""Webhook fakes: a scripted sender for use-case tests, and a real HTTP receiver for API and process tests.

The receiver listens on 127.0.0.1 (a free port), records every request and answers from a script of statuses;
:data:`HOLD` keeps a request open without an answer (an endpoint that is slow, or a sender that dies meanwhile)
until :meth:`WebhookReceiver.release` or the receiver stops::

    async with WebhookReceiver(HOLD, 500) as receiver:   # then 200s
        ...
        await receiver.wait_until(lambda: len(receiver.requests) >= 2)
"""

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final, Self

from support.ports.webhooks import SendResult

HOLD: Final = -1


@dataclass(frozen=True, slots=True)
class Sent:
    url: str
    body: bytes
    headers: Mapping[str, str]


@dataclass
class ScriptedSender:
    """The WebhookSender port: answers from ``results`` in order, then ``default``; records what was sent."""

    results: deque[SendResult] = field(default_factory=deque)
    default: SendResult = field(default_factory=lambda: SendResult(200))
    sent: list[Sent] = field(default_factory=list)

    def script(self, *results: SendResult) -> None:
        self.results.extend(results)

    async def send(self, url: str, body: bytes, headers: Mapping[str, str]) -> SendResult:
        self.sent.append(Sent(url, body, dict(headers)))
        return self.results.popleft() if self.results else self.default


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    status: int  # what the receiver answered, or HOLD


class WebhookReceiver:
    """A real HTTP/1.1 server that records webhook requests and answers with scripted statuses."""

    def __init__(self, *statuses: int, default: int = 200) -> None:
        self.requests: list[Received] = []
        self._script = deque(statuses)
        self._default = default
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def event_ids(self) -> Counter[str]:
        """How often each event id (``Webhook-Id``) arrived."""
        return Counter(request.headers["webhook-id"] for request in self.requests)

    def release(self) -> None:
        """Let held requests finish (with the default status)."""
        self._released.set()

    async def wait_until(self, condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout_s:g} s; received {len(self.requests)} requests")
            await asyncio.sleep(0.02)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while (request := await _read(reader)) is not None:
                path, headers, body = request
                status = self._script.popleft() if self._script else self._default
                self.requests.append(Received(path, headers, body, status))
                if status == HOLD:
                    await self._released.wait()
                    status = self._default
                writer.write(f"HTTP/1.1 {status} Scripted\r\ncontent-length: 2\r\n\r\nok".encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # The sender went away (or the receiver is stopping); finishing quietly keeps asyncio from logging it.
            pass
        finally:
            writer.close()
            self._connections.discard(task)


async def _read(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes] | None:
    request_line = await reader.readline()
    if not request_line.strip():
        return None
    _, path, _ = request_line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in {b"\r\n", b"\n", b""}:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return path, headers, await reader.readexactly(int(headers.get("content-length", "0")))
