"""Customer memory: long-term facts about a customer, found in what they write, superseded, expiring, recalled.

A fact is one value under one key (``order_number``, ``preference:contact``). A newer value of the same key
supersedes the older one, which is kept for audit but never recalled. Facts expire by kind: an order number
matters for weeks, a name for years. Recall ranks the current facts by how well their kind fits the question,
by embedding similarity and by age, and keeps the best within a token budget.

Facts are found offline by the patterns below (names, emails, phones, order and ticket numbers, plans,
products, preferred language, stated preferences), always on redacted text: a secret never becomes a fact.
"""

import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from uuid import UUID

from support.domain.conversations import Message, MessageRole
from support.domain.errors import NotFoundError
from support.domain.privacy import PLACEHOLDERS, contains_secret, redact


class FactKind(StrEnum):
    """What a fact is about; decides its key, its expiry and when it is relevant."""

    NAME = "name"
    EMAIL = "email"
    PHONE = "phone"
    ORDER_NUMBER = "order_number"
    TICKET_NUMBER = "ticket_number"
    PLAN = "plan"
    PRODUCT = "product"
    LANGUAGE = "language"
    PREFERENCE = "preference"
    NOTE = "note"


class FactOrigin(StrEnum):
    """How a fact was found: by the offline patterns, or proposed by the model (``remember_fact``)."""

    PATTERN = "pattern"
    MODEL = "model"


class FactChange(StrEnum):
    """What storing a candidate does to the key's current fact."""

    NEW = "new"  # nothing is known under the key
    REPEAT = "repeat"  # the same value again: the current fact is kept and its expiry pushed back
    SUPERSEDE = "supersede"  # a different value: it becomes current, the old one is kept for audit
    IGNORE = "ignore"  # a much less certain reading than what is known: not worth replacing it


# Days a fact of each kind stays recallable after it was last stated (SUPPORT_MEMORY__EXPIRY_DAYS__*).
DEFAULT_EXPIRY_DAYS: Mapping[FactKind, int] = {
    FactKind.NAME: 730,
    FactKind.EMAIL: 730,
    FactKind.PHONE: 730,
    FactKind.ORDER_NUMBER: 90,
    FactKind.TICKET_NUMBER: 60,
    FactKind.PLAN: 365,
    FactKind.PRODUCT: 365,
    FactKind.LANGUAGE: 730,
    FactKind.PREFERENCE: 365,
    FactKind.NOTE: 180,
}
# Kinds that hold several values under topics (``preference:contact``); the others have one key each.
TOPICAL_KINDS = frozenset({FactKind.PREFERENCE, FactKind.NOTE})
MAX_VALUE_CHARS = 200
MAX_TOPIC_CHARS = 40
# A candidate this much less certain than the current fact does not replace it (a model's guess against what the
# customer stated). Patterns give 0.7 and more, so any of them replaces what it contradicts: "Please use a@x.com from
# now on" (0.7) must replace "my email is b@x.com" (0.9). Words that only look like names are refused earlier.
SUPERSEDE_MARGIN = 0.3
_CONFIDENCE_TOLERANCE = 1e-9  # 0.7 + 0.2 is 0.8999999999999999 in floating point
MIN_CONFIDENCE = 0.5
MODEL_CONFIDENCE = 0.8
_CHARACTERS_PER_TOKEN = 4
_TOKENS_PER_LINE = 2  # the bullet and the line break around each recalled fact


class CustomerNotFoundError(NotFoundError):
    """No customer with this id (never created, or erased)."""

    code = "customer_not_found"
    default_message = "The customer was not found."


class MemoryNotFoundError(NotFoundError):
    """No memory with this id belongs to the customer."""

    code = "memory_not_found"
    default_message = "The memory was not found."


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    """How long facts of each kind live; 0 days means they never expire."""

    days: Mapping[FactKind, int] = field(default_factory=lambda: dict(DEFAULT_EXPIRY_DAYS))

    def expires_at(self, kind: FactKind, stated_at: datetime) -> datetime | None:
        """When a fact of ``kind`` stated at ``stated_at`` stops being recalled."""
        days = self.days.get(kind, DEFAULT_EXPIRY_DAYS[kind])
        return stated_at + timedelta(days=days) if days > 0 else None


@dataclass(frozen=True, slots=True)
class FactCandidate:
    """A fact found in a message (or proposed by the model), before it is stored."""

    kind: FactKind
    key: str
    value: str
    confidence: float


@dataclass(frozen=True, slots=True)
class Fact:
    """One remembered value, with where it came from and how long it counts."""

    id: UUID
    customer_id: UUID
    kind: FactKind
    key: str
    value: str
    confidence: float
    origin: FactOrigin
    source_message_id: UUID | None
    created_at: datetime
    expires_at: datetime | None
    # The fact that replaced this one; superseded facts are kept for audit and export, never recalled.
    superseded_by: UUID | None = None

    def is_current(self, now: datetime) -> bool:
        """Neither superseded nor expired: what recall may use."""
        return self.superseded_by is None and (self.expires_at is None or self.expires_at > now)

    @property
    def text(self) -> str:
        """How the fact reads in a prompt and is embedded: ``Order number: NW-48213``."""
        return f"{label_for(self.key)}: {self.value}"


@dataclass(frozen=True, slots=True)
class RecalledFact:
    """A fact given to the assistant for a turn: customer context, never an instruction."""

    key: str
    kind: FactKind
    value: str
    remembered_at: datetime

    @property
    def text(self) -> str:
        """``Label: value``."""
        return f"{label_for(self.key)}: {self.value}"


def fact_key(kind: FactKind, topic: str | None = None) -> str:
    """The key facts of ``kind`` are stored under; topical kinds add a slug of the topic (``preference:contact``)."""
    if kind not in TOPICAL_KINDS:
        return kind.value
    slug = re.sub(r"[^a-z0-9]+", "_", (topic or "general").casefold()).strip("_")[:MAX_TOPIC_CHARS]
    return f"{kind.value}:{slug or 'general'}"


def kind_of_key(key: str) -> FactKind | None:
    """The kind a key belongs to, or None for keys this service does not make."""
    head = key.split(":", 1)[0]
    try:
        kind = FactKind(head)
    except ValueError:
        return None
    return kind if (":" in key) == (kind in TOPICAL_KINDS) else None


_LABELS: Mapping[FactKind, str] = {
    FactKind.NAME: "Name",
    FactKind.EMAIL: "Email",
    FactKind.PHONE: "Phone",
    FactKind.ORDER_NUMBER: "Order number",
    FactKind.TICKET_NUMBER: "Ticket number",
    FactKind.PLAN: "Plan",
    FactKind.PRODUCT: "Product",
    FactKind.LANGUAGE: "Preferred language",
    FactKind.PREFERENCE: "Preference",
    FactKind.NOTE: "Note",
}


def label_for(key: str) -> str:
    """A readable name of a key: ``Order number``, ``Preference (contact)``."""
    kind = kind_of_key(key)
    if kind is None:
        return key
    label = _LABELS[kind]
    if kind in TOPICAL_KINDS:
        topic = key.split(":", 1)[1].replace("_", " ")
        return label if topic == "general" else f"{label} ({topic})"
    return label


def normalise_value(kind: FactKind, value: str) -> str:
    """The form two values of ``kind`` are compared in (``nw-48213`` equals ``NW 48213``)."""
    text = " ".join(value.split())
    if kind is FactKind.EMAIL:
        return text.casefold()
    if kind is FactKind.PHONE:
        return re.sub(r"\D", "", text)
    if kind in {FactKind.ORDER_NUMBER, FactKind.TICKET_NUMBER}:
        return re.sub(r"[^0-9A-Za-z]", "", text).upper()
    return text.casefold().strip(" .,!;:")


