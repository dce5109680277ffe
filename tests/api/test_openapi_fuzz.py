"""Schemathesis over every operation of the OpenAPI document, against the real app on PostgreSQL and Valkey.

Each operation is one test (``test_as_admin[POST /v1/keys]``). Hypothesis sends valid and invalid requests (the
documented examples, boundary cases, then random ones) and every response must:

- not be a 5xx;
- have a documented status code and content type, and a body (each event, for server-sent events) that conforms
  to the documented schema;
- when it is a 4xx, be ``application/problem+json`` with the ProblemDetails fields and the request's id;
- refuse invalid requests, and never refuse a request the document calls valid for its shape
  (``valid_requests_pass_validation``);
- not be answered without credentials when the operation requires them.

Each test starts from freshly seeded resources: a customer's conversation (with a message, an attachment and a
remembered fact), one waiting for an agent, one an agent owns, a document, a webhook with a delivery, an API key
and a background job. In about three valid cases of four the path parameters (and the customer lookup's external
id) name them instead of random ids, so operations get past "not found"; ``test_every_operation_reached_a_success``
checks that they did. The operations open to customers run again with the customer's token.

docs/development.md says how to run it alone and how to reproduce a failure.
"""

import json
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from dishka import Provider, Scope, make_async_container
from hypothesis import HealthCheck
from hypothesis import strategies as st
from litestar import Litestar
from litestar.serialization import encode_json
from schemathesis import Case, CheckContext, CheckFunction
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import negative_data_rejection
from sqlalchemy.ext.asyncio import AsyncEngine
from valkey.asyncio import Valkey

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.api.app import build_app
from support.config import LimitSettings, LLMSettings, Settings
from support.container import create_app
from support.ports.webhooks import WebhookSender
from tests.conftest import ADMIN_KEY, _reset, shared_embedder_provider
from tests.fakes.webhooks import ScriptedSender

pytestmark = [pytest.mark.postgres, pytest.mark.valkey, pytest.mark.slow]

OPENAPI_PATH = "/schema/openapi.json"
PROBLEM = "application/problem+json"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MAX_EXAMPLES = 25
# The live feed never ends on its own: what arrives in this time is read and checked. The same deadline covers
# the response's start (Schemathesis' ASGI transport has one timer), and 0.3 s once failed a 404 on a busy CI run.
STREAM_READ_S = 1.0
REQUEST_TIMEOUT_S = 30.0
# Problem codes that say a request does not have the documented shape.
SHAPE_REFUSALS = {"malformed_request", "validation_failed"}
PROBLEM_FIELDS = {"type", "title", "status", "code", "detail", "instance", "request_id", "errors"}
# Operations open to a customer token (for its own conversations).
CUSTOMER_OPERATIONS = [
    "StartConversation",
    "ListConversations",
    "GetConversation",
    "ListMessages",
    "SendMessage",
    "StreamMessage",
    "FollowConversation",
    "SubmitFeedback",
    "CloseConversation",
    "DownloadAttachment",
    "RequestHandoff",
    "WithdrawHandoff",
    "ResolveConversation",
]


def _document() -> dict[str, Any]:
    """The app's OpenAPI document, built at collection so that each operation is a test of its own.

    It depends on the routes only; ``test_the_fuzzed_document_is_the_served_one`` checks the app serves the same.
    """
    app = build_app(Settings(env="test"), make_async_container(Provider()))
    document: dict[str, Any] = json.loads(encode_json(app.openapi_schema.to_schema()))
    return document


class _AppUnderTest:
    """The ASGI app Schemathesis calls, known at collection; it forwards to the module's app once that is built."""

    def __init__(self) -> None:
        self.app: Litestar | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.app is not None, "the fuzz_app fixture builds the app"
        await self.app(scope, receive, send)


APP_UNDER_TEST = _AppUnderTest()
schema = schemathesis.openapi.from_dict(_document())
# Requests reach the app in-process, through Schemathesis's ASGI transport (its own event loop thread).
schema.app = APP_UNDER_TEST
schema.config.update(base_url=f"http://{asgi.HOST}")
# Credentials are ours to send (the admin key or a customer token), not random tokens.
schema.config.generation.update(with_security_parameters=False, allow_x00=False)
# Too many attachments is refused as 413, like too large ones.
_rejection = schema.config.checks.negative_data_rejection
_rejection.expected_statuses = [*_rejection.expected_statuses, "413"]
# Replaced by valid_requests_pass_validation, which tells shape refusals from refusals for what a request means.
schema.config.checks.positive_data_acceptance.enabled = False
# OPTIONS answers with the methods of the first handler registered on a path, not all of them: a Litestar 2 bug
# (litestar-org/litestar#4169, fixed in 3.0). OPTIONS is not documented for any operation.
schema.config.checks.allow_header_conformance.enabled = False

