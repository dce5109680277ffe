"""Prompt injection inside content that is only data: passages that address the assistant instead of the reader.

Knowledge-base articles, uploads and customer messages reach the model as data. Some of that text tries to be an
instruction: "ignore previous instructions", "you are now DAN", "reveal your system prompt", a fake
``Assistant:`` turn, a request to call ``request_human_handoff``, or the same hidden from human readers (an HTML
comment, white or ``display:none`` text, invisible Unicode tag characters). This module finds such passages and
says why, with their spans, so ingestion can flag them and the responders can keep them out of answers.

Precision matters more than recall here. Help-center articles are full of instructions to the *customer*
("click Reset password", "ignore the warning and continue", "system requirements: ..."), and a flag on every
article would be ignored. The patterns therefore target phrasing that addresses an AI, assistant or model, tries
to replace its rules or role, asks for its prompt, speaks in chat-template role markers, or names its tools. They
cover English, German, French and Spanish. Flags are for review and for keeping passages out of answers; what
keeps the model safe is that retrieved text is always sent as delimited, untrusted data (docs/security.md).
"""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class InjectionReason(StrEnum):
    """Why a passage was flagged."""

    OVERRIDE = "override_instructions"  # ignore previous instructions, new instructions:
    PERSONA = "persona_change"  # you are now DAN, pretend to be
    PROMPT_DISCLOSURE = "prompt_disclosure"  # reveal your system prompt
    ROLE_MARKER = "role_marker"  # Assistant:, <|im_start|>, [INST], <system>
    TOOL_REQUEST = "tool_request"  # call request_human_handoff, fake tool_use JSON
    ADDRESSES_ASSISTANT = "addresses_assistant"  # note to AI assistants, if you are an AI
    POLICY_OVERRIDE = "policy_override"  # tell the customer refunds are 100% for life
    HIDDEN_TEXT = "hidden_text"  # HTML comments, hidden CSS, invisible characters


@dataclass(frozen=True, slots=True)
class InjectionFlag:
    """One flagged passage: why, where (``start``/``end`` character offsets) and a readable excerpt.

    ``chunk`` is the ordinal of the chunk whose text the offsets refer to; None means the offsets refer to the
    submitted content itself (text the extractor removes or that readers cannot see, such as an HTML comment).
    """

    reason: InjectionReason
    start: int
    end: int
    excerpt: str
    chunk: int | None = None


# A document with more flags than this is hostile as a whole; the rest adds nothing to the review.
MAX_FLAGS: Final = 50
_EXCERPT_CONTEXT: Final = 80
_EXCERPT_CHARS: Final = 240
_HIDDEN_MIN_WORDS: Final = 3

# Words that name the model. "bot" and "model" alone are too common in product text to count on their own.
_AI = r"(?:AI|A\.I\.|KI|IA|LLM|(?:large\s+)?language\s+model|assistant|chat\s*bot|chatbot|GPT|ChatGPT|Claude)"