def compare(current: Fact | None, candidate: FactCandidate, *, now: datetime | None = None) -> FactChange:
    """What storing ``candidate`` at ``now`` should do, given the key's current (not superseded) fact."""
    if current is None:
        return FactChange.NEW
    if normalise_value(current.kind, current.value) == normalise_value(candidate.kind, candidate.value):
        return FactChange.REPEAT
    expired = now is not None and not current.is_current(now)
    # Only a fact that still counts can outweigh a newer, less certain reading.
    if not expired and candidate.confidence + SUPERSEDE_MARGIN < current.confidence - _CONFIDENCE_TOLERANCE:
        return FactChange.IGNORE
    return FactChange.SUPERSEDE


def clean_value(value: str) -> str | None:
    """A value fit to be remembered: one line, trimmed, bounded, and free of secrets and placeholders."""
    text = " ".join(value.split()).strip(" \"'.,;:")
    if not text or len(text) > MAX_VALUE_CHARS or contains_secret(text):
        return None
    if any(placeholder in text for placeholder in PLACEHOLDERS):
        return None
    return text


def proposed_candidate(kind: str, value: str, topic: str | None = None) -> FactCandidate | None:
    """A fact the model asked to remember, when its kind is known and its value is clean."""
    try:
        parsed = FactKind(kind.strip().casefold())
    except ValueError:
        return None
    cleaned = clean_value(value)
    if cleaned is None:
        return None
    return FactCandidate(parsed, fact_key(parsed, topic), cleaned, MODEL_CONFIDENCE)


# --- extraction -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    candidate: FactCandidate
    position: int
    newer: bool  # introduced as the new or corrected value ("my new email is", "actually it's")


def _words(text: str) -> list[str]:
    return text.split()


# Patterns match keywords case-insensitively (``(?i:...)``) but names and products case-sensitively: a
# capitalised word is what tells "I'm Ada" from "I'm having trouble".
_LOWER = "a-z\u00df-\u00ff"
# Ada, McDonald, O'Brien, Jean-Luc: a capital, lowercase letters, optional inner capital or apostrophe/hyphen parts.
_NAME_WORD = rf"[A-Z](?:[{_LOWER}]+(?:[A-Z][{_LOWER}]+)?|(?=['\u2019][A-Z]))(?:['\u2019-][A-Z]?[{_LOWER}]+)*"
_NAME = rf"{_NAME_WORD}(?:[ ]+(?:(?:van|von|de|da|del|der|le|la|di)[ ]+)?{_NAME_WORD}){{0,2}}"
_ID = r"#?[A-Za-z0-9][A-Za-z0-9-]{1,28}[A-Za-z0-9]"
# "I am Dr. Ada Lovelace": the title is not part of the name.
_TITLE = r"(?:(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+)?"
_LANGUAGES = _words(
    """
    English Spanish French German Italian Portuguese Dutch Polish Swedish Norwegian Danish Finnish Czech Greek
    Turkish Russian Ukrainian Arabic Hebrew Hindi Japanese Chinese Mandarin Cantonese Korean Vietnamese Thai
    Indonesian Romanian Hungarian Catalan Irish Welsh
    """
)
_LANGUAGE = "(?i:" + "|".join(_LANGUAGES) + ")"
_CHANNELS: Mapping[str, str] = {
    "email": "email",
    "e-mail": "email",
    "mail": "email",
    "phone": "phone",
    "phone call": "phone",
    "phone calls": "phone",
    "call": "phone",
    "calls": "phone",
    "text": "text message",
    "texts": "text message",
    "text message": "text message",
    "text messages": "text message",
    "sms": "text message",
    "whatsapp": "WhatsApp",
    "chat": "chat",
    "post": "post",
    "letter": "post",
}
_CHANNEL = r"(?i:e-mail|email|mail|phone calls?|phone|calls?|text messages?|texts?|sms|whatsapp|chat|post|letter)"
# Capitalised words that follow "I'm" without being a name.
_NOT_NAMES = frozenset(
    _words(
        """
        Sorry Not So Very Still Having Looking Trying Going Unable Happy Here Just Really Also Back New
        Interested Calling Writing Waiting Glad Fine Good Okay Ok Confused Frustrated Annoyed Upset Done Ready
        Sure Afraid The Your Our My It This That Hoping Wondering Contacting Following Using Currently Getting
        Having Moving Planning Thinking Unhappy Disappointed Tired Sick Angry Worried Concerned Curious Pretty
        Quite Totally Completely Always Never Now Today Again Only Still Asking Reaching Emailing Texting
        Messaging Returning Buying Ordering Customer Member Subscriber User Owner Admin Manager Developer Ready
        Available Away Out Online Offline In On At From With For About Regarding Thanks Thank Hello Hi Hey Dear
        Yes No Please Well Yeah Yep Nope Mr Mrs Ms Dr Great Bye Anyway Everyone All Team Guys Folks Sir Madam
        Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May June July
        August September October November December American Canadian British English French German Spanish
        Italian Dutch Australian Irish Scottish Mexican Brazilian Indian Chinese Japanese Korean Swiss Austrian
        Belgian Polish Swedish Norwegian Danish Finnish Greek Turkish
        Urgent Important Critical Serious Furious Livid Mad Pissed Desperate Stuck Lost Shocked Disgusted Appalled
        Ridiculous Absurd Unacceptable Outrageous Insane Crazy Unbelievable Incredible Terrible Awful Horrible
        Frustrating Annoying Disappointing Pathetic Useless Broken Bad Worse Worst Wrong Right Correct Best Better
        Amazing Awesome Excellent Perfect Nice Cool Weird Strange Odd Impossible Fantastic Wonderful Lovely Sad
        Scared Nervous Anxious Stressed Excited Grateful Thankful Late Early Soon Later Tomorrow Tonight Yesterday
        Maybe Perhaps Asap Anytime Whenever Anything Nothing Something Everything Someone Somebody Nobody Anyone
        Spam Fraud Scam Nonsense Joke Unreal Bizarre Hilarious Funny Silly Stupid Dumb Shameful Disgraceful
        Unhelpful Helpful Rude Slow Fast Done Over Ok Okay Fine Confusing Urgently Immediately Seriously
        """
    )
)
_NOT_PRODUCTS = frozenset(
    _words(
        """
        I The A An It This That Problem Question Issue Order Account Refund Return Plan Subscription Membership
        Invoice Bill Charge Package Parcel Delivery Ticket Case Email Phone New Old My Your Our
        """
    )
)
_PRODUCT = r"[A-Z][\w+.-]*(?:[ ]+[A-Z0-9][\w+.-]*){0,3}"
_PRODUCT_NOUN = (
    r"(?:[ ]+(?:standing[ ]+|office[ ]+|gaming[ ]+)?(?:desk|chair|lamp|monitor arm|drawer|cabinet|stool|table|mat|"
    r"keyboard tray|frame|desktop|converter|footrest)\b)?"
)
_PLAN = r"[A-Za-z][\w+]*(?:[ ]+[A-Z+][\w+]*)?"
_NOT_PLANS = frozenset(
    _words(
        """
        same current new old other this that my your cheapest cheaper expensive a an the
        """
    )
)
_PLAN_WORD = r"(?i:plan|subscription|tier|membership|package|account)"
# Sentence ends, except after "no." / "nr." ("order no. 778812") and initials ("J. Smith").
_SENTENCE = re.compile(
    r"(?<=[.!?])(?<![Nn]o\.)(?<![Nn]r\.)(?<!\b[A-Z]\.)(?<!\bDr\.)(?<!\bMr\.)(?<!\bMs\.)(?<!\bMrs\.)(?<!\be\.g\.)(?<!\bi\.e\.)\s+|\n+"
)
_WORDS_OF_CONTEXT = 5
# Said of the value right before it ("from a@x.com to b@x.com", "not NW-1", "ex-"), or anywhere in its clause.
_OLDER_RIGHT_BEFORE = re.compile(r"(?:\b(?:from|than|instead of|not|ex|except|but not)\W*|\bex-)$", re.IGNORECASE)
_OLDER = re.compile(
    r"\b(?:old|older|previous|former|outdated|used to be|no longer|isn't|wasn't|aren't|never|returned|"
    r"cancel(?:l)?ed|dead|wrong|typo|mistake)\b|n't\b",
    re.IGNORECASE,
)
_CLAUSE_BREAK = re.compile(r"[,;:()\u2013\u2014]|\s-\s|\b(?:but|and|so|then|because)\b", re.IGNORECASE)
_NEWER = re.compile(r"\b(?:new|now|actually|correct|correction|updated|changed|instead|rather|meant)\b", re.IGNORECASE)
_HYPOTHETICAL = re.compile(
    r"\b(?:if|whether|should|would|could|might|thinking about|considering|planning to|want to|wants to|going to)\b",
    re.IGNORECASE,
)
_THIRD_PARTY = re.compile(
    r"\b(?:cc|his|her|their|him|them|they|colleague|colleague's|coworker|co-worker|wife|husband|partner|boss|"
    r"manager|assistant|friend|son|daughter|mother|father|mom|mum|dad|brother|sister|sibling|parents?|uncle|aunt|"
    r"grandma|grandmother|grandpa|grandfather|grandparents?|cousin|nephew|niece|fianc[eé]e?|girlfriend|boyfriend|"
    r"kids?|child|children|neighbou?r|roommate|flatmate|landlord|tenant|client|employee|"
    r"emailed|wrote to|sent to|forward(?:ed)? to|your|support at|team at)\b",
    re.IGNORECASE,
)
# What marks a sentence as not stating a fact: a hypothetical, an example, a game ("if my name were Bob", "e.g. my
# order number is NW-1", "pretend my name is Bob"). Plans and products also skip wishes (_HYPOTHETICAL).
# "Suppose", "imagine" and "pretend" only opening the sentence: "I imagine my order NW-1 is lost" believes it.
_NOT_STATED = re.compile(
    r"^\W*(?:suppose|supposing|imagine|pretend|let's\s+pretend)\b|\b(?:hypothetically|what\s+if|for\s+example|"
    r"for\s+instance|as\s+an\s+example|let's\s+say|let\s+us\s+say)\b|\be\.g\.",
    re.IGNORECASE,
)
# "If" only in the value's own clause: "if my email were b@x.com" states nothing, "if you need it, my email is" does.
_CONDITION = re.compile(r"\b(?:if|unless|whether)\b", re.IGNORECASE)
# A sentence that takes back itself or the one before it ("My name is Bob. Just kidding!") states nothing.
_JEST_WORDS = 3
_JEST = re.compile(r"\b(?:just|only)\s+(?:kidding|joking)\b|(?<![\w-])j/?k(?![\w-])", re.IGNORECASE)
# Quoted or forwarded text is someone else's words: quoted lines, and what follows a forward marker (its headers too).
_QUOTED_LINE = re.compile(r"^[ \t]*>.*$", re.MULTILINE)
_FORWARDED = re.compile(
    r"(?:-{2,}\s*(?:Original|Forwarded)\s+[Mm]essage\s*-{2,}|Begin\s+forwarded\s+message:).*", re.DOTALL
)
# Words in quotation marks (three or more, counted in _unquoted): a pasted note, not the customer speaking. One
# character class and no nested repetition, so an unclosed quote costs one scan (a nested form backtracked
# exponentially: a 34-word message with an unclosed 27" never finished). A quote mark after a digit is inches.
_QUOTATION = re.compile(r"(?<!\d)[\"\u201c\u201e«](?P<inner>[^\"\u201c\u201d\u201e«»\n]*)[\"\u201d»]")
_QUOTED_WORDS = 3
_OWNED = re.compile(r"\b(?:my|me|i|i'm|i am|mine)\b", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w+])(?:\+|00)?\d[\d ().-]{6,20}\d(?!\w)")
_PHONE_CONTEXT = re.compile(
    r"\b(?:phone|mobile|cell|cellphone|number|call|calls|ring|text|sms|reach|whatsapp|tel|telephone)\b", re.IGNORECASE
)
_NOT_PHONE_CONTEXT = re.compile(
    r"\b(?:order|ticket|case|invoice|tracking|reference|ref|account|serial|model|card|iban|postcode|zip)\b[^.!?]{0,25}$",
    re.IGNORECASE,
)
_PHONE_DIGITS = (9, 15)
_ID_DIGITS = 3
_BARE_ID_DIGITS = 5


