"""Who may call what: every endpoint of the app by every kind of caller, against the real app over HTTP.

``MATRIX`` is the table: one row per route (derived from the app; a new route fails
``test_every_route_is_in_the_matrix`` until it has a row), one expected status per caller. A customer asking for
another customer's conversation gets 404, never 403, so ids don't leak. Cases expected to succeed act on resources
of their own (created per case, in the state the operation needs), so no case changes what another sees.
WebSocket rows give the handshake's answer: 101 when accepted (the socket must then replay the conversation's
events); a refused handshake is answered 403 whatever the reason (the server's answer to a socket closed before it
was accepted).

docs/api.md holds the same table between the ``authorization-matrix`` markers; ``test_the_docs_show_the_matrix``
keeps them equal (``.venv/bin/python -m tests.api.test_authorization_matrix`` prints it).
"""

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from dishka import Provider, Scope, make_async_container
from litestar import Litestar
from litestar.routes import HTTPRoute, WebSocketRoute
from sqlalchemy.ext.asyncio import AsyncEngine
from valkey.asyncio import Valkey

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.api.app import build_app
from support.config import ConversationSettings, LimitSettings, LLMSettings, Settings
from support.container import create_app
from support.domain.identity import issue_customer_token
from support.ports.webhooks import WebhookSender
from tests.api.conftest import serve
from tests.conftest import ADMIN_KEY, _reset, shared_embedder_provider
from tests.fakes.webhooks import ScriptedSender

pytestmark = [pytest.mark.postgres, pytest.mark.valkey]

TOKEN_SECRET = "authorization-matrix-token-secret"
CALLERS = ("anonymous", "customer_a", "customer_b", "service", "agent", "admin", "revoked_key", "expired", "forged")
WS = "WS"
DOCS = Path(__file__).parents[2] / "docs" / "api.md"
DOC_START, DOC_END = "<!-- authorization-matrix:start -->", "<!-- authorization-matrix:end -->"


