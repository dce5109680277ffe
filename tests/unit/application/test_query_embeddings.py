"""Query vectors through the cache: hits skip the model, misses never wait for the cache write, outages cost
nothing."""

import asyncio
import logging

import pytest

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.memory.cache import InMemoryCache
from support.application.knowledge import KnowledgeLimits, QueryEmbeddings
from support.ports.errors import CacheUnavailableError


class CountingEmbedder(HashingEmbedder):
    """Counts model runs; ``gate`` (when set) holds every run until it opens."""

    def __init__(self) -> None:
        super().__init__(32)
        self.runs = 0
        self.finished = 0
        self.gate: asyncio.Event | None = None

    async def embed_query(self, text: str) -> list[float]:
        self.runs += 1
        if self.gate is not None:
            await self.gate.wait()
        vector = await super().embed_query(text)
        self.finished += 1
        return vector


class SlowWriteCache(InMemoryCache):
    """A cache whose writes wait until ``written`` is set (a busy Valkey)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        await self.written.wait()
        await super().set(key, value, ttl_seconds)


class BrokenCache(InMemoryCache):
    async def get(self, key: str) -> bytes | None:  # noqa: ARG002 - Valkey is down whatever is asked
        raise CacheUnavailableError

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:  # noqa: ARG002
        raise CacheUnavailableError


async def settle() -> None:
    """Let background cache writes finish."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_repeated_question_is_answered_from_the_cache_without_the_model() -> None:
    embedder, cache = CountingEmbedder(), InMemoryCache()
    embeddings = QueryEmbeddings(embedder, cache, KnowledgeLimits())

    first = await embeddings.embed("Where is my parcel?")
    await settle()
    embedder.gate = asyncio.Event()  # a model run would now hang: a hit must not run it
    second = await embeddings.embed("Where is my parcel?")

    assert second == pytest.approx(first, abs=1e-6)
    assert embedder.runs == 1


async def test_a_miss_returns_before_the_vector_is_written_to_the_cache() -> None:
    embedder, cache = CountingEmbedder(), SlowWriteCache()
    embeddings = QueryEmbeddings(embedder, cache, KnowledgeLimits())

    vector = await embeddings.embed("How do I reset my password?")  # would hang if it waited for the write

    assert vector == pytest.approx(await HashingEmbedder(32).embed_query("How do I reset my password?"), abs=1e-6)
    assert not cache._entries  # the write is still waiting
    cache.written.set()
    await settle()
    assert len(cache._entries) == 1


async def test_a_cache_outage_costs_only_the_model_run(caplog: pytest.LogCaptureFixture) -> None:
    embedder = CountingEmbedder()
    embeddings = QueryEmbeddings(embedder, BrokenCache(), KnowledgeLimits())

    with caplog.at_level(logging.WARNING):
        first = await embeddings.embed("refund status")
        await settle()
        second = await embeddings.embed("refund status")
        await settle()

    assert first == second
    assert embedder.finished == 2
    assert "cache unavailable" in caplog.text


async def test_a_pending_admission_lets_the_lookup_run_and_holds_the_model_until_it_passes() -> None:
    embedder, cache = CountingEmbedder(), InMemoryCache()
    embeddings = QueryEmbeddings(embedder, cache, KnowledgeLimits())
    await embeddings.embed("cached question")
    await settle()
    admission: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    hit = await embeddings.embed("cached question", admission=admission)  # a hit needs no verdict
    miss = asyncio.create_task(embeddings.embed("new question", admission=admission))
    await settle()
    assert embedder.runs == 1  # the miss waits for the verdict before the model
    admission.set_result(None)

    assert len(await miss) == len(hit)
    assert embedder.runs == 2


async def test_a_refused_admission_costs_the_lookup_but_no_model_run() -> None:
    class RefusedError(Exception):
        pass

    embedder = CountingEmbedder()
    embeddings = QueryEmbeddings(embedder, InMemoryCache(), KnowledgeLimits())
    admission: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    admission.set_exception(RefusedError())

    with pytest.raises(RefusedError):
        await embeddings.embed("new question", admission=admission)
    assert embedder.runs == 0
