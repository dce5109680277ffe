"""Chat benchmark: time to the first streamed delta of a reply, beside the floors a turn is made of.

Run: ``.venv/bin/python -m bench.chat`` (or ``.venv/bin/python bench/chat.py``); ``--quick`` for a short run,
``--py-spy PATH`` to add a sampling profile of the server under load. One run, on real PostgreSQL and Valkey
(embedded servers started for it unless ``SUPPORT_BENCH_DATABASE_URL`` / ``SUPPORT_BENCH_VALKEY_URL`` name
others), with the sample help center loaded and a zero-latency model (20 text pieces at once, a citation, the
end). The API runs the way ``support serve`` runs it, in its own process (uvicorn, one worker), so the client's
CPU is not the server's:

- first ``delta`` of ``POST /v1/conversations/{id}/messages/stream`` with a customer token, one client,
  sequential turns (a new conversation every 10 turns), every question different so no query embedding is cached,
  in blocks with a block of the floors measured after each (so turns and floors see the machine alike);
- the same under an open-loop arrival rate (50 turns/s: sends go out on schedule whatever has completed;
  latency counts from the scheduled time);
- turns per second with 32 concurrent clients, and the server's CPU time per turn;
- the floors, between those blocks: a bare Litestar SSE endpoint's first event (served the same way, read by the
  same client), one query embedding (the local ONNX model), one hybrid search on the loaded help center, one
  insert of a message row with its commit (SQLAlchemy, as the app writes it);
- where the time of a turn goes: a second server process records when each phase of every turn starts and ends.

Results go to ``bench/results/chat.json``; a markdown table is printed.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self
from uuid import UUID

import asyncpg
import httpx
import msgspec
import uvloop
from dishka import Provider, Scope
from sqlalchemy.ext.asyncio import create_async_engine
from valkey.asyncio import Valkey

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.adapters.postgres.conversations import PostgresConversationRepository
from support.adapters.postgres.engine import asyncpg_url, create_engine, create_session_factory
from support.adapters.postgres.knowledge import PgVectorKnowledgeBase
from support.adapters.system import SystemClock
from support.application.knowledge import IngestDocuments
from support.cli import migrations
from support.cli.sources import sample_sources
from support.config import DatabaseSettings, Settings
from support.container import build_container
from support.devservers.postgres import EmbeddedPostgres, free_port
from support.devservers.valkey import EmbeddedValkey
from support.domain.conversations import Message, MessageRole
from support.domain.ids import new_id
from support.domain.knowledge import SearchQuery
from support.ports.knowledge import Embedder

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
ADMIN_KEY = "bench-admin-key"
TOKEN_SECRET = "bench-token-secret-bench-token-secret"  # noqa: S105 - a throwaway server's signing secret
HOST = "127.0.0.1"
TURNS_PER_CONVERSATION = 10
IDLE_GAP_S = 0.015  # about the time between two query embeddings when one client sends turns back to back
TRACE_PATH = "/_bench/trace"
LOAD_AT_START = [round(value, 2) for value in os.getloadavg()]
# The floors whose p50s add up to what a turn's first delta is compared with.
FLOOR_NAMES = ("bare_sse_first_event", "query_embedding", "hybrid_search", "message_insert_commit_sqlalchemy")
SERVER_SETTINGS: dict[str, str] = {}  # --set NAME=VALUE: extra SUPPORT_* variables for the server processes

# Questions a Northwind Supply customer asks, one or two per help-center article.
QUESTIONS = (
    "My card was declined at checkout, what should I do?",
    "Why did my payment fail even though I have money on the card?",
    "The armrest on my office chair wobbles, how do I fix it?",
    "My chair keeps sinking when I sit on it.",
    "How do I change the email address on my account?",
    "Can I cancel my order after it has been placed?",
    "How do I change the shipping address of an order I just placed?",
    "How long does it take to get a reply from support?",
    "What are your customer support hours?",
    "How do I create a Northwind account?",
    "My desk arrived with a cracked top, what now?",
    "I received the wrong item in my package.",
    "What personal data do you collect about me?",
    "How can I download a copy of my data?",
    "Can you remove my personal data from your systems?",
    "Do I have to pay customs duties on international orders?",
    "Do you ship to Canada and how much does it cost?",
    "The tracking says delivered but I never got the package.",
    "I missed the delivery, can the courier come back?",
    "How do I cancel my Northwind Plus membership?",
    "What benefits do I get with Northwind Plus?",
    "Which payment methods do you accept?",
    "Can I pay with PayPal or a gift card?",
    "The price dropped a week after I bought it, can I get the difference?",
    "How long does a refund take to reach my credit card?",
    "When will I see my refund if I paid with PayPal?",
    "I forgot my password and cannot log in.",
    "The password reset email never arrives.",
    "What is your return policy for furniture?",
    "Can I return an item after 30 days?",
    "How much does standard shipping cost and how long does it take?",
    "Is there express delivery?",
    "My standing desk shows error E01 and will not move.",
    "The desk stopped halfway and displays E04.",
    "How do I start a return?",
    "Do I need to print a return label?",
    "Where is my order?",
    "What does the order status 'processing' mean?",
    "How do I turn on two-factor authentication?",
    "I lost my phone and cannot get my 2FA codes.",
    "Where can I find the VAT on my invoice?",
    "Can I get an invoice with my company name on it?",
    "Is my standing desk motor covered by the warranty?",
    "How do I make a warranty claim for a broken chair?",
)


# --- statistics ----------------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.5), 3),
        "p90_ms": round(percentile(values, 0.9), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "max_ms": round(max(values), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


class Questions:
    """Every question is different (a number at the end), so no query embedding comes from the cache.

    One message in ``TURNS_PER_CONVERSATION`` states an order number, a fact the service remembers (an embedding
    and a write after the reply), as a customer does about once a conversation; the others carry a reference.
    """

    def __init__(self) -> None:
        self._count = 0

    def next(self) -> str:
        self._count += 1
        number = 100000 + self._count
        question = QUESTIONS[self._count % len(QUESTIONS)]
        if self._count % TURNS_PER_CONVERSATION == 1:
            return f"{question} My order number is {number}."
        return f"{question} (ref {number})"


# --- a small HTTP/1.1 client: the cheapest way to see the first event arrive ------------------------------------------


class HttpError(Exception):
    pass


@dataclass(slots=True)
class StreamResult:
    sent: float
    first_delta: float | None
    done: float
    error: str | None = None


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a POST and reads its chunked SSE response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self._reader = reader
        self._writer = writer
        self._host = f"{HOST}:{port}"

    @classmethod
    async def open(cls, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(HOST, port)  # asyncio sets TCP_NODELAY
        return cls(reader, writer, port)

    def close(self) -> None:
        self._writer.close()

    async def stream(self, path: str, body: bytes, token: str, *, sent: float | None = None) -> StreamResult:
        """POST ``body`` and read the event stream to its end; ``sent`` overrides the start (open loop)."""
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self._host}\r\nauthorization: Bearer {token}\r\n"
            f"content-type: application/json\r\naccept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        self._writer.write(head + body)
        status, headers = await self._head()
        if status != 200 or headers.get(b"transfer-encoding") != b"chunked":
            text = await self._reader.readexactly(int(headers.get(b"content-length", b"0")))
            return StreamResult(sent or started, None, time.perf_counter(), f"{status} {text[:200]!r}")
        first: float | None = None
        error: str | None = None
        seen: list[bytes] = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await self._reader.readexactly(size + 2)
            if size == 0:
                break
            if first is None:
                seen.append(data)
            if first is None and b"event: delta" in data:
                first = time.perf_counter()
            elif b"event: error" in data:
                error = data.decode(errors="replace")[:300]
            elif first is None and b"event: handoff" in data:
                # Handed to a person without a model call: a real outcome, but not a turn this bench measures.
                error = "handed over: " + data.decode(errors="replace")[:200]
        if first is None and error is None:
            seen_text = b"".join(seen).decode(errors="replace")
            error = f"no delta ({'done' if 'event: done' in seen_text else 'no done'}): {seen_text[-400:]}"
        return StreamResult(sent or started, first, time.perf_counter(), error)

    async def _head(self) -> tuple[int, dict[bytes, bytes]]:
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name:
                headers[name.strip().lower()] = value.strip()
        return status, headers


@dataclass(frozen=True, slots=True)
class Conversation:
    id: UUID
    token: str

    @property
    def stream_path(self) -> str:
        return f"/v1/conversations/{self.id}/messages/stream"


def turn_body(text: str) -> bytes:
    return msgspec.json.encode({"content": text})


# --- processes -----------------------------------------------------------------------------------------------------


@dataclass
class Backends:
    """PostgreSQL and Valkey, and the processes whose CPU time they use (none for external servers)."""

    database_url: str
    valkey_url: str
    postgres_pid: int | None = None
    valkey_pid: int | None = None

    async def connect(self) -> asyncpg.Connection:
        """A plain asyncpg connection to the database, beside the service's own pool."""
        return await asyncpg.connect(asyncpg_url(self.database_url).replace("postgresql+asyncpg", "postgresql"))


TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat(pid: int, *, reaped: bool = False, thread: int | None = None) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) from ``/proc/<pid>/stat``; ``reaped`` adds its exited children's."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread is not None else f"/proc/{pid}/stat"
    try:
        raw = Path(path).read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after the command name, which may hold spaces
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if reaped else 0)
    return int(fields[1]), ticks / TICKS_PER_S


def process_cpu_s(pid: int | None, *, tree: bool = False) -> float:
    """User + system CPU seconds of a process, all threads (with ``tree``: and its children, PostgreSQL's backends)."""
    if pid is None:
        return 0.0
    own = _stat(pid, reaped=tree)  # backends that exited count in the postmaster's reaped-children time
    total = own[1] if own else 0.0
    if tree:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (child := _stat(int(entry.name))) is not None and child[0] == pid:
                total += child[1]
    return total


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every process, ours and others'), from ``/proc/stat``."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICKS_PER_S


@dataclass
class CpuMeter:
    """CPU seconds spent by the server (its event loop thread apart), PostgreSQL, Valkey, this client, and the
    other processes of the machine, between two readings."""

    server_pid: int
    backends: Backends

    def read(self) -> dict[str, float]:
        loop = _stat(self.server_pid, thread=self.server_pid)
        readings = {
            "server": process_cpu_s(self.server_pid),
            "server_event_loop_thread": loop[1] if loop else 0.0,
            "postgres": process_cpu_s(self.backends.postgres_pid, tree=True),
            "valkey": process_cpu_s(self.backends.valkey_pid),
            "client": process_cpu_s(os.getpid()),
        }
        ours = sum(value for name, value in readings.items() if name != "server_event_loop_thread")
        readings["other_processes"] = machine_busy_s() - ours
        return readings

    @staticmethod
    def per_turn_ms(before: dict[str, float], after: dict[str, float], turns: int) -> dict[str, float]:
        return {name: round((after[name] - before[name]) * 1000 / max(turns, 1), 3) for name in before}

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float], elapsed_s: float) -> dict[str, float]:
        return {name: round((after[name] - before[name]) / elapsed_s, 3) for name in before}


