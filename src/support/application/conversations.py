"""Use cases for conversations: start, read, send (two-phase), feedback, close, sweep, attachments."""

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import NewType
from uuid import UUID

from support.application.handover import announce, message_event, status_event
from support.application.keys import CustomerTokenSecret
from support.application.limits import CheckTokenBudget
from support.application.replies import LeaseReservation, ReplyRunner, ReplyStream
from support.domain.conversations import (
    ACTIVITY_GRANULARITY,
    IDLE_CLOSABLE,
    AttachmentInfo,
    AttachmentNotFoundError,
    AttachmentUpload,
    Conversation,
    ConversationEvent,
    ConversationNotFoundError,
    ConversationStatus,
    Customer,
    Feedback,
    Message,
    MessageRole,
    clean_filename,
    customer_external_id,
)
from support.domain.errors import (
    ContentTooLargeError,
    InvalidInputError,
    PermissionDeniedError,
    SupportError,
    UnsupportedContentTypeError,
)
from support.domain.feed import FeedEvent, HandoffChanged, ReplyDone, StreamFailed
from support.domain.identity import Principal, Role, issue_customer_token
from support.domain.ids import new_id
from support.domain.knowledge import content_type_for_filename
from support.domain.limits import RateLimitedError, TokenBudgetExhaustedError
from support.domain.memory import CustomerNotFoundError
from support.domain.webhooks import WebhookEventType
from support.ports.conversations import (
    AttachmentStore,
    ConversationPage,
    ConversationRepository,
    EventBus,
    MessagePage,
    SessionStore,
)
from support.ports.errors import CacheUnavailableError
from support.ports.knowledge import TextExtractor
from support.ports.system import Clock, UnitOfWork
from support.ports.webhooks import WebhookOutbox

_logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100
MAX_EXTERNAL_ID_LENGTH = 300
MAX_IDEMPOTENCY_KEY_LENGTH = 200

IMAGE_TYPES = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}
DOCUMENT_TYPES = frozenset({"text/plain", "text/markdown", "text/html", "application/pdf"})
_IMAGE_SUFFIXES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg"}

# A process-unique prefix for reply lease holders.
ProcessName = NewType("ProcessName", str)


@dataclass(frozen=True, slots=True)
class ConversationLimits:
    """Conversation settings the use cases enforce."""

    token_ttl_s: int = 24 * 3600
    idle_close_after_s: int = 24 * 3600
    max_message_chars: int = 8000
    max_attachments: int = 5
    max_attachment_bytes: int = 10 * 1024 * 1024
    attachment_context_chars: int = 12_000


def checked_message(content: str, idempotency_key: str | None, limits: ConversationLimits, *, attached: bool) -> str:
    """The message text, stripped, once it fits the limits (customer and agent messages alike).

    Raises:
        InvalidInputError: the text is empty (and nothing is attached) or too long, or the idempotency key is
            empty or too long.
    """
    text = content.strip()
    if not text and not attached:
        raise InvalidInputError("The message is empty.")
    if len(text) > limits.max_message_chars:
        raise InvalidInputError(f"A message has at most {limits.max_message_chars} characters.")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidInputError(f"An Idempotency-Key has 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters.")
    return text


def ensure_readable(principal: Principal, conversation: Conversation | None) -> Conversation:
    """The conversation when ``principal`` may read it; a customer never learns that others' exist."""
    if conversation is None or (principal.is_customer and conversation.customer_id != principal.customer_id):
        raise ConversationNotFoundError
    return conversation


def ensure_customer_side(principal: Principal, conversation: Conversation | None) -> Conversation:
    """The conversation when ``principal`` may act as its customer (the customer, the service, an admin)."""
    conversation = ensure_readable(principal, conversation)
    if principal.role is Role.AGENT:
        raise PermissionDeniedError("Agents reply with agent messages, not as the customer.")
    return conversation


@dataclass(frozen=True, slots=True)
class StartedConversation:
    """A new conversation with the token its customer's browser uses."""

    conversation: Conversation
    customer: Customer
    customer_token: str
    token_expires_at: datetime


