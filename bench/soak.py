"""Soak under faults: customers chat for minutes while Valkey, PostgreSQL and Claude fail in turn.

Run: ``.venv/bin/python -m bench.soak --clients N --minutes M`` (``--quick``: 4 clients, about a minute). It starts
its own embedded PostgreSQL (durable: it is crashed and restarted) and Valkey, a fake Anthropic Messages API in
this process, and a real ``support serve`` process (migrations, the sample help center, Claude through the real
SDK pointed at the fake, rate limits off). N customers then chat without pause, alternating JSON and streamed
sends, each with an Idempotency-Key, honouring ``Retry-After`` (capped at 2 s) when refused, and starting a new
conversation every 20 turns or when theirs was handed to a person. The run is cut into phases of equal length:

    baseline · valkey_down · valkey_back · postgres_down · postgres_back · claude_failing · claude_back

``valkey_down``: Valkey is killed at the start and restarted at the end. ``postgres_down``: PostgreSQL is killed
(immediate shutdown, a crash), left down for a third of the phase, then restarted on the same port and data
folder. ``claude_failing``: the fake API answers 529, or nothing within the SDK timeout, alternately.

At the end every accepted send (2xx) is looked up in PostgreSQL by its Idempotency-Key: accepted-but-lost must
be 0. Reported per phase: sends, accepted, replies, errors by kind (status and problem code, or the code of an
``error`` event that ended a stream), and latency p50/p99 of the whole send (and of the first delta of streams).
Results go to ``bench/results/soak.json``; a markdown table is printed.
"""

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import httpx
from httpx_sse import aconnect_sse

from bench.chat import ServerProcess, percentile
from support.devservers.postgres import EmbeddedPostgres
from support.devservers.valkey import EmbeddedValkey
from tests.fakes.anthropic_server import FakeAnthropic, RecordedRequest, Response, Streamed, citing_reply, overloaded

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
ADMIN_KEY = "soak-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
TOKEN_SECRET = "soak-token-secret-soak-token-secret"  # noqa: S105 - a throwaway server's signing secret
PHASES = ("baseline", "valkey_down", "valkey_back", "postgres_down", "postgres_back", "claude_failing", "claude_back")
LLM_TIMEOUT_S = 2.0
LLM_MAX_RETRIES = 2
LLM_BREAKER_COOLDOWN_S = 2.0
REQUEST_TIMEOUT_S = 60.0
TURNS_PER_CONVERSATION = 20
MAX_BACKOFF_S = 2.0
QUESTIONS = (
    "How long does a refund take to reach my card?",
    "My card was declined at checkout, what should I do?",
    "How do I reset my password?",
    "Do you ship internationally, and who pays customs duties?",
    "The tracking says delivered but I never got the package.",
    "How do I cancel my Northwind Plus membership?",
    "Which payment methods do you accept?",
    "How do I change the email address on my account?",
)


