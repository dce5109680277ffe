"""Knowledge-base entities: extracted documents, their sections and the chunks that get indexed."""

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit
from uuid import UUID

from support.domain.errors import InvalidInputError, UnsupportedContentTypeError
from support.domain.injection import InjectionFlag, InjectionReason, reasons_of

# Hybrid retrieval fuses a vector ranking and a lexical ranking of chunks by reciprocal rank fusion; every
# knowledge base adapter fuses with these, so the in-memory fake ranks the way PostgreSQL does.
# The constant is far smaller than the customary 60: it trusts the top of each ranking, so a document that only
# one ranking puts first is not buried under documents both rank middling. On TechQA k=3..5 tied on the
# odd-numbered questions (tuning half) and beat k=10 on the even ones (docs/knowledge.md).
RRF_K = 4
# How many candidates each ranking contributes before fusion and per-document deduplication.
RRF_CANDIDATES = 40

# A document's tags, however they come in (a JSON body, an upload form, a JSON-lines file, front matter).
MAX_TAGS = 50
MAX_TAG_LENGTH = 100

# Free-form string pairs kept with a document (and, through the API's shared ``Metadata`` type, a conversation):
# bounded, so no request can make a stored row arbitrarily large. The API's body type states the same numbers.
MAX_METADATA_ENTRIES = 50
MAX_METADATA_KEY_LENGTH = 100
MAX_METADATA_VALUE_LENGTH = 1000

MAX_DOCUMENT_URL_LENGTH = 2000
# Characters no url holds: C0 and C1 controls, spaces and DEL, and every other Unicode space. Spelt out rather
# than "\s", whose meaning differs between Python (U+0085 is a space) and ECMAScript (U+FEFF is), so that the
# OpenAPI document, its fuzzers and the service refuse the same urls.
_NOT_IN_URL = r"\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# What a document's url may be, as the API states it (OpenAPI ``pattern``, ECMAScript and Python alike): empty, or
# http(s)://, a host part without spaces, control characters, "@" or "\\", then anything without spaces or control
# characters. validate_document_url checks the same, and that the host part holds a host.
DOCUMENT_URL_PATTERN = rf"^(?:[Hh][Tt][Tt][Pp][Ss]?://[^{_NOT_IN_URL}/?#@\\]+(?:[/?#][^{_NOT_IN_URL}]*)?)?$"
_DOCUMENT_URL = re.compile(DOCUMENT_URL_PATTERN)


def validate_document_url(url: str | None) -> str | None:
    """The URL a document is cited by; None when there is none (absent or empty).

    Customers see it as the link of a citation, so it must be an absolute ``http://`` or ``https://`` URL with a
    host: a ``javascript:`` or ``data:`` URL would run script in the page that shows the link, and a relative one
    would point into that page's own site. Credentials (``https://help.example.com@evil.example/``, which reads as
    one host and goes to another), spaces and control characters are refused too. Nothing is trimmed, so a URL
    is accepted or refused alike through the API and in a JSON-lines file.

    Raises:
        InvalidInputError: it is anything else; the message names the field.
    """
    if not url:
        return None
    problem = "url: must be an absolute http:// or https:// URL (or empty)"
    if len(url) > MAX_DOCUMENT_URL_LENGTH:
        raise InvalidInputError(f"url: at most {MAX_DOCUMENT_URL_LENGTH} characters")
    # fullmatch: the pattern's "$" would also match before a final newline.
    if not _DOCUMENT_URL.fullmatch(url):
        raise InvalidInputError(f"{problem}, without spaces, control characters or credentials")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise InvalidInputError(f"{problem}; this one is malformed") from None
    if not parts.hostname:
        raise InvalidInputError(f"{problem}; this one has no host")
    return url


@dataclass(frozen=True, slots=True)
class Section:
    """A run of body text under one heading path (outermost heading first)."""

    heading_path: tuple[str, ...]
    text: str


@dataclass(frozen=True, slots=True)
class ExtractedDocument:
    """A document normalised to text with its structure kept: an optional title and ordered sections.

    ``url`` and ``tags`` are what the content says of itself (a Markdown file's front matter), unchecked: a request's
    own fields win over them.
    """

    title: str | None
    sections: tuple[Section, ...]
    url: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when no section carries any non-whitespace text."""
        return not any(section.text.strip() for section in self.sections)


@dataclass(frozen=True, slots=True)
class Chunk:
    """A retrievable piece of a document, small enough for the embedder's token budget."""

    ordinal: int
    heading_path: tuple[str, ...]
    text: str
    token_count: int

    def context_path(self, title: str) -> str:
        """Where the chunk sits: document title, then its headings (``Title > Section > Subsection``)."""
        return " > ".join(part for part in (title, *self.heading_path) if part)

    def context_text(self, title: str) -> str:
        """The text that is embedded and indexed: document title and heading path, then the chunk body."""
        return indexed_text(self.context_path(title), self.text)


def indexed_text(context: str, body: str) -> str:
    """What a chunk is embedded, indexed and scanned as: its context path (if any), a blank line, its body."""
    return f"{context}\n\n{body}" if context else body


class Audience(StrEnum):
    """Who may see a document: customers and the assistant (public), or human agents only (internal)."""

    PUBLIC = "public"
    INTERNAL = "internal"


