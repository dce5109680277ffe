"""Answer and escalation metrics: SQuAD token F1, handoff precision/recall, threshold sweeps."""

import pytest

from support.application.evaluation import (
    AnswerOutcome,
    answer_tokens,
    at_threshold,
    best_threshold,
    score_answers,
    score_handoffs,
    sweep_thresholds,
    token_f1,
)


def test_answer_tokens_are_lower_case_without_punctuation_or_articles() -> None:
    assert answer_tokens("The fix: set ODBCINI, then restart an instance!") == [
        "fix",
        "set",
        "odbcini",
        "then",
        "restart",
        "instance",
    ]
    assert answer_tokens("Theory and anthem") == ["theory", "and", "anthem"], "articles only as whole words"


def test_token_f1() -> None:
    assert token_f1("Restart the server.", "restart server") == 1.0
    assert token_f1("restart", "reinstall") == 0.0
    # 2 of 4 predicted tokens are right (precision 1/2); 2 of 3 expected are found (recall 2/3).
    assert token_f1("restart server now please", "restart server daily") == pytest.approx(
        2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)
    )
    # Bags of tokens: a repeated word counts as often as it appears in both.
    assert token_f1("yes yes yes", "yes") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))


def test_token_f1_of_empty_texts() -> None:
    assert token_f1("", "") == 1.0
    assert token_f1("the", "a") == 1.0, "nothing left after normalising on either side"
    assert token_f1("", "restart") == 0.0
    assert token_f1("restart", "") == 0.0


def test_handoff_metrics_count_handing_off_as_the_positive_class() -> None:
    handed_off = [True, True, False, False, True]
    should = [True, False, True, False, False]

    metrics = score_handoffs(handed_off, should)

    assert (metrics.questions, metrics.should_hand_off, metrics.handed_off, metrics.true_positives) == (5, 2, 3, 1)
    assert metrics.precision == pytest.approx(1 / 3)
    assert metrics.recall == pytest.approx(1 / 2)
    assert metrics.f1 == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert metrics.needless_rate == pytest.approx(2 / 3), "two of the three answerable questions were handed off"


def test_handoff_metrics_without_positives_or_predictions_are_zero() -> None:
    metrics = score_handoffs([False, False], [False, False])
    assert (metrics.precision, metrics.recall, metrics.f1, metrics.needless_rate) == (0.0, 0.0, 0.0, 0.0)
    assert score_handoffs([], []).questions == 0


def test_handoff_metrics_need_one_decision_per_question() -> None:
    with pytest.raises(ValueError, match="one decision per question"):
        score_handoffs([True], [True, False])


def outcomes() -> list[AnswerOutcome]:
    return [
        AnswerOutcome(should_hand_off=False, handed_off=False, evidence_score=0.9, answer_f1=0.6),
        AnswerOutcome(should_hand_off=False, handed_off=False, evidence_score=0.4, answer_f1=0.2),
        AnswerOutcome(should_hand_off=False, handed_off=True, evidence_score=0.0),  # nothing to quote at all
        AnswerOutcome(should_hand_off=True, handed_off=False, evidence_score=0.3, answer_f1=0.0),
        AnswerOutcome(should_hand_off=True, handed_off=False, evidence_score=0.7, answer_f1=0.0),
    ]


def test_answer_metrics_average_f1_over_answerable_and_over_answered() -> None:
    metrics = score_answers(outcomes())

    assert metrics.answerable == 3
    assert metrics.answered_answerable == 2
    assert metrics.f1_answerable == pytest.approx((0.6 + 0.2 + 0.0) / 3), "a handed-off answerable question counts 0"
    assert metrics.f1_answered == pytest.approx((0.6 + 0.2) / 2)
    assert metrics.handoff.handed_off == 1
    assert metrics.handoff.true_positives == 0


def test_at_threshold_hands_off_below_it_and_keeps_what_could_not_be_answered() -> None:
    decided = at_threshold(outcomes(), 0.5)

    assert [item.handed_off for item in decided] == [False, True, True, True, False]
    assert [item.evidence_score for item in decided] == [item.evidence_score for item in outcomes()]


def test_sweep_thresholds_trades_recall_for_needless_handoffs() -> None:
    sweep = sweep_thresholds(outcomes(), [0.0, 0.5, 1.0])

    assert [threshold for threshold, _ in sweep] == [0.0, 0.5, 1.0]
    low, middle, high = (metrics for _, metrics in sweep)
    assert (low.handoff.recall, middle.handoff.recall, high.handoff.recall) == (0.0, 0.5, 1.0)
    assert low.handoff.needless_rate < middle.handoff.needless_rate <= high.handoff.needless_rate
    assert high.f1_answerable == 0.0
    assert middle.f1_answerable == pytest.approx(0.6 / 3)


def test_best_threshold_maximises_handoff_f1_and_prefers_the_lowest_on_a_tie() -> None:
    # 0.8 hands off both unanswerable questions and two answerable ones (F1 2/3); 0.31 and 0.35 both hand off
    # the 0.3 question and the one that could not be answered (F1 1/2).
    threshold, metrics = best_threshold(outcomes(), [0.35, 0.8, 0.31])
    assert threshold == 0.8
    assert metrics.handoff.f1 == pytest.approx(2 / 3)

    threshold, metrics = best_threshold(outcomes(), [0.35, 0.31])
    assert threshold == 0.31
    assert metrics.handoff.f1 == pytest.approx(0.5)

    with pytest.raises(ValueError, match="threshold"):
        best_threshold(outcomes(), [])