@dataclass(frozen=True, slots=True)
class _Pattern:
    kind: FactKind
    regex: re.Pattern[str]
    confidence: float
    topic: str | None = None
    # The sentence must also say this somewhere ("moved to Basic" is a plan only next to "plan" or "subscription").
    needs: re.Pattern[str] | None = None
    # "My name isn't Bob, it's Robert": the negation belongs to the value it replaces.
    correction: bool = False


_NAME_PATTERNS = (
    _Pattern(
        FactKind.NAME,
        re.compile(
            r"(?i:\b(?:changed|updated)\s+my\s+(?:full\s+|first\s+|last\s+|sur)?name\s+to\s+)"
            rf"{_TITLE}(?P<value>{_NAME})(?!['\u2019]s)\b"
        ),
        0.95,
    ),
    _Pattern(
        FactKind.NAME,
        re.compile(
            r"(?i:\b(?:my\s+(?:full\s+|first\s+)?name(?:'s|\s+is)|je\s+m['\u2019]appelle|mon\s+nom\s+est|me\s+llamo|"
            r"mi\s+nombre\s+es|ich\s+hei(?:ß|ss)e|mein\s+name\s+ist|mi\s+chiamo|il\s+mio\s+nome\s+è|"
            r"meu\s+nome\s+é|eu\s+me\s+chamo|mijn\s+naam\s+is|ik\s+heet)\s+(?:actually\s+|spelled\s+|now\s+)?)"
            rf"{_TITLE}(?P<value>{_NAME})(?!['\u2019]s)\b"
        ),
        0.95,
    ),
    _Pattern(
        FactKind.NAME,
        re.compile(
            rf"(?i:\b(?:you\s+can\s+)?call\s+me\s+)(?P<value>{_NAME})(?=\s*(?:[,.!;]|$|\s+(?:please|thanks)\b))"
        ),
        0.9,
    ),
    _Pattern(FactKind.NAME, re.compile(rf"(?i:\bname\s*:\s*)(?P<value>{_NAME})\b"), 0.9),
    _Pattern(
        FactKind.NAME,
        re.compile(
            rf"(?i:\bname\s+(?:is\s+not|isn't|isn\u2019t|is\s+n't)\s+){_NAME}(?i:\s*,?\s*(?:it's|it\u2019s|it\s+is|but|rather)\s+)"
            rf"(?P<value>{_NAME})\b"
        ),
        0.95,
        correction=True,
    ),
    _Pattern(
        FactKind.NAME,
        re.compile(
            rf"(?i:\b(?:I'm|I\u2019m|I\s+am|this\s+is)\s+){_TITLE}(?P<value>{_NAME})"
            r"(?=\s*(?:[,.!;]|$|\s+(?:and|here|from|speaking|again|writing|calling)\b))"
        ),
        0.7,
    ),
    _Pattern(
        FactKind.NAME,
        re.compile(rf"(?i:\b(?:it's|it\u2019s|it\s+is)\s+)(?P<value>{_NAME})(?=\s+(?:here|again|speaking)\b)"),
        0.7,
    ),
)
# A sign-off ends the message: "Thanks, Maria" / "Best regards,\nMaria Lopez".
_SIGN_OFF = re.compile(
    r"(?:^|[.!?\n]\s*)(?i:thanks|thank\s+you|many\s+thanks|cheers|regards|best|best\s+regards|kind\s+regards|"
    rf"warm\s+regards|sincerely|br)\s*(?:,\s*|\n\s*|\s[-\u2013\u2014]\s*)(?P<value>{_NAME})\s*[.!]?\s*$"
)


