"""Handoff with in-memory adapters: policy decisions in turns, the queue, ownership changes, agent replies."""

import asyncio
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.memory.api_keys import InMemoryApiKeyRepository
from support.adapters.offline.summaries import ExtractiveSummarizer
from support.application.conversations import (
    CloseConversation,
    StartConversation,
    SweepIdleConversations,
    Turn,
    TurnResult,
)
from support.application.handover import HandoffSettings, HandoffSummaries
from support.application.keys import CreateApiKey, CustomerTokenSecret, RevokeApiKey
from support.application.replies import ReplySettings
from support.application.services import ConversationServices
from support.domain.conversations import (
    AnswerStatus,
    ClaimedByAnotherAgentError,
    ConversationStatus,
    HandoffAction,
    HandoffDecision,
    IdempotencyKeyReusedError,
    InvalidTransitionError,
    Message,
    MessageRole,
    NotClaimedError,
    ReasonCode,
)
from support.domain.errors import PermissionDeniedError
from support.domain.escalation import BusinessHours
from support.domain.feed import FeedEvent, FeedPayload, HandoffChanged, MessagePosted, ReplyDelta, ReplyDone
from support.domain.identity import Principal, Role
from support.domain.webhooks import WebhookEventType
from support.ports.errors import CacheUnavailableError
from tests.fakes.llm import Script, ScriptedLLM
from tests.unit.application.conftest import AGENT_ANA, AGENT_BEN, SERVICE, World, running_world

S = ConversationStatus
W = WebhookEventType


async def turn(world: World, text: str) -> TurnResult:
    result = await (await world.send(text)).result()
    await world.summaries.drain()
    return result


async def feed(world: World) -> list[FeedEvent]:
    subscription = world.bus.subscribe(world.conversation.id, after=0)
    events: list[FeedEvent] = []
    try:
        while True:
            events.append(await asyncio.wait_for(anext(subscription), 0.05))
    except TimeoutError:
        pass
    finally:
        await subscription.aclose()
    return events


async def test_asking_for_a_person_hands_over_without_calling_the_model(world: World) -> None:
    result = await turn(world, "I'd like to talk to a human, please")

    assert world.llm.requests == []
    assert result.conversation_status is S.PENDING_HUMAN
    reply = result.reply
    assert reply is not None
    assert (reply.role, reply.author, reply.answer_status) == (MessageRole.ASSISTANT, "policy", AnswerStatus.HANDED_OFF)
    assert reply.decision is not None
    assert (reply.decision.action, reply.decision.reason_code, reply.decision.rule) == (
        HandoffAction.ESCALATE,
        ReasonCode.CUSTOMER_REQUEST,
        "customer_request.phrase",
    )
    assert "Expected wait: about 5 minutes" in reply.content
    conversation = await world.current()
    assert conversation.handoff == reply.decision
    assert conversation.handoff_summary is not None
    assert "talk to a human" in conversation.handoff_summary
    [requested] = world.outbox.of_type(W.HANDOFF_REQUESTED)
    assert requested.data["reason_code"] == "customer_request"
    assert requested.data["queue_position"] == 1
    # Times in data are written as the envelope's created_at is: UTC with Z.
    assert str(requested.data["requested_at"]).endswith("Z")
    assert str(requested.data["expected_at"]).endswith("Z")
    names = [event.payload.name for event in await feed(world)]
    assert names[-2:] == ["done", "handoff"]


async def test_while_a_person_is_due_the_assistant_stays_silent_and_agents_hear_the_customer(world: World) -> None:
    await turn(world, "connect me to an agent")
    before = len(world.llm.requests)

    result = await turn(world, "My order number is 12345")

    assert len(world.llm.requests) == before == 0
    assert result.reply is None
    assert result.conversation_status is S.PENDING_HUMAN
    [created] = world.outbox.of_type(W.MESSAGE_CREATED)
    assert created.data["message"]["content"] == "My order number is 12345"  # type: ignore[index]
    assert created.data["message"]["created_at"].endswith("Z")  # type: ignore[index]