# The statuses each caller gets: anonymous, customer A's token, customer B's token, a service key, an agent key, an
# admin key, a revoked key, customer A's expired token, a forged customer token. The resources are customer A's.
TABLE = """
GET    /                                                                           200 200 200 200 200 200 200 200 200
GET    /health/live                                                                200 200 200 200 200 200 200 200 200
GET    /health/ready                                                               200 200 200 200 200 200 200 200 200
GET    /schema                                                                     200 200 200 200 200 200 200 200 200
GET    /schema/openapi.json                                                        200 200 200 200 200 200 200 200 200
GET    /schema/{path:str}                                                          404 404 404 404 404 404 404 404 404
GET    /v1/keys                                                                    401 403 403 403 403 200 401 401 401
POST   /v1/keys                                                                    401 403 403 403 403 201 401 401 401
DELETE /v1/keys/{key_id:uuid}                                                      401 403 403 403 403 204 401 401 401
GET    /v1/knowledge/documents                                                     401 403 403 403 403 200 401 401 401
POST   /v1/knowledge/documents                                                     401 403 403 403 403 201 401 401 401
GET    /v1/knowledge/documents/{document_id:uuid}                                  401 403 403 403 403 200 401 401 401
DELETE /v1/knowledge/documents/{document_id:uuid}                                  401 403 403 403 403 204 401 401 401
POST   /v1/knowledge/uploads                                                       401 403 403 403 403 201 401 401 401
GET    /v1/knowledge/jobs/{job_id:str}                                             401 403 403 403 403 200 401 401 401
POST   /v1/knowledge/search                                                        401 403 403 403 403 200 401 401 401
GET    /v1/webhooks                                                                401 403 403 403 403 200 401 401 401
POST   /v1/webhooks                                                                401 403 403 403 403 201 401 401 401
GET    /v1/webhooks/{webhook_id:uuid}                                              401 403 403 403 403 200 401 401 401
DELETE /v1/webhooks/{webhook_id:uuid}                                              401 403 403 403 403 204 401 401 401
GET    /v1/webhooks/{webhook_id:uuid}/deliveries                                   401 403 403 403 403 200 401 401 401
POST   /v1/webhooks/{webhook_id:uuid}/deliveries/{delivery_id:uuid}/redeliver      401 403 403 403 403 202 401 401 401
POST   /v1/conversations                                                           401 201 201 201 403 201 401 401 401
GET    /v1/conversations                                                           401 200 200 200 200 200 401 401 401
GET    /v1/conversations/{conversation_id:uuid}                                    401 200 404 200 200 200 401 401 401
GET    /v1/conversations/{conversation_id:uuid}/messages                           401 200 404 200 200 200 401 401 401
POST   /v1/conversations/{conversation_id:uuid}/messages                           401 200 404 200 403 200 401 401 401
POST   /v1/conversations/{conversation_id:uuid}/messages/stream                    401 200 404 200 403 200 401 401 401
GET    /v1/conversations/{conversation_id:uuid}/events                             401 200 404 200 200 200 401 401 401
WS     /v1/conversations/{conversation_id:uuid}/ws                                 403 101 403 101 101 101 403 403 403
POST   /v1/conversations/{conversation_id:uuid}/feedback                           401 200 404 200 403 200 401 401 401
POST   /v1/conversations/{conversation_id:uuid}/close                              401 200 404 200 403 200 401 401 401
GET    /v1/conversations/{conversation_id:uuid}/attachments/{attachment_id:uuid}   401 200 404 200 200 200 401 401 401
POST   /v1/conversations/{conversation_id:uuid}/handoff                            401 200 404 200 403 200 401 401 401
DELETE /v1/conversations/{conversation_id:uuid}/handoff                            401 200 404 200 403 200 401 401 401
POST   /v1/conversations/{conversation_id:uuid}/resolve                            401 200 404 200 409 200 401 401 401
GET    /v1/handoffs                                                                401 403 403 403 200 200 401 401 401
POST   /v1/conversations/{conversation_id:uuid}/claim                              401 403 403 403 200 200 401 401 401
POST   /v1/conversations/{conversation_id:uuid}/release                            401 403 403 403 200 200 401 401 401
POST   /v1/conversations/{conversation_id:uuid}/agent-messages                     401 403 403 403 201 201 401 401 401
GET    /v1/customers/lookup                                                        401 403 403 200 403 200 401 401 401
GET    /v1/customers/{customer_id:uuid}                                            401 403 403 200 403 200 401 401 401
DELETE /v1/customers/{customer_id:uuid}                                            401 403 403 200 403 200 401 401 401
GET    /v1/customers/{customer_id:uuid}/export                                     401 403 403 200 403 200 401 401 401
GET    /v1/customers/{customer_id:uuid}/memories                                   401 403 403 200 403 200 401 401 401
POST   /v1/customers/{customer_id:uuid}/tokens                                     401 403 403 201 403 201 401 401 401
DELETE /v1/customers/{customer_id:uuid}/memories/{memory_id:uuid}                  401 403 403 204 403 204 401 401 401
"""
# The conversation a succeeding case acts on waits for an agent, or is owned by the agent key; otherwise the bot has it.
STATE = {
    ("DELETE", "/v1/conversations/{conversation_id:uuid}/handoff"): "waiting",
    ("POST", "/v1/conversations/{conversation_id:uuid}/claim"): "waiting",
    ("POST", "/v1/conversations/{conversation_id:uuid}/agent-messages"): "waiting",
    ("POST", "/v1/conversations/{conversation_id:uuid}/release"): "owned",
}
# Succeeding cases that change nothing another case sees act on the shared resources: a redelivery is sent by the
# scripted sender and leaves the delivery as other cases need it (it exists, under its endpoint).
SHARED = {("POST", "/v1/webhooks/{webhook_id:uuid}/deliveries/{delivery_id:uuid}/redeliver")}
# Query parameters a route needs: customer A is looked up by the external id it was started with.
QUERY: dict[tuple[str, str], dict[str, str]] = {("GET", "/v1/customers/lookup"): {"external_id": "customer-a"}}
UPLOAD = {"file": ("hours.md", b"# Hours\n\nNine to five.", "text/markdown")}
BODY: dict[tuple[str, str], Any] = {
    ("POST", "/v1/keys"): {"name": "matrix", "role": "agent"},
    ("POST", "/v1/knowledge/documents"): {"content": "# Hours\n\nNine to five."},
    ("POST", "/v1/knowledge/search"): {"query": "hours"},
    ("POST", "/v1/webhooks"): {"url": "https://hooks.example.com/a", "events": ["message.created"]},
    ("POST", "/v1/conversations"): {"customer": {"external_id": "someone"}},
    ("POST", "/v1/conversations/{conversation_id:uuid}/messages"): {"content": "Hello"},
    ("POST", "/v1/conversations/{conversation_id:uuid}/messages/stream"): {"content": "Hello"},
    ("POST", "/v1/conversations/{conversation_id:uuid}/feedback"): {"rating": 5},
    ("POST", "/v1/conversations/{conversation_id:uuid}/handoff"): {},
    ("POST", "/v1/conversations/{conversation_id:uuid}/agent-messages"): {"content": "Hi, I am Sam."},
}


