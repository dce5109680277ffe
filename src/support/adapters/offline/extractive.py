"""An ``LLM`` that writes no text of its own: it quotes the retrieved passages' sentences that best answer the question.

Used when no Anthropic key is configured. Per turn it splits the passages into units (sentences; list items,
steps and code lines kept whole), scores them against the question with BM25 over those units (idf from the
passages themselves, light stemming) weighted by the passage's retrieval score, and quotes a short window of
consecutive units around the best one (answers in help-center articles are contiguous: the resolution follows
the sentence that matches the symptom). An evidence score in [0, 1] — a logistic model over retrieval
similarity, how distinct the best hit is, and how much of the question the quoted text covers — decides
between answering and saying plainly that the help center does not cover it (with a ``HandoffSignal``).

Everything is plain Python over a handful of passages: no model calls, about a millisecond per turn.
"""

import asyncio
import functools
import math
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from support.domain.assistant import (
    HandoffSignal,
    PassageCited,
    ReplyCompleted,
    ReplyEvent,
    ReplyRequest,
    TextDelta,
    Turn,
)
from support.domain.conversations import ReasonCode, TokenUsage
from support.domain.injection import is_instruction_like, strip_invisible
from support.domain.knowledge import SearchHit
from support.domain.memory import FactCandidate, FactKind, extract_facts, extract_retractions, is_about
from support.domain.privacy import contains_secret, redact
from support.domain.questions import STOPWORDS, WORD, is_follow_up
from support.ports.assistant import AssistantTools

NAME = "offline-extractive"
# Tuned on TechQA (docs/llm-offline.md); the default of SUPPORT_LLM__EVIDENCE_THRESHOLD is the same.
DEFAULT_EVIDENCE_THRESHOLD = 0.47

# A list item: bullet, number or letter, then a space.
_BULLET = re.compile(r"^\s*(?:[*\-•+]|\d{1,2}[.)]|[a-zA-Z][.)])\s+")
# Sentence ends: punctuation, space, then something that starts a sentence. Abbreviations are re-joined below.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_ABBREVIATION = re.compile(r"(?:\b(?:e\.g|i\.e|vs|approx|fig|ver)|\b[A-Z])\.$", re.IGNORECASE)
_URL = re.compile(r"(?:https?://|www\.)\S+")
# "See <other article>." and the like: navigation, not an answer (the citations already link the sources).
_CROSS_REFERENCE = re.compile(r"^(?:see|refer to|for more (?:information|details)(?:,| see| refer))\b", re.IGNORECASE)
# Lines that read like code, commands or configuration rather than prose.
# Braces or a semicolon closing the line, a shell prompt, KEY=value, an XML tag, backticks, a flag or a path
# first. (A ">" alone is not enough: help centers write menu paths as "Account > Orders".)
_CODE_LINE = re.compile(
    r"[{};]\s*$|^\s*[$#]\s|\w=\S|</?[A-Za-z][\w:.-]*(?:\s[^<>]*)?/?>|`|^\s*(?:-{1,2}[a-z]|/[a-z]|\./|[a-z]:\\)",
    re.IGNORECASE,
)
_WHITESPACE = re.compile(r"\s+")