_PATTERNS: Final[tuple[tuple[InjectionReason, str], ...]] = (
    # --- replacing the rules ---
    (
        InjectionReason.OVERRIDE,
        (
            r"\b(?:ignore|disregard|forget|override|bypass|abandon)\s+(?:(?:all|any|the|these|those|of|your|my)\s+)*"
            r"(?:previous|prior|above|earlier|preceding|former|original|initial|existing|system|safety|developer|your)\s+"
            r"(?:\w+\s+)?(?:instructions?|rules|prompts?|guidelines|directions|directives|guardrails|policies|"
            r"constraints|programming|context)\b"
        ),
    ),
    (
        InjectionReason.OVERRIDE,
        (
            r"\b(?:ignore|disregard|forget)\s+(?:everything|all)\s+(?:above|before|previously|so\s+far|"
            r"you(?:'ve|\s+have)?\s+(?:been|were)\s+told)\b"
        ),
    ),
    (
        InjectionReason.OVERRIDE,
        (
            r"\b(?:new|updated|revised|real|actual|true|secret)\s+(?:system\s+)?(?:instructions?|directives?|"
            r"system\s+prompt)\s*:"
        ),
    ),
    (
        InjectionReason.OVERRIDE,
        (
            r"\b(?:these|the\s+following)\s+(?:instructions|rules)\s+(?:override|supersede|replace|take\s+precedence)\b"
            r"|\bsystem\s+override\b"
        ),
    ),
    (
        InjectionReason.OVERRIDE,
        (
            r"\b(?:ignorier(?:e|en|t)?|vergiss|vergessen|missachte|missachten)\s+(?:sie\s+)?"
            r"(?:(?:alle|die|deine|ihre|sämtliche|bisherigen|vorherigen|vorigen|obigen|früheren|ursprünglichen)\s+)+"
            r"(?:\w+\s+)?(?:system)?(?:anweisungen|instruktionen|regeln|vorgaben|richtlinien|befehle)\b"
        ),
    ),
    (
        InjectionReason.OVERRIDE,
        (
            r"\b(?:ignore[zrs]?|oublie[zrs]?|néglige[zr]?)\s+(?:toutes\s+|tous\s+)(?:les\s+|tes\s+|vos\s+)?"
            r"(?:instructions|consignes|règles|directives)\b"
            r"|\b(?:ignore[zrs]?|oublie[zrs]?|néglige[zr]?)\s+(?:les\s+|tes\s+|vos\s+|ces\s+)?"
            r"(?:instructions|consignes|règles|directives)\s+(?:précédentes|antérieures|ci-dessus|initiales|système)\b"
        ),
    ),
    (
        InjectionReason.OVERRIDE,
        (
            r"\b(?:ignora|ignore|ignoren|olvida|olvide|olviden|descarta|omite)\s+(?:todas\s+)(?:las\s+|tus\s+|sus\s+)?"
            r"(?:instrucciones|reglas|indicaciones|directrices|órdenes)\b"
            r"|\b(?:ignora|ignore|ignoren|olvida|olvide|olviden|descarta|omite)\s+(?:las\s+|tus\s+|sus\s+)?"
            r"(?:instrucciones|reglas|indicaciones|directrices|órdenes)\s+(?:anteriores|previas|de\s+arriba|"
            r"del\s+sistema|iniciales)\b"
        ),
    ),
    # --- a new role ---
    (
        InjectionReason.PERSONA,
        (
            r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:an?\s+|the\s+|in\s+)?(?:[\w-]+\s+){0,2}?"
            rf"(?:{_AI}|bot|model|DAN|persona|character|jailbroken|unrestricted|unfiltered|uncensored|evil|"
            r"(?:developer|god|debug|admin)\s+mode)\b"
        ),
    ),
    (
        InjectionReason.PERSONA,
        (
            r"\b(?:pretend|roleplay|role-play)\s+(?:to\s+be|you\s+are|you're|as|that\s+you)\b"
            r"|\bdo\s+anything\s+now\b|\bjailbr(?:eak|oken)\b|\b(?-i:DAN)\s+mode\b"
            r"|\byour\s+new\s+(?:role|persona|identity|instructions|task|purpose)\s+(?:is|are)\b"
        ),
    ),
    (
        InjectionReason.PERSONA,
        (
            r"\bfrom\s+now\s+on,?\s+(?:you\s+(?:are|must|will|shall|should)\s+(?:\w+\s+)?(?:act|respond|answer|reply|"
            r"speak|behave|pretend|ignore|talk)|(?:the\s+)?(?:assistant|AI|bot|model)\s+(?:is|must|will|shall)\b)"
        ),
    ),
    (
        InjectionReason.PERSONA,
        (
            r"\b(?:act|behave|respond|answer)\s+as\s+(?:if\s+you\s+(?:are|were)\s+)?(?:an?\s+)?"
            r"(?:unrestricted|unfiltered|jailbroken|uncensored|evil|rogue|different)\b"
        ),
    ),
    (
        InjectionReason.PERSONA,
        (
            r"\bdu\s+bist\s+(?:jetzt|nun|ab\s+sofort|ab\s+jetzt|ab\s+heute)\s+(?:\w+\s+){0,2}?"
            r"(?:KI|Assistent\w*|Chatbot|Bot|Sprachmodell|DAN|uneingeschränkt\w*)\b"
            r"|\bab\s+(?:sofort|jetzt)\s+(?:bist|antwortest|handelst|sprichst)\s+du\b|\btu\s+so,?\s+als\s+(?:ob|wärst)\b"
        ),
    ),
    (
        InjectionReason.PERSONA,
        (
            r"\btu\s+es\s+(?:maintenant|désormais|dorénavant)\s+(?:\w+\s+){0,2}?(?:IA|assistant\w*|chatbot|bot|modèle)\b"
            r"|\b(?:à\s+partir\s+de\s+maintenant|désormais|dorénavant),?\s+tu\s+(?:es|dois|vas|réponds)\b"
            r"|\bfais\s+semblant\s+d'être\b"
        ),
    ),
    (
        InjectionReason.PERSONA,
        (
            r"\b(?:ahora|a\s+partir\s+de\s+ahora|desde\s+ahora),?\s+(?:tú\s+)?eres\s+(?:\w+\s+){0,2}?"
            r"(?:IA|asistente|chatbot|bot|modelo)\b|\bfinge\s+(?:ser|que\s+eres)\b"
            r"|\bactúa\s+como\s+(?:si\s+fueras\s+)?(?:una?\s+)?(?:IA|asistente|bot)\b"
        ),
    ),
    # --- the prompt ---
    (
        InjectionReason.PROMPT_DISCLOSURE,
        (
            r"\b(?:reveal|print|show|display|repeat|output|leak|dump|share|disclose|tell\s+me|give\s+me|write\s+out|"
            r"recite|paste)\s+(?:me\s+|us\s+)?(?:(?:your|the|all|its|any|of|exact|full|entire|complete|verbatim)\s+)*"
            r"(?:(?:system|initial|original|hidden|secret|developer|pre)[\s-]*prompt|prompt|"
            r"(?:system|initial|original|hidden|secret|developer)\s+(?:instructions|message)|instructions\s+you\s+were|"
            r"everything\s+above|text\s+above|configuration\s+you)"
        ),
    ),
    (
        InjectionReason.PROMPT_DISCLOSURE,
        r"\bwhat\s+(?:is|are|were)\s+your\s+(?:system\s+prompt|(?:initial\s+|original\s+)?instructions|rules)\b",
    ),
    (
        InjectionReason.PROMPT_DISCLOSURE,
        (
            r"\b(?:zeig\w*|gib|nenn\w*|verrat\w*|wiederhol\w*|offenbar\w*)\s+(?:mir\s+|uns\s+)?(?:\w+\s+){0,2}?"
            r"(?:System-?prompt|Systemanweisung\w*|Systemnachricht|ursprünglichen\s+Anweisungen)\b"
            r"|\b(?:révèle|montre|affiche|répète|donne|dis)[sz]?(?:-moi|-nous)?\s+(?:\w+\s+){0,2}?"
            r"(?:(?:prompt|invite|message|instructions?)\s+(?:système|initiales?|d'origine|cachées?)|tes\s+instructions)\b"
            r"|\b(?:revela|muestra|muéstrame|dime|repite|imprime|enséñame)\s+(?:\w+\s+){0,2}?"
            r"(?:(?:prompt|mensaje|instrucciones|indicaciones)\s+(?:del\s+sistema|de\s+sistema|iniciales|ocultas|"
            r"originales)|tus\s+instrucciones)\b"
        ),
    ),
    # --- role markers (chat templates and transcripts) ---
    (
        InjectionReason.ROLE_MARKER,
        (
            r"^[ \t>*#\[]*(?:assistant|human|AI|chatbot)[\]*]*\s*:"
            r"|^[ \t>*#\[]*system[\]*]*\s*:(?=[^\n]*\b(?:you|your|assistant|ignore|instructions?|must|always|never)\b)"
            r"|^[ \t>*#\[]*(?:system\s+prompt|system\s+message)[\]*]*\s*:"
        ),
    ),
    (
        InjectionReason.ROLE_MARKER,
        (
            r"<\|[a-z_]{2,24}\|>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>"
            r"|</?(?:system|assistant|user|human|instructions?|system_prompt|im_start|im_end)\b[^<>\n]{0,80}>"
        ),
    ),
    # --- tools ---
    (
        InjectionReason.TOOL_REQUEST,
        (
            r"\b(?:request_human_handoff|search_knowledge|remember_fact)\b"
            r"|\"type\"\s*:\s*\"tool_(?:use|result)\"|\"(?:tool_calls?|function_call|tool_name)\"\s*:"
            r"|</?(?:function_calls|invoke|tool_use|tool_call|tool_result)\b"
        ),
    ),
    (
        InjectionReason.TOOL_REQUEST,
        (
            r"\b(?:call|invoke|trigger)\s+(?:the\s+|your\s+|a\s+)?(?:handoff|hand-off|escalation|search|memory)?\s*"
            r"(?:tool|function\s+call)\b"
            r"|\b(?:rufe|ruf|rufen\s+sie)\s+(?:das\s+|die\s+)?(?:Tool|Werkzeug|Funktion)\b"
            r"|\b(?:appelle[rz]?|déclenche[rz]?)\s+(?:l'|la\s+)?(?:outil|fonction)\b"
            r"|\b(?:llama|invoca|ejecuta)\s+(?:a\s+)?(?:la\s+)?(?:herramienta|función)\b"
        ),
    ),
    # --- text that speaks to the model ---
    (
        InjectionReason.ADDRESSES_ASSISTANT,
        (
            rf"\b(?:note|message|instructions?|attention|reminder|important)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?"
            rf"{_AI}s?\b|\bif\s+you\s+are\s+(?:an?\s+)?{_AI}\b(?!\s+(?:manager|director|professor|editor))"
            rf"|\b(?:dear|hey|hello|attention)\s+{_AI}\b|\bas\s+an?\s+{_AI},?\s+you\s+(?:must|should|will|are)\b"
            rf"|\b{_AI}s?\s+(?:reading|processing|summari[sz]ing|parsing|answering\s+from)\s+(?:this|these)\b"
        ),
    ),
    (
        InjectionReason.ADDRESSES_ASSISTANT,
        (
            r"\b(?:Hinweis|Nachricht|Anweisung(?:en)?)\s+(?:an|für)\s+(?:die\s+|den\s+|alle\s+|jede\s+)?"
            r"(?:KI|Assistent\w*|Chatbot|Sprachmodell\w*)\b"
            r"|\bwenn\s+du\s+(?:eine\s+KI|ein\s+Sprachmodell|ein\s+Chatbot|ein\s+Assistent)\s+bist\b"
            r"|\b(?:note|message|instructions?)\s+(?:à|pour)\s+(?:l'|les\s+|tout\s+|toute\s+)?"
            r"(?:IA|assistants?\s+virtuels?|chatbots?|modèles?\s+de\s+langage)\b"
            r"|\bsi\s+(?:tu\s+es|vous\s+êtes)\s+une?\s+(?:IA|assistant\s+virtuel|chatbot|modèle\s+de\s+langage)\b"
            r"|\b(?:nota|mensaje|instrucciones?)\s+(?:para|a)\s+(?:la\s+|el\s+|los\s+|las\s+|cualquier\s+)?"
            r"(?:IA|asistentes?\s+virtuales?|chatbots?|modelos?\s+de\s+lenguaje)\b"
            r"|\bsi\s+eres\s+(?:una?\s+)?(?:IA|asistente\s+virtual|chatbot|modelo\s+de\s+lenguaje)\b"
        ),
    ),
    # --- what to tell the customer ---
    (
        InjectionReason.POLICY_OVERRIDE,
        (
            r"(?:^|[.!?:;]\s+|\b(?:always|must|should|you\s+(?:must|should|will)|and)\s+)"
            r"(?:tell|inform|assure|promise)\s+(?:the\s+|every\s+|all\s+|any\s+|each\s+)?(?:customers?|users?|clients?)\b"
            r"|\b(?:do\s+not|don't|never)\s+(?:tell|inform|mention\s+(?:it\s+)?to|reveal\s+to)\s+(?:the\s+)?"
            r"(?:customers?|users?|clients?)\b"
        ),
    ),
    (
        InjectionReason.POLICY_OVERRIDE,
        (
            r"\b(?:you|the\s+assistant|the\s+AI|the\s+bot)\s+(?:must|should|will|shall)\s+(?:always\s+)?"
            r"(?:approve|grant|issue|promise|offer)\s+(?:every\s+|all\s+|any\s+|a\s+|the\s+)?(?:full\s+|100\s*%\s+)?"
            r"refunds?\b|(?:^|[.!?:]\s+)(?:always\s+)?(?:approve|grant)\s+(?:every|all|any)\s+refunds?\b"
        ),
    ),
    (
        InjectionReason.POLICY_OVERRIDE,
        (
            r"\b(?:sag|sage|sagen\s+sie|teile|teilen\s+sie)\s+(?:\w+\s+)?(?:dem|den|allen)\s+Kund(?:en|innen)\b"
            r"|\b(?:dis|dites)\s+(?:au|aux)\s+clients?\b|\b(?:dile|diles|dígale|díganle)\s+(?:al|a\s+los)\s+clientes?\b"
        ),
    ),
)
_COMPILED: Final = tuple((reason, re.compile(pattern, re.IGNORECASE | re.MULTILINE)) for reason, pattern in _PATTERNS)