async def test_claiming_is_exclusive_and_the_agents_reply_reaches_the_feed(world: World) -> None:
    await turn(world, "talk to a person")

    claimed = await world.claim.execute(AGENT_ANA, world.conversation.id)
    with pytest.raises(ClaimedByAnotherAgentError):
        await world.claim.execute(AGENT_BEN, world.conversation.id)
    again = await world.claim.execute(AGENT_ANA, world.conversation.id)
    message, _, duplicate = await world.agent_message.execute(AGENT_ANA, world.conversation.id, "Hi, Ana here.")
    with pytest.raises(ClaimedByAnotherAgentError):
        await world.agent_message.execute(AGENT_BEN, world.conversation.id, "Ben too")

    assert claimed.status is again.status is S.HUMAN
    assert claimed.agent is not None
    assert claimed.agent.name == "Ana"
    assert not duplicate
    assert (message.role, message.author) == (MessageRole.AGENT, "Ana")
    events = [event.payload for event in await feed(world)]
    assert HandoffChanged(S.HUMAN, ReasonCode.CUSTOMER_REQUEST) in events
    posted = [payload.message for payload in events if isinstance(payload, MessagePosted)]
    assert [item.role for item in posted[-2:]] == [MessageRole.SYSTEM, MessageRole.AGENT]
    assert "Ana from our support team has joined" in posted[-2].content
    assert [event.type for event in world.outbox.events[-3:]] == [
        W.HANDOFF_CLAIMED,
        W.MESSAGE_CREATED,
        W.MESSAGE_CREATED,
    ]


async def test_agents_act_only_on_the_agent_side(world: World) -> None:
    await turn(world, "talk to a person")

    with pytest.raises(PermissionDeniedError):
        await world.claim.execute(SERVICE, world.conversation.id)
    with pytest.raises(NotClaimedError):
        await world.resolve.execute(AGENT_ANA, world.conversation.id)


async def test_the_customer_side_resolves_only_while_the_assistant_has_the_conversation(world: World) -> None:
    await turn(world, "talk to a person")
    with pytest.raises(InvalidTransitionError):
        await world.resolve.execute(SERVICE, world.conversation.id)  # waiting for an agent
    await world.claim.execute(AGENT_ANA, world.conversation.id)
    with pytest.raises(InvalidTransitionError):
        await world.resolve.execute(SERVICE, world.conversation.id)  # with an agent
    assert (await world.current()).status is S.HUMAN

    await world.release.execute(AGENT_ANA, world.conversation.id)
    resolved = await world.resolve.execute(SERVICE, world.conversation.id)
    assert resolved.status is S.RESOLVED


async def test_an_agent_replying_to_a_waiting_conversation_claims_it(world: World) -> None:
    await turn(world, "talk to a person")

    _, conversation, _ = await world.agent_message.execute(AGENT_BEN, world.conversation.id, "Ben here, looking now")

    assert conversation.status is S.HUMAN
    assert conversation.agent is not None
    assert conversation.agent.name == "Ben"


async def test_released_conversations_are_answered_by_the_assistant_again(world: World) -> None:
    await turn(world, "talk to a person")
    await world.claim.execute(AGENT_ANA, world.conversation.id)
    with pytest.raises(ClaimedByAnotherAgentError):
        await world.release.execute(AGENT_BEN, world.conversation.id)

    released = await world.release.execute(AGENT_ANA, world.conversation.id)
    result = await turn(world, "How long do refunds take?")

    assert released.status is S.BOT
    assert released.agent is None
    assert result.reply is not None
    assert result.reply.author == "scripted"
    assert len(world.llm.requests) == 1


async def test_a_resolved_conversation_reopens_with_the_assistant_and_does_not_loop_back(world: World) -> None:
    world.llm.script = Script(handoff=ReasonCode.INSUFFICIENT_EVIDENCE)
    await turn(world, "Question one about the blue widget")
    await turn(world, "Question two about the red gadget")  # second miss in a row → repeated_failure
    assert (await world.current()).status is S.PENDING_HUMAN
    await world.claim.execute(AGENT_ANA, world.conversation.id)
    resolved = await world.resolve.execute(AGENT_ANA, world.conversation.id)

    result = await turn(world, "One more thing about the green gizmo")

    assert resolved.status is S.RESOLVED
    assert [event.type for event in world.outbox.events if event.type is W.CONVERSATION_RESOLVED]
    conversation = await world.current()
    assert conversation.reopened_count == 1
    # The failures before the handoff belong to the last episode: one new miss only offers a person.
    assert result.conversation_status is S.BOT
    assert result.reply is not None
    assert result.reply.decision is not None
    assert result.reply.decision.action is HandoffAction.OFFER_HUMAN
    # Followers hear of the reopening (every ownership change is a handoff event), before the message.
    events = await feed(world)
    changes = [
        (index, event.payload.status) for index, event in enumerate(events) if isinstance(event.payload, HandoffChanged)
    ]
    assert [status for _, status in changes][-2:] == [S.RESOLVED, S.BOT]
    message = next(i for i, e in enumerate(events) if e.payload.name == "message" and "green gizmo" in str(e.payload))
    assert changes[-1][0] < message


async def test_the_reply_stream_of_a_reopening_message_has_no_handoff_event(world: World) -> None:
    await turn(world, "How long do refunds take?")
    await world.resolve.execute(SERVICE, world.conversation.id)

    streamed = [event async for event in (await world.send("One more thing")).events()]

    # On a reply stream a handoff event means a person took the reply over; the reopening is for the feed.
    assert [event.payload.name for event in streamed][:1] == ["message"]
    assert "handoff" not in [event.payload.name for event in streamed]
    assert "done" in [event.payload.name for event in streamed]
    assert [event.payload.name for event in await feed(world)].count("handoff") == 2  # resolved, then bot


