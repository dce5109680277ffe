"""Fault injection: PostgreSQL or Valkey dies under a running app, then comes back on the same port.

The app must say so (readiness 503 naming what is down, API 503 ``storage_unavailable``, never a 500) within
a bounded time, and recover by itself once the server is back, without being rebuilt. These tests kill
servers, so they use their own embedded servers, never the session ones.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from support.config import Settings
from support.container import create_app
from tests.helpers import assert_problem
from tests.integration.servers import Servers, own_servers

BOOTSTRAP_KEY = "fault-injection-bootstrap-key"
# Readiness probes time out after 2 s; a dead server is usually seen at once (connection refused).
DETECT_WITHIN_S = 20.0  # generous: proves no hang, not a latency (the machine may be loaded)
RECOVER_WITHIN_S = 10.0


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    with own_servers(tmp_path_factory.mktemp("faults"), durable_postgres=False) as started:
        yield started


@pytest.fixture
async def client(servers: Servers) -> AsyncIterator[AsyncTestClient[Litestar]]:
    settings = Settings(
        env="test",
        database_url=servers.database_url,
        valkey_url=servers.valkey_url,
        bootstrap_admin_key=BOOTSTRAP_KEY,
        log_level="warning",
    )
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


async def _poll(
    request: Callable[[], Awaitable[httpx.Response]], until: Callable[[httpx.Response], bool], within_s: float
) -> tuple[httpx.Response, float]:
    """Repeat ``request`` until ``until(response)``; return that response and how long it took."""
    started = time.monotonic()
    deadline = started + within_s
    while True:
        response = await request()
        assert response.status_code != 500, response.text
        if until(response):
            return response, time.monotonic() - started
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {within_s:g} s; last answer {response.status_code}: {response.text}")
        await asyncio.sleep(0.1)


def _assert_not_ready(response: httpx.Response, down: list[str]) -> None:
    assert response.status_code == 503, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "not_ready"
    assert body["down"] == down
    failing = [dependency for dependency in body["dependencies"] if not dependency["ok"]]
    assert [dependency["name"] for dependency in failing] == down
    assert all(dependency["detail"] for dependency in failing)
    assert int(response.headers["retry-after"]) > 0


async def _flush_to_disk(database_url: str) -> None:
    """Make acknowledged commits survive a crash: this throwaway cluster runs with ``synchronous_commit=off``."""
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()


async def _assert_ready(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    assert response.json()["down"] == []
    assert "retry-after" not in response.headers


@pytest.mark.parametrize("dependency", ["valkey", "postgres"])
async def test_readiness_reports_a_dependency_down_and_recovers_when_it_returns(
    client: AsyncTestClient[Litestar], servers: Servers, dependency: str
) -> None:
    server = servers.valkey if dependency == "valkey" else servers.postgres
    await _assert_ready(client)
    await asyncio.to_thread(server.kill)
    try:
        response, elapsed = await _poll(
            lambda: client.get("/health/ready"), lambda r: r.status_code == 503, DETECT_WITHIN_S
        )
        _assert_not_ready(response, [dependency])
        assert elapsed < DETECT_WITHIN_S
        # Liveness does not depend on backing services: the orchestrator must not restart the process.
        assert (await client.get("/health/live")).status_code == 200
    finally:
        await asyncio.to_thread(server.restart)

    await _poll(lambda: client.get("/health/ready"), lambda r: r.status_code == 200, RECOVER_WITHIN_S)
    await _assert_ready(client)


async def test_api_answers_503_storage_unavailable_while_postgres_is_down(
    client: AsyncTestClient[Litestar], servers: Servers
) -> None:
    bootstrap = {"Authorization": f"Bearer {BOOTSTRAP_KEY}"}
    created = await client.post("/v1/keys", json={"name": "faults", "role": "admin"}, headers=bootstrap)
    assert created.status_code == 201, created.text
    # A stored key, so that authenticating the request itself needs the database.
    stored = {"Authorization": f"Bearer {created.json()['secret']}"}
    assert (await client.get("/v1/keys", headers=stored)).status_code == 200
    await _flush_to_disk(servers.database_url)

    await asyncio.to_thread(servers.postgres.kill)
    try:
        for headers in (stored, bootstrap):
            started = time.monotonic()
            response = await client.get("/v1/keys", headers=headers)
            assert time.monotonic() - started < DETECT_WITHIN_S
            assert_problem(response, 503, "storage_unavailable")
            assert int(response.headers["retry-after"]) > 0
        write = await client.post("/v1/keys", json={"name": "during-outage", "role": "agent"}, headers=bootstrap)
        assert_problem(write, 503, "storage_unavailable")
    finally:
        await asyncio.to_thread(servers.postgres.restart)

    # Requests recover by themselves once the server is back: no rebuilt app, no stale pooled connection.
    response, _ = await _poll(
        lambda: client.get("/v1/keys", headers=stored), lambda r: r.status_code == 200, RECOVER_WITHIN_S
    )
    names = [item["name"] for item in response.json()["items"]]
    assert "faults" in names
    assert "during-outage" not in names