class UpsertStatus(StrEnum):
    """What an upsert did."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True, slots=True)
class DocumentDraft:
    """A document as submitted: what gets stored once its chunks are embedded."""

    external_id: str
    title: str
    content_type: str
    text_hash: str
    url: str | None = None
    tags: tuple[str, ...] = ()
    audience: Audience = Audience.PUBLIC
    metadata: Mapping[str, str] = field(default_factory=dict)
    # Instruction-like and hidden passages found in the content (prompt-injection risk), kept for review.
    flags: tuple[InjectionFlag, ...] = ()
    # The model its chunks are embedded with: another model makes the stored vectors stale.
    embedding_model: str = ""

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything stored with the document changes, the embedding model included."""
        metadata = repr(sorted(self.metadata.items()))
        material = "\x1f".join(
            (
                self.text_hash,
                self.title,
                self.url or "",
                ",".join(self.tags),
                self.audience,
                metadata,
                self.embedding_model,
            )
        )
        return hashlib.sha256(material.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Document:
    """A stored document at its current version."""

    id: UUID
    external_id: str
    title: str
    content_type: str
    url: str | None
    tags: tuple[str, ...]
    audience: Audience
    metadata: Mapping[str, str]
    fingerprint: str
    version: int
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    flags: tuple[InjectionFlag, ...] = ()


@dataclass(frozen=True, slots=True)
class EmbeddedChunk:
    """A chunk ready to be stored: its context path and the vector of its context text."""

    chunk: Chunk
    context: str
    embedding: Sequence[float]
    # Instruction-like passages of the chunk's text (offsets into ``chunk.text``).
    flags: tuple[InjectionFlag, ...] = ()

    @property
    def reasons(self) -> tuple[InjectionReason, ...]:
        """The distinct reasons the chunk is flagged for, in a stable order (stored with the chunk)."""
        return reasons_of(self.flags)

    @property
    def search_text(self) -> str:
        """What was embedded and what full-text search indexes: context path, then the body."""
        return indexed_text(self.context, self.chunk.text)


@dataclass(frozen=True, slots=True)
class IndexedChunk:
    """A stored chunk: its place in the document, the text it was indexed with, and why it is flagged."""

    ordinal: int
    text: str
    reasons: tuple[InjectionReason, ...] = ()


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A retrieval request; ``tags`` keeps documents carrying any of them."""

    text: str
    limit: int = 5
    tags: tuple[str, ...] = ()
    audiences: tuple[Audience, ...] = (Audience.PUBLIC,)
    # Leave out chunks flagged as instruction-like (the quarantine policy, for the assistant's searches).
    exclude_flagged: bool = False
    # Neighbouring chunks of each hit's document to return with it, on each side (SearchHit.context): the
    # answer is often in the chunk before or after the one that ranked best.
    context: int = 0


@dataclass(frozen=True, slots=True)
class ContextChunk:
    """A chunk next to a hit's, from the same version of its document."""

    chunk_id: UUID
    ordinal: int
    heading_path: tuple[str, ...]
    text: str
    flags: tuple[InjectionReason, ...] = ()


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One retrieved passage, the best chunk of its document, with the evidence of how it ranked."""

    chunk_id: UUID
    document_id: UUID
    external_id: str
    version: int
    ordinal: int
    title: str
    url: str | None
    heading_path: tuple[str, ...]
    text: str
    score: float
    vector_similarity: float | None
    vector_rank: int | None
    text_rank: int | None
    # Why the chunk was flagged at ingestion (empty for ordinary content): its text is data all the same.
    flags: tuple[InjectionReason, ...] = ()
    # Up to ``SearchQuery.context`` chunks on each side of this one, in document order (this one not included).
    context: tuple[ContextChunk, ...] = ()

    def in_article_order(self) -> list[tuple[int | None, str, tuple[InjectionReason, ...]]]:
        """This chunk and its context by ordinal: (index into ``context``, None for this chunk; text; flags)."""
        chunks: list[tuple[int, int | None, str, tuple[InjectionReason, ...]]] = [
            (self.ordinal, None, self.text, self.flags)
        ]
        chunks += [(chunk.ordinal, index, chunk.text, chunk.flags) for index, chunk in enumerate(self.context)]
        return [(index, text, flags) for _, index, text, flags in sorted(chunks, key=lambda chunk: chunk[0])]

    def at(self, chunk: ContextChunk) -> "SearchHit":
        """This hit as if ``chunk``, one of its context, had ranked: what a quote from that chunk cites."""
        return replace(
            self,
            chunk_id=chunk.chunk_id,
            ordinal=chunk.ordinal,
            heading_path=chunk.heading_path,
            text=chunk.text,
            flags=chunk.flags,
            context=(),
        )


def text_hash(text: str) -> str:
    """The content hash of normalised document text."""
    return hashlib.sha256(text.encode()).hexdigest()


def normalise_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """Lower-case, trimmed, de-duplicated and sorted, so equal tag sets compare equal."""
    return tuple(sorted({tag.strip().lower() for tag in tags if tag.strip()}))


_CONTENT_TYPES_BY_SUFFIX = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".html": "text/html",
    ".htm": "text/html",
    ".pdf": "application/pdf",
}


def content_type_for_filename(name: str) -> str | None:
    """The content type a file name's suffix stands for, among the supported ones."""
    _, dot, suffix = name.lower().rpartition(".")
    return _CONTENT_TYPES_BY_SUFFIX.get(f".{suffix}") if dot else None


def uploaded_content_type(filename: str, declared: str) -> str:
    """The content type of an uploaded file: its suffix decides when it has one, else the declared type.

    Raises:
        UnsupportedContentTypeError: the suffix is not a supported one (a ``.webp`` is not indexed as text because
            the form part said ``text/plain``).
    """
    _, dot, suffix = filename.lower().rpartition(".")
    if not dot:
        return declared
    known = _CONTENT_TYPES_BY_SUFFIX.get(f".{suffix}")
    if known is None:
        supported = ", ".join(sorted(_CONTENT_TYPES_BY_SUFFIX))
        msg = f"Files ending in .{suffix} cannot be ingested; send one of: {supported} (or .jsonl for bulk)."
        raise UnsupportedContentTypeError(msg)
    return known