# BM25 over units (they are short, so length normalisation matters less than for documents).
_K1 = 1.2
_B = 0.5
# How much a passage's retrieval score weighs on its units' scores: they are multiplied by the passage's fused
# score over the best passage's, to this power (near-ties stay near-ties; a distant fifth hit weighs little).
_SCORE_POWER = 2.0
# A question term in the headings above a unit counts as this many occurrences in the unit.
_SECTION_WEIGHT = 0.5
# A numbered list item ("3. Select Save.") and its number.
_STEP = re.compile(r"(\d{1,2})[.)]\s")
# Words quoted in an answer (a window around the best unit); a single longer unit is cut at the hard cap.
_ANSWER_WORDS = 80
_HARD_CAP_WORDS = 120
# A line holding the title and at most this many more words ("Title:", "- United States") repeats the title.
_TITLE_LINE_EXTRA_WORDS = 4
# Steps from a procedure's first to the best-matching one are quoted whole up to this many words.
_PROCEDURE_WORDS = 150
# A second source is quoted only when its best unit scores nearly as well as the first one's.
_SECOND_SOURCE_RATIO = 0.9
# A quoted "see <title of another retrieved article>" brings that article's best units, up to this many words;
# titles shorter than this many characters ("FAQ") are too common to be a reference.
_REFERENCE_WORDS = 110
_REFERENCE_TITLE_CHARS = 8
# What may follow a title that ends a pointer: the end of the clause, or "article" / "for details".
_POINTER_END = r"(?:\s+(?:article|page|guide))?(?=\s*(?:$|[.;,:)!?]|\s(?:for|to|on|about)\b))"
# Units this similar (Jaccard over terms) to an already quoted one are skipped (sibling articles repeat text).
_DUPLICATE_JACCARD = 0.8
# A follow-up ("and for Plus?") naming more than one thing: the previous customer turn joins it at this weight.
_HISTORY_WEIGHT = 0.5
# A question with no term of its own but at least this many words asks about the previous turn ("What now?" not).
_TOPICLESS_QUESTION_WORDS = 3
# "What's my email?": asked of what the customer told before, which memory recalls for the turn; no article holds it.
_ASKS_OWN = re.compile(
    r"^\W*(?:(?:hi|hello|hey|so|and|ok|okay|sorry)\W+)?(?:what(?:'s|\u2019s|\s+is|\s+was)|do\s+you\s+(?:know|have|remember)|"
    r"which\s+is|can\s+you\s+(?:tell|remind)\s+me)\s+(?:my|me\s+my)\s+(?P<what>full\s+name|name|e-?mail(?:\s+address)?|"
    r"phone(?:\s+number)?|mobile(?:\s+number)?|number|order(?:\s+number)?|ticket(?:\s+number)?|plan|subscription|"
    r"preferred\s+language)(?:\s+(?:again|on\s+file|you\s+have))?\W*$",
    re.IGNORECASE,
)
_OWN_KINDS = {
    "name": FactKind.NAME,
    "email": FactKind.EMAIL,
    "phone": FactKind.PHONE,
    "mobile": FactKind.PHONE,
    "number": FactKind.PHONE,
    "order": FactKind.ORDER_NUMBER,
    "ticket": FactKind.TICKET_NUMBER,
    "plan": FactKind.PLAN,
    "subscription": FactKind.PLAN,
    "preferred": FactKind.LANGUAGE,
    "full": FactKind.NAME,
}
_OWN_LABELS = {
    FactKind.NAME: "name",
    FactKind.EMAIL: "email address",
    FactKind.PHONE: "phone number",
    FactKind.ORDER_NUMBER: "order number",
    FactKind.TICKET_NUMBER: "ticket number",
    FactKind.PLAN: "plan",
    FactKind.LANGUAGE: "preferred language",
}
_POINTS_TO_LAST_TOPIC = re.compile(r"\b(?:now|then|next|that|this|it|after|instead)\b", re.IGNORECASE)
_ATTACHMENT_WEIGHT = 0.3
_ATTACHMENT_CHARS = 4000
# Articles named in an "I could not find it" reply: at most this many, and only somewhat related ones.
_SUGGESTIONS = 2
_SUGGESTION_SIMILARITY = 0.4
_SUGGESTION_COVERAGE = 0.3
_WORDS_PER_DELTA = 4
# What the customer says to ask for a person, and the offer this responder makes (a "yes" to it hands off).
_WANTS_PERSON = re.compile(
    r"\b(?:speak|talk|chat)\s+(?:to|with)\s+(?:a\s+|an\s+|some\s+)?(?:real\s+|live\s+)?"
    r"(?:human|person|agent|representative|operator|someone|somebody)\b|\b(?:real|live)\s+(?:human|person|agent)\b",
    re.IGNORECASE,
)
_YES = re.compile(r"(?:yes|yeah|yep|sure|ok|okay|please|please do|yes please|yes,? please)[\s!.]*", re.IGNORECASE)
_OFFER = "connect you with someone from our support team"
# What a message that only tells something says around the fact ("actually my new email is … by the way").
_TELLING_WORDS = (
    "email mail name order number phone mobile address actually btw way now new correct correction "
    "sorry mine instead moved live call called reach"
)
_THANKS = re.compile(r"\b(?:thanks|thank|thx|ty|cheers)\b", re.IGNORECASE)
_FAREWELL = re.compile(r"\b(?:bye|goodbye|good bye|see you|that'?s all|that is all|nothing else)\b", re.IGNORECASE)
_NO = re.compile(r"(?:no|nope|no thanks|no thank you|not now|not yet|no need)[\s!.]*", re.IGNORECASE)
_ACKNOWLEDGED = re.compile(
    r"(?:ok|okay|k|alright|all right|got it|i see|great|cool|perfect|fine|understood|noted)[\s!.]*", re.IGNORECASE
)
# Words this short are not stemmed, and no suffix is cut that leaves fewer letters.
_STEM_KEEP = 3
# The customer's first name is used when it looks like one and is no longer than this.
_NAME_CHARS = 30
# A question this short is repeated back when declining ("I couldn't find a clear answer about “...”").
_TOPIC_WORDS = 12
# Codes and versions: a word with a digit and a letter, or dotted numbers (E07, 8.5.5.4, CVE-2017-3156, FP3).
_IDENTIFIER = re.compile(r"\b(?=[\w.-]*\d)(?:[A-Za-z]+[\w-]*\d[\w.-]*|\d+(?:\.\d+){1,3}[A-Za-z0-9]*)\b")
_MISSING_IDENTIFIERS = 2
# Six or more digits, perhaps after a short prefix ("NW-40000001", "12345678"): the shape of the customer's own
# order, ticket or phone number; left out of the question when no passage holds it.
_REFERENCE = re.compile(r"\b[A-Za-z]{0,4}-?\d{6,}\b")
# A question's identifier terms weigh this much in the units' scores (its other terms weigh 1).
_IDENTIFIER_WEIGHT = 2.0
_IDENTIFIER_CHARS = 16
# An error or status code: a few letters and two or more digits ("E03", "C50", "ERR-42", "SQL0805N"). A model name
# with one digit ("T2", "C7") is a product, not a code.
_CODE = re.compile(r"\b[A-Za-z]{1,4}-?\d{2,6}[A-Za-z]?\b")
_OWN_REFERENCE_BEFORE = re.compile(
    r"\b(?:order|ticket|case|invoice|tracking|reference|ref|booking|account)\b\W*(?:number|no\.?|#|id)?\W*$",
    re.IGNORECASE,
)

# Evidence model: logistic regression over the features of `_Evidence`, fitted on the even-numbered TechQA
# questions with answerable and unanswerable ones weighted equally (docs/llm-offline.md). The score estimates
# the probability that the passages hold the answer, for a help center where half the questions are covered.
_EVIDENCE_BIAS = -2.4
_EVIDENCE_WEIGHTS: Mapping[str, float] = {
    "top_similarity": 0.5,
    "similarity_gap": 4.6,
    "rank_agreement": 1.4,
    "passage_coverage": 0.85,
    "answer_coverage": 0.1,
    "title_match": 1.0,
}


@dataclass(frozen=True, slots=True)
class _Unit:
    """A sentence, list item or code block of one passage, in reading order."""

    passage: int
    position: int
    text: str
    kind: str  # sentence | item | code | skip
    paragraph: int
    terms: Counter[str]
    words: int
    # Where in the passage's context (SearchHit.context) the unit is from; None: the chunk that ranked.
    context: int | None = None
    # The headings the unit's section sits under, and their terms ("How long each payment method takes").
    headings: tuple[str, ...] = ()
    section: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Evidence:
    """What the evidence score is computed from; every feature lies in [0, 1]."""

    # Cosine similarity of the best vector match, and how far it stands above the runner-up: an answerable
    # question tends to have one article that clearly fits, an unanswerable one several that half fit.
    top_similarity: float
    similarity_gap: float
    # The first hit's ranks in the vector and the full-text rankings (1 when both put it first).
    rank_agreement: float
    # Shares of the question's (idf-weighted) terms found in the quoted passage, and in the quoted units.
    passage_coverage: float
    answer_coverage: float
    # Share of the quoted article's title terms that the question uses.
    title_match: float

    def score(self) -> float:
        z = _EVIDENCE_BIAS + sum(weight * getattr(self, name) for name, weight in _EVIDENCE_WEIGHTS.items())
        return 1 / (1 + math.exp(-z))


@dataclass(frozen=True, slots=True)
class Draft:
    """A composed reply before streaming: its text in pieces, the passages it cites, the decision and its score."""

    blocks: tuple[tuple[str, SearchHit | None, str], ...]  # (text, cited passage or None, quote)
    evidence_score: float | None
    handoff: ReasonCode | None = None
    detail: str = ""

    @property
    def text(self) -> str:
        """The whole reply text."""
        return "".join(block for block, _, _ in self.blocks)

    @property
    def answered(self) -> bool:
        """Whether the reply answers from the passages (rather than handing off)."""
        return self.handoff is None


