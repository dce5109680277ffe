"""What a customer's message asks about: its content words, and whether it only continues the message before it.

Chat customers write follow-ups ("and if I paid with PayPal?", "how long does that take?", "it still doesn't
work") that name no topic: searched alone they find nothing, or the wrong article. ``with_context`` gives such a
message the earlier messages it continues, for retrieval; what is answered is still the message itself.
"""

import re
from collections.abc import Sequence
from typing import Final

# Function words, and what forum and chat questions say around the subject ("hi, does anyone know how ...").
# "s", "t", "m", "re", "ve", "ll", "d" and the "n't" stems are what the word pattern makes of contractions.
_STOPWORD_TEXT = """
a about above after again against all also am an and any are as at be because been before being below between
both but by can cannot could did do does doing done down during each either else etc ever every few for from
further had has have having he her here hers him his how however i if in into is it its itself just let like
may me might more most much must my myself no nor not now of off on once only or other our ours out over own
per please same shall she should so some such than that the their theirs them then there these they this
those through thus to too under until up upon us very via was we were what when where whether which while who
whom why will with within without would yet you your yours
hi hello hey thanks thank regards anyone someone somebody help know get gets got getting want wants wanted need
needs needed trying tried try able way ask asking question questions appreciate advise advice kindly dear
sure maybe really still also one ones see seen seem seems thing things something anything mean means meant
ok okay yes yeah yep great cool awesome perfect bye goodbye lot
s t m re ve ll d don doesn didn isn aren wasn weren haven hasn hadn couldn shouldn wouldn won ain
"""
STOPWORDS: Final = frozenset(_STOPWORD_TEXT.split())

# Words, version numbers and dotted/underscored identifiers (``4.1.1.2``, ``httpd.conf``, ``MQRC_NOT_AUTHORIZED``).
WORD: Final = re.compile(r"[a-z0-9]+(?:[._][a-z0-9]+)*")

# A message continues the one before it when it names at most this many topic words and asks no question of its
# own ("PayPal?", but not "Where is my order?"), ...
FOLLOW_UP_WORDS: Final = 1
_ASKS = re.compile(r"\b(?:what|where|when|why|who|which|how|do|does|did|can|could|is|are|will|would)\b", re.IGNORECASE)
# ... or this many and points back ("how long does that take?", "it still doesn't work"; not "is there …"), ...
POINTING_FOLLOW_UP_WORDS: Final = 2
_POINTS_BACK = re.compile(r"\b(?:it|that|this|those|these|them|they)\b", re.IGNORECASE)
# ... or this many and opens like a follow-up ("and what if I paid with a gift card?", "what about Canada express?").
OPENED_FOLLOW_UP_WORDS: Final = 4
_OPENER = re.compile(
    r"^\W*(?:and|but|also|or|so|then|plus|what about|how about|what if|same for|even if|in that case)\b", re.IGNORECASE
)
# A follow-up brings back earlier messages up to the one that named the topic, within this many characters.
MAX_CONTEXT_CHARS: Final = 600


def content_words(text: str) -> list[str]:
    """The words of ``text`` that carry its subject (lower case, function words left out)."""
    return [word for word in WORD.findall(text.lower()) if word not in STOPWORDS]


def is_follow_up(text: str) -> bool:
    """Whether the message names too little to be searched on its own.

    It opens like a follow-up ("and…", "what about…") and names at most four topic words, or points back ("does
    that…", "it…") and names at most two, or names one and asks nothing of its own ("PayPal?"). Numbers do not count:
    an order number or a reference names the customer's case, not what they ask about (a code such as SQL30081N
    does).
    """
    words = len([word for word in content_words(text) if not word.isdigit()])
    if _OPENER.match(text):
        return words <= OPENED_FOLLOW_UP_WORDS
    if _POINTS_BACK.search(text):
        return words <= POINTING_FOLLOW_UP_WORDS
    # "What do I do now?" names nothing at all: it can only be about what came before.
    return words == 0 or (words <= FOLLOW_UP_WORDS and not _ASKS.search(text))


def with_context(question: str, earlier: Sequence[str]) -> str:
    """``question``, after the customer's ``earlier`` messages (oldest first) that it continues, if it is a follow-up.

    The messages back to the last one that is not a follow-up (the one that named the topic) are taken, within
    ``MAX_CONTEXT_CHARS``; the message just before is always taken.
    """
    if not earlier or not is_follow_up(question):
        return question
    context: list[str] = []
    size = 0
    for text in reversed(earlier):
        if context and size + len(text) > MAX_CONTEXT_CHARS:
            break
        context.insert(0, text)
        size += len(text)
        if not is_follow_up(text):
            break
    return "\n".join([*context, question])
