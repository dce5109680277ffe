"""Conversations: start, read, send (JSON, SSE, WebSocket), the live feed, feedback, close, attachments."""

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, get_args
from uuid import UUID

import msgspec
from dishka import AsyncContainer, FromDishka
from dishka.integrations.litestar import inject
from litestar import Controller, Request, Response, WebSocket, get, post, websocket
from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException, WebSocketDisconnect
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.response import ServerSentEvent

from support.api.auth import access_check, authenticate, require_roles
from support.api.limits import COUNTS_AS_MESSAGE, enforce_rate_limits, frame_limit, receive_frame, send_admission
from support.api.openapi import document_event_stream
from support.api.problems import ReplyFailedError, problem_responses
from support.api.schemas.common import PageCursor
from support.api.schemas.conversations import (
    ConversationList,
    ConversationResource,
    FeedbackRequest,
    MessageList,
    MessageResource,
    SendMessageRequest,
    StartConversationRequest,
    StartedConversationResource,
    StreamEvent,
    TurnResource,
    encode_ws,
)
from support.api.streaming import (
    ACCESS_REFUSALS,
    event_stream,
    live_feeds,
    open_replies,
    resume_after,
    stream_failure,
    unless_stopping,
    until_refused,
)
from support.application.conversations import (
    DOCUMENT_TYPES,
    IMAGE_TYPES,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_PAGE_SIZE,
    CachedConversationState,
    CloseConversation,
    GetAttachment,
    GetConversation,
    IncomingFile,
    ListConversations,
    ListMessages,
    PrepareAttachments,
    SendMessage,
    StartConversation,
    SubmitFeedback,
    Turn,
)
from support.application.handoffs import SendAgentMessage, may_write_as_agent
from support.application.replies import REPLY_BUSY
from support.application.tasks import started_early
from support.config import Settings
from support.domain.conversations import ConversationStatus, clean_filename
from support.domain.errors import ContentTooLargeError, InvalidInputError, PermissionDeniedError, SupportError
from support.domain.feed import FeedEvent, MessagePosted, StreamFailed, Typing
from support.domain.identity import Principal, Role
from support.domain.limits import TooManyRequestsError
from support.ports.conversations import EventBus

_logger = logging.getLogger(__name__)

conversation_roles = require_roles(Role.ADMIN, Role.SERVICE, Role.AGENT, Role.CUSTOMER)
# Five attachments of 10 MB plus the form's own overhead; the use case enforces the per-file limits (413).
SEND_MAX_BODY_BYTES = 52 * 1024 * 1024
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Declared, so generated clients take the key as an argument of the call (a client-wide header sent it with every
# later call too, where it reads as the same key for another message: 422).
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name=IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        description=(
            "Makes retries safe: a repeated key returns the original result instead of acting twice (1 to 200 "
            "characters, unique per message of the conversation)."
        ),
    ),
]
# RFC 6455: the socket's credentials no longer reach the conversation (a revoked key, an erased customer).
WS_POLICY_VIOLATION = 1008
_DECODER = msgspec.json.Decoder(SendMessageRequest)

_STREAM_DESCRIPTION = """\
`text/event-stream`. Each event has an `id` (the conversation's event sequence number), an `event` name and JSON
`data`: `message` (a stored message), `delta` `{text}`, `citation`, `tool` `{name, status}`, `handoff`
`{status, reason_code}`, `done` (the stored assistant message), `error` (a problem; the stream ends).
A `: keepalive` comment is sent on idle streams. The payloads are the `data` of `StreamEvent`."""


