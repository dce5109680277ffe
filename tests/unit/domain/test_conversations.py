import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from support.domain.conversations import (
    AgentRef,
    AnswerStatus,
    AttachmentInfo,
    Conversation,
    ConversationClosedError,
    ConversationEvent,
    ConversationStatus,
    IdempotencyKeyReusedError,
    InvalidTransitionError,
    Message,
    MessageRole,
    next_status,
    unanswered,
)
from support.domain.identity import issue_customer_token, read_customer_token
from support.domain.ids import new_id

NOW = datetime(2026, 5, 1, tzinfo=UTC)
S = ConversationStatus
E = ConversationEvent


@pytest.mark.parametrize(
    ("status", "event", "expected"),
    [
        (S.BOT, E.HANDOFF, S.PENDING_HUMAN),
        (S.PENDING_HUMAN, E.CLAIM, S.HUMAN),
        (S.PENDING_HUMAN, E.WITHDRAW, S.BOT),
        (S.HUMAN, E.RELEASE, S.BOT),
        (S.HUMAN, E.RESOLVE, S.RESOLVED),
        (S.BOT, E.RESOLVE, S.RESOLVED),
        (S.RESOLVED, E.CUSTOMER_WRITES, S.BOT),
        (S.HUMAN, E.CUSTOMER_WRITES, S.HUMAN),
        (S.PENDING_HUMAN, E.CUSTOMER_WRITES, S.PENDING_HUMAN),
        (S.HUMAN, E.CLOSE, S.CLOSED),
        (S.CLOSED, E.CLOSE, S.CLOSED),
    ],
)
def test_allowed_transitions(status: S, event: E, expected: S) -> None:
    assert next_status(status, event) is expected


@pytest.mark.parametrize(
    ("status", "event"),
    [(S.BOT, E.CLAIM), (S.HUMAN, E.HANDOFF), (S.RESOLVED, E.RELEASE), (S.PENDING_HUMAN, E.RESOLVE)],
)
def test_disallowed_transitions_raise(status: S, event: E) -> None:
    with pytest.raises(InvalidTransitionError):
        next_status(status, event)


def test_a_closed_conversation_takes_no_messages() -> None:
    with pytest.raises(ConversationClosedError):
        next_status(S.CLOSED, E.CUSTOMER_WRITES)


def conversation(status: S) -> Conversation:
    return Conversation(new_id(), new_id(), status, {}, NOW, NOW, NOW)


def test_reopening_a_resolved_conversation_is_counted_and_only_the_bot_may_reply() -> None:
    ana = AgentRef(new_id(), "Ana")
    resolved = conversation(S.PENDING_HUMAN).claim(ana, NOW).apply(E.RESOLVE, NOW)
    assert resolved.agent == ana  # who resolved it
    reopened = resolved.apply(E.CUSTOMER_WRITES, NOW + timedelta(hours=1))

    assert (reopened.status, reopened.reopened_count) == (S.BOT, 1)
    # The bot owns it again: the agent who resolved it no longer does.
    assert (reopened.agent, reopened.claimed_at) == (None, None)
    assert reopened.last_activity_at == NOW + timedelta(hours=1)
    assert reopened.assistant_may_reply
    assert not conversation(S.HUMAN).assistant_may_reply
    assert not conversation(S.PENDING_HUMAN).assistant_may_reply
    assert conversation(S.BOT).apply(E.CLOSE, NOW).closed_at == NOW


def message(role: MessageRole, *, reply_to: tuple[Message, ...] = (), status: AnswerStatus | None = None) -> Message:
    return Message(
        new_id(), new_id(), role, "text", NOW, reply_to=tuple(item.id for item in reply_to), answer_status=status
    )


def test_unanswered_messages_are_those_no_reply_covered() -> None:
    first = message(MessageRole.CUSTOMER)
    # Arrived while the reply to `first` was being written: stored before that reply, not covered by it.
    second = message(MessageRole.CUSTOMER)
    reply = message(MessageRole.ASSISTANT, reply_to=(first,))
    third = message(MessageRole.CUSTOMER)

    assert unanswered([first, second, reply, third]) == [second, third]
    assert unanswered([first, second, message(MessageRole.AGENT), third]) == [third]


def file(name: str, sha256: str) -> AttachmentInfo:
    return AttachmentInfo(new_id(), name, "text/plain", 3, sha256)


def test_a_retry_is_the_same_sender_text_and_files_under_the_key() -> None:
    stored = dataclasses.replace(
        message(MessageRole.CUSTOMER), idempotency_key="k1", attachments=(file("a.txt", "aa"), file("b.txt", "bb"))
    )
    # A retry's files get new ids and may come in another order: still the same message.
    retry = dataclasses.replace(stored, id=new_id(), attachments=(file("b.txt", "bb"), file("a.txt", "aa")))
    stored.ensure_repeated_by(retry)

    for changed in (
        dataclasses.replace(retry, content="other text"),
        dataclasses.replace(retry, role=MessageRole.AGENT, author="Ana"),
        dataclasses.replace(retry, attachments=(file("a.txt", "aa"),)),
        dataclasses.replace(retry, attachments=(file("a.txt", "aa"), file("b.txt", "cc"))),
    ):
        with pytest.raises(IdempotencyKeyReusedError):
            stored.ensure_repeated_by(changed)


def test_customer_tokens_are_signed_and_expire() -> None:
    customer = new_id()
    token = issue_customer_token(customer, NOW + timedelta(hours=1), "secret-a")

    assert read_customer_token(token, "secret-a", NOW) == customer
    assert read_customer_token(token, "secret-b", NOW) is None
    assert read_customer_token(token, "secret-a", NOW + timedelta(hours=2)) is None
    _, _, signature = token.partition(".")
    forged = issue_customer_token(new_id(), NOW + timedelta(hours=1), "secret-a").partition(".")[0]
    assert read_customer_token(f"{forged}.{signature}", "secret-a", NOW) is None
    assert read_customer_token("ct_garbage", "secret-a", NOW) is None
    assert read_customer_token("sk_not_a_token", "secret-a", NOW) is None


def test_an_ownership_notice_covers_what_the_customer_wrote_before_it() -> None:
    # Written to the people (or before the conversation changed hands), and handed back unanswered: the bot's
    # next reply answers what the customer writes from then on.
    to_the_agent = message(MessageRole.CUSTOMER)
    also_to_the_agent = message(MessageRole.CUSTOMER)
    released = message(MessageRole.SYSTEM)
    new_question = message(MessageRole.CUSTOMER)

    assert unanswered([to_the_agent, also_to_the_agent, released]) == []
    assert unanswered([to_the_agent, also_to_the_agent, released, new_question]) == [new_question]
