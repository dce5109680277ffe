"""What a background step (a turn, a summary) opens around each short piece of work: no long transactions."""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from support.application.knowledge import SearchKnowledge
from support.application.memory import (
    FoldConversationHistory,
    RecallMemories,
    RememberFacts,
    RememberProposedFact,
)
from support.ports.conversations import AttachmentStore, ConversationRepository
from support.ports.system import UnitOfWork
from support.ports.webhooks import WebhookOutbox


class ConversationServices(Protocol):
    """What one short step of a turn uses; opened and closed around each step (no long transactions)."""

    @property
    def conversations(self) -> ConversationRepository:
        """Customers, conversations and messages."""
        ...

    @property
    def attachments(self) -> AttachmentStore:
        """Attached files."""
        ...

    @property
    def uow(self) -> UnitOfWork:
        """Commits this step's writes."""
        ...

    @property
    def search(self) -> SearchKnowledge:
        """Retrieval over the knowledge base."""
        ...

    @property
    def outbox(self) -> WebhookOutbox:
        """Webhook events, committed with this step's writes."""
        ...

    @property
    def recall(self) -> RecallMemories:
        """Facts remembered about the customer that bear on the question."""
        ...

    @property
    def remember(self) -> RememberFacts:
        """Facts found in a customer message, stored (superseding older values)."""
        ...

    @property
    def remember_proposed(self) -> RememberProposedFact:
        """A fact the model asked to remember, vetted and stored."""
        ...

    @property
    def fold(self) -> FoldConversationHistory:
        """The rolling summary of turns older than the history window."""
        ...


ServicesOpener = Callable[[], AbstractAsyncContextManager[ConversationServices]]
