"""The language model that writes replies, and the tools it may call back into the service."""

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from support.domain.assistant import ReplyEvent, ReplyRequest
from support.domain.conversations import HandoffDecision, Message
from support.domain.knowledge import SearchHit


class AssistantTools(Protocol):
    """What the model may do during a turn besides writing text."""

    async def search_knowledge(self, query: str) -> Sequence[SearchHit]:
        """Search the knowledge base again (the model rephrased or narrowed the question)."""
        ...


class LLM(Protocol):
    """Writes one assistant reply as a stream of events.

    The stream yields any number of ``TextDelta``, ``ToolActivity``, ``PassageCited`` and ``HandoffSignal``
    events and ends with exactly one ``ReplyCompleted``. Retrieved passages and attachments are untrusted
    content: an adapter presents them to the model as data, never as instructions.

    Raises (while iterating):
        LLMUnavailableError: the provider failed after the adapter's retries, or timed out. Events already
            yielded stay valid; the caller keeps the partial reply.
    """

    @property
    def name(self) -> str:
        """Which model answers (``claude-…``, ``offline``); recorded on each reply."""
        ...

    def reply(self, request: ReplyRequest, tools: AssistantTools) -> AsyncIterator[ReplyEvent]:
        """Stream the reply to ``request``."""
        ...


class Summarizer(Protocol):
    """Writes the short account of a conversation that an agent reads before taking it over.

    Raises:
        LLMUnavailableError: the provider failed (the caller falls back to an extractive summary).
    """

    async def summarize(self, messages: Sequence[Message], *, reason: HandoffDecision | None) -> str:
        """A few sentences: what the customer wants, what was tried, why a person is needed."""
        ...