# Seeded ids by path parameter name, and per operation where one needs its resource in a given state.
_SEEDED: dict[str, str] = {}
_SEEDED_FOR: dict[str, dict[str, str]] = {}
# Query parameters that name a seeded resource, per operation id.
_SEEDED_QUERY: dict[str, dict[str, str]] = {"FindCustomer": {"external_id": "fuzz-customer"}}
# Statuses answered, per operation id; test_every_operation_reached_a_success reads them.
_ANSWERED: dict[str, set[int]] = defaultdict(set)


@schema.hook
def flatmap_case(context: Any, case: Case[Any]) -> st.SearchStrategy[Case[Any]]:
    """In about three valid cases of four, path parameters name seeded resources instead of random ids.

    Half of them left GetWebhook and GetDocument with 1-4 successes of 25 examples (their valid cases are few), close
    enough to none for ``test_every_operation_reached_a_success`` to fail now and then.
    """
    operation_id = case.operation.definition.raw.get("operationId", "")
    seeded = {**_SEEDED, **_SEEDED_FOR.get(operation_id, {})}
    names = [name for name in case.path_parameters or {} if name in seeded]
    query = _SEEDED_QUERY.get(operation_id, {})
    if not (names or query) or case.meta is None or not case.meta.generation.mode.is_positive:
        return st.just(case)

    def use_seeded(use: bool) -> Case[Any]:
        if use:
            case.path_parameters = {**(case.path_parameters or {}), **{name: seeded[name] for name in names}}
            case.query = {**(case.query or {}), **query}
        return case

    return st.sampled_from([True, True, True, False]).map(use_seeded)


def problem_details(ctx: CheckContext, response: Any, case: Case[Any]) -> None:
    """Every 4xx is one of our RFC 9457 problems: media type, fields, status and request id agree."""
    if not 400 <= response.status_code < 500:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith(PROBLEM), f"{response.status_code} answered as {content_type!r}, not {PROBLEM}"
    body = json.loads(response.content)
    assert isinstance(body, dict), body
    assert set(body) <= PROBLEM_FIELDS, f"unexpected problem fields: {set(body) - PROBLEM_FIELDS}"
    assert body["status"] == response.status_code, body
    assert re.fullmatch(r"[a-z_]+", body["code"]), body
    assert body["type"] == f"urn:support:problem:{body['code']}", body
    assert body["title"], body
    assert body["request_id"] == response.headers["x-request-id"][0], body


def valid_requests_pass_validation(ctx: CheckContext, response: Any, case: Case[Any]) -> None:
    """A request the document calls valid is never refused for its shape: the document and the server agree.

    It may still be refused for what it means (``invalid_input``: an empty message, a cursor that was never issued;
    an unsupported file; not found; a conflict), which no schema can say.
    """
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code not in {400, 422}:
        return
    body = json.loads(response.content)
    code = body.get("code") if isinstance(body, dict) else None
    assert code not in SHAPE_REFUSALS, f"a request valid by the document was refused as {code}: {body}"


@pytest.fixture(scope="module")
async def _fuzz_storage(
    postgres_server: str, valkey_server: str, _session_engine: AsyncEngine, _session_valkey: Valkey
) -> tuple[str, str]:
    await _reset(_session_engine, _session_valkey)
    return postgres_server, valkey_server


def _recording_sender() -> WebhookSender:
    return ScriptedSender()


@pytest.fixture(scope="module")
def fuzz_app(_fuzz_storage: tuple[str, str], embedder: OnnxMiniLMEmbedder) -> Iterator[Litestar]:
    """One app for the module; Schemathesis starts it (lifespan included) in its own event loop thread."""
    database_url, valkey_url = _fuzz_storage
    settings = Settings(
        env="test",
        database_url=database_url,
        valkey_url=valkey_url,
        bootstrap_admin_key=ADMIN_KEY,
        log_level="error",
        llm=LLMSettings(provider="offline"),
        # Thousands of requests from one key and one customer: rate limits would answer most of them with 429.
        limits=LimitSettings(enabled=False),
    )
    # Fuzzed webhook URLs are never called.
    sender = Provider(scope=Scope.APP)
    sender.provide(_recording_sender, provides=WebhookSender, override=True)
    app = create_app(settings, shared_embedder_provider(embedder), sender)
    APP_UNDER_TEST.app = app
    yield app
    asgi.shutdown_lifespans()
    APP_UNDER_TEST.app = None