class ExtractiveLLM:
    """Answers only by quoting ``request.passages``; below ``evidence_threshold`` it declines and offers a human."""

    def __init__(
        self, *, evidence_threshold: float = DEFAULT_EVIDENCE_THRESHOLD, answer_words: int = _ANSWER_WORDS
    ) -> None:
        if not 0 <= evidence_threshold <= 1:
            msg = f"evidence_threshold must lie in [0, 1], got {evidence_threshold}"
            raise ValueError(msg)
        self._threshold = evidence_threshold
        self._answer_words = answer_words

    @property
    def name(self) -> str:
        return NAME

    async def reply(self, request: ReplyRequest, tools: AssistantTools) -> AsyncIterator[ReplyEvent]:  # noqa: ARG002 - no tool use offline
        draft = self.draft(request)
        for text, passage, quote in draft.blocks:
            for piece in _pieces(text, _WORDS_PER_DELTA):
                yield TextDelta(piece)
                # Let the event loop deliver each piece (and serve other streams) as a model stream would.
                await asyncio.sleep(0)
            if passage is not None:
                yield PassageCited(passage, quote)
        if draft.handoff is not None:
            yield HandoffSignal(draft.handoff, draft.detail)
        yield ReplyCompleted(usage=TokenUsage(), stop_reason="end_turn", evidence_score=draft.evidence_score)

    def draft(self, request: ReplyRequest) -> Draft:
        """Compose the reply to ``request`` without streaming it (deterministic: same request, same draft)."""
        name = _first_name(request.customer_name or _remembered(request, FactKind.NAME))
        if _asks_for_a_person(request):
            text = f"Of course{', ' + name if name else ''} — I'm passing this conversation to someone from our "
            text += "support team. They can see what you've written so far, so you won't need to repeat it."
            return Draft(((text, None, ""),), None, ReasonCode.CUSTOMER_REQUEST, "the customer asked for a person")
        if not _terms(request.question) and not _asks_about_the_last_topic(request):
            return Draft(((_small_talk(request, name), None, ""),), None)
        # A message that only tells something is thanked, even where an article matches its words ("My email is …"
        # quoted how to change an email address).
        # A question about what the customer told before ("What's my email?") is answered from memory.
        said = _forgotten(request, name) or _told(request, name) or _recalled_answer(request)
        if said is not None:
            return Draft(((said, None, ""),), None)
        query = _query_weights(request)
        units = [unit for index, hit in enumerate(request.passages) for unit in _split(hit, index)]
        # The customer's own order, ticket or phone number ("NW-40000001") is in no article: as a term of the
        # question it only made covered questions look uncovered ("Where is my order NW-40000001?" was declined).
        references = {term for word in _REFERENCE.findall(request.question) for term in _terms(word)}
        if references:
            present = {term for hit in request.passages for term in _terms(hit.text)}
            query = {term: weight for term, weight in query.items() if term not in references or term in present}
        scorer = _Scorer(units, query, request.passages)
        selected = _select(units, scorer, request.passages, self._answer_words)
        evidence = _evidence(request.passages, units, selected, scorer)
        score = round(evidence.score(), 4) if selected else 0.0
        if any(hit.context for hit in request.passages):
            # What to quote is chosen from the whole neighbourhood, where the answer often is, and whether to answer
            # on the better evidence of the two: the ranked chunks fall short where the answer is in the chunk beside
            # one ("my chair slowly sinks" ranks the chair's spec table; the sentence about the cylinder is next).
            wide = [unit for index, hit in enumerate(request.passages) for unit in _split_with_context(hit, index)]
            wide_scorer = _Scorer(wide, query, request.passages)
            chosen = _select(wide, wide_scorer, request.passages, self._answer_words)
            if chosen:
                wide_score = round(_evidence(request.passages, wide, chosen, wide_scorer).score(), 4)
                if wide_score > score or score >= self._threshold:
                    units, scorer, selected, score = wide, wide_scorer, chosen, max(score, wide_score)
        order = _known_order(request)
        if selected and score >= self._threshold and _quotes_other_codes(request.question, selected, scorer):
            # "My thermostat shows E03" answered with the rows of E42 to E45: the help center's rows for other codes
            # are no answer, however well the rest of the question matched (found by an exploratory test).
            return _decline(request, units, scorer, name, score, order)
        if selected and score >= self._threshold:
            selected = _with_reference(selected, units, scorer, request.passages)
            return Draft(_answer_blocks(selected, request.passages, name, order), score)
        return _decline(request, units, scorer, name, score, order)


class _Scorer:
    """BM25 of units against the weighted question terms, with idf over the units of this turn's passages."""

    def __init__(self, units: Sequence[_Unit], query: Mapping[str, float], passages: Sequence[SearchHit]) -> None:
        self.query = query
        # A unit's weight from its passage's fused retrieval score (see _SCORE_POWER).
        top = max((hit.score for hit in passages), default=0.0)
        self.passage_weights = [(max(hit.score, 0.0) / top) ** _SCORE_POWER if top > 0 else 1.0 for hit in passages]
        counted = [unit for unit in units if unit.kind != "skip"]
        total = len(counted)
        frequency: Counter[str] = Counter()
        for unit in counted:
            frequency.update(term for term in unit.terms if term in query)
        # Terms found nowhere in the passages get the largest idf: they are what the passages do not cover.
        self.idf = {term: math.log(1 + (total - frequency[term] + 0.5) / (frequency[term] + 0.5)) for term in query}
        self.max_idf = math.log(1 + (total + 0.5) / 0.5)
        self.average_words = sum(unit.words for unit in counted) / total if total else 1.0
        # Coverage is of the question itself: terms from history or attachments help find the passage, but a
        # long attached log must not make every answer look uncovered.
        self.question_terms = {term for term, weight in query.items() if weight >= 1.0}
        self.total_weight = sum(self.idf[term] for term in self.question_terms) or 1.0

    def relevance(self, unit: _Unit) -> float:
        if unit.kind == "skip":
            return 0.0
        norm = _K1 * (1 - _B + _B * unit.words / max(self.average_words, 1.0))
        score = 0.0
        for term, weight in self.query.items():
            count = unit.terms.get(term, 0) + (_SECTION_WEIGHT if term in unit.section else 0.0)
            if count:
                score += weight * self.idf[term] * count * (_K1 + 1) / (count + norm)
        return score

    def coverage(self, terms: set[str]) -> float:
        """The idf-weighted share of the question's terms that ``terms`` contains."""
        return sum(self.idf[term] for term in self.question_terms & terms) / self.total_weight


def _select(units: Sequence[_Unit], scorer: _Scorer, passages: Sequence[SearchHit], budget: int) -> list[_Unit]:
    """The window of consecutive units around the best unit, then possibly the best unit of a second source."""
    ranked = sorted(
        (unit for unit in units if unit.kind != "skip"),
        key=lambda unit: (-_weighted(unit, scorer), unit.passage, unit.position),
    )
    if not ranked or _weighted(ranked[0], scorer) <= 0:
        return []
    anchor = ranked[0]
    siblings = [unit for unit in units if unit.passage == anchor.passage]
    chosen = _window(siblings, anchor, budget)
    used = sum(unit.words for unit in chosen)
    best = _weighted(anchor, scorer)
    for unit in ranked[1:]:
        if _weighted(unit, scorer) < best * _SECOND_SOURCE_RATIO:
            break
        other_document = passages[unit.passage].document_id != passages[anchor.passage].document_id
        if other_document and used + unit.words <= budget and not _duplicates(unit, chosen):
            chosen.append(unit)
            break
    return chosen


