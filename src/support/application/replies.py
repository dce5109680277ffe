"""Writing assistant replies: one at a time per conversation, in the background, streamed and stored.

A turn runs as a task owned by the :class:`ReplyRunner`, not by the request that started it, so a client that
disconnects mid-stream still gets the finished reply stored (readable from the transcript and the feed). No
database transaction stays open while the model writes: the turn opens short scopes to read its context and to
store the result.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from uuid import UUID

from support.application.handover import HandoffSettings, HandoffSummaries, hand_over
from support.application.knowledge import MAX_QUERY_LENGTH, QueryEmbeddings
from support.application.limits import SpendTokens
from support.application.services import ConversationServices, ServicesOpener
from support.application.tasks import started_early
from support.domain.assistant import (
    AttachedImage,
    AttachedText,
    FactRemembered,
    HandoffSignal,
    PassageCited,
    ReplyCompleted,
    ReplyEvent,
    ReplyRequest,
    TextDelta,
    ToolActivity,
    Turn,
    storable_pieces,
)
from support.domain.conversations import (
    ACTIVITY_GRANULARITY,
    Citation,
    Conversation,
    ConversationNotFoundError,
    ConversationStatus,
    HandoffAction,
    Message,
    MessageRole,
    ReasonCode,
    TokenUsage,
    unanswered,
)
from support.domain.errors import ConflictError
from support.domain.escalation import HANDED_OVER_AT_ONCE, EscalationPolicy, Screening
from support.domain.feed import (
    CitationAdded,
    FeedEvent,
    FeedPayload,
    HandoffChanged,
    MessagePosted,
    ReplyDelta,
    ReplyDone,
    StreamFailed,
    ToolUsed,
)
from support.domain.handoff import answer_status_for
from support.domain.ids import new_id
from support.domain.knowledge import SearchHit, SearchQuery
from support.domain.memory import RecalledFact
from support.domain.questions import is_follow_up, with_context
from support.ports.assistant import LLM
from support.ports.conversations import (
    EventBus,
    FeedErasedError,
    FeedLostError,
    SessionState,
    SessionStore,
    TakenOverError,
)
from support.ports.errors import CacheUnavailableError, DependencyUnavailableError, LLMUnavailableError
from support.ports.system import Clock

_logger = logging.getLogger(__name__)

UNAVAILABLE_REPLY = (
    "I'm sorry, I can't answer right now because the assistant is temporarily unavailable. "
    "Would you like me to connect you with a member of our support team?"
)
INTERRUPTED_NOTE = "\n\n(This reply was interrupted. Ask again, or ask for a person if you need more help.)"
# Images of the history window given to the model with each turn (a message carries at most five).
MAX_CONTEXT_IMAGES = 5
# A send whose turn could not get the reply lease in time: its message waits for the next reply.
REPLY_BUSY = "reply_busy"
CUT_SHORT_NOTE = "\n\n(This reply was cut short. Ask me to go on, or ask for a person if you need more help.)"
# A model that wrote nothing at all (an empty message, or searches until it had to stop): never a blank reply.
NO_ANSWER_REPLY = "I'm sorry, I couldn't find an answer to that in our help center."
NO_ANSWER_OFFER = " Would you like me to connect you with someone from our support team?"
FRUSTRATION_OFFER = "\n\nIf you'd rather sort this out with a person, just say so and I'll bring in our support team."


def search_text(question: str) -> str:
    """What is searched for a question: its end when it is longer than a query may be (the latest words)."""
    return question.strip()[-MAX_QUERY_LENGTH:].strip()


@dataclass(frozen=True, slots=True)
class ReplySettings:
    """How turns run."""

    passages: int = 5
    # Neighbouring chunks each passage brings along, each side (SearchQuery.context).
    context_chunks: int = 0
    recent_messages: int = 20
    history_messages: int = 12
    attachment_context_chars: int = 12_000
    session_ttl_s: int = 6 * 3600
    # The lease expires by itself if its holder dies; the holder extends it while it writes.
    lease_ttl_s: float = 30.0
    reply_wait_s: float = 120.0
    # The quarantine policy: chunks flagged as instruction-like at ingestion are not searched for the model.
    exclude_flagged: bool = False
    # While the model writes, whether the bot still owns the conversation is read again this often (a person may
    # take over in any process); the model is stopped as soon as it does not.
    ownership_check_s: float = 0.5

    def search_query(self, text: str) -> SearchQuery:
        """The search a turn makes for ``text``: before the model is called, and when it searches again."""
        return SearchQuery(text, limit=self.passages, exclude_flagged=self.exclude_flagged, context=self.context_chunks)


_END = object()


async def _unless_erased(storing: Awaitable[object]) -> None:
    """Store what a stopped turn wrote, shielded from the stop; a conversation erased meanwhile keeps nothing."""
    with contextlib.suppress(ConversationNotFoundError):
        await asyncio.shield(storing)


class _NotForTheBot(Enum):
    """Why a turn writes nothing for its message."""

    ANSWERED = "answered"  # by an earlier turn: the requester gets that reply again
    TOLD_A_PERSON = "told_a_person"  # a person has it: what it says is only remembered


ERASED_DURING_TURN = "The conversation was deleted (or its customer erased) while it was being answered."


def _gone(error: ConversationNotFoundError) -> StreamFailed:
    """What the requester hears when the conversation disappeared under its turn."""
    return StreamFailed(404, error.code, "The conversation is gone", error.message)


class ReplyStream:
    """The events of one turn as its requester sees them: a queue fed by the turn's task."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[FeedEvent | object] = asyncio.Queue()
        self._consumed = False
        self.final_status = ConversationStatus.BOT

    @classmethod
    def finished(cls, status: ConversationStatus, reply: Message | None) -> "ReplyStream":
        """The stream of a turn that already happened: its stored reply (if any) and the end."""
        stream = cls()
        stream.final_status = status
        if reply is not None:
            stream.put(FeedEvent(0, ReplyDone(reply)))
        stream.finish()
        return stream

    def put(self, event: FeedEvent) -> None:
        """Deliver an event (never blocks: the task must not wait for a slow or gone client)."""
        self._queue.put_nowait(event)

    def finish(self) -> None:
        """No more events."""
        self._queue.put_nowait(_END)

    async def events(self) -> AsyncGenerator[FeedEvent, None]:
        """Iterate the events until the turn ends; single use."""
        if self._consumed:
            raise RuntimeError("a reply stream is read once")
        self._consumed = True
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            assert isinstance(item, FeedEvent)  # noqa: S101 - the queue only carries events and the end marker
            yield item


