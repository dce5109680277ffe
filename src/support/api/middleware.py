"""Request id, ``Server-Timing`` and access logging, as one pure ASGI middleware (cheap on the hot path)."""

import logging
import re
import time
import uuid

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_access = logging.getLogger("support.access")


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        presented = next((value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), None)
        request_id = presented.decode() if presented and _VALID_REQUEST_ID.match(presented) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed_ms = (time.perf_counter() - started) * 1000
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                headers.append((b"server-timing", f"app;dur={elapsed_ms:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await app(scope, receive, send_with_headers)
            finally:
                if scope["type"] == ScopeType.HTTP:
                    _access.info(
                        "%s %s %s %.1fms",
                        scope.get("method", "-"),
                        scope["path"],
                        status,
                        (time.perf_counter() - started) * 1000,
                    )

    return middleware