class StartConversation:
    """Start a conversation for a customer (created on first sight) and issue the customer's token."""

    def __init__(
        self,
        conversations: ConversationRepository,
        uow: UnitOfWork,
        clock: Clock,
        token_secret: CustomerTokenSecret,
        limits: ConversationLimits,
    ) -> None:
        self._conversations = conversations
        self._uow = uow
        self._clock = clock
        self._secret = token_secret
        self._limits = limits

    async def execute(
        self,
        principal: Principal,
        *,
        external_id: str | None,
        name: str | None = None,
        email: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> StartedConversation:
        """Create and commit the conversation.

        Raises:
            InvalidInputError: no customer was named (service keys must name one).
            PermissionDeniedError: agents do not start conversations.
            CustomerNotFoundError: a customer token's customer no longer exists (it was erased).
        """
        now = self._clock.now()
        if principal.role is Role.AGENT:
            raise PermissionDeniedError("Agents do not start conversations.")
        if principal.is_customer and principal.customer_id is not None:
            # A customer's browser starts conversations for that customer only, whatever it names.
            customer = await self._conversations.get_customer(principal.customer_id)
            if customer is None:
                # The token is genuine, but its customer was erased (or never stored): say what is missing.
                raise CustomerNotFoundError("The customer of this token no longer exists.")
        else:
            customer = await self._conversations.get_or_create_customer(
                customer_external_id(external_id), name=name, email=email, now=now
            )
        conversation = Conversation(
            id=new_id(),
            customer_id=customer.id,
            status=ConversationStatus.BOT,
            metadata=dict(metadata or {}),
            created_at=now,
            updated_at=now,
            last_activity_at=now,
        )
        await self._conversations.add(conversation)
        await self._uow.commit()
        issued = IssuedToken.for_customer(customer.id, now, self._secret, self._limits)
        return StartedConversation(conversation, customer, issued.token, issued.expires_at)


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A customer token and when it expires."""

    token: str
    expires_at: datetime

    @classmethod
    def for_customer(
        cls, customer_id: UUID, now: datetime, secret: CustomerTokenSecret, limits: ConversationLimits
    ) -> "IssuedToken":
        """A token for ``customer_id`` valid for the configured time, to the whole second the token carries."""
        expires_at = (now + timedelta(seconds=limits.token_ttl_s)).replace(microsecond=0)
        return cls(issue_customer_token(customer_id, expires_at, secret), expires_at)


class IssueCustomerToken:
    """A new customer token for a customer the service already knows (the browser's token is about to expire).

    The token reaches every conversation of that customer, as the one ``StartConversation`` returned; getting one
    used to mean starting another, empty conversation.
    """

    def __init__(
        self,
        conversations: ConversationRepository,
        clock: Clock,
        token_secret: CustomerTokenSecret,
        limits: ConversationLimits,
    ) -> None:
        self._conversations = conversations
        self._clock = clock
        self._secret = token_secret
        self._limits = limits

    async def execute(self, customer_id: UUID) -> IssuedToken:
        """Issue it.

        Raises:
            CustomerNotFoundError: no such customer (never created, or erased).
        """
        if await self._conversations.get_customer(customer_id) is None:
            raise CustomerNotFoundError
        return IssuedToken.for_customer(customer_id, self._clock.now(), self._secret, self._limits)


class GetConversation:
    """Read one conversation."""

    def __init__(self, conversations: ConversationRepository) -> None:
        self._conversations = conversations

    async def execute(self, principal: Principal, conversation_id: UUID) -> Conversation:
        """Return it.

        Raises:
            ConversationNotFoundError: it does not exist or is not the caller's.
        """
        return ensure_readable(principal, await self._conversations.get(conversation_id))


class ListConversations:
    """List conversations, newest activity first; customers see only their own."""

    def __init__(self, conversations: ConversationRepository) -> None:
        self._conversations = conversations

    async def execute(
        self,
        principal: Principal,
        *,
        status: ConversationStatus | None = None,
        customer_id: UUID | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> ConversationPage:
        """Return one page.

        Raises:
            InvalidInputError: the cursor is not valid.
        """
        if principal.is_customer:
            if customer_id is not None and customer_id != principal.customer_id:
                return ConversationPage(items=[], next_cursor=None)
            customer_id = principal.customer_id
        return await self._conversations.list_conversations(
            status=status, customer_id=customer_id, limit=min(max(limit, 1), MAX_PAGE_SIZE), cursor=cursor
        )


class ListMessages:
    """Read a conversation's transcript, oldest first."""

    def __init__(self, conversations: ConversationRepository) -> None:
        self._conversations = conversations

    async def execute(
        self, principal: Principal, conversation_id: UUID, *, limit: int = 50, cursor: str | None = None
    ) -> MessagePage:
        """Return one page.

        Raises:
            ConversationNotFoundError: it does not exist or is not the caller's.
            InvalidInputError: the cursor is not valid.
        """
        ensure_readable(principal, await self._conversations.get(conversation_id))
        return await self._conversations.list_messages(
            conversation_id, limit=min(max(limit, 1), MAX_PAGE_SIZE), cursor=cursor
        )


class SubmitFeedback:
    """Record the customer's rating (1 to 5) and comment; a later submission replaces it."""

    def __init__(self, conversations: ConversationRepository, uow: UnitOfWork, clock: Clock) -> None:
        self._conversations = conversations
        self._uow = uow
        self._clock = clock

    async def execute(
        self, principal: Principal, conversation_id: UUID, rating: int, comment: str | None
    ) -> Conversation:
        """Store it and return the conversation.

        Raises:
            ConversationNotFoundError: it does not exist or is not the caller's.
            InvalidInputError: the rating is outside 1 to 5.
        """
        if not 1 <= rating <= 5:  # noqa: PLR2004 - the scale itself
            raise InvalidInputError("The rating is a whole number from 1 to 5.")
        conversation = ensure_customer_side(principal, await self._conversations.get(conversation_id, for_update=True))
        now = self._clock.now()
        text = comment.strip() if comment else None
        conversation = replace(conversation, feedback=Feedback(rating, text or None, now), updated_at=now)
        await self._conversations.update(conversation)
        await self._uow.commit()
        return conversation


class CloseConversation:
    """Close a conversation (by its customer or the service); it takes no new messages afterwards."""

    def __init__(
        self,
        conversations: ConversationRepository,
        uow: UnitOfWork,
        clock: Clock,
        bus: EventBus,
        sessions: SessionStore,
        outbox: WebhookOutbox,
    ) -> None:
        self._conversations = conversations
        self._uow = uow
        self._clock = clock
        self._bus = bus
        self._sessions = sessions
        self._outbox = outbox

    async def execute(self, principal: Principal, conversation_id: UUID) -> Conversation:
        """Close it (closing twice is harmless), announce the change on the feed and to webhooks.

        Raises:
            ConversationNotFoundError: it does not exist or is not the caller's.
        """
        conversation = ensure_customer_side(principal, await self._conversations.get(conversation_id, for_update=True))
        if conversation.status is ConversationStatus.CLOSED:
            return conversation
        closed = conversation.apply(ConversationEvent.CLOSE, self._clock.now())
        await self._conversations.update(closed)
        await self._outbox.enqueue(
            status_event(WebhookEventType.CONVERSATION_CLOSED, closed, closed_by=principal.role.value)
        )
        await self._uow.commit()
        await announce(self._bus, self._sessions, closed.id, [HandoffChanged(closed.status, None)])
        return closed


class SweepIdleConversations:
    """Close open conversations without activity for the configured time (run periodically)."""

    def __init__(
        self,
        conversations: ConversationRepository,
        uow: UnitOfWork,
        clock: Clock,
        bus: EventBus,
        sessions: SessionStore,
        limits: ConversationLimits,
        outbox: WebhookOutbox,
    ) -> None:
        self._conversations = conversations
        self._uow = uow
        self._clock = clock
        self._bus = bus
        self._sessions = sessions
        self._limits = limits
        self._outbox = outbox

    async def execute(self, batch: int = 200) -> int:
        """Close one batch; return how many were closed (each announced on its feed and to webhooks)."""
        now = self._clock.now()
        idle = await self._conversations.idle_conversations(
            inactive_since=now - timedelta(seconds=self._limits.idle_close_after_s), limit=batch
        )
        closed: list[Conversation] = []
        for conversation_id in idle:
            conversation = await self._conversations.get(conversation_id, for_update=True)
            # Checked again under the lock: a handoff requested since the listing waits for a person now.
            if conversation is None or conversation.status not in IDLE_CLOSABLE:
                continue
            closed.append(conversation.apply(ConversationEvent.CLOSE, now))
            await self._conversations.update(closed[-1])
            # An agent's systems hear of it too: a claimed conversation closes like any other.
            await self._outbox.enqueue(status_event(WebhookEventType.CONVERSATION_CLOSED, closed[-1], closed_by="idle"))
        await self._uow.commit()
        for conversation in closed:
            await announce(self._bus, self._sessions, conversation.id, [HandoffChanged(conversation.status, None)])
        return len(closed)


class GetAttachment:
    """Download an attachment of a conversation the caller may read."""

    def __init__(self, conversations: ConversationRepository, attachments: AttachmentStore) -> None:
        self._conversations = conversations
        self._attachments = attachments

    async def execute(
        self, principal: Principal, conversation_id: UUID, attachment_id: UUID
    ) -> tuple[AttachmentInfo, bytes]:
        """Return its description and bytes.

        Raises:
            ConversationNotFoundError: the conversation does not exist or is not the caller's.
            AttachmentNotFoundError: no such attachment in it.
        """
        ensure_readable(principal, await self._conversations.get(conversation_id))
        found = await self._attachments.get(conversation_id, attachment_id)
        if found is None:
            raise AttachmentNotFoundError
        return found


@dataclass(frozen=True, slots=True)
class IncomingFile:
    """A file as received, before any check."""

    filename: str
    content_type: str | None
    data: bytes


class PrepareAttachments:
    """Check attachments (count, size, type, content) and extract document text, before anything is stored."""

    def __init__(self, extractor: TextExtractor, limits: ConversationLimits) -> None:
        self._extractor = extractor
        self._limits = limits

    async def execute(self, files: Sequence[IncomingFile]) -> list[AttachmentUpload]:
        """The uploads, in order.

        Raises:
            ContentTooLargeError: too many files, or one is too large.
            UnsupportedContentTypeError: a file is not txt, md, html, pdf, png or jpeg.
            InvalidInputError: a file is empty or its content does not match its type.
        """
        limits = self._limits
        files = [replace(file, filename=clean_filename(file.filename)) for file in files]
        if len(files) > limits.max_attachments:
            raise ContentTooLargeError(f"A message carries at most {limits.max_attachments} files.")
        for file in files:
            if len(file.data) > limits.max_attachment_bytes:
                raise ContentTooLargeError(
                    f"{file.filename} is larger than {limits.max_attachment_bytes // (1024 * 1024)} MB."
                )
        typed = [(file, self._content_type(file)) for file in files]
        uploads: list[AttachmentUpload] = []
        for file, content_type in typed:
            if not file.data:
                raise InvalidInputError(f"{file.filename} is empty.")
            text: str | None = None
            if content_type in IMAGE_TYPES:
                if not file.data.startswith(IMAGE_TYPES[content_type]):
                    raise InvalidInputError(f"{file.filename} is not a valid {content_type} image.")
            else:
                # PDF parsing is CPU work: keep it off the event loop.
                extracted = await asyncio.to_thread(self._extractor.extract, file.data, content_type)
                text = "\n\n".join(section.text for section in extracted.sections if section.text.strip())
            info = AttachmentInfo(
                id=new_id(),
                filename=file.filename,
                content_type=content_type,
                size=len(file.data),
                sha256=hashlib.sha256(file.data).hexdigest(),
            )
            uploads.append(AttachmentUpload(info=info, data=file.data, text=text))
        return uploads

    @staticmethod
    def _content_type(file: IncomingFile) -> str:
        declared = (file.content_type or "").split(";")[0].strip().lower()
        if declared in IMAGE_TYPES or declared in DOCUMENT_TYPES:
            return declared
        by_name = content_type_for_filename(file.filename) or _IMAGE_SUFFIXES.get(
            file.filename.lower().rpartition(".")[2]
        )
        if by_name is None:
            raise UnsupportedContentTypeError(
                f"{file.filename}: attach txt, md, html, pdf, png or jpeg files (got {declared or 'no type'})."
            )
        return by_name


@dataclass(frozen=True, slots=True)
class TurnResult:
    """A finished send: the stored customer message and the reply (None while a human owns the conversation).

    ``failure`` says why a reply that should have come did not (the message is stored either way).
    """

    message: Message
    reply: Message | None
    conversation_status: ConversationStatus
    failure: StreamFailed | None = None


class Turn:
    """A customer message that is stored; its reply streams from ``events`` or is awaited with ``result``."""

    def __init__(self, message: Message, duplicate: bool, stream: ReplyStream) -> None:
        self.message = message
        self.duplicate = duplicate
        self._stream = stream

    def events(self) -> AsyncGenerator[FeedEvent, None]:
        """The echo of the customer message, then the reply's events; single use."""
        return self._stream.events()

    async def result(self) -> TurnResult:
        """Wait for the reply (it keeps being written if the caller goes away)."""
        reply: Message | None = None
        failure: StreamFailed | None = None
        async for event in self._stream.events():
            if isinstance(event.payload, ReplyDone):
                reply = event.payload.message
            elif isinstance(event.payload, StreamFailed):
                failure = event.payload
        return TurnResult(self.message, reply, self._stream.final_status, None if reply else failure)


def _customer_message(
    conversation: Conversation,
    text: str,
    idempotency_key: str | None,
    uploads: Sequence[AttachmentUpload],
    at: datetime,
) -> Message:
    """A new customer message of ``conversation`` (what a send stores, and what a retry is compared with)."""
    return Message(
        id=new_id(),
        conversation_id=conversation.id,
        role=MessageRole.CUSTOMER,
        content=text,
        created_at=at,
        idempotency_key=idempotency_key,
        attachments=tuple(upload.info for upload in uploads),
    )


async def _refusal(admission: Awaitable[object] | None, *, retry: bool) -> RateLimitedError | None:
    """Wait for a send's rate-limit verdict; a refusal is returned (not raised) for a send that may be a retry."""
    if admission is None:
        return None
    try:
        await admission
    except RateLimitedError as error:
        if not retry:
            raise
        return error
    return None


class SendMessage:
    """Store a customer message, then reply to it (two-phase: ``execute`` persists, the turn streams).

    The message is committed before generation starts. A repeated ``Idempotency-Key`` returns the original
    message and its reply without writing anything. One reply is written per conversation at a time: a message
    that arrives meanwhile is stored and answered together with the next turn.
    """

    def __init__(
        self,
        conversations: ConversationRepository,
        attachments: AttachmentStore,
        uow: UnitOfWork,
        clock: Clock,
        replies: ReplyRunner,
        limits: ConversationLimits,
        outbox: WebhookOutbox,
        bus: EventBus,
        sessions: SessionStore,
        budget: CheckTokenBudget | None = None,
    ) -> None:
        self._conversations = conversations
        self._attachments = attachments
        self._uow = uow
        self._clock = clock
        self._replies = replies
        self._limits = limits
        self._outbox = outbox
        self._bus = bus
        self._sessions = sessions
        self._budget = budget

    async def execute(
        self,
        principal: Principal,
        conversation_id: UUID,
        content: str,
        *,
        idempotency_key: str | None = None,
        uploads: Sequence[AttachmentUpload] = (),
        admission: Awaitable[object] | None = None,
    ) -> Turn:
        """Validate and commit the message; return the turn that replies to it.

        ``admission`` is the send's rate-limit verdict when it is still being reached: the question's embedding
        is looked up in the cache meanwhile, and it raises before the model runs or anything is stored.

        Raises:
            ConversationNotFoundError: it does not exist or is not the caller's.
            ConversationClosedError: the conversation is closed.
            InvalidInputError: the content is empty or too long, or the idempotency key is too long.
            IdempotencyKeyReusedError: the idempotency key names a different message of the conversation.
            TokenBudgetExhaustedError: the assistant would answer, but the customer's tokens for the day are spent.
            RateLimitedError: from ``admission``, before any other problem; with an idempotency key, unless the
                send is a retry of a stored message (the original is returned: it writes nothing).
        """
        started = time.perf_counter()
        try:
            text = checked_message(content, idempotency_key, self._limits, attached=bool(uploads))
        except SupportError:
            if admission is not None:
                await admission
            raise
        prefetched = self._replies.prefetch(text, admission=admission)
        reservation: LeaseReservation | None = None
        try:
            refused = await _refusal(admission, retry=idempotency_key is not None)
            if refused is not None:
                # Over the rate limit, only a retry of a stored message gets through: it writes nothing.
                if prefetched is not None:
                    prefetched.cancel()
                return await self._retried(principal, conversation_id, text, idempotency_key, uploads, refused)
            # The row lock orders this message against status changes (a handoff, an agent's claim).
            conversation = ensure_customer_side(
                principal, await self._conversations.get(conversation_id, for_update=True)
            )
            # The turn's lease is tried for while the message is inserted and committed (a Valkey round trip off
            # the way to the first delta); only for a conversation the caller may write to.
            reservation = self._replies.reserve(conversation.id)
            return await self._store(conversation, text, idempotency_key, uploads, started, prefetched, reservation)
        except BaseException:
            if prefetched is not None:
                prefetched.cancel()
            if reservation is not None:
                self._replies.forgo(reservation)
            raise

    async def _retried(
        self,
        principal: Principal,
        conversation_id: UUID,
        text: str,
        idempotency_key: str | None,
        uploads: Sequence[AttachmentUpload],
        refused: RateLimitedError,
    ) -> Turn:
        """The original of a retry sent over the rate limit, with its reply; else the refusal.

        Reads only (no row lock, no turn): a refused send must not compete with real turns. Anything but a repeat
        of a stored message that has its reply (or that a person has: then there is none) is the 429, as any send
        over the limit is.
        """
        try:
            found = await self._original(principal, conversation_id, text, idempotency_key, uploads)
        except SupportError:
            found = None
        finally:
            await self._uow.rollback()
        if found is None:
            raise refused
        conversation, stored, reply = found
        if reply is None and conversation.assistant_may_reply:
            raise refused  # still to be answered: that would take a turn, which the limit refuses
        return Turn(stored, True, ReplyStream.finished(conversation.status, reply))

    async def _original(
        self,
        principal: Principal,
        conversation_id: UUID,
        text: str,
        idempotency_key: str | None,
        uploads: Sequence[AttachmentUpload],
    ) -> tuple[Conversation, Message, Message | None] | None:
        """The conversation, the stored message this send repeats and its reply; None when it repeats none.

        Raises:
            SupportError: the conversation is not the caller's, or the key names another message.
        """
        conversation = ensure_customer_side(principal, await self._conversations.get(conversation_id))
        if idempotency_key is None:
            return None
        stored = await self._conversations.find_by_idempotency_key(conversation.id, idempotency_key)
        if stored is None:
            return None
        stored.ensure_repeated_by(_customer_message(conversation, text, idempotency_key, uploads, stored.created_at))
        return conversation, stored, await self._conversations.find_reply(conversation.id, stored.id)

    async def _store(
        self,
        conversation: Conversation,
        text: str,
        idempotency_key: str | None,
        uploads: Sequence[AttachmentUpload],
        started: float,
        prefetched: "asyncio.Task[list[float]] | None",
        reservation: LeaseReservation,
    ) -> Turn:
        now = self._clock.now()
        message = _customer_message(conversation, text, idempotency_key, uploads, now)
        stored = await self._conversations.add_message(message)
        duplicate = stored.id != message.id
        if duplicate:
            await self._uow.rollback()
            stored.ensure_repeated_by(message)
            return Turn(
                stored,
                True,
                self._replies.start(
                    conversation, stored, started=started, echo=False, prefetched=prefetched, reservation=reservation
                ),
            )
        updated = conversation.apply(ConversationEvent.CUSTOMER_WRITES, now)
        if self._budget is not None and updated.assistant_may_reply:
            # A new message the model would answer: with the customer's tokens for the day spent, nothing is kept.
            try:
                await self._budget.execute(conversation.customer_id)
            except TokenBudgetExhaustedError:
                await self._uow.rollback()
                raise
        if updated.status is not conversation.status or now - conversation.last_activity_at >= ACTIVITY_GRANULARITY:
            await self._conversations.update(updated)
        for upload in uploads:
            await self._attachments.add(conversation.id, message.id, upload)
        if not updated.assistant_may_reply:
            # A person has (or is about to get) the conversation: their systems hear about the message.
            await self._outbox.enqueue(message_event(message))
        await self._uow.commit()
        if updated.status is ConversationStatus.BOT and conversation.status is ConversationStatus.RESOLVED:
            # Reopened: followers still show it resolved, and every ownership change is a handoff event (before
            # the message's echo, which the turn publishes).
            await announce(self._bus, self._sessions, updated.id, [HandoffChanged(updated.status, None)])
        return Turn(
            message,
            False,
            self._replies.start(
                updated, message, started=started, echo=True, prefetched=prefetched, reservation=reservation
            ),
        )


class CachedConversationState:
    """Who may read a conversation, answered from the session store when it is warm (live feeds).

    Turns keep the cached state fresh; a miss reads the database and leaves the cache to the next turn, so a
    feed connecting to a quiet conversation costs one read, not a read of its messages too.
    """

    def __init__(self, conversations: ConversationRepository, sessions: SessionStore) -> None:
        self._conversations = conversations
        self._sessions = sessions

    async def execute(self, principal: Principal, conversation_id: UUID) -> Conversation:
        """The conversation the caller may read.

        Raises:
            ConversationNotFoundError: it does not exist or is not the caller's.
        """
        try:
            state = await self._sessions.load(conversation_id)
        except CacheUnavailableError:
            state = None
        if state is not None:
            return ensure_readable(principal, state.conversation)
        return ensure_readable(principal, await self._conversations.get(conversation_id))
