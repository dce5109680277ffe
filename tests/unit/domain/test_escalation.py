"""The escalation policy's layers, business hours and wait notices, and the ownership methods of a conversation."""

from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from support.domain.conversations import (
    AgentRef,
    AnswerStatus,
    Conversation,
    ConversationEvent,
    ConversationStatus,
    HandoffAction,
    HandoffDecision,
    InvalidTransitionError,
    Message,
    MessageRole,
    ReasonCode,
)
from support.domain.escalation import (
    BusinessHours,
    EscalationPolicy,
    EscalationRules,
    Screening,
    SensitiveTopic,
    estimate_wait,
    handoff_notice,
)
from support.domain.handoff import answer_status_for
from support.domain.ids import new_id

NOW = datetime(2026, 5, 6, 10, 0, tzinfo=UTC)  # a Wednesday
POLICY = EscalationPolicy()
A = HandoffAction
R = ReasonCode


def said(role: MessageRole, text: str = "text", decision: HandoffDecision | None = None) -> Message:
    status = answer_status_for(decision) if decision and role is MessageRole.ASSISTANT else None
    if role is MessageRole.ASSISTANT and status is None:
        status = AnswerStatus.ANSWERED
    return Message(new_id(), new_id(), role, text, NOW, answer_status=status, decision=decision)


def screened(text: str, history: list[Message] | None = None) -> tuple[A, R | None, str | None]:
    decision = POLICY.screen(text, history or []).decision
    return decision.action, decision.reason_code, decision.rule


@pytest.mark.parametrize(
    "text",
    [
        "Can I talk to a human please?",
        "I want to speak with a real person",
        "connect me to an agent",
        "Ich möchte mit einem Mitarbeiter sprechen",
        "je veux parler à un conseiller",
        "¿Puedo hablar con una persona?",
        "Posso parlare con un operatore?",
        "quero falar com um atendente",
        "kan ik met een medewerker spreken",
        "I need a human agent",
    ],
)
def test_asking_for_a_person_in_several_languages_hands_over_at_once(text: str) -> None:
    assert screened(text) == (A.ESCALATE, R.CUSTOMER_REQUEST, "customer_request.phrase")


@pytest.mark.parametrize(
    "text",
    [
        "How do I reset my password?",
        "What does a human-readable invoice look like?",
        "Is the person who ordered notified?",
        "The agent app crashes on start",
    ],
)
def test_ordinary_questions_are_answered(text: str) -> None:
    assert screened(text) == (A.ANSWER, None, None)


@pytest.mark.parametrize(
    "text",
    [
        # Found by an exploratory test (12-07, ninth session): each of these was answered by the bot.
        "Ik wil een medewerker spreken",
        "Kan ik iemand spreken?",
        "Mag ik een mens spreken?",
        "Ich möchte einen Mitarbeiter sprechen",
        "Kann ich einen Menschen sprechen?",
        "Bitte verbinden Sie mich mit einem Mitarbeiter",
        "Je veux un humain",
        "un humain svp",
        "Quiero un agente humano",
        "I want to speak to customer service",
        "give me a human",
        "I don't want to talk to a bot",
        "stop the bot, give me a person",
        "customer service please",
        "escalate",
        "Is there a real person I can talk to?",
        "transfer me to the billing team",
        # Open "connect me to" requests that handed over before the widening and must still (found by review)
        "connect me to support",
        "Please transfer me to support",
        "put me through to billing",
        "connect me with sales",
        "transfer me to a specialist",
        "connect me to your team",
        "transfer me to the returns department",
        "Can you connect me to an expert?",
        "Ich möchte einen Mitarbeiter sprechen, bitte",
        "Je voudrais un conseiller, merci",
        "Necesito un agente humano por favor",
        # Found by an exploratory test of the handoff (2026-12-07): answered or only offered before
        "I want a supervisor",
        "get me a manager",
        "can someone from your team call me?",
        "Can someone call me back please",
        "Mensch bitte",
        "I don't want to talk to you, get me someone real",
        "人工客服",
        "转人工",
        "Хочу поговорить с оператором",  # noqa: RUF001 - Cyrillic
        "オペレーターと話したい",
    ],
)
def test_more_ways_of_asking_for_a_person_hand_over(text: str) -> None:
    assert screened(text) == (A.ESCALATE, R.CUSTOMER_REQUEST, "customer_request.phrase")


