"""Property: whatever customers, agents and the model do, in any order, the assistant never generates or posts
while the conversation waits for or belongs to a person.

Hypothesis draws sequences of customer messages (questions, requests for a person, frustration, sensitive
topics, a "yes" to an offer), agent actions (claim, reply, release, resolve by two agents), customer requests and
withdrawals, time passing past the handoff wait, and what the model does on its next reply (answer, miss, ask
for a person, fail). Messages are sent without waiting for their replies, so actions interleave with replies
being written. Two instruments watch the use cases: the model records the status whenever it is called, and the
repository records the status whenever an assistant message is stored.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.adapters.memory.conversations import InMemoryConversationRepository
from support.domain.assistant import ReplyEvent, ReplyRequest
from support.domain.conversations import ConversationStatus, Message, MessageRole, ReasonCode
from support.domain.errors import SupportError
from support.ports.assistant import AssistantTools
from tests.fakes.llm import Script, ScriptedLLM
from tests.unit.application.conftest import AGENT_ANA, AGENT_BEN, SERVICE, World, running_world

CUSTOMER_TEXTS = (
    "How long do refunds take?",
    "How long do refunds take?",  # the same question again
    "Can I talk to a human?",
    "This is useless",
    "Please cancel my subscription",
    "yes please",
    "My order 12345 has not arrived",
)
MODEL_SCRIPTS = {
    "answer": Script(delay_s=0.001),
    "miss": Script(pieces=("I could not find that.",), handoff=ReasonCode.INSUFFICIENT_EVIDENCE, delay_s=0.001),
    "asks_for_person": Script(pieces=("Let me get someone.",), handoff=ReasonCode.CUSTOMER_REQUEST),
    "fails": Script(fail_after=0),
    "fails_midway": Script(fail_after=1, delay_s=0.001),
}

customer = st.tuples(st.just("customer"), st.sampled_from(CUSTOMER_TEXTS))
model = st.tuples(st.just("model"), st.sampled_from(sorted(MODEL_SCRIPTS)))
agent_action = st.tuples(st.sampled_from(["claim", "reply", "release", "resolve"]), st.sampled_from(["ana", "ben"]))
other = st.tuples(st.sampled_from(["request", "withdraw", "customer_resolves", "time_passes", "settle"]), st.none())
actions = st.lists(st.one_of(customer, customer, model, agent_action, agent_action, other), min_size=1, max_size=25)


@dataclass
class WatchedLLM(ScriptedLLM):
    """The scripted model, recording the conversation's status each time it is asked to write."""

    repository: InMemoryConversationRepository | None = None
    statuses_when_called: list[ConversationStatus] = field(default_factory=list)

    async def reply(self, request: ReplyRequest, tools: AssistantTools) -> AsyncIterator[ReplyEvent]:
        assert self.repository is not None
        [conversation] = self.repository.conversations.values()
        self.statuses_when_called.append(conversation.status)
        async for event in super().reply(request, tools):
            yield event


class WatchedRepository(InMemoryConversationRepository):
    """Records the status of the conversation whenever an assistant message is stored."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses_when_stored: list[ConversationStatus] = []

    async def add_message(self, message: Message) -> Message:
        if message.role is MessageRole.ASSISTANT:
            self.statuses_when_stored.append(self.conversations[message.conversation_id].status)
        return await super().add_message(message)


async def play(world: World, steps: Sequence[tuple[str, Any]]) -> None:
    agents = {"ana": AGENT_ANA, "ben": AGENT_BEN}
    conversation_id = world.conversation.id
    pending: list[asyncio.Future[Any]] = []

    async def send(text: str) -> None:
        turn = await world.send(text)  # not awaited: later actions interleave with the reply being written
        pending.append(asyncio.ensure_future(turn.result()))

    async def pass_time(_: object) -> None:
        world.clock.advance(timedelta(seconds=world.handoff_settings.max_wait_s + 1))
        await world.expire.execute()

    async def choose_script(name: str) -> None:
        world.llm.script = MODEL_SCRIPTS[name]

    act: dict[str, Callable[[Any], Awaitable[object]]] = {
        "customer": send,
        "model": choose_script,
        "claim": lambda agent: world.claim.execute(agents[agent], conversation_id),
        "reply": lambda agent: world.agent_message.execute(agents[agent], conversation_id, "An agent writes."),
        "release": lambda agent: world.release.execute(agents[agent], conversation_id),
        "resolve": lambda agent: world.resolve.execute(agents[agent], conversation_id),
        "request": lambda _: world.request_handoff.execute(SERVICE, conversation_id, None),
        "withdraw": lambda _: world.withdraw.execute(SERVICE, conversation_id),
        "customer_resolves": lambda _: world.resolve.execute(SERVICE, conversation_id),
        "time_passes": pass_time,
        "settle": lambda _: world.runner.drain(),
    }
    for kind, argument in steps:
        # An action the state does not allow is refused (409/403); the property must hold regardless.
        with contextlib.suppress(SupportError):
            await act[kind](argument)
        await asyncio.sleep(0)
    await world.runner.drain()
    await asyncio.gather(*pending)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=actions)
async def test_the_assistant_never_generates_or_posts_while_a_person_is_due_or_in_charge(
    steps: list[tuple[str, Any]],
) -> None:
    repository = WatchedRepository()
    llm = WatchedLLM(repository=repository)
    async with running_world(repository=repository, llm=llm) as world:
        await play(world, steps)

        assert set(llm.statuses_when_called) <= {ConversationStatus.BOT}
        assert set(repository.statuses_when_stored) <= {ConversationStatus.BOT}
        messages = repository.messages
        # Every reply answers customer messages only, and no customer message is answered twice.
        answered = [item for message in messages for item in message.reply_to]
        assert len(answered) == len(set(answered))