def _with_reference(
    selected: Sequence[_Unit], units: Sequence[_Unit], scorer: _Scorer, passages: Sequence[SearchHit]
) -> list[_Unit]:
    """The quote, followed by the article it sends the reader to when that article was retrieved too.

    Help centers answer in one article and point to another for the details ("How long the money takes to reach
    you depends on your payment method — see Refund timing by payment method."): the quote then goes on with the
    best units of that article, so the customer gets the details rather than a pointer.
    """
    quoted = {passages[unit.passage].document_id for unit in selected}
    pointed: list[tuple[int, int, _Unit]] = []  # (title length, passage, the unit pointing to it)
    for index, hit in enumerate(passages):
        title = _WHITESPACE.sub(" ", hit.title.strip().lower())
        if hit.document_id in quoted or len(title) < _REFERENCE_TITLE_CHARS:
            continue
        # The title names the target only when it ends the pointer: "you will see the Northwind Plus badge" is
        # no reference to the "Northwind Plus" article.
        pointer = re.compile(rf"\bsee\s+(?:our\s+|the\s+)?[\"“']?{re.escape(title)}[\"”']?{_POINTER_END}")
        referring = next((unit for unit in selected if pointer.search(_WHITESPACE.sub(" ", unit.text.lower()))), None)
        if referring is not None:
            pointed.append((len(title), index, referring))
    if not pointed:
        return list(selected)
    # The longest title that matches ("Shipping options and delivery times" rather than "Shipping").
    _, index, referring = max(pointed, key=lambda item: (item[0], -item[1]))
    siblings = [unit for unit in units if unit.passage == index]
    candidates = [unit for unit in siblings if unit.kind != "skip"]
    if not candidates:
        return list(selected)
    # What the pointer says is there ("how long the money takes … depends on your payment method") finds the part
    # of the article to quote, with the question's own terms.
    query = dict.fromkeys(referring.terms, 1.0) | dict(scorer.query)
    by_reference = _Scorer(units, query, passages)
    anchor = max(candidates, key=lambda unit: (by_reference.relevance(unit), -unit.position))
    return [*selected, *_window(siblings, _section_start(siblings, anchor), _REFERENCE_WORDS)]


def _section_start(siblings: Sequence[_Unit], anchor: _Unit) -> _Unit:
    """The first quotable unit of the anchor's section when the section up to the anchor fits a reference.

    A pointer to another article names a subject, not a sentence: its table is read from the first row.
    """
    start = end = siblings.index(anchor)
    while start > 0 and siblings[start - 1].headings == anchor.headings:
        start -= 1
    section = siblings[start : end + 1]
    if sum(_cost(unit) for unit in section) > _REFERENCE_WORDS:
        return anchor
    return next(unit for unit in section if unit.kind != "skip")


def _weighted(unit: _Unit, scorer: _Scorer) -> float:
    return scorer.relevance(unit) * scorer.passage_weights[unit.passage]


def _window(siblings: Sequence[_Unit], anchor: _Unit, budget: int) -> list[_Unit]:
    """Grow from the anchor forward first (the resolution tends to follow the symptom), then backward.

    A step of a numbered procedure brings the steps before it, from the first one.
    """
    index = next(i for i, unit in enumerate(siblings) if unit.position == anchor.position)
    start = end = index
    used = anchor.words
    # A step of a procedure is quoted from the procedure's first step: nobody can start at step 3.
    first = _first_step(siblings, index)
    if first is not None:
        steps = sum(_cost(unit) for unit in siblings[first:index])
        # A procedure may run longer than an answer's budget rather than be cut at its start.
        if used + steps <= max(budget, _PROCEDURE_WORDS):
            start, used = first, used + steps
    while end + 1 < len(siblings) and used + _cost(siblings[end + 1]) <= budget:
        if _is_bullet(anchor) and siblings[end + 1].kind not in {"item", "skip"}:
            # A bullet's quote ends with its list: the prose after it is another subject. (A procedure's steps go
            # on into what follows them: "We'll email you when your file is ready.")
            break
        end += 1
        used += _cost(siblings[end])
    # Backward, the window stays in the anchor's section: the end of the section before is another subject.
    while start > 0 and used + _cost(siblings[start - 1]) <= budget and siblings[start - 1].headings == anchor.headings:
        start -= 1
        used += _cost(siblings[start])
    # Growing backward stopped inside a procedure: its last steps alone would read as a broken list.
    while start < index and _first_step(siblings, start) is not None:
        start += 1
    chosen = [unit for unit in siblings[start : end + 1] if unit.kind != "skip"]
    return [_truncated(unit) if unit is anchor else unit for unit in chosen]


def _is_bullet(unit: _Unit) -> bool:
    """An item of an unordered list ("- Refunds go back to the original payment method.")."""
    return unit.kind == "item" and unit.text.lstrip()[:1] in {"-", "*", "•", "+"}


def _step_number(unit: _Unit) -> int | None:
    """The number of a numbered list item ("3. Select Save." is 3), None for anything else."""
    if unit.kind != "item":
        return None
    match = _STEP.match(unit.text)
    return int(match.group(1)) if match else None


def _first_step(siblings: Sequence[_Unit], index: int) -> int | None:
    """Where the numbered procedure holding ``siblings[index]`` starts, when that is before it.

    The unit is a step after the first, or a bullet under one; the list is the run of items before it, back to
    its step 1.
    """
    number = _step_number(siblings[index])
    if siblings[index].kind != "item" or number == 1:
        return None
    for position in range(index - 1, -1, -1):
        unit = siblings[position]
        # Chunk texts hold no headings, so the lists of two sections can sit next to each other here.
        if unit.kind != "item" or unit.headings != siblings[index].headings:
            return None
        if _step_number(unit) == 1:
            return position
    return None


def _cost(unit: _Unit) -> int:
    return 0 if unit.kind == "skip" else unit.words


def _truncated(unit: _Unit) -> _Unit:
    """A unit longer than the hard cap, cut at a word boundary (a long code listing, a run-on list item)."""
    if unit.words <= _HARD_CAP_WORDS:
        return unit
    pieces = re.findall(r"\S+\s*", unit.text)[:_HARD_CAP_WORDS]
    return replace(unit, text="".join(pieces).rstrip() + " …", words=_HARD_CAP_WORDS)


def _duplicates(unit: _Unit, chosen: Sequence[_Unit]) -> bool:
    terms = set(unit.terms)
    for other in chosen:
        theirs = set(other.terms)
        union = terms | theirs
        if union and len(terms & theirs) / len(union) >= _DUPLICATE_JACCARD:
            return True
    return False