# A dataclass of its own, so that its generated __init__ calls __post_init__.
@dataclass
class _SendMessageOperation(Operation):
    """Documents both request encodings of a send: JSON, or multipart with attachments."""

    def __post_init__(self) -> None:
        text = Schema(type=OpenAPIType.STRING, min_length=1, max_length=8000, description="The message text.")
        # A message may be files alone (checked_message(..., attached=True)): the form needs text or a file.
        form_text = Schema(
            type=OpenAPIType.STRING,
            max_length=8000,
            description="The message text; may be left out or empty when files are attached.",
        )
        self.request_body = RequestBody(
            # A send needs a body (without one it is a 422), but the document says optional: openapi-python-client
            # (0.29) generates a required body of several media types with a type it does not import, so the
            # generated send_message and stream_message would not import at all (its issue #1451).
            required=False,
            description="The message as JSON, or as a multipart form with files.",
            content={
                "application/json": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        properties={"content": text},
                        required=["content"],
                        additional_properties=False,
                    )
                ),
                "multipart/form-data": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.OBJECT,
                        # Text, files, or both: a form with neither is refused (422 invalid_input). Said in words,
                        # not as an anyOf of the two, which client generators read as a union of field-less
                        # variants and then send an empty form.
                        description="The message text, files, or both; a form with neither is refused.",
                        properties={
                            "content": form_text,
                            "files": Schema(
                                type=OpenAPIType.ARRAY,
                                max_items=5,
                                items=Schema(type=OpenAPIType.STRING, format="binary"),  # type: ignore[arg-type]
                                description="Up to 5 files of at most 10 MB: txt, md, html, pdf, png, jpeg.",
                            ),
                        },
                    )
                ),
            },
        )


@dataclass
class _StreamMessageOperation(_SendMessageOperation):
    """A send answered as server-sent events."""

    def __post_init__(self) -> None:
        super().__post_init__()
        document_event_stream(self, get_args(StreamEvent))


@dataclass
class _FollowOperation(Operation):
    """The conversation's feed as server-sent events."""

    def __post_init__(self) -> None:
        document_event_stream(self, get_args(StreamEvent))


# A dataclass of its own, so that its generated __init__ calls __post_init__.
@dataclass
class _AttachmentOperation(Operation):
    """Documents a download as the file's own type: one of those attachments may have."""

    def __post_init__(self) -> None:
        ok = self.responses.get("200") if self.responses else None
        if isinstance(ok, OpenAPIResponse):
            binary = Schema(type=OpenAPIType.STRING, format="binary")  # type: ignore[arg-type]
            # application/octet-stream first: client generators read a body by the first media type they know,
            # and would otherwise pick text/html and decode every file, images included, as text.
            types = ["application/octet-stream", *sorted(DOCUMENT_TYPES | IMAGE_TYPES.keys())]
            ok.content = {media_type: OpenAPIMediaType(schema=binary) for media_type in types}