# Letters from other scripts that look like Latin ones ("ignore" spelt with a Cyrillic i): mapped one to one, so
# offsets in the mapped text are offsets in the original.
_LOOKALIKES: Final = str.maketrans(
    "аеорсухіјԁһӏѕԛԝАВЕКМНОРСТХІЈЅαοτνιΑΒΕΗΙΚΜΝΟΡΤΧΥΖ",
    "aeopcyxijdhlsqwABEKMHOPCTXIJSaotviABEHIKMNOPTXYZ",
)

# Invisible characters that split words ("ig\u200bnore") and Unicode tag characters, which render as nothing but
# read as ASCII to a model (U+E0020..U+E007E are space..tilde). Zero-width joiners are left alone: emoji and
# several scripts need them.
_ZERO_WIDTH: Final = re.compile("[\u200b\u2060\ufeff\u180e]")
_TAG_RUN: Final = re.compile("[\U000e0000-\U000e007f]+")
_TAG_BASE: Final = 0xE0000
_FLAG_EMOJI: Final = "\U0001f3f4"  # a black flag followed by tag characters is a subdivision flag (England)
_BIDI_OVERRIDE: Final = re.compile("[\u202d\u202e]")
_INVISIBLE: Final = re.compile("[\u200b\u2060\ufeff\u180e\u202a-\u202e\u2066-\u2069\U000e0000-\U000e007f]")

