"""Human handoff: the customer's request, the agents' queue, claim/release/resolve and agent replies."""

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from dishka import FromDishka
from dishka.integrations.litestar import inject
from litestar import Controller, Request, delete, get, post
from litestar.openapi.spec import Operation, RequestBody, Schema
from litestar.params import Body, FromPath, FromQuery, QueryParameter

from support.api.auth import authenticate, require_roles
from support.api.controllers.conversations import IdempotencyKey, conversation_roles
from support.api.problems import problem_responses
from support.api.schemas.common import PageCursor
from support.api.schemas.conversations import ConversationResource, MessageResource
from support.api.schemas.handoffs import (
    AgentMessageRequest,
    AgentMessageResource,
    HandoffList,
    HandoffRequest,
    HandoffResource,
)
from support.application.conversations import MAX_PAGE_SIZE
from support.application.handoffs import (
    ClaimConversation,
    ListHandoffs,
    ReleaseConversation,
    RequestHandoff,
    ResolveConversation,
    SendAgentMessage,
    WithdrawHandoff,
)
from support.domain.conversations import ConversationStatus
from support.domain.identity import Role

agent_roles = require_roles(Role.AGENT, Role.ADMIN)


class QueueStatus(StrEnum):
    """The statuses the agents' queue holds; the document lists only these.

    An enum rather than a ``Literal``: Litestar documents an optional ``Literal`` as a ``type: [null, string]``
    enum that client generators turn into three copies of one enum type.
    """

    PENDING_HUMAN = ConversationStatus.PENDING_HUMAN.value
    HUMAN = ConversationStatus.HUMAN.value


# A dataclass of its own, so that its generated __init__ calls __post_init__.
@dataclass
class _OptionalBodyOperation(Operation):
    """An operation whose body may be left out.

    Litestar marks a declared body required even when it has a default, and documents ``X | None`` as ``oneOf [X,
    null]``. Left out is what ``required: false`` says; a ``null`` alternative beside it made openapi-python-client
    send its own "unset" marker as the JSON body.
    """

    def __post_init__(self) -> None:
        if not isinstance(self.request_body, RequestBody):
            return
        self.request_body.required = False
        for media in self.request_body.content.values():
            schema = media.schema
            if isinstance(schema, Schema) and schema.one_of:
                present = [item for item in schema.one_of if not (isinstance(item, Schema) and item.type == "null")]
                if len(present) == 1:
                    media.schema = present[0]


class HandoffQueueController(Controller):
    path = "/v1/handoffs"
    tags = ["handoffs"]  # noqa: RUF012
    guards = [agent_roles]  # noqa: RUF012

    @get(
        "/",
        operation_id="ListHandoffs",
        summary="The agents' queue",
        description=(
            "Conversations waiting for an agent (`pending_human`) and claimed ones (`human`), oldest request first, "
            "each with the handoff decision, the wait so far and a short summary for the agent. `mine=true` lists "
            "only the conversations the caller has claimed."
        ),
        responses=problem_responses(401, 403, 422),
    )
    @inject
    async def list_handoffs(
        self,
        request: Request[Any, Any, Any],
        use_case: FromDishka[ListHandoffs],
        status: FromQuery[QueueStatus | None] = None,
        mine: Annotated[
            bool, QueryParameter(description="Only the conversations the caller has claimed (their own queue).")
        ] = False,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 50,
        cursor: PageCursor = None,
    ) -> HandoffList:
        page = await use_case.execute(
            await authenticate(request),
            status=ConversationStatus(status) if status else None,
            mine=mine,
            limit=limit,
            cursor=cursor,
        )
        return HandoffList(items=[HandoffResource.of(item) for item in page.items], next_cursor=page.next_cursor)