@pytest.mark.parametrize(
    "text",
    [
        "Is the review written by a real person?",
        "Which search filter should I use? Please put me with the right article",
        "How do I connect my desk to the app?",
        "Does customer service work on weekends?",
        "I'm not a robot but the captcha keeps failing",
        # Ordinary questions the first widening handed over (found by review)
        "How do I give a person access to our company account?",
        "Can you give me a human readable export of my invoices?",
        "I need to speak with the person who placed the order, can you give me their email?",
        "I don't want the machine anymore, can I return it?",
        "I don't want this machine, it arrived damaged",
        "I don't want a chatbot widget on my site",
        "How can I stop the robot vacuum from beeping?",
        "I want to stop the bot from sending me emails",
        "Ich habe gestern mit einem Mitarbeiter telefoniert, wann kommt meine Erstattung?",
        "Kann ich die Bestellung mit einer Mitarbeiterin teilen?",
        "Je voudrais un agent nettoyant pour écran",
        "Necesito una persona más en mi cuenta, ¿cómo la agrego?",
        "Quiero una persona adicional en mi plan",
        "I want to escalate it to my manager, can you send me a PDF of the invoice?",
        "connect me to the right article please",
        "I need a manager account for my colleague",
        "How do I add a manager to my team?",
        "Can my manager call me?",
        "I want the manager role",
        "Who is the operator for my SIM?",
        # A call about a delivery or a payment (found by a review)
        "Can somebody call me when the parcel arrives?",
        "Will someone call me before delivery?",
        "Would an agent contact me if the payment fails?",
        "Can a person call me on arrival, the doorbell is broken?",
    ],
)
def test_questions_about_people_and_bots_are_not_requests(text: str) -> None:
    assert screened(text) == (A.ANSWER, None, None)


@pytest.mark.parametrize(
    "text",
    [
        "yes",
        "ja bitte",
        "oui merci",
        "oui s'il vous plaît",
        "sí, por favor",
        "ja graag",
        "yes, connect me",
        "yes I would",
        "yes please, thanks",
        "sim, por favor",
        "Sure, go ahead",
        "please do",
        "Please do!",
        "sí, gracias",
        "ja danke",
        "sì grazie",
        "sim, obrigado",
        "ja bedankt",
    ],
)
def test_yes_to_an_offer_in_the_customers_language_accepts_it(text: str) -> None:
    offer = said(MessageRole.ASSISTANT, decision=HandoffDecision(A.OFFER_HUMAN, R.FRUSTRATION))

    assert screened(text, [said(MessageRole.CUSTOMER), offer])[2] == "customer_request.accepted_offer"


@pytest.mark.parametrize("text", ["ok thanks", "ok merci", "okay merci", "d'accord, merci", "sure, thanks"])
def test_ok_thanks_in_any_language_does_not_accept_an_offer(text: str) -> None:
    offer = said(MessageRole.ASSISTANT, decision=HandoffDecision(A.OFFER_HUMAN, R.FRUSTRATION))

    assert screened(text, [said(MessageRole.CUSTOMER), offer])[0] is A.ANSWER


@pytest.mark.parametrize(
    "text", ["human please", "Agent", "a real person!", "Can I get a human? My orders are mixed up", "get me a person"]
)
def test_terse_requests_and_getting_a_human_hand_over(text: str) -> None:
    assert screened(text) == (A.ESCALATE, R.CUSTOMER_REQUEST, "customer_request.phrase")


