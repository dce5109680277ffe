"""A fake Anthropic Messages API over real HTTP, so tests and benchmarks run the real ``anthropic`` SDK.

The server listens on 127.0.0.1 (a free port), answers ``POST /v1/messages`` from a queue of scripted responses
and records every request it gets. A response is either :class:`Streamed` (a 200 ``text/event-stream`` answer
made of SSE events, pauses, raw malformed bytes and an optional dropped connection), :class:`Failed` (an HTTP
error with the API's JSON error body) or :class:`Reset` (the connection is reset without an answer). The builders
below produce realistic event sequences::

    async with FakeAnthropic() as api:
        api.script(
            rate_limited(),
            message(text("Refunds take ", "5 days.", citations=[citation(0, source=url, title="Refunds")])),
        )
        llm = AnthropicLLM(..., base_url=api.base_url)

When the queue is empty the server answers with ``default`` (a response, or a function of the request), and
without one with a 500 that names the problem, so a test that scripted too little fails loudly.
"""

import asyncio
import contextlib
import itertools
import json
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

DEFAULT_MODEL = "claude-sonnet-4-6"
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: ``event: <name>`` and its JSON ``data``."""

    name: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Pause:
    """Wait before sending the next step (a stalled stream)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Drop the connection here, mid-body, as a failing network or proxy would."""


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes written into the stream as they are: a malformed event (data that is not JSON, a broken frame)."""

    data: bytes


Step = Event | Pause | Disconnect | Raw


@dataclass(frozen=True, slots=True)
class Streamed:
    """A 200 streamed answer; ``delay_s`` passes before the status line (for timeouts)."""

    steps: tuple[Step, ...]
    delay_s: float = 0.0
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failed:
    """An HTTP error answer with the API's error body ``{"type": "error", "error": {type, message}}``."""

    status: int
    error_type: str
    message: str
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Reset:
    """No answer at all: the connection is reset (TCP RST) once the request has been read."""

    delay_s: float = 0.0


Response = Streamed | Failed | Reset


@dataclass(frozen=True, slots=True)
class Block:
    """One content block of a scripted message: its ``content_block_start`` payload and its deltas."""

    start: Mapping[str, Any]
    deltas: tuple[Mapping[str, Any] | Step, ...]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request the fake received."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The request's ``messages``."""
        messages: list[dict[str, Any]] = self.body["messages"]
        return messages


# --- builders -------------------------------------------------------------------------------------------------


def text(*pieces: str | Step, citations: Sequence[Mapping[str, Any]] = ()) -> Block:
    """A text block streamed as one ``text_delta`` per piece; steps (a pause, a disconnect) go where they stand.

    ``citations`` follow the text as ``citations_delta`` events, as the API sends them.
    """
    start: dict[str, Any] = {"type": "text", "text": ""}
    if citations:
        start["citations"] = []
    deltas: list[Mapping[str, Any] | Step] = [
        {"type": "text_delta", "text": piece} if isinstance(piece, str) else piece for piece in pieces
    ]
    deltas += [{"type": "citations_delta", "citation": dict(item)} for item in citations]
    return Block(start, tuple(deltas))