async def test_the_models_request_for_a_person_hands_over_after_its_words(world: World) -> None:
    world.llm.script = Script(pieces=("Let me get ", "someone for you."), handoff=ReasonCode.CUSTOMER_REQUEST)

    result = await turn(world, "my parcel is wrong, can someone check?")

    assert result.conversation_status is S.PENDING_HUMAN
    assert result.reply is not None
    assert result.reply.content.startswith("Let me get someone for you.\n\nI'm passing this conversation")
    assert result.reply.decision is not None
    assert result.reply.decision.rule == "customer_request.assistant"


async def test_frustration_gets_an_answer_with_an_offer_then_a_person(world: World) -> None:
    first = await turn(world, "This is ridiculous, my order 555 is late")
    second = await turn(world, "Still ridiculous. Where is order 555?")

    assert first.reply is not None
    assert first.reply.decision is not None
    assert first.reply.decision.action is HandoffAction.OFFER_HUMAN
    assert first.reply.content.endswith("I'll bring in our support team.")
    assert first.conversation_status is S.BOT
    assert second.conversation_status is S.PENDING_HUMAN
    assert second.reply is not None
    assert second.reply.decision is not None
    assert second.reply.decision.rule == "frustration.continued"
    assert len(world.llm.requests) == 1


async def test_a_reply_being_written_when_a_person_takes_over_is_dropped(world: World) -> None:
    world.llm.gate = asyncio.Event()
    pending = await world.send("How do I change my address?")
    await asyncio.sleep(0.05)  # the model has been called and waits at the gate

    await world.request_handoff.execute(SERVICE, world.conversation.id, "prefer a person")
    await world.claim.execute(AGENT_ANA, world.conversation.id)
    world.llm.gate.set()
    result = await pending.result()

    assert result.reply is None
    assert result.conversation_status is S.HUMAN
    stored = (await world.repository.list_messages(world.conversation.id, limit=50, cursor=None)).items
    assert MessageRole.ASSISTANT not in {message.role for message in stored}


async def test_a_person_taking_over_mid_reply_stops_the_model_within_the_check_interval() -> None:
    words = tuple(f"word{index} " for index in range(200))
    llm = ScriptedLLM(script=Script(pieces=words, delay_s=0.01))
    async with running_world(llm=llm, reply_settings=ReplySettings(ownership_check_s=0.05)) as world:
        pending = await world.send("How do I change my address?")
        deltas: list[str] = []
        writing = asyncio.Event()

        async def read() -> list[FeedEvent]:
            events = []
            async for event in pending.events():
                events.append(event)
                if isinstance(event.payload, ReplyDelta):
                    deltas.append(event.payload.text)
                    if len(deltas) == 5:
                        writing.set()
            return events

        reader = asyncio.create_task(read())
        await asyncio.wait_for(writing.wait(), 5)
        await world.request_handoff.execute(SERVICE, world.conversation.id, "prefer a person")
        await world.claim.execute(AGENT_ANA, world.conversation.id)
        claimed_at = len(deltas)
        events = await asyncio.wait_for(reader, 5)

        # The model was stopped (its stream closed) well before its 200 pieces, within about one check interval.
        assert llm.active == 0
        assert claimed_at <= len(deltas) < claimed_at + 15
        assert isinstance(events[-1].payload, HandoffChanged)
        stored = (await world.repository.list_messages(world.conversation.id, limit=50, cursor=None)).items
        assert MessageRole.ASSISTANT not in {message.role for message in stored}


async def test_a_model_stopped_by_a_takeover_before_its_first_word_gets_no_apology_written_for_it() -> None:
    # The reply without a word gets "I couldn't find an answer…", but not when a person took over meanwhile.
    # With the feed down the words go to the requester unguarded: only the turn itself can hold the apology back.
    llm = ScriptedLLM(script=Script(pieces=("",) * 200, delay_s=0.01, cite_first_passage=False), gate=asyncio.Event())
    async with running_world(llm=llm, reply_settings=ReplySettings(ownership_check_s=0.05)) as world:

        async def feed_down(*_: object, **__: object) -> list[FeedEvent]:
            raise CacheUnavailableError("Valkey is down")

        world.bus.publish = feed_down  # type: ignore[method-assign]
        pending = await world.send("How do I change my address?")
        reader = asyncio.create_task(anext_all(pending))
        while not llm.active:  # noqa: ASYNC110 - the model has been called and waits at its gate
            await asyncio.sleep(0.005)
        await world.request_handoff.execute(SERVICE, world.conversation.id, "prefer a person")
        await world.claim.execute(AGENT_ANA, world.conversation.id)
        assert llm.gate is not None
        llm.gate.set()
        events = await asyncio.wait_for(reader, 5)

    assert not [event for event in events if isinstance(event.payload, ReplyDelta)]