class ServerProcess:
    """A server in its own process (``command``, given a free ``--port``), stopped with SIGTERM.

    ``bench/soak.py`` runs ``support serve`` with it; this benchmark, ``python -m bench.chat_server``.
    """

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self._log = log
        with log.open("ab") as output:
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and entry points
                [*command, "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
            )

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def wait_ready(self, path: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(f"the server exited:\n{self._log.read_text(errors='replace')[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(path)).status_code in {200, 405}:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"the server did not start:\n{self._log.read_text(errors='replace')[-3000:]}")

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()


@contextlib.asynccontextmanager
async def running_server(
    app: str, backends: Backends, scratch: Path, *, trace: bool = False
) -> AsyncIterator[ServerProcess]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("SUPPORT_")}
    env |= {
        # Production settings: JSON logs at info level (to a file here), a fixed token secret.
        "SUPPORT_ENV": "prod",
        "SUPPORT_LOG_LEVEL": "info",
        "SUPPORT_DATABASE_URL": backends.database_url,
        "SUPPORT_VALKEY_URL": backends.valkey_url,
        "SUPPORT_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "SUPPORT_CONVERSATIONS__TOKEN_SECRET": TOKEN_SECRET,
        "SUPPORT_BENCH_TRACE": "1" if trace else "0",
        # Rate limits stay on, so every turn pays its limiter check, but far above what the load sends: every
        # client here shares one address, and the open loop sends more per conversation than a person would.
        "SUPPORT_LIMITS__PER_KEY": "1000000000",
        "SUPPORT_LIMITS__PER_CUSTOMER": "1000000000",
        "SUPPORT_LIMITS__PER_IP": "1000000000",
        "SUPPORT_LIMITS__PER_CONVERSATION": "1000000000",
        "SUPPORT_LIMITS__DAILY_TOKENS_PER_CUSTOMER": "0",
        **SERVER_SETTINGS,
    }
    command = [sys.executable, "-m", "bench.chat_server", "--app", app]
    server = ServerProcess(command, env, scratch / f"server-{app}{'-trace' if trace else ''}.log")
    try:
        await server.wait_ready("/health/ready" if app == "real" else "/stream")
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.contextmanager
def backends_for(scratch: Path) -> Iterator[Backends]:
    """The servers named by SUPPORT_BENCH_DATABASE_URL / SUPPORT_BENCH_VALKEY_URL, or embedded ones."""
    database_url = os.environ.get("SUPPORT_BENCH_DATABASE_URL")
    valkey_url = os.environ.get("SUPPORT_BENCH_VALKEY_URL")
    postgres = None if database_url else EmbeddedPostgres(scratch / "postgres", durable=False)
    valkey = None if valkey_url else EmbeddedValkey(scratch / "valkey", durable=False)
    try:
        backends = Backends(
            database_url=database_url or (postgres.start() if postgres else ""),
            valkey_url=valkey_url or (valkey.start() if valkey else ""),
        )
        if postgres is not None:
            backends.postgres_pid = int((postgres.data_dir / "postmaster.pid").read_text().split()[0])
        if valkey is not None:
            backends.valkey_pid = int((valkey.data_dir / "valkey.pid").read_text().split()[0])
        yield backends
    finally:
        if valkey is not None:
            valkey.stop()
        if postgres is not None:
            postgres.stop()


# --- setup ---------------------------------------------------------------------------------------------------------


def embedder_provider(embedder: Embedder) -> Provider:
    provider = Provider(scope=Scope.APP)
    provider.provide(lambda: embedder, provides=Embedder, override=True)
    return provider


async def load_help_center(backends: Backends, embedder: OnnxMiniLMEmbedder) -> dict[str, int]:
    settings = Settings(
        env="dev", database_url=backends.database_url, valkey_url=backends.valkey_url, log_level="warning"
    )
    container = build_container(settings, embedder_provider(embedder))
    try:
        async with container() as request:
            report = await (await request.get(IngestDocuments)).execute(list(sample_sources()))
    finally:
        await container.close()
    return {"documents": report.total, "chunks_embedded": report.chunks, "unchanged": report.unchanged}


async def start_conversations(port: int, count: int, prefix: str) -> list[Conversation]:
    """Conversations started by the company's backend (the admin key), each with its customer token."""
    limit = asyncio.Semaphore(8)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def one(client: httpx.AsyncClient, number: int) -> Conversation:
        async with limit:
            response = await client.post(
                "/v1/conversations", json={"customer": {"external_id": f"{prefix}-{number}"}}, headers=headers
            )
        if response.status_code != 201:
            raise HttpError(response.text)
        body = response.json()
        return Conversation(UUID(body["id"]), body["customer_token"])

    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        return list(await asyncio.gather(*(one(client, number) for number in range(count))))


# --- floors (in this process, the server idle) -----------------------------------------------------------------------


class FloorMeter:
    """The floors a turn is made of, measured in blocks between the one-client pass's blocks of turns.

    Turns and floors then see the machine in the same state: on this shared 2-core machine its speed drifts by a
    quarter within minutes, and floors measured minutes after the turns moved the ratio between 1.4x and 2.1x
    from run to run. Each block measures: the bare SSE endpoint's first event, query embeddings back to back,
    the same after an idle gap (a reference), hybrid searches with the embeddings' vectors, message inserts.
    """

    def __init__(
        self, backends: Backends, embedder: OnnxMiniLMEmbedder, bare: ServerProcess, conversation_id: UUID
    ) -> None:
        self._backends = backends
        self._embedder = embedder
        self._bare = bare
        self._conversation_id = conversation_id
        self._questions = Questions()
        self._stack = contextlib.AsyncExitStack()
        self._samples: dict[str, list[float]] = {
            "bare_sse_first_event": [],
            "query_embedding": [],
            "query_embedding_after_idle": [],
            "hybrid_search": [],
            "message_insert_commit_sqlalchemy": [],
        }
        self._embedding_cpu_s = 0.0
        self._inserted = 0

    async def __aenter__(self) -> Self:
        self._connection = await Connection.open(self._bare.port)
        self._stack.callback(self._connection.close)
        engine = create_engine(self._backends.database_url, DatabaseSettings(pool_size=2))
        self._stack.push_async_callback(engine.dispose)
        self._search_session = await self._stack.enter_async_context(create_session_factory(engine)())
        # The insert floor: the app's statement (repository) and commit through SQLAlchemy, on a held connection
        # (no pool checkout and its pre-ping, which are part of what the app adds, not of the floor).
        floor_engine = create_async_engine(asyncpg_url(self._backends.database_url), pool_size=1, pool_pre_ping=False)
        self._stack.push_async_callback(floor_engine.dispose)
        self._insert_session = await self._stack.enter_async_context(create_session_factory(floor_engine)())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def block(self, repeats: int, *, warmup: int = 2) -> float:
        """One block of every floor: ``warmup`` untimed runs of each, then ``repeats`` timed ones.

        Returns the block's sum of the floors' p50s.
        """
        samples = self._samples
        counts = {name: len(values) for name, values in samples.items()}
        for index in range(warmup + repeats):
            result = await self._connection.stream("/stream", b'{"content": "x"}', "none")
            if result.first_delta is None:
                raise HttpError(f"the bare endpoint sent no event: {result.error}")
            if index >= warmup:
                samples["bare_sse_first_event"].append((result.first_delta - result.sent) * 1000)

        texts = [self._questions.next() + " (floor)" for _ in range(warmup + repeats)]
        vectors = []
        cpu_started = 0.0
        for index, text in enumerate(texts):
            if index == warmup:  # the first runs warm the model
                cpu_started = time.process_time()
            started = time.perf_counter()
            vectors.append(await self._embedder.embed_query(text))
            if index >= warmup:
                samples["query_embedding"].append((time.perf_counter() - started) * 1000)
        self._embedding_cpu_s += time.process_time() - cpu_started
        # In a turn the model has been idle for a while (onnxruntime's intra-op threads are asleep: spinning is
        # off), and its caches have cooled; measured apart, as a reference.
        for text in texts[: max(repeats // 2, 1)]:
            await asyncio.sleep(IDLE_GAP_S)
            started = time.perf_counter()
            await self._embedder.embed_query(text + " again")
            samples["query_embedding_after_idle"].append((time.perf_counter() - started) * 1000)

        # The search a turn makes: as many passages, each with its neighbouring chunks (the offline responder's).
        llm = Settings().llm
        knowledge = PgVectorKnowledgeBase(self._search_session)
        for index, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
            started = time.perf_counter()
            await knowledge.search(SearchQuery(text, limit=llm.passages, context=llm.context_chunks), vector)
            if index >= warmup:
                samples["hybrid_search"].append((time.perf_counter() - started) * 1000)

        repository = PostgresConversationRepository(self._insert_session)
        for index in range(warmup + repeats):
            self._inserted += 1
            message = Message(
                id=new_id(),
                conversation_id=self._conversation_id,
                role=MessageRole.CUSTOMER,
                content=f"floor insert {self._inserted}",
                created_at=SystemClock().now(),
            )
            started = time.perf_counter()
            await repository.add_message(message)
            await self._insert_session.commit()
            if index >= warmup:
                samples["message_insert_commit_sqlalchemy"].append((time.perf_counter() - started) * 1000)
        return sum(percentile(samples[name][counts[name] :], 0.5) for name in FLOOR_NAMES)

    def report(self) -> dict[str, Any]:
        embeddings = max(len(self._samples["query_embedding"]), 1)
        result = {name: summary(values) for name, values in self._samples.items()}
        result["query_embedding"]["cpu_ms"] = round(self._embedding_cpu_s * 1000 / embeddings, 3)
        result["query_embedding_after_idle"]["idle_gap_ms"] = IDLE_GAP_S * 1000
        return result


async def measure_round_trips(backends: Backends, conversation_id: UUID, repeats: int) -> dict[str, Any]:
    """Reference points for the diagnosis: one PostgreSQL and one Valkey round trip, one raw insert."""
    connection = await backends.connect()
    select_ms: list[float] = []
    insert_ms: list[float] = []
    now = SystemClock().now()
    for index in range(repeats + 10):
        started = time.perf_counter()
        await connection.fetchval("SELECT 1")
        if index >= 10:
            select_ms.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await connection.execute(
            "INSERT INTO messages (id, conversation_id, role, content, created_at) VALUES ($1, $2, 'customer', $3, $4)",
            new_id(),
            conversation_id,
            f"raw insert {index}",
            now,
        )
        if index >= 10:
            insert_ms.append((time.perf_counter() - started) * 1000)
    await connection.close()
    client = Valkey.from_url(backends.valkey_url)
    ping_ms: list[float] = []
    for index in range(repeats + 10):
        started = time.perf_counter()
        await client.ping()
        if index >= 10:
            ping_ms.append((time.perf_counter() - started) * 1000)
    await client.aclose()
    return {
        "postgres_round_trip": summary(select_ms),
        "message_insert_autocommit_asyncpg": summary(insert_ms),
        "valkey_round_trip": summary(ping_ms),
    }


def error_kind(error: str) -> str:
    """A short class of a failed turn: ``handed over``, an HTTP status, a stream error's code, or ``no delta``."""
    if error.startswith("handed over"):
        return "handed over"
    if "event: error" in error:
        code = re.search(r'"code":"([^"]+)"', error)
        return f"stream error {code.group(1) if code else '?'}"
    if error.startswith("no delta"):
        # `done` without deltas: the message was answered with an earlier one by that turn's reply. No `done`:
        # a person has the conversation, and the message went to them.
        merged = error.startswith("no delta (done)")
        return "answered with an earlier message" if merged else "no reply: a person has it"
    return error.split(" ", 1)[0] if error[:1].isdigit() else error[:40]


# --- the workloads -------------------------------------------------------------------------------------------------


@dataclass
class TurnLog:
    first_delta_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def add(self, result: StreamResult) -> None:
        if result.error is not None or result.first_delta is None:
            self.errors.append(result.error or "no delta")
            return
        self.first_delta_ms.append((result.first_delta - result.sent) * 1000)
        self.total_ms.append((result.done - result.sent) * 1000)

    def report(self) -> dict[str, Any]:
        return {
            "turns": len(self.first_delta_ms),
            "errors": len(self.errors),
            "errors_by_kind": dict(Counter(error_kind(error) for error in self.errors).most_common()),
            "error_examples": self.errors[:3],
            "first_delta": summary(self.first_delta_ms),
            "done": summary(self.total_ms),
        }


async def sequential(
    server: ServerProcess,
    backends: Backends,
    questions: Questions,
    warmup: int,
    turns: int,
    *,
    floors: FloorMeter | None = None,
    blocks: int = 1,
) -> dict[str, Any]:
    """``turns`` back-to-back turns of one client after ``warmup``, in ``blocks`` with a block of floors after each.

    A turn's first after the floors ran is left out: the bench process's own model and queries have just pushed
    the server's out of the caches, which no turn of a client sending back to back meets.
    """
    conversations = await start_conversations(
        server.port, (warmup + turns + blocks) // TURNS_PER_CONVERSATION + 1, "seq"
    )
    connection = await Connection.open(server.port)
    sent = 0

    async def one_turn() -> StreamResult:
        nonlocal sent
        conversation = conversations[sent // TURNS_PER_CONVERSATION]
        sent += 1
        return await connection.stream(conversation.stream_path, turn_body(questions.next()), conversation.token)

    for _ in range(warmup):
        await one_turn()
    log = TurnLog()
    meter = CpuMeter(server.pid, backends)
    cpu_ms: dict[str, float] = {}
    cores: dict[str, float] = {}
    elapsed = 0.0
    by_block: list[dict[str, float]] = []
    for block in range(blocks):
        if block > 0:
            await one_turn()  # after the floors: see the docstring
        before, started = meter.read(), time.perf_counter()
        size = turns // blocks + (1 if block < turns % blocks else 0)
        for _ in range(size):
            log.add(await one_turn())
        after, took = meter.read(), time.perf_counter() - started
        elapsed += took
        for name, value in CpuMeter.per_turn_ms(before, after, 1).items():
            cpu_ms[name] = cpu_ms.get(name, 0.0) + value
        if floors is not None:
            floors_p50 = await floors.block(max(turns // blocks, 1))
            turns_p50 = percentile(log.first_delta_ms[-size:], 0.5) if size and log.first_delta_ms else 0.0
            by_block.append(
                {
                    "first_delta_p50_ms": round(turns_p50, 3),
                    "sum_of_floors_p50_ms": round(floors_p50, 3),
                    "ratio": round(turns_p50 / floors_p50, 2),
                }
            )
    connection.close()
    cores = {name: round(value / 1000 / max(elapsed, 1e-3), 3) for name, value in cpu_ms.items()}
    return log.report() | {
        "cpu_ms_per_turn": {name: round(value / max(turns, 1), 3) for name, value in cpu_ms.items()},
        "cores_used": cores,
        "blocks": by_block,
    }


class ConnectionPool:
    """Idle keep-alive connections for the open-loop client; a new one is opened when none is idle."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._idle: list[Connection] = []
        self.opened = 0
        self.reconnected = 0

    async def fill(self, count: int) -> None:
        for _ in range(count):
            self._idle.append(await Connection.open(self._port))
        self.opened += count

    async def take(self) -> Connection:
        if self._idle:
            return self._idle.pop()
        self.opened += 1
        return await Connection.open(self._port)

    def give(self, connection: Connection) -> None:
        self._idle.append(connection)

    def close(self) -> None:
        for connection in self._idle:
            connection.close()


async def open_loop(
    server: ServerProcess, backends: Backends, questions: Questions, rate: float, duration_s: float
) -> dict[str, Any]:
    """Sends at fixed times whatever has completed; latency counts from the scheduled time."""
    total = round(rate * duration_s)
    # Round-robin over enough conversations that each one's previous turn is long done (2 s apart at 50/s).
    conversations = await start_conversations(server.port, max(1, round(rate * 2)), "open")
    pool = ConnectionPool(server.port)
    await pool.fill(64)
    log = TurnLog()
    lags: list[float] = []

    async def turn(number: int, scheduled: float) -> None:
        lags.append((time.perf_counter() - scheduled) * 1000)
        connection = await pool.take()
        conversation = conversations[number % len(conversations)]
        body = turn_body(questions.next())
        try:
            result = await connection.stream(conversation.stream_path, body, conversation.token, sent=scheduled)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            # The server closed a connection that sat idle past its keep-alive timeout before this request
            # reached it (nothing was answered): send again on a new one, as an HTTP client does.
            connection.close()
            pool.reconnected += 1
            connection = await Connection.open(server.port)
            result = await connection.stream(conversation.stream_path, body, conversation.token, sent=scheduled)
        pool.give(connection)
        log.add(result)

    meter = CpuMeter(server.pid, backends)
    before = meter.read()
    start = time.perf_counter() + 0.05
    tasks = []
    for number in range(total):
        scheduled = start + number / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(turn(number, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    after = meter.read()
    pool.close()
    return log.report() | {
        "rate_per_s": rate,
        "duration_s": round(elapsed, 2),
        "send_lag": summary(lags),
        "connections_opened": pool.opened,
        "connections_reopened_after_keep_alive_timeout": pool.reconnected,
        "cpu_ms_per_turn": CpuMeter.per_turn_ms(before, after, total),
        "cores_used": CpuMeter.cores(before, after, elapsed),
    }


async def saturation(
    server: ServerProcess,
    backends: Backends,
    questions: Questions,
    clients: int,
    duration_s: float,
    *,
    during: Callable[[float], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """``clients`` loops of send-and-read-to-done; turns completed in the window after a short warm-up."""
    per_client = 12
    conversations = await start_conversations(server.port, clients * per_client, "sat")
    warmup_s = 2.0
    started = time.perf_counter()
    window = (started + warmup_s, started + warmup_s + duration_s)
    log = TurnLog()
    completed = 0

    async def client(number: int) -> None:
        nonlocal completed
        connection = await Connection.open(server.port)
        mine = conversations[number * per_client : (number + 1) * per_client]
        turn = 0
        while time.perf_counter() < window[1]:
            conversation = mine[(turn // TURNS_PER_CONVERSATION) % len(mine)]
            turn += 1
            result = await connection.stream(conversation.stream_path, turn_body(questions.next()), conversation.token)
            if window[0] <= result.sent and result.done <= window[1]:
                log.add(result)
            if window[0] <= result.done <= window[1]:
                completed += 1
        connection.close()

    meter = CpuMeter(server.pid, backends)

    async def sample() -> tuple[dict[str, float], dict[str, float]]:
        await asyncio.sleep(window[0] - time.perf_counter())
        before = meter.read()
        if during is not None:
            await during(duration_s)
        await asyncio.sleep(window[1] - time.perf_counter())
        return before, meter.read()

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(client(number) for number in range(clients)))
    before, after = await sampler
    return log.report() | {
        "conversations_by_status": await statuses(backends, "sat"),
        "clients": clients,
        "window_s": duration_s,
        "turns_per_s": round(completed / duration_s, 1),
        "cpu_ms_per_turn": CpuMeter.per_turn_ms(before, after, completed),
        "cores_used": CpuMeter.cores(before, after, duration_s),
    }


async def statuses(backends: Backends, prefix: str) -> dict[str, int]:
    """How a workload's conversations ended: ``bot``, or who has them and why (a handed-over one goes silent)."""
    connection = await backends.connect()
    try:
        rows = await connection.fetch(
            "SELECT c.status, c.handoff->>'reason_code' AS reason, count(*) AS n FROM conversations c "
            "JOIN customers u ON u.id = c.customer_id WHERE u.external_id LIKE $1 GROUP BY 1, 2 ORDER BY 3 DESC",
            f"{prefix}-%",
        )
    finally:
        await connection.close()
    return {row["status"] + (f" ({row['reason']})" if row["reason"] else ""): row["n"] for row in rows}


# --- where the time goes ---------------------------------------------------------------------------------------------

# The critical path to the first delta, as (segment, the marker that ends it); markers are (label, which, edge).
SEGMENTS: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("request to handler, guard, authentication", ("auth", "first", "end")),
    ("read and decode the body", ("body.read", "first", "end")),
    ("rate-limit verdict and embedding-cache lookup (side by side)", ("embed.model", "first", "start")),
    ("query embedding model run (beside it: the send and the history read)", ("query_embedding", "first", "end")),
    ("hybrid search (beside it: recall and the last look)", ("kb.search", "first", "end")),
    ("close the scope; model's first piece", ("llm.first_delta", "first", "start")),
    ("publish to Valkey", ("bus.publish", "after_first_delta", "end")),
    ("SSE write of the first delta", ("sse.first_delta", "first", "end")),
)
# What runs beside the query embedding, as moments after the request reached the app: it has slack when it ends
# before the embedding does.
SIDE_MARKERS: tuple[tuple[str, tuple[str, str, str]], ...] = (
    ("message committed (SendMessage.execute returns)", ("send_message.execute", "first", "end")),
    ("reply lease got (one Valkey try beside the insert)", ("lease.valkey", "first", "end")),
    ("history read (conversation, recent messages)", ("repo.recent_messages", "first", "end")),
    ("query embedding ready", ("query_embedding", "first", "end")),
    ("recall and the last look done", ("recall.execute", "first", "end")),
    ("hybrid search done", ("kb.search", "first", "end")),
)


def _marker(spans: list[list[Any]], label: str, which: str, edge: str) -> float | None:
    matching = [span for span in spans if span[0] == label]
    if which == "after_first_delta":
        first_delta = next((span[1] for span in spans if span[0] == "llm.first_delta"), None)
        matching = [span for span in matching if first_delta is not None and span[1] >= first_delta]
    if not matching:
        return None
    span = min(matching, key=lambda item: item[1])
    return float(span[1] if edge == "start" else span[2])


def analyse_trace(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of each critical-path segment, and per-turn totals and counts of every span label."""
    segments: dict[str, list[float]] = {name: [] for name, _ in SEGMENTS}
    side: dict[str, list[float]] = {name: [] for name, _ in SIDE_MARKERS}
    labels: dict[str, list[tuple[int, float]]] = {}
    for turn in turns:
        spans = turn["spans"]
        previous = 0.0
        for name, (label, which, edge) in SEGMENTS:
            marker = _marker(spans, label, which, edge)
            if marker is None:
                continue
            segments[name].append(marker - previous)
            previous = marker
        for name, (label, which, edge) in SIDE_MARKERS:
            moment = _marker(spans, label, which, edge)
            if moment is not None:
                side[name].append(moment)
        per_label: dict[str, tuple[int, float]] = {}
        for label, start, end in spans:
            count, total = per_label.get(label, (0, 0.0))
            per_label[label] = (count + 1, total + end - start)
        for label, value in per_label.items():
            labels.setdefault(label, []).append(value)
    first_delta = [_marker(turn["spans"], "sse.first_delta", "first", "end") for turn in turns]
    return {
        "turns": len(turns),
        "server_first_delta_p50_ms": round(percentile([v for v in first_delta if v is not None], 0.5), 3),
        "segments_p50_ms": {name: round(percentile(values, 0.5), 3) for name, values in segments.items() if values},
        "moments_p50_ms": {name: round(percentile(values, 0.5), 3) for name, values in side.items() if values},
        "spans_per_turn": {
            label: {
                "count": round(statistics.fmean(count for count, _ in values), 2),
                "total_p50_ms": round(percentile([total for _, total in values], 0.5), 3),
            }
            for label, values in sorted(labels.items())
        },
    }


async def fetch_trace(port: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        turns: list[dict[str, Any]] = (await client.get(TRACE_PATH)).json()
        return turns


async def traced_pass(
    backends: Backends, scratch: Path, questions: Questions, warmup: int, turns: int, load_s: float
) -> dict[str, Any]:
    async with running_server("real", backends, scratch, trace=True) as server:
        await sequential(server, backends, questions, warmup, 0)
        await fetch_trace(server.port)
        await sequential(server, backends, questions, 0, turns)
        alone = analyse_trace(await fetch_trace(server.port))
        await saturation(server, backends, questions, 32, load_s)
        loaded = analyse_trace(await fetch_trace(server.port))
    return {"one_client": alone, "32_clients": loaded}


# Where a sample's CPU goes: the first frame from the leaf up that belongs to one of these (file path fragments).
PACKAGES = (
    ("onnxruntime (query embedding)", ("onnx_minilm.py:_embed_one", "onnxruntime")),
    ("tokenizers", ("tokenizers",)),
    ("structlog / logging", ("structlog", "logging/")),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("advanced_alchemy", ("advanced_alchemy",)),
    ("asyncpg", ("asyncpg",)),
    ("valkey client", ("valkey/",)),
    ("msgspec", ("msgspec",)),
    ("dishka", ("dishka",)),
    ("litestar", ("litestar",)),
    ("uvicorn / httptools", ("uvicorn", "httptools")),
    ("support (application code)", ("support/",)),
    ("asyncio / uvloop", ("asyncio/", "uvloop")),
)


def attribute_samples(raw: str) -> dict[str, Any]:
    """Shares of the samples by package (from the leaf up) and the hottest leaf functions, from py-spy's raw output."""
    by_package: dict[str, int] = {}
    by_leaf: dict[str, int] = {}
    by_thread: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread = frames[0]
        by_thread[thread] = by_thread.get(thread, 0) + count
        by_leaf[frames[-1]] = by_leaf.get(frames[-1], 0) + count
        package = "other"
        for frame in reversed(frames[1:]):
            found = next((name for name, marks in PACKAGES if any(mark in frame for mark in marks)), None)
            if found is not None:
                package = found
                break
        by_package[package] = by_package.get(package, 0) + count

    def shares(counts: dict[str, int], top: int) -> dict[str, float]:
        ordered = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return {name: round(count / max(total, 1), 4) for name, count in ordered}

    return {
        "samples": total,
        "by_package": shares(by_package, 20),
        "by_thread": shares(by_thread, 8),
        "top_leaf_frames": shares(by_leaf, 25),
    }


async def sampled_pass(
    backends: Backends, scratch: Path, questions: Questions, py_spy: str, load_s: float
) -> dict[str, Any]:
    """py-spy samples the server (all threads, on CPU only) while 32 clients load it."""
    output = scratch / "py-spy.txt"

    async def record(duration_s: float) -> None:
        process = await asyncio.create_subprocess_exec(
            py_spy, "record", "-p", str(server.pid), "-d", str(round(duration_s)), "-r", "250", "-f", "raw",
            "-t", "--nonblocking", "-o", str(output),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await process.wait()

    async with running_server("real", backends, scratch) as server:
        await sequential(server, backends, questions, 20, 0)
        result = await saturation(server, backends, questions, 32, load_s, during=record)
    attribution = attribute_samples(output.read_text() if output.exists() else "")
    return attribution | {"turns_per_s_while_sampled": result["turns_per_s"]}


# --- the run -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    warmup: int
    turns: int
    blocks: int
    rate: float
    open_loop_s: float
    clients: int
    saturation_s: float
    trace_turns: int
    py_spy: str | None


async def run(plan: Plan) -> dict[str, Any]:
    RESULTS.mkdir(exist_ok=True)
    questions = Questions()
    with tempfile.TemporaryDirectory(prefix="support-bench-chat-") as folder, backends_for(Path(folder)) as backends:
        scratch = Path(folder)
        await asyncio.to_thread(migrations.upgrade, backends.database_url)
        embedder = OnnxMiniLMEmbedder()
        try:
            print("loading the sample help center …", flush=True)
            knowledge = await load_help_center(backends, embedder)
            async with (
                running_server("real", backends, scratch) as server,
                running_server("bare", backends, scratch) as bare,
            ):
                floor_conversation = (await start_conversations(server.port, 1, "floor"))[0]
                print(f"one client, sequential turns, with the floors between {plan.blocks} blocks …", flush=True)
                async with FloorMeter(backends, embedder, bare, floor_conversation.id) as floor_meter:
                    one_client = await sequential(
                        server, backends, questions, plan.warmup, plan.turns, floors=floor_meter, blocks=plan.blocks
                    )
                floors = floor_meter.report() | await measure_round_trips(backends, floor_conversation.id, plan.turns)
                print(f"open loop, {plan.rate:.0f} turns/s for {plan.open_loop_s:.0f} s …", flush=True)
                arrivals = await open_loop(server, backends, questions, plan.rate, plan.open_loop_s)
                print(f"saturation, {plan.clients} clients for {plan.saturation_s:.0f} s …", flush=True)
                saturated = await saturation(server, backends, questions, plan.clients, plan.saturation_s)
            print("tracing the phases of a turn …", flush=True)
            trace = await traced_pass(backends, scratch, questions, plan.warmup, plan.trace_turns, 3.0)
            profile = None
            if plan.py_spy:
                print("sampling the server with py-spy …", flush=True)
                profile = await sampled_pass(backends, scratch, questions, plan.py_spy, 6.0)
        finally:
            embedder.close()
    return {
        "machine": machine(),
        "knowledge": knowledge,
        "one_client": one_client,
        "open_loop": arrivals,
        "saturation": saturated,
        "floors": floors,
        "verdict": verdict(one_client, arrivals, floors),
        "phases": trace,
        "profile": profile,
    }


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_average_at_start": LOAD_AT_START,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_end": [round(value, 2) for value in os.getloadavg()],
        "note": "client, server, PostgreSQL and Valkey share these cores; PostgreSQL runs without fsync",
    }


def verdict(one_client: dict[str, Any], arrivals: dict[str, Any], floors: dict[str, Any]) -> dict[str, Any]:
    total = sum(floors[name]["p50_ms"] for name in FLOOR_NAMES if name in floors)
    p50 = one_client["first_delta"]["p50_ms"]
    idle_total = total - floors["query_embedding"]["p50_ms"] + floors["query_embedding_after_idle"]["p50_ms"]
    return {
        "sum_of_floors_p50_ms": round(total, 3),
        "first_delta_over_floors": round(p50 / total, 2),
        "first_delta_over_floors_with_idle_embedding": round(p50 / idle_total, 2),
        "first_delta_over_floors_by_block": sorted(block["ratio"] for block in one_client.get("blocks", ())),
        "first_delta_p50_ok": p50 <= 10,
        "first_delta_p99_ok": one_client["first_delta"]["p99_ms"] <= 25,
        "open_loop_p99_ok": arrivals["first_delta"].get("p99_ms", 1e9) <= 50,
        "floors_ratio_ok": p50 / total <= 1.5,
    }


def table(result: dict[str, Any]) -> str:
    one, arrivals, saturated = result["one_client"], result["open_loop"], result["saturation"]
    floors, judged = result["floors"], result["verdict"]

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    def ms(item: dict[str, Any], key: str = "p50_ms") -> str:
        return f"{item[key]:.2f} ms"

    rows = [
        "| measure | result | target | verdict |",
        "| --- | --- | --- | --- |",
        (
            f"| first delta p50, one client ({one['turns']} turns in {len(one.get('blocks', ())) or 1} blocks, "
            f"the floors measured between them) | {ms(one['first_delta'])} | ≤ 10 ms "
            f"| {met(judged['first_delta_p50_ok'])} |"
        ),
        (
            f"| first delta p99, one client | {ms(one['first_delta'], 'p99_ms')} | ≤ 25 ms "
            f"| {met(judged['first_delta_p99_ok'])} |"
        ),
        (
            f"| first delta p50 / p99 at {arrivals['rate_per_s']:.0f} turns/s open loop ({arrivals['turns']} turns, "
            f"{arrivals['errors']} errors) | {ms(arrivals['first_delta'])} / {ms(arrivals['first_delta'], 'p99_ms')} "
            f"| p99 ≤ 50 ms | {met(judged['open_loop_p99_ok'])} |"
        ),
        (
            f"| first delta p50 / sum of floors | {judged['first_delta_over_floors']:.2f}x "
            f"({judged['sum_of_floors_p50_ms']:.2f} ms; {judged['first_delta_over_floors_with_idle_embedding']:.2f}x "
            f"with the idle-model embedding) | ≤ 1.5x | {met(judged['floors_ratio_ok'])} |"
        ),
        (
            f"| the same ratio per block of turns and floors ({len(judged['first_delta_over_floors_by_block'])} "
            f"blocks), lowest / median / highest | {_spread(judged['first_delta_over_floors_by_block'])} | | |"
        ),
        (
            f"| turns/s, {saturated['clients']} clients ({saturated['errors']} errors) | {saturated['turns_per_s']} "
            f"(first delta p50 {ms(saturated['first_delta'])}, p99 {ms(saturated['first_delta'], 'p99_ms')}) | | |"
        ),
        (
            f"| server CPU per turn: saturated / one client | {saturated['cpu_ms_per_turn']['server']:.2f} ms / "
            f"{one['cpu_ms_per_turn']['server']:.2f} ms | | |"
        ),
        (
            f"| of which the event loop thread: saturated / one client "
            f"| {saturated['cpu_ms_per_turn']['server_event_loop_thread']:.2f} ms / "
            f"{one['cpu_ms_per_turn']['server_event_loop_thread']:.2f} ms | | |"
        ),
        (
            f"| PostgreSQL / Valkey CPU per turn, saturated | {saturated['cpu_ms_per_turn']['postgres']:.2f} ms / "
            f"{saturated['cpu_ms_per_turn']['valkey']:.2f} ms | | |"
        ),
        (
            f"| cores used by other processes of the machine: one client / open loop / saturated "
            f"| {one['cores_used']['other_processes']:.2f} / {arrivals['cores_used']['other_processes']:.2f} / "
            f"{saturated['cores_used']['other_processes']:.2f} | 0 | |"
        ),
        f"| floor: bare Litestar SSE first event | {ms(floors['bare_sse_first_event'])} | | |",
        (
            f"| floor: one query embedding (ONNX MiniLM) | {ms(floors['query_embedding'])} "
            f"(CPU {floors['query_embedding']['cpu_ms']:.2f} ms) | | |"
        ),
        (
            f"| reference: one query embedding {floors['query_embedding_after_idle']['idle_gap_ms']:.0f} ms after "
            f"the previous (as in a turn) | {ms(floors['query_embedding_after_idle'])} | | |"
        ),
        f"| floor: one hybrid search (sample help center) | {ms(floors['hybrid_search'])} | | |",
        f"| floor: one message insert + commit (SQLAlchemy) | {ms(floors['message_insert_commit_sqlalchemy'])} | | |",
        (
            f"| reference: PostgreSQL / Valkey round trip | {ms(floors['postgres_round_trip'])} / "
            f"{ms(floors['valkey_round_trip'])} | | |"
        ),
    ]
    return "\n".join(rows)


def _spread(values: Sequence[float]) -> str:
    if not values:
        return "n/a"
    return f"{min(values):.2f}x / {statistics.median(values):.2f}x / {max(values):.2f}x"


def phase_table(analysis: dict[str, Any]) -> str:
    rows = ["| phase (critical path to the first delta) | p50 ms |", "| --- | --- |"]
    rows += [f"| {name} | {value:.2f} |" for name, value in analysis["segments_p50_ms"].items()]
    rows.append(f"| **server: request reached the app → first delta written** | "
                f"{analysis['server_first_delta_p50_ms']:.2f} |")  # fmt: skip
    moments = analysis.get("moments_p50_ms") or {}
    if moments:
        rows += ["", "| moment, after the request reached the app | p50 ms |", "| --- | --- |"]
        rows += [f"| {name} | {value:.2f} |" for name, value in moments.items()]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer turns and shorter loads (a smoke run)")
    parser.add_argument("--turns", type=int, help="sequential turns measured (default 200, quick 50)")
    parser.add_argument("--rate", type=float, default=50.0, help="open-loop arrivals per second")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients at saturation")
    parser.add_argument("--py-spy", help="path of a py-spy binary: add a sampling profile of the server under load")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a SUPPORT_* setting for the server"
    )
    args = parser.parse_args()
    for assignment in args.set:
        name, _, value = assignment.partition("=")
        SERVER_SETTINGS[name] = value
    quick = args.quick
    plan = Plan(
        warmup=10 if quick else 30,
        turns=args.turns or (50 if quick else 200),
        blocks=5 if quick else 10,
        rate=args.rate,
        open_loop_s=3.0 if quick else 10.0,
        clients=args.clients,
        saturation_s=3.0 if quick else 10.0,
        trace_turns=30 if quick else 100,
        py_spy=args.py_spy,
    )
    result = uvloop.run(run(plan))  # the server's loop too (uvicorn picks uvloop)
    result["plan"] = plan.__dict__ | {"server_settings": SERVER_SETTINGS}
    (RESULTS / "chat.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{os.cpu_count()} cores; client, server, PostgreSQL and Valkey share them.\n")
    print(table(result))
    print("\nOne client, traced server:\n")
    print(phase_table(result["phases"]["one_client"]))
    print("\n32 clients, traced server:\n")
    print(phase_table(result["phases"]["32_clients"]))
    if result["profile"]:
        profile = result["profile"]
        print(f"\nServer CPU samples at 32 clients (py-spy, {profile['samples']} samples), by package:\n")
        print("\n".join(f"- {name}: {share:.1%}" for name, share in profile["by_package"].items()))


if __name__ == "__main__":
    main()
