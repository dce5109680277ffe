"""The escalation policy: layered rules that decide answer, offer a human, or hand over — never the model alone.

Two moments per turn:

- :meth:`EscalationPolicy.screen` reads what the customer just wrote, before the model runs. An explicit request
  for a person, a sensitive topic, or frustration that continues after a human was offered hands over at once
  (the model is not called); first signs of frustration offer a human alongside the answer.
- :meth:`EscalationPolicy.decide` combines that with what the assistant signalled while writing (its
  ``request_human_handoff`` tool, weak evidence, being unavailable) and with the conversation so far.

Every decision names its ``rule`` and the ``evidence`` it matched, so it can be audited. Nothing here reads the
wording of the assistant's reply: escalation never depends on magic strings in model output.
"""

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from support.domain.conversations import (
    AnswerStatus,
    HandoffAction,
    HandoffDecision,
    Message,
    MessageRole,
    ReasonCode,
)

# Phrases that ask for a person, in the languages customers most often write in (lower case, regex).
# Whom a customer asks for: a person, or the team that has people.
_PEOPLE = (
    r"(?:human|person|agent|representative|rep|operator|someone|somebody|manager|supervisor|staff(?:\s+member)?|"
    r"(?:a\s+)?member\s+of\s+(?:your\s+|the\s+)?(?:staff|team)|customer\s+(?:service|support|care)|"
    r"(?:the\s+|your\s+)?support\s+team|(?:your\s+|the\s+)?(?:billing|sales)\s+(?:team|department))"
)
# A request in French or Spanish ends its clause with the person ("je voudrais un agent" asks for one, "je voudrais
# un agent nettoyant" for a cleaner; "necesito una persona más en mi cuenta" for an account seat).
_CLAUSE_END_FR = r"(?=\s*(?:$|[.!?,;]|svp\b|stp\b|s'il\b|merci\b|pour\s+(?:m'aider|parler)))"
_CLAUSE_END_ES = r"(?=\s*(?:$|[.!?,;]|por\s+favor\b|que\s+me\s+ayude\b|ya\b|ahora\b))"
# "human readable" is not a human.
_NOT_READABLE = r"(?![-\w]|\s+readable)"
DEFAULT_HUMAN_REQUEST_PATTERNS: tuple[str, ...] = (
    # English
    (
        r"\b(?:speak|talk|chat)\s+(?:to|with)\s+(?:a\s+|an\s+|some\s+|your\s+)?(?:real\s+|live\s+|actual\s+)?"
        + _PEOPLE
        + r"\b"
    ),
    # "a real person" as what is wanted, not a description ("written by a real person" is a question)
    (
        r"\b(?:want|need|get|give\s+me|prefer)\s+(?:a\s+|an\s+|some\s+)?(?:real|live|actual)\s+"
        r"(?:human|person|agent|people)\b(?!\s+(?:to\s+(?:sign|receive|collect|accept|pick)|signing|instead))"
    ),
    r"\bis\s+there\s+(?:a|an)\s+(?:real|live|actual)\s+(?:human|person|agent)(?=\s*(?:$|[.!?,]|here\b|available\b))",
    r"\b(?:human|live)\s+(?:agent|support|help)\b",
    # Whom "connect me to" names is a person or a desk; not a page ("put me with the right article")
    (
        r"\b(?:connect|transfer)\s+me\s+(?:to|through\s+to|with)\b(?!\s+(?:the\s+|a\s+|an\s+|my\s+|your\s+)?"
        r"(?:right\s+)?(?:article|page|link|app|website|site|wi-?fi|network|internet|bluetooth|printer|desk\s+app)\b)"
    ),
    r"\bput\s+me\s+(?:through(?:\s+to)?|in\s+touch\s+with)\b",
    r"\bput\s+me\s+with\s+(?:a\s+|an\s+|the\s+|your\s+)?(?:real\s+|live\s+)?" + _PEOPLE + r"\b",
    r"\b(?:i\s+)?(?:want|need|would\s+like)\s+(?:a|an|to\s+talk\s+to\s+a)\s+(?:human|person|agent|representative)\b"
    + _NOT_READABLE,
    r"\bescalate\s+(?:this|my)\b",
    r"\bescalate\s+it(?=\s*(?:$|[.!?,]|please\b|now\b))",
    r"\bis\s+there\s+(?:a|an)\s+(?:real\s+|live\s+)?(?:human|person|agent)\s+(?:i|we)\s+(?:can|could)\s+(?:talk|speak|chat)\b",
    r"\bcan\s+(?:a|an)\s+(?:real\s+|live\s+)?(?:human|person|agent)\s+help\s+me\b",
    # Getting a human, a person (but not a human-readable invoice)
    r"\b(?:get\s+(?:me\s+)?|give\s+me\s+)(?:a|an)\s+(?:real\s+|live\s+)?(?:human|person|representative|operator)\b"
    + _NOT_READABLE,
    # Not the bot ("stop the bot from emailing me" is about notifications)
    (
        r"\b(?:do\s*n[o']?t|do\s+not)\s+want\s+to\s+(?:talk|speak|chat)\s+(?:to|with)\s+(?:a|an|the|this|your)\s+"
        r"(?:bot|robot|chatbot|machine|ai)\b"
    ),
    r"\b(?:stop|enough\s+of|tired\s+of|no\s+more)\s+(?:the\s+|this\s+|your\s+)?(?:bot|chatbot)s?(?=\s*(?:$|[.,!;]))",
    r"\bdo\s*n[o']?t\s+want\s+(?:a|an|the|this|your)\s+(?:bot|chatbot|ai|robot)(?=\s*(?:$|[.,!;]))",
    r"\b(?:do\s*n[o']?t|do\s+not)\s+want\s+to\s+(?:talk|speak|chat)\s+(?:to|with)\s+you(?=\s*(?:$|[.,!;]|any\s*more))",
    # A supervisor or manager as what is wanted ("I want a supervisor"), not a role ("I need a manager account")
    (
        r"\b(?:want|need|get\s+me|give\s+me|would\s+like)\s+(?:a|an|the|your|to\s+see\s+(?:a|the|your))\s+"
        r"(?:supervisor|manager)(?=\s*(?:$|[.!?,;]|please\b|now\b|right\s+now\b|immediately\b))"
    ),
    r"\bget\s+me\s+(?:someone|somebody)\s+(?:real|else|human|who\s+can\s+help)\b",
    # A call from the team ("can someone from your team call me?", "could somebody call me back")
    (
        r"\b(?:can|could|will|would)\s+(?:someone|somebody|a\s+person|an\s+agent|a\s+human|one\s+of\s+you)\s+"
        r"(?:from\s+(?:your|the)\s+(?:team|company|support(?:\s+team)?|customer\s+service)\s+)?"
        r"(?:please\s+)?(?:call|phone|ring|contact)\s+me(?:\s+back)?(?:\s+(?:please|asap|today|now|right\s+away))?"
        # The request ends there: "call me when the parcel arrives", "contact me if the payment fails" are about
        # a delivery or a payment (found by a review).
        r"(?=\s*(?:$|[?.!,;]))"
    ),
    # The whole message is the request, as typed to phone menus: "human please", "agent", "a real person!"
    (
        r"^\W*(?:please\s+)?(?:(?:a|an)\s+)?(?:real\s+|live\s+)?(?:human|person|agent|representative|operator|"
        r"customer\s+(?:service|support)|escalate)(?:\s+(?:please|pls|now))?\W*$"
    ),
    # German
    (
        r"\b(?:einen|einem|einer|eine)\s+(?:echten\s+|richtigen\s+)?(?:menschen|mitarbeiter(?:in)?|person|"
        r"berater(?:in)?)\s+(?:sprechen|reden|chatten)\b"
    ),
    r"\bverbinden?\s+(?:sie\s+)?mich\s+(?:bitte\s+)?mit\b",
    r"\b(?:echten|richtigen)\s+(?:menschen|mitarbeiter)\b",
    r"^\W*(?:bitte\s+)?(?:einen?\s+)?(?:mensch(?:en)?|mitarbeiter(?:in)?)(?:\s+bitte)?\W*$",
    # French
    (
        r"\b(?:parler|discuter)\s+(?:à|a|avec)\s+(?:un|une|quelqu'un|un\s+vrai)\s*(?:humain|conseiller|conseillère|"
        r"agent|personne)?\b"
    ),
    r"\b(?:un|une)\s+(?:vrai|vraie)\s+(?:personne|humain)\b",
    (
        r"\b(?:je\s+veux|je\s+voudrais|j'aimerais|il\s+me\s+faut)\s+(?:un|une)\s+(?:humain|conseill(?:er|ère)|agent)"
        r"(?:\s+humain)?" + _CLAUSE_END_FR
    ),
    r"^\W*(?:un|une)\s+(?:humain|conseill(?:er|ère))(?:\s+(?:svp|stp|s'il\s+vous\s+pla[iî]t))?\W*$",
    # Spanish
    r"\bhablar\s+con\s+(?:un|una|alguien|una\s+persona|un\s+humano|un\s+agente)\b",
    r"\b(?:persona|agente)\s+real\b",
    (
        r"\b(?:quiero|necesito)\s+(?:un|una)\s+(?:agente|persona|humano|operador(?:a)?)(?:\s+(?:humano|real))?"
        + _CLAUSE_END_ES
    ),
    r"\bagente\s+humano\b",
    # Italian
    r"\bparlare\s+con\s+(?:un|una|qualcuno|un\s+operatore|una\s+persona)\b",
    # Portuguese
    r"\bfalar\s+com\s+(?:um|uma|algu[eé]m|atendente)\b",
    # Dutch
    r"\b(?:spreken|praten)\s+met\s+(?:een|iemand)\s*(?:medewerker|mens|persoon)?\b",
    r"\bmet\s+(?:een\s+)?(?:medewerker|mens|persoon|iemand)\s+(?:spreken|praten)\b",
    # Without "met", only as the speaker's own wish ("kan iemand spreken namens mij" is someone else speaking)
    (
        r"\b(?:ik\s+(?:wil|zou\s+graag)|(?:kan|mag|wil)\s+(?:ik|je|u))\s+(?:graag\s+)?(?:een\s+)?"
        r"(?:medewerker|mens|persoon|iemand)\s+(?:spreken|praten)\b"
    ),
    r"\bdoorverbinden\b",
    # Russian (an operator alone may be a phone carrier: only talking to one, or a live person)
    (
        r"(?:поговорить|говорить|связаться|соедините|свяжите)\s+(?:меня\s+)?с\s+"  # noqa: RUF001 - Cyrillic
        r"(?:оператором|человеком|менеджером|сотрудником|специалистом)"
    ),
    r"(?:позовите|нужен|хочу)\s+(?:оператора|оператор|человека|менеджера|сотрудника)(?=\s*(?:$|[.!?,]))",
    r"жив(?:ой|ым|ого)\s+(?:человек|оператор)",  # noqa: RUF001 - Cyrillic
    # Chinese and Japanese (no word boundaries): a human agent, a transfer to one, talking to one
    r"人工客服|转人工|轉人工|人工服务|人工服務|找人工|真人客服",
    r"オペレーター(?:と|に|を)|担当者と話|人と話したい|有人対応",
)
# A short "yes" right after the assistant offered a human accepts the offer, in the customer's language, with a few
# words of courtesy and thanks ("oui merci", "sí, por favor", "yes, connect me"). An "ok" or "sure" takes no
# thanks: "ok thanks" ("ok merci", "d'accord, merci") often closes the topic instead.
_COURTESY = (
    r"please(?:\s+do)?|bitte(?:\s+sehr|schön)?|s'il\s+(?:vous|te)\s+pla[iî]t|svp|stp|por\s+favor|per\s+favore|"
    r"graag|alsjeblieft|alstublieft|gerne|volontiers|i'd\s+like\s+that|i\s+would(?:\s+like\s+that)?|"
    r"that\s+would\s+be\s+great|go\s+ahead|do\s+it|connect\s+me|yes|pls|gern|sure"
)
_THANKS = r"thanks?|thank\s+you|merci|gracias|danke|grazie|obrigad[oa]|bedankt"
DEFAULT_ACCEPTANCE_PATTERN = (
    r"(?:(?:yes|yeah|yep|yup|please\s+do|please|of\s+course|absolutely|that\s+would\s+be\s+great|ja|jawohl|oui|"
    r"s[iíì]|sim|graag|claro|da)"
    r"(?:[\s,!.]+(?:" + _COURTESY + r"|" + _THANKS + r"))*"
    r"|(?:sure(?:\s+thing)?|ok|okay|d'accord)(?:[\s,!.]+(?:" + _COURTESY + r"))*)"
    r"\W*"
)
DEFAULT_FRUSTRATION_TERMS: tuple[str, ...] = (
    "useless",
    "ridiculous",
    "unacceptable",
    "terrible",
    "awful",
    "frustrated",
    "frustrating",
    "fed up",
    "sick of",
    "waste of time",
    "not helpful",
    "doesn't help",
    "does not help",
    "not what i asked",
    "still not working",
    "still doesn't work",
    "i already said",
    "i already told you",
    "how many times",
    "stupid bot",
    "asked three times",
    "asked twice",
    "asked you twice",
    "i keep asking",
    "this is a joke",
    "worst",
    "nutzlos",
    "unverschämt",
    "inutile",
    "inútil",
)
DEFAULT_PROFANITY_TERMS: tuple[str, ...] = (
    "fuck",
    "fucking",
    "shit",
    "crap",
    "damn",
    "bullshit",
    "wtf",
    "scheiße",
    "scheisse",
    "merde",
    "mierda",
)