def _id_pattern(words: str, kind: FactKind, confidence: float) -> _Pattern:
    return _Pattern(
        kind,
        re.compile(
            rf"(?i:\b(?:{words})\b)(?:\s*,?\s+(?i:number|no\.?|num|id|#|ref(?:erence)?))?"
            r"(?:\s*(?i:is|was|=|:)\s*)?(?:\s*(?i:actually|now|still)\s+)?\s*(?P<marker>[#:]?)\s*"
            rf"(?P<value>{_ID})(?![\w-])"
        ),
        confidence,
    )


_ID_PATTERNS = (
    _id_pattern("order|purchase", FactKind.ORDER_NUMBER, 0.9),
    _Pattern(FactKind.ORDER_NUMBER, re.compile(r"\b(?P<value>(?:ORD|ORDER)[-_]?\d{4,})\b"), 0.85),
    _id_pattern("ticket|case|support\\s+request|service\\s+request|incident|complaint", FactKind.TICKET_NUMBER, 0.9),
    _Pattern(FactKind.TICKET_NUMBER, re.compile(r"\b(?P<value>(?:TCK|TKT|TICKET|INC|CASE|SR|REQ)[-_]?\d{3,})\b"), 0.85),
)
_PLAN_PATTERNS = (
    _Pattern(
        FactKind.PLAN,
        re.compile(
            r"(?i:\b(?:I'm|I\u2019m|I\s+am|we're|we\s+are|I'm\s+currently|currently|still)\s+(?:currently\s+|now\s+)?"
            rf"on\s+(?:the\s+|a\s+|an\s+|our\s+|my\s+)?)(?P<value>{_PLAN})\s+{_PLAN_WORD}\b"
        ),
        0.9,
    ),
    _Pattern(
        FactKind.PLAN,
        re.compile(
            r"(?i:\b(?:my|our)\s+(?:current\s+)?(?:plan|subscription|tier|membership)\s+is\s+(?:now\s+)?(?:the\s+)?)"
            rf"(?P<value>{_PLAN})\b"
        ),
        0.9,
    ),
    _Pattern(
        FactKind.PLAN,
        re.compile(
            r"(?i:\b(?:upgraded|downgraded|switched|moved|changed|converted)\s+(?:\w+\s+){0,3}?to\s+(?:the\s+|a\s+|an\s+)?)"
            rf"(?P<value>{_PLAN})\s+{_PLAN_WORD}\b"
        ),
        0.9,
    ),
    _Pattern(
        FactKind.PLAN,
        re.compile(
            r"(?i:\b(?:upgraded|downgraded|switched|moved|changed|converted)\s+(?:\w+\s+){0,3}?to\s+(?:the\s+)?)"
            r"(?P<value>[A-Z][\w+]*(?:[ ]+[A-Z+][\w+]*)?)(?![\w+])"
        ),
        0.85,
        needs=re.compile(r"\b(?:plan|subscription|membership|tier)\b", re.IGNORECASE),
    ),
    _Pattern(
        FactKind.PLAN,
        re.compile(
            r"(?i:\b(?:I'm|I\u2019m|I\s+am|we're|we\s+are)\s+(?:now\s+)?on\s+(?:the\s+)?)"
            r"(?P<value>[A-Z][\w+]*)(?i:\s+now)?(?=\s*(?:[.,;!]|$))"
        ),
        0.85,
        needs=re.compile(r"\b(?:plan|subscription|membership|tier)\b", re.IGNORECASE),
    ),
    _Pattern(
        FactKind.PLAN,
        re.compile(
            r"(?i:\b(?:I|we)\s+(?:have|pay\s+for|bought|got|subscribed\s+to|signed\s+up\s+for|use)\s+"
            r"(?:the\s+|a\s+|an\s+)?)"
            rf"(?P<value>{_PLAN})\s+(?i:plan|subscription|membership|tier)\b"
        ),
        0.85,
    ),
    _Pattern(
        FactKind.PLAN,
        re.compile(
            rf"(?i:\b(?:I'm|I\u2019m|I\s+am|we're|we\s+are)\s+(?:an?\s+)?)(?P<value>{_PLAN})\s+(?i:member|subscriber)\b"
        ),
        0.8,
    ),
)
_PRODUCT_PATTERNS = (
    _Pattern(
        FactKind.PRODUCT,
        re.compile(
            r"(?i:\b(?:I|we|and)\s+(?:just\s+|recently\s+|also\s+|then\s+)?(?:bought|purchased|ordered|own|have|got|"
            r"received|use|"
            r"am\s+using|'m\s+using)\s+(?:a|an|the|my|our|two|2)\s+)"
            rf"(?P<value>{_PRODUCT}{_PRODUCT_NOUN})"
        ),
        0.8,
    ),
    _Pattern(
        FactKind.PRODUCT,
        re.compile(
            r"(?i:\bmy\s+(?:product|model|device|desk|chair|lamp)\s+is\s+(?:the\s+|an?\s+)?)"
            rf"(?P<value>{_PRODUCT}{_PRODUCT_NOUN})"
        ),
        0.85,
    ),
    _Pattern(
        FactKind.PRODUCT,
        re.compile(r"(?i:\bmodel(?:\s+(?:number|no\.?))?\s*(?:is\s+|[:#]\s*)?)(?P<value>[A-Z0-9]+-?\d[\w-]*)\b"),
        0.8,
    ),
)
_LANGUAGE_PATTERNS = (
    _Pattern(
        FactKind.LANGUAGE,
        re.compile(
            r"(?i:\b(?:reply|answer|respond|write|talk|speak|continue|communicate|chat|help\s+me)\s+"
            rf"(?:to\s+me\s+|with\s+me\s+|back\s+)?in\s+)(?P<value>{_LANGUAGE})\b"
        ),
        0.9,
    ),
    _Pattern(
        FactKind.LANGUAGE,
        re.compile(rf"(?i:\b(?:I|we)\s+(?:only\s+|mostly\s+|mainly\s+)?speak\s+)(?P<value>{_LANGUAGE})\b"),
        0.8,
    ),
    _Pattern(
        FactKind.LANGUAGE,
        re.compile(
            r"(?i:\bmy\s+(?:preferred\s+|native\s+|first\s+|mother\s+)?(?:language|tongue)\s+is\s+)"
            rf"(?P<value>{_LANGUAGE})\b"
        ),
        0.95,
    ),
    _Pattern(
        FactKind.LANGUAGE,
        re.compile(rf"(?i:\b(?:prefer|switch\s+(?:back\s+)?to|answers?\s+in|replies\s+in)\s+)(?P<value>{_LANGUAGE})\b"),
        0.9,
    ),
    _Pattern(FactKind.LANGUAGE, re.compile(rf"(?i:\bin\s+)(?P<value>{_LANGUAGE})(?i:,?\s+please)\b"), 0.85),
)
_PREFERENCE_PATTERNS = (
    _Pattern(
        FactKind.PREFERENCE,
        re.compile(
            r"(?i:\b(?:contact|reach|update|notify|message|answer)\s+me\s+(?:only\s+)?(?:by|via|through|over|on)\s+)"
            rf"(?P<value>{_CHANNEL})\b"
        ),
        0.85,
        "contact",
    ),
    _Pattern(
        FactKind.PREFERENCE,
        re.compile(
            r"(?i:\b(?:I\s+)?(?:prefer|would\s+rather\s+have|'d\s+rather\s+have)\s+"
            r"(?:to\s+be\s+contacted\s+(?:by|via)\s+|being\s+contacted\s+(?:by|via)\s+|contact\s+(?:by|via)\s+)?)"
            rf"(?P<value>{_CHANNEL})\b"
        ),
        0.85,
        "contact",
    ),
    _Pattern(
        FactKind.PREFERENCE,
        re.compile(
            r"(?i:\b(?:please\s+)?)(?P<value>(?i:leave|drop|put)\s+(?i:it|them|the\s+package|packages|parcels|"
            r"the\s+parcel|deliveries|the\s+delivery|my\s+(?:package|parcel|order|delivery)s?)\s+"
            r"(?i:at|with|by|in|on|behind|under|next\s+to)\s+[^.,;!?\n]{3,60})"
        ),
        0.85,
        "delivery",
    ),
    _Pattern(
        FactKind.PREFERENCE,
        re.compile(
            r"(?i:\b(?:I\s+)?(?:prefer|'d\s+prefer|would\s+prefer)\s+)"
            r"(?P<value>(?i:morning|afternoon|evening|weekend|weekday)s?)\s+(?i:deliver(?:y|ies)|slots?)\b"
        ),
        0.85,
        "delivery_time",
    ),
)
# "Don't call me" states a contact preference too.
_NO_CONTACT = re.compile(r"(?i:\b(?:please\s+)?(?:don't|do\s+not|never)\s+(?P<value>call|phone|email|text|sms)\s+me\b)")


