"""Customer memory, conversation summaries and whole-customer records in PostgreSQL."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, REAL
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from support.adapters.postgres.driver import Row, compile_for_driver, driver_connection
from support.adapters.postgres.errors import storage_errors
from support.adapters.postgres.models import ConversationRow, CustomerRow, MemoryRow, MessageRow, SummaryRow
from support.adapters.postgres.paging import newest_first, page_cursor
from support.domain.memory import ConversationSummary, Fact, FactKind, FactOrigin
from support.domain.paging import creation_position
from support.ports.customers import CustomerCounts
from support.ports.memory import FactCounts, FactPage, ScoredFact

# Core tables, not ORM entities: recall and the summary are read on every turn (see postgres/conversations.py).
_FACTS = cast("sa.Table", MemoryRow.__table__)
_SUMMARIES = cast("sa.Table", SummaryRow.__table__)

_FACT_COLUMNS = (
    _FACTS.c.id,
    _FACTS.c.customer_id,
    _FACTS.c.kind,
    _FACTS.c.key,
    _FACTS.c.value,
    _FACTS.c.confidence,
    _FACTS.c.origin,
    _FACTS.c.source_message_id,
    _FACTS.c.created_at,
    _FACTS.c.expires_at,
    _FACTS.c.superseded_by,
)


def _fact(row: Row) -> Fact:
    return Fact(
        id=row["id"],
        customer_id=row["customer_id"],
        kind=FactKind(row["kind"]),
        key=row["key"],
        value=row["value"],
        confidence=row["confidence"],
        origin=FactOrigin(row["origin"]),
        source_message_id=row["source_message_id"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        superseded_by=row["superseded_by"],
    )


# Recall runs on every turn: its statements are built once, with bound parameters (see postgres/conversations.py).
_RECALL_CURRENT = sa.and_(
    _FACTS.c.customer_id == sa.bindparam("customer_id"),
    _FACTS.c.superseded_by.is_(None),
    sa.or_(_FACTS.c.expires_at.is_(None), _FACTS.c.expires_at > sa.bindparam("now")),
)
_RECALL_LIMIT = sa.bindparam("limit", type_=sa.Integer)
_RECALL_NEWEST = (
    sa.select(*_FACT_COLUMNS, sa.cast(sa.literal_column("0"), sa.Float).label("similarity"))
    .where(_RECALL_CURRENT)
    .order_by(_FACTS.c.created_at.desc(), _FACTS.c.id.desc())
    .limit(_RECALL_LIMIT)
)
# The question's vector goes as a binary real[]: pgvector's text form costs ~0.2 ms of Python per turn to write.
_RECALL_DISTANCE = _FACTS.c.embedding.cosine_distance(
    sa.cast(sa.bindparam("embedding", type_=ARRAY(REAL)), _FACTS.c.embedding.type)
)
# A customer has a few dozen facts: an exact scan of them beats any approximate index.
_RECALL_NEAREST = (
    sa.select(*_FACT_COLUMNS, (sa.literal_column("1") - _RECALL_DISTANCE).label("similarity"))
    .where(_RECALL_CURRENT)
    .order_by(_RECALL_DISTANCE, _FACTS.c.id.desc())
    .limit(_RECALL_LIMIT)
)
# Recall is a turn's read: it runs on the driver (postgres/driver.py), outside any transaction. Its constants are
# written into the SQL (literal columns above): the driver statement passes only the named parameters.
_DRIVER_CURRENT_FACT = compile_for_driver(
    sa.select(*_FACT_COLUMNS).where(
        _FACTS.c.customer_id == sa.bindparam("customer_id"),
        _FACTS.c.key == sa.bindparam("key"),
        _FACTS.c.superseded_by.is_(None),
    )
)
_DRIVER_RECALL_NEWEST = compile_for_driver(_RECALL_NEWEST)
_DRIVER_RECALL_NEAREST = compile_for_driver(_RECALL_NEAREST)
_GET_SUMMARY = sa.select(_SUMMARIES).where(_SUMMARIES.c.conversation_id == sa.bindparam("conversation_id"))
_DRIVER_GET_SUMMARY = compile_for_driver(_GET_SUMMARY)
_SUMMARY_FIELDS = ("points", "mentions", "through_message_id", "through_at", "folded_messages", "updated_at")


def _summary_upsert() -> Any:
    insert = pg_insert(_SUMMARIES)
    return insert.on_conflict_do_update(
        index_elements=[_SUMMARIES.c.conversation_id],
        set_={name: insert.excluded[name] for name in _SUMMARY_FIELDS},
    )


_SAVE_SUMMARY = _summary_upsert()


class PostgresCustomerMemory:
    """Facts in ``customer_memories``; a partial unique index keeps one current fact per customer and key."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def current(self, customer_id: UUID, key: str) -> Fact | None:
        # A read outside a transaction holds no connection afterwards (the writer embeds new facts next).
        parameters = {"customer_id": customer_id, "key": key}
        async with driver_connection(self._session, begin=False) as driver:
            row = await driver.fetchrow(_DRIVER_CURRENT_FACT.sql, *_DRIVER_CURRENT_FACT.arguments(parameters))
        return None if row is None else _fact(row)

    async def current_for_update(self, customer_id: UUID, key: str) -> Fact | None:
        parameters = {"customer_id": customer_id, "key": key}
        await self._lock_key(customer_id, key)
        async with driver_connection(self._session) as driver:
            row = await driver.fetchrow(_DRIVER_CURRENT_FACT.sql, *_DRIVER_CURRENT_FACT.arguments(parameters))
        return None if row is None else _fact(row)

    async def _lock_key(self, customer_id: UUID, key: str) -> None:
        """Serialise writers of one customer's key until commit (transaction-scoped; taking it again is a no-op)."""
        async with storage_errors():
            await self._session.execute(
                sa.select(
                    sa.func.pg_advisory_xact_lock(
                        sa.func.hashtextextended(sa.literal(f"{customer_id}:{key}"), sa.literal(0, sa.BigInteger))
                    )
                )
            )

    async def remember(self, fact: Fact, embedding: Sequence[float]) -> None:
        # Under the key's lock the second writer sees the first's row and supersedes it, instead of both inserting
        # a "current" fact.
        await self._lock_key(fact.customer_id, fact.key)
        async with storage_errors():
            await self._session.execute(
                sa.update(_FACTS)
                .where(
                    _FACTS.c.customer_id == fact.customer_id,
                    _FACTS.c.key == fact.key,
                    _FACTS.c.superseded_by.is_(None),
                    _FACTS.c.id != fact.id,
                )
                .values(superseded_by=fact.id)
            )
            await self._session.execute(
                sa.insert(_FACTS).values(
                    id=fact.id,
                    customer_id=fact.customer_id,
                    kind=fact.kind.value,
                    key=fact.key,
                    value=fact.value,
                    confidence=fact.confidence,
                    origin=fact.origin.value,
                    source_message_id=fact.source_message_id,
                    created_at=fact.created_at,
                    expires_at=fact.expires_at,
                    superseded_by=fact.superseded_by,
                    embedding=list(embedding),
                )
            )

    async def refresh(self, fact_id: UUID, *, expires_at: datetime | None, confidence: float) -> None:
        statement = (
            sa.update(_FACTS)
            .where(_FACTS.c.id == fact_id)
            .values(expires_at=expires_at, confidence=sa.func.greatest(_FACTS.c.confidence, confidence))
        )
        async with storage_errors():
            await self._session.execute(statement)

    async def recall(
        self, customer_id: UUID, *, now: datetime, embedding: Sequence[float] | None, limit: int
    ) -> list[ScoredFact]:
        parameters: dict[str, Any] = {"customer_id": customer_id, "now": now, "limit": limit}
        statement = _DRIVER_RECALL_NEWEST
        if embedding is not None:
            statement = _DRIVER_RECALL_NEAREST
            parameters["embedding"] = list(embedding)
        # A read that needs no transaction: it joins one already begun, else it runs on its own.
        async with driver_connection(self._session, begin=False) as driver:
            rows = await driver.fetch(statement.sql, *statement.arguments(parameters))
        return [ScoredFact(_fact(row), float(row["similarity"])) for row in rows]

    async def list_facts(self, customer_id: UUID, *, limit: int, cursor: str | None) -> FactPage:
        statement = newest_first(
            sa.select(*_FACT_COLUMNS).where(_FACTS.c.customer_id == customer_id),
            _FACTS.c.created_at,
            _FACTS.c.id,
            limit=limit,
            cursor=cursor,
        )
        async with storage_errors():
            rows = (await self._session.execute(statement)).mappings().all()
        items = [_fact(row) for row in rows[:limit]]
        return FactPage(items=items, next_cursor=page_cursor(items, creation_position, more=len(rows) > limit))

    async def get(self, customer_id: UUID, fact_id: UUID) -> Fact | None:
        statement = sa.select(*_FACT_COLUMNS).where(_FACTS.c.customer_id == customer_id, _FACTS.c.id == fact_id)
        async with storage_errors():
            row = (await self._session.execute(statement)).mappings().first()
        return None if row is None else _fact(row)

    async def forget(self, customer_id: UUID, fact_id: UUID) -> bool:
        statement = (
            sa.delete(_FACTS).where(_FACTS.c.customer_id == customer_id, _FACTS.c.id == fact_id).returning(_FACTS.c.id)
        )
        async with storage_errors():
            return (await self._session.execute(statement)).first() is not None

    async def forget_key(self, customer_id: UUID, key: str) -> int:
        statement = (
            sa.delete(_FACTS).where(_FACTS.c.customer_id == customer_id, _FACTS.c.key == key).returning(_FACTS.c.id)
        )
        async with storage_errors():
            return len((await self._session.execute(statement)).all())

    async def forget_customer(self, customer_id: UUID) -> int:
        statement = sa.delete(_FACTS).where(_FACTS.c.customer_id == customer_id).returning(_FACTS.c.id)
        async with storage_errors():
            return len((await self._session.execute(statement)).all())

    async def count(self, customer_id: UUID, *, now: datetime) -> FactCounts:
        current = sa.and_(
            _FACTS.c.superseded_by.is_(None), sa.or_(_FACTS.c.expires_at.is_(None), _FACTS.c.expires_at > now)
        )
        statement = sa.select(sa.func.count().filter(current).label("current"), sa.func.count().label("total")).where(
            _FACTS.c.customer_id == customer_id
        )
        async with storage_errors():
            row = (await self._session.execute(statement)).one()
        return FactCounts(current=row.current, total=row.total)


