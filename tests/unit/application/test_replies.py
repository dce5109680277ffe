"""Sending and replying with in-memory adapters: one reply at a time, queued messages, interruption, silence."""

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import pytest

from support.adapters.memory.customer_memory import (
    InMemoryCustomerMemory,
    InMemoryCustomerRecords,
    InMemoryHotStateEraser,
    InMemorySummaryStore,
)
from support.adapters.memory.knowledge import InMemoryKnowledgeBase
from support.application.customers import EraseCustomer
from support.application.replies import ReplySettings
from support.domain.conversations import (
    AnswerStatus,
    ConversationClosedError,
    ConversationNotFoundError,
    ConversationStatus,
    MessageRole,
)
from support.domain.feed import MessagePosted, ReplyDelta, ReplyDone, StreamFailed
from support.domain.knowledge import SearchHit, SearchQuery
from support.domain.limits import RateLimitedError
from tests.fakes.llm import Script
from tests.unit.application.conftest import SERVICE, World, knowledge_base_of, running_world


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
    assert world.llm.requests[1].newest == "Also, do you ship to Canada?"
    assert world.llm.requests[0].newest is None  # one message: the question itself
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


async def test_a_send_refused_by_its_admission_stores_nothing_and_starts_no_reply(world: World) -> None:
    admission: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sending = asyncio.create_task(
        world.send_message.execute(SERVICE, world.conversation.id, "hello", admission=admission)
    )
    await asyncio.sleep(0.01)
    assert not sending.done()  # nothing is stored before the verdict
    assert await world.repository.recent_messages(world.conversation.id, 10) == []
    admission.set_exception(RateLimitedError(()))

    with pytest.raises(RateLimitedError):
        await sending
    assert await world.repository.recent_messages(world.conversation.id, 10) == []
    assert world.llm.requests == []


async def test_a_refused_admission_wins_over_a_problem_with_the_message(world: World) -> None:
    admission: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    admission.set_exception(RateLimitedError(()))

    with pytest.raises(RateLimitedError):
        await world.send_message.execute(SERVICE, world.conversation.id, "   ", admission=admission)


async def test_a_send_that_is_not_stored_gives_back_the_lease_it_tried_for(world: World) -> None:
    # The lease is tried for beside the insert (ReplyRunner.reserve); a send that fails after that must free it.
    await world.repository.update(replace(world.conversation, status=ConversationStatus.CLOSED))

    with pytest.raises(ConversationClosedError):
        await world.send("anyone there?")
    await asyncio.sleep(0.01)  # the try for the lease has run by now
    await world.runner.drain()

    assert await world.sessions.acquire_reply_lease(world.conversation.id, "next turn", ttl_s=5)


async def test_a_reply_in_progress_keeps_its_lease_from_a_send_beside_it(world: World) -> None:
    world.llm.gate = asyncio.Event()
    first = await world.send("What is your return window?")
    await asyncio.sleep(0.05)  # the first turn holds the lease and waits at the gate
    second = await world.send("And for opened items?")
    await asyncio.sleep(0.05)

    assert len(world.llm.requests) == 1  # the second send's try for the lease failed: it waits its turn
    world.llm.gate.set()
    assert (await first.result()).reply is not None
    assert (await second.result()).reply is not None
    assert world.llm.max_active == 1


async def test_the_model_gets_each_passage_with_its_neighbouring_chunks_as_configured() -> None:
    bodies = ["Returns are free for 30 days.", "Print the prepaid label from your orders page.", "Refunds take 5 days."]
    knowledge = await knowledge_base_of(*bodies)

    async with running_world(reply_settings=ReplySettings(context_chunks=1), knowledge=knowledge) as world:
        turn = await world.send("Where do I print the prepaid label?")
        await turn.result()

    [passage] = world.llm.requests[0].passages
    assert passage.text == bodies[1]
    assert [(chunk.ordinal, chunk.text) for chunk in passage.context] == [(0, bodies[0]), (2, bodies[2])]


async def test_a_conversation_erased_while_it_is_answered_ends_the_stream_with_an_error(world: World) -> None:
    turn = await world.send("Where is my order?")
    # Erased before the turn reads its context (the turn runs as a task of its own).
    del world.repository.conversations[world.conversation.id]

    events = [event async for event in turn.events()]

    assert isinstance(events[-1].payload, StreamFailed)
    assert (events[-1].payload.status, events[-1].payload.code) == (404, "conversation_not_found")
    assert world.llm.requests == []


async def test_a_conversation_erased_while_the_model_writes_ends_the_stream_with_an_error(world: World) -> None:
    world.llm.gate = asyncio.Event()
    turn = await world.send("Where is my order?")
    await asyncio.sleep(0.05)  # the model waits at the gate
    del world.repository.conversations[world.conversation.id]
    world.llm.gate.set()

    events = [event async for event in turn.events()]

    assert isinstance(events[-1].payload, StreamFailed)
    assert (events[-1].payload.status, events[-1].payload.code) == (404, "conversation_not_found")
    assert not any(isinstance(event.payload, ReplyDone) for event in events)


