"""Customers, conversations, messages and attachments in PostgreSQL."""

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import msgspec
import sqlalchemy as sa
from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy.dialects.postgresql import JSONB, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from support.adapters.postgres.driver import Row, compile_for_driver, driver_connection
from support.adapters.postgres.errors import storage_errors
from support.adapters.postgres.models import AttachmentRow, ConversationRow, CustomerRow, MessageRow
from support.adapters.postgres.paging import newest_first, page_cursor
from support.domain.assistant import AttachedText
from support.domain.conversations import (
    IDLE_CLOSABLE,
    AgentRef,
    AnswerStatus,
    AttachmentInfo,
    AttachmentUpload,
    Citation,
    Conversation,
    ConversationStatus,
    Customer,
    Feedback,
    HandoffAction,
    HandoffDecision,
    Message,
    MessageRole,
    ReasonCode,
    TokenUsage,
    activity_position,
)
from support.domain.ids import new_id
from support.domain.paging import SEQ_CURSOR, TIME_ID_CURSOR
from support.ports.conversations import ConversationPage, MessagePage

_IDLE_CLOSABLE = sorted(status.value for status in IDLE_CLOSABLE)


class _ConversationRows(SQLAlchemyAsyncRepository[ConversationRow]):
    model_type = ConversationRow


class _CustomerRows(SQLAlchemyAsyncRepository[CustomerRow]):
    model_type = CustomerRow


def _customer(row: CustomerRow) -> Customer:
    return Customer(id=row.id, external_id=row.external_id, name=row.name, email=row.email, created_at=row.created_at)


# Statements on a turn's path use the Core tables: ORM-enabled statements (entity rows, ORM bulk inserts) cost
# more CPU in SQLAlchemy than the query costs in PostgreSQL. The ORM classes stay for the admin paths.
_CONVERSATIONS = cast("sa.Table", ConversationRow.__table__)
_MESSAGES = cast("sa.Table", MessageRow.__table__)
_ATTACHMENTS = cast("sa.Table", AttachmentRow.__table__)
# Rows keep the mapped attribute names (``metadata_``), so one mapper serves entity rows and column rows.
_CONVERSATION_COLUMNS = tuple(
    column.label("metadata_") if column.key == "metadata" else column for column in _CONVERSATIONS.c
)


