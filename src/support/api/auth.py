"""Bearer authentication and role guards, reusable by every controller."""

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from dishka import AsyncContainer
from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler

from support.api.limits import limit_request
from support.application.access import ConfirmFollowerAccess
from support.application.keys import AuthenticateApiKey
from support.domain.errors import AuthenticationError, PermissionDeniedError
from support.domain.identity import Principal, Role

Guard = Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]
PRINCIPAL_STATE_KEY = "principal"


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The bearer token of the Authorization header, or of ``?access_token=`` where browsers cannot set headers.

    Browsers' EventSource and WebSocket APIs send no custom headers, so reads (GET) and WebSocket handshakes
    also accept the token as a query parameter.
    """
    header = connection.headers.get("authorization")
    if not header:
        if connection.scope["type"] == ScopeType.WEBSOCKET or connection.scope.get("method") == "GET":
            return connection.query_params.get("access_token") or None
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The request's principal, resolved once per request and kept in its state."""
    cached = connection.state.get(PRINCIPAL_STATE_KEY)
    if isinstance(cached, Principal):
        return cached
    token = bearer_token(connection)
    if token is None:
        raise AuthenticationError("Send an API key as `Authorization: Bearer <key>`.")
    container: AsyncContainer = connection.state.dishka_container
    if connection.scope["type"] == ScopeType.WEBSOCKET:
        # A WebSocket holds a session-scoped container; key lookups need a request scope of their own.
        async with container() as request:
            principal = await (await request.get(AuthenticateApiKey)).execute(token)
    else:
        principal = await (await container.get(AuthenticateApiKey)).execute(token)
    connection.state[PRINCIPAL_STATE_KEY] = principal
    return principal


def access_check(
    connection: ASGIConnection[Any, Any, Any, Any], conversation_id: UUID
) -> Callable[[], Awaitable[Principal]]:
    """Asks again whether the connection's credentials still reach the conversation (:class:`ConfirmFollowerAccess`).

    For feeds and sockets, which outlive the request that authorized them. Each check runs in a request scope of
    its own on the application's container: the connection's scope holds no database connection while it follows.
    """
    token = bearer_token(connection)
    container: AsyncContainer = connection.app.state.dishka_container

    async def recheck() -> Principal:
        if token is None:
            raise AuthenticationError
        async with container() as scope:
            return await (await scope.get(ConfirmFollowerAccess)).execute(token, conversation_id)

    return recheck


def require_roles(*roles: Role) -> Guard:
    """A guard that admits principals holding one of ``roles``, within their rate limits (api/limits.py)."""
    allowed = frozenset(roles)

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        principal = await authenticate(connection)
        if principal.role not in allowed:
            names = ", ".join(sorted(role.value for role in allowed))
            raise PermissionDeniedError(f"This operation needs one of these roles: {names}.")
        await limit_request(connection, handler, principal)

    return guard


admin_only = require_roles(Role.ADMIN)
