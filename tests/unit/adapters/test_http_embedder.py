import asyncio
import hashlib
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from support.adapters.embedding.http_openai import OpenAICompatibleEmbedder
from support.ports.errors import EmbedderUnavailableError

DIMENSION = 8


def raw_vector(text: str, dimension: int = DIMENSION) -> list[float]:
    """What the fake provider returns for a text: distinct per text and deliberately not unit length."""
    return [float(byte) + 1.0 for byte in hashlib.sha256(text.encode()).digest()[:dimension]]


def unit(vector: list[float]) -> list[float]:
    norm = math.hypot(*vector)
    return [value / norm for value in vector]


@dataclass
class RecordedRequest:
    path: str
    authorization: str | None
    body: dict[str, Any]


@dataclass
class FakeEmbeddingsServer:
    """A real HTTP/1.1 server on 127.0.0.1 whose behaviour is chosen by the ``model`` of each request."""

    requests: list[RecordedRequest] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve_connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        # A handler may still be sleeping (the "slow" model); don't leave it running past the test.
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            while request_line := await reader.readline():
                headers = {}
                while (line := await reader.readline()) not in {b"\r\n", b"\n", b""}:
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
                path = request_line.decode("latin-1").split()[1]
                self.requests.append(RecordedRequest(path, headers.get("authorization"), body))
                status, payload, extra_headers = await self._respond(path, body)
                content = json.dumps(payload).encode()
                head = [f"HTTP/1.1 {status} Fake", "Content-Type: application/json", f"Content-Length: {len(content)}"]
                head += [f"{name}: {value}" for name, value in extra_headers.items()]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + content)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _respond(self, path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        model, texts = body["model"], body["input"]
        attempts = sum(1 for request in self.requests if request.body["model"] == model)
        if path != "/v1/embeddings":
            return 404, {"error": {"message": f"no route {path}"}}, {}
        if model == "broken":
            return 500, {"error": {"message": "internal failure"}}, {}
        if model == "unauthorised":
            return 401, {"error": {"message": "invalid api key"}}, {}
        if model == "rate-limited" and attempts == 1:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
        if model == "slow":
            await asyncio.sleep(1.0)
        dimension = DIMENSION + 1 if model == "wrong-dimension" else DIMENSION
        items = [{"object": "embedding", "index": index, "embedding": raw_vector(text, dimension)}
                 for index, text in enumerate(texts)]  # fmt: skip
        if model == "missing-item":
            items = items[1:]
        # Real providers may answer out of order; the adapter must go by ``index``.
        return 200, {"object": "list", "data": list(reversed(items)), "model": model}, {}


@pytest.fixture
async def server() -> AsyncIterator[FakeEmbeddingsServer]:
    fake = FakeEmbeddingsServer()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def make_embedder(
    server: FakeEmbeddingsServer,
) -> AsyncIterator[Callable[..., OpenAICompatibleEmbedder]]:
    created: list[OpenAICompatibleEmbedder] = []

    def make(model: str = "ok", **options: Any) -> OpenAICompatibleEmbedder:
        settings: dict[str, Any] = {"api_key": "sk-test", "batch_size": 3, "retry_backoff": 0.01} | options
        base_url = settings.pop("base_url", server.base_url)
        embedder = OpenAICompatibleEmbedder(base_url, model, DIMENSION, **settings)
        created.append(embedder)
        return embedder

    yield make
    for embedder in created:
        await embedder.aclose()


async def test_vectors_come_back_in_input_order_normalised_and_batched(
    server: FakeEmbeddingsServer, make_embedder: Callable[..., OpenAICompatibleEmbedder]
) -> None:
    texts = [f"passage number {index}" for index in range(7)]

    vectors = await make_embedder().embed_documents(texts)

    for text, vector in zip(texts, vectors, strict=True):
        assert vector == pytest.approx(unit(raw_vector(text)))
    assert [request.body["input"] for request in server.requests] == [texts[0:3], texts[3:6], texts[6:7]]
    assert {request.path for request in server.requests} == {"/v1/embeddings"}
    assert {request.authorization for request in server.requests} == {"Bearer sk-test"}
    assert {request.body["model"] for request in server.requests} == {"ok"}


async def test_query_embedding(make_embedder: Callable[..., OpenAICompatibleEmbedder]) -> None:
    assert await make_embedder().embed_query("reset password") == pytest.approx(unit(raw_vector("reset password")))


async def test_base_url_with_v1_suffix_is_accepted(
    server: FakeEmbeddingsServer, make_embedder: Callable[..., OpenAICompatibleEmbedder]
) -> None:
    await make_embedder(base_url=server.base_url + "/v1/").embed_query("hello")

    assert [request.path for request in server.requests] == ["/v1/embeddings"]


async def test_rate_limited_request_is_retried(
    server: FakeEmbeddingsServer, make_embedder: Callable[..., OpenAICompatibleEmbedder]
) -> None:
    vector = await make_embedder("rate-limited").embed_query("hello")

    assert vector == pytest.approx(unit(raw_vector("hello")))
    assert len(server.requests) == 2


async def test_persistent_server_error_gives_up_after_bounded_retries(
    server: FakeEmbeddingsServer, make_embedder: Callable[..., OpenAICompatibleEmbedder]
) -> None:
    with pytest.raises(EmbedderUnavailableError, match=r"after 3 attempts.*500.*internal failure"):
        await make_embedder("broken", max_retries=2).embed_documents(["a", "b"])

    assert len(server.requests) == 3


async def test_client_error_is_not_retried(
    server: FakeEmbeddingsServer, make_embedder: Callable[..., OpenAICompatibleEmbedder]
) -> None:
    with pytest.raises(EmbedderUnavailableError, match="401"):
        await make_embedder("unauthorised").embed_query("hello")

    assert len(server.requests) == 1


async def test_wrong_dimension_is_refused(make_embedder: Callable[..., OpenAICompatibleEmbedder]) -> None:
    with pytest.raises(EmbedderUnavailableError, match=f"dimension {DIMENSION + 1}; {DIMENSION} is configured"):
        await make_embedder("wrong-dimension").embed_documents(["a", "b"])


async def test_missing_vectors_are_refused(make_embedder: Callable[..., OpenAICompatibleEmbedder]) -> None:
    with pytest.raises(EmbedderUnavailableError, match="2 vectors for 3 inputs"):
        await make_embedder("missing-item").embed_documents(["a", "b", "c"])


async def test_timeout_is_unavailable(make_embedder: Callable[..., OpenAICompatibleEmbedder]) -> None:
    with pytest.raises(EmbedderUnavailableError, match="Timeout"):
        await make_embedder("slow", timeout=0.1, max_retries=0).embed_query("hello")


async def test_unreachable_provider_is_unavailable(make_embedder: Callable[..., OpenAICompatibleEmbedder]) -> None:
    closed = FakeEmbeddingsServer()
    await closed.start()
    await closed.stop()  # the port is now free and nothing listens on it

    with pytest.raises(EmbedderUnavailableError, match="ConnectError"):
        await make_embedder(base_url=closed.base_url, max_retries=1).embed_query("hello")


async def test_token_estimate_is_additive_over_words_and_never_below_the_word_count(
    make_embedder: Callable[..., OpenAICompatibleEmbedder],
) -> None:
    embedder = make_embedder("any")
    text = "Refunds are processed within five business days, see https://example.com/refunds."

    assert embedder.count_tokens(text) == sum(embedder.count_tokens(word) for word in text.split())
    assert embedder.count_tokens(text) >= len(text.split())
    assert embedder.count_tokens("word1 word2 word3") == 6  # 5 characters: 2 tokens each
    assert embedder.count_tokens("") == 0
    assert embedder.model_id == "any"
    assert embedder.dimension == DIMENSION