@dataclass(frozen=True, slots=True)
class SensitiveTopic:
    """A topic a bot should not handle: any of ``patterns`` (regex, case-insensitive) hands over at once.

    Unless one of ``unless`` is found before the match in its sentence: "How do I cancel my membership?" asks what
    the help center answers, "please cancel my membership" asks for it to be done.
    """

    name: str
    patterns: tuple[str, ...]
    unless: tuple[str, ...] = ()


# What the model may signal that hands the conversation over at once; its other signals offer a person first.
HANDED_OVER_AT_ONCE = frozenset({ReasonCode.CUSTOMER_REQUEST, ReasonCode.SENSITIVE_TOPIC})

DEFAULT_SENSITIVE_TOPICS: tuple[SensitiveTopic, ...] = (
    SensitiveTopic(
        "legal_threat",
        (
            r"\b(?:lawyer|attorney|solicitor|lawsuit|suing|legal action|court|small claims)\b",
            # "sue" as a verb, not the name Sue: with who is sued, or with the intent.
            r"\bsue\s+(?:you|your|the|this|them|u)\b|\b(?:will|going to|gonna|to)\s+sue\b",
            r"\b(?:anwalt|klage|verklagen|avocat|abogado|demanda)\b",
        ),
    ),
    SensitiveTopic(
        "account_security",
        (
            (
                r"\b(?:hacked|compromised|unauthori[sz]ed (?:access|login|charge|transaction)s?|someone (?:else )?"
                r"(?:logged|got) into my account|identity theft|fraud(?:ulent)?|phishing|stolen (?:card|account))\b"
            ),
        ),
    ),
    SensitiveTopic(
        "cancellation",
        (
            # Up to two words may name which one: "cancel my Northwind Plus membership" is no less a cancellation.
            (
                r"\b(?:cancel|close|terminate|delete)\s+(?:my\s+|our\s+|the\s+)?(?:[\w-]+\s+){0,2}?"
                r"(?:account|subscription|membership|contract|plan)\b"
            ),
            r"\bk[üu]ndigen\b|\bk[üu]ndigung\b|\brésilier\b|\bdarme de baja\b",
        ),
        # A question how to, in the same sentence, is self-service the help center answers.
        unless=(
            (
                r"\b(?:how\s+(?:do|can|could|would|should)\s+(?:i|we|you)|how\s+to|where\s+(?:do|can)\s+(?:i|we)"
                r"|is\s+it\s+possible\s+to|can\s+i|what\s+happens\s+if\s+i)\b"
            ),
        ),
    ),
    SensitiveTopic(
        "safety_or_harm",
        (
            # "caught fire", not "the trigger fires" or "firewall".
            r"\b(?:injur(?:y|ed|ies)|caught fire|on fire|fire hazard|smok(?:e|ing) came|burn(?:ed|t))\b",
            r"\b(?:explod(?:e|ed)|electric shock|poison(?:ed|ing)?)\b",
            # Someone was hurt, not "would it hurt the warranty".
            r"\b(?:got|was|were|been|is|am|are|get|getting)\s+hurt\b",
            r"\bhurt\s+(?:me|myself|him|himself|her|herself|them|themselves|my|his|their|our)\b",
        ),
    ),
)
# "refund of $450", "refund me 1,200 EUR", "450 € refund", "a refund of 450": an amount next to the word refund.
# Without a currency only "refund of <number>" is an amount: order numbers, dates and quantities are not.
_NUMBER = r"(\d{1,3}(?:[,.\s]\d{3})+|\d+)(?:[.,](\d{1,2}))?"
_AMOUNT = rf"(?:[$€£]\s*{_NUMBER}|(?<![\w.,]){_NUMBER}\s*(?:[$€£]|(?:usd|eur|gbp|dollars?|euros?)(?!\w)))"
_REFUND_AMOUNT = re.compile(
    rf"\brefund\w*\b[^.?!\n]{{0,40}}?{_AMOUNT}|{_AMOUNT}[^.?!\n]{{0,20}}?\brefund|\brefund\w*\s+of\s+{_NUMBER}",
    re.IGNORECASE,
)
_LETTERS = re.compile(r"[^\W\d_]", re.UNICODE)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class EscalationRules:
    """The configurable layers of the policy (see docs/escalation.md; loadable from a policy file)."""

    human_request_patterns: tuple[str, ...] = DEFAULT_HUMAN_REQUEST_PATTERNS
    acceptance_pattern: str = DEFAULT_ACCEPTANCE_PATTERN
    frustration_terms: tuple[str, ...] = DEFAULT_FRUSTRATION_TERMS
    profanity_terms: tuple[str, ...] = DEFAULT_PROFANITY_TERMS
    sensitive_topics: tuple[SensitiveTopic, ...] = DEFAULT_SENSITIVE_TOPICS
    # Refunds above this amount (any currency) go to a person; None switches the rule off.
    refund_amount_limit: Decimal | None = Decimal(100)
    # Shouting: a message with at least this many letters, nearly all capitals.
    shouting_min_letters: int = 12
    shouting_ratio: float = 0.8
    # The same question again (word overlap at least this) counts as frustration.
    repetition_similarity: float = 0.8
    repetition_min_words: int = 3
    # This many replies in a row without an answer hand over (repeated_failure).
    repeated_failure_limit: int = 2


