"""Customers: profile and counts, memories (inspect, forget), export, erasure. Service and admin keys only."""

from typing import Annotated
from uuid import UUID

from dishka import FromDishka
from dishka.integrations.litestar import inject
from litestar import Controller, delete, get, post
from litestar.params import FromPath, QueryParameter

from support.api.auth import require_roles
from support.api.problems import problem_responses
from support.api.schemas.common import PageCursor
from support.api.schemas.customers import (
    CustomerExportResource,
    CustomerResource,
    CustomerTokenResource,
    ErasureResource,
    MemoryList,
    MemoryResource,
)
from support.application.conversations import IssueCustomerToken
from support.application.customers import (
    MAX_MEMORY_PAGE,
    EraseCustomer,
    ExportCustomer,
    FindCustomer,
    ForgetMemory,
    GetCustomerProfile,
    ListMemories,
)
from support.domain.identity import Role

customer_roles = require_roles(Role.ADMIN, Role.SERVICE)


class CustomersController(Controller):
    path = "/v1/customers"
    tags = ["customers"]  # noqa: RUF012
    guards = [customer_roles]  # noqa: RUF012

    @get(
        "/lookup",
        operation_id="FindCustomer",
        summary="Find a customer by your id for them",
        description=(
            "The customer whose `external_id` (the id your backend gave when starting their conversations) is the "
            "one given, with the same profile and counts as reading them by id: the way to a data-subject request's "
            "export or erasure. Nobody is created; 404 when there is no such customer."
        ),
        responses=problem_responses(401, 403, 404, 422),
    )
    @inject
    async def find_customer(
        self,
        external_id: Annotated[str, QueryParameter(min_length=1, max_length=300, description="Your id for them.")],
        use_case: FromDishka[FindCustomer],
    ) -> CustomerResource:
        return CustomerResource.of(await use_case.execute(external_id))

    @get(
        "/{customer_id:uuid}",
        operation_id="GetCustomer",
        summary="Read a customer",
        description="The profile and counts of what is held: conversations, messages, memories.",
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def get_customer(
        self, customer_id: FromPath[UUID], use_case: FromDishka[GetCustomerProfile]
    ) -> CustomerResource:
        return CustomerResource.of(await use_case.execute(customer_id))

    @post(
        "/{customer_id:uuid}/tokens",
        operation_id="IssueCustomerToken",
        summary="Issue a new customer token",
        description=(
            "A fresh token for the customer's browser before the one it has expires (`customer_token_expires_at`). "
            "Like the token `StartConversation` returns, it reaches every conversation of that customer and only "
            "those; tokens issued before stay valid until they expire. 404 for an unknown or erased customer."
        ),
        status_code=201,
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def issue_token(
        self, customer_id: FromPath[UUID], use_case: FromDishka[IssueCustomerToken]
    ) -> CustomerTokenResource:
        issued = await use_case.execute(customer_id)
        return CustomerTokenResource(
            customer_id=customer_id, customer_token=issued.token, customer_token_expires_at=issued.expires_at
        )

    @get(
        "/{customer_id:uuid}/memories",
        operation_id="ListCustomerMemories",
        summary="List what is remembered about a customer",
        description=(
            "Newest first, superseded and expired facts included (`current: false`) for audit; only current "
            "facts are ever given to the assistant."
        ),
        responses=problem_responses(401, 403, 404, 422),
    )
    @inject
    async def list_memories(
        self,
        customer_id: FromPath[UUID],
        use_case: FromDishka[ListMemories],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_MEMORY_PAGE)] = 50,
        cursor: PageCursor = None,
    ) -> MemoryList:
        listing = await use_case.execute(customer_id, limit=limit, cursor=cursor)
        return MemoryList(
            items=[MemoryResource.of(fact, listing.as_of) for fact in listing.items], next_cursor=listing.next_cursor
        )

    @delete(
        "/{customer_id:uuid}/memories/{memory_id:uuid}",
        operation_id="ForgetCustomerMemory",
        summary="Forget one memory",
        description="Deleted at once; an older value it had replaced is not recalled again.",
        status_code=204,
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def forget_memory(
        self, customer_id: FromPath[UUID], memory_id: FromPath[UUID], use_case: FromDishka[ForgetMemory]
    ) -> None:
        await use_case.execute(customer_id, memory_id)

    @get(
        "/{customer_id:uuid}/export",
        operation_id="ExportCustomer",
        summary="Export everything held about a customer",
        description=(
            "One JSON document: the profile, every conversation with all its messages and its rolling summary, "
            "and every memory (superseded ones included)."
        ),
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def export(self, customer_id: FromPath[UUID], use_case: FromDishka[ExportCustomer]) -> CustomerExportResource:
        return CustomerExportResource.of(await use_case.execute(customer_id))

    @delete(
        "/{customer_id:uuid}",
        operation_id="EraseCustomer",
        summary="Erase a customer",
        description=(
            "Deletes the customer, their conversations, messages, attachments, summaries, memories and webhook "
            "events, and their conversations' state and event feeds in Valkey. Not reversible."
        ),
        status_code=200,
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def erase(self, customer_id: FromPath[UUID], use_case: FromDishka[EraseCustomer]) -> ErasureResource:
        return ErasureResource.of(customer_id, await use_case.execute(customer_id))
