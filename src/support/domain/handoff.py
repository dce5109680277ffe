"""How a reply is labelled from the handoff decision made for it (the decision itself: ``escalation``)."""

from support.domain.conversations import AnswerStatus, HandoffAction, HandoffDecision, ReasonCode

_UNANSWERED = frozenset({ReasonCode.INSUFFICIENT_EVIDENCE, ReasonCode.LLM_UNAVAILABLE})


def answer_status_for(decision: HandoffDecision) -> AnswerStatus:
    """How a reply with this decision is labelled: an offer made for frustration still answered."""
    if decision.action is HandoffAction.ESCALATE:
        return AnswerStatus.HANDED_OFF
    if decision.action is HandoffAction.OFFER_HUMAN and decision.reason_code in _UNANSWERED:
        return AnswerStatus.INSUFFICIENT_EVIDENCE
    return AnswerStatus.ANSWERED
