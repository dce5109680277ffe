"""Follow-ups are searched with the messages they continue; questions that name their subject are searched alone."""

import pytest

from support.domain.questions import content_words, is_follow_up, with_context


@pytest.mark.parametrize(
    "message",
    [
        "and if I paid with PayPal?",
        "what if it's been longer than that?",
        "there's nothing under it though",
        "it still doesn't work",
        "what about Canada express?",
        "how long does that take?",
        "and what if I paid with a Klarna installment plan?",
        "PayPal?",
        "Is it waterproof?",
        # Names nothing at all: about what came before, even as a question of its own.
        "what does that mean?",
        "What do I do now?",
        "?",
    ],
)
def test_messages_that_name_too_little_to_search_alone_are_follow_ups(message: str) -> None:
    assert is_follow_up(message)


@pytest.mark.parametrize(
    "message",
    [
        "How long do refunds take?",
        "My standing desk shows E05 and stops going down",
        "Do you ship to Canada and how much does it cost? (ref 100123)",
        "What are your customer support hours?",
        "How do I start a return? (ref 100958)",
        "What is your return policy for furniture?",
        "What are your support hours?",
        "How do I reset my password?",
        "Can I cancel my order after it has been placed?",
        # One topic word, but a question of its own; "there" does not point back; a code is a topic word.
        "Where is my order?",
        "How do I log in?",
        "What is the warranty?",
        "Is there a student discount?",
        "I get SQL30081N when connecting",
    ],
)
def test_questions_that_name_their_subject_are_not(message: str) -> None:
    assert not is_follow_up(message)


def test_contractions_are_not_content_words() -> None:
    assert content_words("That's what I'm asking: it doesn't fold, won't lock and I've tried") == ["fold", "lock"]


def test_a_follow_up_takes_the_message_before_it_and_reaches_back_through_follow_ups() -> None:
    earlier = ["My desk shows E05", "How long do refunds take?", "and if I paid with PayPal?"]

    assert with_context("what if it's been longer than that?", earlier) == (
        "How long do refunds take?\nand if I paid with PayPal?\nwhat if it's been longer than that?"
    )
    assert with_context("what about Canada?", ["How long does shipping take?"]) == (
        "How long does shipping take?\nwhat about Canada?"
    )


def test_a_question_that_names_its_subject_or_comes_first_is_searched_alone() -> None:
    assert with_context("How long do refunds take?", ["My desk shows E05"]) == "How long do refunds take?"
    assert with_context("what about Canada?", []) == "what about Canada?"


def test_a_chain_of_follow_ups_reaches_back_to_the_message_that_named_the_topic() -> None:
    earlier = ["My desk shows E05", "How long do refunds take?", "and PayPal?", "and Klarna?"]

    assert with_context("and gift cards?", earlier) == (
        "How long do refunds take?\nand PayPal?\nand Klarna?\nand gift cards?"
    )


def test_what_is_brought_along_is_bounded() -> None:
    long_question = "Why " + "is my refund late " * 60 + "?"
    assert with_context("and PayPal?", [long_question]) == f"{long_question}\nand PayPal?"  # the one before: always
    assert with_context("and PayPal?", [long_question, "and Klarna?"]) == "and Klarna?\nand PayPal?"