@pytest.mark.parametrize(
    "text",
    [
        "Can I get a human-readable copy of the invoice?",
        "How do I become a sales agent?",
        "The agent app crashes when I log in",
        "The person who signed for it was my neighbour",
    ],
)
def test_words_for_people_inside_other_questions_are_not_requests(text: str) -> None:
    assert screened(text) == (A.ANSWER, None, None)


def test_yes_to_an_offer_of_a_person_accepts_it_but_yes_alone_does_not() -> None:
    offer = said(MessageRole.ASSISTANT, decision=HandoffDecision(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE))

    assert screened("Yes please", [said(MessageRole.CUSTOMER), offer]) == (
        A.ESCALATE,
        R.CUSTOMER_REQUEST,
        "customer_request.accepted_offer",
    )
    assert screened("yes", [said(MessageRole.CUSTOMER), said(MessageRole.ASSISTANT)])[0] is A.ANSWER


def test_yes_in_a_few_words_accepts_an_offer_and_ok_thanks_does_not() -> None:
    offer = said(MessageRole.ASSISTANT, decision=HandoffDecision(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE))
    history = [said(MessageRole.CUSTOMER), offer]

    assert screened("Yes, I'd like that.", history)[2] == "customer_request.accepted_offer"
    assert screened("sure, go ahead", history)[2] == "customer_request.accepted_offer"
    assert screened("ok, thanks anyway", history)[0] is A.ANSWER


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("I will contact my lawyer about this", "sensitive_topic.legal_threat"),
        ("I'm going to sue you", "sensitive_topic.legal_threat"),
        ("My account was hacked this morning", "sensitive_topic.account_security"),
        ("There is an unauthorized charge on my card", "sensitive_topic.account_security"),
        ("Please cancel my subscription", "sensitive_topic.cancellation"),
        ("I want to close my account", "sensitive_topic.cancellation"),
        # Which one it is named by up to two words ("cancel my membership" escalated, this was answered).
        ("Please cancel my Northwind Plus membership", "sensitive_topic.cancellation"),
        ("I want to delete my business account", "sensitive_topic.cancellation"),
        ("Hi. I've had enough, cancel my membership.", "sensitive_topic.cancellation"),
        # A question elsewhere in the message does not make a request a question.
        ("I want to cancel my account. Can I get a refund for this month?", "sensitive_topic.cancellation"),
        ("Cancel my subscription now. I don't even know how to use it.", "sensitive_topic.cancellation"),
        ("Please cancel my plan, what happens if I do it mid-month?", "sensitive_topic.cancellation"),
        ("I want to close my account.\nHow do I export my data first?", "sensitive_topic.cancellation"),
        ("The charger burned my hand", "sensitive_topic.safety_or_harm"),
        ("I want a refund of $450 for the TV", "sensitive_topic.refund_over_limit"),
        ("Please refund me 1,200 EUR", "sensitive_topic.refund_over_limit"),
    ],
)
def test_sensitive_topics_hand_over_at_once(text: str, rule: str) -> None:
    assert screened(text) == (A.ESCALATE, R.SENSITIVE_TOPIC, rule)


@pytest.mark.parametrize(
    "text",
    [
        "Can I delete my address from my account?",
        "cancel the order on my account",
        "How do I cancel my order?",
        # Asking how is self-service the help center answers; asking for it to be done is for a person.
        "How do I cancel my membership?",
        "How do I cancel my Northwind Plus membership?",
        "how to delete my account",
        "What happens if I cancel my plan?",
    ],
)
def test_cancelling_something_in_an_account_or_asking_how_to_cancel_is_answered(text: str) -> None:
    assert screened(text)[0] is A.ANSWER


def test_the_evidence_of_a_sensitive_topic_is_the_phrase_not_the_message() -> None:
    # The decision's evidence goes to the transcript, the feed and webhooks: not the card number before it.
    decision = EscalationPolicy().screen("Hi, my card is 4111 1111 1111 1111, please cancel my account", []).decision

    assert decision.evidence == "cancel my account"


