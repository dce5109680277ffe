from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.helpers import assert_problem


async def test_root_describes_the_service(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "support"
    assert body["environment"] == "test"
    assert body["version"]
    assert body["links"]["docs"] == "/schema"
    assert body["links"]["readiness"] == "/health/ready"


async def test_liveness_answers_without_dependencies(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readiness_reports_each_dependency(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert {item["name"]: item["ok"] for item in body["dependencies"]} == {"postgres": True, "valkey": True}
    assert body["down"] == []


async def test_request_id_is_echoed_when_valid_and_generated_otherwise(client: AsyncTestClient[Litestar]) -> None:
    echoed = await client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    generated = await client.get("/health/live", headers={"X-Request-ID": "bad id with spaces"})
    assert generated.headers["x-request-id"] not in {"", "bad id with spaces"}
    assert len(generated.headers["x-request-id"]) == 32


async def test_every_response_has_server_timing(client: AsyncTestClient[Litestar]) -> None:
    for path in ("/", "/health/live", "/does-not-exist"):
        response = await client.get(path)
        assert response.headers["server-timing"].startswith("app;dur=")
        assert float(response.headers["server-timing"].removeprefix("app;dur=")) >= 0


async def test_unknown_route_is_a_404_problem(client: AsyncTestClient[Litestar]) -> None:
    body = assert_problem(await client.get("/v1/nothing-here"), 404, "not_found")
    assert body["instance"] == "/v1/nothing-here"


async def test_wrong_method_is_a_405_problem(client: AsyncTestClient[Litestar]) -> None:
    response = await client.put("/health/live")
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


async def test_malformed_json_is_a_400_problem(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/keys", content=b'{"name": "x", "role": ', headers={**admin_headers, "content-type": "application/json"}
    )
    assert_problem(response, 400, "malformed_request")


async def test_invalid_fields_are_a_422_problem_with_paths(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    response = await client.post("/v1/keys", json={"name": "ci", "role": "superuser"}, headers=admin_headers)
    body = assert_problem(response, 422, "validation_failed")
    assert [error["location"] for error in body["errors"]] == ["$.role"]


async def test_missing_field_is_a_422_problem(client: AsyncTestClient[Litestar], admin_headers: dict[str, str]) -> None:
    response = await client.post("/v1/keys", json={"role": "agent"}, headers=admin_headers)
    body = assert_problem(response, 422, "validation_failed")
    assert "name" in body["errors"][0]["message"]


async def test_too_large_body_is_a_413_problem(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str], settings: Any
) -> None:
    oversized = b"x" * (settings.http.max_body_bytes + 1)
    response = await client.post(
        "/v1/keys", content=oversized, headers={**admin_headers, "content-type": "application/json"}
    )
    assert_problem(response, 413, "content_too_large")


async def test_openapi_documents_every_operation(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]
    assert operations
    operation_ids = [operation.get("operationId") for _, _, operation in operations]
    assert all(operation_ids), operations
    assert len(set(operation_ids)) == len(operation_ids)
    for path, method, operation in operations:
        assert operation.get("summary"), (path, method)
    keys_post = document["paths"]["/v1/keys"]["post"]
    assert "application/problem+json" in keys_post["responses"]["422"]["content"]
    # Every paged list says what its cursor is (opaque, passed back unchanged).
    cursors = [
        parameter
        for _, _, operation in operations
        for parameter in operation.get("parameters", [])
        if parameter["name"] == "cursor"
    ]
    assert len(cursors) >= 6
    assert all("opaque" in parameter.get("description", "") for parameter in cursors), cursors
    assert "ProblemDetails" in document["components"]["schemas"]


async def test_openapi_documents_the_rate_limit_headers_of_every_limited_operation(
    client: AsyncTestClient[Litestar],
) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    limited = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"} and operation.get("security") != []
    ]
    assert limited
    for path, method, operation in limited:
        refused = operation["responses"]["429"].get("headers", {})
        assert {"RateLimit", "RateLimit-Policy", "Retry-After"} <= refused.keys(), (path, method)
        assert refused["Retry-After"]["schema"]["type"] == "integer"
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                assert {"RateLimit", "RateLimit-Policy"} <= response.get("headers", {}).keys(), (path, method, status)
    assert not document["paths"]["/health/ready"]["get"]["responses"]["200"].get("headers")


async def test_docs_ui_is_served(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/schema")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"name": "caf\xe9", "role": "service"}', "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested"),
        (b"", "empty"),  # was a 422 naming a field "'data'"
        (b"  \n", "truncated"),
    ],
    ids=["invalid-utf8", "deeply-nested", "empty", "blank"],
)
@pytest.mark.parametrize("path", ["/v1/keys", "/v1/knowledge/search", "/v1/webhooks", "/v1/conversations"])
async def test_undecodable_json_is_a_400_problem_everywhere(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str], path: str, body: bytes, detail: str
) -> None:
    response = await client.post(path, content=body, headers={**admin_headers, "content-type": "application/json"})
    problem = assert_problem(response, 400, "malformed_request")
    assert detail in problem["detail"]


async def test_a_form_field_that_is_not_utf8_is_a_400_problem(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="title"\r\n\r\ncaf\xe9\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nSome text.\r\n--b--\r\n"
    )
    headers = {**admin_headers, "content-type": "multipart/form-data; boundary=b"}
    response = await client.post("/v1/knowledge/uploads", content=body, headers=headers)
    assert "UTF-8" in assert_problem(response, 400, "malformed_request")["detail"]


async def test_a_bad_query_parameter_is_located_as_query_dot_name(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    response = await client.get("/v1/conversations", params={"limit": "0"}, headers=admin_headers)
    body = assert_problem(response, 422, "validation_failed")
    assert [(error["location"], error["source"]) for error in body["errors"]] == [("query.limit", "query")]
