"""The handoff policy: from what the assistant signalled and what happened before, decide one action.

The model proposes (a ``HandoffSignal`` with a reason code); this policy disposes. It never looks at the
wording of a reply, so escalation does not depend on magic strings.
"""

from collections.abc import Sequence

from support.domain.conversations import AnswerStatus, HandoffAction, HandoffDecision, Message, MessageRole, ReasonCode

# Reasons that hand over at once: the customer asked, or the matter is not one for a bot.
_ESCALATE_AT_ONCE = frozenset({ReasonCode.CUSTOMER_REQUEST, ReasonCode.SENSITIVE_TOPIC, ReasonCode.FRUSTRATION})
# The second reply in a row without an answer hands over instead of offering a human again.
REPEATED_FAILURE_LIMIT = 2


def decide_handoff(
    signals: Sequence[ReasonCode],
    *,
    history: Sequence[Message],
    evidence: str | None = None,
) -> HandoffDecision:
    """The decision for a reply that raised ``signals``, given the conversation's earlier messages."""
    for reason in signals:
        if reason in _ESCALATE_AT_ONCE:
            return HandoffDecision(HandoffAction.ESCALATE, reason, evidence, f"escalate_on_{reason.value}")
    if ReasonCode.INSUFFICIENT_EVIDENCE in signals or ReasonCode.LLM_UNAVAILABLE in signals:
        if _unanswered_streak(history) + 1 >= REPEATED_FAILURE_LIMIT:
            return HandoffDecision(
                HandoffAction.ESCALATE,
                ReasonCode.REPEATED_FAILURE,
                evidence,
                f"escalate_after_{REPEATED_FAILURE_LIMIT}_unanswered_replies",
            )
        reason = (
            ReasonCode.LLM_UNAVAILABLE if ReasonCode.LLM_UNAVAILABLE in signals else ReasonCode.INSUFFICIENT_EVIDENCE
        )
        return HandoffDecision(HandoffAction.OFFER_HUMAN, reason, evidence, f"offer_on_{reason.value}")
    return HandoffDecision(HandoffAction.ANSWER, None, evidence, None)


def answer_status_for(decision: HandoffDecision) -> AnswerStatus:
    """How a reply with this decision is labelled."""
    if decision.action is HandoffAction.ESCALATE:
        return AnswerStatus.HANDED_OFF
    if decision.action is HandoffAction.OFFER_HUMAN:
        return AnswerStatus.INSUFFICIENT_EVIDENCE
    return AnswerStatus.ANSWERED


def _unanswered_streak(history: Sequence[Message]) -> int:
    """How many of the latest assistant replies in a row did not answer."""
    streak = 0
    for message in reversed(history):
        if message.role is not MessageRole.ASSISTANT:
            continue
        if message.answer_status is AnswerStatus.INSUFFICIENT_EVIDENCE:
            streak += 1
        else:
            break
    return streak