def test_refunds_up_to_the_limit_stay_with_the_assistant() -> None:
    assert screened("Can I get a refund of $40?")[0] is A.ANSWER
    assert screened("How long does a refund take?")[0] is A.ANSWER
    relaxed = EscalationPolicy(EscalationRules(refund_amount_limit=None))
    assert relaxed.screen("refund of $5000", []).decision.action is A.ANSWER


@pytest.mark.parametrize(
    "text",
    [
        "I requested a refund for order 48213 last week",
        "I ordered 250 pens and 30 arrived dry, can I get a refund for those?",
        "refund for order 48213 of 30 eur",
    ],
)
def test_order_numbers_and_quantities_next_to_refund_are_not_amounts(text: str) -> None:
    assert screened(text)[0] is A.ANSWER


@pytest.mark.parametrize("text", ["I was promised a refund of 450 for the desk", "450 € refund", "refund 120 dollars"])
def test_an_amount_is_a_number_with_a_currency_or_after_refund_of(text: str) -> None:
    assert screened(text)[2] == "sensitive_topic.refund_over_limit"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("This is useless, nothing works", "frustration.lexicon"),
        ("what the fuck is going on", "frustration.profanity"),
        ("WHY IS MY ORDER NOT HERE YET", "frustration.shouting"),
    ],
)
def test_frustration_offers_a_person_first_and_hands_over_when_it_continues(text: str, rule: str) -> None:
    first = POLICY.screen(text, [])
    assert first.decision.action is A.ANSWER
    assert first.frustration is not None
    assert (first.frustration.action, first.frustration.reason_code, first.frustration.rule) == (
        A.OFFER_HUMAN,
        R.FRUSTRATION,
        rule,
    )
    offered = said(MessageRole.ASSISTANT, decision=first.frustration)

    assert screened(text, [said(MessageRole.CUSTOMER, text), offered]) == (
        A.ESCALATE,
        R.FRUSTRATION,
        "frustration.continued",
    )
    # What the model is told before it writes: a handoff for frustration now hands over (it was offered).
    assert not POLICY.hands_over_if_frustrated([said(MessageRole.CUSTOMER, text)])
    assert POLICY.hands_over_if_frustrated([said(MessageRole.CUSTOMER, text), offered])


def test_asking_the_same_question_again_is_frustration() -> None:
    history = [said(MessageRole.CUSTOMER, "Where is my order 12345?"), said(MessageRole.ASSISTANT)]

    screening = POLICY.screen("where is my order 12345", history)

    assert screening.frustration is not None
    assert screening.frustration.rule == "frustration.repetition"
    assert POLICY.screen("Where is my other order 777?", history).frustration is None


@pytest.mark.parametrize("reason", [R.LLM_UNAVAILABLE, R.INSUFFICIENT_EVIDENCE])
def test_asking_again_after_the_assistant_could_not_answer_is_a_retry(reason: R) -> None:
    failed = said(MessageRole.ASSISTANT, decision=HandoffDecision(A.OFFER_HUMAN, reason))
    history = [said(MessageRole.CUSTOMER, "When does my order 90413 ship?"), failed]

    screening = POLICY.screen("When does my order 90413 ship?", history)

    assert (screening.decision.action, screening.frustration) == (A.ANSWER, None)


def test_after_a_person_took_part_earlier_offers_and_failures_do_not_count() -> None:
    offer = HandoffDecision(A.OFFER_HUMAN, R.FRUSTRATION, rule="frustration.lexicon")
    before = [said(MessageRole.CUSTOMER, "useless"), said(MessageRole.ASSISTANT, decision=offer)]
    after_release = [*before, said(MessageRole.AGENT, "Hi, Ana here"), said(MessageRole.SYSTEM, "back to bot")]

    screening = POLICY.screen("this is useless", after_release)

    assert screening.decision.action is A.ANSWER
    assert screening.frustration is not None
    assert screening.frustration.action is A.OFFER_HUMAN


