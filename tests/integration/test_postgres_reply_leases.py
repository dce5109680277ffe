"""Reply leases as PostgreSQL advisory locks (the stand-in while Valkey is unreachable)."""

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from support.adapters.postgres.leases import PostgresReplyLeases, lock_key
from support.domain.ids import new_id


async def _held_locks(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"))
    return int(count or 0)


async def test_one_holder_per_conversation_across_processes_and_within_one(engine: AsyncEngine) -> None:
    # Two instances stand for two processes: each has its own connection.
    first, second = PostgresReplyLeases(engine), PostgresReplyLeases(engine)
    conversation, other = new_id(), new_id()
    try:
        assert await first.acquire(conversation, "p1:a")
        assert await first.acquire(conversation, "p1:a")  # taking it again as its holder is fine
        assert not await first.acquire(conversation, "p1:b")  # PostgreSQL's locks are re-entrant; ours aren't
        assert not await second.acquire(conversation, "p2:a")
        assert await second.acquire(other, "p2:a")
        assert first.holds(conversation, "p1:a")
        assert not first.holds(conversation, "p1:b")
        assert await _held_locks(engine) == 2

        await first.release(conversation, "p1:b")  # not the holder: nothing happens
        assert not await second.acquire(conversation, "p2:b")
        await first.release(conversation, "p1:a")
        assert await second.acquire(conversation, "p2:b")
    finally:
        await first.close()
        await second.close()
    assert await _held_locks(engine) == 0


async def test_the_locks_go_with_the_connection(engine: AsyncEngine) -> None:
    leases = PostgresReplyLeases(engine)
    conversation = new_id()
    assert await leases.acquire(conversation, "dead-process")
    # The process dies: its connection closes, and the lock is free for everyone else.
    await leases.close()
    assert not leases.holds(conversation, "dead-process")

    survivor = PostgresReplyLeases(engine)
    try:
        assert await survivor.acquire(conversation, "survivor")
    finally:
        await survivor.close()


def test_keys_are_stable_and_distinct() -> None:
    conversation = new_id()
    assert lock_key(conversation) == lock_key(conversation)
    assert lock_key(conversation) != lock_key(new_id())
    assert -(2**63) <= lock_key(conversation) < 2**63