def content_disposition(filename: str) -> str:
    """``attachment`` with the file's name per RFC 6266: an ASCII ``filename`` and the exact UTF-8 ``filename*``.

    Header values are Latin-1 on the wire, so a name such as ``日本語.txt`` cannot go in as it is; clients that
    read ``filename*`` (RFC 5987) get it exactly, older ones the fallback, in which anything that is not printable
    ASCII, and the quote, backslash and percent sign (which some clients decode), is an underscore. The name is
    cleaned again here for files stored before names were cleaned on the way in.
    """
    name = clean_filename(filename)
    fallback = "".join(char if " " <= char <= "~" and char not in '"\\%' else "_" for char in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{urllib.parse.quote(name, safe='')}"


async def _read_send(request: Request[Any, Any, Any], max_json_bytes: int) -> tuple[str, list[IncomingFile]]:
    """The message text and files of a JSON or multipart send.

    The route admits bodies the size of five attachments; one without files is held to the API's body limit.

    Raises:
        ContentTooLargeError: a JSON body over ``max_json_bytes``.
    """
    media_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        form = await request.form()
        content = form.get("content")
        uploads = [
            value for value in (form.getall("files") if "files" in form else []) if isinstance(value, UploadFile)
        ]
        files = [IncomingFile(value.filename or "file", value.content_type, await value.read()) for value in uploads]
        return (content if isinstance(content, str) else ""), files
    body = await _body_within(request, max_json_bytes)
    if not body:
        # No body says nothing, like a form without text or files: the message is empty (422), as the document,
        # which calls the body optional, leads a client to expect.
        return "", []
    try:
        data = _DECODER.decode(body)
    except msgspec.ValidationError as error:
        raise InvalidInputError(str(error)) from None
    except msgspec.DecodeError:
        raise ClientException("The body is not valid JSON.") from None
    return data.content, []


async def _body_within(request: Request[Any, Any, Any], limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed ``limit`` (by its length, or while it is read)."""
    too_large = ContentTooLargeError(
        f"A message without files is at most {limit} bytes (SUPPORT_HTTP__MAX_BODY_BYTES)."
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


class ConversationsController(Controller):
    path = "/v1/conversations"
    tags = ["conversations"]  # noqa: RUF012
    guards = [conversation_roles]  # noqa: RUF012

    @post(
        "/",
        operation_id="StartConversation",
        summary="Start a conversation",
        description=(
            "A service key names the customer by `external_id` (created on first sight); the response carries a "
            "customer token for that customer's browser, valid for that customer's conversations only. A customer "
            "token of an erased customer gets 404 `customer_not_found`."
        ),
        status_code=201,
        responses=problem_responses(400, 401, 403, 404, 422),
    )
    @inject
    async def start(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[StartConversationRequest],
        use_case: FromDishka[StartConversation],
    ) -> StartedConversationResource:
        customer = data.customer
        started = await use_case.execute(
            await authenticate(request),
            external_id=customer.external_id if customer else None,
            name=customer.name if customer else None,
            email=customer.email if customer else None,
            metadata=data.metadata,
        )
        conversation = started.conversation
        return StartedConversationResource(
            id=conversation.id,
            status=conversation.status,
            customer_id=conversation.customer_id,
            customer_external_id=started.customer.external_id,
            customer_token=started.customer_token,
            customer_token_expires_at=started.token_expires_at,
            metadata=dict(conversation.metadata),
            created_at=conversation.created_at,
        )

    @get(
        "/",
        operation_id="ListConversations",
        summary="List conversations",
        description="Newest activity first; a customer token lists its customer's conversations only.",
        responses=problem_responses(401, 403, 422),
    )
    @inject
    async def list_conversations(
        self,
        request: Request[Any, Any, Any],
        use_case: FromDishka[ListConversations],
        status: FromQuery[ConversationStatus | None] = None,
        customer_id: FromQuery[UUID | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 20,
        cursor: PageCursor = None,
    ) -> ConversationList:
        page = await use_case.execute(
            await authenticate(request), status=status, customer_id=customer_id, limit=limit, cursor=cursor
        )
        return ConversationList(
            items=[ConversationResource.of(item) for item in page.items], next_cursor=page.next_cursor
        )

    @get(
        "/{conversation_id:uuid}",
        operation_id="GetConversation",
        summary="Read a conversation",
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def get_conversation(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[UUID], use_case: FromDishka[GetConversation]
    ) -> ConversationResource:
        return ConversationResource.of(await use_case.execute(await authenticate(request), conversation_id))

    @get(
        "/{conversation_id:uuid}/messages",
        operation_id="ListMessages",
        summary="Read the transcript",
        description="Oldest first, cursor-paginated.",
        responses=problem_responses(401, 403, 404, 422),
    )
    @inject
    async def list_messages(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        use_case: FromDishka[ListMessages],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 50,
        cursor: PageCursor = None,
    ) -> MessageList:
        page = await use_case.execute(await authenticate(request), conversation_id, limit=limit, cursor=cursor)
        return MessageList(items=[MessageResource.of(item) for item in page.items], next_cursor=page.next_cursor)

    async def _send(
        self,
        request: Request[Any, Any, Any],
        conversation_id: UUID,
        use_case: SendMessage,
        prepare: PrepareAttachments,
        idempotency_key: str | None,
        settings: Settings,
    ) -> Turn:
        admission = send_admission(request)
        try:
            content, files = await _read_send(request, settings.http.max_body_bytes)
            uploads = await prepare.execute(files) if files else []
        except Exception:
            if admission is not None:
                await admission  # a spent rate limit answers 429 before whatever is wrong with the body
            raise
        return await use_case.execute(
            await authenticate(request),
            conversation_id,
            content,
            idempotency_key=idempotency_key,
            uploads=uploads,
            admission=admission,
        )

    @post(
        "/{conversation_id:uuid}/messages",
        operation_id="SendMessage",
        summary="Send a message and get the reply",
        description=(
            "JSON `{content}`, or multipart with `content` and up to 5 `files` (text, files or both: a message "
            "may be files alone, with empty `content`). The customer message is stored "
            "before the reply is written. Send an `Idempotency-Key` header to make retries safe: a repeated key "
            "returns the original message and reply (`duplicate: true`). While a human owns the conversation "
            "`reply` is null."
        ),
        status_code=200,
        request_max_body_size=SEND_MAX_BODY_BYTES,
        operation_class=_SendMessageOperation,
        opt=COUNTS_AS_MESSAGE,
        responses=problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503),
    )
    @inject
    async def send(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        use_case: FromDishka[SendMessage],
        prepare: FromDishka[PrepareAttachments],
        settings: FromDishka[Settings],
        idempotency_key: IdempotencyKey = None,
    ) -> TurnResource:
        turn = await self._send(request, conversation_id, use_case, prepare, idempotency_key, settings)
        result = await unless_stopping(turn.result(), open_replies(request.app))
        if result.failure is not None and result.failure.code != REPLY_BUSY:
            # The message is stored; the reply failed (a 200 with `reply: null` read as "a person has it"). A busy
            # reply is no failure: the message is answered with the next reply, and a retry would store it twice.
            raise ReplyFailedError(result.failure.status, result.failure.code, result.failure.detail)
        return TurnResource(
            message=MessageResource.of(result.message),
            reply=MessageResource.of(result.reply) if result.reply else None,
            conversation_status=result.conversation_status,
            duplicate=turn.duplicate,
        )

    @post(
        "/{conversation_id:uuid}/messages/stream",
        operation_id="StreamMessage",
        summary="Send a message and stream the reply (SSE)",
        description=(
            "Like `SendMessage`, answered as server-sent events: the stored message is echoed (`message`), then "
            "`delta`, `citation`, `tool` events and `done` with the stored reply.\n\n" + _STREAM_DESCRIPTION
        ),
        status_code=200,
        request_max_body_size=SEND_MAX_BODY_BYTES,
        operation_class=_StreamMessageOperation,
        opt=COUNTS_AS_MESSAGE,
        responses={
            200: ResponseSpec(
                StreamEvent, media_type="text/event-stream", description="The reply as events", generate_examples=False
            ),
            **problem_responses(400, 401, 403, 404, 409, 413, 415, 422, 429),
        },
    )
    @inject
    async def send_stream(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        use_case: FromDishka[SendMessage],
        prepare: FromDishka[PrepareAttachments],
        settings: FromDishka[Settings],
        idempotency_key: IdempotencyKey = None,
    ) -> ServerSentEvent:
        turn = await self._send(request, conversation_id, use_case, prepare, idempotency_key, settings)
        return event_stream(turn.events(), settings.conversations.heartbeat_s, replies=open_replies(request.app))

    @get(
        "/{conversation_id:uuid}/events",
        operation_id="FollowConversation",
        summary="Follow the conversation live (SSE)",
        description=(
            "Every event of the conversation from every process. Resume with `Last-Event-ID: N` (events after N); "
            "`Last-Event-ID: 0` replays what is retained. Browsers may pass `?access_token=` and `?last_event_id=`."
            "\n\n" + _STREAM_DESCRIPTION
        ),
        operation_class=_FollowOperation,
        responses={
            200: ResponseSpec(
                StreamEvent,
                media_type="text/event-stream",
                description="The conversation's events",
                generate_examples=False,
            ),
            **problem_responses(401, 403, 404, 422),
        },
    )
    @inject
    async def follow(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        state: FromDishka[CachedConversationState],
        bus: FromDishka[EventBus],
        settings: FromDishka[Settings],
        # Read by resume_after, as the header and the socket's query are (Litestar's int would take "1e3" and
        # refuse "007"); stated as digits here (absent: live only).
        last_event_id: Annotated[
            str | None,
            QueryParameter(
                schema_extra={"one_of": None, "type": OpenAPIType.STRING, "pattern": "^[0-9]+$"},
                description="Resume after this event id (as `Last-Event-ID`, which wins when both are sent).",
            ),
        ] = None,
    ) -> ServerSentEvent:
        await state.execute(await authenticate(request), conversation_id)
        header = request.headers.get("last-event-id")
        if header is not None:
            after: int | None = resume_after(header, "Last-Event-ID")
        else:
            after = None if last_event_id is None else resume_after(last_event_id, "last_event_id")
        events = until_refused(
            bus.subscribe(conversation_id, after=after),
            access_check(request, conversation_id),
            settings.conversations.access_recheck_s,
        )
        return event_stream(events, settings.conversations.heartbeat_s, live_feeds(request.app))

    @post(
        "/{conversation_id:uuid}/feedback",
        operation_id="SubmitFeedback",
        summary="Rate the conversation",
        description="A rating from 1 to 5 and an optional comment; a later rating replaces it.",
        status_code=200,
        responses=problem_responses(400, 401, 403, 404, 422),
    )
    @inject
    async def feedback(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        data: JSONBody[FeedbackRequest],
        use_case: FromDishka[SubmitFeedback],
    ) -> ConversationResource:
        conversation = await use_case.execute(await authenticate(request), conversation_id, data.rating, data.comment)
        return ConversationResource.of(conversation)

    @post(
        "/{conversation_id:uuid}/close",
        operation_id="CloseConversation",
        summary="Close the conversation",
        description="It takes no new messages afterwards; closing twice is harmless.",
        status_code=200,
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def close(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[UUID], use_case: FromDishka[CloseConversation]
    ) -> ConversationResource:
        return ConversationResource.of(await use_case.execute(await authenticate(request), conversation_id))

    @get(
        "/{conversation_id:uuid}/attachments/{attachment_id:uuid}",
        operation_id="DownloadAttachment",
        summary="Download an attachment",
        operation_class=_AttachmentOperation,
        responses={
            200: ResponseSpec(
                bytes, media_type="application/octet-stream", description="The file", generate_examples=False
            ),
            **problem_responses(401, 403, 404),
        },
    )
    @inject
    async def attachment(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        attachment_id: FromPath[UUID],
        use_case: FromDishka[GetAttachment],
    ) -> Response[bytes]:
        info, data = await use_case.execute(await authenticate(request), conversation_id, attachment_id)
        return Response(
            data,
            media_type=info.content_type,
            headers={
                "Content-Disposition": content_disposition(info.filename),
                "X-Content-Type-Options": "nosniff",
                "ETag": f'"{info.sha256}"',
            },
        )

    @websocket("/{conversation_id:uuid}/ws")
    async def ws(self, socket: WebSocket[Any, Any, Any], conversation_id: FromPath[UUID]) -> None:
        """Send and receive the conversation's events over one socket (see docs/api.md)."""
        container: AsyncContainer = socket.state.dishka_container
        _check_origin(socket)
        principal = await authenticate(socket)
        async with container() as scope:
            await (await scope.get(CachedConversationState)).execute(principal, conversation_id)
        bus = await container.get(EventBus)
        settings = await container.get(Settings)
        after_text = socket.query_params.get("last_event_id")
        after = None if after_text is None else resume_after(after_text, "last_event_id")
        recheck = access_check(socket, conversation_id)
        await socket.accept()
        events = until_refused(
            bus.subscribe(conversation_id, after=after), recheck, settings.conversations.access_recheck_s
        )
        relay = asyncio.create_task(_relay(socket, events))
        side = "customer" if principal.role in {Role.CUSTOMER, Role.SERVICE} else "agent"
        max_frame = frame_limit(settings.conversations.max_message_chars)
        idle_s = settings.conversations.heartbeat_s * 4
        typing = TypingRelay()
        watchers: set[asyncio.Task[None]] = set()  # the turns this socket started, told of their failures
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(receive_frame(socket, max_frame), idle_s)
                except TimeoutError:
                    continue
                await _handle_frame(socket, container, bus, recheck, conversation_id, side, frame, typing, watchers)
        except (WebSocketDisconnect, asyncio.CancelledError):
            pass
        finally:
            await _stop(relay)
            for watcher in watchers:
                watcher.cancel()
            if typing.active:
                # The other side would show "typing…" for good: a closed socket stops typing.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(bus.signal(conversation_id, Typing(side, active=False)), 1.0)


def _check_origin(socket: WebSocket[Any, Any, Any]) -> None:
    """Refuse a browser page of another origin, as CORS refuses its requests (sockets are not subject to CORS).

    The app's own CORS configuration decides (wildcards such as https://*.example.com included); without one,
    and for clients that are not browsers (no ``Origin``), nothing is refused.

    Raises:
        PermissionDeniedError: the handshake's ``Origin`` is one CORS would refuse.
    """
    cors, origin = socket.app.cors_config, socket.headers.get("origin")
    if cors is not None and origin is not None and not cors.is_origin_allowed(origin):
        raise PermissionDeniedError("This origin may not open sockets (SUPPORT_HTTP__CORS_ORIGINS).")


class TypingRelay:
    """Which of a socket's typing frames go on to the other side: every change, and a repeat once a second.

    Clients often send one frame per keystroke; each relayed one is a publish to every process. A repeat of the
    same state within ``interval_s`` says nothing new, so it is dropped (typing is best-effort, never an error).
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval_s = interval_s
        self._last: tuple[bool, float] | None = None

    @property
    def active(self) -> bool:
        """Whether the last relayed frame said the sender is typing."""
        return self._last is not None and self._last[0]

    def due(self, active: bool, now: float) -> bool:
        """Whether a typing frame saying ``active`` at ``now`` is relayed (and then counts as the last one)."""
        if self._last is not None and self._last[0] == active and now - self._last[1] < self._interval_s:
            return False
        self._last = (active, now)
        return True


async def _stop(relay: "asyncio.Task[None]") -> None:
    # A cancellation can be lost on Python 3.11 when it lands as an awaited operation completes (seen in the
    # feed relay when a socket closes right after a send; the root cause is not pinned down): cancel again rather
    # than let one socket hold up shutdown.
    for _ in range(5):
        relay.cancel()
        done, _pending = await asyncio.wait({relay}, timeout=0.5)
        if done:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                relay.result()
            return
    _logger.warning("a WebSocket feed relay did not stop after five cancellations")


async def _relay(socket: WebSocket[Any, Any, Any], events: AsyncGenerator[FeedEvent, None]) -> None:
    try:
        async for event in events:
            await socket.send_text(encode_ws(event))
            if isinstance(event.payload, StreamFailed):
                # The caller's access was withdrawn (until_refused): the error frame says why, the close ends it.
                await _close_refused(socket, event.payload.code)
                return
    except SupportError as error:
        with contextlib.suppress(Exception):
            await socket.send_text(encode_ws(stream_failure(error)))
            await socket.close(code=1011)
    finally:
        with contextlib.suppress(Exception):
            await events.aclose()


async def _close_refused(socket: WebSocket[Any, Any, Any], code: str) -> None:
    with contextlib.suppress(Exception):
        await socket.close(code=WS_POLICY_VIOLATION, reason=code)


class PingFrame(msgspec.Struct, frozen=True, tag_field="type", tag="ping"):
    """Answered with a pong carrying the same ``data``; other fields are ignored (keepalives often stamp a time)."""

    data: Any = None


class TypingFrame(msgspec.Struct, frozen=True, tag_field="type", tag="typing", forbid_unknown_fields=True):
    """The sender started (or stopped) typing."""

    active: bool = True


class SendFrame(msgspec.Struct, frozen=True, tag_field="type", tag="send", forbid_unknown_fields=True):
    """A message, as ``POST …/messages`` sends one."""

    content: str
    idempotency_key: str | None = None


ClientFrame = PingFrame | TypingFrame | SendFrame
# Frames are held to their shape as request bodies are: a field of the wrong type or an unknown one (a `metadata`
# the socket would silently drop) is refused, not guessed at.
_FRAME: msgspec.json.Decoder[ClientFrame] = msgspec.json.Decoder(ClientFrame)


class _FrameKind(msgspec.Struct, frozen=True):
    type: Any = None


_FRAME_KIND = msgspec.json.Decoder(_FrameKind)


class FrameError(Exception):
    """A client frame that is not one of the frames (``invalid_frame``), or a send frame's field (``invalid_input``)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def decode_frame(data: str | bytes) -> ClientFrame:
    """The frame ``data`` holds.

    Raises:
        FrameError: it is not JSON text, not one of the frames, or a frame with a field of the wrong type or an
            unknown one; the detail names the field.
    """
    try:
        return _FRAME.decode(data)
    except msgspec.ValidationError as error:  # first: it is a kind of DecodeError
        try:
            kind = _FRAME_KIND.decode(data).type
        except msgspec.ValidationError:  # not an object
            kind = None
        except msgspec.DecodeError:  # not text after all: a lone surrogate past the field that failed first
            raise _not_text() from None
        if not isinstance(kind, str):
            kind = None
        if kind == "send":
            # As a send request's body would be (422 invalid_input).
            raise FrameError("invalid_input", f"A send frame: {error}.") from None
        if kind in {"typing", "ping"}:
            raise FrameError("invalid_frame", f"A {kind} frame: {error}.") from None
        raise FrameError("invalid_frame", "Send frames of type send, typing or ping.") from None
    except msgspec.DecodeError:
        raise _not_text() from None


def _not_text() -> FrameError:
    # msgspec also says "truncated" of a lone surrogate escape (\ud800): not text, whatever it says.
    return FrameError("invalid_frame", "A frame is a JSON object in UTF-8 text, with no lone surrogates (\\ud800).")


async def _handle_frame(
    socket: WebSocket[Any, Any, Any],
    container: AsyncContainer,
    bus: EventBus,
    recheck: Callable[[], Awaitable[Principal]],
    conversation_id: UUID,
    side: str,
    data: str | bytes,
    typing: "TypingRelay",
    watchers: set["asyncio.Task[None]"],
) -> None:
    """One client frame: ``{"type": "send"|"typing"|"ping", ...}``."""
    try:
        frame = decode_frame(data)
    except FrameError as error:
        await _send_error(socket, error.code, error.detail)
        return
    if isinstance(frame, PingFrame):
        await socket.send_json({"type": "pong", "data": frame.data})
    elif isinstance(frame, TypingFrame):
        if typing.due(frame.active, time.monotonic()) and (
            side == "customer" or not frame.active or await _agent_may_write(container, recheck, conversation_id)
        ):
            await bus.signal(conversation_id, Typing(side, frame.active))
    else:
        try:
            await _send_frame(socket, container, recheck, conversation_id, frame, watchers)
        except SupportError as error:
            retry = {"retry_after_s": error.retry_after_s} if isinstance(error, TooManyRequestsError) else {}
            await _send_error(socket, error.code, error.message, **retry)


async def _agent_may_write(
    container: AsyncContainer, recheck: Callable[[], Awaitable[Principal]], conversation_id: UUID
) -> bool:
    """Whether an agent's "typing…" means anything: it could send now (a waiting conversation, or its own).

    A colleague watching another agent's conversation, or the assistant's, cannot write there: its typing showed
    the customer "agent typing" for words that never came (found by an exploratory test).
    """
    try:
        principal = await recheck()
        async with container() as scope:
            conversation = await (await scope.get(CachedConversationState)).execute(principal, conversation_id)
    except SupportError:
        return False  # typing is best-effort: a store that cannot answer never ends the socket (a review)
    return may_write_as_agent(principal, conversation)


async def _send_error(socket: WebSocket[Any, Any, Any], code: str, detail: str, **extra: Any) -> None:
    await socket.send_json({"type": "error", "data": {"code": code, "detail": detail, **extra}})


async def _send_frame(
    socket: WebSocket[Any, Any, Any],
    container: AsyncContainer,
    recheck: Callable[[], Awaitable[Principal]],
    conversation_id: UUID,
    frame: SendFrame,
    watchers: set["asyncio.Task[None]"],
) -> None:
    """A ``send`` frame: a customer message (with its turn) or, from an agent's socket, an agent message."""
    content, idempotency_key = frame.content, frame.idempotency_key
    try:
        # Asked again before every message: the key may have been revoked since the socket opened.
        principal = await recheck()
    except ACCESS_REFUSALS as error:
        await _send_error(socket, error.code, error.message)
        await _close_refused(socket, error.code)
        return
    if principal.role is Role.AGENT:
        # An agent's socket sends agent messages; they reach every feed through the bus.
        async with container() as scope:
            agent_message = await scope.get(SendAgentMessage)
            await agent_message.execute(principal, conversation_id, content, idempotency_key=idempotency_key)
        return
    # A send frame counts like a send request: the caller's limits and the conversation's (a retry of a stored
    # message gets its original over the limit, as on HTTP).
    admission = started_early(enforce_rate_limits(socket, principal, conversation_id=conversation_id))
    async with container() as scope:
        use_case = await scope.get(SendMessage)
        turn = await use_case.execute(
            principal, conversation_id, content, idempotency_key=idempotency_key, admission=admission
        )
    # The reply reaches this socket through the feed; the echo confirms the send with its id.
    if turn.duplicate:
        await socket.send_text(encode_ws(FeedEvent(0, MessagePosted(turn.message))))
    else:
        # A failed turn is told to its requester only (the feed's followers keep following): this socket.
        watchers.add(asyncio.create_task(_tell_failure(socket, turn)))
        watchers.difference_update({task for task in watchers if task.done()})


async def _tell_failure(socket: WebSocket[Any, Any, Any], turn: Turn) -> None:
    """Send the turn's error, if it fails, to the socket that sent its message; the socket stays open."""
    async for event in turn.events():
        if isinstance(event.payload, StreamFailed):
            with contextlib.suppress(Exception):
                await socket.send_text(encode_ws(event))
