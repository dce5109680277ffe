"""Memory inside turns: facts told in one conversation reach the model in the next; long ones keep a summary."""

from support.application.conversations import StartConversation
from support.application.keys import CustomerTokenSecret
from support.domain.assistant import FactRemembered
from tests.fakes.llm import Script
from tests.unit.application.conftest import AGENT_ANA, SERVICE, World


async def test_a_new_conversation_starts_with_what_the_customer_told_before(world: World) -> None:
    await (await world.send("Hi, my name is Dana Whitfield and my order number is 48213.")).result()
    await (await world.send("Actually my order number is 48290, sorry.")).result()
    start = StartConversation(world.repository, world.uow, world.clock, CustomerTokenSecret("s"), world.limits)
    later = await start.execute(SERVICE, external_id="customer-1")

    await (await world.send_message.execute(SERVICE, later.conversation.id, "Where is my order?")).result()

    recalled = {fact.key: fact.value for fact in world.llm.requests[-1].memories}
    assert recalled.get("order_number") == "48290"  # the newer value; the older one is superseded
    assert "Dana" in recalled.get("name", "")
    other = await start.execute(SERVICE, external_id="someone-else")
    await (await world.send_message.execute(SERVICE, other.conversation.id, "Where is my order?")).result()
    assert world.llm.requests[-1].memories == []


async def test_facts_the_model_proposes_are_vetted_and_kept(world: World) -> None:
    world.llm.script = Script(
        facts=(
            FactRemembered(kind="preference", value="contact by email, not phone", topic="contact"),
            FactRemembered(kind="note", value="card 4111 1111 1111 1111", topic="payment"),
        )
    )
    await (await world.send("Which way do you usually contact customers?")).result()
    world.llm.script = Script()

    await (await world.send("How will you contact me about the contact preference?")).result()

    values = [fact.value for fact in world.llm.requests[-1].memories]
    assert any("email" in value for value in values)
    assert not any("4111" in value for value in values)  # a card number is never remembered


async def test_turns_beyond_the_window_are_folded_into_a_summary(world: World) -> None:
    for number in range(10):
        await (await world.send(f"Question {number}: what about order 5{number}0?")).result()

    request = world.llm.requests[-1]
    assert request.summary is not None
    assert "order 500" in request.summary or "500" in request.summary
    assert len(request.history) <= 12


async def test_what_the_customer_tells_a_person_is_remembered_for_the_bot(world: World) -> None:
    await (await world.send("talk to a person")).result()  # waiting for an agent from here
    await (await world.send("My name is Ada Lovelace and my order number is 48213.")).result()
    await world.claim.execute(AGENT_ANA, world.conversation.id)
    await (await world.send("Also, my order number is actually 48290.")).result()
    await world.release.execute(AGENT_ANA, world.conversation.id)
    requests_before = len(world.llm.requests)

    await (await world.send("Where is my order?")).result()

    assert len(world.llm.requests) == requests_before + 1  # the bot answers again, with what was told meanwhile
    recalled = {fact.key: fact.value for fact in world.llm.requests[-1].memories}
    assert recalled.get("order_number") == "48290"  # the correction told to Ana supersedes the earlier number
    assert "Ada" in recalled.get("name", "")


async def test_the_model_is_given_the_name_the_backend_gave_for_the_customer(world: World) -> None:
    start = StartConversation(world.repository, world.uow, world.clock, CustomerTokenSecret("s"), world.limits)
    named = await start.execute(SERVICE, external_id="ada-1", name="Ada Lovelace")

    await (await world.send_message.execute(SERVICE, named.conversation.id, "Where is my order?")).result()
    await (await world.send("Where is my order?")).result()  # customer-1 was started without a name

    assert [request.customer_name for request in world.llm.requests] == ["Ada Lovelace", None]