def test_the_assistants_signals_are_decided_by_the_policy() -> None:
    plain = Screening(HandoffDecision(A.ANSWER))

    assert POLICY.decide(plain, [], history=[]).action is A.ANSWER
    tool = POLICY.decide(plain, [R.CUSTOMER_REQUEST], history=[])
    assert (tool.action, tool.reason_code, tool.rule) == (A.ESCALATE, R.CUSTOMER_REQUEST, "customer_request.assistant")
    weak = POLICY.decide(plain, [R.INSUFFICIENT_EVIDENCE], history=[], evidence="evidence_score=0.2")
    assert (weak.action, weak.reason_code, weak.evidence) == (
        A.OFFER_HUMAN,
        R.INSUFFICIENT_EVIDENCE,
        "evidence_score=0.2",
    )
    down = POLICY.decide(plain, [R.LLM_UNAVAILABLE], history=[])
    assert (down.action, down.reason_code) == (A.OFFER_HUMAN, R.LLM_UNAVAILABLE)


def test_repeated_failure_hands_over_after_the_configured_number_in_a_row() -> None:
    plain = Screening(HandoffDecision(A.ANSWER))
    failed = said(MessageRole.ASSISTANT, decision=HandoffDecision(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE))
    history = [said(MessageRole.CUSTOMER), failed, said(MessageRole.CUSTOMER)]

    second = POLICY.decide(plain, [R.INSUFFICIENT_EVIDENCE], history=history)
    assert (second.action, second.reason_code) == (A.ESCALATE, R.REPEATED_FAILURE)
    patient = EscalationPolicy(EscalationRules(repeated_failure_limit=3))
    assert patient.decide(plain, [R.INSUFFICIENT_EVIDENCE], history=history).action is A.OFFER_HUMAN
    answered_since = [*history, said(MessageRole.ASSISTANT), said(MessageRole.CUSTOMER)]
    assert POLICY.decide(plain, [R.INSUFFICIENT_EVIDENCE], history=answered_since).action is A.OFFER_HUMAN
    # Asked before the reply is written, so that it says a person is coming rather than offering one.
    assert POLICY.hands_over_if_unanswered(history)
    assert not patient.hands_over_if_unanswered(history)
    assert not POLICY.hands_over_if_unanswered(answered_since)
    assert not POLICY.hands_over_if_unanswered([said(MessageRole.CUSTOMER)])


def test_a_screening_that_hands_over_wins_over_what_the_assistant_says() -> None:
    escalate = HandoffDecision(A.ESCALATE, R.SENSITIVE_TOPIC, "lawyer", "sensitive_topic.legal_threat")

    assert POLICY.decide(Screening(escalate), [], history=[]) == escalate


def test_configured_topics_replace_the_defaults() -> None:
    policy = EscalationPolicy(EscalationRules(sensitive_topics=(SensitiveTopic("warranty", (r"\bwarranty\b",)),)))

    assert policy.screen("Is this under warranty?", []).decision.rule == "sensitive_topic.warranty"
    assert policy.screen("I will call my lawyer", []).decision.action is A.ANSWER
    assert EscalationRules().refund_amount_limit == Decimal(100)


def test_business_hours_and_the_next_opening() -> None:
    hours = BusinessHours(timezone="Europe/Berlin", days=frozenset(range(5)), opens=time(9), closes=time(17))
    wednesday_noon = datetime(2026, 5, 6, 10, 0, tzinfo=UTC)  # 12:00 in Berlin
    friday_evening = datetime(2026, 5, 8, 17, 30, tzinfo=UTC)  # 19:30 in Berlin

    assert hours.is_open(wednesday_noon)
    assert not hours.is_open(friday_evening)
    opening = hours.next_opening(friday_evening)
    assert (opening.weekday(), opening.hour, opening.minute) == (0, 9, 0)
    assert opening.astimezone(UTC) == datetime(2026, 5, 11, 7, 0, tzinfo=UTC)