def _conversation(row: Row) -> Conversation:
    """A conversation from a row by column name (a SQLAlchemy row's mapping or an asyncpg record)."""
    feedback = None
    if row["feedback_rating"] is not None and row["feedback_at"] is not None:
        feedback = Feedback(
            rating=row["feedback_rating"], comment=row["feedback_comment"], submitted_at=row["feedback_at"]
        )
    return Conversation(
        id=row["id"],
        customer_id=row["customer_id"],
        status=ConversationStatus(row["status"]),
        metadata=dict(row["metadata_"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_activity_at=row["last_activity_at"],
        reopened_count=row["reopened_count"],
        closed_at=row["closed_at"],
        feedback=feedback,
        handoff=_decision(row["handoff"]),
        handoff_requested_at=row["handoff_requested_at"],
        handoff_summary=row["handoff_summary"],
        agent=AgentRef(row["agent_id"], row["agent_name"]) if row["agent_name"] is not None else None,
        claimed_at=row["claimed_at"],
    )


def _conversation_values(conversation: Conversation) -> dict[str, Any]:
    """The mutable columns of a conversation row, by mapped attribute name."""
    feedback = conversation.feedback
    return {
        "status": conversation.status.value,
        "metadata_": dict(conversation.metadata),
        "updated_at": conversation.updated_at,
        "last_activity_at": conversation.last_activity_at,
        "reopened_count": conversation.reopened_count,
        "closed_at": conversation.closed_at,
        "feedback_rating": feedback.rating if feedback else None,
        "feedback_comment": feedback.comment if feedback else None,
        "feedback_at": feedback.submitted_at if feedback else None,
        "handoff": _decision_json(conversation.handoff),
        "handoff_requested_at": conversation.handoff_requested_at,
        "handoff_summary": conversation.handoff_summary,
        "agent_id": conversation.agent.id if conversation.agent else None,
        "agent_name": conversation.agent.name if conversation.agent else None,
        "claimed_at": conversation.claimed_at,
    }


def _citation_json(citation: Citation) -> dict[str, object]:
    return {
        "document_id": str(citation.document_id),
        "version": citation.version,
        "chunk_id": str(citation.chunk_id),
        "title": citation.title,
        "url": citation.url,
        "quote": citation.quote,
    }


def _citation(data: dict[str, Any]) -> Citation:
    return Citation(
        document_id=UUID(data["document_id"]),
        version=int(data["version"]),
        chunk_id=UUID(data["chunk_id"]),
        title=str(data["title"]),
        url=data.get("url"),
        quote=str(data.get("quote", "")),
    )


def _decision(data: dict[str, Any] | None) -> HandoffDecision | None:
    if data is None:
        return None
    reason = data.get("reason_code")
    return HandoffDecision(
        action=HandoffAction(data["action"]),
        reason_code=ReasonCode(reason) if reason else None,
        evidence=data.get("evidence"),
        rule=data.get("rule"),
    )


def _decision_json(decision: HandoffDecision | None) -> dict[str, object] | None:
    if decision is None:
        return None
    return {
        "action": decision.action.value,
        "reason_code": decision.reason_code.value if decision.reason_code else None,
        "evidence": decision.evidence,
        "rule": decision.rule,
    }


def _message_values(message: Message) -> dict[str, Any]:
    usage = message.usage
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "role": message.role.value,
        "content": message.content,
        "created_at": message.created_at,
        "reply_to": list(message.reply_to),
        "citations": [_citation_json(citation) for citation in message.citations],
        "answer_status": message.answer_status.value if message.answer_status else None,
        "decision": _decision_json(message.decision),
        "usage": None
        if usage is None
        else {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "ttft_ms": message.ttft_ms,
        "total_ms": message.total_ms,
        "interrupted": message.interrupted,
        "author": message.author,
        "idempotency_key": message.idempotency_key,
        "metadata": dict(message.metadata),
    }


def _message(row: Row) -> Message:
    """A message from a row by column name (a SQLAlchemy row's mapping or an asyncpg record)."""
    usage = row["usage"]
    return Message(
        id=row["id"],
        conversation_id=row["conversation_id"],
        role=MessageRole(row["role"]),
        content=row["content"],
        created_at=row["created_at"],
        reply_to=tuple(row["reply_to"] or ()),
        citations=tuple(_citation(item) for item in row["citations"] or ()),
        answer_status=AnswerStatus(row["answer_status"]) if row["answer_status"] else None,
        decision=_decision(row["decision"]),
        usage=None if usage is None else TokenUsage(**usage),
        ttft_ms=row["ttft_ms"],
        total_ms=row["total_ms"],
        interrupted=row["interrupted"],
        author=row["author"],
        idempotency_key=row["idempotency_key"],
        attachments=tuple(
            AttachmentInfo(UUID(item[0]), item[1], item[2], item[3], item[4]) for item in row["attachments"] or ()
        ),
        metadata=dict(row["metadata"] or {}),
    )


def _messages(rows: Sequence[Row]) -> list[Message]:
    return [_message(row) for row in rows]


_MESSAGE_COLUMNS = (
    _MESSAGES.c.id,
    _MESSAGES.c.seq,
    _MESSAGES.c.conversation_id,
    _MESSAGES.c.role,
    _MESSAGES.c.content,
    _MESSAGES.c.created_at,
    _MESSAGES.c.reply_to,
    _MESSAGES.c.citations,
    _MESSAGES.c.answer_status,
    _MESSAGES.c.decision,
    _MESSAGES.c.usage,
    _MESSAGES.c.ttft_ms,
    _MESSAGES.c.total_ms,
    _MESSAGES.c.interrupted,
    _MESSAGES.c.author,
    _MESSAGES.c.idempotency_key,
    _MESSAGES.c.metadata.label("metadata"),
    # A message's attachments come with it (a correlated subquery, usually empty): no second round trip per read.
    sa.select(
        sa.func.json_agg(
            aggregate_order_by(
                sa.func.json_build_array(
                    _ATTACHMENTS.c.id,
                    _ATTACHMENTS.c.filename,
                    _ATTACHMENTS.c.content_type,
                    _ATTACHMENTS.c.size,
                    _ATTACHMENTS.c.sha256,
                ),
                _ATTACHMENTS.c.created_at,
                _ATTACHMENTS.c.id,
            ),
            type_=JSONB,
        )
    )
    .where(_ATTACHMENTS.c.message_id == _MESSAGES.c.id)
    .correlate(_MESSAGES)
    .scalar_subquery()
    .label("attachments"),
)

# Statements are built once, with bound parameters: the update runs through SQLAlchemy, which then finds its
# compiled form by a key it computed once; the others are compiled for the driver below.
_GET_CONVERSATION = sa.select(*_CONVERSATION_COLUMNS).where(_CONVERSATIONS.c.id == sa.bindparam("conversation_id"))
_UPDATE_CONVERSATION = sa.update(_CONVERSATIONS).where(_CONVERSATIONS.c.id == sa.bindparam("target_id"))
# The columns a message insert writes, as `_message_values` names them: all but the identity.
_MESSAGE_KEYS = tuple(column.key for column in _MESSAGES.c if column.key != "seq")
_JSONB_MESSAGE_KEYS = ("citations", "decision", "usage", "metadata")
_RECENT_MESSAGES = (
    sa.select(*_MESSAGE_COLUMNS)
    .where(_MESSAGES.c.conversation_id == sa.bindparam("conversation_id"))
    .order_by(_MESSAGES.c.seq.desc())
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_FIND_BY_KEY = sa.select(*_MESSAGE_COLUMNS).where(
    _MESSAGES.c.conversation_id == sa.bindparam("conversation_id"),
    _MESSAGES.c.idempotency_key == sa.bindparam("idempotency_key"),
)
# A turn's statements, run on the driver connection (driver.py says why).
_DRIVER_GET_CONVERSATION = compile_for_driver(_GET_CONVERSATION)
_DRIVER_LOCK_CONVERSATION = compile_for_driver(_GET_CONVERSATION.with_for_update(of=_CONVERSATIONS))
_DRIVER_INSERT_MESSAGE = compile_for_driver(sa.insert(_MESSAGES).returning(_MESSAGES.c.id), _MESSAGE_KEYS)
_DRIVER_INSERT_MESSAGE_ONCE = compile_for_driver(
    pg_insert(_MESSAGES)
    .on_conflict_do_nothing(
        index_elements=[_MESSAGES.c.conversation_id, _MESSAGES.c.idempotency_key],
        index_where=_MESSAGES.c.idempotency_key.is_not(None),
    )
    .returning(_MESSAGES.c.id),
    _MESSAGE_KEYS,
)
_DRIVER_RECENT_MESSAGES = compile_for_driver(_RECENT_MESSAGES)
_DRIVER_FIND_BY_KEY = compile_for_driver(_FIND_BY_KEY)
# What a turn reads of the files attached to the messages it answers.
_DRIVER_ATTACHMENT_TEXTS = compile_for_driver(
    sa.select(
        _ATTACHMENTS.c.filename,
        sa.func.left(_ATTACHMENTS.c.text, sa.bindparam("limit_chars", type_=sa.Integer)).label("text"),
    )
    .where(_ATTACHMENTS.c.conversation_id == sa.bindparam("conversation_id"), _ATTACHMENTS.c.text.is_not(None))
    .order_by(_ATTACHMENTS.c.created_at.desc(), _ATTACHMENTS.c.id.desc())
)
_DRIVER_GET_ATTACHMENT = compile_for_driver(
    sa.select(
        _ATTACHMENTS.c.id,
        _ATTACHMENTS.c.filename,
        _ATTACHMENTS.c.content_type,
        _ATTACHMENTS.c.size,
        _ATTACHMENTS.c.sha256,
        _ATTACHMENTS.c.data,
    ).where(
        _ATTACHMENTS.c.conversation_id == sa.bindparam("conversation_id"),
        _ATTACHMENTS.c.id == sa.bindparam("attachment_id"),
    )
)
_json = msgspec.json.Encoder()


def _driver_message_values(message: Message) -> dict[str, Any]:
    """A message's column values as the driver takes them.

    JSONB goes as JSON text, None as JSON null as SQLAlchemy stores it, so rows written either way read alike.
    """
    values = _message_values(message)
    for key in _JSONB_MESSAGE_KEYS:
        values[key] = _json.encode(values[key]).decode()
    return values


def _queue_cursor(conversation: Conversation) -> str:
    assert conversation.handoff_requested_at is not None  # noqa: S101 - queued conversations have one
    return TIME_ID_CURSOR.encode((conversation.handoff_requested_at, conversation.id))


class PostgresConversationRepository:
    """Conversations through advanced-alchemy repositories; messages with Core statements (hot path)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._conversations = _ConversationRows(session=session)
        self._customers = _CustomerRows(session=session)

    async def get_or_create_customer(
        self, external_id: str, *, name: str | None, email: str | None, now: datetime
    ) -> Customer:
        # One statement, race-free: concurrent first conversations of one customer create one row.
        insert = pg_insert(CustomerRow).values(
            id=new_id(), external_id=external_id, name=name, email=email, created_at=now
        )
        updates: dict[str, Any] = {}
        if name is not None:
            updates["name"] = insert.excluded.name
        if email is not None:
            updates["email"] = insert.excluded.email
        statement = insert.on_conflict_do_update(
            index_elements=[CustomerRow.external_id],
            # A no-op update still returns the row, which ON CONFLICT DO NOTHING would not.
            set_=updates or {"external_id": insert.excluded.external_id},
        ).returning(
            CustomerRow.id, CustomerRow.external_id, CustomerRow.name, CustomerRow.email, CustomerRow.created_at
        )
        async with storage_errors():
            row = (await self._session.execute(statement)).one()
        return Customer(
            id=row.id, external_id=row.external_id, name=row.name, email=row.email, created_at=row.created_at
        )

    async def get_customer(self, customer_id: UUID) -> Customer | None:
        async with storage_errors():
            row = await self._customers.get_one_or_none(id=customer_id)
        return None if row is None else _customer(row)

    async def find_customer(self, external_id: str) -> Customer | None:
        async with storage_errors():
            row = await self._customers.get_one_or_none(external_id=external_id)
        return None if row is None else _customer(row)

    async def add(self, conversation: Conversation) -> None:
        row = ConversationRow(
            id=conversation.id,
            customer_id=conversation.customer_id,
            created_at=conversation.created_at,
            **_conversation_values(conversation),
        )
        async with storage_errors():
            await self._conversations.add(row, auto_refresh=False)

    async def get(self, conversation_id: UUID, *, for_update: bool = False) -> Conversation | None:
        statement = _DRIVER_LOCK_CONVERSATION if for_update else _DRIVER_GET_CONVERSATION
        # A plain read needs no transaction (each statement reads committed data either way): a turn's read-only
        # scopes then cost no BEGIN and ROLLBACK round trips. The lock needs one, held until the commit.
        async with driver_connection(self._session, begin=for_update) as driver:
            row = await driver.fetchrow(statement.sql, conversation_id)
        return None if row is None else _conversation(row)

    async def update(self, conversation: Conversation) -> None:
        values = {
            ("metadata" if name == "metadata_" else name): value
            for name, value in _conversation_values(conversation).items()
        }
        async with storage_errors():
            await self._session.execute(_UPDATE_CONVERSATION, {**values, "target_id": conversation.id})

    async def list_conversations(
        self,
        *,
        status: ConversationStatus | None,
        customer_id: UUID | None,
        limit: int,
        cursor: str | None,
    ) -> ConversationPage:
        statement = sa.select(*_CONVERSATION_COLUMNS)
        if status is not None:
            statement = statement.where(_CONVERSATIONS.c.status == status.value)
        if customer_id is not None:
            statement = statement.where(_CONVERSATIONS.c.customer_id == customer_id)
        statement = newest_first(
            statement, _CONVERSATIONS.c.last_activity_at, _CONVERSATIONS.c.id, limit=limit, cursor=cursor
        )
        async with storage_errors():
            rows = list((await self._session.execute(statement)).mappings().all())
        items = [_conversation(row) for row in rows[:limit]]
        return ConversationPage(items=items, next_cursor=page_cursor(items, activity_position, more=len(rows) > limit))

    async def add_message(self, message: Message) -> Message:
        statement = _DRIVER_INSERT_MESSAGE if message.idempotency_key is None else _DRIVER_INSERT_MESSAGE_ONCE
        async with driver_connection(self._session) as driver:
            inserted = await driver.fetchval(statement.sql, *statement.arguments(_driver_message_values(message)))
            if inserted is None and message.idempotency_key is not None:
                original = await driver.fetchrow(
                    _DRIVER_FIND_BY_KEY.sql,
                    *_DRIVER_FIND_BY_KEY.arguments(
                        {"conversation_id": message.conversation_id, "idempotency_key": message.idempotency_key}
                    ),
                )
                if original is not None:
                    return _message(original)
        return message

    async def find_by_idempotency_key(self, conversation_id: UUID, idempotency_key: str) -> Message | None:
        parameters = {"conversation_id": conversation_id, "idempotency_key": idempotency_key}
        async with driver_connection(self._session, begin=False) as driver:
            row = await driver.fetchrow(_DRIVER_FIND_BY_KEY.sql, *_DRIVER_FIND_BY_KEY.arguments(parameters))
        return None if row is None else _message(row)

    async def get_message(self, conversation_id: UUID, message_id: UUID) -> Message | None:
        statement = sa.select(*_MESSAGE_COLUMNS).where(
            _MESSAGES.c.conversation_id == conversation_id, _MESSAGES.c.id == message_id
        )
        async with storage_errors():
            rows = _messages(list((await self._session.execute(statement)).mappings().all()))
        return rows[0] if rows else None

    async def find_reply(self, conversation_id: UUID, message_id: UUID) -> Message | None:
        statement = (
            sa.select(*_MESSAGE_COLUMNS)
            .where(
                _MESSAGES.c.conversation_id == conversation_id,
                sa.literal(message_id) == sa.func.any(_MESSAGES.c.reply_to),
            )
            .order_by(_MESSAGES.c.seq)
            .limit(1)
        )
        async with storage_errors():
            row = (await self._session.execute(statement)).mappings().first()
        return None if row is None else _message(row)

    async def list_messages(self, conversation_id: UUID, *, limit: int, cursor: str | None) -> MessagePage:
        statement = sa.select(*_MESSAGE_COLUMNS).where(_MESSAGES.c.conversation_id == conversation_id)
        if cursor:
            statement = statement.where(_MESSAGES.c.seq > SEQ_CURSOR.decode(cursor))
        statement = statement.order_by(_MESSAGES.c.seq).limit(limit + 1)
        async with storage_errors():
            rows = list((await self._session.execute(statement)).mappings().all())
            items = _messages(rows[:limit])
        next_cursor = SEQ_CURSOR.encode(rows[limit - 1]["seq"]) if len(rows) > limit else None
        return MessagePage(items=items, next_cursor=next_cursor)

    async def recent_messages(self, conversation_id: UUID, limit: int) -> list[Message]:
        parameters = {"conversation_id": conversation_id, "limit": limit}
        async with driver_connection(self._session, begin=False) as driver:
            rows = await driver.fetch(_DRIVER_RECENT_MESSAGES.sql, *_DRIVER_RECENT_MESSAGES.arguments(parameters))
        return [_message(row) for row in reversed(rows)]

    async def idle_conversations(self, *, inactive_since: datetime, limit: int) -> list[UUID]:
        statement = (
            sa.select(_CONVERSATIONS.c.id)
            .where(_CONVERSATIONS.c.status.in_(_IDLE_CLOSABLE), _CONVERSATIONS.c.last_activity_at < inactive_since)
            .order_by(_CONVERSATIONS.c.last_activity_at)
            .limit(limit)
        )
        async with storage_errors():
            return list((await self._session.execute(statement)).scalars())

    async def handoff_queue(
        self,
        *,
        statuses: Sequence[ConversationStatus],
        limit: int,
        cursor: str | None,
        claimed_by: AgentRef | None = None,
    ) -> ConversationPage:
        statement = sa.select(*_CONVERSATION_COLUMNS).where(
            # The same predicate as the partial index, so the planner can use it.
            _CONVERSATIONS.c.status.in_(["pending_human", "human"]),
            _CONVERSATIONS.c.status.in_([status.value for status in statuses]),
        )
        if claimed_by is not None:
            statement = statement.where(
                _CONVERSATIONS.c.agent_id == claimed_by.id
                if claimed_by.id is not None
                else sa.and_(_CONVERSATIONS.c.agent_id.is_(None), _CONVERSATIONS.c.agent_name == claimed_by.name)
            )
        if cursor:
            after = TIME_ID_CURSOR.decode(cursor)
            statement = statement.where(
                sa.tuple_(_CONVERSATIONS.c.handoff_requested_at, _CONVERSATIONS.c.id)
                > sa.tuple_(sa.literal(after[0]), sa.literal(after[1]))
            )
        statement = statement.order_by(_CONVERSATIONS.c.handoff_requested_at, _CONVERSATIONS.c.id).limit(limit + 1)
        async with storage_errors():
            rows = list((await self._session.execute(statement)).mappings().all())
        items = [_conversation(row) for row in rows[:limit]]
        return ConversationPage(items=items, next_cursor=_queue_cursor(items[-1]) if len(rows) > limit else None)

    async def count_waiting(self, *, requested_before: datetime) -> int:
        statement = sa.select(sa.func.count()).where(
            _CONVERSATIONS.c.status.in_(["pending_human", "human"]),
            _CONVERSATIONS.c.status == ConversationStatus.PENDING_HUMAN.value,
            _CONVERSATIONS.c.handoff_requested_at < requested_before,
        )
        async with storage_errors():
            return int((await self._session.execute(statement)).scalar_one())

    async def save_handoff_summary(self, conversation_id: UUID, *, requested_at: datetime, summary: str) -> None:
        statement = (
            sa.update(_CONVERSATIONS)
            .where(_CONVERSATIONS.c.id == conversation_id, _CONVERSATIONS.c.handoff_requested_at == requested_at)
            .values(handoff_summary=summary)
        )
        async with storage_errors():
            await self._session.execute(statement)


class PostgresAttachmentStore:
    """Attachment bytes in a bytea column: sizes are capped (10 MB), and one store keeps backups simple."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, conversation_id: UUID, message_id: UUID, upload: AttachmentUpload) -> None:
        info = upload.info
        statement = sa.insert(_ATTACHMENTS).values(
            id=info.id,
            conversation_id=conversation_id,
            message_id=message_id,
            filename=info.filename,
            content_type=info.content_type,
            size=info.size,
            sha256=info.sha256,
            data=upload.data,
            text=upload.text,
            created_at=sa.func.clock_timestamp(),  # distinct per row: keeps upload order
        )
        async with storage_errors():
            await self._session.execute(statement)

    async def get(self, conversation_id: UUID, attachment_id: UUID) -> tuple[AttachmentInfo, bytes] | None:
        parameters = {"conversation_id": conversation_id, "attachment_id": attachment_id}
        async with driver_connection(self._session, begin=False) as driver:
            row = await driver.fetchrow(_DRIVER_GET_ATTACHMENT.sql, *_DRIVER_GET_ATTACHMENT.arguments(parameters))
        if row is None:
            return None
        info = AttachmentInfo(row["id"], row["filename"], row["content_type"], row["size"], row["sha256"])
        return info, row["data"]

    async def texts(self, conversation_id: UUID, *, limit_chars: int) -> list[AttachedText]:
        parameters = {"conversation_id": conversation_id, "limit_chars": limit_chars}
        result: list[AttachedText] = []
        remaining = limit_chars
        async with driver_connection(self._session, begin=False) as driver:
            rows = await driver.fetch(_DRIVER_ATTACHMENT_TEXTS.sql, *_DRIVER_ATTACHMENT_TEXTS.arguments(parameters))
        for row in rows:
            if remaining <= 0:
                break
            text = row["text"][:remaining]
            result.append(AttachedText(filename=row["filename"], text=text))
            remaining -= len(text)
        return result
