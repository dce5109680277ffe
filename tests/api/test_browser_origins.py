"""A chat widget on a page of an allowed origin: what its scripts may read, and what other origins may not open."""

import httpx
import msgspec
import pytest
import websockets

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.config import Settings
from support.container import create_app
from tests.api.conftest import serve
from tests.api.test_conversations import start
from tests.api.test_rate_limits import assert_limited, limits_of
from tests.conftest import ADMIN_KEY, shared_embedder_provider

ORIGIN = "http://localhost:5173"


def with_origin(settings: Settings, **limits: int) -> Settings:
    return msgspec.structs.replace(
        settings,
        limits=limits_of(**limits),
        http=msgspec.structs.replace(settings.http, cors_origins=(ORIGIN, "https://*.example.com")),
    )


async def test_a_browser_on_an_allowed_origin_may_read_when_to_retry(
    chat_settings: Settings, embedder: OnnxMiniLMEmbedder
) -> None:
    # Without Access-Control-Expose-Headers a widget's script sees a 429 but not its Retry-After.
    settings = with_origin(chat_settings, per_key=1)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Origin": ORIGIN}
    async with (
        serve(create_app(settings, shared_embedder_provider(embedder))) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        allowed = await http.get("/v1/keys", headers=headers)
        refused = await http.get("/v1/keys", headers=headers)

    assert allowed.status_code == 200
    assert_limited(refused, refused_by="api-key", wait_at_most=60)
    assert refused.headers["access-control-allow-origin"] == ORIGIN
    exposed = {name.strip().lower() for name in refused.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "ratelimit", "ratelimit-policy", "x-request-id"} <= exposed


async def test_a_page_of_another_origin_cannot_open_a_conversations_socket(
    chat_settings: Settings, embedder: OnnxMiniLMEmbedder
) -> None:
    # CORS refused that page's requests, but sockets are not subject to CORS: the handshake was accepted.
    async with serve(create_app(with_origin(chat_settings), shared_embedder_provider(embedder))) as url:
        async with httpx.AsyncClient(base_url=url) as http:
            conversation = await start(http, {"Authorization": f"Bearer {ADMIN_KEY}"})
        socket_url = url.replace("http", "ws") + f"/v1/conversations/{conversation['id']}/ws"
        socket_url += f"?access_token={conversation['customer_token']}"

        with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
            async with websockets.connect(socket_url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        # The widget's page, a page the CORS wildcard allows, and a client that is not a browser (no Origin).
        for allowed in ({"origin": ORIGIN}, {"origin": "https://shop.example.com"}, {}):
            async with websockets.connect(socket_url, **allowed) as socket:  # type: ignore[arg-type]
                await socket.send('{"type": "ping"}')
                assert '"pong"' in await socket.recv()

    assert refused.value.response.status_code == 403
