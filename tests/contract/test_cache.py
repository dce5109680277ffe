import asyncio

from support.ports.knowledge import Cache


async def test_cache_returns_what_was_set(cache: Cache) -> None:
    assert await cache.get("missing") is None
    await cache.set("k", b"\x00\x01value", ttl_seconds=60)
    assert await cache.get("k") == b"\x00\x01value"


async def test_cache_entries_expire(cache: Cache) -> None:
    await cache.set("short", b"v", ttl_seconds=1)
    await asyncio.sleep(1.1)
    assert await cache.get("short") is None