async def anext_all(turn: Turn) -> list[FeedEvent]:
    return [event async for event in turn.events()]


async def test_no_word_of_the_reply_follows_a_takeover_in_the_feed_without_waiting_for_a_check() -> None:
    words = tuple(f"word{index} " for index in range(200))
    llm = ScriptedLLM(script=Script(pieces=words, delay_s=0.01))
    # Polling the owner is off (an hour): what stops the reply is the feed refusing its words after the takeover.
    async with running_world(llm=llm, reply_settings=ReplySettings(ownership_check_s=3600)) as world:
        feed = world.bus.subscribe(world.conversation.id, after=None)
        pending = await world.send("How do I change my address?")
        seen: list[FeedEvent] = []
        writing = asyncio.Event()

        async def follow() -> None:
            async for event in feed:
                seen.append(event)
                if sum(isinstance(item.payload, ReplyDelta) for item in seen) == 5:
                    writing.set()

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(writing.wait(), 5)
        await world.request_handoff.execute(SERVICE, world.conversation.id, "prefer a person")
        await world.claim.execute(AGENT_ANA, world.conversation.id)
        result = await asyncio.wait_for(pending.result(), 5)
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)

        takeover = next(
            index
            for index, event in enumerate(seen)
            if isinstance(event.payload, HandoffChanged) and event.payload.takes_over
        )
        assert not [event for event in seen[takeover:] if isinstance(event.payload, ReplyDelta)]
        # The model was stopped at its next words, far short of its 200 pieces, and nothing was stored.
        assert llm.active == 0
        assert sum(isinstance(event.payload, ReplyDelta) for event in seen) < 50
        assert result.reply is None
        assert result.conversation_status is S.HUMAN


async def test_a_reply_stored_before_a_takeover_still_reaches_every_feed_with_its_done() -> None:
    # The takeover commits right after the reply's (the row lock orders them) and is announced before the reply's
    # `done` is published, as when it is made in another process: the stored reply must still end every stream.
    llm = ScriptedLLM(script=Script(pieces=("Hello ", "there.")))
    async with running_world(llm=llm) as world:
        publish = world.bus.publish
        taken_over = False

        async def publish_after_a_takeover(
            conversation_id: UUID, payloads: Sequence[FeedPayload], *, owned_since: int | None = None
        ) -> list[FeedEvent]:
            nonlocal taken_over
            if not taken_over and any(isinstance(payload, ReplyDone) for payload in payloads):
                taken_over = True
                await world.request_handoff.execute(SERVICE, world.conversation.id, "a person please")
            return await publish(conversation_id, payloads, owned_since=owned_since)

        world.bus.publish = publish_after_a_takeover  # type: ignore[method-assign]
        feed = world.bus.subscribe(world.conversation.id, after=await world.bus.head(world.conversation.id))
        pending = await world.send("How do I change my address?")
        requester = [event async for event in pending.events()]
        # The customer's message, 2 deltas, done, the handoff and its notice (replayed, then live).
        seen = [await asyncio.wait_for(anext(feed), 5) for _ in range(6)]
        await feed.aclose()

    assert taken_over
    [done] = [event.payload for event in seen if isinstance(event.payload, ReplyDone)]
    assert done.message.content == "Hello there."
    assert [event.payload for event in seen if isinstance(event.payload, ReplyDelta)] == [
        ReplyDelta("Hello "),
        ReplyDelta("there."),
    ]
    assert any(isinstance(event.payload, ReplyDone) for event in requester)


async def test_a_reply_whose_feed_head_cannot_be_read_goes_to_its_requester_only() -> None:
    # Without the head its words could not be guarded against a takeover: none of them reaches the feed.
    async with running_world() as world:

        async def unreadable_head(conversation_id: UUID) -> int:
            raise CacheUnavailableError

        head = world.bus.head
        before = await head(world.conversation.id)
        world.bus.head = unreadable_head  # type: ignore[method-assign]
        result = await (await world.send("How do I change my address?")).result()
        after = await head(world.conversation.id)
        retained = world.bus.subscribe(world.conversation.id, after=before)
        published = [await asyncio.wait_for(anext(retained), 5) for _ in range(after - before)]
        await retained.aclose()

    assert result.reply is not None
    assert result.reply.content == "Here is what I found."
    # The customer's message, then the stored reply's `done`: none of the unguarded words in between.
    assert [type(event.payload) for event in published] == [MessagePosted, ReplyDone]


