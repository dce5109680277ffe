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

# A numbered or lettered list item's marker at the start of a line (indentation kept).
_LIST_MARKER = re.compile(r"\s*(?:\d{1,3}|[A-Za-z])[.)]")
_PARAGRAPH_SEPARATOR = "\n\n"
_LINE_SEPARATOR = "\n"
_WORD_SEPARATOR = " "


@dataclass(frozen=True, slots=True)
class _Piece:
    """The smallest unit that is packed: a sentence, a line, or a run of words of an over-long sentence."""

    text: str
    tokens: int
    separator: str  # how this piece is joined to the piece before it, when both land in one chunk


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
    chunks: list[Chunk] = []
    for section in document.sections:
        if not section.text.strip():
            continue
        pieces = _split_section(section.text, count_tokens, max_tokens)
        for text, tokens in _pack(pieces, count_tokens, max_tokens, overlap_tokens):
            chunks.append(Chunk(ordinal=len(chunks), heading_path=section.heading_path, text=text, token_count=tokens))
    return chunks


def _split_section(text: str, count_tokens: TokenCounter, max_tokens: int) -> Iterator[_Piece]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    first_in_section = True
    for paragraph in _PARAGRAPH_BREAK.split(text):
        first_in_paragraph = True
        for raw_line in paragraph.split("\n"):
            # Leading whitespace is kept: it carries the indentation of code and nested lists.
            line = raw_line.rstrip()
            if not line.strip():
                continue
            first_in_line = True
            for sentence in _sentences(line):
                if first_in_section:
                    separator = ""
                elif first_in_paragraph:
                    separator = _PARAGRAPH_SEPARATOR
                elif first_in_line:
                    separator = _LINE_SEPARATOR
                else:
                    separator = _WORD_SEPARATOR
                first_in_section = first_in_paragraph = first_in_line = False
                tokens = count_tokens(sentence)
                if tokens <= max_tokens:
                    yield _Piece(sentence, tokens, separator)
                    continue
                for index, (fragment, fragment_tokens) in enumerate(_split_words(sentence, count_tokens, max_tokens)):
                    yield _Piece(fragment, fragment_tokens, separator if index == 0 else _WORD_SEPARATOR)


def _sentences(line: str) -> list[str]:
    """The line's sentences; a list marker ("3.", "b)") stays with its text, so no chunk ends on a bare marker."""
    pieces = _SENTENCE_BREAK.split(line)
    if len(pieces) > 1 and _LIST_MARKER.fullmatch(pieces[0]):
        pieces[:2] = [f"{pieces[0]} {pieces[1]}"]
    return pieces


def _split_words(sentence: str, count_tokens: TokenCounter, max_tokens: int) -> Iterator[tuple[str, int]]:
    """Cut an over-long sentence into runs of whole words, each within the budget."""
    run: list[str] = []
    run_tokens = 0
    for word in sentence.split():
        word_tokens = count_tokens(word)
        if word_tokens > max_tokens:
            if run:
                yield from _fitting(run, count_tokens, max_tokens)
                run, run_tokens = [], 0
            yield from _split_characters(word, count_tokens, max_tokens)
            continue
        if run and run_tokens + word_tokens > max_tokens:
            yield from _fitting(run, count_tokens, max_tokens)
            run, run_tokens = [], 0
        run.append(word)
        run_tokens += word_tokens
    if run:
        yield from _fitting(run, count_tokens, max_tokens)


def _fitting(words: list[str], count_tokens: TokenCounter, max_tokens: int) -> Iterator[tuple[str, int]]:
    """Join words, halving the run if the counter is not additive over words and the whole is too long."""
    text = _WORD_SEPARATOR.join(words)
    tokens = count_tokens(text)
    if tokens <= max_tokens or len(words) == 1:
        yield text, tokens
        return
    middle = len(words) // 2
    yield from _fitting(words[:middle], count_tokens, max_tokens)
    yield from _fitting(words[middle:], count_tokens, max_tokens)


def _split_characters(word: str, count_tokens: TokenCounter, max_tokens: int) -> Iterator[tuple[str, int]]:
    """Cut a single word longer than the budget (a long URL, a hash) into the longest fitting prefixes."""
    rest = word
    while rest:
        tokens = count_tokens(rest)
        if tokens <= max_tokens:
            yield rest, tokens
            return
        low, high = 1, len(rest)  # invariant: rest[:low] fits (assumed for one character), rest[:high] does not
        while high - low > 1:
            middle = (low + high) // 2
            if count_tokens(rest[:middle]) <= max_tokens:
                low = middle
            else:
                high = middle
        yield rest[:low], count_tokens(rest[:low])
        rest = rest[low:]


def _pack(
    pieces: Iterator[_Piece], count_tokens: TokenCounter, max_tokens: int, overlap_tokens: int
) -> Iterator[tuple[str, int]]:
    current: list[_Piece] = []
    current_tokens = 0
    has_new_text = False  # False while ``current`` holds only overlap carried from the previous chunk
    for piece in pieces:
        if current and current_tokens + piece.tokens > max_tokens:
            if has_new_text:
                yield from _emit(current, count_tokens, max_tokens)
                current = _trailing_overlap(current, overlap_tokens)
                current_tokens = sum(carried.tokens for carried in current)
                has_new_text = False
            # Overlap is a nicety: give it up, oldest first, rather than let it push the new piece out.
            while current and current_tokens + piece.tokens > max_tokens:
                current_tokens -= current.pop(0).tokens
        current.append(piece)
        current_tokens += piece.tokens
        has_new_text = True
    if has_new_text:
        yield from _emit(current, count_tokens, max_tokens)


def _trailing_overlap(emitted: list[_Piece], overlap_tokens: int) -> list[_Piece]:
    carried = 0
    tokens = 0
    # Never carry the whole chunk: repeating it entirely adds nothing to retrieval.
    while carried < len(emitted) - 1 and tokens + emitted[-1 - carried].tokens <= overlap_tokens:
        tokens += emitted[-1 - carried].tokens
        carried += 1
    return emitted[len(emitted) - carried :]


def _emit(pieces: list[_Piece], count_tokens: TokenCounter, max_tokens: int) -> Iterator[tuple[str, int]]:
    """Join pieces into one chunk; split it in two if the counter is not additive and the whole is too long."""
    text = pieces[0].text + "".join(piece.separator + piece.text for piece in pieces[1:])
    tokens = count_tokens(text)
    if tokens <= max_tokens or len(pieces) == 1:
        yield text, tokens
        return
    middle = len(pieces) // 2
    yield from _emit(pieces[:middle], count_tokens, max_tokens)
    yield from _emit(pieces[middle:], count_tokens, max_tokens)
