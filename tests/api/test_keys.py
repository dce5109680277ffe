import sqlalchemy as sa
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from support.domain.identity import hash_secret
from tests.factories import CreateApiKeyRequestFactory
from tests.helpers import assert_problem


async def create_key(client: AsyncTestClient[Litestar], admin_headers: dict[str, str], role: str) -> dict[str, str]:
    response = await client.post("/v1/keys", json={"name": f"{role} key", "role": role}, headers=admin_headers)
    assert response.status_code == 201, response.text
    body: dict[str, str] = response.json()
    return body


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_created_key_shows_its_secret_once_and_stores_only_a_hash(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str], engine: AsyncEngine
) -> None:
    request = CreateApiKeyRequestFactory.build(name="billing backend")
    response = await client.post("/v1/keys", json={"name": request.name, "role": request.role}, headers=admin_headers)
    assert response.status_code == 201
    created = response.json()
    assert created["role"] == request.role
    secret = created["secret"]
    assert secret.startswith("sk_")
    assert len(secret) >= 43  # 32 random bytes, base64url

    listed = (await client.get("/v1/keys", headers=admin_headers)).json()
    assert [item["id"] for item in listed["items"]] == [created["id"]]
    assert "secret" not in listed["items"][0]
    assert listed["items"][0]["hint"] == secret[: len(listed["items"][0]["hint"])]

    async with engine.connect() as connection:
        stored = (await connection.execute(sa.text("SELECT secret_hash FROM api_keys"))).scalar_one()
        dump = (await connection.execute(sa.text("SELECT row_to_json(api_keys)::text FROM api_keys"))).scalar_one()
    assert stored == hash_secret(secret)
    assert secret not in dump


async def test_keys_are_listed_a_page_at_a_time_newest_first(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    created = [await create_key(client, admin_headers, role) for role in ("agent", "service", "admin")]

    first = (await client.get("/v1/keys?limit=2", headers=admin_headers)).json()
    assert [item["id"] for item in first["items"]] == [created[2]["id"], created[1]["id"]]
    assert first["next_cursor"]
    second = (await client.get(f"/v1/keys?limit=2&cursor={first['next_cursor']}", headers=admin_headers)).json()
    assert [item["id"] for item in second["items"]] == [created[0]["id"]]
    assert second["next_cursor"] is None
    everything = (await client.get("/v1/keys", headers=admin_headers)).json()
    assert [item["id"] for item in everything["items"]] == [key["id"] for key in reversed(created)]
    assert everything["next_cursor"] is None


async def test_the_key_listing_checks_its_parameters(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    for limit in (0, 101):
        assert_problem(await client.get(f"/v1/keys?limit={limit}", headers=admin_headers), 422, "validation_failed")
    body = assert_problem(await client.get("/v1/keys?cursor=nope", headers=admin_headers), 422, "invalid_input")
    assert body["detail"] == "The cursor is not valid."
    assert (await client.get("/v1/keys?limit=100", headers=admin_headers)).status_code == 200


async def test_a_created_key_authenticates_with_its_role(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    admin = await create_key(client, admin_headers, "admin")
    agent = await create_key(client, admin_headers, "agent")
    assert (await client.get("/v1/keys", headers=bearer(admin["secret"]))).status_code == 200
    assert_problem(await client.get("/v1/keys", headers=bearer(agent["secret"])), 403, "forbidden")


async def test_revoked_key_stops_working_at_once(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    admin = await create_key(client, admin_headers, "admin")
    assert (await client.get("/v1/keys", headers=bearer(admin["secret"]))).status_code == 200
    revoked = await client.delete(f"/v1/keys/{admin['id']}", headers=admin_headers)
    assert revoked.status_code == 204
    assert_problem(await client.get("/v1/keys", headers=bearer(admin["secret"])), 401, "unauthenticated")
    listed = (await client.get("/v1/keys", headers=admin_headers)).json()["items"]
    assert listed[0]["active"] is False
    assert listed[0]["revoked_at"] is not None
    again = await client.delete(f"/v1/keys/{admin['id']}", headers=admin_headers)
    assert again.status_code == 204


async def test_revoking_an_unknown_key_is_a_404(
    client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    response = await client.delete("/v1/keys/01890a5d-ac96-774b-bcce-b302099a8057", headers=admin_headers)
    assert_problem(response, 404, "api_key_not_found")


async def test_missing_or_wrong_credentials_are_401_with_a_challenge(client: AsyncTestClient[Litestar]) -> None:
    for headers in ({}, bearer("sk_not-a-real-key"), {"Authorization": "Basic dXNlcjpwYXNz"}):
        response = await client.get("/v1/keys", headers=headers)
        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_only_admins_manage_keys(client: AsyncTestClient[Litestar], admin_headers: dict[str, str]) -> None:
    for role in ("agent", "service"):
        secret = (await create_key(client, admin_headers, role))["secret"]
        assert_problem(await client.get("/v1/keys", headers=bearer(secret)), 403, "forbidden")
        creating = await client.post("/v1/keys", json={"name": "x", "role": "admin"}, headers=bearer(secret))
        assert_problem(creating, 403, "forbidden")


async def test_blank_key_name_is_rejected(client: AsyncTestClient[Litestar], admin_headers: dict[str, str]) -> None:
    response = await client.post("/v1/keys", json={"name": "   ", "role": "agent"}, headers=admin_headers)
    assert_problem(response, 422, "invalid_input")