async def test_a_handover_notice_after_a_takeover_and_a_handback_reaches_every_stream_with_done() -> None:
    # Between the model's last words and the store step the customer asks for a person and withdraws (another tab):
    # the bot owns the conversation again under the row lock, so the reply, its handover notice and `done` go out.
    llm = ScriptedLLM(script=Script(pieces=("Let me get ", "someone for you."), handoff=ReasonCode.CUSTOMER_REQUEST))
    async with running_world(llm=llm) as world:
        publish, add_message = world.bus.publish, world.repository.add_message
        changed_their_mind = False

        async def publish_then_change_mind(
            conversation_id: UUID, payloads: Sequence[FeedPayload], *, owned_since: int | None = None
        ) -> list[FeedEvent]:
            nonlocal changed_their_mind
            events = await publish(conversation_id, payloads, owned_since=owned_since)
            if not changed_their_mind and ReplyDelta("someone for you.") in payloads:
                changed_their_mind = True
                await world.request_handoff.execute(SERVICE, world.conversation.id, "a person")
                await world.withdraw.execute(SERVICE, world.conversation.id)
            return events

        async def add_message_in_a_round_trip(message: Message) -> Message:
            await asyncio.sleep(0.01)  # a database round trip: the publisher runs meanwhile
            return await add_message(message)

        world.bus.publish = publish_then_change_mind  # type: ignore[method-assign]
        world.repository.add_message = add_message_in_a_round_trip  # type: ignore[method-assign]
        pending = await world.send("my parcel is wrong, can someone check?")
        requester = [event.payload async for event in pending.events()]

    assert changed_their_mind
    assert (await world.current()).status is S.PENDING_HUMAN
    [done] = [payload for payload in requester if isinstance(payload, ReplyDone)]
    assert done.message.content.startswith("Let me get someone for you.\n\nI'm passing this conversation")
    assert HandoffChanged(S.PENDING_HUMAN, ReasonCode.CUSTOMER_REQUEST) in requester


async def test_requesting_a_person_twice_changes_nothing_and_withdrawing_returns_to_the_bot(world: World) -> None:
    first = await world.request_handoff.execute(SERVICE, world.conversation.id, "billing question")
    again = await world.request_handoff.execute(SERVICE, world.conversation.id, None)
    withdrawn = await world.withdraw.execute(SERVICE, world.conversation.id)

    assert first.status is again.status is S.PENDING_HUMAN
    assert first.handoff is not None
    assert (first.handoff.rule, first.handoff.evidence) == ("customer_request.endpoint", "billing question")
    assert again.handoff_requested_at == first.handoff_requested_at
    assert withdrawn.status is S.BOT
    assert len(world.outbox.of_type(W.HANDOFF_REQUESTED)) == 1
    [cancelled] = world.outbox.of_type(W.HANDOFF_WITHDRAWN)  # a ticket opened on the request can be closed
    assert cancelled.data["status"] == "bot"
    with pytest.raises(InvalidTransitionError):
        await world.withdraw.execute(SERVICE, world.conversation.id)


async def test_asking_for_a_person_on_a_resolved_conversation_reopens_and_queues_it(world: World) -> None:
    await turn(world, "How long do refunds take?")
    await world.resolve.execute(SERVICE, world.conversation.id)

    requested = await world.request_handoff.execute(SERVICE, world.conversation.id, "one more question")

    assert requested.status is S.PENDING_HUMAN
    assert requested.reopened_count == 1
    assert len(world.outbox.of_type(W.HANDOFF_REQUESTED)) == 1
    statuses = [event.payload.status for event in await feed(world) if isinstance(event.payload, HandoffChanged)]
    assert statuses[-2:] == [S.RESOLVED, S.PENDING_HUMAN]


async def test_unclaimed_handoffs_go_back_to_the_assistant_after_the_wait(world: World) -> None:
    await world.request_handoff.execute(SERVICE, world.conversation.id, None)
    world.clock.advance(timedelta(seconds=world.handoff_settings.max_wait_s - 1))
    assert await world.expire.execute() == 0
    world.clock.advance(timedelta(seconds=2))

    assert await world.expire.execute() == 1
    conversation = await world.current()
    assert conversation.status is S.BOT
    last = (await world.repository.recent_messages(world.conversation.id, 1))[0]
    assert (last.role, last.content.startswith("I'm sorry: nobody from our team")) == (MessageRole.SYSTEM, True)
    # Webhooks hear of it like of every other ownership change: what happened, then the notice.
    expired, notice = world.outbox.events[-2:]
    assert (expired.type, notice.type) == (W.HANDOFF_EXPIRED, W.MESSAGE_CREATED)
    assert expired.conversation_id == world.conversation.id
    assert (expired.data["status"], expired.data["reason_code"], expired.data["agent"]) == (
        "bot",
        "customer_request",
        None,
    )
    [requested] = world.outbox.of_type(W.HANDOFF_REQUESTED)
    assert expired.data["requested_at"] == requested.data["requested_at"]  # which request lapsed
    told = notice.data["message"]
    assert (told["id"], told["role"], told["content"]) == (str(last.id), "system", last.content)  # type: ignore[index]
    events = [event.payload for event in await feed(world)]
    assert HandoffChanged(S.BOT, None) in events
    assert MessagePosted(last) in events
    assert await world.expire.execute() == 0  # once
    assert world.outbox.events[-2:] == [expired, notice]


