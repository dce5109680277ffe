"""Two API processes sharing PostgreSQL and Valkey: an agent's reply posted to one reaches a customer streaming
from the other, and so does every status change (the feed fans out through Valkey pub/sub + streams).
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import websockets
from httpx_sse import aconnect_sse
from sqlalchemy.ext.asyncio import AsyncEngine

from support.devservers.postgres import free_port
from tests.fakes.anthropic_server import FakeAnthropic, Pause, message, text

pytestmark = pytest.mark.slow

SUPPORT = Path(sys.executable).with_name("support")
ADMIN = "two-processes-admin-key"
READY_WITHIN_S = 60.0


class ApiProcess:
    """``support serve`` against the given servers, without migrating (the test database is migrated)."""

    def __init__(self, tmp: Path, database_url: str, valkey_url: str, **settings: str) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._log = tmp / f"api-{self.port}.log"
        env = {name: value for name, value in os.environ.items() if not name.startswith("SUPPORT_")}
        env |= {
            "SUPPORT_DATABASE_URL": database_url,
            "SUPPORT_VALKEY_URL": valkey_url,
            "SUPPORT_PORT": str(self.port),
            "SUPPORT_BOOTSTRAP_ADMIN_KEY": ADMIN,
            # Both processes must accept the customer tokens either one issues.
            "SUPPORT_CONVERSATIONS__TOKEN_SECRET": "shared-secret-for-both-processes",
            "SUPPORT_LOG_LEVEL": "warning",
            "SUPPORT_DATA_DIR": str(tmp / f"data-{self.port}"),
        }
        env |= settings
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the project's own console script
                [str(SUPPORT), "serve", "--no-migrate"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"support serve exited with {self.process.returncode}:\n{self._log.read_text()}")
            try:
                if httpx.get(f"{self.base_url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"support serve was not ready within {READY_WITHIN_S} s:\n{self._log.read_text()}")

    def log(self) -> str:
        return self._log.read_text()

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@pytest.fixture
def two_processes(tmp_path: Path, database_url: str, valkey_url: str) -> Iterator[tuple[ApiProcess, ApiProcess]]:
    first, second = ApiProcess(tmp_path, database_url, valkey_url), ApiProcess(tmp_path, database_url, valkey_url)
    try:
        first.wait_ready()
        second.wait_ready()
        yield first, second
    finally:
        first.stop()
        second.stop()


async def test_an_agent_reply_posted_to_one_process_reaches_a_customer_streaming_from_another(
    two_processes: tuple[ApiProcess, ApiProcess],
) -> None:
    one, other = two_processes
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        httpx.AsyncClient(base_url=one.base_url, timeout=30) as api_one,
        httpx.AsyncClient(base_url=other.base_url, timeout=30) as api_other,
    ):
        key = await api_one.post("/v1/keys", json={"name": "Ana", "role": "agent"}, headers=admin)
        agent = {"Authorization": f"Bearer {key.json()['secret']}"}
        started = await api_one.post("/v1/conversations", json={"customer": {"external_id": "c-1"}}, headers=admin)
        conversation = started.json()
        customer = {"Authorization": f"Bearer {conversation['customer_token']}"}
        path = f"/v1/conversations/{conversation['id']}"
        seen: list[dict[str, Any]] = []

        async def follow() -> None:
            async with aconnect_sse(api_other, "GET", f"{path}/events", headers=customer) as source:
                async for sse in source.aiter_sse():  # one by one: the test reads `seen` meanwhile
                    seen.append(  # noqa: PERF401
                        {"id": int(sse.id), "event": sse.event, "data": json.loads(sse.data)}
                    )

        async def arrived(predicate: Any) -> dict[str, Any]:
            async with asyncio.timeout(15):
                while True:
                    match = next((event for event in seen if predicate(event)), None)
                    if match is not None:
                        return match
                    await asyncio.sleep(0.02)

        follower = asyncio.create_task(follow())
        try:
            await asyncio.sleep(0.5)  # the subscription is in place before anything happens
            assert (await api_one.post(f"{path}/handoff", headers=customer)).status_code == 200
            await arrived(lambda e: e["event"] == "handoff" and e["data"]["status"] == "pending_human")
            claimed = await api_other.post(f"{path}/claim", headers=agent)
            assert claimed.status_code == 200, claimed.text
            await arrived(lambda e: e["event"] == "handoff" and e["data"]["status"] == "human")

            posted = await api_one.post(f"{path}/agent-messages", json={"content": "Hello from Ana"}, headers=agent)
            assert posted.status_code == 201, posted.text
            reply = await arrived(lambda e: e["event"] == "message" and e["data"]["role"] == "agent")
            assert reply["data"]["content"] == "Hello from Ana"
            assert reply["data"]["id"] == posted.json()["message"]["id"]

            assert (await api_one.post(f"{path}/release", headers=agent)).status_code == 200
            await arrived(lambda e: e["event"] == "handoff" and e["data"]["status"] == "bot")
        finally:
            follower.cancel()
        ids = [event["id"] for event in seen]
        assert ids == sorted(set(ids))


async def test_a_stopping_process_ends_its_feeds_and_sockets_and_their_clients_resume_on_another(
    two_processes: tuple[ApiProcess, ApiProcess],
) -> None:
    stopping, staying = two_processes
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with (
        httpx.AsyncClient(base_url=stopping.base_url, timeout=30) as api_stopping,
        httpx.AsyncClient(base_url=staying.base_url, timeout=30) as api_staying,
    ):
        started = await api_staying.post("/v1/conversations", json={"customer": {"external_id": "c-2"}}, headers=admin)
        conversation = started.json()
        customer = {"Authorization": f"Bearer {conversation['customer_token']}"}
        path = f"/v1/conversations/{conversation['id']}"
        ws_url = stopping.base_url.replace("http", "ws") + f"{path}/ws?access_token={conversation['customer_token']}"
        seen: list[int] = []
        first_seen = asyncio.Event()

        async def follow() -> None:
            async with aconnect_sse(api_stopping, "GET", f"{path}/events", headers=customer) as source:
                async for sse in source.aiter_sse():
                    seen.append(int(sse.id))
                    first_seen.set()

        async def read_until_closed(socket: websockets.ClientConnection) -> None:
            while True:
                await socket.recv()

        async with websockets.connect(ws_url) as socket:
            follower = asyncio.create_task(follow())
            await asyncio.sleep(0.5)  # the subscription is in place
            assert (await api_staying.post(f"{path}/handoff", headers=customer)).status_code == 200
            await asyncio.wait_for(first_seen.wait(), 15)

            stopping.process.send_signal(signal.SIGTERM)
            # The feed ends as a finished response (no error, no cut connection): an EventSource reconnects.
            await asyncio.wait_for(follower, 15)
            # The socket is closed by the server, as a restart.
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(read_until_closed(socket), 15)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1012
        assert stopping.process.wait(15) == 0
        log = stopping.log()
        assert "timeout graceful shutdown exceeded" not in log
        assert "Exception in ASGI application" not in log

        # The client resumes on the process that stayed, from the last event it saw.
        assert (await api_staying.post(f"{path}/close", headers=customer)).status_code == 200
        async with aconnect_sse(
            api_staying, "GET", f"{path}/events", headers=customer | {"Last-Event-ID": str(seen[-1])}
        ) as source:
            resumed = await anext(source.aiter_sse())
        assert int(resumed.id) > seen[-1]
        assert resumed.event == "handoff"
        assert json.loads(resumed.data)["status"] == "closed"


async def test_replies_still_written_when_the_grace_period_ends_are_answered_503_not_cut(
    tmp_path: Path, database_url: str, valkey_url: str, engine: AsyncEngine
) -> None:
    """SIGTERM while Claude writes replies that outlast the grace period: each request gets a proper end.

    Until 12-07 uvicorn cut them after a fixed 5 s: the JSON send got a plain-text 500, the reply stream a
    truncated body without an ``error`` event, and the log a traceback.
    """
    async with FakeAnthropic(default=message(text("Refunds take ", Pause(600), "five days."))) as anthropic:
        api = ApiProcess(
            tmp_path,
            database_url,
            valkey_url,
            SUPPORT_LLM__PROVIDER="anthropic",
            SUPPORT_LLM__API_KEY="sk-ant-fake",
            SUPPORT_LLM__BASE_URL=anthropic.base_url,
            SUPPORT_LLM__TIMEOUT_S="900",
            SUPPORT_HTTP__SHUTDOWN_GRACE_S="1",
        )
        try:
            api.wait_ready()
            admin = {"Authorization": f"Bearer {ADMIN}"}
            async with httpx.AsyncClient(base_url=api.base_url, timeout=60) as client:
                paths = []
                for customer in ("json-sender", "stream-sender"):
                    started = await client.post(
                        "/v1/conversations", json={"customer": {"external_id": customer}}, headers=admin
                    )
                    paths.append(f"/v1/conversations/{started.json()['id']}/messages")
                body = {"content": "How long do refunds take?"}
                sent = asyncio.create_task(client.post(paths[0], json=body, headers=admin))
                events: list[tuple[str, dict[str, Any]]] = []
                async with aconnect_sse(client, "POST", f"{paths[1]}/stream", json=body, headers=admin) as source:
                    async for sse in source.aiter_sse():
                        events.append((sse.event, json.loads(sse.data)))
                        if sse.event == "delta":  # both replies are being written (one after the other began)
                            while len(anthropic.requests) < 2:  # noqa: ASYNC110 - polling the fake's record
                                await asyncio.sleep(0.05)
                            api.process.send_signal(signal.SIGTERM)
                answered = await sent

            assert answered.status_code == 503, answered.text
            assert answered.headers["content-type"].startswith("application/problem+json")
            assert answered.headers["retry-after"]
            assert answered.json()["code"] == "service_unavailable"
            assert [name for name, _ in events] == ["message", "delta", "error"]
            assert events[-1][1]["status"] == 503
            assert events[-1][1]["code"] == "service_unavailable"

            assert api.process.wait(30) == 0
            log = api.log()
            assert "timeout graceful shutdown exceeded" not in log
            assert "Traceback" not in log
            # The messages are stored, and so is what each reply had said, marked interrupted.
            async with engine.connect() as connection:
                rows = (
                    await connection.execute(
                        sa.text(
                            "SELECT role, content, interrupted FROM messages WHERE conversation_id IN "
                            "(SELECT conversation_id FROM messages WHERE content = :sent) ORDER BY role"
                        ),
                        {"sent": body["content"]},
                    )
                ).all()
            assert sorted((row.role, row.interrupted) for row in rows) == [
                ("assistant", True),
                ("assistant", True),
                ("customer", False),
                ("customer", False),
            ]
        finally:
            api.stop()
