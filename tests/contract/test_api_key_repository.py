import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from support.domain.errors import ConflictError, InvalidInputError
from support.domain.identity import Role
from tests.contract.conftest import Stores
from tests.factories import ApiKeyFactory

CREATED = datetime(2026, 3, 1, tzinfo=UTC)


async def test_added_key_is_found_by_id_and_by_hash(stores: Stores) -> None:
    key = ApiKeyFactory.build(role=Role.AGENT, created_at=CREATED, name="agent one", hint="sk_abcdef")
    await stores.api_keys.add(key, "hash-1")
    await stores.uow.commit()
    async with stores.reader() as fresh:
        assert await fresh.api_keys.get(key.id) == key
        assert await fresh.api_keys.find_active_by_hash("hash-1") == key
        assert await fresh.api_keys.find_active_by_hash("hash-2") is None


async def test_keys_are_listed_newest_first(stores: Stores) -> None:
    older = ApiKeyFactory.build(created_at=CREATED, name="older", hint="sk_older0")
    newer = ApiKeyFactory.build(created_at=CREATED + timedelta(minutes=1), name="newer", hint="sk_newer0")
    await stores.api_keys.add(older, "h-old")
    await stores.api_keys.add(newer, "h-new")
    await stores.uow.commit()
    page = await stores.api_keys.list_keys(limit=10, cursor=None)
    assert [key.name for key in page.items] == ["newer", "older"]
    assert page.next_cursor is None


async def test_keys_are_paged_newest_first_and_the_last_page_has_no_cursor(stores: Stores) -> None:
    # Two share a creation time (the id breaks the tie, across a page boundary); microseconds survive the cursor.
    stamps = [CREATED, CREATED, CREATED + timedelta(microseconds=1), CREATED + timedelta(seconds=1), CREATED]
    stored = [
        ApiKeyFactory.build(created_at=stamp, name=f"key {index}", hint=f"sk_{index:06d}")
        for index, stamp in enumerate(stamps)
    ]
    for index, key in enumerate(stored):
        await stores.api_keys.add(key, f"hash-{index}")
    await stores.uow.commit()

    first = await stores.api_keys.list_keys(limit=2, cursor=None)
    second = await stores.api_keys.list_keys(limit=2, cursor=first.next_cursor)
    third = await stores.api_keys.list_keys(limit=2, cursor=second.next_cursor)

    newest_first = sorted(stored, key=lambda key: (key.created_at, key.id), reverse=True)
    assert [key.id for key in first.items + second.items + third.items] == [key.id for key in newest_first]
    assert (len(first.items), len(second.items), len(third.items)) == (2, 2, 1)
    assert first.next_cursor is not None
    assert second.next_cursor is not None
    assert third.next_cursor is None
    exact = await stores.api_keys.list_keys(limit=5, cursor=None)
    assert (len(exact.items), exact.next_cursor) == (5, None)


async def test_a_bad_key_cursor_is_invalid_input(stores: Stores) -> None:
    with pytest.raises(InvalidInputError):
        await stores.api_keys.list_keys(limit=2, cursor="not-a-cursor")


async def test_revoked_key_is_no_longer_found_by_hash(stores: Stores) -> None:
    key = ApiKeyFactory.build(created_at=CREATED, name="ci", hint="sk_ci0000")
    await stores.api_keys.add(key, "h")
    await stores.uow.commit()
    await stores.api_keys.save(dataclasses.replace(key, revoked_at=CREATED + timedelta(days=1)))
    await stores.uow.commit()
    assert await stores.api_keys.find_active_by_hash("h") is None
    stored = await stores.api_keys.get(key.id)
    assert stored is not None
    assert stored.revoked_at == CREATED + timedelta(days=1)


async def test_duplicate_secret_hash_is_a_conflict(stores: Stores) -> None:
    await stores.api_keys.add(ApiKeyFactory.build(created_at=CREATED, name="a", hint="sk_a00000"), "same")
    await stores.uow.commit()
    with pytest.raises(ConflictError):
        await stores.api_keys.add(ApiKeyFactory.build(created_at=CREATED, name="b", hint="sk_b00000"), "same")