async def test_the_agents_summary_never_shows_a_secret_the_customer_typed(world: World) -> None:
    await turn(world, "My card 5555 5555 5555 4444 got declined twice and my verification code is 884213")
    await turn(world, "I want to talk to a person")
    world.clock.advance(timedelta(minutes=1))

    conversation = await world.current()
    [queued] = (await world.queue.execute(AGENT_ANA)).items

    for summary in (conversation.handoff_summary, queued.summary):
        assert summary is not None
        assert "declined twice" in summary
        assert "[card number]" in summary
        assert "[one-time code]" in summary
        assert "4444" not in summary
        assert "884213" not in summary


def no_services() -> AbstractAsyncContextManager[ConversationServices]:
    raise AssertionError("summarize reads nothing")


class RecordingSummarizer:
    """What the model would be sent (and a summary that repeats it, as a careless model might)."""

    def __init__(self) -> None:
        self.seen: list[tuple[list[str], str | None]] = []

    async def summarize(self, messages: Sequence[Message], *, reason: HandoffDecision | None) -> str:
        self.seen.append(([message.content for message in messages], reason.evidence if reason else None))
        return " ".join(message.content for message in messages)


async def test_the_model_writing_a_summary_is_sent_redacted_text(world: World) -> None:
    model = RecordingSummarizer()
    summaries = HandoffSummaries(no_services, model, ExtractiveSummarizer())
    await turn(world, "my PIN 4821 and card 4111 1111 1111 1111, please get me a human")
    messages = await world.repository.recent_messages(world.conversation.id, 10)
    secret = HandoffDecision(HandoffAction.ESCALATE, ReasonCode.CUSTOMER_REQUEST, "card 4111 1111 1111 1111")

    summary = await summaries.summarize(messages, secret)

    [(contents, evidence)] = model.seen
    assert "[card number]" in contents[0]
    assert "[PIN]" in contents[0]
    assert evidence == "card [card number]"
    assert "4111" not in " ".join([*contents, summary])
    assert "4821" not in summary


async def test_the_queue_lists_oldest_first_with_wait_and_summary(world: World) -> None:
    await turn(world, "I want to speak to a person about my invoice")
    world.clock.advance(timedelta(minutes=3))

    page = await world.queue.execute(AGENT_ANA)

    [queued] = page.items
    assert queued.conversation.id == world.conversation.id
    assert queued.wait_s == 180
    assert "invoice" in queued.summary
    with pytest.raises(PermissionDeniedError):
        await world.queue.execute(SERVICE)


async def test_replies_after_a_handoff_decision_end_the_turn_with_done(world: World) -> None:
    turn_ = await world.send("Please cancel my subscription")
    events = [event.payload async for event in turn_.events()]

    assert isinstance(events[-2], ReplyDone)
    assert events[-1] == HandoffChanged(S.PENDING_HUMAN, ReasonCode.SENSITIVE_TOPIC)


class _HeldEmbedder(HashingEmbedder):
    """Embeds only once ``release`` is set, and says when a question is waiting."""

    def __init__(self) -> None:
        super().__init__(64)
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def embed_query(self, text: str) -> list[float]:
        self.waiting.set()
        await self.release.wait()
        return await super().embed_query(text)


async def test_a_person_asked_for_while_the_question_is_embedded_gets_no_bot_words() -> None:
    embedder = _HeldEmbedder()
    async with running_world(query_embedder=embedder) as world:
        turn = await world.send("How long do refunds take?")
        await embedder.waiting.wait()  # the turn looked at the owner already and is now embedding the question
        await world.request_handoff.execute(SERVICE, world.conversation.id, None)
        embedder.release.set()
        result = await turn.result()

        assert world.llm.requests == []  # the model was never asked to write
        assert result.reply is None
        assert result.conversation_status is ConversationStatus.PENDING_HUMAN
        assert MessageRole.ASSISTANT not in {m.role for m in world.repository.messages}