@dataclass(frozen=True, slots=True)
class _Compiled:
    human: re.Pattern[str] | None
    acceptance: re.Pattern[str]
    frustration: re.Pattern[str] | None
    profanity: re.Pattern[str] | None
    topics: tuple[tuple[str, re.Pattern[str], re.Pattern[str] | None], ...]


_SENTENCE_BREAK = re.compile(r"[.!?\n]")


def _sentence_before(text: str, position: int) -> str:
    """The part of the sentence of ``text`` that comes before ``position``."""
    start = max((found.end() for found in _SENTENCE_BREAK.finditer(text, 0, position)), default=0)
    return text[start:position]


def _any_term(terms: Sequence[str]) -> re.Pattern[str] | None:
    if not terms:
        return None
    alternatives = "|".join(re.escape(term.lower()) for term in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _normalise(text: str) -> str:
    # Curly apostrophes and compatibility forms would slip past the lexicons.
    return unicodedata.normalize("NFKC", text).replace("\u2019", "'").lower()


@dataclass(frozen=True, slots=True)
class Screening:
    """What the customer's words alone decided, before the model runs."""

    decision: HandoffDecision
    # Signs of frustration that did not (yet) hand over: the reply goes out with an offer of a human.
    frustration: HandoffDecision | None = None


@dataclass(slots=True)
class EscalationPolicy:
    """Decides, per turn, whether the assistant answers, offers a human, or hands over."""

    rules: EscalationRules = field(default_factory=EscalationRules)
    _compiled: _Compiled = field(init=False, repr=False)

    def __post_init__(self) -> None:
        rules = self.rules
        self._compiled = _Compiled(
            # One alternation: a single scan of the text instead of one per phrase.
            human=re.compile("|".join(f"(?:{pattern})" for pattern in rules.human_request_patterns), re.IGNORECASE)
            if rules.human_request_patterns
            else None,
            acceptance=re.compile(rules.acceptance_pattern, re.IGNORECASE),
            frustration=_any_term(rules.frustration_terms),
            profanity=_any_term(rules.profanity_terms),
            topics=tuple(
                (
                    topic.name,
                    re.compile("|".join(f"(?:{p})" for p in topic.patterns), re.IGNORECASE),
                    re.compile("|".join(f"(?:{p})" for p in topic.unless), re.IGNORECASE) if topic.unless else None,
                )
                for topic in rules.sensitive_topics
                if topic.patterns
            ),
        )

    def screen(self, text: str, history: Sequence[Message]) -> Screening:  # noqa: PLR0911 - one exit per layer
        """Rules on what the customer just wrote (``text``), given the conversation before it."""
        normalised = _normalise(text)
        episode = _current_episode(history)
        compiled = self._compiled
        found = compiled.human.search(normalised) if compiled.human is not None else None
        if found:
            return Screening(_escalate(ReasonCode.CUSTOMER_REQUEST, "customer_request.phrase", found.group(0)))
        if _offered_human(episode) and compiled.acceptance.fullmatch(normalised.strip()):
            return Screening(_escalate(ReasonCode.CUSTOMER_REQUEST, "customer_request.accepted_offer", text.strip()))
        for name, pattern, unless in compiled.topics:
            for found in pattern.finditer(normalised):
                if unless is None or not unless.search(_sentence_before(normalised, found.start())):
                    return Screening(_escalate(ReasonCode.SENSITIVE_TOPIC, f"sensitive_topic.{name}", found.group(0)))
        refund = self._refund_over_limit(text)
        if refund is not None:
            return Screening(refund)
        frustration = self._frustration(text, normalised, episode)
        if frustration is None:
            return Screening(HandoffDecision(HandoffAction.ANSWER))
        rule, evidence = frustration
        if _frustration_offered(episode):
            # Offer first; when it continues after the offer, hand over.
            return Screening(_escalate(ReasonCode.FRUSTRATION, "frustration.continued", evidence))
        offer = HandoffDecision(HandoffAction.OFFER_HUMAN, ReasonCode.FRUSTRATION, evidence, rule)
        return Screening(HandoffDecision(HandoffAction.ANSWER), frustration=offer)

    def decide(  # noqa: PLR0911 - one exit per layer, in order
        self,
        screening: Screening,
        signals: Sequence[ReasonCode],
        *,
        history: Sequence[Message],
        evidence: str | None = None,
    ) -> HandoffDecision:
        """The decision for a reply the assistant wrote after ``screening``, having raised ``signals``."""
        if screening.decision.action is HandoffAction.ESCALATE:
            return screening.decision
        for reason in signals:
            if reason in HANDED_OVER_AT_ONCE:
                return _escalate(reason, f"{reason.value}.assistant", evidence)
            if reason is ReasonCode.FRUSTRATION:
                if _frustration_offered(_current_episode(history)):
                    return _escalate(reason, "frustration.continued", evidence)
                return HandoffDecision(HandoffAction.OFFER_HUMAN, reason, evidence, "frustration.assistant")
        if ReasonCode.INSUFFICIENT_EVIDENCE in signals or ReasonCode.LLM_UNAVAILABLE in signals:
            limit = self.rules.repeated_failure_limit
            if self.hands_over_if_unanswered(history):
                return _escalate(ReasonCode.REPEATED_FAILURE, f"repeated_failure.{limit}_in_a_row", evidence)
            reason = (
                ReasonCode.LLM_UNAVAILABLE
                if ReasonCode.LLM_UNAVAILABLE in signals
                else ReasonCode.INSUFFICIENT_EVIDENCE
            )
            return HandoffDecision(HandoffAction.OFFER_HUMAN, reason, evidence, f"{reason.value}.offer")
        if screening.frustration is not None:
            return screening.frustration
        return HandoffDecision(HandoffAction.ANSWER, None, evidence, None)

    def hands_over_if_unanswered(self, history: Sequence[Message]) -> bool:
        """Whether a reply that cannot answer, written now after ``history``, hands the conversation to a person.

        The repeated-failure rule, asked before the reply is written: the assistant then says a person is coming
        instead of offering one, which the handover notice would follow at once.
        """
        return _unanswered_streak(_current_episode(history)) + 1 >= self.rules.repeated_failure_limit

    def hands_over_if_frustrated(self, history: Sequence[Message]) -> bool:
        """Whether a model's handoff for frustration, after ``history``, hands over rather than offers a person."""
        return _frustration_offered(_current_episode(history))

    def _refund_over_limit(self, text: str) -> HandoffDecision | None:
        limit = self.rules.refund_amount_limit
        if limit is None:
            return None
        for found in _REFUND_AMOUNT.finditer(text):
            # Each way of writing an amount has its own (whole, cents) pair of groups; one of them matched.
            groups = found.groups()
            whole, cents = next((groups[i], groups[i + 1]) for i in range(0, len(groups), 2) if groups[i])
            amount = _amount(whole, cents)
            if amount is not None and amount > limit:
                return _escalate(ReasonCode.SENSITIVE_TOPIC, "sensitive_topic.refund_over_limit", found.group(0))
        return None

    def _frustration(self, text: str, normalised: str, episode: Sequence[Message]) -> tuple[str, str] | None:
        compiled, rules = self._compiled, self.rules
        if compiled.profanity is not None:
            found = compiled.profanity.search(normalised)
            if found:
                return "frustration.profanity", found.group(0)
        if compiled.frustration is not None:
            found = compiled.frustration.search(normalised)
            if found:
                return "frustration.lexicon", found.group(0)
        letters = _LETTERS.findall(text)
        if len(letters) >= rules.shouting_min_letters:
            upper = sum(1 for letter in letters if letter.isupper())
            if upper / len(letters) >= rules.shouting_ratio:
                return "frustration.shouting", text.strip()[:80]
        words = set(_WORD.findall(normalised))
        if len(words) >= rules.repetition_min_words:
            for earlier in _repeatable(episode):
                before = set(_WORD.findall(_normalise(earlier.content)))
                if before and len(words & before) / len(words | before) >= rules.repetition_similarity:
                    return "frustration.repetition", earlier.content.strip()[:80]
        return None


def _escalate(reason: ReasonCode, rule: str, evidence: str | None) -> HandoffDecision:
    return HandoffDecision(HandoffAction.ESCALATE, reason, evidence, rule)


def _amount(whole: str, cents: str | None) -> Decimal | None:
    try:
        return Decimal(re.sub(r"[,.\s]", "", whole) + (f".{cents}" if cents else ""))
    except InvalidOperation:
        return None


def _current_episode(history: Sequence[Message]) -> Sequence[Message]:
    """The messages since a person last took part or the conversation last changed hands.

    Agent messages and system notices (a handoff, a release, a withdrawal) start a new episode, so offers,
    failures and repetitions from before a handoff do not escalate again right after it (no handoff loops).
    """
    for index in range(len(history) - 1, -1, -1):
        if history[index].role in {MessageRole.AGENT, MessageRole.SYSTEM}:
            return history[index + 1 :]
    return history


def _repeatable(episode: Sequence[Message]) -> list[Message]:
    """The customer messages that asking again would show frustration with: not those the assistant failed on.

    Sending a question again after the assistant could not answer it (no evidence, or the model was unavailable,
    whose reply says to ask again) is a retry; a failure streak hands over through ``repeated_failure`` anyway.
    """
    kept: list[Message] = []
    waiting: list[Message] = []
    for message in episode:
        if message.role is MessageRole.CUSTOMER:
            waiting.append(message)
        elif message.role is MessageRole.ASSISTANT:
            if message.answer_status is not AnswerStatus.INSUFFICIENT_EVIDENCE:
                kept.extend(waiting)
            waiting = []
    return [*kept, *waiting]


def _offered_human(episode: Sequence[Message]) -> bool:
    """The latest assistant reply offered a person."""
    for message in reversed(episode):
        if message.role is MessageRole.ASSISTANT:
            return message.decision is not None and message.decision.action is HandoffAction.OFFER_HUMAN
    return False


def _frustration_offered(episode: Sequence[Message]) -> bool:
    return any(
        message.decision is not None
        and message.decision.action is HandoffAction.OFFER_HUMAN
        and message.decision.reason_code is ReasonCode.FRUSTRATION
        for message in episode
    )


def _unanswered_streak(episode: Sequence[Message]) -> int:
    """How many of the latest assistant replies in a row did not answer."""
    streak = 0
    for message in reversed(episode):
        if message.role is not MessageRole.ASSISTANT:
            continue
        if message.answer_status is AnswerStatus.INSUFFICIENT_EVIDENCE:
            streak += 1
        else:
            break
    return streak


@dataclass(frozen=True, slots=True)
class BusinessHours:
    """When human agents work: weekdays (0 = Monday) between ``opens`` and ``closes`` in ``timezone``."""

    timezone: str = "UTC"
    days: frozenset[int] = frozenset(range(5))
    opens: time = time(9)
    closes: time = time(17)

    def is_open(self, now: datetime) -> bool:
        """Agents are working at ``now``.

        ``closes`` at or before ``opens`` is a night shift (22:00-06:00): it starts on a working day and ends the
        next morning; 00:00-00:00 is the whole of each working day.
        """
        local = now.astimezone(ZoneInfo(self.timezone))
        if self.opens < self.closes:
            return local.weekday() in self.days and self.opens <= local.time() < self.closes
        if local.time() >= self.opens:
            return local.weekday() in self.days
        return local.time() < self.closes and (local.weekday() - 1) % 7 in self.days

    def next_opening(self, now: datetime) -> datetime:
        """``now`` when open, otherwise when agents start next (aware, in the business timezone)."""
        zone = ZoneInfo(self.timezone)
        local = now.astimezone(zone)
        if self.is_open(now) or not self.days:
            return local
        for offset in range(8):
            day = (local + timedelta(days=offset)).date()
            opening = datetime.combine(day, self.opens, zone)
            if day.weekday() in self.days and opening > local:
                return opening
        return local

    def closing(self, now: datetime) -> datetime:
        """When the agents working at ``now`` (or from the next opening) stop (aware, in the business timezone).

        That is the end of their shift, or of the last shift that follows it without a break (00:00-00:00 days).
        """
        end = self._shift_end(self.next_opening(now))
        for _ in range(8):
            if not self.is_open(end):
                break
            end = self._shift_end(end)
        return end

    def after_working_time(self, start: datetime, duration: timedelta) -> datetime:
        """When ``duration`` of agents' working time has passed since ``start`` (aware, in the business timezone).

        Closed hours do not count: what is left of ``duration`` at closing continues from the next opening, so
        half an hour from 16:50 with agents until 17:00 ends at 09:20 on the next working day.
        """
        zone = ZoneInfo(self.timezone)
        moment = self.next_opening(start).astimezone(UTC)
        left = duration
        # Computed in UTC: arithmetic on local times of one zone ignores a change of its offset (summer time).
        for _ in range(10_000):
            end = self.closing(moment).astimezone(UTC)
            if not self.days or moment + left <= end or end <= moment:
                break
            left -= end - moment
            moment = self.next_opening(end).astimezone(UTC)
        return (moment + left).astimezone(zone)

    def _shift_end(self, local: datetime) -> datetime:
        """The end of the shift that is open at ``local`` (a night shift started the day before ends today)."""
        day = local.date()
        if self.closes <= self.opens and local.time() >= self.opens:
            day += timedelta(days=1)
        return datetime.combine(day, self.closes, local.tzinfo)


@dataclass(frozen=True, slots=True)
class WaitEstimate:
    """What the customer is told when a person is asked to take over."""

    open_now: bool
    expected_at: datetime
    minutes: int
    # The opening from which someone will answer when that is not before the estimate: the next one outside
    # business hours, or the one after closing when the queue's work runs past it; None when agents answer today.
    answer_from: datetime | None
    # The queue's pace says nobody gets to it before the handoff's maximum wait runs out (the conversation then
    # goes back to the assistant): minutes of that limit, else None.
    over_limit_minutes: int | None = None


def estimate_wait(
    now: datetime,
    *,
    queue_ahead: int,
    hours: BusinessHours,
    minutes_per_conversation: float,
    max_wait_minutes: float | None = None,
) -> WaitEstimate:
    """The expected wait: the conversations ahead in the queue at a configured pace, in agents' working time.

    It starts now, or at the next opening outside business hours, and the work left at closing continues from the
    next opening: two minutes before closing a wait of 10 minutes is not "about 10 minutes" but tomorrow morning.
    """
    open_now = hours.is_open(now)
    start = hours.next_opening(now)
    paced = (queue_ahead + 1) * minutes_per_conversation
    minutes = max(1, round(paced))
    expected = hours.after_working_time(start, timedelta(minutes=minutes))
    answer_from: datetime | None = None
    if not open_now:
        answer_from = start
    elif expected.astimezone(UTC) > (closing := hours.closing(now)).astimezone(UTC):
        answer_from = hours.next_opening(closing)
    over = max(1, round(max_wait_minutes)) if max_wait_minutes is not None and paced > max_wait_minutes else None
    waited = (expected.astimezone(UTC) - now.astimezone(UTC)).total_seconds()
    return WaitEstimate(open_now, expected, max(1, round(waited / 60)), answer_from, over)


def handoff_notice(estimate: WaitEstimate, hours: BusinessHours) -> str:
    """The customer-facing message when the conversation goes to the human queue.

    It never promises a wait past the handoff's limit: when the queue is longer than that, it says so instead.
    When nobody is expected before closing, it says when someone will answer, as outside business hours.
    """
    busy = ""
    if estimate.over_limit_minutes is not None:
        limit = estimate.over_limit_minutes
        counted = "" if estimate.answer_from is None else " of opening" if not estimate.open_now else " of their hours"
        busy = (
            f"Our team is busy: if nobody can take over within {limit} minute{'s' if limit != 1 else ''}"
            f"{counted}, I'll tell you here and keep helping myself."
        )
    if estimate.answer_from is None:
        if busy:
            return (
                "I'm passing this conversation to a member of our support team; they can see everything you've "
                f"written. {busy}"
            )
        wait = "about a minute" if estimate.minutes <= 1 else f"about {estimate.minutes} minutes"
        return (
            "I'm passing this conversation to a member of our support team; they will take over from here and "
            f"can see everything you've written. Expected wait: {wait}."
        )
    why = (
        "They're unlikely to get to it before they finish for the day"
        if estimate.open_now
        else "They're not working right now"
    )
    later = f" {busy}" if busy else ""
    return (
        f"I'm passing this conversation to our support team. {why} (hours: {_describe_hours(hours)}); someone will "
        f"answer from {estimate.answer_from:%A %H:%M} ({hours.timezone}). You can close this window: the answer "
        f"will be waiting here.{later}"
    )


_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _describe_hours(hours: BusinessHours) -> str:
    days = sorted(hours.days)
    if days and days == list(range(days[0], days[-1] + 1)) and len(days) > 1:
        span = f"{_DAY_NAMES[days[0]]} to {_DAY_NAMES[days[-1]]}"
    else:
        span = ", ".join(_DAY_NAMES[day] for day in days)
    return f"{span}, {hours.opens:%H:%M}-{hours.closes:%H:%M} {hours.timezone}"