def _evidence(
    passages: Sequence[SearchHit], units: Sequence[_Unit], selected: Sequence[_Unit], scorer: _Scorer
) -> _Evidence:
    similarities = sorted((hit.vector_similarity or 0.0 for hit in passages), reverse=True)
    top = similarities[0] if similarities else 0.0
    gap = top - similarities[1] if len(similarities) > 1 else top
    first = passages[0] if passages else None
    agreement = (_reciprocal(first.vector_rank) + _reciprocal(first.text_rank)) / 2 if first else 0.0
    source = selected[0].passage if selected else 0
    title = set(_terms(passages[source].title)) if passages else set()
    passage_terms = {term for unit in units if unit.passage == source for term in unit.terms} | title
    answer_terms = {term for unit in selected for term in unit.terms}
    return _Evidence(
        top_similarity=_clamp(top),
        similarity_gap=_clamp(gap),
        rank_agreement=agreement,
        passage_coverage=scorer.coverage(passage_terms),
        title_match=len(title & scorer.question_terms) / len(title) if title else 0.0,
        answer_coverage=scorer.coverage(answer_terms),
    )


def _reciprocal(rank: int | None) -> float:
    return 1 / rank if rank else 0.0


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def _answer_blocks(
    selected: Sequence[_Unit], passages: Sequence[SearchHit], name: str | None, order: str | None = None
) -> tuple[tuple[str, SearchHit | None, str], ...]:
    lead = f"{name}, here is what our help center says:\n\n" if name else "Here is what our help center says:\n\n"
    if order:
        # The customer asked about "my order" without naming it: say which one we mean.
        about = f"for your order {order}, here is what our help center says:\n\n"
        lead = f"{name}, {about}" if name else about[0].upper() + about[1:]
    blocks: list[tuple[str, SearchHit | None, str]] = []
    by_passage: dict[int, list[_Unit]] = {}
    for unit in selected:
        by_passage.setdefault(unit.passage, []).append(unit)
    for number, (index, group) in enumerate(by_passage.items()):
        text = _render(group)
        prefix = lead if number == 0 else "\n\n"
        blocks.append((prefix + text, _cited(passages[index], group), text))
    return tuple(blocks)


def _cited(hit: SearchHit, group: Sequence[_Unit]) -> SearchHit:
    """The chunk most of a quote comes from (a window may run across a chunk boundary)."""
    words: Counter[int | None] = Counter()
    for unit in group:
        words[unit.context] += unit.words
    context = words.most_common(1)[0][0]
    return hit if context is None else hit.at(hit.context[context])


def _render(units: Sequence[_Unit]) -> str:
    """Units in reading order: sentences of one paragraph run on, list items and code keep their own lines.

    Where the quote enters a section, and where it starts in a subsection, the section's heading goes first on a
    line of its own: "We don't give partial refunds." under "Monthly plan", or "Print the prepaid label" under
    "Small items", read as the whole policy without it (found by exploratory testing).
    """
    parts: list[str] = []
    previous: _Unit | None = None
    for unit in units:
        entered = unit.headings[-1:] != previous.headings[-1:] if previous is not None else len(unit.headings) > 1
        if previous is not None:
            same_paragraph = unit.paragraph == previous.paragraph and unit.kind == previous.kind == "sentence"
            parts.append(" " if same_paragraph and not entered else "\n")
        if entered and unit.headings:
            heading = unit.headings[-1].strip()
            parts.append(f"{heading}\n" if heading.endswith((":", "?", "!", ".")) else f"{heading}:\n")
        parts.append(unit.text)
        previous = unit
    return "".join(parts)


def _decline(
    request: ReplyRequest,
    units: Sequence[_Unit],
    scorer: _Scorer,
    name: str | None,
    score: float,
    order: str | None = None,
) -> Draft:
    """Say plainly that the help center does not answer this, name what came closest, and offer a human."""
    opening = f"Sorry, {name} — I" if name else "I"
    topic = _topic(request.newest or request.question)
    if request.passages:
        about = f" about “{topic}”" if topic else " to your question"
        first = f"{opening} couldn't find a clear answer{about} in our help center, so I'd rather not guess."
    else:
        about = f" about “{topic}”" if topic else " about this"
        first = f"{opening} couldn't find anything in our help center{about}, so I'd rather not guess."
    blocks: list[tuple[str, SearchHit | None, str]] = [(first, None, "")]
    suggestions = _suggestions(request.passages, units, scorer)
    for number, (hit, quote) in enumerate(suggestions):
        if number == 0:
            plural = "articles" if len(suggestions) > 1 else "article"
            text = f" The closest {plural} I found, which you may find useful: “{hit.title}”"
        else:
            text = f" and “{hit.title}”"
        blocks.append((text, hit, quote))
    if suggestions:
        missing = _missing_identifiers(request.question, scorer)
        verb = "they don't" if len(suggestions) > 1 else "it doesn't"
        blocks.append((f"; {verb} mention {missing}." if missing else ".", None, ""))
    if request.hands_over_if_unanswered:
        # A person is brought in now (the handover notice follows): an offer would ask what is already decided.
        if order:
            blocks.append((f" Someone from our support team can look into your order {order} directly.", None, ""))
    else:
        blocks.append((f" Would you like me to {_OFFER}?", None, ""))
        if order:
            blocks.append((f" They can look into your order {order} directly.", None, ""))
    detail = f"evidence score {score:.2f}" + (f"; closest: {suggestions[0][0].title}" if suggestions else "")
    return Draft(tuple(blocks), score, ReasonCode.INSUFFICIENT_EVIDENCE, detail)


def _suggestions(passages: Sequence[SearchHit], units: Sequence[_Unit], scorer: _Scorer) -> list[tuple[SearchHit, str]]:
    """Passages related enough to be worth naming, in retrieval order, each with its most relevant unit as quote.

    Related means a vector similarity that MiniLM gives to texts on the same subject; a hit found by full-text
    search alone needs a share of the question's terms instead.
    """
    found: list[tuple[SearchHit, str]] = []
    for index, hit in enumerate(passages):
        own = [unit for unit in units if unit.passage == index and unit.kind != "skip"]
        if not own or any(hit.title == named.title for named, _ in found):
            continue
        if hit.vector_similarity is not None:
            related = hit.vector_similarity >= _SUGGESTION_SIMILARITY
        else:
            related = scorer.coverage({term for unit in own for term in unit.terms}) >= _SUGGESTION_COVERAGE
        if related:
            best = max(own, key=lambda unit: (scorer.relevance(unit), -unit.position))
            found.append((hit, best.text))
        if len(found) == _SUGGESTIONS:
            break
    return found