def _summary(row: Row) -> ConversationSummary:
    return ConversationSummary(
        conversation_id=row["conversation_id"],
        points=tuple(row["points"]),
        mentions=tuple(row["mentions"]),
        through_message_id=row["through_message_id"],
        through_at=row["through_at"],
        folded_messages=row["folded_messages"],
        updated_at=row["updated_at"],
    )


class PostgresSummaryStore:
    """One row per conversation in ``conversation_summaries``; it goes with its conversation (cascade)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, conversation_id: UUID) -> ConversationSummary | None:
        # Read on every turn of a conversation longer than the history window: on the driver, no transaction.
        async with driver_connection(self._session, begin=False) as driver:
            row = await driver.fetchrow(_DRIVER_GET_SUMMARY.sql, conversation_id)
        return None if row is None else _summary(row)

    async def save(self, summary: ConversationSummary) -> None:
        values = {
            "conversation_id": summary.conversation_id,
            "points": list(summary.points),
            "mentions": list(summary.mentions),
            "through_message_id": summary.through_message_id,
            "through_at": summary.through_at,
            "folded_messages": summary.folded_messages,
            "updated_at": summary.updated_at,
        }
        async with storage_errors():
            await self._session.execute(_SAVE_SUMMARY, values)

    async def for_conversations(self, conversation_ids: Sequence[UUID]) -> list[ConversationSummary]:
        if not conversation_ids:
            return []
        statement = sa.select(_SUMMARIES).where(_SUMMARIES.c.conversation_id.in_(list(conversation_ids)))
        async with storage_errors():
            rows = (await self._session.execute(statement)).mappings().all()
        return [_summary(row) for row in rows]

    async def delete(self, conversation_ids: Sequence[UUID]) -> int:
        if not conversation_ids:
            return 0
        statement = (
            sa.delete(_SUMMARIES)
            .where(_SUMMARIES.c.conversation_id.in_(list(conversation_ids)))
            .returning(_SUMMARIES.c.conversation_id)
        )
        async with storage_errors():
            return len((await self._session.execute(statement)).all())


class PostgresCustomerRecords:
    """A customer's footprint and erasure: deleting the customer row cascades to everything that hangs off it."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def counts(self, customer_id: UUID) -> CustomerCounts:
        conversations = sa.select(sa.func.count()).where(ConversationRow.customer_id == customer_id).scalar_subquery()
        messages = (
            sa.select(sa.func.count())
            .select_from(MessageRow)
            .join(ConversationRow, ConversationRow.id == MessageRow.conversation_id)
            .where(ConversationRow.customer_id == customer_id)
            .scalar_subquery()
        )
        async with storage_errors():
            row = (await self._session.execute(sa.select(conversations.label("c"), messages.label("m")))).one()
        return CustomerCounts(conversations=row.c, messages=row.m)

    async def conversation_ids(self, customer_id: UUID) -> list[UUID]:
        statement = (
            sa.select(ConversationRow.id)
            .where(ConversationRow.customer_id == customer_id)
            .order_by(ConversationRow.created_at, ConversationRow.id)
        )
        async with storage_errors():
            return list((await self._session.execute(statement)).scalars())

    async def delete(self, customer_id: UUID) -> bool:
        statement = sa.delete(CustomerRow).where(CustomerRow.id == customer_id).returning(CustomerRow.id)
        async with storage_errors():
            return (await self._session.execute(statement)).first() is not None
