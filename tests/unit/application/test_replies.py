"""Sending and replying with in-memory adapters: one reply at a time, queued messages, interruption, silence."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

import pytest

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.memory.cache import InMemoryCache
from support.adapters.memory.conversations import InMemoryAttachmentStore, InMemoryConversationRepository
from support.adapters.memory.events import InMemoryEventBus
from support.adapters.memory.knowledge import InMemoryKnowledgeBase
from support.adapters.memory.sessions import InMemorySessionStore
from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.application.conversations import (
    ConversationLimits,
    SendMessage,
    StartConversation,
    Turn,
)
from support.application.keys import CustomerTokenSecret
from support.application.knowledge import KnowledgeLimits, QueryEmbeddings, SearchKnowledge
from support.application.replies import ConversationServices, ReplyRunner, ReplySettings
from support.domain.conversations import Conversation, ConversationStatus, MessageRole
from support.domain.feed import MessagePosted, ReplyDelta, ReplyDone
from support.domain.identity import Principal, Role
from tests.fakes.llm import Script, ScriptedLLM

SERVICE = Principal(role=Role.SERVICE, key_id=None, name="backend")


@dataclass
class _Services:
    conversations: InMemoryConversationRepository
    attachments: InMemoryAttachmentStore
    uow: InMemoryUnitOfWork
    search: SearchKnowledge


@dataclass
class World:
    repository: InMemoryConversationRepository
    bus: InMemoryEventBus
    llm: ScriptedLLM
    runner: ReplyRunner
    send_message: SendMessage
    conversation: Conversation

    async def send(self, text: str, key: str | None = None) -> Turn:
        return await self.send_message.execute(SERVICE, self.conversation.id, text, idempotency_key=key)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    repository = InMemoryConversationRepository()
    attachments = InMemoryAttachmentStore(repository)
    uow, clock = InMemoryUnitOfWork(), FixedClock()
    search = SearchKnowledge(
        InMemoryKnowledgeBase(), QueryEmbeddings(HashingEmbedder(64), InMemoryCache(), KnowledgeLimits())
    )

    @asynccontextmanager
    async def open_services() -> AsyncIterator[ConversationServices]:
        yield _Services(repository, attachments, uow, search)

    bus, llm = InMemoryEventBus(retention=100), ScriptedLLM()
    runner = ReplyRunner(open_services, llm, InMemorySessionStore(), bus, clock, ReplySettings(), "test")
    limits = ConversationLimits()
    started = await StartConversation(repository, uow, clock, CustomerTokenSecret("s"), limits).execute(
        SERVICE, external_id="customer-1"
    )
    yield World(
        repository,
        bus,
        llm,
        runner,
        SendMessage(repository, attachments, uow, clock, runner, limits),
        started.conversation,
    )
    await runner.close()


async def test_messages_sent_during_a_reply_are_answered_together_by_the_next_one(world: World) -> None:
    world.llm.gate = asyncio.Event()
    first = await world.send("What is your return window?")
    await asyncio.sleep(0.05)  # the first turn holds the lease and waits at the gate
    second = await world.send("And for opened items?")
    third = await world.send("Also, do you ship to Canada?")
    world.llm.gate.set()

    results = [await turn.result() for turn in (first, second, third)]

    assert results[0].reply is not None
    assert results[1].reply is not None
    assert results[0].reply.reply_to == (first.message.id,)
    assert results[1].reply.reply_to == (second.message.id, third.message.id)
    assert results[2].reply == results[1].reply
    assert world.llm.max_active == 1
    assert len(world.llm.requests) == 2
    assert world.llm.requests[1].question == "And for opened items?\n\nAlso, do you ship to Canada?"
    assert [turn.text for turn in world.llm.requests[1].history] == [
        "What is your return window?",
        "Here is what I found.",
    ]


async def test_the_stream_echoes_the_message_then_the_reply_with_feed_ids(world: World) -> None:
    turn = await world.send("hello")

    events = [event async for event in turn.events()]

    assert isinstance(events[0].payload, MessagePosted)
    assert [type(event.payload) for event in events[1:]] == [ReplyDelta, ReplyDelta, ReplyDelta, ReplyDone]
    assert [event.id for event in events] == [1, 2, 3, 4, 5]
    retained = world.bus.subscribe(world.conversation.id, after=0)
    assert [(await anext(retained)).id for _ in range(5)] == [1, 2, 3, 4, 5]
    await retained.aclose()


async def test_a_retried_send_returns_the_original_reply_without_a_second_turn(world: World) -> None:
    original = await (await world.send("hi", key="k")).result()
    retried_turn = await world.send("hi", key="k")
    retried = await retried_turn.result()

    assert retried_turn.duplicate
    assert retried.message == original.message
    assert retried.reply == original.reply
    assert len(world.llm.requests) == 1


async def test_stopping_mid_reply_stores_what_was_written_as_interrupted(world: World) -> None:
    world.llm.script = Script(pieces=("Refunds take ", "5 to 10 days", " after we receive the return."), delay_s=0.2)
    await world.send("refunds?")
    await asyncio.sleep(0.3)  # the first piece is out, the second is not

    await world.runner.close()

    reply = world.repository.messages[-1]
    assert reply.role is MessageRole.ASSISTANT
    assert reply.interrupted
    assert reply.content == "Refunds take"


async def test_the_assistant_never_writes_while_a_human_owns_the_conversation(world: World) -> None:
    await world.repository.update(replace(world.conversation, status=ConversationStatus.HUMAN))

    result = await (await world.send("is anyone there?")).result()

    assert result.reply is None
    assert result.conversation_status is ConversationStatus.HUMAN
    assert world.llm.requests == []
    assert [message.role for message in world.repository.messages] == [MessageRole.CUSTOMER]
