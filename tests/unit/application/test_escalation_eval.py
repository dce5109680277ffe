"""Escalation quality: the evaluator's metrics on a hand-made set, and the real scripted set's floor."""

import json
from collections import Counter

import pytest

from support.application.escalation_eval import (
    EscalationScript,
    EvaluateEscalation,
    ModelBehaviour,
    ScriptedTurn,
    TurnMismatch,
    Verdict,
    score_reason,
)
from support.cli.escalation import DEFAULT_SCRIPTS, load_scripts
from support.domain.conversations import HandoffAction, ReasonCode
from support.domain.escalation import EscalationPolicy

A = HandoffAction
R = ReasonCode
M = ModelBehaviour
EVALUATE = EvaluateEscalation(EscalationPolicy())


def script(script_id: str, *turns: tuple[str, M, Verdict]) -> EscalationScript:
    return EscalationScript(script_id, None, tuple(ScriptedTurn(*turn) for turn in turns))


HAND_MADE = [
    script("asks", ("I want to talk to a person", M.ANSWER, Verdict(A.ESCALATE, R.CUSTOMER_REQUEST))),
    script("miss", ("Do you ship to Mars?", M.MISS, Verdict(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE))),
    script("plain", ("How do I reset my password?", M.ANSWER, Verdict(A.ANSWER))),
    # Wrong on purpose: an answered question expected to be offered a person (a missed offer for the metrics).
    script("wrong-action", ("Where is my order 123?", M.ANSWER, Verdict(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE))),
    # Wrong on purpose: the right action for the wrong reason.
    script("wrong-reason", ("This is useless", M.ANSWER, Verdict(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE))),
]


def test_precision_recall_and_f1_per_reason_on_a_hand_made_set() -> None:
    report = EVALUATE.execute(HAND_MADE)

    scores = {score.reason: score for score in report.reasons}
    asked = scores[R.CUSTOMER_REQUEST]
    assert (asked.support, asked.predicted, asked.precision, asked.recall, asked.f1) == (1, 1, 1.0, 1.0, 1.0)
    # Expected three times, predicted once (rightly): precision 1, recall 1/3.
    missed = scores[R.INSUFFICIENT_EVIDENCE]
    assert (missed.support, missed.predicted, missed.true_positives) == (3, 1, 1)
    assert (missed.precision, missed.recall, missed.f1) == pytest.approx((1.0, 1 / 3, 0.5))
    # Predicted once, never expected.
    frustrated = scores[R.FRUSTRATION]
    assert (frustrated.support, frustrated.predicted, frustrated.precision, frustrated.f1) == (0, 1, 0.0, 0.0)
    assert scores[R.SENSITIVE_TOPIC].predicted == scores[R.SENSITIVE_TOPIC].support == 0
    # Macro F1 over the reasons expected or predicted: (1 + 0.5 + 0) / 3.
    assert report.macro_f1 == pytest.approx(0.5)
    assert (report.conversations, report.turns, report.exact) == (5, 5, 3)
    assert report.action_accuracy == pytest.approx(4 / 5)
    assert report.confusion[A.ANSWER] == {A.ANSWER: 1, A.OFFER_HUMAN: 0, A.ESCALATE: 0}
    assert report.confusion[A.OFFER_HUMAN] == {A.ANSWER: 1, A.OFFER_HUMAN: 2, A.ESCALATE: 0}
    assert report.confusion[A.ESCALATE] == {A.ANSWER: 0, A.OFFER_HUMAN: 0, A.ESCALATE: 1}


def test_every_mismatch_is_reported_with_what_was_expected_and_the_rule_that_decided() -> None:
    report = EVALUATE.execute(HAND_MADE)

    assert report.mismatches == (
        TurnMismatch(
            "wrong-action",
            0,
            "Where is my order 123?",
            Verdict(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE),
            Verdict(A.ANSWER),
            None,
        ),
        TurnMismatch(
            "wrong-reason",
            0,
            "This is useless",
            Verdict(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE),
            Verdict(A.OFFER_HUMAN, R.FRUSTRATION),
            "frustration.lexicon",
        ),
    )
    assert str(report.mismatches[1].got) == "offer_human/frustration"


def test_a_reason_counts_only_when_a_person_is_offered_or_handed_over() -> None:
    pairs = [(Verdict(A.ANSWER), Verdict(A.ANSWER, R.FRUSTRATION))]

    assert score_reason(R.FRUSTRATION, pairs).predicted == 0


def test_turns_are_played_as_a_live_conversation() -> None:
    # The screening hands over without calling the model (its failure does not count); after each handoff an
    # agent gave the conversation back, so the next miss is a first one again.
    flow = script(
        "flow",
        ("Can I speak to a person?", M.FAILS, Verdict(A.ESCALATE, R.CUSTOMER_REQUEST)),
        ("Do you ship to Mars?", M.MISS, Verdict(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE)),
        ("And to the Moon?", M.FAILS, Verdict(A.ESCALATE, R.REPEATED_FAILURE)),
        ("And to Venus?", M.MISS, Verdict(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE)),
        ("yes", M.ANSWER, Verdict(A.ESCALATE, R.CUSTOMER_REQUEST)),
        ("Thanks, and what about returns?", M.FRUSTRATED, Verdict(A.OFFER_HUMAN, R.FRUSTRATION)),
        ("Still the same problem", M.FRUSTRATED, Verdict(A.ESCALATE, R.FRUSTRATION)),
    )

    report = EVALUATE.execute([flow])

    assert report.mismatches == ()
    assert report.exact == report.turns == 7


def test_an_expected_answer_has_no_reason_and_an_offer_needs_one() -> None:
    with pytest.raises(ValueError, match="no reason code"):
        ScriptedTurn("hi", M.ANSWER, Verdict(A.ANSWER, R.FRUSTRATION))
    with pytest.raises(ValueError, match="needs one"):
        ScriptedTurn("hi", M.MISS, Verdict(A.OFFER_HUMAN))


def test_the_scripted_set_covers_every_trigger_and_near_misses() -> None:
    raw = json.loads(DEFAULT_SCRIPTS.read_text(encoding="utf-8"))["conversations"]
    triggers = Counter(item["trigger"] for item in raw)

    assert len(raw) >= 40
    assert len({item["id"] for item in raw}) == len(raw), "ids are unique"
    for reason in ReasonCode:
        assert triggers[reason.value] >= 6, reason
    assert triggers["none"] >= 12
    assert all(
        turn["expect"]["action"] == "answer" for item in raw if item["trigger"] == "none" for turn in item["turns"]
    )
    assert all("expect" in turn for item in raw for turn in item["turns"])


def test_the_policy_meets_the_floor_on_the_scripted_set() -> None:
    report = EVALUATE.execute(load_scripts(DEFAULT_SCRIPTS))

    # Measured 0.985 macro F1 and 0.978 action accuracy (docs/evaluation.md); the floors leave room for one or two
    # new near-misses, not for a broken layer.
    assert report.macro_f1 >= 0.95, report.mismatches
    assert report.action_accuracy >= 0.95, report.mismatches
    for score in report.reasons:
        assert score.f1 >= 0.9, (score, report.mismatches)