def _topic(question: str) -> str:
    """What the message asks, to repeat back when it is short enough, else nothing.

    Its last question (a sentence ending in "?"), or else its last sentence naming a subject: "Hi, this is Sam."
    and "I placed another order." lead up to what is asked.
    """
    sentences = [_WHITESPACE.sub(" ", part).strip() for part in re.split(r"(?<=[?!.])\s|\n", question.strip())]
    meaningful = [sentence for sentence in sentences if _terms(sentence)]
    asked = [sentence for sentence in meaningful if sentence.endswith("?")]
    chosen = (asked or meaningful or [""])[-1].rstrip("?!. ")
    # A message that tries to instruct the assistant is not repeated back: the echo would read as the bot's own words.
    # Nor is one with a secret in it ("my password is Sonne123, why can't I log in"): the reply is stored and shown
    # to agents, so it must not carry what ``redact`` keeps out of summaries, prompts and logs.
    if contains_secret(chosen):
        return ""
    return chosen if 0 < len(chosen.split()) <= _TOPIC_WORDS and not is_instruction_like(chosen) else ""


def _missing_identifiers(question: str, scorer: _Scorer) -> str:
    """Codes and versions in the question (``E07``, ``8.5.5.4``, ``CVE-2017-3156``) that no passage contains.

    Read from the redacted question: a password ("Sonne123") looks like a code, and the reply that repeats these
    terms is stored and shown to agents.
    """
    missing: dict[tuple[str, ...], str] = {}
    for word in _IDENTIFIER.findall(redact(question)):
        stems = tuple(_stem(token) for token in WORD.findall(word.lower()))
        absent = all(scorer.idf.get(stem, 0.0) >= scorer.max_idf for stem in stems)
        # Long ones are hashes and ids pasted from logs, not names worth repeating.
        if stems and absent and len(word) <= _IDENTIFIER_CHARS:
            missing.setdefault(stems, word)
    quoted = [f"“{word}”" for word in list(missing.values())[:_MISSING_IDENTIFIERS]]
    return quoted[0] if len(quoted) == 1 else " or ".join(quoted)


def _quotes_other_codes(question: str, selected: Sequence[_Unit], scorer: _Scorer) -> bool:
    """Whether the question names a code no passage contains while the quote lists other codes of its shape.

    The customer's own order, ticket or invoice number is in no article and is not asked about; a quoted code of
    another shape (a form "RT-10", a promo code "SHIP25") is no other error code (found by a review).
    """
    redacted = redact(question)
    asked = {
        match[0].casefold()
        for match in _CODE.finditer(redacted)
        if not _OWN_REFERENCE_BEFORE.search(redacted[: match.start()])
    }
    missing = {
        code
        for code in asked
        if all(scorer.idf.get(_stem(token), scorer.max_idf) >= scorer.max_idf for token in WORD.findall(code))
    }
    if not missing:
        return False
    shapes = {_code_shape(code) for code in missing}
    quoted = {word.casefold() for unit in selected for word in _CODE.findall(unit.text)}
    return any(_code_shape(code) in shapes for code in quoted - asked)


def _code_shape(code: str) -> tuple[int, int]:
    """How many letters and digits a code has: "E03" and "E42" share a shape, "NW-48213" and "RT-10" do not."""
    return sum(char.isalpha() for char in code), sum(char.isdigit() for char in code)


def _asks_for_a_person(request: ReplyRequest) -> bool:
    """The customer asks for a person outright, or says yes right after this responder offered one."""
    if _WANTS_PERSON.search(request.question):
        return True
    last = request.history[-1] if request.history else None
    offered = last is not None and last.speaker == "assistant" and _OFFER in last.text
    return offered and _YES.fullmatch(request.question.strip()) is not None


def _small_talk(request: ReplyRequest, name: str | None) -> str:
    """A reply to a message with nothing to look up ("thanks!", "ok", "bye", "hi"): no search result can answer it."""
    question, comma = request.question, f", {name}" if name else ""
    last = request.history[-1] if request.history else None
    offered = last is not None and last.speaker == "assistant" and _OFFER in last.text
    if offered and _NO.fullmatch(question.strip()):
        return "All right, I won't bring anyone in. Is there anything else I can help you with?"
    if _FAREWELL.search(question):
        return f"You're welcome{comma}. Goodbye!" if _THANKS.search(question) else f"Goodbye{comma}!"
    if _THANKS.search(question):
        return f"You're welcome{comma}! Is there anything else I can help you with?"
    if last is not None and _ACKNOWLEDGED.fullmatch(question.strip()):
        return f"Great{comma}! Is there anything else I can help you with?"
    return f"Hi{' ' + name if name else ''}! Could you tell me a bit more about what you need help with?"


def _told(request: ReplyRequest, name: str | None) -> str | None:
    """A thank-you for a message that tells something (an email, an order number, a name) and asks nothing.

    Declining it ("I couldn't find a clear answer about “My email is …”") would count as a failed answer, and two
    in a row hand the conversation over. (Customer memory keeps what it says, after the turn.)
    """
    question = request.newest or request.question
    if "?" in question:
        return None
    # Every sentence with a subject must only tell something: "This is Sam. I'd like a garden bench." asks for one,
    # and "My order 12345678 hasn't arrived" or "My email is … and I can't log in" report a problem.
    facts: list[FactCandidate] = []
    telling = set(_terms(_TELLING_WORDS))
    for sentence in re.split(r"(?<=[!.])\s|\n", question):
        terms = set(_terms(sentence))
        if not terms:
            continue
        found = extract_facts(sentence)
        told = {term for fact in found for term in _terms(fact.value)}
        named = {term for word in re.findall(r"\b[A-Z][\w'-]*", sentence) for term in _terms(word)}
        if not found or terms - told - named - telling:
            return None
        facts += found
    if not facts:
        return None
    # "My name isn't Sam, it's Samuel": thanked by the name just given.
    name = _first_name(next((fact.value for fact in facts if fact.kind is FactKind.NAME), None)) or name
    return f"Thanks{', ' + name if name else ''}! What can I help you with?"


def _query_weights(request: ReplyRequest) -> dict[str, float]:
    weights: dict[str, float] = dict.fromkeys(_terms(request.question), 1.0)
    # A code or version the customer quotes ("E03", "8.5.5.4") names their case more closely than any word.
    for word in _IDENTIFIER.findall(request.question):
        for term in _terms(word):
            weights[term] = _IDENTIFIER_WEIGHT
    # A follow-up ("and for Plus?", "what does that mean?") is read with what it continues, as it was searched; a
    # new question is not ("How do I reset my password?" after refunds matched "long" in "10 characters long").
    if is_follow_up(request.question) or not weights:
        earlier = _last_customer_turn(request.history)
        # One that names at most one thing asks about what the customer said before, in full.
        weight = _HISTORY_WEIGHT if len(weights) > 1 else 1.0
        for term in _terms(earlier):
            weights.setdefault(term, weight)
        for word in _IDENTIFIER.findall(earlier):
            for term in _terms(word):
                weights[term] = max(weights.get(term, 0.0), weight * _IDENTIFIER_WEIGHT)
    for attachment in request.attachments:
        for term in _terms(attachment.text[:_ATTACHMENT_CHARS]):
            weights.setdefault(term, _ATTACHMENT_WEIGHT)
    return weights