def test_the_notice_gives_the_expected_wait_or_when_someone_will_answer() -> None:
    hours = BusinessHours(timezone="Europe/Berlin")
    open_estimate = estimate_wait(NOW, queue_ahead=2, hours=hours, minutes_per_conversation=4)
    assert open_estimate.minutes == 12
    assert "about 12 minutes" in handoff_notice(open_estimate, hours)

    saturday = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)
    closed_estimate = estimate_wait(saturday, queue_ahead=0, hours=hours, minutes_per_conversation=4)
    notice = handoff_notice(closed_estimate, hours)
    assert not closed_estimate.open_now
    assert "Monday 09:00" in notice
    assert "Monday to Friday, 09:00-17:00 Europe/Berlin" in notice
    assert closed_estimate.expected_at - saturday > timedelta(days=1)


def test_a_night_shift_runs_from_a_working_day_into_the_next_morning() -> None:
    nights = BusinessHours(timezone="UTC", days=frozenset({0, 1, 2, 3, 4}), opens=time(22), closes=time(6))

    assert nights.is_open(datetime(2026, 5, 4, 23, 0, tzinfo=UTC))  # Monday 23:00
    assert nights.is_open(datetime(2026, 5, 5, 3, 0, tzinfo=UTC))  # Tuesday 03:00, Monday's shift
    assert nights.is_open(datetime(2026, 5, 9, 5, 59, tzinfo=UTC))  # Saturday 05:59, Friday's shift
    assert not nights.is_open(datetime(2026, 5, 5, 12, 0, tzinfo=UTC))  # Tuesday noon
    assert not nights.is_open(datetime(2026, 5, 4, 3, 0, tzinfo=UTC))  # Monday 03:00: Sunday has no shift
    assert not nights.is_open(datetime(2026, 5, 9, 23, 0, tzinfo=UTC))  # Saturday night
    opening = nights.next_opening(datetime(2026, 5, 5, 12, 0, tzinfo=UTC))
    assert opening == datetime(2026, 5, 5, 22, 0, tzinfo=ZoneInfo("UTC"))
    all_day = BusinessHours(timezone="UTC", days=frozenset({0}), opens=time(0), closes=time(0))
    assert all_day.is_open(datetime(2026, 5, 4, 0, 0, tzinfo=UTC))
    assert all_day.is_open(datetime(2026, 5, 4, 23, 59, tzinfo=UTC))
    assert not all_day.is_open(datetime(2026, 5, 5, 12, 0, tzinfo=UTC))


def test_working_time_left_at_closing_continues_from_the_next_opening() -> None:
    office = BusinessHours(timezone="Europe/Berlin")  # Monday to Friday, 09:00-17:00; UTC+2 in May
    half_hour = timedelta(minutes=30)

    wednesday = office.after_working_time(datetime(2026, 5, 6, 14, 50, tzinfo=UTC), half_hour)  # 16:50 in Berlin
    friday = office.after_working_time(datetime(2026, 5, 8, 14, 50, tzinfo=UTC), half_hour)
    assert wednesday.astimezone(UTC) == datetime(2026, 5, 7, 7, 20, tzinfo=UTC)  # Thursday 09:20 in Berlin
    assert friday.astimezone(UTC) == datetime(2026, 5, 11, 7, 20, tzinfo=UTC)  # Monday 09:20
    assert office.after_working_time(NOW, half_hour).astimezone(UTC) == NOW + half_hour  # noon: no closing between
    saturday = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)
    assert office.after_working_time(saturday, half_hour).astimezone(UTC) == datetime(2026, 5, 11, 7, 30, tzinfo=UTC)
    assert office.closing(NOW).astimezone(UTC) == datetime(2026, 5, 6, 15, 0, tzinfo=UTC)

    nights = BusinessHours(timezone="UTC", days=frozenset({0, 1, 2, 3, 4}), opens=time(22), closes=time(6))
    monday_shift = datetime(2026, 5, 5, 5, 50, tzinfo=UTC)  # Tuesday 05:50, the end of Monday's shift
    assert nights.after_working_time(monday_shift, half_hour) == datetime(2026, 5, 5, 22, 20, tzinfo=UTC)
    # Whole days back to back have no closing between them; the hours of a change to summer time are real hours.
    every_day = BusinessHours(timezone="Europe/Berlin", days=frozenset(range(7)), opens=time(0), closes=time(0))
    before_the_change = datetime(2026, 3, 28, 22, 30, tzinfo=UTC)  # Saturday 23:30 in Berlin; 02:00 → 03:00
    assert every_day.after_working_time(before_the_change, timedelta(hours=3)).astimezone(UTC) == datetime(
        2026, 3, 29, 1, 30, tzinfo=UTC
    )