@dataclass(frozen=True, slots=True)
class Retraction:
    """The customer takes back what is remembered under ``key``: all of it, or only when it is ``value``."""

    key: str
    value: str | None = None

    def applies_to(self, current: Fact | None) -> bool:
        """Whether the key's current fact is what was taken back (any value when none was named)."""
        if self.value is None:
            return True
        kind = kind_of_key(self.key)
        return (
            current is not None
            and kind is not None
            and normalise_value(kind, current.value) == normalise_value(kind, self.value)
        )


_RETRACTED_WHAT: Mapping[str, str] = {
    "name": "name",
    "full name": "name",
    "email": "email",
    "e-mail": "email",
    "email address": "email",
    "e-mail address": "email",
    "phone": "phone",
    "phone number": "phone",
    "telephone number": "phone",
    "mobile": "phone",
    "mobile number": "phone",
    "language": "language",
    "preferred language": "language",
    "language preference": "language",
}
_WHAT = r"(?P<what>full\s+name|name|e-?mail(?:\s+address)?|(?:tele)?phone(?:\s+number)?|mobile(?:\s+number)?|"
_WHAT += r"preferred\s+language|language(?:\s+preference)?)"
# Only the customer's own ("my"), and never asked not to: "Please don't remove my name from the list" keeps it,
# "Please delete the email from my order confirmation" is about a document (both deleted facts in a review).
_NOT_BEFORE = re.compile(r"\b(?:don't|don\u2019t|do\s+not|never|not|no\s+need\s+to|why|how)\b[^.!?]*$", re.IGNORECASE)
_RETRACTIONS = (
    # "Please forget my phone number", "delete my email address from your records".
    re.compile(
        rf"(?i:\b(?:forget|delete|remove|erase|wipe)\s+(?:about\s+)?my\s+(?:old\s+|current\s+|saved\s+|stored\s+)?){_WHAT}"
        r"(?=\s*(?:$|[.,;!?]|\s(?:from|please|now|too|as\s+well|thanks|and)\b))"
        # Off a mailing list is an unsubscribe, not a request to forget.
        r"(?!\s+from\s+(?:the\s+|your\s+|all\s+)?(?:newsletters?|mailing\s+lists?|lists?|marketing|promotions?|ads))",
    ),
    # "I no longer use that email", "I don't have a phone anymore" (not "I don't use my email much").
    re.compile(
        r"(?i:\bI\s+no\s+longer\s+(?:use|have|own|check)\s+(?:that|this|the|my|an?)?\s*(?:old\s+)?)"
        rf"{_WHAT}\b"
    ),
    re.compile(
        r"(?i:\bI\s+(?:don't|don\u2019t|do\s+not)\s+(?:use|have|own|check)\s+(?:that|this|the|my|an?)?\s*(?:old\s+)?)"
        rf"{_WHAT}(?i:\s+any\s*more|\s+any\s+longer)\b"
    ),
)
# "I no longer use ada@example.com", "I don't use ada@example.com anymore": that address only (the address being
# "not valid" at checkout is a problem to solve, not a retraction).
_RETRACTED_EMAIL = (
    re.compile(rf"(?i:\bI\s+no\s+longer\s+use\s+)(?P<value>{_EMAIL.pattern})"),
    re.compile(
        rf"(?i:\bI\s+(?:don't|don\u2019t|do\s+not)\s+use\s+)(?P<value>{_EMAIL.pattern})(?i:\s+any\s*more|\s+any\s+longer)"
    ),
)
# "I cancelled my Pro plan", "I'm not on the Pro plan anymore": the plan named, or whichever is remembered; the plan
# word ends the clause ("I cancelled my subscription renewal by accident" is not leaving the plan).
_RETRACTED_PLAN = (
    re.compile(
        r"(?i:\b(?:I|we)\s+(?:have\s+|just\s+|already\s+)?(?:cancel(?:l)?ed|ended|terminated)\s+(?:my|our)\s+)"
        rf"(?:(?P<value>{_PLAN})\s+)?(?i:plan|subscription|membership)"
        r"(?=\s*(?:$|[.,;!?]|\s(?:and|but|so|because|today|yesterday|last|this|already|now)\b))"
    ),
    re.compile(
        r"(?i:\b(?:I'm|I\u2019m|I\s+am|we're|we\s+are)\s+(?:not|no\s+longer)\s+on\s+(?:the\s+|a\s+|an\s+)?)"
        rf"(?P<value>{_PLAN})\s+(?i:plan|subscription|membership|tier)\b"
    ),
)