async def test_what_the_customer_wrote_while_waiting_is_history_for_the_bot_once_it_is_back(world: World) -> None:
    await world.request_handoff.execute(SERVICE, world.conversation.id, None)
    waiting = await turn(world, "How long do refunds take?")
    assert waiting.reply is None
    await world.withdraw.execute(SERVICE, world.conversation.id)

    result = await turn(world, "What is the warranty on desks?")

    assert result.reply is not None
    assert result.reply.reply_to == (result.message.id,)
    [request] = world.llm.requests
    assert request.question == "What is the warranty on desks?"
    assert "How long do refunds take?" in [item.text for item in request.history]


async def test_an_agent_may_not_resolve_the_assistants_conversation_but_an_admin_may(world: World) -> None:
    admin = Principal(role=Role.ADMIN, key_id=None, name="admin")

    with pytest.raises(NotClaimedError):
        await world.resolve.execute(AGENT_ANA, world.conversation.id)
    assert (await world.current()).status is S.BOT
    resolved = await world.resolve.execute(admin, world.conversation.id)

    assert (resolved.status, resolved.agent) == (S.RESOLVED, None)
    [event] = world.outbox.of_type(W.CONVERSATION_RESOLVED)
    assert event.data["resolved_by"] == "admin"


async def test_an_agents_retry_after_the_conversation_moved_on_returns_the_original(world: World) -> None:
    await turn(world, "talk to a person")
    await world.claim.execute(AGENT_ANA, world.conversation.id)
    sent, _, _ = await world.agent_message.execute(
        AGENT_ANA, world.conversation.id, "Refund issued, all done.", idempotency_key="final-1"
    )
    await world.resolve.execute(AGENT_ANA, world.conversation.id)

    # The network dropped the first answer: the retry gets the stored message, not a 409.
    again, _, duplicate = await world.agent_message.execute(
        AGENT_ANA, world.conversation.id, "Refund issued, all done.", idempotency_key="final-1"
    )
    assert duplicate
    assert again.id == sent.id
    with pytest.raises(NotClaimedError):  # a new message still needs the conversation
        await world.agent_message.execute(AGENT_ANA, world.conversation.id, "One more thing.", idempotency_key="k2")
    with pytest.raises(NotClaimedError):
        await world.agent_message.execute(AGENT_ANA, world.conversation.id, "Refund issued, all done.")
    with pytest.raises(IdempotencyKeyReusedError):  # the key names another message
        await world.agent_message.execute(AGENT_ANA, world.conversation.id, "Different text", idempotency_key="final-1")
    transcript = [message.content for message in await world.repository.recent_messages(world.conversation.id, 50)]
    assert transcript.count("Refund issued, all done.") == 1
    assert "One more thing." not in transcript  # a refused message is not kept


async def test_a_closed_conversation_is_told_to_webhooks_with_who_closed_it(world: World) -> None:
    await turn(world, "talk to a person")
    await world.claim.execute(AGENT_ANA, world.conversation.id)
    sweep = SweepIdleConversations(
        world.repository, world.uow, world.clock, world.bus, world.sessions, world.limits, world.outbox
    )
    world.clock.advance(timedelta(seconds=world.limits.idle_close_after_s + 1))

    assert await sweep.execute() == 1  # Ana's conversation went quiet for a day

    [idle] = world.outbox.of_type(W.CONVERSATION_CLOSED)
    assert idle.conversation_id == world.conversation.id
    assert (idle.data["status"], idle.data["closed_by"], idle.data["agent"]) == ("closed", "idle", "Ana")

    started = await StartConversation(
        world.repository, world.uow, world.clock, CustomerTokenSecret("s"), world.limits
    ).execute(SERVICE, external_id="customer-2")
    close = CloseConversation(world.repository, world.uow, world.clock, world.bus, world.sessions, world.outbox)
    await close.execute(SERVICE, started.conversation.id)
    await close.execute(SERVICE, started.conversation.id)  # closing again changes nothing and says nothing

    assert [
        (event.conversation_id, event.data["closed_by"]) for event in world.outbox.of_type(W.CONVERSATION_CLOSED)
    ] == [
        (world.conversation.id, "idle"),
        (started.conversation.id, "service"),
    ]


async def test_the_bootstrap_admin_joins_as_a_member_of_the_team_not_by_its_key_name(world: World) -> None:
    await turn(world, "talk to a person")
    bootstrap = Principal(role=Role.ADMIN, key_id=None, name="bootstrap admin")

    await world.claim.execute(bootstrap, world.conversation.id)

    posted = [event.payload.message for event in await feed(world) if isinstance(event.payload, MessagePosted)]
    assert posted[-1].content == "A member of our support team has joined the conversation."