def test_a_wait_that_runs_past_closing_is_told_from_the_next_opening() -> None:
    # Two minutes before closing customers were told "about 5 minutes", and expected_at was after closing.
    hours = BusinessHours(timezone="Europe/Berlin")
    before_closing = datetime(2026, 5, 6, 14, 58, tzinfo=UTC)  # Wednesday 16:58 in Berlin

    estimate = estimate_wait(before_closing, queue_ahead=0, hours=hours, minutes_per_conversation=5)
    notice = handoff_notice(estimate, hours)

    assert estimate.open_now
    assert estimate.expected_at.astimezone(UTC) == datetime(2026, 5, 7, 7, 3, tzinfo=UTC)  # 2 today, 3 tomorrow
    assert "Expected wait" not in notice
    assert "unlikely to get to it before they finish for the day" in notice
    assert "someone will answer from Thursday 09:00 (Europe/Berlin)" in notice
    assert "the answer will be waiting here" in notice

    in_time = estimate_wait(before_closing, queue_ahead=0, hours=hours, minutes_per_conversation=2)
    assert "Expected wait: about 2 minutes" in handoff_notice(in_time, hours)
    friday = estimate_wait(
        datetime(2026, 5, 8, 14, 58, tzinfo=UTC), queue_ahead=1, hours=hours, minutes_per_conversation=4
    )
    assert "someone will answer from Monday 09:00" in handoff_notice(friday, hours)

    busy = estimate_wait(before_closing, queue_ahead=22, hours=hours, minutes_per_conversation=5, max_wait_minutes=30)
    notice = handoff_notice(busy, hours)
    assert "someone will answer from Thursday 09:00" in notice
    assert "if nobody can take over within 30 minutes of their hours, I'll tell you here" in notice


def test_the_notice_never_promises_a_wait_past_the_handoffs_limit() -> None:
    hours = BusinessHours(timezone="Europe/Berlin")
    within = estimate_wait(NOW, queue_ahead=4, hours=hours, minutes_per_conversation=5, max_wait_minutes=30)
    assert within.over_limit_minutes is None
    assert "Expected wait: about 25 minutes" in handoff_notice(within, hours)

    # 22 conversations ahead at 5 minutes each: nobody gets to it before the handoff goes back to the assistant.
    beyond = estimate_wait(NOW, queue_ahead=22, hours=hours, minutes_per_conversation=5, max_wait_minutes=30)
    notice = handoff_notice(beyond, hours)
    assert beyond.over_limit_minutes == 30
    assert "115" not in notice
    assert "Expected wait" not in notice
    assert "if nobody can take over within 30 minutes, I'll tell you here" in notice

    saturday = datetime(2026, 5, 9, 12, 0, tzinfo=UTC)
    closed = estimate_wait(saturday, queue_ahead=22, hours=hours, minutes_per_conversation=5, max_wait_minutes=30)
    assert "Monday 09:00" in handoff_notice(closed, hours)
    assert "within 30 minutes of opening" in handoff_notice(closed, hours)


def conversation(status: ConversationStatus) -> Conversation:
    return Conversation(new_id(), new_id(), status, {}, NOW, NOW, NOW)