def extract_retractions(text: str) -> list[Retraction]:
    """What a customer message takes back ("forget my phone number", "I no longer use a@x.com", "I cancelled my plan").

    Hypotheticals, examples and quoted text take nothing back, as for :func:`extract_facts`.
    """
    retractions: dict[str, Retraction] = {}
    for sentence in _stated_sentences(_stated_text(text)):
        if _NOT_STATED.search(sentence) or _CONDITION.search(sentence):
            continue
        for pattern in _RETRACTIONS:
            for match in pattern.finditer(sentence):
                if _NOT_BEFORE.search(sentence[: match.start()]):
                    continue
                what = _RETRACTED_WHAT[" ".join(match.group("what").casefold().split())]
                retractions[what] = Retraction(what)
        for pattern in _RETRACTED_EMAIL:
            for match in pattern.finditer(sentence):
                retractions.setdefault("email", Retraction("email", match.group("value")))
        for pattern in _RETRACTED_PLAN:
            for match in pattern.finditer(sentence):
                if _NOT_BEFORE.search(sentence[: match.start()]):
                    continue
                value = match.group("value")
                named = value if value and value.casefold() not in _NOT_PLANS else None
                retractions.setdefault("plan", Retraction("plan", named))
    return list(retractions.values())


def _stated_text(text: str) -> str:
    """The customer's own words, redacted: without quoted lines, forwarded mail and quotations."""
    return _QUOTATION.sub(_unquoted, _QUOTED_LINE.sub("", _FORWARDED.sub("", redact(text))))


def _unquoted(match: re.Match[str]) -> str:
    return " " if len(match["inner"].split()) >= _QUOTED_WORDS else match[0]


def _stated_sentences(stated: str) -> list[str]:
    """The sentences of ``stated`` (``_stated_text``) without those a jest takes back (itself, the one before)."""
    sentences = _sentences(stated)
    taken_back: set[int] = set()
    for index, sentence in enumerate(sentences):
        if _JEST.search(sentence):
            # "Just kidding!" alone takes back what came before; "just kidding about the refund" only itself.
            taken_back |= {index, index - 1} if len(sentence.split()) <= _JEST_WORDS else {index}
    return [sentence for index, sentence in enumerate(sentences) if index not in taken_back]


def extract_facts(text: str) -> list[FactCandidate]:
    """The facts a customer message states, one per key, on its redacted text.

    Within one message a value introduced as old ("my old email was …", "not …") is dropped; of several values
    for a key, one introduced as new or corrected wins, else the last stated.
    """
    stated = _stated_text(text)
    sentences = _stated_sentences(stated)
    clean = "\n".join(sentences)
    found: list[_Found] = []
    offset = 0
    for sentence in sentences:
        found += [replace(item, position=item.position + offset) for item in _in_sentence(sentence)]
        offset += len(sentence) + 1
    signed = _SIGN_OFF.search(stated.strip()) if sentences else None
    if signed is not None and signed.group("value").split()[0] not in _NOT_NAMES:
        candidate = FactCandidate(FactKind.NAME, fact_key(FactKind.NAME), signed.group("value"), 0.75)
        found.append(_Found(candidate, len(clean), newer=False))
    return _choose(found)


def _sentences(text: str) -> list[str]:
    return [part for part in _SENTENCE.split(text) if part.strip()]


def _in_sentence(sentence: str) -> Iterator[_Found]:
    yield from _names(sentence)
    yield from _emails(sentence)
    yield from _phones(sentence)
    yield from _identifiers(sentence)
    yield from _matches(sentence, _PLAN_PATTERNS, hypothetical_matters=True)
    yield from _matches(sentence, _PRODUCT_PATTERNS, hypothetical_matters=True)
    yield from _matches(sentence, _LANGUAGE_PATTERNS)
    yield from _matches(sentence, _PREFERENCE_PATTERNS)
    for match in _NO_CONTACT.finditer(sentence):
        channel = _CHANNELS.get(match.group("value").casefold(), match.group("value").casefold())
        candidate = FactCandidate(FactKind.PREFERENCE, fact_key(FactKind.PREFERENCE, "contact"), f"no {channel}", 0.8)
        yield _Found(candidate, match.start("value"), newer=False)


def _before(sentence: str, start: int) -> str:
    """The few words of the clause right before ``start`` (where "old", "new", "my" would be)."""
    # Other values in the way ("from old@example.com to") are not words about this one, but a clause break after one
    # ("I no longer use a@x.com, please use b@x.com") still ends its clause.
    words = [
        word if "@" not in word and not any(c.isdigit() for c in word) else re.sub(r"[^,;:()]", "", word)
        for word in sentence[:start].split()
    ]
    words = [word for word in words if word]
    context = " ".join(words[-_WORDS_OF_CONTEXT:])
    breaks = list(_CLAUSE_BREAK.finditer(context))
    return context[breaks[-1].end() :] if breaks else context


def _found(
    sentence: str, span: tuple[int, int], kind: FactKind, value: str, confidence: float, topic: str | None = None
) -> _Found | None:
    """A candidate for the value at ``span`` = (start of the match, start of the value), unless said of the past."""
    start, value_start = span
    # The clause the value is in, up to the value: "I returned the X and got the Y" is not "returned" about Y.
    context = _before(sentence, value_start)
    inner = sentence[start:value_start]
    if _OLDER.search(context) or _OLDER.search(inner) or _OLDER_RIGHT_BEFORE.search(sentence[:value_start].rstrip()):
        return None
    if _NOT_STATED.search(sentence[:value_start]) or _CONDITION.search(context) or _CONDITION.search(inner):
        return None
    cleaned = clean_value(value)
    if cleaned is None or confidence < MIN_CONFIDENCE:
        return None
    newer = bool(_NEWER.search(context) or _NEWER.search(inner))
    return _Found(FactCandidate(kind, fact_key(kind, topic), cleaned, confidence), value_start, newer)


def _span(match: re.Match[str]) -> tuple[int, int]:
    return match.start(), match.start("value")


def _names(sentence: str) -> Iterator[_Found]:
    for pattern in _NAME_PATTERNS:
        for match in pattern.regex.finditer(sentence):
            value = match.group("value")
            if value.split()[0] in _NOT_NAMES:
                continue
            # Trailing words that are not part of a name ("Ada Here" never happens, "Ada From" might).
            words = [word for word in value.split() if word not in _NOT_NAMES]
            span = (match.start("value"), match.start("value")) if pattern.correction else _span(match)
            item = _found(sentence, span, FactKind.NAME, " ".join(words), pattern.confidence)
            if item is not None and pattern.correction:
                item = replace(item, newer=True)
            if item is not None:
                yield item


def _someone_else(sentence: str, start: int) -> bool:
    """Whether a contact detail at ``start`` belongs to someone else ("cc my assistant at", "her address,")."""
    clause = _before(sentence, start)
    if _THIRD_PARTY.search(clause):
        return True
    if _OWNED.search(clause):
        return False
    words = [word for word in sentence[:start].split() if "@" not in word]
    return _THIRD_PARTY.search(" ".join(words[-_WORDS_OF_CONTEXT:])) is not None


def _emails(sentence: str) -> Iterator[_Found]:
    for match in _EMAIL.finditer(sentence):
        if _someone_else(sentence, match.start()):
            continue
        owned = _OWNED.search(sentence[: match.start()]) is not None
        span = (match.start(), match.start())
        item = _found(sentence, span, FactKind.EMAIL, match.group(0), 0.9 if owned else 0.7)
        if item is not None:
            yield item


def _phones(sentence: str) -> Iterator[_Found]:
    for match in _PHONE.finditer(sentence):
        raw = match.group(0)
        digits = re.sub(r"\D", "", raw)
        if not _PHONE_DIGITS[0] <= len(digits) <= _PHONE_DIGITS[1]:
            continue
        prefix = sentence[: match.start()]
        if _NOT_PHONE_CONTEXT.search(prefix) or _someone_else(sentence, match.start()):
            continue
        international = raw.startswith(("+", "00"))
        if not international and not _PHONE_CONTEXT.search(sentence):
            continue
        owned = _OWNED.search(prefix) is not None
        item = _found(sentence, (match.start(), match.start()), FactKind.PHONE, raw.strip(), 0.9 if owned else 0.7)
        if item is not None:
            yield item