async def test_a_conversation_waiting_for_a_person_is_not_closed_as_idle() -> None:
    # With the default hours and a day's idle limit, a handoff made on Friday evening was closed on Saturday,
    # after the customer was told the answer would be waiting (found by an exploratory test).
    office = HandoffSettings(hours=BusinessHours(timezone="UTC"))
    async with running_world(office) as world:
        world.clock.current = datetime(2026, 5, 8, 18, 0, tzinfo=UTC)  # Friday, after closing
        sweep = SweepIdleConversations(
            world.repository, world.uow, world.clock, world.bus, world.sessions, world.limits, world.outbox
        )
        await world.request_handoff.execute(SERVICE, world.conversation.id, None)
        world.clock.current = datetime(2026, 5, 11, 8, 59, tzinfo=UTC)  # Monday, before opening

        assert await sweep.execute() == 0
        assert (await world.current()).status is S.PENDING_HUMAN
        assert world.outbox.of_type(W.CONVERSATION_CLOSED) == []

        world.clock.current = datetime(2026, 5, 11, 9, 30, tzinfo=UTC)  # nobody claimed it in 30 minutes
        assert await world.expire.execute() == 1
        world.clock.advance(timedelta(seconds=world.limits.idle_close_after_s + 1))
        assert await sweep.execute() == 1  # back with the bot, the idle rule applies again
        assert (await world.current()).status is S.CLOSED


async def test_a_handoff_made_just_before_closing_does_not_lapse_while_the_team_is_away() -> None:
    office = HandoffSettings(hours=BusinessHours(timezone="UTC"))  # Monday to Friday, 09:00-17:00
    async with running_world(office) as world:
        world.clock.current = datetime(2026, 5, 6, 16, 50, tzinfo=UTC)  # Wednesday, ten minutes before closing
        await world.request_handoff.execute(SERVICE, world.conversation.id, None)
        [requested] = world.outbox.of_type(W.HANDOFF_REQUESTED)
        assert requested.data["expected_at"] == "2026-05-06T16:55:00Z"

        world.clock.current = datetime(2026, 5, 6, 17, 30, tzinfo=UTC)  # thirty minutes later, after closing
        assert await world.expire.execute() == 0
        world.clock.current = datetime(2026, 5, 7, 9, 19, tzinfo=UTC)  # 29 of the team's minutes
        assert await world.expire.execute() == 0
        assert (await world.current()).status is S.PENDING_HUMAN
        world.clock.current = datetime(2026, 5, 7, 9, 20, tzinfo=UTC)
        assert await world.expire.execute() == 1

        world.clock.current = datetime(2026, 5, 7, 16, 58, tzinfo=UTC)  # two minutes before closing
        late = await world.request_handoff.execute(SERVICE, world.conversation.id, None)
        told = (await world.repository.recent_messages(world.conversation.id, 1))[0].content
        assert late.status is S.PENDING_HUMAN
        assert "someone will answer from Friday 09:00 (UTC)" in told
        assert "Expected wait" not in told
        assert world.outbox.of_type(W.HANDOFF_REQUESTED)[-1].data["expected_at"] == "2026-05-08T09:03:00Z"


async def test_an_agent_giving_a_conversation_back_tells_webhooks_who_released_it(world: World) -> None:
    await turn(world, "talk to a person")
    await world.claim.execute(AGENT_ANA, world.conversation.id)

    await world.release.execute(AGENT_ANA, world.conversation.id)

    [released] = world.outbox.of_type(W.HANDOFF_RELEASED)
    assert (released.data["status"], released.data["released_by"]) == ("bot", "Ana")
    assert world.outbox.events[-1].type is W.MESSAGE_CREATED  # the notice follows its status change


async def test_an_agent_who_leaves_gives_their_conversations_back_to_the_queue(world: World) -> None:
    keys = InMemoryApiKeyRepository()
    issued = await CreateApiKey(keys, world.uow, world.clock).execute("Carl", Role.AGENT)
    carl = Principal(role=Role.AGENT, key_id=issued.key.id, name="Carl")
    await turn(world, "talk to a person")
    await world.claim.execute(carl, world.conversation.id)
    with pytest.raises(ClaimedByAnotherAgentError):
        await world.claim.execute(AGENT_ANA, world.conversation.id)

    await RevokeApiKey(keys, world.uow, world.clock, world.requeue).execute(issued.key.id)

    requeued = await world.current()
    assert (requeued.status, requeued.agent) == (S.PENDING_HUMAN, None)
    assert requeued.handoff_requested_at == world.clock.now()
    [event] = world.outbox.of_type(W.HANDOFF_REQUEUED)
    assert (event.data["status"], event.data["previous_agent"]) == ("pending_human", "Carl")
    posted = [item.payload.message for item in await feed(world) if isinstance(item.payload, MessagePosted)]
    assert posted[-1].content.startswith("Carl is no longer available")
    claimed = await world.claim.execute(AGENT_ANA, world.conversation.id)  # a colleague can take it now
    assert claimed.agent is not None
    assert claimed.agent.name == "Ana"