def latency(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 0.5) * 1000, 1),
        "p99_ms": round(percentile(values, 0.99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


# --- the fake Claude -------------------------------------------------------------------------------------------


@dataclass
class Claude:
    """The fake Messages API's behaviour, switched by the phases."""

    failing: bool = False
    calls: int = 0
    _flip: int = 0

    def answer(self, request: RecordedRequest) -> Response:
        self.calls += 1
        if not self.failing:
            return citing_reply(request)
        self._flip += 1
        # Overloaded, or no status line within the SDK's timeout.
        return overloaded() if self._flip % 2 else Streamed(citing_reply(request).steps, delay_s=LLM_TIMEOUT_S * 2)


# --- servers ---------------------------------------------------------------------------------------------------


@dataclass
class Backends:
    postgres: EmbeddedPostgres
    valkey: EmbeddedValkey
    database_url: str
    valkey_url: str


@contextlib.contextmanager
def backends(scratch: Path) -> Any:
    postgres = EmbeddedPostgres(scratch / "postgres", durable=True)
    valkey = EmbeddedValkey(scratch / "valkey", durable=False)
    try:
        yield Backends(postgres, valkey, postgres.start(), valkey.start())
    finally:
        valkey.stop()
        postgres.stop()


def server_env(backends: Backends, claude: FakeAnthropic, embedder: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SUPPORT_", "ANTHROPIC_"))}
    return env | {
        "SUPPORT_ENV": "prod",
        "SUPPORT_LOG_LEVEL": "warning",
        "SUPPORT_DATABASE_URL": backends.database_url,
        "SUPPORT_VALKEY_URL": backends.valkey_url,
        "SUPPORT_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
        "SUPPORT_CONVERSATIONS__TOKEN_SECRET": TOKEN_SECRET,
        "SUPPORT_LIMITS__ENABLED": "false",
        "SUPPORT_EMBEDDING__PROVIDER": embedder,
        "ANTHROPIC_API_KEY": "sk-ant-soak",
        "SUPPORT_LLM__BASE_URL": claude.base_url,
        "SUPPORT_LLM__TIMEOUT_S": str(LLM_TIMEOUT_S),
        "SUPPORT_LLM__MAX_RETRIES": str(LLM_MAX_RETRIES),
        # Shorter than a phase, so claude_back shows replies resuming once the breaker's probe succeeds.
        "SUPPORT_LLM__BREAKER_COOLDOWN_S": str(LLM_BREAKER_COOLDOWN_S),
    }


# --- customers -------------------------------------------------------------------------------------------------


@dataclass
class Send:
    """One send and what came of it (``time.monotonic`` clock)."""

    conversation_id: str
    key: str
    kind: str
    started: float
    elapsed_s: float = 0.0
    first_delta_s: float | None = None
    status: int = 0
    error: str | None = None  # "<status> <code>", "stream <code>" or "transport <exception>"
    replied: bool = False
    # The reply offers a person because the model was unavailable (decision reason llm_unavailable).
    unavailable: bool = False
    retry_after_s: float = 0.0

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Customer:
    number: int
    conversation: dict[str, Any] | None = None
    turns: int = 0
    sends: list[Send] = field(default_factory=list)


async def _start_conversation(client: httpx.AsyncClient, customer: Customer) -> dict[str, Any] | None:
    response = await client.post(
        "/v1/conversations", json={"customer": {"external_id": f"soak-{customer.number}"}}, headers=ADMIN
    )
    if response.status_code != 201:
        return None
    body: dict[str, Any] = response.json()
    return body


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "1")), MAX_BACKOFF_S)
    except ValueError:
        return 1.0


async def _send(client: httpx.AsyncClient, conversation: dict[str, Any], text: str, kind: str) -> Send:
    path = f"/v1/conversations/{conversation['id']}/messages"
    send = Send(conversation["id"], str(uuid4()), kind, time.monotonic())
    headers = {"Authorization": f"Bearer {conversation['customer_token']}", "Idempotency-Key": send.key}
    try:
        if kind == "json":
            response = await client.post(path, json={"content": text}, headers=headers)
            send.status = response.status_code
            if send.accepted:
                body = response.json()
                send.replied = body["reply"] is not None
                send.unavailable = send.replied and _unavailable(body["reply"])
                conversation["status"] = body["conversation_status"]
            else:
                send.error = f"{response.status_code} {_code(response)}"
                send.retry_after_s = _retry_after(response)
        else:
            async with aconnect_sse(client, "POST", f"{path}/stream", json={"content": text}, headers=headers) as sse:
                send.status = sse.response.status_code
                if not send.accepted:
                    await sse.response.aread()
                    send.error = f"{send.status} {_code(sse.response)}"
                    send.retry_after_s = _retry_after(sse.response)
                else:
                    async for event in sse.aiter_sse():
                        if event.event == "delta" and send.first_delta_s is None:
                            send.first_delta_s = time.monotonic() - send.started
                        elif event.event == "done":
                            send.replied = True
                            send.unavailable = _unavailable(event.json())
                        elif event.event == "handoff":
                            conversation["status"] = event.json()["status"]
                        elif event.event == "error":
                            send.error = f"stream {event.json()['code']}"
    except httpx.HTTPError as error:
        send.error = f"transport {type(error).__name__}"
        send.retry_after_s = 1.0
    send.elapsed_s = time.monotonic() - send.started
    return send


def _unavailable(reply: dict[str, Any]) -> bool:
    decision = reply.get("decision") or {}
    return bool(decision.get("reason_code") == "llm_unavailable")


def _code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("code", "?"))
    except ValueError:
        return "not-json"