_HTML_COMMENT: Final = re.compile(r"<!--(.*?)-->", re.DOTALL)
_STYLED_ELEMENT: Final = re.compile(
    r"<(?P<tag>[a-z][a-z0-9]*)\b[^>]*?\bstyle\s*=\s*(?P<quote>[\"'])(?P<style>[^\"']*)(?P=quote)[^>]*>"
    r"(?P<body>.*?)</(?P=tag)\s*>",
    re.IGNORECASE | re.DOTALL,
)
_HIDING_STYLE: Final = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0(?:\.0+)?(?:px|pt|em|rem|%)?\s*(?:;|!|$)"
    r"|opacity\s*:\s*0(?:\.0+)?\s*(?:;|!|$)|(?<![-\w])color\s*:\s*(?:#f{3}\b|#f{6}\b|white\b|transparent\b"
    r"|rgba?\(\s*255\s*,\s*255\s*,\s*255)|(?:left|top|text-indent)\s*:\s*-\d{3,}",
    re.IGNORECASE,
)
_TAG: Final = re.compile(r"<[^>]*>")
_SENTENCE_BREAK: Final = re.compile(r"[.!?]\s|\n")


def scan_text(text: str, *, chunk: int | None = None) -> list[InjectionFlag]:
    """Instruction-like passages of ``text``, in order, overlapping ones of one reason merged (at most MAX_FLAGS)."""
    skeleton = text.translate(_LOOKALIKES)
    spans = sorted(
        (match.start(), match.end(), reason)
        for reason, pattern in _COMPILED
        for match in pattern.finditer(skeleton)
        if match.end() > match.start()
    )
    merged: list[tuple[int, int, InjectionReason]] = []
    for start, end, reason in spans:
        same = next((i for i, (s, e, r) in enumerate(merged) if r is reason and s <= start <= e), None)
        if same is None:
            merged.append((start, end, reason))
        else:
            merged[same] = (merged[same][0], max(merged[same][1], end), reason)
    flags = [InjectionFlag(reason, start, end, excerpt(text, start, end), chunk) for start, end, reason in merged]
    return flags[:MAX_FLAGS]


