"""A scripted language model for application and API tests: no latency unless asked, records what it was given."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from support.domain.assistant import (
    FactRemembered,
    HandoffSignal,
    PassageCited,
    ReplyCompleted,
    ReplyEvent,
    ReplyRequest,
    TextDelta,
    ToolActivity,
)
from support.domain.conversations import ReasonCode, TokenUsage
from support.ports.assistant import AssistantTools
from support.ports.errors import LLMUnavailableError


@dataclass
class Script:
    """What the next replies do; the defaults answer with three deltas and cite the first passage."""

    pieces: Sequence[str] = ("Here is ", "what I found", ".")
    cite_first_passage: bool = True
    handoff: ReasonCode | None = None
    search_again: str | None = None
    fail_after: int | None = None  # raise LLMUnavailableError after this many deltas
    delay_s: float = 0.0  # before each delta
    facts: Sequence[FactRemembered] = ()  # what the model asks to remember (remember_fact)
    crash: bool = False  # raise an unexpected error before any delta (a bug, not an outage)
    stop_reason: str = "end_turn"


@dataclass
class ScriptedLLM:
    """Implements the LLM port from a :class:`Script`; counts concurrent replies per conversation."""

    script: Script = field(default_factory=Script)
    requests: list[ReplyRequest] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    gate: asyncio.Event | None = None  # when set, replies wait for it before the first delta

    @property
    def name(self) -> str:
        return "scripted"

    async def reply(self, request: ReplyRequest, tools: AssistantTools) -> AsyncIterator[ReplyEvent]:
        self.requests.append(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            script = self.script
            if self.gate is not None:
                await self.gate.wait()
            if script.crash:
                raise RuntimeError("scripted crash")
            if script.search_again:
                yield ToolActivity("search_knowledge", "started")
                await tools.search_knowledge(script.search_again)
                yield ToolActivity("search_knowledge", "succeeded")
            for index, piece in enumerate(script.pieces):
                if script.fail_after is not None and index >= script.fail_after:
                    raise LLMUnavailableError("scripted failure")
                if script.delay_s:
                    await asyncio.sleep(script.delay_s)
                yield TextDelta(piece)
            if script.cite_first_passage and request.passages:
                passage = request.passages[0]
                yield PassageCited(passage, passage.text[:80])
            for fact in script.facts:
                yield fact
            if script.handoff is not None:
                yield HandoffSignal(script.handoff, "scripted")
            yield ReplyCompleted(
                usage=TokenUsage(input_tokens=100, output_tokens=len(script.pieces)), stop_reason=script.stop_reason
            )
        finally:
            self.active -= 1
