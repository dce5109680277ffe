"""The Litestar application: routes, problem handling, OpenAPI, middleware. Wiring lives in ``support.container``."""

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from importlib.metadata import version

from dishka import AsyncContainer
from dishka.integrations.litestar import setup_dishka
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme, Tag

from support.api.controllers.conversations import ConversationsController
from support.api.controllers.customers import CustomersController
from support.api.controllers.handoffs import ConversationHandoffController, HandoffQueueController
from support.api.controllers.keys import ApiKeysController
from support.api.controllers.knowledge import KnowledgeController
from support.api.controllers.system import SystemController
from support.api.controllers.webhooks import WebhooksController
from support.api.limits import rate_limit_headers
from support.api.middleware import request_context_middleware
from support.api.openapi import complete_openapi_document
from support.api.problems import EXCEPTION_HANDLERS, DecodingRequest
from support.api.streaming import LIVE_FEEDS_STATE, OPEN_REPLIES_STATE, LiveFeeds, OpenReplies
from support.application.knowledge import VerifyKnowledgeIndex
from support.config import Settings
from support.ports.errors import DependencyUnavailableError

_logger = logging.getLogger(__name__)

# Response headers a browser's script may read across origins: when to retry, the limits, the id to quote.
EXPOSED_HEADERS = ("Retry-After", "RateLimit", "RateLimit-Policy", "X-Request-ID")

API_DESCRIPTION = """\
Self-hostable AI customer support: answers from your help center with citations, remembers customers,
and hands conversations to human agents. Authenticate with `Authorization: Bearer <key>`.
Errors are RFC 9457 `application/problem+json` documents with a stable `code`."""


def build_app(
    settings: Settings,
    container: AsyncContainer,
    *,
    on_startup: Sequence[Callable[[], Awaitable[None]]] = (),
    on_shutdown: Sequence[Callable[[], Awaitable[None]]] = (),
) -> Litestar:
    """Create the application around an already built container, which is closed on shutdown."""
    app_version = version("support")

    async def close_container() -> None:
        await container.close()

    async def check_knowledge_index() -> None:
        # Loads the embedder before the first request and refuses to start when its vectors don't fit.
        try:
            async with container() as request:
                await (await request.get(VerifyKnowledgeIndex)).execute()
        except DependencyUnavailableError:
            _logger.warning("could not verify the knowledge index at start: a dependency is unavailable")

    app = Litestar(
        route_handlers=[
            SystemController,
            ApiKeysController,
            KnowledgeController,
            ConversationsController,
            CustomersController,
            ConversationHandoffController,
            HandoffQueueController,
            WebhooksController,
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=DecodingRequest,
        cors_config=(
            # A browser's script reads only the headers it is allowed to: a widget must see when to retry.
            CORSConfig(allow_origins=list(settings.http.cors_origins), expose_headers=list(EXPOSED_HEADERS))
            if settings.http.cors_origins
            else None
        ),
        request_max_body_size=settings.http.max_body_bytes,
        on_startup=[check_knowledge_index, *on_startup],
        on_shutdown=[*on_shutdown, close_container],
        state=State(
            {
                "version": app_version,
                "started_at": datetime.now(UTC),
                LIVE_FEEDS_STATE: LiveFeeds(),
                OPEN_REPLIES_STATE: OpenReplies(),
            }
        ),
        openapi_config=OpenAPIConfig(
            title="support",
            version=app_version,
            description=API_DESCRIPTION,
            path="/schema",
            render_plugins=[ScalarRenderPlugin(path="/")],
            components=Components(
                security_schemes={
                    "BearerKey": SecurityScheme(
                        type="http", scheme="bearer", description="An API key, or a customer token."
                    )
                }
            ),
            security=[{"BearerKey": []}],
            tags=[
                Tag(name="system", description="Service information and health"),
                Tag(name="keys", description="API keys (admin)"),
                Tag(name="webhooks", description="Webhook endpoints and their deliveries (admin)"),
                Tag(name="knowledge", description="Knowledge base: documents and retrieval (admin)"),
                Tag(name="customers", description="Customers: profile, memories, export, erasure (service, admin)"),
                Tag(
                    name="conversations",
                    description="Conversations: messages, streamed replies (SSE, WebSocket), the live feed",
                ),
            ],
            use_handler_docstrings=False,
        ),
        debug=False,
        # support.observability owns logging; Litestar's default would replace our handlers at build time.
        logging_config=None,
    )
    setup_dishka(container, app)
    complete_openapi_document(app)
    # Outermost, around Litestar's router: unknown routes and wrong methods get a request id and timing too.
    app.asgi_handler = request_context_middleware(rate_limit_headers(app.asgi_handler))
    return app