class ConversationHandoffController(Controller):
    path = "/v1/conversations"
    tags = ["handoffs"]  # noqa: RUF012
    guards = [conversation_roles]  # noqa: RUF012

    @post(
        "/{conversation_id:uuid}/handoff",
        operation_id="RequestHandoff",
        summary="Ask for a person",
        description=(
            "The assistant stops and the conversation joins the agents' queue (`pending_human`); the customer is "
            "told who takes over and the expected wait. Asking again while queued or owned by an agent changes "
            "nothing."
        ),
        status_code=200,
        responses=problem_responses(400, 401, 403, 404, 409, 422),
        operation_class=_OptionalBodyOperation,
    )
    @inject
    async def request_handoff(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        use_case: FromDishka[RequestHandoff],
        data: Annotated[HandoffRequest | None, Body()] = None,
    ) -> ConversationResource:
        reason = data.reason if data else None
        return ConversationResource.of(await use_case.execute(await authenticate(request), conversation_id, reason))

    @delete(
        "/{conversation_id:uuid}/handoff",
        operation_id="WithdrawHandoff",
        summary="Withdraw the request for a person",
        description="While waiting for an agent: back to the assistant.",
        status_code=200,
        responses=problem_responses(401, 403, 404, 409),
    )
    @inject
    async def withdraw_handoff(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[UUID], use_case: FromDishka[WithdrawHandoff]
    ) -> ConversationResource:
        return ConversationResource.of(await use_case.execute(await authenticate(request), conversation_id))

    @post(
        "/{conversation_id:uuid}/claim",
        operation_id="ClaimConversation",
        summary="Claim a waiting conversation",
        description="Exclusive: when two agents claim at once, one wins and the other gets 409.",
        status_code=200,
        guards=[agent_roles],
        responses=problem_responses(401, 403, 404, 409),
    )
    @inject
    async def claim(
        self, request: Request[Any, Any, Any], conversation_id: FromPath[UUID], use_case: FromDishka[ClaimConversation]
    ) -> ConversationResource:
        return ConversationResource.of(await use_case.execute(await authenticate(request), conversation_id))

    @post(
        "/{conversation_id:uuid}/release",
        operation_id="ReleaseConversation",
        summary="Give the conversation back to the assistant",
        status_code=200,
        guards=[agent_roles],
        responses=problem_responses(401, 403, 404, 409),
    )
    @inject
    async def release(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        use_case: FromDishka[ReleaseConversation],
    ) -> ConversationResource:
        return ConversationResource.of(await use_case.execute(await authenticate(request), conversation_id))

    @post(
        "/{conversation_id:uuid}/resolve",
        operation_id="ResolveConversation",
        summary="Mark the conversation resolved",
        description=(
            "By the agent who owns it (an admin: any agent's), or by the customer side (the customer, a service or "
            "admin key) while the assistant has it. An agent gets 409 `not_claimed` for a conversation it has not "
            "claimed (the assistant's, or one waiting for an agent). The customer writing again reopens it with the "
            "assistant."
        ),
        status_code=200,
        responses=problem_responses(401, 403, 404, 409),
    )
    @inject
    async def resolve(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        use_case: FromDishka[ResolveConversation],
    ) -> ConversationResource:
        return ConversationResource.of(await use_case.execute(await authenticate(request), conversation_id))

    @post(
        "/{conversation_id:uuid}/agent-messages",
        operation_id="SendAgentMessage",
        summary="Reply as an agent",
        description=(
            "Delivered live to the customer's feed and WebSocket. Replying to a waiting conversation claims it. "
            "Send an `Idempotency-Key` header to make retries safe."
        ),
        status_code=201,
        guards=[agent_roles],
        responses=problem_responses(400, 401, 403, 404, 409, 422),
    )
    @inject
    async def agent_message(
        self,
        request: Request[Any, Any, Any],
        conversation_id: FromPath[UUID],
        data: Annotated[AgentMessageRequest, Body()],
        use_case: FromDishka[SendAgentMessage],
        idempotency_key: IdempotencyKey = None,
    ) -> AgentMessageResource:
        message, conversation, duplicate = await use_case.execute(
            await authenticate(request),
            conversation_id,
            data.content,
            idempotency_key=idempotency_key,
        )
        return AgentMessageResource(
            message=MessageResource.of(message),
            conversation=ConversationResource.of(conversation),
            duplicate=duplicate,
        )