def _identifiers(sentence: str) -> Iterator[_Found]:
    for pattern in _ID_PATTERNS:
        for match in pattern.regex.finditer(sentence):
            value = match.group("value").lstrip("#")
            digits = sum(char.isdigit() for char in value)
            marked = "marker" in pattern.regex.groupindex and bool(match.group("marker") or "#" in match.group(0))
            numbered = bool(re.search(r"(?i:number|no\.?|num|id|ref)", sentence[match.start() : match.start("value")]))
            needed = _ID_DIGITS if (not value.isdigit() or marked or numbered) else _BARE_ID_DIGITS
            if digits < needed:
                continue
            # An order number inside a ticket sentence ("ticket for order 123") is still the order's.
            if pattern.kind is FactKind.TICKET_NUMBER and re.search(r"(?i:\border\s*$)", sentence[: match.start()]):
                continue
            item = _found(sentence, _span(match), pattern.kind, value, pattern.confidence)
            if item is not None:
                yield item


def _matches(sentence: str, patterns: Sequence[_Pattern], *, hypothetical_matters: bool = False) -> Iterator[_Found]:
    for pattern in patterns:
        for match in pattern.regex.finditer(sentence):
            if hypothetical_matters and _HYPOTHETICAL.search(sentence[: match.start("value")]):
                continue
            if pattern.needs is not None and not pattern.needs.search(sentence):
                continue
            value = _tidy(pattern.kind, match.group("value"))
            if value is None:
                continue
            item = _found(sentence, _span(match), pattern.kind, value, pattern.confidence, pattern.topic)
            if item is not None:
                yield item


def _tidy(kind: FactKind, value: str) -> str | None:
    """The value as it is remembered: languages and channels normalised, generic words refused."""
    text = " ".join(value.split())
    first = text.split()[0]
    if (kind is FactKind.PLAN and first.casefold() in _NOT_PLANS) or (
        kind is FactKind.PRODUCT and first in _NOT_PRODUCTS
    ):
        return None
    if kind is FactKind.LANGUAGE:
        text = text.capitalize()
    elif kind is FactKind.PLAN:
        text = " ".join(word if any(char.isupper() for char in word) else word.capitalize() for word in text.split())
    elif kind is FactKind.PREFERENCE:
        text = _CHANNELS.get(text.casefold()) or text[0].lower() + text[1:]
    return text


# Kinds a customer often has several of at once: two values in one message make neither the one to remember.
_ONE_OF_SEVERAL = frozenset({FactKind.ORDER_NUMBER, FactKind.TICKET_NUMBER})


def _choose(found: Sequence[_Found]) -> list[FactCandidate]:
    by_key: dict[str, list[_Found]] = {}
    for item in sorted(found, key=lambda item: item.position):
        by_key.setdefault(item.candidate.key, []).append(item)
    chosen: list[FactCandidate] = []
    for items in by_key.values():
        newer = [item for item in items if item.newer]
        best = (newer or items)[-1]
        if (
            not newer
            and best.candidate.kind in _ONE_OF_SEVERAL
            and any(not _same(i.candidate, best.candidate) for i in items)
        ):
            # "Order NW-2 is missing, but order NW-1 arrived fine": which one the customer means next time is
            # anyone's guess, so neither replaces what is known.
            continue
        # The same value said twice counts once, at the highest confidence any pattern gave it.
        same = [item for item in items if _same(item.candidate, best.candidate)]
        confidence = max(item.candidate.confidence for item in same)
        chosen.append(replace(best.candidate, confidence=confidence))
    return chosen


def _same(first: FactCandidate, second: FactCandidate) -> bool:
    return normalise_value(first.kind, first.value) == normalise_value(second.kind, second.value)


# --- recall ---------------------------------------------------------------------------------------------------

# How much each kind matters when nothing in the question points at it: a name and the language are always
# worth knowing (greeting, reply language); an order number is worth a lot when the question is about orders.
_BASE_PRIORITY: Mapping[FactKind, float] = {
    FactKind.NAME: 1.0,
    FactKind.LANGUAGE: 0.9,
    FactKind.ORDER_NUMBER: 0.5,
    FactKind.TICKET_NUMBER: 0.5,
    FactKind.PREFERENCE: 0.45,
    FactKind.PLAN: 0.4,
    FactKind.PRODUCT: 0.4,
    FactKind.EMAIL: 0.3,
    FactKind.PHONE: 0.3,
    FactKind.NOTE: 0.3,
}
_TOPIC_BONUS = 1.0
_SIMILARITY_WEIGHT = 1.0
_AGE_PENALTY = 0.2
_MENTION_BONUS = 0.5
_TOPICS: Mapping[str, re.Pattern[str]] = {
    FactKind.ORDER_NUMBER.value: re.compile(
        r"\b(?:orders?|ordered|package|parcel|deliver\w*|ship\w*|track\w*|arriv\w*|refund\w*|return\w*|cancel\w*|"
        r"dispatch\w*|courier|purchase\w*|bought|stuff|items?|late|lost|missing|where(?:'s| is)|exchange\w*)\b",
        re.IGNORECASE,
    ),
    FactKind.TICKET_NUMBER.value: re.compile(
        r"\b(?:tickets?|case|complaint|request|follow(?:ing)?[ -]?up|update|status|progress|escalat\w*|still|"
        r"any news|heard back|reply|response)\b",
        re.IGNORECASE,
    ),
    FactKind.PLAN.value: re.compile(
        r"\b(?:plans?|subscri\w*|billing|billed|bill|upgrad\w*|downgrad\w*|price|pricing|cost|pay\w*|invoice\w*|"
        r"charge\w*|membership|renew\w*|tier|fee|features?|limit\w*|seats?|cancel\w*)\b",
        re.IGNORECASE,
    ),
    FactKind.PRODUCT.value: re.compile(
        r"\b(?:products?|desk|chair|lamp|model|device|warranty|assembl\w*|broken|defect\w*|error|code|manual|"
        r"wobbl\w*|motor|part|parts|repair\w*|noise|setup|install\w*|height|replace\w*|it)\b",
        re.IGNORECASE,
    ),
    FactKind.EMAIL.value: re.compile(
        r"\b(?:e-?mails?|contact|reach|send|sent|receipt|invoice|confirmation|newsletter|login|log in|sign in|"
        r"account|address)\b",
        re.IGNORECASE,
    ),
    FactKind.PHONE.value: re.compile(
        r"\b(?:phone|call\w*|ring|sms|text|number|mobile|reach|contact|callback|whatsapp)\b", re.IGNORECASE
    ),
    "preference:contact": re.compile(
        r"\b(?:contact|reach|call\w*|e-?mail|text|sms|notify|notification\w*|let me know|update me|get back|"
        r"hear back|phone)\b",
        re.IGNORECASE,
    ),
    "preference:delivery": re.compile(
        r"\b(?:deliver\w*|parcel|package|courier|drop|leave|door|ship\w*)\b", re.IGNORECASE
    ),
    "preference:delivery_time": re.compile(
        r"\b(?:deliver\w*|slot|when|time|morning|evening|afternoon)\b", re.IGNORECASE
    ),
}