@dataclass(slots=True)
class _Draft:
    """The reply being written."""

    text: list[str] = field(default_factory=list)
    citations: dict[UUID, Citation] = field(default_factory=dict)
    signals: list[ReasonCode] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    evidence: str | None = None
    ttft_ms: float | None = None
    # Written by the escalation policy alone (the model was not called).
    by_policy: bool = False
    proposed_facts: list[FactRemembered] = field(default_factory=list)
    carried: str = ""  # the first half of a surrogate pair the model's next piece completes
    cut_short: bool = False  # the model stopped at its token limit
    stopped_for_a_person: bool = False  # a person took the conversation over while the model wrote


class _Tools:
    """The tools a model may call during a turn; each search opens its own short scope."""

    def __init__(self, open_services: ServicesOpener, settings: ReplySettings) -> None:
        self._open = open_services
        self._settings = settings

    async def search_knowledge(self, query: str) -> Sequence[SearchHit]:
        async with self._open() as services:
            return await services.search.execute(self._settings.search_query(query))


@dataclass(frozen=True, slots=True)
class _ForRequester:
    payload: FeedPayload


class _Publisher:
    """Publishes a turn's events in order, batching what piles up while the previous publish is in flight."""

    def __init__(self, bus: EventBus, conversation_id: UUID, stream: ReplyStream) -> None:
        self._bus = bus
        self._conversation_id = conversation_id
        self._stream = stream
        self._pending: asyncio.Queue[FeedPayload | _ForRequester | None] = asyncio.Queue()
        self._emitted = self._delivered = 0
        self._progress = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        self._bus_down = False
        # The feed id read before the turn last saw the assistant own the conversation (EventBus.publish).
        self._owned_since: int | None = None
        # The words could not be guarded (the feed's head was unreadable, or the feed lost its keys): until the
        # turn unguards, its events go to the requester only.
        self._unguardable = False
        self.taken_over = False
        # The feed refused an event because the conversation was erased: nothing more is published, the requester
        # has been told (once), and the turn stops.
        self.erased = False

    def guard(self, owned_since: int | None) -> None:
        """From now on publish only while no person has taken over since ``owned_since``.

        None: the feed's head could not be read, so the words cannot be guarded; they go to the requester only
        (polling the owner still stops the model, and the store step checks the owner under the row lock).
        """
        self._unguardable = owned_since is None
        self._owned_since = owned_since

    def unguard(self) -> None:
        """What is left to publish is the turn's own, under the row lock or committed: not words to stop."""
        self._owned_since = None
        self._unguardable = False

    def emit(self, payload: FeedPayload) -> None:
        self._emitted += 1
        self._pending.put_nowait(payload)

    def tell_requester(self, payload: FeedPayload) -> None:
        """Give ``payload`` to this turn's requester only (the feed heard it already), after what was emitted."""
        self._emitted += 1
        self._pending.put_nowait(_ForRequester(payload))

    async def delivered(self) -> None:
        """Wait until everything emitted so far is in the requester's stream (published, or Valkey is down)."""
        target = self._emitted
        while self._delivered < target and not self._task.done():
            self._progress.clear()
            await self._progress.wait()

    async def close(self) -> None:
        """Publish what is pending, then stop."""
        self._pending.put_nowait(None)
        await self._task

    async def _run(self) -> None:
        done = False
        try:
            while not done:
                batch = [await self._pending.get()]
                while not self._pending.empty():
                    batch.append(self._pending.get_nowait())
                payloads: list[FeedPayload] = []
                for item in batch:
                    if item is None:
                        done = True
                    elif isinstance(item, _ForRequester):
                        await self._flush(payloads)
                        payloads = []
                        if not self.erased:  # the requester was told the conversation is gone, and nothing after
                            self._stream.put(FeedEvent(0, item.payload))
                        self._advance(1)
                    else:
                        payloads.append(item)
                await self._flush(payloads)
        finally:
            self._progress.set()  # wakes waiters to see the task done: nobody waits on a publisher that is gone

    def _advance(self, count: int) -> None:
        self._delivered += count
        self._progress.set()

    async def _flush(self, payloads: list[FeedPayload]) -> None:
        if payloads:
            for event in await self._publish(payloads):
                self._stream.put(event)
            self._advance(len(payloads))

    async def _publish(self, payloads: list[FeedPayload]) -> list[FeedEvent]:
        guarded = self._owned_since is not None
        if (self.taken_over and guarded) or self.erased:
            return []  # a person owns the conversation (or it is gone): no more of this turn's words reach any feed
        if not self._bus_down and not self._unguardable:
            try:
                return await self._bus.publish(self._conversation_id, payloads, owned_since=self._owned_since)
            except FeedErasedError:
                # Erased while this turn ran: its feed is gone for good and the requester hears what a deleted
                # conversation tells them, as when the turn finds the row gone.
                _logger.info("reply in %s stopped: the conversation was erased", self._conversation_id)
                self.erased = True
                self._stream.put(FeedEvent(0, _gone(ConversationNotFoundError(ERASED_DURING_TURN))))
                return []
            except TakenOverError:
                _logger.info("reply in %s stopped: a person took over", self._conversation_id)
                self.taken_over = True
                return []
            except FeedLostError:
                _logger.warning("events of %s not published: the feed lost its keys", self._conversation_id)
                self._unguardable = True
            except CacheUnavailableError:
                # The requester still gets the reply (without resumable ids); other feeds miss it until Valkey
                # is back, and the stored transcript has it either way.
                _logger.warning("events of %s not published: Valkey is unavailable", self._conversation_id)
                self._bus_down = True
            except Exception:
                # A bug in publishing (an event that cannot be encoded, say) must not cost the requester the reply:
                # it ended their stream without `done` or `error` while the reply was stored.
                _logger.exception("events of %s not published", self._conversation_id)
                self._bus_down = True
        return [FeedEvent(0, payload) for payload in payloads]


