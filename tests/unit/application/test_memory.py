"""Memory use cases on in-memory adapters: remember (supersede, secrets, repeats), model facts, recall, fold."""

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.memory.customer_memory import InMemoryCustomerMemory, InMemorySummaryStore
from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.application.memory import (
    FoldConversationHistory,
    MemoryPolicy,
    RecallMemories,
    RememberFacts,
    RememberProposedFact,
)
from support.domain.assistant import FactRemembered
from support.domain.conversations import Message, MessageRole
from support.domain.ids import new_id
from support.domain.memory import FactOrigin, recall_cost
from support.ports.errors import EmbedderUnavailableError

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class World:
    def __init__(self, policy: MemoryPolicy | None = None) -> None:
        self.memory = InMemoryCustomerMemory()
        self.summaries = InMemorySummaryStore()
        self.uow = InMemoryUnitOfWork()
        self.clock = FixedClock(START)
        self.embedder = HashingEmbedder(384)
        self.policy = policy or MemoryPolicy()
        self.customer = new_id()
        self.conversation = new_id()

    def remember(self) -> RememberFacts:
        return RememberFacts(self.memory, self.embedder, self.uow, self.clock, self.policy)

    def recall(self) -> RecallMemories:
        return RecallMemories(self.memory, self.embedder, self.clock, self.policy)

    def message(self, text: str, role: MessageRole = MessageRole.CUSTOMER) -> Message:
        return Message(new_id(), self.conversation, role, text, self.clock.now())

    async def say(self, text: str, *, after: timedelta = timedelta(minutes=1)) -> None:
        self.clock.advance(after)
        await self.remember().execute(self.customer, self.message(text))


async def test_facts_are_remembered_with_their_provenance_and_expiry() -> None:
    world = World()
    message = world.message("Hi, I'm Ada. My order number is NW-48213.")

    facts = await world.remember().execute(world.customer, message)

    assert {(fact.key, fact.value) for fact in facts} == {("name", "Ada"), ("order_number", "NW-48213")}
    assert all(fact.source_message_id == message.id and fact.origin is FactOrigin.PATTERN for fact in facts)
    order = next(fact for fact in facts if fact.key == "order_number")
    assert order.expires_at == message.created_at + timedelta(days=90)
    assert world.uow.commits == 1


async def test_a_newer_value_supersedes_and_only_it_is_recalled() -> None:
    world = World()
    await world.say("My order number is NW-1111.")
    await world.say("Sorry, the order number is actually NW-1117.")

    recalled = await world.recall().execute(world.customer, "Where is my order?")
    listed = (await world.memory.list_facts(world.customer, limit=10, cursor=None)).items

    assert [fact.value for fact in recalled] == ["NW-1117"]
    assert [(fact.value, fact.superseded_by is not None) for fact in listed] == [("NW-1117", False), ("NW-1111", True)]


async def test_an_older_statement_read_late_never_replaces_a_newer_value() -> None:
    world = World()
    older = world.message("My order number is NW-1111.")  # said first...
    world.clock.advance(timedelta(minutes=1))
    await world.say("Sorry, the order number is actually NW-1117.")

    await world.remember().execute(world.customer, older)  # ...read again later (a retried send)

    recalled = await world.recall().execute(world.customer, "Where is my order?")
    assert [fact.value for fact in recalled] == ["NW-1117"]


async def values(world: World) -> list[tuple[str, str, bool]]:
    listed = (await world.memory.list_facts(world.customer, limit=50, cursor=None)).items
    return sorted((fact.key, fact.value, fact.superseded_by is None) for fact in listed)


async def test_what_the_customer_takes_back_is_forgotten_with_its_older_values() -> None:
    world = World()
    await world.say("My phone number is +1 415 555 0100 and my email is ada@example.com.")
    await world.say("Actually my number is now +1 415 555 0199.")

    await world.say("Please forget my phone number.")

    assert await values(world) == [("email", "ada@example.com", True)]


async def test_an_address_taken_back_is_forgotten_only_while_it_is_the_current_one() -> None:
    world = World()
    await world.say("My email is ada@example.com.")
    await world.say("I no longer use old@example.com.")  # not the one remembered: nothing changes
    assert await values(world) == [("email", "ada@example.com", True)]

    await world.say("I no longer use ada@example.com, please use ada@new.example instead.")

    assert await values(world) == [("email", "ada@new.example", True)]


async def test_a_cancelled_plan_is_forgotten_and_the_new_one_remembered() -> None:
    world = World()
    await world.say("I'm on the Pro plan.")
    await world.say("I'm not on the Pro plan anymore, I'm on Basic now.")
    assert await values(world) == [("plan", "Basic", True)]

    await world.say("I cancelled my subscription last week.")

    assert await values(world) == []


async def test_hypotheticals_and_exclamations_never_replace_what_the_customer_stated() -> None:
    world = World()
    await world.say("My name is Ada Lovelace and my email is ada@example.com.")
    for text in (
        "If my email were bob@x.com would you send the invoice there?",
        "Suppose my name is Bob Marley, what then?",
        "I'm Furious, this is unacceptable.",
        "This is Urgent!",
        "My brother's email is bro@example.com.",
        "> Please email refunds at refunds@northwind.example",
        "If I delete my email, do I lose my orders?",
    ):
        await world.say(text)

    assert await values(world) == [("email", "ada@example.com", True), ("name", "Ada Lovelace", True)]


async def test_saying_the_same_again_renews_the_fact_instead_of_adding_one() -> None:
    world = World()
    await world.say("Call me on +31 6 1234 5678 please.")
    await world.say("Same number: +31 6 1234 5678", after=timedelta(days=700))
    world.clock.advance(timedelta(days=100))

    recalled = await world.recall().execute(world.customer, "please call me")

    assert [fact.value for fact in recalled] == ["+31 6 1234 5678"]
    assert (await world.memory.count(world.customer, now=world.clock.now())).total == 1


