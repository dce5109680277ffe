"""No event is lost: the serving process is SIGKILLed while a webhook is in flight, after its event committed.

``support serve`` runs as a real process on the session's PostgreSQL and Valkey. A receiver in this test holds
the first delivery request open, so the process dies after the event was committed and sent but before its
delivery was recorded. A new process sends that event again once the dead worker's lease runs out, and sends
the events committed while no process was running. Every event id arrives; the one in flight arrives twice with
the same id and body, which is the at-least-once contract: counted by ``Webhook-Id``, each event arrives once.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
from support.adapters.postgres.webhooks import PostgresWebhookOutbox
from support.devservers.postgres import free_port
from support.domain.ids import new_id
from support.domain.webhooks import OutboundEvent, WebhookEventType, verify_signature
from tests.fakes.webhooks import HOLD, WebhookReceiver

pytestmark = pytest.mark.slow

SUPPORT = Path(sys.executable).with_name("support")
ADMIN_KEY = "outbox-process-admin-key"
TIMEOUT_S = 4  # per attempt; a dead worker's claim is leased for twice that
READY_WITHIN_S = 60.0


class ServeProcess:
    """``support serve`` on given servers, output to files, fast webhook settings."""

    def __init__(self, folder: Path, database_url: str, valkey_url: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.base_url = f"http://127.0.0.1:{free_port()}"
        self._log = folder / "serve.log"
        env = {name: value for name, value in os.environ.items() if not name.startswith("SUPPORT_")}
        env |= {
            "SUPPORT_DATABASE_URL": database_url,
            "SUPPORT_VALKEY_URL": valkey_url,
            "SUPPORT_DATA_DIR": str(folder),
            "SUPPORT_PORT": self.base_url.rsplit(":", 1)[1],
            "SUPPORT_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
            "SUPPORT_LOG_LEVEL": "warning",
            # The knowledge base is not used here; the fake embedder starts in no time.
            "SUPPORT_EMBEDDING__PROVIDER": "hashing",
            "SUPPORT_WEBHOOKS__TIMEOUT_S": str(TIMEOUT_S),
            "SUPPORT_WEBHOOKS__POLL_INTERVAL_S": "0.05",
            "SUPPORT_WEBHOOKS__BACKOFF_BASE_S": "0.2",
            "SUPPORT_WEBHOOKS__BACKOFF_CAP_S": "1",
        }
        with self._log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - the project's own console script
                [str(SUPPORT), "serve", "--no-migrate"], stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )

    @property
    def output(self) -> str:
        return self._log.read_text(errors="replace")

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                if self.process.poll() is not None:
                    pytest.fail(f"support serve exited with {self.process.returncode}:\n{self.output}")
                try:
                    if (await client.get(f"{self.base_url}/health/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"not ready within {READY_WITHIN_S:g} s:\n{self.output}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is recorded."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def processes() -> Iterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for process in started:
        process.close()


async def commit_events(engine: AsyncEngine, *event_types: WebhookEventType) -> list[OutboundEvent]:
    """Events written as the use cases write them: through the outbox, then committed."""
    events = [
        OutboundEvent(id=new_id(), type=kind, conversation_id=None, occurred_at=datetime.now(UTC), data={"n": n})
        for n, kind in enumerate(event_types)
    ]
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        outbox = PostgresWebhookOutbox(session)
        for event in events:
            await outbox.enqueue(event)
        await SqlAlchemyUnitOfWork(session).commit()
    return events


async def delivery_state(engine: AsyncEngine) -> dict[str, tuple[str, int]]:
    async with engine.connect() as connection:
        rows = await connection.execute(sa.text("SELECT event_id, status, attempts FROM webhook_deliveries"))
        return {str(row.event_id): (row.status, row.attempts) for row in rows}


async def test_an_event_in_flight_when_the_process_dies_arrives_once_per_id(
    database_url: str, valkey_url: str, engine: AsyncEngine, tmp_path: Path, processes: list[ServeProcess]
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with WebhookReceiver(HOLD) as receiver:  # the first request is held open; later ones get a 200
        first = ServeProcess(tmp_path / "first", database_url, valkey_url)
        processes.append(first)
        await first.wait_ready()
        async with httpx.AsyncClient(base_url=first.base_url, headers=admin, timeout=10) as api:
            created = await api.post(
                "/v1/webhooks", json={"url": receiver.url, "events": [kind.value for kind in WebhookEventType]}
            )
        assert created.status_code == 201, created.text
        webhook_id, secret = created.json()["id"], created.json()["secret"]

        before = await commit_events(engine, *WebhookEventType)
        await receiver.wait_until(lambda: len(receiver.requests) == len(before))
        in_flight = receiver.requests[0].headers["webhook-id"]
        assert receiver.requests[0].status == HOLD
        # The others were answered; wait until the worker has recorded them, so only one is in flight.
        deadline = time.monotonic() + 10
        while sum(status == "delivered" for status, _ in (await delivery_state(engine)).values()) < len(before) - 1:
            assert time.monotonic() < deadline, await delivery_state(engine)
            await asyncio.sleep(0.05)
        # Committed, sent, not recorded: the window the outbox exists for.
        assert (await delivery_state(engine))[in_flight] == ("pending", 1)

        first.kill()
        assert (await delivery_state(engine))[in_flight] == ("pending", 1)
        # Committed while no process runs at all.
        during = await commit_events(engine, WebhookEventType.HANDOFF_CLAIMED, WebhookEventType.MESSAGE_CREATED)
        expected = {str(event.id) for event in before + during}

        second = ServeProcess(tmp_path / "second", database_url, valkey_url)
        processes.append(second)
        await second.wait_ready()
        await receiver.wait_until(lambda: set(receiver.event_ids()) == expected, timeout_s=4 * TIMEOUT_S + 10)
        async with httpx.AsyncClient(base_url=second.base_url, headers=admin, timeout=10) as api:
            deadline = time.monotonic() + 10
            while True:
                items = (await api.get(f"/v1/webhooks/{webhook_id}/deliveries")).json()["items"]
                if len(items) == len(expected) and all(item["status"] == "delivered" for item in items):
                    break
                assert time.monotonic() < deadline, items
                await asyncio.sleep(0.05)

    # At least once: the event in flight when the process died was sent again, with the same id and body.
    raw = receiver.event_ids()
    assert raw[in_flight] == 2
    assert all(count == 1 for event_id, count in raw.items() if event_id != in_flight)
    assert sum(raw.values()) == len(expected) + 1
    # Deduplicated by Webhook-Id, as receivers are told to: every event exactly once.
    deduplicated = {request.headers["webhook-id"]: request for request in receiver.requests}
    assert sorted(deduplicated) == sorted(expected)
    twice = [request for request in receiver.requests if request.headers["webhook-id"] == in_flight]
    assert twice[0].body == twice[1].body
    for request in receiver.requests:
        assert verify_signature(
            secret, int(request.headers["webhook-timestamp"]), request.body, request.headers["webhook-signature"]
        )
        assert msgspec.json.decode(request.body)["id"] == request.headers["webhook-id"]
    attempts = {item["event_id"]: item["attempts"] for item in items}
    assert attempts == {event_id: 2 if event_id == in_flight else 1 for event_id in expected}
