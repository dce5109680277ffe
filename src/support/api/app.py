"""The Litestar application: routes, problem handling, OpenAPI, middleware. Wiring lives in ``support.container``."""

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

from support.api.controllers.keys import ApiKeysController
from support.api.controllers.system import SystemController
from support.api.middleware import request_context_middleware
from support.api.problems import EXCEPTION_HANDLERS
from support.config import Settings

API_DESCRIPTION = """\
Self-hostable AI customer support: answers from your help center with citations, remembers customers,
and hands conversations to human agents. Authenticate with `Authorization: Bearer <key>`.
Errors are RFC 9457 `application/problem+json` documents with a stable `code`."""


def build_app(settings: Settings, container: AsyncContainer) -> Litestar:
    """Create the application around an already built container, which is closed on shutdown."""
    app_version = version("support")

    async def close_container() -> None:
        await container.close()

    app = Litestar(
        route_handlers=[SystemController, ApiKeysController],
        exception_handlers=EXCEPTION_HANDLERS,
        cors_config=CORSConfig(allow_origins=list(settings.http.cors_origins)) if settings.http.cors_origins else None,
        request_max_body_size=settings.http.max_body_bytes,
        on_shutdown=[close_container],
        state=State({"version": app_version, "started_at": datetime.now(UTC)}),
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
            ],
            use_handler_docstrings=False,
        ),
        debug=False,
    )
    setup_dishka(container, app)
    # Outermost, around Litestar's router: unknown routes and wrong methods get a request id and timing too.
    app.asgi_handler = request_context_middleware(app.asgi_handler)
    return app
