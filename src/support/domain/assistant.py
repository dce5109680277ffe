"""What the assistant is asked (a reply request) and what it produces while it writes (reply events)."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from support.domain.conversations import ReasonCode, TokenUsage
from support.domain.knowledge import SearchHit
from support.domain.memory import RecalledFact


@dataclass(frozen=True, slots=True)
class Turn:
    """One earlier message of the conversation as the model sees it: ``customer`` or ``assistant`` speaking."""

    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class AttachedText:
    """Text extracted from a file the customer attached; untrusted, like retrieved passages."""

    filename: str
    text: str


@dataclass(frozen=True, slots=True)
class AttachedImage:
    """An image the customer attached; sent to the model as an image block."""

    filename: str
    media_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ReplyRequest:
    """Everything one assistant turn is written from.

    ``question`` is what the customer said since the last reply (several messages joined when they arrived
    while a reply was being written). ``passages`` were retrieved for it before the model is called.
    """

    question: str
    history: Sequence[Turn] = ()
    passages: Sequence[SearchHit] = ()
    attachments: Sequence[AttachedText] = ()
    images: Sequence[AttachedImage] = ()
    customer_name: str | None = None
    # Facts remembered about the customer (customer memory); untrusted background.
    customer_facts: Sequence[str] = ()
    # Recalled customer memory (relevant, current facts within the recall budget): context, never instructions.
    memories: Sequence[RecalledFact] = ()
    # The rolling summary of the conversation's turns older than ``history`` (redacted, extractive).
    summary: str | None = None
    # When ``question`` joins several messages: the newest of them, which a reply that cannot answer names.
    newest: str | None = None
    # A reply that cannot answer hands the conversation to a person (the escalation policy's repeated-failure
    # rule): the reply should not offer one, since the handover notice follows it.
    hands_over_if_unanswered: bool = False
    # The customer was already offered a person for their frustration: a handoff for frustration now hands over.
    hands_over_if_frustrated: bool = False


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of the reply's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolActivity:
    """The model used a tool; ``status`` is ``started``, ``succeeded`` or ``failed``."""

    name: str
    status: str


@dataclass(frozen=True, slots=True)
class PassageCited:
    """The reply relies on ``passage``; ``quote`` is the supporting text from it."""

    passage: SearchHit
    quote: str


@dataclass(frozen=True, slots=True)
class HandoffSignal:
    """The assistant judges that a human should take over (or be offered), and why."""

    reason_code: ReasonCode
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FactRemembered:
    """The model asks to remember a fact about the customer (``remember_fact``); the application vets and stores it.

    ``kind`` is one of the memory fact kinds (``name``, ``order_number``, ``preference``, ...); ``topic`` names
    what a ``preference`` or ``note`` is about.
    """

    kind: str
    value: str
    topic: str = ""


@dataclass(frozen=True, slots=True)
class ReplyCompleted:
    """The last event of a reply. ``evidence_score`` is how well the passages support it, when measured."""

    usage: TokenUsage = field(default_factory=TokenUsage)
    stop_reason: str = "end_turn"
    evidence_score: float | None = None


ReplyEvent = TextDelta | ToolActivity | PassageCited | HandoffSignal | FactRemembered | ReplyCompleted


def storable_pieces(carried: str, text: str) -> tuple[str, str]:
    """A model's text piece made fit to publish and store, and what to carry to the next piece.

    A gateway may split a surrogate pair across two pieces: a trailing high surrogate waits for its partner. What
    stays unpaired becomes U+FFFD, and NUL is dropped: neither can be encoded for Valkey nor stored by PostgreSQL
    (a lone surrogate left a reply stream open for good, a NUL failed the store after the words were streamed).
    """
    text = carried + text
    carry = ""
    if text and "\ud800" <= text[-1] <= "\udbff":
        text, carry = text[:-1], text[-1]
    # Encoded as they are and decoded again, pairs become their character and a lone half becomes U+FFFD.
    paired = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return paired.replace("\x00", ""), carry