async def customer_loop(client: httpx.AsyncClient, customer: Customer, stop: asyncio.Event) -> None:
    rng = random.Random(customer.number)
    while not stop.is_set():
        conversation = customer.conversation
        if conversation is None or customer.turns >= TURNS_PER_CONVERSATION or conversation.get("status") != "bot":
            with contextlib.suppress(httpx.HTTPError):
                customer.conversation = await _start_conversation(client, customer)
            customer.turns = 0
            if customer.conversation is None:
                await asyncio.sleep(1.0)
            continue
        customer.turns += 1
        kind = "stream" if customer.turns % 2 else "json"
        text = f"{rng.choice(QUESTIONS)} (customer {customer.number}, turn {customer.turns})"
        send = await _send(client, conversation, text, kind)
        customer.sends.append(send)
        if send.retry_after_s:
            await asyncio.sleep(send.retry_after_s)


# --- the run ---------------------------------------------------------------------------------------------------


@dataclass
class Clock:
    marks: list[tuple[str, float]] = field(default_factory=list)

    def mark(self, phase: str) -> None:
        self.marks.append((phase, time.monotonic()))
        print(f"  {time.strftime('%H:%M:%S')} {phase}", flush=True)

    def phase_of(self, moment: float) -> str:
        current = self.marks[0][0]
        for name, started in self.marks:
            if moment >= started:
                current = name
        return current


async def run_faults(clock: Clock, backends: Backends, claude: Claude, phase_s: float) -> None:
    await asyncio.sleep(phase_s)
    clock.mark("valkey_down")
    await asyncio.to_thread(backends.valkey.kill)
    await asyncio.sleep(phase_s)
    await asyncio.to_thread(backends.valkey.restart)
    clock.mark("valkey_back")
    await asyncio.sleep(phase_s)
    clock.mark("postgres_down")
    started = time.monotonic()
    await asyncio.to_thread(backends.postgres.kill)
    await asyncio.sleep(phase_s / 3)
    await asyncio.to_thread(backends.postgres.restart)
    await asyncio.sleep(max(0.0, phase_s - (time.monotonic() - started)))
    clock.mark("postgres_back")
    await asyncio.sleep(phase_s)
    clock.mark("claude_failing")
    claude.failing = True
    await asyncio.sleep(phase_s)
    claude.failing = False
    clock.mark("claude_back")
    await asyncio.sleep(phase_s)


async def verify(database_url: str, sends: Sequence[Send]) -> dict[str, int]:
    """Look every accepted send up in PostgreSQL by its Idempotency-Key."""
    connection = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await connection.fetch(
            "SELECT conversation_id::text AS conversation, idempotency_key AS key, id FROM messages "
            "WHERE role = 'customer' AND idempotency_key IS NOT NULL"
        )
        answered = await connection.fetchval(
            "SELECT count(*) FROM messages customer WHERE customer.role = 'customer' AND EXISTS ("
            "SELECT 1 FROM messages reply WHERE reply.role = 'assistant' AND customer.id = ANY(reply.reply_to))"
        )
    finally:
        await connection.close()
    stored = Counter((row["conversation"], row["key"]) for row in rows)
    accepted = {(send.conversation_id, send.key) for send in sends if send.accepted}
    refused = {(send.conversation_id, send.key) for send in sends if not send.accepted}
    return {
        "accepted": len(accepted),
        "accepted_but_lost": len(accepted - set(stored)),
        "stored_twice": sum(1 for count in stored.values() if count > 1),
        "refused_but_stored": len(refused & set(stored)),  # the commit landed, the answer did not reach the client
        "customer_messages_stored": len(rows),
        "customer_messages_answered": int(answered or 0),
    }


def report(clock: Clock, sends: Sequence[Send]) -> list[dict[str, Any]]:
    phases: list[dict[str, Any]] = []
    for name in PHASES:
        chosen = [send for send in sends if clock.phase_of(send.started) == name]
        errors = Counter(send.error for send in chosen if send.error)
        phases.append(
            {
                "phase": name,
                "sends": len(chosen),
                "accepted": sum(send.accepted for send in chosen),
                "replied": sum(send.replied for send in chosen),
                "llm_unavailable_replies": sum(send.unavailable for send in chosen),
                "errors": dict(errors.most_common()),
                "send": latency([send.elapsed_s for send in chosen if send.accepted]),
                "first_delta": latency([send.first_delta_s for send in chosen if send.first_delta_s is not None]),
            }
        )
    return phases


def log_summary(log: str, top: int = 15) -> dict[str, int]:
    """The server's warnings and errors by message (ids and numbers blanked), most frequent first."""
    counts: Counter[str] = Counter()
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in {"warning", "error", "critical"}:
            message = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<id>", str(record.get("event", "")))
            message = re.sub(r"[0-9]+(\.[0-9]+)?", "N", message)[:160]
            counts[f"{record['level']}: {message}"] += 1
    return dict(counts.most_common(top))


