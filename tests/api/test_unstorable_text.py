"""Text PostgreSQL cannot store (a NUL character) is the caller's mistake: a 422 at once, never a 503 to retry."""

import httpx

from tests.api.test_conversations import bearer, start
from tests.helpers import assert_problem

NUL = "a\u0000b"


async def test_a_nul_in_any_stored_or_searched_text_is_a_422_and_nothing_is_kept(
    http: httpx.AsyncClient, service_headers: dict[str, str]
) -> None:
    conversation = await start(http, service_headers)
    token = bearer(conversation["customer_token"])
    refused = {
        "customer id": await http.post(
            "/v1/conversations", json={"customer": {"external_id": NUL}}, headers=service_headers
        ),
        "message": await http.post(
            f"/v1/conversations/{conversation['id']}/messages", json={"content": NUL}, headers=token
        ),
        "search": await http.post("/v1/knowledge/search", json={"query": NUL}, headers=service_headers),
        "document": await http.post(
            "/v1/knowledge/documents", json={"title": NUL, "content": "Some text."}, headers=service_headers
        ),
        "lookup": await http.get("/v1/customers/lookup", params={"external_id": NUL}, headers=service_headers),
    }
    for what, response in refused.items():
        body = assert_problem(response, 422, "invalid_input")
        assert "NUL" in body["detail"], what
        assert "retry-after" not in response.headers, what

    messages = await http.get(f"/v1/conversations/{conversation['id']}/messages", headers=token)
    assert messages.json()["items"] == []
    documents = await http.get("/v1/knowledge/documents", headers=service_headers)
    assert documents.json()["items"] == []
    listed = await http.get("/v1/conversations", headers=service_headers)
    assert len(listed.json()["items"]) == 1