def tool_use(name: str, arguments: Mapping[str, Any], *, tool_id: str | None = None) -> Block:
    """A ``tool_use`` block whose input JSON arrives in a few ``input_json_delta`` pieces."""
    encoded = json.dumps(arguments)
    third = max(1, len(encoded) // 3)
    pieces = ["", encoded[:third], encoded[third : 2 * third], encoded[2 * third :]]
    start = {"type": "tool_use", "id": tool_id or f"toolu_fake_{next(_ids)}", "name": name, "input": {}}
    return Block(start, tuple({"type": "input_json_delta", "partial_json": piece} for piece in pieces))


def citation(
    index: int, *, source: str, title: str | None, cited_text: str, start: int = 0, end: int | None = None
) -> dict[str, Any]:
    """A ``search_result_location`` citation of the ``index``-th search result of the request."""
    return {
        "type": "search_result_location",
        "search_result_index": index,
        "source": source,
        "title": title,
        "cited_text": cited_text,
        "start_block_index": start,
        "end_block_index": start + 1 if end is None else end,
    }


def message(
    *blocks: Block,
    stop_reason: str | None = None,
    input_tokens: int = 100,
    output_tokens: int | None = None,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    model: str = DEFAULT_MODEL,
    trailer: Sequence[Step] = (),
) -> Streamed:
    """A complete streamed message: message_start, ping, the blocks, message_delta (usage), message_stop.

    ``stop_reason`` defaults to ``tool_use`` when a block is a tool call, else ``end_turn``; ``output_tokens``
    defaults to a word count. ``trailer`` replaces the closing events (e.g. ``[Disconnect()]``).
    """
    steps: list[Step] = list(_message_start(input_tokens, cache_read_tokens, cache_write_tokens, model))
    words = 0
    for index, block in enumerate(blocks):
        steps.append(Event("content_block_start", {"type": "content_block_start", "index": index,
                                                   "content_block": dict(block.start)}))  # fmt: skip
        for delta in block.deltas:
            if isinstance(delta, Event | Pause | Disconnect | Raw):
                steps.append(delta)
                continue
            words += len(str(delta.get("text", delta.get("partial_json", ""))).split())
            steps.append(Event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                       "delta": dict(delta)}))  # fmt: skip
        steps.append(Event("content_block_stop", {"type": "content_block_stop", "index": index}))
    if stop_reason is None:
        stop_reason = "tool_use" if any(block.start["type"] == "tool_use" for block in blocks) else "end_turn"
    if trailer:
        steps.extend(trailer)
    else:
        usage = {"output_tokens": output_tokens if output_tokens is not None else max(1, words)}
        steps.append(Event("message_delta", {"type": "message_delta",
                                             "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                             "usage": usage}))  # fmt: skip
        steps.append(Event("message_stop", {"type": "message_stop"}))
    return Streamed(tuple(steps))


def reply(*pieces: str, **options: Any) -> Streamed:
    """A message with one plain text block."""
    return message(text(*pieces), **options)


def citing_reply(request: RecordedRequest) -> Streamed:
    """An answer that quotes and cites the request's first search result, or says nothing matched.

    Meant as ``FakeAnthropic(default=citing_reply)`` for API tests and benchmarks that need many replies.
    """
    for block in request.messages[-1]["content"] if request.messages else ():
        if isinstance(block, dict) and block.get("type") == "search_result":
            quote = block["content"][0]["text"]
            found = citation(0, source=block["source"], title=block["title"], cited_text=quote)
            return message(text("Here is what I found: "), text(quote, citations=[found]))
    return reply("I could not find that in our help center.")


def failing_stream(*steps: Step, input_tokens: int = 100) -> Streamed:
    """A stream that starts (message_start, ping) and then runs ``steps``, e.g. ``stream_error()``."""
    return Streamed((*_message_start(input_tokens, 0, 0, DEFAULT_MODEL), *steps))


def stream_error(error_type: str = "overloaded_error", text_: str = "Overloaded") -> Event:
    """An ``error`` event inside a 200 stream, as the API sends when it fails after the headers."""
    return Event("error", {"type": "error", "error": {"type": error_type, "message": text_}})


def rate_limited(retry_after: float | None = 0) -> Failed:
    """429 ``rate_limit_error``, with ``retry-after`` in seconds unless None."""
    headers = {} if retry_after is None else {"retry-after": f"{retry_after:g}"}
    return Failed(429, "rate_limit_error", "Number of request tokens has exceeded your rate limit.", headers)


def overloaded() -> Failed:
    """529 ``overloaded_error``."""
    return Failed(529, "overloaded_error", "Overloaded")


def unauthorized() -> Failed:
    """401 ``authentication_error``."""
    return Failed(401, "authentication_error", "invalid x-api-key", {"x-should-retry": "false"})


def bad_request(text_: str) -> Failed:
    """400 ``invalid_request_error``."""
    return Failed(400, "invalid_request_error", text_)


def _message_start(input_tokens: int, cache_read: int, cache_write: int, model: str) -> Iterator[Event]:
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": 1,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_write,
    }
    body: dict[str, Any] = {"id": f"msg_fake_{next(_ids)}", "type": "message", "role": "assistant", "content": [],
                            "model": model, "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    yield Event("message_start", {"type": "message_start", "message": body})
    yield Event("ping", {"type": "ping"})


# --- the server -----------------------------------------------------------------------------------------------


@dataclass
class FakeAnthropic:
    """A real HTTP/1.1 server (keep-alive, chunked SSE) that plays scripted Messages API responses."""

    default: Response | Callable[[RecordedRequest], Response] | None = None
    requests: list[RecordedRequest] = field(default_factory=list)
    port: int = 0
    _queue: deque[Response] = field(default_factory=deque)
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    def script(self, *responses: Response) -> None:
        """Answer the next requests with ``responses``, in order."""
        self._queue.extend(responses)

    @property
    def pending(self) -> int:
        """Scripted responses not yet played."""
        return len(self._queue)

    @property
    def base_url(self) -> str:
        """What to give the SDK as ``base_url``."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._serve_connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and end open connections (a handler may be sleeping in a scripted delay)."""
        if self._server is not None:
            self._server.close()
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    def _next_response(self, request: RecordedRequest) -> Response:
        if request.method != "POST" or request.path.split("?")[0] != "/v1/messages":
            return Failed(404, "not_found_error", f"{request.method} {request.path} is not served by the fake")
        if not request.headers.get("authorization") and not request.headers.get("x-api-key"):
            return Failed(401, "authentication_error", "x-api-key header is required")
        if self._queue:
            return self._queue.popleft()
        if self.default is None:
            return Failed(500, "api_error", "the fake Anthropic server has no scripted response left")
        return self.default(request) if callable(self.default) else self.default

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while (request := await _read_request(reader)) is not None:
                self.requests.append(request)
                if not await _send(writer, self._next_response(request)):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # ``stop`` ends idle or sleeping connections; finishing normally keeps Python 3.11's stream callback
            # from logging the cancellation as an error.
            pass
        finally:
            writer.close()
            if task is not None:
                self._connections.discard(task)


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
    request_line = await reader.readline()
    if not request_line.strip():
        return None
    method, path, _ = request_line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in {b"\r\n", b"\n", b""}:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    raw = await reader.readexactly(int(headers.get("content-length", "0")))
    body: Any
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return RecordedRequest(method, path, headers, body)


async def _send(writer: asyncio.StreamWriter, response: Response) -> bool:
    """Write ``response``; False when the connection was dropped on purpose."""
    if response.delay_s:
        await asyncio.sleep(response.delay_s)
    if isinstance(response, Reset):
        _reset(writer)
        return False
    request_id = f"req_fake_{next(_ids)}"
    if isinstance(response, Failed):
        payload = {"type": "error", "error": {"type": response.error_type, "message": response.message},
                   "request_id": request_id}  # fmt: skip
        content = json.dumps(payload).encode()
        head = {"content-type": "application/json", "content-length": str(len(content)), "request-id": request_id}
        writer.write(_head(response.status, head | dict(response.headers)) + content)
        await writer.drain()
        return True
    head = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache",
            "transfer-encoding": "chunked", "request-id": request_id}  # fmt: skip
    writer.write(_head(200, head | dict(response.headers)))
    await writer.drain()
    for step in response.steps:
        if isinstance(step, Pause):
            await asyncio.sleep(step.seconds)
        elif isinstance(step, Disconnect):
            writer.transport.abort()
            return False
        else:
            chunk = (
                step.data
                if isinstance(step, Raw)
                else f"event: {step.name}\ndata: {json.dumps(step.data)}\n\n".encode()
            )
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
    writer.write(b"0\r\n\r\n")
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    return True


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST instead of a FIN: the peer sees "connection reset by peer"."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Fake", *(f"{name}: {value}" for name, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