async def test_a_reply_written_after_its_customer_is_erased_brings_nothing_back_to_the_feed(world: World) -> None:
    # The erasure's last hot-state pass runs once the deletion is committed; the model only writes after it. Its
    # words must not recreate the erased feed: the feed refuses them, and the requester hears the conversation is
    # gone (once), with none of the words.
    world.llm.gate = asyncio.Event()
    world.llm.script = Script(pieces=("Your order NW-1 ", "ships Monday."))
    turn = await world.send("Where is my order NW-1?")
    async with asyncio.timeout(5):
        while not world.llm.active:  # noqa: ASYNC110 - the model has been called and waits at its gate
            await asyncio.sleep(0.005)
    memory, summaries = InMemoryCustomerMemory(), InMemorySummaryStore()
    records = InMemoryCustomerRecords(world.repository, memory, summaries)
    hot_state = InMemoryHotStateEraser(world.sessions, world.bus)
    erase = EraseCustomer(world.repository, records, memory, summaries, hot_state, world.uow)
    await erase.execute(world.conversation.customer_id)
    world.llm.gate.set()

    events = [event async for event in turn.events()]
    await world.runner.drain()

    failures = [event.payload for event in events if isinstance(event.payload, StreamFailed)]
    assert [(failure.status, failure.code) for failure in failures] == [(404, "conversation_not_found")]
    assert not any(isinstance(event.payload, (ReplyDelta, ReplyDone)) for event in events)
    assert await world.bus.head(world.conversation.id) == 0
    with pytest.raises(ConversationNotFoundError):
        await world.bus.publish(world.conversation.id, [ReplyDelta("and a late one")])


class SearchedFor(InMemoryKnowledgeBase):
    """Records what each search looked for."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []

    async def search(self, query: SearchQuery, embedding: Sequence[float]) -> list[SearchHit]:
        self.queries.append(query.text)
        return await super().search(query, embedding)


async def test_a_follow_up_is_searched_with_the_messages_it_continues() -> None:
    knowledge = SearchedFor()
    async with running_world(knowledge=knowledge) as world:
        for text in ("How long do refunds take?", "and if I paid with PayPal?", "what if it's been longer than that?"):
            await (await world.send(text)).result()
        await (await world.send("What are your support hours?")).result()

    assert knowledge.queries == [
        "How long do refunds take?",
        "How long do refunds take?\nand if I paid with PayPal?",
        "How long do refunds take?\nand if I paid with PayPal?\nwhat if it's been longer than that?",
        "What are your support hours?",
    ]
    # The model is still asked the customer's own message.
    assert [request.question for request in world.llm.requests][1] == "and if I paid with PayPal?"


async def test_a_model_that_writes_nothing_still_gets_the_customer_an_answer_and_an_offer(world: World) -> None:
    # An empty message (or searches until the model had to stop) was stored and shown as a blank reply.
    world.llm.script = Script(pieces=("", "  \n "), cite_first_passage=False)

    result = await (await world.send("How long do refunds take?")).result()

    assert result.reply is not None
    assert result.reply.content.strip() == (
        "I'm sorry, I couldn't find an answer to that in our help center. "
        "Would you like me to connect you with someone from our support team?"
    )
    assert result.reply.answer_status is AnswerStatus.INSUFFICIENT_EVIDENCE


async def test_a_reply_cut_off_at_the_token_limit_says_so_and_is_marked_interrupted(world: World) -> None:
    world.llm.script = Script(pieces=("Refunds take five to ten busi",), stop_reason="max_tokens")

    result = await (await world.send("How long do refunds take?")).result()

    assert result.reply is not None
    assert result.reply.content.startswith("Refunds take five to ten busi\n\n(This reply was cut short.")
    assert result.reply.interrupted


async def test_a_failure_to_publish_does_not_cost_the_requester_the_reply(world: World) -> None:
    # An unexpected error in publishing killed the publisher: the stream ended after the echo, with no `done`.
    publish = world.bus.publish

    async def failing(conversation_id: object, payloads: object, **options: object) -> object:
        if any(isinstance(payload, ReplyDelta) for payload in payloads):  # type: ignore[attr-defined]
            raise ValueError("cannot encode this event")
        return await publish(conversation_id, payloads, **options)  # type: ignore[arg-type]

    world.bus.publish = failing  # type: ignore[method-assign, assignment]
    turn = await world.send("How long do refunds take?")

    events = [event.payload async for event in turn.events()]

    assert isinstance(events[-1], ReplyDone)
    assert "".join(event.text for event in events if isinstance(event, ReplyDelta)) == events[-1].message.content
