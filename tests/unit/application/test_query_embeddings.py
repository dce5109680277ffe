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
    await embeddings.drain()
    embedder.gate = asyncio.Event()  # a model run would now hang: a hit must not run it
    # Another process (its own QueryEmbeddings) finds it in the shared cache.
    second = await QueryEmbeddings(embedder, cache, KnowledgeLimits()).embed("Where is my parcel?")

    assert second == pytest.approx(first, abs=1e-6)
    assert embedder.runs == 1


async def test_a_miss_returns_before_the_vector_is_written_to_the_cache() -> None:
    embedder, cache = CountingEmbedder(), SlowWriteCache()
    embeddings = QueryEmbeddings(embedder, cache, KnowledgeLimits())

    vector = await embeddings.embed("How do I reset my password?")  # would hang if it waited for the write

    assert vector == pytest.approx(await HashingEmbedder(32).embed_query("How do I reset my password?"), abs=1e-6)
    assert not cache._entries  # the write is still waiting
    cache.written.set()
    await embeddings.drain()
    assert len(cache._entries) == 1


async def test_a_cache_outage_costs_only_the_model_run(caplog: pytest.LogCaptureFixture) -> None:
    embedder = CountingEmbedder()
    embeddings = QueryEmbeddings(embedder, BrokenCache(), KnowledgeLimits())

    with caplog.at_level(logging.WARNING):
        first = await embeddings.embed("refund status")
        await embeddings.drain()
        second = await embeddings.embed("refund status")
        await embeddings.drain()

    assert first == second
    assert embedder.finished == 2
    assert "cache unavailable" in caplog.text


async def test_a_pending_admission_lets_the_lookup_run_and_holds_the_model_until_it_passes() -> None:
    embedder, cache = CountingEmbedder(), InMemoryCache()
    embeddings = QueryEmbeddings(embedder, cache, KnowledgeLimits())
    await embeddings.embed("cached question")
    await embeddings.drain()
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


async def test_new_vectors_are_written_together_a_moment_later_and_served_meanwhile() -> None:
    # The write waits (QueryEmbeddings.write_delay_s): the moment a vector is computed the turn needs the loop.
    embedder, cache = CountingEmbedder(), InMemoryCache()
    embeddings = QueryEmbeddings(embedder, cache, KnowledgeLimits(), write_delay_s=0.05)

    first = await embeddings.embed("Where is my parcel?")
    await embeddings.embed("Can I change my address?")
    await settle()
    assert not cache._entries  # nothing written yet
    embedder.gate = asyncio.Event()  # a model run would now hang
    assert await embeddings.embed("Where is my parcel?") == first  # served from what waits to be written
    await asyncio.sleep(0.1)

    assert len(cache._entries) == 2
    assert embedder.runs == 2