def _body(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    return body


def _wait_for_memory(client: asgi.ASGIClient, customer_id: str) -> str:
    """The id of a fact remembered from the seeded message (remembering runs after the reply, in the background)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        items = _body(client.get(f"/v1/customers/{customer_id}/memories", headers=ADMIN), 200)["items"]
        if items:
            return str(items[0]["id"])
        time.sleep(0.05)
    raise AssertionError("no fact was remembered from the seeded message")


@pytest.fixture
def customer_token(fuzz_app: Litestar) -> Iterator[str]:
    """Seed the resources (see the module docstring); the customer's token."""
    with asgi.get_client(APP_UNDER_TEST) as client:

        def start() -> dict[str, Any]:
            body = {"customer": {"external_id": "fuzz-customer", "name": "Ada"}}
            return _body(client.post("/v1/conversations", json=body, headers=ADMIN), 201)

        started, waiting, owned = start(), start(), start()
        customer = {"Authorization": f"Bearer {started['customer_token']}"}
        turn = _body(
            client.post(
                f"/v1/conversations/{started['id']}/messages",
                data={"content": "Hi, my order number is NW-48213 and it has not arrived."},
                files=[("files", ("note.txt", b"Order NW-48213, shipped on Monday.", "text/plain"))],
                headers=customer,
            ),
            200,
        )
        for conversation in (waiting, owned):
            _body(client.post(f"/v1/conversations/{conversation['id']}/handoff", json={}, headers=customer), 200)
        _body(client.post(f"/v1/conversations/{owned['id']}/claim", headers=ADMIN), 200)
        document = _body(
            client.post(
                "/v1/knowledge/documents",
                json={"content": "# Shipping\n\nOrders ship within two days.", "title": "Shipping"},
                headers=ADMIN,
            ),
            201,
        )
        webhook = _body(
            client.post(
                "/v1/webhooks",
                json={"url": "https://hooks.example.com/s", "events": ["message.created"]},
                headers=ADMIN,
            ),
            201,
        )
        # A delivery to redeliver: the webhook hears of an agent's message.
        reply = {"content": "Let me check on that order."}
        _body(client.post(f"/v1/conversations/{owned['id']}/agent-messages", json=reply, headers=ADMIN), 201)
        delivery, *_ = _body(client.get(f"/v1/webhooks/{webhook['id']}/deliveries", headers=ADMIN), 200)["items"]
        key = _body(client.post("/v1/keys", json={"name": "fuzz", "role": "agent"}, headers=ADMIN), 201)
        job = _body(
            client.post(
                "/v1/knowledge/uploads",
                files={"file": ("faq.jsonl", b'{"id": "faq", "title": "FAQ", "text": "Hi."}\n', "application/jsonl")},
                headers=ADMIN,
            ),
            202,
        )
        memory_id = _wait_for_memory(client, started["customer_id"])
    _SEEDED.update(
        conversation_id=started["id"],
        customer_id=started["customer_id"],
        attachment_id=turn["message"]["attachments"][0]["id"],
        memory_id=memory_id,
        document_id=document["document"]["id"],
        webhook_id=webhook["id"],
        delivery_id=delivery["id"],
        key_id=key["id"],
        job_id=job["id"],
    )
    for operation_id in ("ClaimConversation", "SendAgentMessage", "WithdrawHandoff"):
        _SEEDED_FOR[operation_id] = {"conversation_id": waiting["id"]}
    _SEEDED_FOR["ReleaseConversation"] = {"conversation_id": owned["id"]}
    yield started["customer_token"]
    _SEEDED.clear()
    _SEEDED_FOR.clear()


def _call(case: Case[Any], headers: dict[str, str]) -> None:
    operation_id = case.operation.definition.raw["operationId"]
    excluded: list[CheckFunction] = []
    if case.media_type == "multipart/form-data" and case.meta is not None and case.meta.generation.mode.is_negative:
        # Form fields are text on the wire: an "invalid" case that only changes a field's type (a number where a
        # string is documented) is often the same valid request once sent, which Schemathesis cannot always tell.
        excluded.append(negative_data_rejection)
    response = case.call_and_validate(
        headers=headers,
        additional_checks=[problem_details, valid_requests_pass_validation],
        excluded_checks=excluded,
        timeout=STREAM_READ_S if operation_id == "FollowConversation" else REQUEST_TIMEOUT_S,
    )
    _ANSWERED[operation_id].add(response.status_code)


FUZZ = hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    # A failure is replayed from what it prints (the curl line, @reproduce_failure), not from a database in the tree.
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


@schema.parametrize()
@FUZZ
def test_as_admin(case: Case[Any], customer_token: str) -> None:
    _call(case, ADMIN)


@schema.include(operation_id=CUSTOMER_OPERATIONS).parametrize()
@FUZZ
def test_as_customer(case: Case[Any], customer_token: str) -> None:
    _call(case, {"Authorization": f"Bearer {customer_token}"})


def test_the_fuzzed_document_is_the_served_one(fuzz_app: Litestar) -> None:
    with asgi.get_client(APP_UNDER_TEST) as client:
        served = client.get(OPENAPI_PATH)

    assert served.status_code == 200
    assert served.json() == _document()


def test_customer_operations_exist() -> None:
    documented = {
        result.ok().definition.raw["operationId"] for result in schema.get_all_operations() if isinstance(result, Ok)
    }

    assert set(CUSTOMER_OPERATIONS) <= documented


def test_every_operation_reached_a_success() -> None:
    """Seeding works: every operation answered 2xx at least once, so the fuzz got past "not found" and 409."""
    documented = {
        result.ok().definition.raw["operationId"] for result in schema.get_all_operations() if isinstance(result, Ok)
    }
    if set(_ANSWERED) != documented:
        pytest.skip("needs the whole module: it reads what the fuzz tests were answered")

    never = sorted(op for op, statuses in _ANSWERED.items() if not any(200 <= s < 300 for s in statuses))

    assert never == []