def _asks_about_the_last_topic(request: ReplyRequest) -> bool:
    """A question that names nothing but points back ("What do I do now?") after the customer named something.

    Without a word pointing back, "Can you help me?" or "Is anyone there?" is small talk, not the last topic again.
    """
    question = request.question.strip()
    return (
        question.endswith("?")
        and len(question.split()) >= _TOPICLESS_QUESTION_WORDS
        and _POINTS_TO_LAST_TOPIC.search(question) is not None
        and bool(_terms(_last_customer_turn(request.history)))
    )


def _last_customer_turn(history: Sequence[Turn]) -> str:
    return next((turn.text for turn in reversed(history) if turn.speaker == "customer"), "")


_ASKS_TO_FORGET = re.compile(r"^\W*(?:please\s+)?(?:can|could|would|will)\s+you\b", re.IGNORECASE)
# What a request to forget is acknowledged for, named as in _OWN_LABELS: contact details, the name, the language.
_FORGETTABLE = {kind.value: kind for kind in (FactKind.NAME, FactKind.EMAIL, FactKind.PHONE, FactKind.LANGUAGE)}


def _forgotten(request: ReplyRequest, name: str | None) -> str | None:
    """The acknowledgement of a message that takes a fact back ("Please forget my phone number").

    Customer memory forgets it after the turn (``RememberFacts``); the customer is told so, and where the account
    itself is meant, who can change it. It was declined as a help-center question until 2026-12-07.
    """
    question = request.question
    if "?" in question and not _ASKS_TO_FORGET.match(question):
        return None  # it asks something else too: answered as a question
    # Contact details and names asked to be forgotten; "I cancelled my plan" tells news and is answered as such.
    retractions = [item for item in extract_retractions(question) if item.key in _FORGETTABLE]
    keys = [retraction.key for retraction in retractions if retraction.value is None]
    labels = [_OWN_LABELS[_FORGETTABLE[key]] for key in keys]
    # "I no longer use a@x.com" is forgotten only while that is the address remembered: said as what happens next.
    values = [retraction.value for retraction in retractions if retraction.value is not None]
    if not labels and not values:
        return None
    opening = f"Done{', ' + name if name else ''}:"
    if labels:
        what = labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]
        text = f"{opening} I've removed your {what} from what I remember about you."
    else:
        text = f"{opening} I won't use {' or '.join(values)} for you any more."
    if {candidate.key for candidate in extract_facts(question)} & {retraction.key for retraction in retractions}:
        text += " I'll use the new one you gave me from now on."
    text += " If it should also change on your account itself, I can connect you with someone from our support team."
    return text


def _recalled_answer(request: ReplyRequest) -> str | None:
    """The answer to "what's my email?" from what the customer told before, when memory recalled it for the turn."""
    asked = _ASKS_OWN.match(request.question.strip())
    if asked is None:
        return None
    kind = _OWN_KINDS[asked.group("what").split()[0].casefold().replace("e-mail", "email")]
    value = _remembered(request, kind) or (request.customer_name if kind is FactKind.NAME else None)
    if not value:
        return None  # nothing on record: the help center may still say where to find it
    return f"The {_OWN_LABELS[kind]} I have for you is {value}. If that's not right, just tell me the correct one."


def _remembered(request: ReplyRequest, kind: FactKind) -> str | None:
    """The recalled value of a fact kind, if customer memory has one for this turn."""
    return next((fact.value for fact in request.memories if fact.kind is kind), None)


def _known_order(request: ReplyRequest) -> str | None:
    """The remembered order number, when the question is about an order or its delivery and names none itself."""
    order = _remembered(request, FactKind.ORDER_NUMBER)
    if order is None or not is_about(FactKind.ORDER_NUMBER.value, request.question):
        return None
    if order in request.question or any(fact.kind is FactKind.ORDER_NUMBER for fact in extract_facts(request.question)):
        return None
    return order if re.fullmatch(r"[A-Za-z0-9#-]{3,32}", order) else None


def _first_name(name: str | None) -> str | None:
    """The first word of the customer's name, if it looks like a name (it is untrusted input)."""
    if not name:
        return None
    first = name.strip().split(maxsplit=1)[0] if name.strip() else ""
    return first if 0 < len(first) <= _NAME_CHARS and re.fullmatch(r"[^\W\d_][\w'\u2019.-]*", first) else None


def _terms(text: str) -> list[str]:
    return [_stem(token) for token in WORD.findall(text.lower()) if token not in STOPWORDS]


@functools.lru_cache(maxsize=65_536)
def _stem(word: str) -> str:
    """Light suffix stripping so that ``configure``, ``configured``, ``configuring`` and ``configures`` meet."""
    if len(word) > 1 and word[0] == "v" and word[1].isdigit():
        return word[1:]  # v8.5 is 8.5
    if len(word) <= _STEM_KEEP or not word.isalpha():
        return word
    if word.endswith("ies"):
        word = _cut(word, "ies", "y")
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = _cut(word, "s")
    if word.endswith("ing"):
        word = _cut(word, "ing")
    elif word.endswith("ed"):
        word = _cut(word, "ed")
    if word.endswith("e"):
        word = _cut(word, "e")
    return word


def _cut(word: str, suffix: str, replacement: str = "") -> str:
    stem = word[: -len(suffix)]
    return stem + replacement if len(stem) >= _STEM_KEEP else word


def _split(hit: SearchHit, passage: int) -> list[_Unit]:
    """The passage's units in reading order (see :func:`_chunk_units`)."""
    return list(_chunk_units(hit.text, hit.title, bool(hit.flags), passage, hit.heading_path))


# Splitting is most of a reply's work, and a help center's popular chunks come back turn after turn: units depend
# only on the text, the title, the headings, whether the chunk is flagged and the passage's rank, so they are kept
# (immutable).
@functools.lru_cache(maxsize=2048)
def _chunk_units(
    chunk_text: str, title: str, flagged: bool, passage: int, headings: tuple[str, ...]
) -> tuple[_Unit, ...]:
    """A chunk's units in reading order; headings, link-only lines and title repeats are marked ``skip``.

    So is every unit of a flagged chunk that reads as an instruction to an AI (support.domain.injection): the
    reply quotes articles to the customer, and such a sentence is never an answer (nor a code block faking a tool
    call).
    """
    units: list[_Unit] = []
    section = frozenset(term for heading in headings for term in _terms(heading))
    title = _normalise(title)
    for paragraph, (texts, lines) in enumerate(_paragraphs(strip_invisible(chunk_text))):
        for text, kind in texts:
            terms = _terms(text)
            if (
                kind != "code"
                and (
                    not (_terms(_URL.sub(" ", text)) if _URL.search(text) else terms)
                    or (kind == "sentence" and (_is_heading(text, lines) or _CROSS_REFERENCE.match(text)))
                    or _repeats_title(text, title)
                )
            ) or (flagged and is_instruction_like(text)):
                kind = "skip"  # noqa: PLW2901 - the unit stays, for reading order, but is never quoted
            units.append(
                _Unit(
                    passage,
                    len(units),
                    text,
                    kind,
                    paragraph,
                    Counter(terms),
                    _words(text),
                    headings=headings,
                    section=section,
                )
            )
    return tuple(units)


