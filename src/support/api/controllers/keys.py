from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from dishka import FromDishka
from dishka.integrations.litestar import inject
from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody, QueryParameter

from support.api.auth import admin_only
from support.api.problems import problem_responses
from support.api.schemas.common import PageCursor
from support.application.keys import MAX_KEY_NAME_LENGTH, MAX_PAGE_SIZE, CreateApiKey, ListApiKeys, RevokeApiKey
from support.domain.identity import ApiKey, Role

KeyRole = Literal["admin", "agent", "service"]


class CreateApiKeyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_NAME_LENGTH)]
    role: KeyRole


class ApiKeyResource(msgspec.Struct, frozen=True):
    id: UUID
    name: str
    role: Role
    hint: str
    active: bool
    created_at: datetime
    revoked_at: datetime | None


class CreatedApiKey(msgspec.Struct, frozen=True):
    id: UUID
    name: str
    role: Role
    hint: str
    created_at: datetime
    secret: str


class ApiKeyList(msgspec.Struct, frozen=True):
    items: list[ApiKeyResource]
    next_cursor: str | None


def _resource(key: ApiKey) -> ApiKeyResource:
    return ApiKeyResource(
        id=key.id,
        name=key.name,
        role=key.role,
        hint=key.hint,
        active=key.is_active,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


class ApiKeysController(Controller):
    path = "/v1/keys"
    tags = ["keys"]  # noqa: RUF012
    guards = [admin_only]  # noqa: RUF012

    @post(
        operation_id="CreateApiKey",
        summary="Create an API key",
        description="The secret is in this response only; it is stored as a hash and never shown again.",
        responses=problem_responses(400, 401, 403, 422),
    )
    @inject
    async def create(self, data: JSONBody[CreateApiKeyRequest], use_case: FromDishka[CreateApiKey]) -> CreatedApiKey:
        issued = await use_case.execute(data.name, Role(data.role))
        key = issued.key
        return CreatedApiKey(
            id=key.id, name=key.name, role=key.role, hint=key.hint, created_at=key.created_at, secret=issued.secret
        )

    @get(
        operation_id="ListApiKeys",
        summary="List API keys",
        description="Newest first, revoked keys included, cursor-paginated; secrets are never listed.",
        responses=problem_responses(401, 403, 422),
    )
    @inject
    async def list_keys(
        self,
        use_case: FromDishka[ListApiKeys],
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_PAGE_SIZE)] = 50,
        cursor: PageCursor = None,
    ) -> ApiKeyList:
        page = await use_case.execute(limit=limit, cursor=cursor)
        return ApiKeyList(items=[_resource(key) for key in page.items], next_cursor=page.next_cursor)

    @delete(
        "/{key_id:uuid}",
        operation_id="RevokeApiKey",
        summary="Revoke an API key",
        description="The key stops working at once. Revoking an already revoked key succeeds.",
        status_code=204,
        responses=problem_responses(401, 403, 404),
    )
    @inject
    async def revoke(self, key_id: FromPath[UUID], use_case: FromDishka[RevokeApiKey]) -> None:
        await use_case.execute(key_id)
