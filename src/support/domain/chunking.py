"""Structure-aware chunking: split extracted documents into pieces that fit the embedder's token budget."""

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeAlias

from support.domain.knowledge import Chunk, ExtractedDocument

TokenCounter: TypeAlias = Callable[[str], int]

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# A sentence ends at . ! ? or an ellipsis, optionally followed by a closing quote or bracket, then a space.
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?\u2026])|(?<=[.!?\u2026][\"'\u201d\u2019)\]]))[ \t]+")

# The line under a table's header: "--- | ---", with optional outer pipes and alignment colons.
_TABLE_RULE = re.compile(r"\s*\|?\s*:?-{3,}:?\s*(?:\|\s*:?-{3,}:?\s*)+\|?\s*")
# A numbered or lettered list item's marker at the start of a line (indentation kept).
_LIST_MARKER = re.compile(r"\s*(?:\d{1,3}|[A-Za-z])[.)]")
# A chunk's characters are bounded as well as its tokens: the embedder's WordPiece tokenizer counts a "word" of more
# than 100 characters as one unknown token, so a run of one letter or a long blob would otherwise be one chunk of
# any length (a 200,000-character line was one 200 KB chunk).
CHARACTERS_PER_TOKEN = 12
_PARAGRAPH_SEPARATOR = "\n\n"
_LINE_SEPARATOR = "\n"
_WORD_SEPARATOR = " "


@dataclass(frozen=True, slots=True)
class _Piece:
    """The smallest unit that is packed: a sentence, a line, or a run of words of an over-long sentence."""

    text: str
    tokens: int
    separator: str  # how this piece is joined to the piece before it, when both land in one chunk
    # For a table row, the table's header line and its ``--- | ---`` line, as one piece: a chunk that begins in the
    # middle of a table begins with them.
    header: "_Piece | None" = None
    # A table row or part of one: never carried as overlap (a chunk would begin in the middle of a row, or with rows
    # above the header the next chunk repeats).
    row: bool = False


def chunk_document(
    document: ExtractedDocument,
    *,
    count_tokens: TokenCounter,
    max_tokens: int = 200,
    overlap_tokens: int = 30,
) -> list[Chunk]:
    """Split a document into chunks of at most ``max_tokens``, section by section.

    A chunk never spans two sections and keeps its section's heading path. Inside a section the text is cut
    at paragraph breaks, then lines and sentences, then words (only for a sentence longer than the budget),
    and consecutive pieces are packed up to ``max_tokens``. The next chunk of the same section starts with
    the trailing sentences of the previous one, up to ``overlap_tokens``, so a fact split across a boundary
    stays retrievable. Whitespace-only sections yield nothing. The result is deterministic.

    Args:
        document: The extracted document.
        count_tokens: Counts the embedder's tokens in a text (``Embedder.count_tokens``).
        max_tokens: Upper bound on every chunk's token count.
        overlap_tokens: Upper bound on the text repeated from the previous chunk of the same section.

    Returns:
        The chunks in document order, with ordinals 0..n-1.

    Raises:
        ValueError: ``max_tokens`` is not positive, or ``overlap_tokens`` is negative or not below it.
    """
    if max_tokens < 1:
        msg = f"max_tokens must be positive, got {max_tokens}"
        raise ValueError(msg)
    if not 0 <= overlap_tokens < max_tokens:
        msg = f"overlap_tokens must be in [0, max_tokens), got {overlap_tokens}"
        raise ValueError(msg)
    budget = _Budget(count_tokens, max_tokens, max_tokens * CHARACTERS_PER_TOKEN)
    chunks: list[Chunk] = []
    for section in document.sections:
        if not section.text.strip():
            continue
        pieces = _split_section(section.text, budget)
        for text, tokens in _pack(pieces, budget, overlap_tokens):
            chunks.append(Chunk(ordinal=len(chunks), heading_path=section.heading_path, text=text, token_count=tokens))
    return chunks


@dataclass(frozen=True, slots=True)
class _Budget:
    """What one chunk may hold: ``max_tokens`` as counted by ``count_tokens``, and ``max_chars`` characters."""

    count_tokens: TokenCounter
    max_tokens: int
    max_chars: int

    def count(self, text: str) -> int:
        """The text's tokens, or any count over the budget for a text past ``max_chars``.

        Such a text cannot fit anyway, and counting a megabyte-long line takes a while.
        """
        return self.count_tokens(text) if len(text) <= self.max_chars else self.max_tokens + 1

    def fits(self, chars: int, tokens: int) -> bool:
        return tokens <= self.max_tokens and chars <= self.max_chars


def _split_section(text: str, budget: _Budget) -> Iterator[_Piece]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    first_in_section = True
    for paragraph in _PARAGRAPH_BREAK.split(text):
        first_in_paragraph = True
        tables = _Tables(budget)
        # Leading whitespace is kept: it carries the indentation of code and nested lists.
        lines = [line for line in (raw_line.rstrip() for raw_line in paragraph.split("\n")) if line.strip()]
        for index, line in enumerate(lines):
            row_header = tables.header_of(line)
            is_row = tables.in_rows
            # A table's lines are packed whole, as a row cut at a sentence left its end at the top of the next chunk
            # ("Light pattern: 3 blinks.", and no header there): only a line longer than a chunk is cut.
            whole = is_row or _is_table_head(line, lines[index + 1] if index + 1 < len(lines) else "")
            first_in_line = True
            for sentence, tokens in _units(line, budget, whole=whole):
                if first_in_section:
                    separator = ""
                elif first_in_paragraph:
                    separator = _PARAGRAPH_SEPARATOR
                elif first_in_line:
                    separator = _LINE_SEPARATOR
                else:
                    separator = _WORD_SEPARATOR
                first_in_section = first_in_paragraph = first_in_line = False
                if budget.fits(len(sentence), tokens):
                    yield _Piece(sentence, tokens, separator, row_header, is_row)
                    continue
                for cut, (fragment, fragment_tokens) in enumerate(_split_words(sentence, budget)):
                    yield _Piece(
                        fragment, fragment_tokens, separator if cut == 0 else _WORD_SEPARATOR, row_header, is_row
                    )


def _units(line: str, budget: _Budget, *, whole: bool) -> list[tuple[str, int]]:
    """The line's sentences and their tokens; the line itself when it is to be kept ``whole`` and fits a chunk."""
    if whole:
        tokens = budget.count(line)
        if budget.fits(len(line), tokens):
            return [(line, tokens)]
    return [(sentence, budget.count(sentence)) for sentence in _sentences(line)]


def _is_table_head(line: str, next_line: str) -> bool:
    """Whether ``line`` is a table's header line (the rule follows it) or its ``--- | ---`` rule."""
    return bool(_TABLE_RULE.fullmatch(line)) or ("|" in line and bool(_TABLE_RULE.fullmatch(next_line)))


class _Tables:
    """The table a paragraph's lines are in, if any: the header piece its rows carry."""

    def __init__(self, budget: _Budget) -> None:
        self._budget = budget
        self._previous = ""
        self._header: _Piece | None = None
        self._under_rule = False
        self.in_rows = False  # whether the last line given is a row of a table (under its rule)

    def header_of(self, line: str) -> _Piece | None:
        """The header piece of the table whose row ``line`` is (None for any other line); lines go in order."""
        previous, self._previous = self._previous, line
        if _TABLE_RULE.fullmatch(line) and "|" in previous:
            text = f"{previous}\n{line}"
            header = _Piece(text, self._budget.count(text), "")
            # A header that leaves no room for a row is not repeated.
            self._header = header if self._budget.fits(len(text), header.tokens * 2) else None
            self._under_rule, self.in_rows = True, False
            return None
        if "|" not in line:
            self._header = None
            self._under_rule = False
        self.in_rows = self._under_rule
        return self._header


def _sentences(line: str) -> list[str]:
    """The line's sentences; a list marker ("3.", "b)") stays with its text, so no chunk ends on a bare marker."""
    pieces = _SENTENCE_BREAK.split(line)
    if len(pieces) > 1 and _LIST_MARKER.fullmatch(pieces[0]):
        pieces[:2] = [f"{pieces[0]} {pieces[1]}"]
    return pieces


def _split_words(sentence: str, budget: _Budget) -> Iterator[tuple[str, int]]:
    """Cut an over-long sentence into runs of whole words, each within the budget."""
    run: list[str] = []
    run_tokens = run_chars = 0
    for word in sentence.split():
        word_tokens = budget.count(word)
        if not budget.fits(len(word), word_tokens):
            if run:
                yield from _fitting(run, budget)
                run, run_tokens, run_chars = [], 0, 0
            yield from _split_characters(word, budget)
            continue
        if run and not budget.fits(run_chars + 1 + len(word), run_tokens + word_tokens):
            yield from _fitting(run, budget)
            run, run_tokens, run_chars = [], 0, 0
        run.append(word)
        run_tokens += word_tokens
        run_chars += len(word) + (1 if len(run) > 1 else 0)
    if run:
        yield from _fitting(run, budget)


def _fitting(words: list[str], budget: _Budget) -> Iterator[tuple[str, int]]:
    """Join words, halving the run if the counter is not additive over words and the whole is too long."""
    text = _WORD_SEPARATOR.join(words)
    tokens = budget.count_tokens(text)
    if budget.fits(len(text), tokens) or len(words) == 1:
        yield text, tokens
        return
    middle = len(words) // 2
    yield from _fitting(words[:middle], budget)
    yield from _fitting(words[middle:], budget)


def _split_characters(word: str, budget: _Budget) -> Iterator[tuple[str, int]]:
    """Cut a single word longer than the budget (a long URL, a hash) into the longest fitting prefixes.

    Each cut is searched for within the next ``max_chars`` characters only, so a megabyte-long "word" costs time in
    proportion to its length (searching the whole rest for every cut was quadratic: minutes of a blocked server).
    """
    start = 0
    previous = 0  # the length of the previous cut: the next one is about as long
    while start < len(word):
        window = word[start : start + budget.max_chars]
        if previous == 0 or previous >= len(window):
            tokens = budget.count_tokens(window)
            guess = len(window) if tokens <= budget.max_tokens else len(window) * budget.max_tokens // tokens
        else:
            guess = previous
        length, tokens = _longest_fitting(window, guess, budget)
        previous = length
        yield window[:length], tokens
        start += length


def _longest_fitting(window: str, guess: int, budget: _Budget) -> tuple[int, int]:
    """The length of the longest prefix of ``window`` within the budget, searched from ``guess`` outward.

    Tokens are spread about evenly over such a "word", so the guess (the previous cut's length, or the proportional
    one) is close: doubling steps bracket the answer and a binary search finds it, a few counts of short prefixes
    per cut. A window that fits whole is returned whole. Returns the length and its token count.
    """
    counted: dict[int, int] = {}

    def fits(length: int) -> bool:
        counted[length] = budget.count_tokens(window[:length])
        return counted[length] <= budget.max_tokens

    guess = min(len(window), max(1, guess))
    step = max(1, guess // 16)
    if fits(guess):
        if guess == len(window):
            return guess, counted[guess]
        low, high = guess, min(len(window), guess + step)
        while fits(high):
            if high == len(window):
                return high, counted[high]
            low, high, step = high, min(len(window), high + 2 * step), 2 * step
    else:
        low, high = max(1, guess - step), guess
        while low > 1 and not fits(low):
            low, high, step = max(1, low - 2 * step), low, 2 * step
    # Invariant: window[:low] fits (assumed for one character), window[:high] does not.
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low, counted[low] if low in counted else budget.count_tokens(window[:low])


def _pack(pieces: Iterator[_Piece], budget: _Budget, overlap_tokens: int) -> Iterator[tuple[str, int]]:
    current: list[_Piece] = []
    current_tokens = current_chars = 0
    has_new_text = False  # False while ``current`` holds only overlap carried from the previous chunk

    def too_full(piece: _Piece) -> bool:
        return not budget.fits(current_chars + len(piece.separator) + len(piece.text), current_tokens + piece.tokens)

    for piece in pieces:
        if current and too_full(piece):
            if has_new_text:
                yield from _emit(current, budget)
                current = _trailing_overlap(current, overlap_tokens)
                current_tokens = sum(carried.tokens for carried in current)
                current_chars = _length(current)
                has_new_text = False
            # Overlap is a nicety: give it up, oldest first, rather than let it push the new piece out.
            while current and too_full(piece):
                current_tokens -= current.pop(0).tokens
                current_chars = _length(current)
        header = piece.header
        starts_row = header is not None and piece.separator == _LINE_SEPARATOR
        if header is not None and starts_row and not has_new_text and header not in current:
            # A table goes on in a new chunk: its rows come under their header again, instead of the overlap (rows
            # without it are cells without names: "E04 | Handset not communicating | Unplug power.").
            joined = len(header.text) + len(piece.separator) + len(piece.text)
            if budget.fits(joined, header.tokens + piece.tokens):
                current = [header]
                current_tokens, current_chars = header.tokens, len(header.text)
        current.append(piece)
        current_tokens += piece.tokens
        current_chars = _length(current)
        has_new_text = True
    if has_new_text:
        yield from _emit(current, budget)


def _length(pieces: list[_Piece]) -> int:
    """Characters of the pieces joined (the first one's separator is dropped)."""
    if not pieces:
        return 0
    return sum(len(piece.separator) + len(piece.text) for piece in pieces) - len(pieces[0].separator)


def _trailing_overlap(emitted: list[_Piece], overlap_tokens: int) -> list[_Piece]:
    carried = 0
    tokens = 0
    # Never carry the whole chunk: repeating it entirely adds nothing to retrieval. Nor a table's rows: a table that
    # goes on starts again under its header (_pack), and a row's last sentence alone is a cell without its row.
    while (
        carried < len(emitted) - 1
        and not emitted[-1 - carried].row
        and tokens + emitted[-1 - carried].tokens <= overlap_tokens
    ):
        tokens += emitted[-1 - carried].tokens
        carried += 1
    return emitted[len(emitted) - carried :]


def _emit(pieces: list[_Piece], budget: _Budget) -> Iterator[tuple[str, int]]:
    """Join pieces into one chunk; split it in two if the counter is not additive and the whole is too long."""
    text = pieces[0].text + "".join(piece.separator + piece.text for piece in pieces[1:])
    tokens = budget.count_tokens(text)
    if budget.fits(len(text), tokens) or len(pieces) == 1:
        yield text, tokens
        return
    middle = len(pieces) // 2
    yield from _emit(pieces[:middle], budget)
    yield from _emit(pieces[middle:], budget)