def _parse(table: str) -> dict[tuple[str, str], tuple[int, ...]]:
    matrix: dict[tuple[str, str], tuple[int, ...]] = {}
    for line in table.strip().splitlines():
        method, path, *statuses = line.split()
        assert len(statuses) == len(CALLERS), line
        assert (method, path) not in matrix, f"{method} {path} twice"
        matrix[method, path] = tuple(int(status) for status in statuses)
    return matrix


MATRIX = _parse(TABLE)


def app_routes(app: Litestar) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves; OPTIONS, which Litestar adds to each path, left out."""
    routes: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            routes |= {(method, route.path) for method in route.methods if method != "OPTIONS"}
        elif isinstance(route, WebSocketRoute):
            routes.add((WS, route.path))
    return routes


def render_matrix() -> str:
    """The matrix as the Markdown table docs/api.md shows."""
    names = {"customer_a": "customer A", "customer_b": "customer B", "revoked_key": "revoked key"}
    header = "| endpoint | " + " | ".join(names.get(caller, caller) for caller in CALLERS) + " |"
    lines = [header, "|" + " --- |" * (len(CALLERS) + 1)]
    for (method, path), expected in MATRIX.items():
        shown = re.sub(r"\{(\w+):\w+\}", r"{\1}", path)
        lines.append(f"| `{method} {shown}` | " + " | ".join(str(status) for status in expected) + " |")
    return "\n".join(lines)


def test_every_route_is_in_the_matrix() -> None:
    app = build_app(Settings(env="test"), make_async_container())
    served = app_routes(app)

    assert sorted(served - MATRIX.keys()) == [], "routes without a row in MATRIX: say who may call them"
    assert sorted(MATRIX.keys() - served) == [], "rows for routes the app does not serve"


def test_the_docs_show_the_matrix() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert DOC_START in text, f"docs/api.md has no {DOC_START} marker"
    shown = text.split(DOC_START, 1)[1].split(DOC_END, 1)[0].strip()

    assert shown == render_matrix(), "docs/api.md is out of date: python -m tests.api.test_authorization_matrix"


def test_the_document_requires_credentials_where_the_app_does() -> None:
    """Operations that answer 401 without credentials declare the bearer key in OpenAPI; public ones declare none."""
    document = build_app(Settings(env="test"), make_async_container()).openapi_schema.to_schema()
    for (method, path), expected in MATRIX.items():
        operation = document["paths"].get(re.sub(r"\{(\w+):\w+\}", r"{\1}", path), {}).get(method.lower())
        if operation is None:
            continue  # the WebSocket, and the OpenAPI routes themselves
        required = operation.get("security", document["security"]) != []
        assert required == (expected[0] == 401), f"{method} {path}"


# The live app, its callers and resources.


@dataclass
class World:
    http: httpx.AsyncClient
    ws_url: str
    headers: dict[str, dict[str, str]]
    shared: dict[str, str]
    fresh: Callable[[str, str], Awaitable[dict[str, str]]]


def _recording_sender() -> WebhookSender:
    return ScriptedSender()


@pytest.fixture(scope="module")
async def world(
    postgres_server: str,
    valkey_server: str,
    _session_engine: AsyncEngine,
    _session_valkey: Valkey,
    embedder: OnnxMiniLMEmbedder,
) -> AsyncIterator[World]:
    await _reset(_session_engine, _session_valkey)
    settings = Settings(
        env="test",
        database_url=postgres_server,
        valkey_url=valkey_server,
        bootstrap_admin_key=ADMIN_KEY,
        log_level="error",
        llm=LLMSettings(provider="offline"),
        # Streams the cases leave early notice at the next heartbeat, so the server stops promptly at the end.
        conversations=ConversationSettings(token_secret=TOKEN_SECRET, heartbeat_s=0.5),
        limits=LimitSettings(enabled=False),
    )
    # Webhooks registered here are never called.
    sender = Provider(scope=Scope.APP)
    sender.provide(_recording_sender, provides=WebhookSender, override=True)
    async with (
        serve(create_app(settings, shared_embedder_provider(embedder), sender)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        yield await _build_world(http, url.replace("http", "ws", 1))


async def _ok(response: Awaitable[httpx.Response], status: int = 200) -> dict[str, Any]:
    answered = await response
    assert answered.status_code == status, answered.text
    body: dict[str, Any] = answered.json()
    return body


async def _build_world(http: httpx.AsyncClient, ws_url: str) -> World:
    bootstrap = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def key(role: str) -> tuple[str, str]:
        body = {"name": f"matrix {role}", "role": role}
        created = await _ok(http.post("/v1/keys", json=body, headers=bootstrap), 201)
        return str(created["id"]), str(created["secret"])

    (_, service), (_, agent), (_, admin) = await key("service"), await key("agent"), await key("admin")
    revoked_id, revoked = await key("service")
    assert (await http.delete(f"/v1/keys/{revoked_id}", headers=bootstrap)).status_code == 204
    as_service = {"Authorization": f"Bearer {service}"}
    as_agent = {"Authorization": f"Bearer {agent}"}

    async def start(external_id: str) -> dict[str, Any]:
        body = {"customer": {"external_id": external_id}}
        return await _ok(http.post("/v1/conversations", json=body, headers=as_service), 201)

    a, b = await start("customer-a"), await start("customer-b")
    as_a = {"Authorization": f"Bearer {a['customer_token']}"}
    sent = await _ok(
        http.post(
            f"/v1/conversations/{a['id']}/messages",
            data={"content": "My order number is NW-48213; the receipt is attached."},
            files=[("files", ("receipt.txt", b"NW-48213: 2 items", "text/plain"))],
            headers=as_a,
        )
    )
    document = await _ok(
        http.post("/v1/knowledge/documents", json={"content": "# Hours\n\nNine."}, headers=bootstrap), 201
    )
    webhook = await _ok(
        http.post(
            "/v1/webhooks",
            json={"url": "https://hooks.example.com/m", "events": ["message.created", "handoff.requested"]},
            headers=bootstrap,
        ),
        201,
    )
    # A delivery to redeliver: the webhook hears of a handoff (and of the notice it posts).
    handed = await start("customer-a")
    await _ok(http.post(f"/v1/conversations/{handed['id']}/handoff", json={}, headers=as_a))
    delivery, *_ = (await _ok(http.get(f"/v1/webhooks/{webhook['id']}/deliveries", headers=bootstrap)))["items"]
    job = await _ok(
        http.post(
            "/v1/knowledge/uploads",
            files={"file": ("faq.jsonl", b'{"id": "f", "title": "F", "text": "x"}\n')},
            headers=bootstrap,
        ),
        202,
    )
    shared = {
        "conversation_id": a["id"],
        "attachment_id": sent["message"]["attachments"][0]["id"],
        "customer_id": a["customer_id"],
        "memory_id": await _memory(http, a["customer_id"], as_service),
        "document_id": document["document"]["id"],
        "webhook_id": webhook["id"],
        "delivery_id": delivery["id"],
        "key_id": revoked_id,
        "job_id": job["id"],
        "path": "unknown",
    }
    counter = itertools.count()

    async def new_conversation(state: str) -> dict[str, str]:
        created = await start("customer-a")
        path = f"/v1/conversations/{created['id']}"
        if state in {"waiting", "owned"}:
            await _ok(http.post(f"{path}/handoff", json={}, headers=as_a))
        if state == "owned":
            await _ok(http.post(f"{path}/claim", headers=as_agent))
        return {"conversation_id": created["id"]}

    async def new_customer(_: str) -> dict[str, str]:
        return {"customer_id": (await start(f"erasable-{next(counter)}"))["customer_id"]}

    async def new_memory(_: str) -> dict[str, str]:
        created = await start(f"forgetful-{next(counter)}")
        message = {"content": "My order number is NW-77001."}
        await _ok(http.post(f"/v1/conversations/{created['id']}/messages", json=message, headers=as_service))
        customer_id = created["customer_id"]
        return {"customer_id": customer_id, "memory_id": await _memory(http, customer_id, as_service)}

    async def new_document(_: str) -> dict[str, str]:
        body = {"content": f"# Note {next(counter)}\n\nText."}
        return {
            "document_id": (await _ok(http.post("/v1/knowledge/documents", json=body, headers=bootstrap), 201))[
                "document"
            ]["id"]
        }

    async def new_webhook(_: str) -> dict[str, str]:
        body = {"url": f"https://hooks.example.com/{next(counter)}", "events": ["message.created"]}
        return {"webhook_id": (await _ok(http.post("/v1/webhooks", json=body, headers=bootstrap), 201))["id"]}

    async def new_key(_: str) -> dict[str, str]:
        body = {"name": f"doomed {next(counter)}", "role": "agent"}
        return {"key_id": (await _ok(http.post("/v1/keys", json=body, headers=bootstrap), 201))["id"]}

    creators = {
        "conversation_id": new_conversation,
        "customer_id": new_customer,
        "memory_id": new_memory,
        "document_id": new_document,
        "webhook_id": new_webhook,
        "key_id": new_key,
    }

    async def fresh(name: str, state: str) -> dict[str, str]:
        """A resource of its own for a case that changes it (with what else its path names)."""
        create = creators.get(name)
        return await create(state) if create is not None else {name: shared[name]}

    expired = issue_customer_token(a["customer_id"], datetime.now(UTC) - timedelta(minutes=1), TOKEN_SECRET)
    forged = a["customer_token"][:-4] + ("AAAA" if not a["customer_token"].endswith("AAAA") else "BBBB")
    tokens = {
        "anonymous": None,
        "customer_a": a["customer_token"],
        "customer_b": b["customer_token"],
        "service": service,
        "agent": agent,
        "admin": admin,
        "revoked_key": revoked,
        "expired": expired,
        "forged": forged,
    }
    headers = {caller: ({"Authorization": f"Bearer {token}"} if token else {}) for caller, token in tokens.items()}
    return World(http=http, ws_url=ws_url, headers=headers, shared=shared, fresh=fresh)


async def _memory(http: httpx.AsyncClient, customer_id: str, headers: dict[str, str]) -> str:
    """A fact remembered about the customer (remembering runs in the background, after the reply)."""
    for _ in range(200):
        items = (await _ok(http.get(f"/v1/customers/{customer_id}/memories", headers=headers)))["items"]
        if items:
            return str(items[0]["id"])
        await asyncio.sleep(0.05)
    raise AssertionError("nothing was remembered")


CASES = [
    pytest.param(method, path, caller, expected[index], id=f"{method} {path} as {caller}")
    for (method, path), expected in MATRIX.items()
    for index, caller in enumerate(CALLERS)
]


@pytest.mark.parametrize(("method", "path", "caller", "status"), CASES)
async def test_who_may_call_what(world: World, method: str, path: str, caller: str, status: int) -> None:
    names = re.findall(r"\{(\w+):\w+\}", path)
    values = dict(world.shared)
    if 200 <= status < 300 and method not in {"GET", WS} and (method, path) not in SHARED:
        for name in names:
            values.update(await world.fresh(name, STATE.get((method, path), "bot")))
    url = re.sub(r"\{(\w+):\w+\}", lambda match: values[match.group(1)], path)
    headers = world.headers[caller]

    body, query = BODY.get((method, path)), QUERY.get((method, path))
    answered = await _answer(world, method, url, headers, body, query, upload=path.endswith("/uploads"))

    assert answered == status, f"{method} {url} as {caller}"


async def _answer(
    world: World, method: str, url: str, headers: dict[str, str], body: Any, query: Any, *, upload: bool
) -> int:
    if method == WS:
        try:
            # Accepted and working: it replays the conversation's retained events. Waiting for one also lets the
            # feed subscription finish before the socket closes.
            feed = f"{world.ws_url}{url}?last_event_id=0"
            async with websockets.connect(feed, additional_headers=headers, open_timeout=10) as socket:
                frame = json.loads(await asyncio.wait_for(socket.recv(), 10))
                assert frame["event"] == "message", frame
                return 101
        except websockets.exceptions.InvalidStatus as refused:
            return refused.response.status_code
    if upload:
        return (await world.http.request(method, url, files=UPLOAD, headers=headers)).status_code
    # Streams (SSE) are closed as soon as their status is known.
    async with world.http.stream(method, url, json=body, params=query, headers=headers) as response:
        if response.status_code >= 400:
            await response.aread()
            assert response.headers["content-type"].startswith("application/problem+json") or url.startswith("/schema")
        return response.status_code


if __name__ == "__main__":
    print(render_matrix())  # noqa: T201