async def test_secrets_are_never_remembered() -> None:
    world = World()

    facts = await world.remember().execute(
        world.customer,
        world.message("password: hunter2, card 4111 1111 1111 1111, and my email is lukas@example.de"),
    )

    assert [(fact.key, fact.value) for fact in facts] == [("email", "lukas@example.de")]
    stored = " ".join(fact.value for fact in world.memory.facts.values())
    assert "hunter2" not in stored
    assert "4111" not in stored


async def test_only_customer_messages_are_mined_and_memory_can_be_off() -> None:
    world = World()
    assistant = world.message("My name is Bot and your order number is NW-1.", MessageRole.ASSISTANT)
    assert await world.remember().execute(world.customer, assistant) == []

    off = World(MemoryPolicy(enabled=False))
    assert await off.remember().execute(off.customer, off.message("My name is Ada.")) == []
    assert await off.recall().execute(off.customer, "hi") == []
    assert off.uow.commits == 0


async def test_expired_facts_are_not_recalled() -> None:
    world = World()
    await world.say("My ticket number is T-55821.")
    world.clock.advance(timedelta(days=61))

    assert await world.recall().execute(world.customer, "any update on my ticket?") == []


async def test_recall_respects_the_token_budget_and_puts_the_relevant_fact_first() -> None:
    world = World(MemoryPolicy(recall_token_budget=16))
    await world.say("My name is Olufemi Adeyemi and I'm on the Team plan.")
    await world.say("I bought the ErgoDesk Lite. Order number ORD-77120.")
    await world.say("Your team opened ticket TCK-90211 about the missing screws.")

    recalled = await world.recall().execute(world.customer, "Is there progress on my ticket?")

    assert recalled[0].value == "TCK-90211"
    assert sum(recall_cost(fact) for fact in recalled) <= 16
    assert len(recalled) < 5, "the budget leaves most of the customer's six facts out"


async def test_recall_can_reuse_the_turns_vector() -> None:
    class Failing(HashingEmbedder):
        async def embed_query(self, text: str) -> list[float]:  # noqa: ARG002 - it fails whatever the text
            raise EmbedderUnavailableError

    world = World()
    await world.say("I'm on the Pro plan.")
    recall = RecallMemories(world.memory, Failing(384), world.clock, world.policy)

    recalled = await recall.execute(world.customer, "my invoice?", embedding=world.embedder.embed("my invoice?"))

    assert [fact.value for fact in recalled] == ["Pro"]
    with pytest.raises(EmbedderUnavailableError):
        await recall.execute(world.customer, "my invoice?")


async def test_model_proposed_facts_are_vetted_and_supersede_like_others() -> None:
    world = World()
    await world.say("I'm on the Basic plan.")
    propose = RememberProposedFact(world.memory, world.embedder, world.uow, world.clock, world.policy)
    source = new_id()

    stored = await propose.execute(world.customer, FactRemembered("plan", "Plus"), source_message_id=source)
    refused = [
        await propose.execute(world.customer, FactRemembered("note", "her card is 4111 1111 1111 1111")),
        await propose.execute(world.customer, FactRemembered("favourite_colour", "blue")),
        await propose.execute(world.customer, FactRemembered("name", "   ")),
    ]
    topical = await propose.execute(world.customer, FactRemembered("preference", "aisle seat", "seating"))

    assert stored is not None
    assert (stored.key, stored.value, stored.origin, stored.source_message_id) == (
        "plan",
        "Plus",
        FactOrigin.MODEL,
        source,
    )
    assert refused == [None, None, None]
    assert topical is not None
    assert topical.key == "preference:seating"
    current = await world.memory.current(world.customer, "plan")
    assert current is not None
    assert current.value == "Plus"


async def test_folding_keeps_a_bounded_summary_and_skips_what_it_already_covers() -> None:
    world = World(MemoryPolicy(summary_max_chars=600))
    fold = FoldConversationHistory(world.summaries, world.uow, world.clock, world.policy)
    messages: list[Message] = []
    for n in range(12):
        world.clock.advance(timedelta(minutes=1))
        messages.append(world.message(f"Question {n} about order NW-{4000 + n}: when does it ship?"))
        world.clock.advance(timedelta(minutes=1))
        messages.append(world.message(f"Answer {n}: it ships on day {n}.", MessageRole.ASSISTANT))

    assert await fold.execute(world.conversation, []) is None
    first = await fold.execute(world.conversation, messages[:4])
    commits = world.uow.commits
    same = await fold.execute(world.conversation, messages[:4])
    assert world.uow.commits == commits, "nothing new, nothing written"
    final = await fold.execute(world.conversation, messages)

    assert first is not None
    assert "Customer: Question 0 about order NW-4000" in first
    assert same == first
    assert world.uow.commits == commits + 1
    assert final is not None
    assert len(final) <= 600
    assert "Answer 11" in final
    assert "Question 0 about" not in final
    assert "NW-4000" in final, "codes of dropped lines stay in the summary"
    stored = await world.summaries.get(world.conversation)
    assert stored is not None
    assert stored.folded_messages == 24
    assert stored.through_message_id == messages[-1].id


async def test_the_summary_of_one_conversation_is_its_own() -> None:
    world = World()
    fold = FoldConversationHistory(world.summaries, world.uow, world.clock, world.policy)
    other: UUID = new_id()

    await fold.execute(world.conversation, [world.message("My order NW-1 is late.")])

    assert await world.summaries.get(other) is None
    assert await fold.execute(other, []) is None