def test_ownership_changes_record_who_and_why() -> None:
    decision = HandoffDecision(A.ESCALATE, R.CUSTOMER_REQUEST, None, "customer_request.endpoint")
    queued = conversation(ConversationStatus.BOT).request_handoff(decision, NOW)
    assert (queued.status, queued.handoff, queued.handoff_requested_at) == (
        ConversationStatus.PENDING_HUMAN,
        decision,
        NOW,
    )
    claimed = queued.claim(AgentRef(None, "Ana"), NOW)
    assert (claimed.status, claimed.agent, claimed.claimed_at) == (ConversationStatus.HUMAN, AgentRef(None, "Ana"), NOW)
    with pytest.raises(InvalidTransitionError):
        claimed.claim(AgentRef(None, "Ben"), NOW)
    released = claimed.give_back(ConversationEvent.RELEASE, NOW)
    assert (released.status, released.agent, released.handoff) == (ConversationStatus.BOT, None, decision)
    with pytest.raises(InvalidTransitionError):
        released.give_back(ConversationEvent.WITHDRAW, NOW)
    with pytest.raises(InvalidTransitionError):
        claimed.give_back(ConversationEvent.CLOSE, NOW)
    with pytest.raises(InvalidTransitionError):
        conversation(ConversationStatus.HUMAN).request_handoff(decision, NOW)


def test_an_offer_made_for_frustration_still_counts_as_answered() -> None:
    frustration = HandoffDecision(A.OFFER_HUMAN, R.FRUSTRATION, "useless", "frustration.lexicon")
    miss = HandoffDecision(A.OFFER_HUMAN, R.INSUFFICIENT_EVIDENCE)

    assert answer_status_for(frustration) is AnswerStatus.ANSWERED
    assert answer_status_for(miss) is AnswerStatus.INSUFFICIENT_EVIDENCE
    assert answer_status_for(HandoffDecision(A.ESCALATE, R.SENSITIVE_TOPIC)) is AnswerStatus.HANDED_OFF
    # So a miss right after a frustration offer is the first in a row, not the second.
    history = [said(MessageRole.CUSTOMER, "useless"), said(MessageRole.ASSISTANT, decision=frustration)]
    decision = POLICY.decide(Screening(HandoffDecision(A.ANSWER)), [R.INSUFFICIENT_EVIDENCE], history=history)
    assert decision.action is A.OFFER_HUMAN


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("My colleague Sue placed the order for me", A.ANSWER),
        ("I'm going to sue you over this", A.ESCALATE),
        ("Would it hurt the warranty if I replace the wheels?", A.ANSWER),
        ("The chair snapped and my son hurt his back", A.ESCALATE),
        ("I got hurt assembling the desk", A.ESCALATE),
    ],
)
def test_names_and_figures_of_speech_are_not_sensitive_topics(text: str, expected: A) -> None:
    assert screened(text)[0] is expected


def test_evidence_never_carries_a_secret() -> None:
    """The queue and webhooks show a decision's evidence: a shouted card number is frustration, not a leak."""
    shouted = POLICY.screen("MY CARD 4111 1111 1111 1111 WAS CHARGED TWICE AND NOBODY HELPS", []).frustration
    assert shouted is not None
    assert shouted.evidence is not None
    assert "4111" not in shouted.evidence
    assert "[card number]" in shouted.evidence
    reason = HandoffDecision(
        A.ESCALATE, R.CUSTOMER_REQUEST, "card 4111 1111 1111 1111 double charged, password: hunter2"
    )
    assert reason.evidence == "card [card number] double charged, password: [password]"


def test_repeating_oneself_is_frustration() -> None:
    screening = POLICY.screen("THIS IS RIDICULOUS I HAVE ASKED THREE TIMES", [])
    assert screening.frustration is not None
    assert POLICY.screen("I asked three times already", []).frustration is not None
    assert POLICY.screen("It's the third time I've ordered from you and always happy", []).frustration is None
    assert POLICY.screen("Customers keep asking about the API limits", []).frustration is None
