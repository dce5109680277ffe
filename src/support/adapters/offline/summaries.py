"""The agent's summary of a conversation without a model: what the customer asked, what happened, why."""

import re
from collections.abc import Sequence

from support.domain.conversations import AnswerStatus, HandoffDecision, Message, MessageRole, ReasonCode

_CLIP = 220
_SPACE = re.compile(r"\s+")


def _clip(text: str, limit: int = _CLIP) -> str:
    flat = _SPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


# A reply that handed over for one of these had no answer; for the others (the customer asked for a person, a
# sensitive topic, frustration) it was the handover notice, not a failure to answer.
_FAILURES = frozenset({ReasonCode.INSUFFICIENT_EVIDENCE, ReasonCode.REPEATED_FAILURE, ReasonCode.LLM_UNAVAILABLE})


def _unanswered(reply: Message) -> bool:
    if reply.answer_status is AnswerStatus.INSUFFICIENT_EVIDENCE:
        return True
    if reply.answer_status is AnswerStatus.HANDED_OFF:
        return reply.decision is None or reply.decision.reason_code in _FAILURES
    return False


class ExtractiveSummarizer:
    """Quotes the customer's first and latest requests and counts what the assistant managed (deterministic)."""

    async def summarize(self, messages: Sequence[Message], *, reason: HandoffDecision | None) -> str:
        asked = [message for message in messages if message.role is MessageRole.CUSTOMER and message.content]
        replies = [message for message in messages if message.role is MessageRole.ASSISTANT]
        unanswered = sum(1 for reply in replies if _unanswered(reply))
        parts: list[str] = []
        if asked:
            parts.append(f"Customer asked: “{_clip(asked[0].content)}”")
            if len(asked) > 1:
                parts.append(f"Latest: “{_clip(asked[-1].content)}” ({len(asked)} messages)")
        else:
            parts.append("The customer has not written anything yet.")
        if replies:
            cited = {citation.title for reply in replies for citation in reply.citations}
            line = f"Assistant replied {len(replies)} time{'s' if len(replies) != 1 else ''}"
            if unanswered:
                line += f", {unanswered} without an answer"
            if cited:
                line += "; cited " + ", ".join(sorted(cited)[:3])
            parts.append(line)
        if reason is not None and reason.reason_code is not None:
            because = f"Handed over: {reason.reason_code.value.replace('_', ' ')}"
            if reason.evidence:
                because += f" (“{_clip(reason.evidence, 80)}”)"
            parts.append(because)
        return ". ".join(part.rstrip(".") for part in parts) + "."
