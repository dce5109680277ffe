from collections.abc import AsyncIterator

import pytest
from dishka import Provider, Scope
from litestar import Litestar
from litestar.testing import AsyncTestClient

from support.application.keys import ListApiKeys
from support.config import Settings
from support.container import create_app
from support.ports.identity import ApiKeyPage
from tests.helpers import assert_problem


class ExplodingListApiKeys(ListApiKeys):
    def __init__(self) -> None:
        pass

    async def execute(self, **_: object) -> ApiKeyPage:
        raise RuntimeError("secret internal detail: password=hunter2")


@pytest.fixture
async def exploding_client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    overrides = Provider(scope=Scope.REQUEST)
    overrides.provide(ExplodingListApiKeys, provides=ListApiKeys, override=True)
    async with AsyncTestClient(create_app(settings, overrides)) as test_client:
        yield test_client


async def test_unexpected_error_is_a_500_problem_without_internals(
    exploding_client: AsyncTestClient[Litestar], admin_headers: dict[str, str]
) -> None:
    response = await exploding_client.get("/v1/keys", headers=admin_headers)
    body = assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert body["request_id"]
