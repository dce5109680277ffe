"""Quality metrics: retrieval over ranked result lists; answers (token F1) and escalation (handoff precision/recall)."""

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class RetrievalMetrics:
    """hit@1, recall@5 and MRR@10 over questions that have at least one gold document."""

    questions: int
    hit_at_1: float
    recall_at_5: float
    mrr_at_10: float


def score_rankings(rankings: Sequence[Sequence[str]], gold: Sequence[frozenset[str]]) -> RetrievalMetrics:
    """Score each ranking (document ids, best first) against its gold set.

    recall@5 is the share of gold documents found in the top five, averaged over questions; with one gold
    document per question it equals hit@5.
    """
    if len(rankings) != len(gold):
        msg = "one ranking per question is needed"
        raise ValueError(msg)
    scored = [(ranking, expected) for ranking, expected in zip(rankings, gold, strict=True) if expected]
    if not scored:
        return RetrievalMetrics(0, 0.0, 0.0, 0.0)
    hit_at_1 = sum(1 for ranking, expected in scored if ranking[:1] and ranking[0] in expected)
    recall_at_5 = sum(len(expected & set(ranking[:5])) / len(expected) for ranking, expected in scored)
    mrr = 0.0
    for ranking, expected in scored:
        rank = next((index for index, doc in enumerate(ranking[:10], 1) if doc in expected), None)
        mrr += 1 / rank if rank else 0.0
    count = len(scored)
    return RetrievalMetrics(count, hit_at_1 / count, recall_at_5 / count, mrr / count)


# Answer quality (token F1) and escalation (handing off) of an assistant, as in SQuAD and TechQA.

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def answer_tokens(text: str) -> list[str]:
    """SQuAD normalisation: lower case, punctuation removed, articles (a, an, the) dropped, split on whitespace."""
    lowered = "".join(" " if character in _PUNCTUATION else character for character in text.lower())
    return _ARTICLES.sub(" ", lowered).split()


def token_f1(prediction: str, reference: str) -> float:
    """Harmonic mean of token precision and recall of ``prediction`` against ``reference`` (bags of tokens).

    Two empty texts agree (1.0); one empty text against a non-empty one scores 0.0.
    """
    predicted, expected = answer_tokens(prediction), answer_tokens(reference)
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True, slots=True)
class HandoffMetrics:
    """Handing off as a classifier: positive means "handed off / said it could not answer".

    ``needless_rate`` is the share of questions that should have been answered but were handed off.
    """

    questions: int
    should_hand_off: int
    handed_off: int
    true_positives: int
    precision: float
    recall: float
    f1: float
    needless_rate: float


def score_handoffs(handed_off: Sequence[bool], should_hand_off: Sequence[bool]) -> HandoffMetrics:
    """Precision, recall and F1 of handing off, question by question, against whether it was the right call."""
    if len(handed_off) != len(should_hand_off):
        msg = "one decision per question is needed"
        raise ValueError(msg)
    pairs = list(zip(handed_off, should_hand_off, strict=True))
    positives = sum(1 for _, should in pairs if should)
    predicted = sum(1 for did, _ in pairs if did)
    true_positives = sum(1 for did, should in pairs if did and should)
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    negatives = len(pairs) - positives
    needless = (predicted - true_positives) / negatives if negatives else 0.0
    return HandoffMetrics(len(pairs), positives, predicted, true_positives, precision, recall, f1, needless)


@dataclass(frozen=True, slots=True)
class AnswerOutcome:
    """One question's result.

    ``answer_f1`` is the token F1 of the reply against the reference answer; it counts only when the question is
    answerable and was answered.
    """

    should_hand_off: bool
    handed_off: bool
    evidence_score: float
    answer_f1: float = 0.0


@dataclass(frozen=True, slots=True)
class AnswerMetrics:
    """Escalation metrics, and token F1 over answerable questions.

    ``f1_answerable`` counts a handed-off answerable question as 0; ``f1_answered`` averages over the answerable
    questions that got an answer.
    """

    handoff: HandoffMetrics
    answerable: int
    answered_answerable: int
    f1_answerable: float
    f1_answered: float


def score_answers(outcomes: Sequence[AnswerOutcome]) -> AnswerMetrics:
    """Aggregate per-question outcomes."""
    handoff = score_handoffs([item.handed_off for item in outcomes], [item.should_hand_off for item in outcomes])
    answerable = [item for item in outcomes if not item.should_hand_off]
    answered = [item for item in answerable if not item.handed_off]
    total_f1 = sum(item.answer_f1 for item in answered)
    return AnswerMetrics(
        handoff=handoff,
        answerable=len(answerable),
        answered_answerable=len(answered),
        f1_answerable=total_f1 / len(answerable) if answerable else 0.0,
        f1_answered=total_f1 / len(answered) if answered else 0.0,
    )


def at_threshold(outcomes: Sequence[AnswerOutcome], threshold: float) -> list[AnswerOutcome]:
    """The outcomes had the responder handed off below ``threshold``.

    ``outcomes`` must come from a run that answered whenever it could (threshold 0), so that ``answer_f1`` is
    known for every question it could answer; a question it could not answer at all stays handed off.
    """
    return [replace(item, handed_off=item.handed_off or item.evidence_score < threshold) for item in outcomes]


def sweep_thresholds(
    outcomes: Sequence[AnswerOutcome], thresholds: Sequence[float]
) -> list[tuple[float, AnswerMetrics]]:
    """Metrics at each threshold, from one run at threshold 0 (see :func:`at_threshold`)."""
    return [(threshold, score_answers(at_threshold(outcomes, threshold))) for threshold in thresholds]


def best_threshold(outcomes: Sequence[AnswerOutcome], thresholds: Sequence[float]) -> tuple[float, AnswerMetrics]:
    """The threshold with the highest handoff F1 (on a tie, the lowest: fewer needless handoffs), and its metrics."""
    if not thresholds:
        msg = "at least one threshold is needed"
        raise ValueError(msg)
    sweep = sweep_thresholds(outcomes, sorted(thresholds))
    return max(sweep, key=lambda row: (row[1].handoff.f1, -row[0]))
