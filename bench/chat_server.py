"""The servers ``bench/chat.py`` measures, each run as its own process the way ``support serve`` runs the API.

``python -m bench.chat_server --app real --port N`` serves ``create_app`` with settings from ``SUPPORT_*``
variables and a zero-latency scripted model; ``--app bare`` serves a bare Litestar app with one SSE endpoint
(the floor of a streamed reply). Both go through ``uvicorn.run`` with the options of ``support serve``.

``SUPPORT_BENCH_TRACE=1`` records, for every streamed turn, when each phase started and ended (authentication,
``SendMessage.execute``, each database round trip, the reply lease, the query embedding, the search, each
publish to Valkey, the SSE writes), relative to the moment the request reached the application;
``GET /_bench/trace`` returns the records and empties them.
"""

import argparse
import contextvars
import functools
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import uvicorn
from dishka import Provider, Scope
from litestar import Litestar, post
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.types import ASGIApp, Message, Receive, Send
from litestar.types import Scope as ASGIScope

from support.config import load_settings
from support.container import create_app
from support.domain.assistant import PassageCited, ReplyCompleted, ReplyEvent, ReplyRequest, TextDelta
from support.domain.conversations import TokenUsage
from support.ports.assistant import LLM, AssistantTools

PIECES = tuple(f"word{index} " for index in range(20))
TRACE_PATH = "/_bench/trace"
Span = tuple[str, float, float]

_spans: contextvars.ContextVar[list[Span] | None] = contextvars.ContextVar("bench_spans", default=None)


def _mark(label: str, started: float, ended: float | None = None) -> None:
    spans = _spans.get()
    if spans is not None:
        spans.append((label, started, started if ended is None else ended))


class ZeroLatencyLLM:
    """Twenty text pieces at once, a citation of the first passage, then the end: the model costs nothing."""

    @property
    def name(self) -> str:
        return "bench-zero-latency"

    async def reply(self, request: ReplyRequest, tools: AssistantTools) -> AsyncIterator[ReplyEvent]:  # noqa: ARG002
        _mark("llm.start", time.perf_counter())
        for piece in PIECES:
            yield TextDelta(piece)
        if request.passages:
            passage = request.passages[0]
            yield PassageCited(passage, passage.text[:80])
        yield ReplyCompleted(usage=TokenUsage(input_tokens=100, output_tokens=len(PIECES)))


def _llm_provider(llm: LLM) -> Provider:
    provider = Provider(scope=Scope.APP)
    provider.provide(lambda: llm, provides=LLM, override=True)
    return provider


def create() -> ASGIApp:
    """The real application with the zero-latency model (``SUPPORT_BENCH_TRACE=1``: with phase tracing)."""
    app = create_app(load_settings(), _llm_provider(ZeroLatencyLLM()))
    if os.environ.get("SUPPORT_BENCH_TRACE") == "1":
        _install_tracing()
        return _TracingApp(app)
    return app


