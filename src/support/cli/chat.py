"""``support chat``: a customer's side of a conversation in the terminal, against a running server.

A service or admin key starts the conversation (as a company's backend would); from then on the chat uses the
customer token it got back, as the customer's browser would. Replies stream as they are written, their sources
follow, and after a handoff the agent's messages arrive live from the conversation's event feed.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Protocol, TypeVar

import httpx
import msgspec
import typer
from httpx_sse import SSEError, aconnect_sse
from rich.console import Console
from rich.markup import escape

from support.domain.conversations import ConversationStatus, MessageRole

# The API's wire types (support.api.schemas) import the web framework: they are imported where a chat uses them,
# so `support --help` and the other commands start in a second instead of three.

_PROBLEM = msgspec.json.Decoder(dict[str, Any])
_STATUS_NOTES = {
    ConversationStatus.PENDING_HUMAN: "waiting for a person from the support team",
    ConversationStatus.HUMAN: "a person from the support team has joined",
    ConversationStatus.BOT: "the assistant is answering again",
    ConversationStatus.RESOLVED: "the support team marked this resolved",
    ConversationStatus.CLOSED: "the conversation is closed",
}
HELP = "Type a message and press Enter. /human asks for a person, /quit (or Ctrl-D) leaves."


class ChatError(Exception):
    """The server refused a request or could not be reached; the message says why."""


class ChatSession:
    """One conversation as its customer sees it: send, stream the reply, ask for a person, follow the feed."""

    def __init__(self, http: httpx.AsyncClient, console: Console) -> None:
        self._http = http
        self._console = console
        self._customer: dict[str, str] = {}
        self.conversation_id = ""
        # Messages and events already shown: both arrive in a reply's stream and on the feed.
        self._shown: set[str] = set()
        self._events: set[str] = set()

    async def start(self, service_key: str, external_id: str, name: str | None) -> None:
        """Start a conversation for the customer ``external_id`` with a service or admin key."""
        customer: dict[str, str] = {"external_id": external_id}
        if name:
            customer["name"] = name
        started = await self._call(
            "POST", "/v1/conversations", {"Authorization": f"Bearer {service_key}"}, json={"customer": customer}
        )
        self.conversation_id = str(started["id"])
        self._customer = {"Authorization": f"Bearer {started['customer_token']}"}

    async def send(self, text: str) -> None:
        """Send a message and print the reply as it streams, then its sources."""
        from support.api.schemas.conversations import CitationResource, DeltaData, MessageResource

        path = f"/v1/conversations/{self.conversation_id}/messages/stream"
        sources: list[CitationResource] = []
        writing = False
        try:
            async with aconnect_sse(self._http, "POST", path, json={"content": text}, headers=self._customer) as events:
                if events.response.is_error:
                    await events.response.aread()
                    raise ChatError(_problem(events.response))
                async for event in events.aiter_sse():
                    if event.event == "delta":
                        if not writing:
                            self._console.print("[bold cyan]assistant[/bold cyan] ", end="")
                            writing = True
                        self._console.print(msgspec.json.decode(event.data, type=DeltaData).text, end="", markup=False)
                    elif event.event == "citation":
                        sources.append(msgspec.json.decode(event.data, type=CitationResource))
                    elif event.event == "done":
                        self._shown.add(str(msgspec.json.decode(event.data, type=MessageResource).id))
                    else:
                        if writing and event.event in {"message", "handoff", "error"}:
                            self._console.print()  # a notice gets a line of its own
                            writing = False
                        self._show(event.event, event.data, event.id)
        except (httpx.HTTPError, SSEError) as error:
            raise ChatError(f"the reply could not be read: {error}") from error
        finally:
            if writing:
                self._console.print()
        for number, source in enumerate(_unique(sources), 1):
            where = f" — {source.url}" if source.url else ""
            # Titles and the rest are the server's text, not markup ("[beta] Returns" stays as it is).
            self._console.print(f"  [dim]\\[{number}] {escape(source.title + where)}[/dim]")

    async def ask_for_person(self) -> None:
        """Ask for a person; the feed tells when one joins."""
        path = f"/v1/conversations/{self.conversation_id}/handoff"
        await self._call("POST", path, self._customer, json={"reason": "asked in the chat"})

    async def follow(self) -> None:
        """Print what others add to the conversation (agents' messages, notices, owner changes) until cancelled.

        The feed is read from the conversation's first event, so what happened before the subscription was made
        (a handoff asked for at once) is not missed; what a reply's stream showed already is skipped.
        """
        path = f"/v1/conversations/{self.conversation_id}/events"
        headers = {**self._customer, "Last-Event-ID": "0"}
        async with aconnect_sse(self._http, "GET", path, headers=headers, timeout=None) as events:
            if events.response.is_error:
                await events.response.aread()
                raise ChatError(_problem(events.response))
            async for event in events.aiter_sse():
                if event.event in {"message", "handoff"}:
                    self._show(event.event, event.data, event.id)

    def _show(self, name: str, data: str, event_id: str) -> None:
        from support.api.schemas.conversations import HandoffData, MessageResource

        if event_id and event_id != "0":
            if event_id in self._events:
                return
            self._events.add(event_id)
        if name == "message":
            message = msgspec.json.decode(data, type=MessageResource)
            if message.role is MessageRole.CUSTOMER or str(message.id) in self._shown:
                return
            self._shown.add(str(message.id))
            who = message.author or "support" if message.role is MessageRole.AGENT else message.role.value
            self._console.print(f"[bold magenta]{escape(who)}[/bold magenta] ", end="")
            self._console.print(message.content, markup=False)
        elif name == "handoff":
            status = msgspec.json.decode(data, type=HandoffData).status
            self._console.print(f"[yellow]· {_STATUS_NOTES.get(status, status.value)}[/yellow]")
        elif name == "error":
            detail = _PROBLEM.decode(data)
            problem = f"{detail.get('title', 'error')}: {detail.get('detail', '')}"
            self._console.print(f"[red]· {escape(problem)}[/red]")

    async def _call(self, method: str, path: str, headers: dict[str, str], **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as error:
            raise ChatError(f"no answer from {self._http.base_url}: {error}") from error
        if response.is_error:
            raise ChatError(_problem(response))
        body: dict[str, Any] = response.json()
        return body


def _problem(response: httpx.Response) -> str:
    """The problem's title and detail (RFC 9457), or the status line."""
    with contextlib.suppress(msgspec.DecodeError):
        problem = _PROBLEM.decode(response.content)
        return f"{response.status_code} {problem.get('title', '')}: {problem.get('detail', '')}"
    return f"{response.status_code} {response.reason_phrase}"


class _Source(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def url(self) -> str | None: ...


_S = TypeVar("_S", bound=_Source)


def _unique(sources: list[_S]) -> list[_S]:
    seen: dict[tuple[str, str | None], _S] = {}
    for source in sources:
        seen.setdefault((source.title, source.url), source)
    return list(seen.values())


async def converse(session: ChatSession, ask: Callable[[], Awaitable[str | None]], console: Console) -> None:
    """Read lines with ``ask`` (None: the end) and act on them until /quit, following the feed meanwhile."""
    follower = asyncio.create_task(session.follow())
    try:
        while (line := await ask()) is not None:
            text = line.strip()
            if follower.done() and not follower.cancelled() and follower.exception() is not None:
                console.print(f"[red]· the live feed stopped: {escape(str(follower.exception()))}[/red]")
            try:
                if text in {"/quit", "/exit"}:
                    return
                if text == "/human":
                    await session.ask_for_person()
                elif text:
                    await session.send(text)
            except ChatError as error:
                console.print(f"[red]· {escape(str(error))}[/red]")
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, ChatError, httpx.HTTPError, SSEError):
            await follower


def chat(
    url: Annotated[str, typer.Option(help="The server's base URL.")] = "http://127.0.0.1:8000",
    key: Annotated[str | None, typer.Option(envvar="SUPPORT_API_KEY", help="A service or admin key.")] = None,
    customer: Annotated[str, typer.Option(help="The customer's external id.")] = "terminal",
    name: Annotated[str | None, typer.Option(help="The customer's name.")] = None,
) -> None:
    """Chat with the assistant as a customer: replies stream with their sources; /human asks for a person."""
    console = Console(highlight=False, soft_wrap=True)
    service_key = key
    if not service_key:
        console.print("Give a key: --key, or SUPPORT_API_KEY (`support keys create --role admin --name me`).")
        raise typer.Exit(2)

    async def ask() -> str | None:
        try:
            return await asyncio.to_thread(input, "you> ")
        except EOFError:
            console.print()  # end the prompt's line
            return None

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30.0, read=None)) as http:
            session = ChatSession(http, console)
            await session.start(service_key, customer, name)
            console.print(f"Conversation {session.conversation_id}. {HELP}")
            await converse(session, ask, console)

    try:
        asyncio.run(run())
    except ChatError as error:
        console.print(f"[red]{escape(str(error))}[/red]")
        if "no answer from" in str(error):
            console.print("Is the server running? `make run` starts it; --url points elsewhere.")
        raise typer.Exit(1) from error
    except KeyboardInterrupt:
        console.print()