def table(phases: Sequence[dict[str, Any]], totals: dict[str, int]) -> str:
    lines = [
        (
            "| phase | sends | accepted | replied (of which llm_unavailable) | errors (kind: count) "
            "| send p50 / p99 ms | first delta p50 / p99 ms |"
        ),
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for phase in phases:
        errors = ", ".join(f"{kind}: {count}" for kind, count in phase["errors"].items()) or "none"
        send, first = phase["send"], phase["first_delta"]
        lines.append(
            f"| {phase['phase']} | {phase['sends']} | {phase['accepted']} "
            f"| {phase['replied']} ({phase['llm_unavailable_replies']}) | {errors} "
            f"| {send.get('p50_ms', '-')} / {send.get('p99_ms', '-')} "
            f"| {first.get('p50_ms', '-')} / {first.get('p99_ms', '-')} |"
        )
    lines.append("")
    lines.append(
        f"accepted {totals['accepted']}, accepted but lost **{totals['accepted_but_lost']}**, stored twice "
        f"{totals['stored_twice']}, refused but stored {totals['refused_but_stored']}; customer messages stored "
        f"{totals['customer_messages_stored']}, answered {totals['customer_messages_answered']}"
    )
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def serving(backends: Backends, api: FakeAnthropic, embedder: str, scratch: Path) -> AsyncIterator[str]:
    command = [str(Path(sys.executable).parent / "support"), "serve", "--sample-data"]
    server = ServerProcess(command, server_env(backends, api, embedder), scratch / "serve.log")
    try:
        await server.wait_ready("/health/ready", timeout_s=300)
        yield server.url
    finally:
        await asyncio.to_thread(server.stop)


async def soak(clients: int, minutes: float, embedder: str) -> dict[str, Any]:
    phase_s = minutes * 60 / len(PHASES)
    claude = Claude()
    with tempfile.TemporaryDirectory(prefix="support-soak-") as folder, backends(Path(folder)) as servers:
        scratch = Path(folder)
        async with FakeAnthropic(default=claude.answer) as api, serving(servers, api, embedder, scratch) as url:
            limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
            async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
                customers = [Customer(number) for number in range(clients)]
                stop = asyncio.Event()
                clock = Clock()
                clock.mark("baseline")
                loops = [asyncio.create_task(customer_loop(client, customer, stop)) for customer in customers]
                try:
                    await run_faults(clock, servers, claude, phase_s)
                finally:
                    stop.set()
                    await asyncio.gather(*loops)
            sends = [send for customer in customers for send in customer.sends]
            totals = await verify(servers.database_url, sends)
            server_log = (scratch / "serve.log").read_text(errors="replace")
    return {
        "command": " ".join(["python -m bench.soak", *sys.argv[1:]]),
        "clients": clients,
        "minutes": minutes,
        "phase_s": round(phase_s, 1),
        "embedder": embedder,
        "llm": {
            "timeout_s": LLM_TIMEOUT_S,
            "max_retries": LLM_MAX_RETRIES,
            "breaker_cooldown_s": LLM_BREAKER_COOLDOWN_S,
            "fake_api_calls": claude.calls,
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_at_start": os.getloadavg()},
        "phases": report(clock, sends),
        "totals": totals,
        "server_500s_logged": server_log.count("unhandled error"),
        "server_warnings": log_summary(server_log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, help="concurrent customers (default 8; quick 4)")
    parser.add_argument("--minutes", type=float, help="length of the run (default 7; quick 1)")
    parser.add_argument("--quick", action="store_true", help="a one-minute run with 4 customers")
    parser.add_argument(
        "--embedder", choices=["onnx", "hashing"], default="onnx", help="the server's query embedder (default onnx)"
    )
    args = parser.parse_args()
    clients = args.clients or (4 if args.quick else 8)
    minutes = args.minutes or (1.0 if args.quick else 7.0)
    print(f"soak: {clients} customers for {minutes:g} min, {len(PHASES)} phases", flush=True)
    result = asyncio.run(soak(clients, minutes, args.embedder))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(result["phases"], result["totals"]))
    print(f"\nserver 500s logged: {result['server_500s_logged']}; results in bench/results/soak.json")
    if result["totals"]["accepted_but_lost"] or result["server_500s_logged"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
