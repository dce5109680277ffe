"""``support chat`` against the app served over real HTTP: streamed replies with sources, handoff, live agents."""

import asyncio
import io

import httpx
import pytest
from rich.console import Console
from typer.testing import CliRunner

from support.cli.chat import ChatError, ChatSession, converse
from support.cli.main import app
from tests.conftest import ADMIN_KEY
from tests.fakes.llm import Script, ScriptedLLM

RETURNS = "# Returns\n\nUnworn items can be returned within 30 days of delivery for a full refund."


def terminal() -> tuple[Console, io.StringIO]:
    screen = io.StringIO()
    return Console(file=screen, width=200, highlight=False, color_system=None, soft_wrap=True), screen


async def wait_until_shown(screen: io.StringIO, text: str, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if text in screen.getvalue():
                return
            await asyncio.sleep(0.02)


async def test_a_reply_streams_with_its_sources(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    ingested = await http.post(
        "/v1/knowledge/documents",
        # A title in brackets is text, not terminal markup.
        json={"content": RETURNS, "title": "[beta] Returns", "url": "https://help.example/returns"},
        headers=service_headers,
    )
    assert ingested.status_code == 201, ingested.text
    llm.script = Script(pieces=("You can return ", "unworn items ", "within 30 days."))
    console, screen = terminal()
    session = ChatSession(http, console)

    await session.start(ADMIN_KEY, "chat-1", "Ada")
    await session.send("Can I return my chair?")

    assert screen.getvalue() == (
        "assistant You can return unworn items within 30 days.\n  [1] [beta] Returns — https://help.example/returns\n"
    )
    assert llm.requests[0].question == "Can I return my chair?"
    stored = (await http.get(f"/v1/conversations/{session.conversation_id}/messages", headers=service_headers)).json()
    assert [item["role"] for item in stored["items"]] == ["customer", "assistant"]


async def test_asking_for_a_person_then_the_agents_messages_arrive_live(
    http: httpx.AsyncClient, service_headers: dict[str, str], llm: ScriptedLLM
) -> None:
    console, screen = terminal()
    session = ChatSession(http, console)
    await session.start(ADMIN_KEY, "chat-2", None)
    secret = (await http.post("/v1/keys", json={"name": "Ana", "role": "agent"}, headers=service_headers)).json()
    agent = {"Authorization": f"Bearer {secret['secret']}"}
    base = f"/v1/conversations/{session.conversation_id}"
    # Asked for before the chat follows the feed: the feed is read from its start, so the change is still shown.
    await session.ask_for_person()
    lines = iter(["I'd like a refund please"])

    async def ask() -> str | None:
        line = next(lines, None)
        if line is not None:
            return line
        # The line was sent: an agent takes over and answers; the chat shows it without being asked.
        await wait_until_shown(screen, "waiting for a person")
        assert (await http.post(f"{base}/claim", headers=agent)).status_code == 200
        sent = await http.post(f"{base}/agent-messages", json={"content": "Hi, Ana here. Refund done."}, headers=agent)
        assert sent.status_code == 201, sent.text
        await wait_until_shown(screen, "Refund done.")
        return None

    await converse(session, ask, console)

    shown = screen.getvalue()
    assert shown.count("· waiting for a person from the support team") == 1
    assert "· a person from the support team has joined" in shown
    assert "Ana Hi, Ana here. Refund done." in shown
    assert shown.count("Refund done.") == 1
    assert llm.requests == [], "while a person is due, the message is stored and the model is not called"


async def test_refusals_are_shown_and_the_chat_goes_on(http: httpx.AsyncClient, llm: ScriptedLLM) -> None:
    console, screen = terminal()
    session = ChatSession(http, console)
    with pytest.raises(ChatError, match=r"^401 "):
        await session.start("not-a-key", "chat-3", None)
    await session.start(ADMIN_KEY, "chat-3", None)
    lines = iter(["x" * 9000, "/quit", "never sent"])

    async def ask() -> str | None:
        return next(lines)

    await converse(session, ask, console)

    assert screen.getvalue().startswith("· 422 Unprocessable Entity: Expected `str` of length <= 8000")
    assert llm.requests == []
    # /quit ended the chat: the third line was never read.
    assert next(lines) == "never sent"


def test_the_command_needs_a_key_and_says_when_no_server_answers() -> None:
    runner = CliRunner()

    without_key = runner.invoke(app, ["chat"], env={"SUPPORT_API_KEY": ""})
    nobody = runner.invoke(app, ["chat", "--url", "http://127.0.0.1:9", "--key", "k"], env={"SUPPORT_API_KEY": ""})

    assert without_key.exit_code == 2
    assert "SUPPORT_API_KEY" in without_key.output
    assert nobody.exit_code == 1
    assert "no answer from http://127.0.0.1:9" in nobody.output


async def test_what_a_reply_streams_is_not_shown_again_from_the_feed(http: httpx.AsyncClient, llm: ScriptedLLM) -> None:
    console, screen = terminal()
    session = ChatSession(http, console)
    await session.start(ADMIN_KEY, "chat-4", None)
    lines = iter(["I want to talk to a human"])

    async def ask() -> str | None:
        line = next(lines, None)
        if line is None:
            # The turn's handoff and notice arrive in its stream and on the feed; give the feed time to deliver.
            await wait_until_shown(screen, "waiting for a person")
            await asyncio.sleep(0.5)
        return line

    await converse(session, ask, console)

    lines_shown = screen.getvalue().splitlines()
    # The notice's wording depends on the support team's hours (the real clock here); its start does not.
    assert lines_shown[0].startswith("assistant I'm passing this conversation to "), lines_shown
    assert lines_shown.count("· waiting for a person from the support team") == 1, lines_shown
    assert llm.requests == [], "asking for a person is handed over by the policy, without the model"
