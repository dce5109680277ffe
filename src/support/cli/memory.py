"""``support eval memory``: multi-conversation scripts through the memory use cases, scored at the recall level.

Each script is one customer: conversations on given days (their customer messages go through ``RememberFacts``),
then a question on a later day (``RecallMemories``). A script counts as answered correctly when every expected
fact is among the recalled facts within the token budget and no stale value (an older, contradicted or expired
value, or a secret) is. In-memory adapters and a fixed clock: no servers, deterministic.
"""

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.memory.customer_memory import InMemoryCustomerMemory
from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.application.memory import MemoryPolicy, RecallMemories, RememberFacts
from support.domain.conversations import Message, MessageRole
from support.domain.ids import new_id
from support.domain.memory import RecalledFact, kind_of_key, normalise_value
from support.ports.knowledge import Embedder

DEFAULT_SCRIPTS = Path("tests/data/memory_scripts.json")
_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class ScriptConversation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    day: float
    messages: list[str]


class ScriptQuestion(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    day: float
    question: str


class ExpectedFact(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str
    value: str


class MemoryScript(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: str
    conversations: list[ScriptConversation]
    ask: ScriptQuestion
    expect: list[ExpectedFact] = msgspec.field(default_factory=list)
    # Values that must not be recalled: superseded, contradicted, expired, or secrets.
    stale: list[str] = msgspec.field(default_factory=list)


class ScriptFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    scripts: list[MemoryScript]
    description: str = ""


@dataclass(frozen=True, slots=True)
class ScriptOutcome:
    """How one script went: what was recalled, what was missing, which stale values came back."""

    id: str
    recalled: tuple[RecalledFact, ...]
    missing: tuple[str, ...]
    leaked: tuple[str, ...]

    @property
    def correct(self) -> bool:
        """Every expected fact recalled, nothing stale."""
        return not self.missing and not self.leaked


def load_scripts(path: Path) -> list[MemoryScript]:
    """The scripts of a JSON file (``tests/data/memory_scripts.json`` has the format)."""
    return msgspec.json.decode(path.read_bytes(), type=ScriptFile).scripts


def _same(key: str, expected: str, fact: RecalledFact) -> bool:
    kind = kind_of_key(key)
    if kind is None or fact.key != key:
        return False
    return normalise_value(kind, expected) == normalise_value(kind, fact.value)


def _mentions(stale: str, fact: RecalledFact) -> bool:
    """A stale value counts as recalled when it appears as a whole in a recalled value (case and spacing aside)."""
    compact = re.sub(r"\s+", "", stale).casefold()
    value = re.sub(r"\s+", "", fact.value).casefold()
    if not compact:
        return False
    return re.search(rf"(?<![a-z0-9]){re.escape(compact)}(?![a-z0-9])", value) is not None


def score_script(script: MemoryScript, recalled: Sequence[RecalledFact]) -> ScriptOutcome:
    """Compare what was recalled with what the script expects."""
    missing = tuple(
        f"{item.key}={item.value}"
        for item in script.expect
        if not any(_same(item.key, item.value, f) for f in recalled)
    )
    leaked = tuple(value for value in script.stale if any(_mentions(value, fact) for fact in recalled))
    return ScriptOutcome(script.id, tuple(recalled), missing, leaked)


async def run_script(script: MemoryScript, embedder: Embedder, policy: MemoryPolicy) -> ScriptOutcome:
    """Play one script through ``RememberFacts`` and ``RecallMemories`` on fresh in-memory adapters."""
    memory = InMemoryCustomerMemory()
    clock = FixedClock(_START)
    remember = RememberFacts(memory, embedder, InMemoryUnitOfWork(), clock, policy)
    recall = RecallMemories(memory, embedder, clock, policy)
    customer_id = new_id()
    for conversation in sorted(script.conversations, key=lambda item: item.day):
        conversation_id = new_id()
        for index, text in enumerate(conversation.messages):
            clock.current = _START + timedelta(days=conversation.day, minutes=index)
            message = Message(new_id(), conversation_id, MessageRole.CUSTOMER, text, clock.current)
            await remember.execute(customer_id, message)
    clock.current = _START + timedelta(days=script.ask.day)
    recalled = await recall.execute(customer_id, script.ask.question)
    return score_script(script, recalled)


async def run_scripts(
    scripts: Sequence[MemoryScript], embedder: Embedder, policy: MemoryPolicy | None = None
) -> list[ScriptOutcome]:
    """Every script, in order."""
    chosen = policy or MemoryPolicy()
    return [await run_script(script, embedder, chosen) for script in scripts]


def summarise(outcomes: Sequence[ScriptOutcome], *, embedder: str, budget: int) -> dict[str, object]:
    """The figures: share of scripts answered correctly, and what went wrong in the others."""
    correct = sum(outcome.correct for outcome in outcomes)
    return {
        "scripts": len(outcomes),
        "correct": correct,
        "share_correct": round(correct / len(outcomes), 4) if outcomes else 0.0,
        "embedder": embedder,
        "recall_token_budget": budget,
        "failures": [
            {"id": outcome.id, "missing": list(outcome.missing), "stale_recalled": list(outcome.leaked)}
            for outcome in outcomes
            if not outcome.correct
        ],
    }


def _embedder(kind: str) -> tuple[Embedder, str]:
    if kind == "hashing":
        hashing = HashingEmbedder(384)
        return hashing, hashing.model_id
    from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder

    onnx = OnnxMiniLMEmbedder()
    return onnx, onnx.model_id


def eval_memory(
    scripts: Annotated[Path, typer.Option(help="Scripts JSON ({scripts: [...]}, see the default file).")] = (
        DEFAULT_SCRIPTS
    ),
    embedder: Annotated[
        Literal["onnx", "hashing"], typer.Option(help="Embed facts and questions with the local model or the fake.")
    ] = "onnx",
    budget: Annotated[int | None, typer.Option(min=1, help="Recall token budget [default: the setting's default].")] = (
        None
    ),
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures here.")] = None,
) -> None:
    """Play multi-conversation scripts through customer memory and report the share answered correctly.

    Correct: every fact a later conversation needs is recalled (within the token budget), and no stale value
    (an older, contradicted or expired one, or a secret) is.
    """
    items = load_scripts(scripts)
    model, model_id = _embedder(embedder)
    policy = MemoryPolicy() if budget is None else MemoryPolicy(recall_token_budget=budget)
    outcomes = asyncio.run(run_scripts(items, model, policy))
    figures = summarise(outcomes, embedder=model_id, budget=policy.recall_token_budget)
    _print(outcomes, figures, scripts.name)
    typer.echo(json.dumps(figures))
    if json_out:
        json_out.write_text(json.dumps(figures, indent=2) + "\n")


def _print(outcomes: Sequence[ScriptOutcome], figures: dict[str, object], name: str) -> None:
    out = Console(stderr=True)
    table = Table("script", "result", "recalled", "missing", "stale recalled", title=f"Memory scripts ({name})")
    for outcome in outcomes:
        table.add_row(
            outcome.id,
            "ok" if outcome.correct else "[red]wrong[/red]",
            "; ".join(fact.text for fact in outcome.recalled),
            ", ".join(outcome.missing),
            ", ".join(outcome.leaked),
        )
    out.print(table)
    out.print(
        f"{figures['correct']}/{figures['scripts']} answered correctly (share {figures['share_correct']}), "
        f"embedder {figures['embedder']}, budget {figures['recall_token_budget']} tokens"
    )