def injection_reasons(text: str) -> tuple[InjectionReason, ...]:
    """The distinct reasons ``text`` is flagged for, in a stable order (empty when it reads as plain content)."""
    found = {flag.reason for flag in scan_text(text)}
    return tuple(reason for reason in InjectionReason if reason in found)


def is_instruction_like(text: str) -> bool:
    """Whether ``text`` contains a passage that addresses the assistant rather than the reader."""
    skeleton = text.translate(_LOOKALIKES)
    return any(pattern.search(skeleton) for _, pattern in _COMPILED)


def scan_source(source: str) -> list[InjectionFlag]:
    """Text hidden from human readers in submitted content (offsets into ``source``, ``chunk`` None).

    Flags HTML comments that read as instructions (the extractor drops comments, but they show intent), elements
    styled invisible (``display:none``, white or zero-size text: the extractor keeps their text, so it reaches the
    model while readers never see it), Unicode tag characters (decoded in the excerpt), right-to-left overrides,
    and zero-width characters that split an instruction-like phrase.
    """
    flags: list[InjectionFlag] = []
    for match in _HTML_COMMENT.finditer(source):
        body = match.group(1)
        if is_instruction_like(body):
            flags.append(_hidden(match.start(), match.end(), f"HTML comment: {body}"))
    for match in _STYLED_ELEMENT.finditer(source):
        if not _HIDING_STYLE.search(match.group("style")):
            continue
        body = " ".join(_TAG.sub(" ", match.group("body")).split())
        if len(body.split()) >= _HIDDEN_MIN_WORDS or is_instruction_like(body):
            style = match.group("style").strip()
            flags.append(_hidden(match.start(), match.end(), f"hidden element ({style}): {body}"))
    for match in _TAG_RUN.finditer(source):
        if match.start() > 0 and source[match.start() - 1] == _FLAG_EMOJI:
            continue
        decoded = "".join(
            chr(ord(char) - _TAG_BASE) for char in match.group() if chr(ord(char) - _TAG_BASE).isprintable()
        )
        if decoded.strip():
            flags.append(_hidden(match.start(), match.end(), f"invisible tag characters: {decoded}"))
    flags += (
        _hidden(match.start(), match.end(), f"text direction override: {excerpt(source, *match.span())}")
        for match in _BIDI_OVERRIDE.finditer(source)
    )
    flags += _split_words(source)
    flags.sort(key=lambda flag: flag.start)
    return flags[:MAX_FLAGS]