def is_about(key: str, text: str) -> bool:
    """Whether ``text`` touches what facts under ``key`` serve ("where is my parcel?" needs the order number)."""
    kind = kind_of_key(key)
    topic = _TOPICS.get(key) or (_TOPICS.get(kind.value) if kind else None)
    return topic is not None and topic.search(text) is not None


def estimate_tokens(text: str) -> int:
    """A quarter of the characters, rounded up: close enough to model tokenizers for budgeting."""
    return -(-len(text) // _CHARACTERS_PER_TOKEN)


def recall_cost(fact: Fact | RecalledFact) -> int:
    """Tokens one recalled fact takes in a prompt (its line and the bullet around it)."""
    return estimate_tokens(fact.text) + _TOKENS_PER_LINE


def relevance(fact: Fact, similarity: float, question: str, now: datetime) -> float:
    """How much ``fact`` is worth to a turn about ``question``: kind priority, topic, similarity, age."""
    score = _BASE_PRIORITY.get(fact.kind, 0.3) + _SIMILARITY_WEIGHT * max(0.0, similarity)
    if is_about(fact.key, question):
        score += _TOPIC_BONUS
    if normalise_value(fact.kind, fact.value) and normalise_value(fact.kind, fact.value) in normalise_value(
        fact.kind, question
    ):
        score += _MENTION_BONUS
    if fact.expires_at is not None and fact.expires_at > fact.created_at:
        lived = (now - fact.created_at) / (fact.expires_at - fact.created_at)
        score -= _AGE_PENALTY * min(1.0, max(0.0, lived))
    return score


def select_for_recall(
    candidates: Sequence[tuple[Fact, float]], question: str, now: datetime, *, token_budget: int
) -> list[RecalledFact]:
    """The current facts most worth giving the assistant, best first, within ``token_budget`` tokens.

    ``candidates`` pairs each fact with its embedding similarity to the question (0 when unknown). Superseded
    and expired facts are never selected, whatever the caller passes.
    """
    current = [(fact, similarity) for fact, similarity in candidates if fact.is_current(now)]
    ranked = sorted(
        current,
        key=lambda pair: (
            -relevance(pair[0], pair[1], question, now),
            -pair[0].created_at.timestamp(),
            str(pair[0].id),
        ),
    )
    chosen: list[RecalledFact] = []
    seen: set[str] = set()
    used = 0
    for fact, _ in ranked:
        if fact.key in seen:
            continue  # two current facts of one key can only come from a race; the newer one ranks first
        cost = recall_cost(fact)
        if used + cost > token_budget:
            continue  # a shorter fact further down may still fit
        seen.add(fact.key)
        used += cost
        chosen.append(RecalledFact(fact.key, fact.kind, fact.value, fact.created_at))
    return chosen


# --- rolling conversation summaries ---------------------------------------------------------------------------

_POINT_CHARS = 200
_MAX_MENTIONS = 40
_SPEAKERS: Mapping[MessageRole, str] = {
    MessageRole.CUSTOMER: "Customer",
    MessageRole.ASSISTANT: "Assistant",
    MessageRole.AGENT: "Agent",
}
# Codes and numbers worth keeping verbatim: a word with a digit (NW-48213, E07, 2FA), at least 3 characters.
_MENTION = re.compile(r"(?<![\w@.-])(?=[A-Za-z0-9-]*\d)[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9](?![\w@-])")
_MIN_MENTION_CHARS = 3
_LEAD_IN = re.compile(r"^[^\n]{0,80}:\s*\n+")


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """What the older part of a conversation said, folded into a few lines that keep its facts.

    ``points`` are one line per folded message (the oldest are dropped first when the summary outgrows its
    budget); ``mentions`` keep every code and number said (order and ticket numbers, error codes) and the
    facts found, so dropping a point never forgets them.
    """

    conversation_id: UUID
    points: tuple[str, ...]
    mentions: tuple[str, ...]
    through_message_id: UUID
    through_at: datetime
    folded_messages: int
    updated_at: datetime

    @property
    def text(self) -> str:
        """The summary as the assistant reads it."""
        lines = [f"Summary of the earlier part of this conversation ({self.folded_messages} messages):"]
        omitted = self.folded_messages - len(self.points)
        if omitted > 0:
            lines.append(f"- ({omitted} earlier messages are not shown)")
        lines += [f"- {point}" for point in self.points]
        if self.mentions:
            lines.append("Mentioned: " + ", ".join(self.mentions))
        return "\n".join(lines)


def fold_messages(
    previous: ConversationSummary | None,
    conversation_id: UUID,
    messages: Sequence[Message],
    *,
    max_chars: int,
    now: datetime,
) -> ConversationSummary | None:
    """``previous`` with ``messages`` (oldest first, all newer than what it covers) folded in.

    Extractive and deterministic: each message becomes one line (who spoke, its first sentences, redacted);
    codes, numbers and facts go to ``mentions``. When the text outgrows ``max_chars`` the oldest lines are
    dropped (mentions stay). None when there is nothing to summarise.
    """
    relevant = [message for message in messages if message.role in _SPEAKERS and message.content.strip()]
    if not messages or (previous is None and not relevant):
        return previous
    points = list(previous.points) if previous else []
    mentions = list(previous.mentions) if previous else []
    for message in relevant:
        text = _LEAD_IN.sub("", redact(message.content)).strip()
        points.append(f"{_SPEAKERS[message.role]}: {_shorten(' '.join(text.split()), _POINT_CHARS)}")
        found = [candidate.value for candidate in extract_facts(text)] if message.role is MessageRole.CUSTOMER else []
        for mention in [*_MENTION.findall(text), *found]:
            if len(mention) >= _MIN_MENTION_CHARS and mention not in mentions and clean_value(mention) is not None:
                mentions.append(mention)
    mentions = mentions[-_MAX_MENTIONS:]
    last = messages[-1]
    summary = ConversationSummary(
        conversation_id=conversation_id,
        points=tuple(points),
        mentions=tuple(mentions),
        through_message_id=last.id,
        through_at=last.created_at,
        folded_messages=(previous.folded_messages if previous else 0) + len(relevant),
        updated_at=now,
    )
    while len(summary.text) > max_chars and summary.points:
        summary = replace(summary, points=summary.points[1:])
    return summary


def _shorten(text: str, limit: int) -> str:
    """The first sentences of ``text`` within ``limit`` characters, else its first words and an ellipsis."""
    if len(text) <= limit:
        return text
    kept = ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if len(kept) + len(sentence) + 1 > limit:
            break
        kept = f"{kept} {sentence}".strip()
    if kept:
        return kept
    cut = text[: limit - 1].rsplit(" ", 1)[0]
    return cut + "\u2026"


def unfolded(summary: ConversationSummary | None, older: Sequence[Message]) -> list[Message]:
    """The messages of ``older`` (oldest first) that ``summary`` does not cover yet."""
    if summary is None:
        return list(older)
    ids = [message.id for message in older]
    if summary.through_message_id in ids:
        return list(older[ids.index(summary.through_message_id) + 1 :])
    return [message for message in older if message.created_at > summary.through_at]


def similarity(first: Sequence[float], second: Sequence[float]) -> float:
    """Cosine similarity of two vectors (the embedder's are L2-normalised, so this is their dot product)."""
    dot = math.fsum(a * b for a, b in zip(first, second, strict=True))
    norms = math.sqrt(math.fsum(a * a for a in first)) * math.sqrt(math.fsum(b * b for b in second))
    return dot / norms if norms else 0.0