@post("/stream", status_code=200)
async def _bare_stream() -> ServerSentEvent:
    async def events() -> AsyncIterator[ServerSentEventMessage]:
        yield ServerSentEventMessage(data='{"text":"hi"}', event="delta", id=1)

    return ServerSentEvent(events(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_bare() -> Litestar:
    """A bare Litestar app: one POST endpoint whose SSE stream yields one event at once."""
    return Litestar(route_handlers=[_bare_stream], debug=False, logging_config=None, openapi_config=None)


# --- tracing ---------------------------------------------------------------------------------------------------


def _wrap(owner: Any, name: str, label: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    async def traced(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            _mark(label, started, time.perf_counter())

    setattr(owner, name, traced)


def _install_tracing() -> None:
    import asyncpg
    from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg

    from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
    from support.adapters.postgres.conversations import PostgresConversationRepository
    from support.adapters.postgres.knowledge import PgVectorKnowledgeBase
    from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
    from support.adapters.valkey.cache import ValkeyCache
    from support.adapters.valkey.events import ValkeyEventBus
    from support.adapters.valkey.rate_limits import ValkeyRateLimiter
    from support.adapters.valkey.sessions import ValkeySessionStore
    from support.api import auth
    from support.api.controllers import conversations as controller
    from support.application.conversations import SendMessage
    from support.application.knowledge import QueryEmbeddings, SearchKnowledge
    from support.application.limits import EnforceRateLimits
    from support.application.memory import RecallMemories
    from support.application.replies import ReplyRunner

    targets: list[tuple[Any, str, str]] = [
        (asyncpg.Connection, "fetch", "pg.driver.fetch"),
        (asyncpg.Connection, "fetchrow", "pg.driver.fetchrow"),
        (asyncpg.Connection, "fetchval", "pg.driver.fetchval"),
        (auth, "authenticate", "auth"),
        (EnforceRateLimits, "execute", "ratelimit"),
        (ValkeyRateLimiter, "acquire_all", "ratelimit.valkey"),
        (controller, "_read_send", "body.read"),
        (SendMessage, "execute", "send_message.execute"),
        (PostgresConversationRepository, "get", "repo.get_conversation"),
        (PostgresConversationRepository, "add_message", "repo.add_message"),
        (PostgresConversationRepository, "update", "repo.update_conversation"),
        (PostgresConversationRepository, "recent_messages", "repo.recent_messages"),
        (SqlAlchemyUnitOfWork, "commit", "uow.commit"),
        (sa_asyncpg.AsyncAdapt_asyncpg_connection, "_async_ping", "pg.pre_ping"),
        (sa_asyncpg.AsyncAdapt_asyncpg_connection, "_start_transaction", "pg.begin"),
        (sa_asyncpg.AsyncAdapt_asyncpg_connection, "_commit_and_discard", "pg.commit"),
        (sa_asyncpg.AsyncAdapt_asyncpg_connection, "_rollback_and_discard", "pg.rollback"),
        (sa_asyncpg.AsyncAdapt_asyncpg_cursor, "_prepare_and_execute", "pg.statement"),
        (ReplyRunner, "_run", "reply.task"),
        (ReplyRunner, "_wait_for_lease", "lease.acquire"),
        (ReplyRunner, "_turn", "reply.turn"),
        (ReplyRunner, "_store", "reply.store"),
        (QueryEmbeddings, "embed", "query_embedding"),
        (OnnxMiniLMEmbedder, "embed_query", "embed.model"),
        (ValkeyCache, "get", "cache.get"),
        (ValkeyCache, "set", "cache.set"),
        (PgVectorKnowledgeBase, "search", "kb.search"),
        (ValkeyEventBus, "publish", "bus.publish"),
        (ValkeySessionStore, "release_reply_lease", "lease.release"),
        (ValkeySessionStore, "save", "session.save"),
        (ValkeySessionStore, "acquire_reply_lease", "lease.valkey"),
        (SearchKnowledge, "execute", "search.execute"),
        (RecallMemories, "execute", "recall.execute"),
        (ReplyRunner, "_request", "reply.request"),
        (ReplyRunner, "_attachments", "reply.attachments"),
    ]
    _trace_embedding_thread()  # first: embed.model then wraps what it installs
    for owner, name, label in targets:
        _wrap(owner, name, label)
    _trace_first_delta()


def _trace_embedding_thread() -> None:
    """Mark the query model's run on its worker thread (``embed.model`` is the loop's wait for it)."""
    import asyncio

    from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder

    def embed_one(self: Any, text: str, spans: list[Span] | None) -> list[float]:
        started = time.perf_counter()
        vector: list[float] = self._embed_one(text)
        if spans is not None:
            spans.append(("embed.thread", started, time.perf_counter()))
        return vector

    async def embed_query(self: Any, text: str) -> list[float]:
        # Executor threads do not inherit the request's context: its span list goes along explicitly.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._query_worker, embed_one, self, text, _spans.get())

    OnnxMiniLMEmbedder.embed_query = embed_query  # type: ignore[method-assign]


def _trace_first_delta() -> None:
    """Mark the moment the runner takes the model's first piece of text."""
    from support.application import replies

    original = replies.ReplyRunner._first_delta  # noqa: SLF001

    def first_delta(self: replies.ReplyRunner, draft: Any, started: float) -> None:
        if draft.ttft_ms is None:
            _mark("llm.first_delta", time.perf_counter())
        original(self, draft, started)

    replies.ReplyRunner._first_delta = first_delta  # type: ignore[method-assign]  # noqa: SLF001


class _TracingApp:
    """Records each streamed turn's spans from the moment the request reaches the application."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._turns: list[dict[str, Any]] = []

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"]
        if kind != "http" or not scope["path"].endswith("/messages/stream"):
            if kind == "http" and scope["path"] == TRACE_PATH:
                await self._answer(send)
                return
            await self._app(scope, receive, send)
            return
        spans: list[Span] = []
        token = _spans.set(spans)
        arrived = time.perf_counter()
        seen_delta = False

        async def traced_send(message: Message) -> None:
            nonlocal seen_delta
            started = time.perf_counter()
            label = None
            if message["type"] == "http.response.start":
                label = "sse.response_start"
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if not seen_delta and b"event: delta" in body:
                    seen_delta = True
                    label = "sse.first_delta"
                elif b"event: message" in body:
                    label = "sse.message"
                elif b"event: done" in body:
                    label = "sse.done"
            await send(message)
            if label is not None:
                spans.append((label, started, time.perf_counter()))

        try:
            await self._app(scope, receive, traced_send)
        finally:
            _spans.reset(token)
            ended = time.perf_counter()
            self._turns.append(
                {
                    "total_ms": (ended - arrived) * 1000,
                    "spans": [(label, (start - arrived) * 1000, (end - arrived) * 1000) for label, start, end in spans],
                }
            )

    async def _answer(self, send: Send) -> None:
        body = msgspec.json.encode(self._turns)
        self._turns = []
        start: Any = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
        end: Any = {"type": "http.response.body", "body": body}
        await send(start)
        await send(end)


# --- serving -----------------------------------------------------------------------------------------------------


def serve(factory: str, port: int) -> None:
    """Serve like ``support serve`` (uvicorn, one worker, its default loop and HTTP parser, no access log)."""
    uvicorn.run(
        factory,
        factory=True,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        ws="websockets-sansio",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="A server for bench/chat.py.")
    parser.add_argument("--app", choices=["real", "bare"], default="real")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    serve("bench.chat_server:create" if args.app == "real" else "bench.chat_server:create_bare", args.port)


if __name__ == "__main__":
    main()
