"""Escalation quality: scripted conversations run through the real policy, scored per reason code.

A script says, turn by turn, what the customer writes, what the model would do if it were called, and what a good
support operation should decide. :class:`EvaluateEscalation` plays each script the way a turn does (see
``ReplyRunner._turn``), with the model replaced by the script, and compares decisions with expectations.
"""

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from uuid import UUID

from support.domain.conversations import HandoffAction, HandoffDecision, Message, MessageRole, ReasonCode
from support.domain.escalation import EscalationPolicy
from support.domain.handoff import answer_status_for

# Messages need times and ids; the policy reads neither, so fixed ones keep runs identical.
_STARTED = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
_HANDOFF_NOTICE = "Handed to the support team; an agent took over and gave the conversation back."


class ModelBehaviour(StrEnum):
    """What the scripted model does when a turn calls it."""

    ANSWER = "answer"
    MISS = "miss"
    ASKS_FOR_PERSON = "asks_for_person"
    FAILS = "fails"
    FRUSTRATED = "frustrated"


# The signal each behaviour raises while the reply is written (an answer raises none).
_SIGNALS: Mapping[ModelBehaviour, tuple[ReasonCode, ...]] = {
    ModelBehaviour.ANSWER: (),
    ModelBehaviour.MISS: (ReasonCode.INSUFFICIENT_EVIDENCE,),
    ModelBehaviour.ASKS_FOR_PERSON: (ReasonCode.CUSTOMER_REQUEST,),
    ModelBehaviour.FAILS: (ReasonCode.LLM_UNAVAILABLE,),
    ModelBehaviour.FRUSTRATED: (ReasonCode.FRUSTRATION,),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """An action and the reason for it (no reason when the action is to answer)."""

    action: HandoffAction
    reason_code: ReasonCode | None = None

    @property
    def reason(self) -> ReasonCode | None:
        """The reason this verdict counts for: an answer counts for none, whatever it carries."""
        return None if self.action is HandoffAction.ANSWER else self.reason_code

    def __str__(self) -> str:
        return self.action.value if self.reason is None else f"{self.action.value}/{self.reason.value}"


@dataclass(frozen=True, slots=True)
class ScriptedTurn:
    """One customer message, the model's behaviour if it is called, and the expected decision."""

    customer: str
    model: ModelBehaviour
    expect: Verdict

    def __post_init__(self) -> None:
        if (self.expect.action is HandoffAction.ANSWER) != (self.expect.reason_code is None):
            msg = "an expected answer has no reason code; an offer or a handoff needs one"
            raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class EscalationScript:
    """A scripted conversation; ``trigger`` is the reason it is about (None: it must be answered throughout)."""

    id: str
    trigger: ReasonCode | None
    turns: tuple[ScriptedTurn, ...]


@dataclass(frozen=True, slots=True)
class TurnMismatch:
    """A turn whose decision differs from the expected one."""

    script_id: str
    turn: int
    customer: str
    expected: Verdict
    got: Verdict
    rule: str | None


@dataclass(frozen=True, slots=True)
class ReasonScore:
    """One reason code as a classifier: a turn predicts it when it offers or hands over for that reason.

    ``support`` counts the turns expected to; precision is 0.0 without predictions, recall 0.0 without support.
    """

    reason: ReasonCode
    support: int
    predicted: int
    true_positives: int
    precision: float
    recall: float
    f1: float


@dataclass(frozen=True, slots=True)
class EscalationReport:
    """Per-reason scores, action accuracy, the confusion of actions (expected → got, counts) and the mismatches.

    ``macro_f1`` averages F1 over the reasons that were expected or predicted at least once.
    """

    conversations: int
    turns: int
    exact: int
    action_accuracy: float
    reasons: tuple[ReasonScore, ...]
    macro_f1: float
    confusion: Mapping[HandoffAction, Mapping[HandoffAction, int]]
    mismatches: tuple[TurnMismatch, ...]


class EvaluateEscalation:
    """Play scripted conversations through the escalation policy and score its decisions."""

    def __init__(self, policy: EscalationPolicy) -> None:
        self._policy = policy

    def execute(self, scripts: Sequence[EscalationScript]) -> EscalationReport:
        """Decide every turn of every script as a live turn would, and compare with what was expected.

        No I/O: the policy is pure, so this runs synchronously.
        """
        pairs: list[tuple[Verdict, Verdict]] = []
        mismatches: list[TurnMismatch] = []
        for script in scripts:
            for index, (turn, decision) in enumerate(zip(script.turns, self._play(script), strict=True)):
                got = Verdict(decision.action, decision.reason_code)
                pairs.append((turn.expect, got))
                if (got.action, got.reason) != (turn.expect.action, turn.expect.reason):
                    mismatches.append(TurnMismatch(script.id, index, turn.customer, turn.expect, got, decision.rule))
        return _report(len(scripts), pairs, mismatches)

    def _play(self, script: EscalationScript) -> list[HandoffDecision]:
        history: list[Message] = []
        decisions: list[HandoffDecision] = []
        conversation_id = UUID(int=0)

        def say(role: MessageRole, content: str, decision: HandoffDecision | None = None) -> Message:
            return Message(
                id=UUID(int=len(history) + 1),
                conversation_id=conversation_id,
                role=role,
                content=content,
                created_at=_STARTED + timedelta(minutes=len(history)),
                answer_status=answer_status_for(decision) if decision is not None else None,
                decision=decision,
            )

        for turn in script.turns:
            # As in a turn: screen against what came before; decide with the customer's message in the history.
            screening = self._policy.screen(turn.customer, history)
            history.append(say(MessageRole.CUSTOMER, turn.customer))
            escalated = screening.decision.action is HandoffAction.ESCALATE
            signals = () if escalated else _SIGNALS[turn.model]  # a screening that hands over skips the model
            decision = self._policy.decide(screening, signals, history=history)
            decisions.append(decision)
            history.append(say(MessageRole.ASSISTANT, "(scripted reply)", decision))
            if decision.action is HandoffAction.ESCALATE:
                # An agent takes over and gives the conversation back: the notice starts a new episode.
                history.append(say(MessageRole.SYSTEM, _HANDOFF_NOTICE))
        return decisions


def _report(
    conversations: int, pairs: Sequence[tuple[Verdict, Verdict]], mismatches: Sequence[TurnMismatch]
) -> EscalationReport:
    scores = tuple(score_reason(reason, pairs) for reason in ReasonCode)
    counted = [score for score in scores if score.support or score.predicted]
    matrix = Counter((expected.action, got.action) for expected, got in pairs)
    confusion = {expected: {got: matrix[expected, got] for got in HandoffAction} for expected in HandoffAction}
    turns = len(pairs)
    right_actions = sum(1 for expected, got in pairs if expected.action is got.action)
    return EscalationReport(
        conversations=conversations,
        turns=turns,
        exact=turns - len(mismatches),
        action_accuracy=right_actions / turns if turns else 0.0,
        reasons=scores,
        macro_f1=sum(score.f1 for score in counted) / len(counted) if counted else 0.0,
        confusion=confusion,
        mismatches=tuple(mismatches),
    )


def score_reason(reason: ReasonCode, pairs: Sequence[tuple[Verdict, Verdict]]) -> ReasonScore:
    """Precision, recall and F1 of offering or handing over for ``reason``, over (expected, got) pairs."""
    support = sum(1 for expected, _ in pairs if expected.reason is reason)
    predicted = sum(1 for _, got in pairs if got.reason is reason)
    true_positives = sum(1 for expected, got in pairs if expected.reason is reason and got.reason is reason)
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return ReasonScore(reason, support, predicted, true_positives, precision, recall, f1)