class LeaseReservation:
    """One try for a conversation's reply lease, made while the message that needs it is being stored.

    The Valkey round trip then overlaps the message's insert and commit instead of following them. A try that
    fails (another reply is being written) leaves the turn to wait for the lease as before.
    """

    def __init__(self, sessions: SessionStore, conversation_id: UUID, holder: str, ttl_s: float) -> None:
        self.conversation_id = conversation_id
        self.holder = holder
        # A reservation given up after a failed send is never awaited by a turn.
        self._task = started_early(sessions.acquire_reply_lease(conversation_id, holder, ttl_s=ttl_s))

    async def taken(self) -> bool:
        """Whether the try got the lease (raises what the session store raised)."""
        return await self._task


class ReplyRunner:
    """Runs turns as background tasks; one process-wide instance, closed at shutdown."""

    def __init__(
        self,
        open_services: ServicesOpener,
        llm: LLM,
        sessions: SessionStore,
        bus: EventBus,
        clock: Clock,
        settings: ReplySettings,
        holder_prefix: str,
        embeddings: QueryEmbeddings | None = None,
        *,
        policy: EscalationPolicy | None = None,
        handoffs: HandoffSettings | None = None,
        summaries: HandoffSummaries | None = None,
        spend: SpendTokens | None = None,
    ) -> None:
        self._open = open_services
        self._policy = policy or EscalationPolicy()
        self._handoffs = handoffs or HandoffSettings()
        self._summaries = summaries
        self._spend = spend
        self._embeddings = embeddings
        self._llm = llm
        self._sessions = sessions
        self._bus = bus
        self._clock = clock
        self._settings = settings
        self._holder_prefix = holder_prefix
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def model_name(self) -> str:
        """The model that writes replies."""
        return self._llm.name

    def prefetch(self, text: str, *, admission: Awaitable[object] | None = None) -> "asyncio.Task[list[float]] | None":
        """Start embedding a message's text now, so the model runs while the message is being stored.

        The query embedding is the longest step before the first delta; it needs nothing from the database.
        With an ``admission`` still pending (the send's rate limit), only the cache lookup runs before it.
        None for a follow-up ("and with PayPal?"): the turn searches it with the messages it continues.
        """
        return None if is_follow_up(text) else self._embed(search_text(text), admission=admission)

    def _embed(self, query: str, *, admission: Awaitable[object] | None = None) -> "asyncio.Task[list[float]] | None":
        if self._embeddings is None or not query:
            return None
        # Nobody awaits it when the send fails.
        return started_early(self._embeddings.embed(query, admission=admission))

    def reserve(self, conversation_id: UUID) -> LeaseReservation:
        """Try for the conversation's reply lease now, beside storing the message the turn will answer.

        Pass the reservation to :meth:`start`, or to :meth:`forgo` when the message is not stored after all.
        """
        return LeaseReservation(self._sessions, conversation_id, self._new_holder(), self._settings.lease_ttl_s)

    def forgo(self, reservation: LeaseReservation) -> None:
        """Give a reservation back without a turn (the send failed): the lease, if it was got, is released."""
        self._track(asyncio.create_task(self._give_back(reservation)))

    def start(
        self,
        conversation: Conversation,
        message: Message,
        *,
        started: float,
        echo: bool,
        prefetched: "asyncio.Task[list[float]] | None" = None,
        reservation: LeaseReservation | None = None,
    ) -> ReplyStream:
        """Begin the turn that answers ``message`` (and whatever else is unanswered when it gets its turn)."""
        stream = ReplyStream()
        stream.final_status = conversation.status
        self._track(
            asyncio.create_task(
                self._run(
                    conversation,
                    message,
                    stream,
                    started=started,
                    echo=echo,
                    prefetched=prefetched,
                    reservation=reservation,
                )
            )
        )
        return stream

    def _new_holder(self) -> str:
        """A lease holder name of this process, new for each turn."""
        return f"{self._holder_prefix}:{new_id()}"

    def _track(self, task: "asyncio.Task[None]") -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _give_back(self, reservation: LeaseReservation) -> None:
        with contextlib.suppress(DependencyUnavailableError):
            if await reservation.taken():
                await self._sessions.release_reply_lease(reservation.conversation_id, reservation.holder)

    async def close(self) -> None:
        """Stop every turn in progress; each stores what it has written, marked interrupted."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def drain(self) -> None:
        """Wait until the turns in progress have finished (tests, graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(
        self,
        conversation: Conversation,
        message: Message,
        stream: ReplyStream,
        *,
        started: float,
        echo: bool,
        prefetched: "asyncio.Task[list[float]] | None",
        reservation: LeaseReservation | None,
    ) -> None:
        publisher = _Publisher(self._bus, conversation.id, stream)
        holder = reservation.holder if reservation is not None else self._new_holder()
        leased = False
        try:
            if echo:
                publisher.emit(MessagePosted(message))
            if reservation is not None:
                leased = await reservation.taken()
            if not leased:
                leased = await self._wait_for_lease(conversation.id, holder)
            # A failed turn is its requester's business: on the shared feed it ended every follower's stream.
            if not leased:
                publisher.tell_requester(
                    StreamFailed(
                        503,
                        REPLY_BUSY,
                        "A reply is still being written",
                        "Your message is stored and will be answered with the next reply.",
                    )
                )
                return
            await self._turn(conversation.id, message, publisher, stream, holder, started, prefetched)
        except ConversationNotFoundError as error:
            # Deleted, or its customer erased, while the turn ran: the requester hears so (its feed is gone, and
            # refuses what the turn would publish; the publisher tells the requester once, whichever sees it first).
            publisher.tell_requester(_gone(error))
        except DependencyUnavailableError as error:
            _logger.warning("turn in %s failed: %s", conversation.id, error)
            publisher.tell_requester(StreamFailed(503, error.code, "A backing service is unavailable", error.message))
        except asyncio.CancelledError:
            raise
        except Exception:
            _logger.exception("turn in %s failed", conversation.id)
            publisher.tell_requester(
                StreamFailed(
                    500, "internal_error", "The reply failed", "Your message is stored; write again for a reply."
                )
            )
        finally:
            await asyncio.shield(self._finish(conversation.id, holder, leased, publisher, stream))

    async def _finish(
        self, conversation_id: UUID, holder: str, leased: bool, publisher: _Publisher, stream: ReplyStream
    ) -> None:
        try:
            await publisher.close()
        finally:
            # Whatever failed in publishing, the requester's stream ends and the lease goes back.
            stream.finish()
            if leased:
                with contextlib.suppress(CacheUnavailableError):
                    await self._sessions.release_reply_lease(conversation_id, holder)

    async def _wait_for_lease(self, conversation_id: UUID, holder: str) -> bool:
        deadline = time.monotonic() + self._settings.reply_wait_s
        pause = 0.005
        while True:
            if await self._sessions.acquire_reply_lease(conversation_id, holder, ttl_s=self._settings.lease_ttl_s):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(pause * (1 + random.random()))  # noqa: S311 - jitter, not security
            pause = min(pause * 2, 0.2)

    async def _turn(
        self,
        conversation_id: UUID,
        message: Message,
        publisher: _Publisher,
        stream: ReplyStream,
        holder: str,
        started: float,
        prefetched: "asyncio.Task[list[float]] | None",
    ) -> None:
        settings = self._settings
        async with contextlib.AsyncExitStack() as scope:
            services = await scope.enter_async_context(self._open())
            conversation = await services.conversations.get(conversation_id)
            recent = await services.conversations.recent_messages(conversation_id, settings.recent_messages)
            if conversation is None:
                raise ConversationNotFoundError(ERASED_DURING_TURN)
            stream.final_status = conversation.status
            pending = unanswered(recent)
            pending_ids = {item.id for item in pending}
            skip = await self._not_for_the_bot(services, conversation, message, pending_ids, publisher)
            if skip is not None:
                if skip is _NotForTheBot.TOLD_A_PERSON:
                    await self._remember_after(scope, conversation, message)
                return
            question = "\n\n".join(item.content for item in pending if item.content)
            earlier = [item for item in recent if item.id not in pending_ids]
            screening = self._policy.screen(question, earlier)
            # The same scope gathers what the model is given (one connection and transaction for the turn's
            # reads, closed before the model is called).
            escalates = screening.decision.action is HandoffAction.ESCALATE
            request: ReplyRequest | None = None
            if not escalates:
                looked = await self._request(
                    services, conversation, message, pending, earlier, question, prefetched, stream
                )
                if looked is not None:
                    request, owned_since = looked
                    publisher.guard(owned_since)
        if escalates:
            # The customer's words alone hand over (they asked, or the topic is not a bot's): no model call.
            draft = _Draft(by_policy=True)
            reply = await self._store(conversation, pending, recent, draft, screening, publisher, stream, started)
            await self._remember(conversation, pending, draft, recent, reply)
            return
        if request is None:
            return  # a person was asked for while the question was embedded and searched
        draft = _Draft()
        interrupted = False
        try:
            await self._write(request, draft, publisher, holder, conversation_id, started)
        except LLMUnavailableError as error:
            _logger.warning("the model failed in %s: %s", conversation_id, error)
            interrupted = self._unavailable(draft, publisher, started)
        except asyncio.CancelledError:
            await _unless_erased(
                self._store(
                    conversation, pending, recent, draft, screening, publisher, stream, started, interrupted=True
                )
            )
            raise
        else:
            interrupted = self._complete(request, draft, publisher, started)
        reply = await self._store(
            conversation, pending, recent, draft, screening, publisher, stream, started, interrupted=interrupted
        )
        await self._remember(conversation, pending, draft, recent, reply)

    def _unavailable(self, draft: _Draft, publisher: _Publisher, started: float) -> bool:
        """Finish a reply the model failed to write: a note after its words, or the apology; interrupted?"""
        draft.signals.append(ReasonCode.LLM_UNAVAILABLE)
        interrupted = bool(draft.text)
        self._say(draft, publisher, started, INTERRUPTED_NOTE if interrupted else UNAVAILABLE_REPLY)
        return interrupted

    def _complete(self, request: ReplyRequest, draft: _Draft, publisher: _Publisher, started: float) -> bool:
        """Finish a reply the model ended: a note when it was cut short, words when it wrote none; interrupted?"""
        if publisher.taken_over or draft.stopped_for_a_person:
            return False  # not another word from the bot
        if draft.cut_short and draft.text:
            # The model ran out of tokens mid-sentence (or mid tool call): the reply says so.
            self._say(draft, publisher, started, CUT_SHORT_NOTE)
            return True
        # Signals handed over at once get the policy's notice: a reply without words needs none of its own.
        if "".join(draft.text).strip() or HANDED_OVER_AT_ONCE & set(draft.signals):
            return False
        if ReasonCode.INSUFFICIENT_EVIDENCE not in draft.signals:
            draft.signals.append(ReasonCode.INSUFFICIENT_EVIDENCE)
        offer = "" if request.hands_over_if_unanswered else NO_ANSWER_OFFER
        self._say(draft, publisher, started, NO_ANSWER_REPLY + offer)
        return False

    async def _remember_after(
        self, scope: contextlib.AsyncExitStack, conversation: Conversation, message: Message
    ) -> None:
        """Remember what ``message`` says once ``scope`` is closed: no connection is held while facts are embedded."""
        await scope.aclose()
        await self._remember(conversation, [message], _Draft(), (), None)

    async def _not_for_the_bot(
        self,
        services: ConversationServices,
        conversation: Conversation,
        message: Message,
        pending_ids: set[UUID],
        publisher: _Publisher,
    ) -> "_NotForTheBot | None":
        """Why the bot has nothing to write for ``message``; None when it answers it."""
        if message.id not in pending_ids:
            # Answered by a turn that ran while this one waited (or the original of a retried send). That turn
            # published the reply to the feed: only this requester needs it again.
            reply = await services.conversations.find_reply(conversation.id, message.id)
            if reply is not None:
                publisher.tell_requester(ReplyDone(reply))
                return _NotForTheBot.ANSWERED
            # Covered by an ownership notice before its turn began: no turn answers it, and none would keep it.
        elif conversation.assistant_may_reply:
            return None
        # A person has it (or is being asked for): the message reached the agent side through the feed. What the
        # customer tells a person, a new email or the order number, is remembered as what they tell the bot.
        return _NotForTheBot.TOLD_A_PERSON

    async def _request(
        self,
        services: ConversationServices,
        conversation: Conversation,
        message: Message,
        pending: Sequence[Message],
        earlier: Sequence[Message],
        question: str,
        prefetched: "asyncio.Task[list[float]] | None",
        stream: ReplyStream,
    ) -> tuple[ReplyRequest, int | None] | None:
        """What the model is given, and the feed id read before the last look at the owner.

        The request holds the passages, recalled facts, attachments, the window and the summary before it; the id
        becomes the publisher's guard (None without the bus). None when a person took over meanwhile: the model
        is then not called at all.
        """
        settings = self._settings
        # A follow-up ("how long does that take?") is searched with the earlier messages it continues.
        said_before = [item.content for item in earlier if item.role is MessageRole.CUSTOMER and item.content]
        query = search_text(with_context(question, said_before))
        # The prefetched vector fits when this turn answers just the message that started it; otherwise the
        # question's vector is computed once here and shared by retrieval and recall.
        vector = prefetched if query == search_text(message.content) else None
        if vector is None:
            vector = self._embed(query)
        # What needs no vector goes first, while the question is still being embedded.
        window = [*earlier[-settings.history_messages :], *pending]
        attached, images = await self._attachments(services, conversation.id, window)
        summary: str | None = None
        older = earlier[: -settings.history_messages]
        if older:
            # The conversation outgrew the window: what falls out of it is folded into the rolling summary.
            summary = await services.fold.execute(conversation.id, older)
        passages: Sequence[SearchHit] = ()
        memories: Sequence[RecalledFact] = ()
        current: Conversation | None
        owned_since: int | None
        name: str | None
        if query:
            search_query = settings.search_query(query)
            if vector is None:
                # Without a vector (no query embeddings wired) the search embeds the question: look after it.
                passages = await services.search.execute(search_query)
                memories, current, owned_since, name = await self._recall_and_look(conversation, query, None)
            else:
                # Recall and the last look run beside the search, on a connection of their own: the search keeps
                # PostgreSQL busy for a millisecond or two that the turn would otherwise wait out twice more. Their
                # scope opens now, while the question is still being embedded, so recall starts when the vector does.
                beside = asyncio.create_task(self._recall_and_look(conversation, query, vector))
                try:
                    passages = await services.search.execute(search_query, embedding=await vector)
                    memories, current, owned_since, name = await beside
                except BaseException:
                    beside.cancel()
                    await asyncio.gather(beside, return_exceptions=True)
                    raise
        else:
            owned_since = await self._feed_head(conversation.id)
            current = await services.conversations.get(conversation.id)
            name = await self._customer_name(services, conversation)
        if current is None:
            raise ConversationNotFoundError(ERASED_DURING_TURN)
        if not current.assistant_may_reply:
            stream.final_status = current.status
            return None
        history = [
            Turn("customer" if item.role is MessageRole.CUSTOMER else "assistant", item.content)
            for item in earlier[-settings.history_messages :]
            if item.role in {MessageRole.CUSTOMER, MessageRole.ASSISTANT, MessageRole.AGENT} and item.content
        ]
        said = [item.content for item in pending if item.content]
        request = ReplyRequest(
            question=question,
            newest=said[-1] if len(said) > 1 else None,
            hands_over_if_unanswered=self._policy.hands_over_if_unanswered(earlier),
            hands_over_if_frustrated=self._policy.hands_over_if_frustrated(earlier),
            history=history,
            passages=passages,
            attachments=attached,
            images=images,
            memories=memories,
            summary=summary,
            customer_name=name,
        )
        return request, owned_since

    async def _recall_and_look(
        self, conversation: Conversation, query: str, vector: Awaitable[Sequence[float]] | None
    ) -> tuple[Sequence[RecalledFact], Conversation | None, int | None, str | None]:
        """Facts for the question, then the last look at who owns the conversation before the model writes.

        Also the customer's name, read while the vector is still being computed, so the reply can greet them.

        The turn's first look is ~10 ms old by now (embedding, search), and a request for a person in between
        must not get a bot answer streamed over it. The scope is opened while the question's vector is still
        being computed, so recall starts the moment it is there. The feed's head is read before the look: a
        takeover the look misses is published after it, and the publisher's guard then stops the reply.
        """
        head = started_early(self._feed_head(conversation.id))
        async with self._open() as services:
            name = await self._customer_name(services, conversation)
            embedding = await vector if vector is not None else None
            memories = await services.recall.execute(conversation.customer_id, query, embedding=embedding)
            owned_since = await head
            return memories, await services.conversations.get(conversation.id), owned_since, name

    @staticmethod
    async def _customer_name(services: ConversationServices, conversation: Conversation) -> str | None:
        """The name the company's backend gave for the customer (None when it gave none)."""
        customer = await services.conversations.get_customer(conversation.customer_id)
        return customer.name if customer is not None else None

    async def _feed_head(self, conversation_id: UUID) -> int | None:
        """The feed's newest id, None when the bus is down (the reply then relies on polling the owner)."""
        try:
            return await self._bus.head(conversation_id)
        except CacheUnavailableError:
            return None

    async def _remember(
        self,
        conversation: Conversation,
        pending: Sequence[Message],
        draft: _Draft,
        recent: Sequence[Message],
        reply: Message | None,
    ) -> None:
        """Keep facts and fold history after the reply, never on the way to its first word.

        Facts the customer told are remembered; what the next turn's history window will no longer hold is folded
        into the rolling summary now, so the next turn only reads it.
        """
        window = self._settings.history_messages
        outgrown = [*recent, *([reply] if reply else [])][:-window] if window else []
        try:
            async with self._open() as services:
                if outgrown:
                    await services.fold.execute(conversation.id, outgrown)
                for item in pending:
                    await services.remember.execute(conversation.customer_id, item)
                source = pending[-1].id if pending else None
                for proposal in draft.proposed_facts:
                    await services.remember_proposed.execute(
                        conversation.customer_id, proposal, source_message_id=source
                    )
        except (DependencyUnavailableError, ConflictError) as error:
            # Memory is a convenience: a turn never fails because a fact could not be kept.
            _logger.warning("facts of %s not remembered: %s", conversation.id, error)

    async def _attachments(
        self, services: ConversationServices, conversation_id: UUID, window: Sequence[Message]
    ) -> tuple[list[AttachedText], list[AttachedImage]]:
        """The conversation's attached text, and the images of the messages in ``window`` (the newest first).

        Attachments are context for the conversation, not for one turn: "and what about the image?" is asked in the
        message after the one that carried it.
        """
        if not any(item.attachments for item in window):
            return [], []
        texts = await services.attachments.texts(conversation_id, limit_chars=self._settings.attachment_context_chars)
        sent = [info for item in window for info in item.attachments if info.content_type.startswith("image/")]
        images: list[AttachedImage] = []
        for info in sent[-MAX_CONTEXT_IMAGES:]:  # the newest, in the order they were sent
            found = await services.attachments.get(conversation_id, info.id)
            if found is not None:
                images.append(AttachedImage(info.filename, info.content_type, found[1]))
        return texts, images

    def _first_delta(self, draft: _Draft, started: float) -> None:
        if draft.ttft_ms is None:
            draft.ttft_ms = (time.perf_counter() - started) * 1000

    async def _write(
        self,
        request: ReplyRequest,
        draft: _Draft,
        publisher: _Publisher,
        holder: str,
        conversation_id: UUID,
        started: float,
    ) -> None:
        tools = _Tools(self._open, self._settings)
        events = self._llm.reply(request, tools)
        try:
            await self._consume(events, draft, publisher, holder, conversation_id, started)
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()  # stops the model's stream (and its HTTP request) when the turn ends early

    async def _consume(
        self,
        events: AsyncIterator[ReplyEvent],
        draft: _Draft,
        publisher: _Publisher,
        holder: str,
        conversation_id: UUID,
        started: float,
    ) -> None:
        renewed = checked = time.monotonic()
        first_words = True
        async for event in events:
            if publisher.erased:
                raise ConversationNotFoundError(ERASED_DURING_TURN)  # the feed refused this turn's words for good
            if publisher.taken_over:
                draft.stopped_for_a_person = True
                return  # the feed refused this turn's words: a person took over (the store step drops the draft)
            self._apply(event, draft, publisher, started)
            if first_words and draft.text:
                # The first words go out before anything else of the turn competes with them for the event loop
                # (with a fast model, storing the reply would otherwise run while they wait for their publish).
                first_words = False
                await publisher.delivered()
                # Delivered means queued for the requester: one more pass of the event loop lets its SSE relay
                # write them to the socket before this task goes on (storing a reply costs ~0.5 ms of the loop).
                await asyncio.sleep(0)
            now = time.monotonic()
            if now - renewed > self._settings.lease_ttl_s / 3:
                renewed = now
                await self._sessions.extend_reply_lease(conversation_id, holder, ttl_s=self._settings.lease_ttl_s)
            if now - checked > self._settings.ownership_check_s:
                checked = now
                if not await self._bot_owns(conversation_id):
                    # A person took over while the model wrote: not another word from the bot. The store step
                    # sees the new owner and drops the draft; the requester gets a `handoff` event.
                    _logger.info("reply in %s stopped: a person took over", conversation_id)
                    draft.stopped_for_a_person = True
                    return

    def _apply(self, event: ReplyEvent, draft: _Draft, publisher: _Publisher, started: float) -> None:
        if isinstance(event, TextDelta):
            # A half of a surrogate pair waits for its other half; one that never comes is dropped with the draft.
            text, draft.carried = storable_pieces(draft.carried, event.text)
            if text:
                self._first_delta(draft, started)
                draft.text.append(text)
                publisher.emit(ReplyDelta(text))
        elif isinstance(event, PassageCited):
            hit = event.passage
            if hit.chunk_id not in draft.citations:
                citation = Citation(hit.document_id, hit.version, hit.chunk_id, hit.title, hit.url, event.quote)
                draft.citations[hit.chunk_id] = citation
                publisher.emit(CitationAdded(citation))
        elif isinstance(event, ToolActivity):
            publisher.emit(ToolUsed(event.name, event.status))
        elif isinstance(event, FactRemembered):
            draft.proposed_facts.append(event)
        elif isinstance(event, HandoffSignal):
            draft.signals.append(event.reason_code)
            draft.evidence = event.detail or draft.evidence
        elif isinstance(event, ReplyCompleted):
            draft.usage = draft.usage + event.usage
            draft.cut_short = event.stop_reason == "max_tokens"
            if event.evidence_score is not None:
                draft.evidence = f"evidence_score={event.evidence_score:.3f}"

    async def _bot_owns(self, conversation_id: UUID) -> bool:
        """Whether the assistant may still reply, read in a short scope of its own (no transaction is kept)."""
        async with self._open() as services:
            conversation = await services.conversations.get(conversation_id)
        return conversation is not None and conversation.assistant_may_reply

    async def _store(
        self,
        conversation: Conversation,
        pending: Sequence[Message],
        recent: Sequence[Message],
        draft: _Draft,
        screening: Screening,
        publisher: _Publisher,
        stream: ReplyStream,
        started: float,
        *,
        interrupted: bool = False,
    ) -> Message | None:
        decision = self._policy.decide(screening, draft.signals, history=recent, evidence=draft.evidence)
        now = self._clock.now()
        # Whether the feed refused the model's words is known once they are published: settle it before the
        # owner is read under the row lock (nothing is held while waiting).
        await publisher.delivered()
        async with self._open() as services:
            current = await services.conversations.get(conversation.id, for_update=True)
            if current is None:
                raise ConversationNotFoundError(ERASED_DURING_TURN)
            if not current.assistant_may_reply or publisher.taken_over:
                # A person took over while this reply was written: it is dropped, never posted over them (also
                # when they gave the conversation back meanwhile: the customer never saw the rest of it).
                await services.uow.rollback()
                stream.final_status = current.status
                reason = current.handoff.reason_code if current.handoff else None
                publisher.tell_requester(HandoffChanged(current.status, reason))
                return None
            # The assistant owns it under the row lock: a takeover now waits for this commit and comes after the
            # reply, so what the turn says from here on (a handoff notice, `done`) is not guarded.
            publisher.unguard()
            changed = current
            if decision.action is HandoffAction.ESCALATE:
                changed, notice = await hand_over(
                    current,
                    decision,
                    now,
                    conversations=services.conversations,
                    outbox=services.outbox,
                    settings=self._handoffs,
                )
                self._say(draft, publisher, started, ("\n\n" if draft.text else "") + notice)
            elif decision.action is HandoffAction.OFFER_HUMAN and decision.reason_code is ReasonCode.FRUSTRATION:
                self._say(draft, publisher, started, FRUSTRATION_OFFER if draft.text else FRUSTRATION_OFFER.strip())
            elif now - current.last_activity_at >= ACTIVITY_GRANULARITY:
                changed = current.touch(now)
            reply = Message(
                id=new_id(),
                conversation_id=conversation.id,
                role=MessageRole.ASSISTANT,
                content="".join(draft.text).strip(),
                created_at=now,
                reply_to=tuple(item.id for item in pending),
                citations=tuple(draft.citations.values()),
                answer_status=answer_status_for(decision),
                decision=decision,
                usage=draft.usage,
                ttft_ms=draft.ttft_ms,
                total_ms=(time.perf_counter() - started) * 1000,
                interrupted=interrupted,
                # Replies the policy wrote without the model name the policy as their author.
                author="policy" if draft.by_policy else self._llm.name,
            )
            await services.conversations.add_message(reply)
            if changed is not current:
                await services.conversations.update(changed)
            await services.uow.commit()
        if self._spend is not None:
            # Before `done`: a client that sends again on `done` must find these tokens counted.
            await self._spend.execute(conversation.customer_id, reply.usage)
        stream.final_status = changed.status
        publisher.emit(ReplyDone(reply))
        if changed.status is not current.status:
            publisher.emit(HandoffChanged(changed.status, decision.reason_code))
            if self._summaries is not None:
                self._summaries.schedule(changed)
        try:
            state = SessionState(changed, tuple([*recent, reply][-self._settings.recent_messages :]))
            await self._sessions.save(state, ttl_s=self._settings.session_ttl_s)
        except CacheUnavailableError:
            _logger.warning("session state of %s not cached: Valkey is unavailable", conversation.id)
        return reply

    def _say(self, draft: _Draft, publisher: _Publisher, started: float, text: str) -> None:
        """Add words of the service's own (a handoff notice, an offer) to the reply as it streams."""
        self._first_delta(draft, started)
        draft.text.append(text)
        publisher.emit(ReplyDelta(text))