def _repeats_title(text: str, title: str) -> bool:
    """The unit is the article's title again ("Title: …" at the top of an extracted page), not a sentence using it.

    A short title ("Northwind Plus", "Two-factor authentication") also appears in sentences that answer; a title
    line has no closing punctuation.
    """
    if not title or text.rstrip().endswith((".", "!", "?")):
        return False
    normalised = _normalise(text)
    words = len(normalised.split())
    return f" {title} " in f" {normalised} " and words <= len(title.split()) + _TITLE_LINE_EXTRA_WORDS


def _split_with_context(hit: SearchHit, passage: int) -> list[_Unit]:
    """The units of the hit's chunk and of its neighbouring chunks in document order (see :func:`_neighbourhood`)."""
    chunks = tuple(
        (text, bool(flags), index, hit.heading_path if index is None else hit.context[index].heading_path)
        for index, text, flags in hit.in_article_order()
    )
    return list(_neighbourhood(chunks, hit.title, passage))


@functools.lru_cache(maxsize=512)
def _neighbourhood(
    chunks: tuple[tuple[str, bool, int | None, tuple[str, ...]], ...], title: str, passage: int
) -> tuple[_Unit, ...]:
    """The units of consecutive chunks (text, flagged, context index, headings) in reading order.

    Chunks repeat the previous chunk's last sentences (the chunker's overlap): those are read once.
    Positions and paragraph numbers run on across chunks, so a window can grow over a chunk boundary.
    """
    units: list[_Unit] = []
    previous: tuple[_Unit, ...] = ()
    paragraphs = 0
    for text, flagged, context, headings in chunks:
        own = _chunk_units(text, title, flagged, passage, headings)
        overlap = _overlap(own, previous)
        for unit in own[overlap:]:
            units.append(replace(unit, position=len(units), paragraph=paragraphs + unit.paragraph, context=context))
        previous = own
        paragraphs += 1 + max((unit.paragraph for unit in own), default=0)
    return tuple(units)


def _overlap(own: Sequence[_Unit], previous: Sequence[_Unit]) -> int:
    """How many of a chunk's leading units repeat the end of the chunk before it (the chunker's overlap).

    The overlap never crosses a section, and it may start inside a unit of the previous chunk ("Select Pair."
    from "2. Select Pair."). The same words elsewhere in an article ("1. Go to Account > Membership." opening
    two procedures) are content of their own.
    """
    if not own or not previous or own[0].headings != previous[0].headings:
        return 0
    earlier = [unit.text for unit in previous]
    count = 0
    for unit in own:
        if not any(text.endswith(unit.text) for text in earlier):
            break
        count += 1
    return count


def _paragraphs(text: str) -> Iterator[tuple[list[tuple[str, str]], int]]:
    """Each list item, table row, code block or prose paragraph as its units, with its number of source lines."""
    for block in _blocks(text):
        if block[0].lstrip().startswith("```"):
            yield [("\n".join(block), "code")], len(block)
        elif all("|" in line for line in block) and any(
            " | " in line or line.lstrip().startswith("|") for line in block
        ):
            yield from (([(row, "item")], 1) for row in _table_rows(block))
        else:
            items: list[list[str]] = []
            for line in block:
                if not items or _BULLET.match(line):
                    items.append([line])
                else:
                    items[-1].append(line)
            yield from ((_item_units(item), len(item)) for item in items)


def _blocks(text: str) -> Iterator[list[str]]:
    """Runs of non-blank lines; a fenced code block (```) is one run even across blank lines."""
    block: list[str] = []
    fenced = False
    for raw in text.split("\n"):
        line = raw.rstrip()
        if line.lstrip().startswith("```"):
            if not fenced and block:
                yield block
                block = []
            block.append(line)
            if fenced:
                yield block
                block = []
            fenced = not fenced
        elif fenced:
            block.append(line)
        elif line.strip():
            block.append(line.removeprefix("> ") if line.startswith(">") else line)
        elif block:
            yield block
            block = []
    if block:
        yield block


def _table_rows(lines: Sequence[str]) -> Iterator[str]:
    """A table's rows: ``header: value; header: value`` under a Markdown header, else the cells as they are.

    Extracted documents keep tables as ``a | b | c`` lines; a chunk cut from the middle of a table has no header.
    """
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    separator = next(
        (i for i, row in enumerate(rows) if all(re.fullmatch(r":?-{2,}:?", cell) or not cell for cell in row)), None
    )
    if separator != 1:
        yield from (" | ".join(cell for cell in row if cell) for row in rows if any(row))
        return
    rows = [row for i, row in enumerate(rows) if i != separator]
    header, *body = rows
    for row in body:
        pairs = [f"{name}: {cell}" if name else cell for name, cell in zip(header, row, strict=False) if cell]
        yield "; ".join(pairs)


def _item_units(lines: Sequence[str]) -> list[tuple[str, str]]:
    if len(lines) > 1 and sum(1 for line in lines if _CODE_LINE.search(line)) * 2 >= len(lines):
        indent = min(len(line) - len(line.lstrip()) for line in lines)
        return [("\n".join(line[indent:] for line in lines), "code")]
    joined = _WHITESPACE.sub(" ", " ".join(line.strip() for line in lines)).strip()
    marker = _BULLET.match(joined)
    if marker:
        body = joined[marker.end() :].strip()
        symbol = marker.group().strip()
        prefix = "-" if symbol in {"*", "•", "+", "-"} else symbol
        return [(f"{prefix} {body}", "item")] if body else []
    return [(sentence, "sentence") for sentence in _sentences(joined)]


def _sentences(text: str) -> list[str]:
    sentences: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if sentences and _ABBREVIATION.search(sentences[-1]):
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    return [sentence.strip() for sentence in sentences if sentence.strip()]


def _is_heading(text: str, lines: int) -> bool:
    """A Markdown heading, or a short single line without closing punctuation (``RESOLVING THE PROBLEM``)."""
    if text.startswith("#"):
        return True
    short = len(text.split()) <= 6  # noqa: PLR2004 - headings are a few words
    return lines == 1 and short and not text.rstrip().endswith((".", "!", "?", ":", ";", ","))


def _normalise(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))


def _words(text: str) -> int:
    return len(text.split())


def _pieces(text: str, words: int) -> Iterator[str]:
    """``text`` in pieces of a few words each; the pieces concatenate back to exactly ``text``."""
    tokens = re.findall(r"\S+\s*|\s+", text)
    for start in range(0, len(tokens), words):
        yield "".join(tokens[start : start + words])