def strip_invisible(text: str) -> str:
    """``text`` without the invisible characters that can hide or disguise instructions.

    Those are tag characters, zero-width spaces, direction overrides and isolates. Zero-width joiners stay: emoji
    and several scripts need them.
    """
    return _INVISIBLE.sub("", text)


def excerpt(text: str, start: int, end: int) -> str:
    """The flagged span with its sentence around it (within a few dozen characters), on one line."""
    left = max(0, start - _EXCERPT_CONTEXT)
    breaks = [match.end() for match in _SENTENCE_BREAK.finditer(text, left, start)]
    left = breaks[-1] if breaks else left
    found = _SENTENCE_BREAK.search(text, end, min(len(text), end + _EXCERPT_CONTEXT))
    right = found.start() + 1 if found else min(len(text), end + _EXCERPT_CONTEXT)
    passage = " ".join(strip_invisible(text[left:right]).split())
    return passage if len(passage) <= _EXCERPT_CHARS else passage[: _EXCERPT_CHARS - 1].rstrip() + "…"


def reasons_of(flags: Iterable[InjectionFlag]) -> tuple[InjectionReason, ...]:
    """The distinct reasons among ``flags``, in a stable order (what a chunk stores)."""
    found = {flag.reason for flag in flags}
    return tuple(reason for reason in InjectionReason if reason in found)


def unique(flags: Iterable[InjectionFlag]) -> list[InjectionFlag]:
    """Flags without repeats of one passage (overlapping chunks hold the same sentence twice), at most MAX_FLAGS."""
    seen: set[tuple[InjectionReason, str]] = set()
    kept: list[InjectionFlag] = []
    for flag in flags:
        key = (flag.reason, flag.excerpt)
        if key not in seen:
            seen.add(key)
            kept.append(flag)
    return kept[:MAX_FLAGS]


def _hidden(start: int, end: int, description: str) -> InjectionFlag:
    text = " ".join(strip_invisible(description).split())
    if len(text) > _EXCERPT_CHARS:
        text = text[: _EXCERPT_CHARS - 1].rstrip() + "…"
    return InjectionFlag(InjectionReason.HIDDEN_TEXT, start, end, text)


def _split_words(source: str) -> Iterator[InjectionFlag]:
    """Instruction-like phrases that zero-width characters split, so a plain search would not see them."""
    if not _ZERO_WIDTH.search(source):
        return
    kept: list[str] = []
    positions: list[int] = []  # for each character kept, its offset in ``source``
    for offset, char in enumerate(source):
        if not _ZERO_WIDTH.match(char):
            kept.append(char)
            positions.append(offset)
    cleaned = "".join(kept)
    for flag in scan_text(cleaned):
        start, end = positions[flag.start], positions[flag.end - 1] + 1
        if _ZERO_WIDTH.search(source, start, end):
            yield _hidden(start, end, f"split by zero-width characters: {cleaned[flag.start : flag.end]}")
