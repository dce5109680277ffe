"""Use cases for the knowledge base: ingest, read, delete and search documents."""

import array
import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any
from uuid import UUID

from support.domain.chunking import chunk_document
from support.domain.errors import (
    ContentTooLargeError,
    InvalidInputError,
    NotFoundError,
    RuleViolationError,
    SupportError,
)
from support.domain.ids import new_id
from support.domain.injection import InjectionFlag, reasons_of, scan_source, scan_text, unique
from support.domain.knowledge import (
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_VALUE_LENGTH,
    MAX_TAG_LENGTH,
    MAX_TAGS,
    Audience,
    Chunk,
    Document,
    DocumentDraft,
    EmbeddedChunk,
    ExtractedDocument,
    SearchHit,
    SearchQuery,
    UpsertStatus,
    normalise_tags,
    text_hash,
    validate_document_url,
)
from support.ports.errors import CacheUnavailableError, EmbedderUnavailableError, StorageUnavailableError
from support.ports.jobs import JobQueue, JobState, ProgressReporter
from support.ports.knowledge import Cache, DocumentPage, Embedder, KnowledgeBase, TextExtractor
from support.ports.system import Clock, UnitOfWork

_logger = logging.getLogger(__name__)

MAX_TITLE_LENGTH = 500
MAX_EXTERNAL_ID_LENGTH = 300
MAX_QUERY_LENGTH = 2000
MAX_SEARCH_LIMIT = 50
# Neighbouring chunks a hit may bring along on each side (SearchQuery.context).
MAX_SEARCH_CONTEXT = 10
MAX_PAGE_SIZE = 200


class DocumentNotFoundError(NotFoundError):
    """No document with this id exists."""

    code = "document_not_found"
    default_message = "The document was not found."


@dataclass(frozen=True, slots=True)
class KnowledgeLimits:
    """Ingestion bounds, from settings."""

    max_document_bytes: int = 10 * 1024 * 1024
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 30
    query_cache_ttl_s: int = 24 * 3600


@dataclass(frozen=True, slots=True)
class IngestRequest:
    """A document to create or update; ``title`` defaults to the one found in the content."""

    content: bytes
    content_type: str
    external_id: str | None = None
    title: str | None = None
    url: str | None = None
    tags: Sequence[str] = ()
    audience: Audience = Audience.PUBLIC
    metadata: Mapping[str, str] = field(default_factory=dict)
    # The title when none is given and the content has none (a file's name: a .txt file, a PDF without one).
    fallback_title: str | None = None
    # Why the content could not be read (a file on disk): the request fails with this, and a bulk run goes on.
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The stored document and what the upsert did."""

    document: Document
    status: UpsertStatus


# Plain text has no markup for a heading: the extractor never finds a title in it (adapters/extraction).
PLAIN_TEXT = "text/plain"


def check_request(request: IngestRequest, limits: KnowledgeLimits) -> None:
    """The checks of ``IngestDocument`` that need no extraction, so a bulk file can be checked before it is queued.

    Raises:
        ContentTooLargeError: the content exceeds the configured size.
        InvalidInputError: the content could not be read or is empty or whitespace, a given title or external_id
            is too long (or the title is whitespace), plain text comes without a title, the url is not an absolute
            http(s) URL, or the tags or metadata break their limits.
    """
    if request.unreadable:
        raise InvalidInputError(request.unreadable)
    if len(request.content) > limits.max_document_bytes:
        raise ContentTooLargeError(f"A document may have at most {limits.max_document_bytes} bytes.")
    # Decoded leniently, so that Unicode spaces count as whitespace too; extraction reads the text properly.
    if not request.content.decode("utf-8", "replace").strip():
        raise InvalidInputError("The content is empty.")
    if request.title:
        _checked_title(request.title)
    elif request.fallback_title:
        _checked_title(request.fallback_title)
    elif request.content_type.split(";")[0].strip().lower() == PLAIN_TEXT:
        # Known now, without extracting: extraction would find no title and refuse the document (a bulk job's
        # line would pass the check before queueing and fail inside the job).
        raise InvalidInputError(
            "title: plain text (text/plain) needs one, as it has no heading to take one from; give a title, "
            "or send the text as text/markdown with a '# Heading'."
        )
    if request.external_id and len(request.external_id.strip()) > MAX_EXTERNAL_ID_LENGTH:
        raise InvalidInputError(f"An external_id has at most {MAX_EXTERNAL_ID_LENGTH} characters.")
    # Shown to customers as a citation link: a javascript: URL in a bulk file is refused like one in the API.
    validate_document_url(request.url)
    # The API's body rule (Tags), for the ways in that skip it: JSON-lines files (and front matter, in prepare).
    _check_tags(request.tags)
    # The API's body rule (Metadata), for JSON-lines files.
    if len(request.metadata) > MAX_METADATA_ENTRIES:
        raise InvalidInputError(f"metadata: at most {MAX_METADATA_ENTRIES} entries")
    for key, value in request.metadata.items():
        if not 0 < len(key) <= MAX_METADATA_KEY_LENGTH:
            raise InvalidInputError(f"metadata: keys have 1 to {MAX_METADATA_KEY_LENGTH} characters")
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            raise InvalidInputError(f"metadata[{_shown(key)}]: at most {MAX_METADATA_VALUE_LENGTH} characters")


def _check_tags(tags: Sequence[str], *, where: str = "") -> None:
    if len(tags) > MAX_TAGS or not all(0 < len(tag) <= MAX_TAG_LENGTH for tag in tags):
        raise InvalidInputError(
            f"{where}A document has at most {MAX_TAGS} tags of 1 to {MAX_TAG_LENGTH} characters each."
        )


def _declared_url_and_tags(request: IngestRequest, extracted: ExtractedDocument) -> tuple[str | None, Sequence[str]]:
    """The request's url and tags, else those the content declares (Markdown front matter), held to the same rules.

    One file is one document however it comes in: the API's upload ignored front matter's url and tags that
    ``support kb ingest`` read.

    Raises:
        InvalidInputError: the front matter's url or tags break the rules; the message says where they came from.
    """
    url = request.url or None
    if url is None and extracted.url:
        try:
            url = validate_document_url(extracted.url)
        except InvalidInputError as error:
            raise InvalidInputError(f"Front matter {error.message}") from None
    tags = request.tags
    if not tags and extracted.tags:
        _check_tags(extracted.tags, where="Front matter tags: ")
        tags = extracted.tags
    return url, tags


def file_title(filename: str) -> str | None:
    """The title a file's name gives: the name without its folder and extension (``store-hours.txt``: store-hours)."""
    stem = PurePath(filename.replace("\\", "/")).stem.strip()
    return stem[:MAX_TITLE_LENGTH] or None


def file_external_id(filename: str) -> str:
    """The id a file's name gives a document when none is given: the name, cut to the id's length limit.

    Cut rather than refused (a 300-character name was "An external_id has at most 300 characters" for a field
    the caller never filled); the cut is the same every time, so a later upload of the file still replaces it.
    """
    return filename.strip()[:MAX_EXTERNAL_ID_LENGTH]


def _checked_title(title: str) -> str:
    """The title, trimmed, once it is neither empty nor too long."""
    title = title.strip()
    if not title:
        raise InvalidInputError("The document needs a title: none was given and none was found in the content.")
    if len(title) > MAX_TITLE_LENGTH:
        raise InvalidInputError(f"A title has at most {MAX_TITLE_LENGTH} characters.")
    return title


def _derived_title(title: str) -> str:
    """A title found in the content or the file name: cut at a word to the limit rather than refused.

    Nobody chose it, so nobody can shorten it: a page whose first heading runs past the limit is still a document.
    """
    title = " ".join(title.split())
    if len(title) > MAX_TITLE_LENGTH:
        title = title[: MAX_TITLE_LENGTH - 1].rsplit(" ", 1)[0].rstrip() + "…"
    return _checked_title(title)


def full_text(document: ExtractedDocument) -> str:
    """The document as one normalised text (headings kept), which its content hash covers."""
    parts: list[str] = []
    for section in document.sections:
        if section.heading_path:
            parts.append(" > ".join(section.heading_path))
        if section.text.strip():
            parts.append(section.text.strip())
    return "\n\n".join(parts)


# Content types whose bytes are text, so that hidden markup (comments, invisible styles, tag characters) can be read.
_SCANNABLE_SOURCES = frozenset({"text/plain", "text/markdown", "text/html"})


def with_chunk_flags(draft: DocumentDraft, chunks: Sequence[EmbeddedChunk]) -> DocumentDraft:
    """The draft flagged with what its source and its chunks hold (repeats from overlapping chunks dropped)."""
    return replace(draft, flags=tuple(unique([*draft.flags, *(flag for item in chunks for flag in item.flags)])))


class IngestDocument:
    """Create or update a document by ``external_id``.

    The content is extracted, chunked by structure, embedded, and stored as a new version in one atomic swap.
    Unchanged content (same text, title, url, tags, audience and metadata) is detected before embedding and
    costs nothing. Instruction-like passages are flagged on the document and its chunks (support.domain.injection):
    they stay data, never instructions, and the quarantine policy keeps flagged chunks out of the assistant's
    searches.
    """

    def __init__(
        self,
        knowledge: KnowledgeBase,
        extractor: TextExtractor,
        embedder: Embedder,
        uow: UnitOfWork,
        clock: Clock,
        limits: KnowledgeLimits,
    ) -> None:
        self._knowledge = knowledge
        self._extractor = extractor
        self._embedder = embedder
        self._uow = uow
        self._clock = clock
        self._limits = limits

    async def execute(self, request: IngestRequest) -> IngestResult:
        """Ingest and commit.

        Raises:
            ContentTooLargeError: the content exceeds the configured size.
            UnsupportedContentTypeError: the content type is not supported.
            InvalidInputError: the content is empty, unreadable, or a field is invalid.
        """
        # Extraction and chunking are CPU work (a large PDF takes seconds): keep them off the event loop.
        draft, extracted = await asyncio.to_thread(self.prepare, request)
        existing = await self._knowledge.get_by_external_id(draft.external_id)
        if existing is not None and existing.fingerprint == draft.fingerprint:
            return IngestResult(existing, UpsertStatus.UNCHANGED)
        chunks = await self.embed(draft, extracted)
        document, status = await self._knowledge.upsert(with_chunk_flags(draft, chunks), chunks, self._clock.now())
        await self._uow.commit()
        return IngestResult(document, status)

    def prepare(self, request: IngestRequest) -> tuple[DocumentDraft, ExtractedDocument]:
        """Validate and extract; the draft's fingerprint tells whether the stored version is current."""
        check_request(request, self._limits)
        extracted = self._extractor.extract(request.content, request.content_type)
        if extracted.is_empty:
            raise InvalidInputError("The content has no text.")
        title = (
            _checked_title(request.title)
            if request.title
            else _derived_title(extracted.title or request.fallback_title or "")
        )
        if request.external_id and not request.external_id.strip():
            raise InvalidInputError("external_id is blank: leave it out to have one generated.")
        external_id = (request.external_id or "").strip() or str(new_id())
        url, tags = _declared_url_and_tags(request, extracted)
        text = full_text(extracted)
        content_type = request.content_type.split(";")[0].strip().lower()
        # Chunks are scanned when they are cut (embed_many); the source shows what readers would not see.
        hidden = scan_source(request.content.decode("utf-8", "replace")) if content_type in _SCANNABLE_SOURCES else []
        draft = DocumentDraft(
            external_id=external_id,
            title=title,
            content_type=content_type,
            text_hash=text_hash(text),
            url=url,
            tags=normalise_tags(tags),
            audience=request.audience,
            metadata=dict(request.metadata),
            flags=tuple(hidden),
            embedding_model=self._embedder.model_id,
        )
        return draft, extracted

    async def embed(self, draft: DocumentDraft, extracted: ExtractedDocument) -> list[EmbeddedChunk]:
        """Chunk by structure and embed each chunk with its title and heading path."""
        return (await self.embed_many([(draft, extracted)]))[0]

    def chunk(self, extracted: ExtractedDocument) -> list[Chunk]:
        """Split by structure within the configured token budget."""
        return chunk_document(
            extracted,
            count_tokens=self._embedder.count_tokens,
            max_tokens=self._limits.chunk_tokens,
            overlap_tokens=self._limits.chunk_overlap_tokens,
        )

    async def embed_many(
        self, documents: Sequence[tuple[DocumentDraft, ExtractedDocument]]
    ) -> list[list[EmbeddedChunk]]:
        """Chunk several documents, flag instruction-like chunks, and embed all chunks in shared batches."""
        # Cutting is CPU work proportional to the text (a 4 MB upload takes seconds): off the event loop.
        chunked = await asyncio.to_thread(lambda: [(draft, self.chunk(extracted)) for draft, extracted in documents])
        # What is embedded, and scanned, is what is indexed and shown to the model: title and headings, then the body.
        contexts = [[chunk.context_text(draft.title) for chunk in chunks] for draft, chunks in chunked]
        texts = [text for document_texts in contexts for text in document_texts]
        # The model starts first and the scan runs beside it: awaited before, it kept the model waiting.
        embedding = asyncio.ensure_future(self._embedder.embed_documents(texts))
        try:
            # Pattern matching is CPU work proportional to the text: off the event loop, like extraction.
            flags = await asyncio.to_thread(
                lambda: [
                    [
                        tuple(scan_text(text, chunk=chunk.ordinal))
                        for chunk, text in zip(chunks, document_texts, strict=True)
                    ]
                    for (_, chunks), document_texts in zip(chunked, contexts, strict=True)
                ]
            )
        except BaseException:
            embedding.cancel()
            raise
        vectors = iter(await embedding)
        return [
            [
                EmbeddedChunk(
                    chunk=chunk, context=chunk.context_path(draft.title), embedding=next(vectors), flags=chunk_flags
                )
                for chunk, chunk_flags in zip(chunks, document_flags, strict=True)
            ]
            for (draft, chunks), document_flags in zip(chunked, flags, strict=True)
        ]


class GetDocument:
    """Read one document."""

    def __init__(self, knowledge: KnowledgeBase) -> None:
        self._knowledge = knowledge

    async def execute(self, document_id: UUID) -> Document:
        """Return the document.

        Raises:
            DocumentNotFoundError: no document has this id.
        """
        document = await self._knowledge.get(document_id)
        if document is None:
            raise DocumentNotFoundError
        return document


class ListDocuments:
    """List documents newest first, a page at a time, optionally by tag."""

    def __init__(self, knowledge: KnowledgeBase) -> None:
        self._knowledge = knowledge

    async def execute(self, *, tag: str | None = None, limit: int = 50, cursor: str | None = None) -> DocumentPage:
        """Return one page."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE_SIZE}.")
        return await self._knowledge.list_documents(
            tag=tag.strip().lower() if tag else None, limit=limit, cursor=cursor
        )


class DeleteDocument:
    """Delete a document; it disappears from search as soon as this commits."""

    def __init__(self, knowledge: KnowledgeBase, uow: UnitOfWork) -> None:
        self._knowledge = knowledge
        self._uow = uow

    async def execute(self, document_id: UUID) -> None:
        """Delete and commit.

        Raises:
            DocumentNotFoundError: no document has this id.
        """
        if not await self._knowledge.delete(document_id):
            raise DocumentNotFoundError
        await self._uow.commit()


@dataclass(slots=True)
class RescanReport:
    """Counts of a rescan (``done`` of ``total`` documents so far).

    ``changed`` of the scanned documents got other flags (on the document or on a chunk); ``flagged_before`` and
    ``flagged_after`` count the scanned documents with any flag; ``skipped`` ones were updated or deleted meanwhile.
    """

    total: int = 0
    scanned: int = 0
    skipped: int = 0
    changed: int = 0
    flagged_before: int = 0
    flagged_after: int = 0

    @property
    def done(self) -> int:
        """Documents finished, scanned or skipped."""
        return self.scanned + self.skipped


class RescanKnowledge:
    """Flag the stored documents again with the current prompt-injection detector, e.g. after upgrading it.

    Ingestion flags a document when its content changes, so an unchanged document keeps the flags of the detector
    that scanned it. This scans every stored chunk as ingestion does (title and headings, then the body) and
    replaces what changed, without re-embedding anything or changing a version. Flags found in the submitted file
    itself (hidden markup) are kept, as the file is not stored. Each document commits on its own; one updated or
    deleted while the rescan runs is skipped: its new version was scanned when it was written.
    """

    def __init__(self, knowledge: KnowledgeBase, uow: UnitOfWork) -> None:
        self._knowledge = knowledge
        self._uow = uow

    async def execute(self, on_progress: Callable[[RescanReport], Awaitable[None]] | None = None) -> RescanReport:
        """Rescan every document; ``on_progress`` hears the counts after each one."""
        documents = await self._stored_documents()
        report = RescanReport(total=len(documents))
        if on_progress is not None:
            await on_progress(report)
        for document in documents:
            rescanned = await self._rescan(document)
            if rescanned is None:
                report.skipped += 1
            else:
                flags, changed = rescanned
                report.scanned += 1
                report.changed += changed
                report.flagged_before += bool(document.flags)
                report.flagged_after += bool(flags)
            if on_progress is not None:
                await on_progress(report)
        return report

    async def _stored_documents(self) -> list[Document]:
        documents: list[Document] = []
        cursor: str | None = None
        while True:
            page = await self._knowledge.list_documents(tag=None, limit=MAX_PAGE_SIZE, cursor=cursor)
            documents += page.items
            if page.next_cursor is None:
                return documents
            cursor = page.next_cursor

    async def _rescan(self, document: Document) -> tuple[list[InjectionFlag], bool] | None:
        """The document's flags now and whether any flag (its own or a chunk's) changed; None: it changed meanwhile."""
        chunks = await self._knowledge.indexed_chunks(document.id, document.version)
        if len(chunks) != document.chunk_count:
            return None
        # Pattern matching is CPU work proportional to the text: off the event loop, as at ingestion.
        found = await asyncio.to_thread(
            lambda: {chunk.ordinal: scan_text(chunk.text, chunk=chunk.ordinal) for chunk in chunks}
        )
        # In ingestion's order: what the file hid first, then each chunk's passages.
        flags = unique([
            *(flag for flag in document.flags if flag.chunk is None),
            *(flag for chunk in chunks for flag in found[chunk.ordinal]),
        ])  # fmt: skip
        unchanged = flags == list(document.flags) and all(
            reasons_of(found[chunk.ordinal]) == chunk.reasons for chunk in chunks
        )
        if unchanged:
            return flags, False
        if not await self._knowledge.replace_flags(document.id, document.version, flags, found):
            await self._uow.rollback()
            return None
        await self._uow.commit()
        return flags, True


class QueryEmbeddings:
    """Query vectors through a cache: repeated questions skip the model. A cache outage only costs time."""

    def __init__(self, embedder: Embedder, cache: Cache, limits: KnowledgeLimits) -> None:
        self._embedder = embedder
        self._cache = cache
        self._ttl_s = limits.query_cache_ttl_s
        self._writes: set[asyncio.Task[None]] = set()  # cache writes in flight (held so they are not collected)

    async def embed(self, text: str, *, admission: Awaitable[object] | None = None) -> list[float]:
        """The query's vector, cached by model and exact text; the cache write happens in the background.

        The lookup comes first and the model only on a miss. Starting the model beside the lookup was measured
        slower in a turn (bench/chat: the model ran 7.8 -> 10.5 ms, sharing the cores with the message being
        stored), besides burning a model run on every hit. A pending ``admission`` (a send's rate limit) is
        awaited before the model runs: a refused request costs a lookup, not a model run.
        """
        key = f"qemb:{self._embedder.model_id}:{hashlib.sha256(text.encode()).hexdigest()}"
        cached = await self._cached(key)
        if cached is not None:
            return cached
        if admission is not None:
            await admission
        vector = await self._embedder.embed_query(text)
        task = asyncio.create_task(self._store(key, vector))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return vector

    async def _cached(self, key: str) -> list[float] | None:
        try:
            cached = await self._cache.get(key)
        except CacheUnavailableError:
            _logger.warning("query embedding cache unavailable; embedding without it")
            return None
        return None if cached is None else array.array("f", cached).tolist()

    async def _store(self, key: str, vector: list[float]) -> None:
        try:
            await self._cache.set(key, array.array("f", vector).tobytes(), self._ttl_s)
        except CacheUnavailableError:
            _logger.warning("query embedding cache unavailable; result not cached")


class SearchKnowledge:
    """Hybrid retrieval over the knowledge base: the best passage of each matching document, best first."""

    def __init__(self, knowledge: KnowledgeBase, embeddings: QueryEmbeddings) -> None:
        self._knowledge = knowledge
        self._embeddings = embeddings

    async def execute(self, query: SearchQuery, *, embedding: Sequence[float] | None = None) -> list[SearchHit]:
        """Search; ``embedding`` is the query's vector when the caller already has it.

        Raises:
            InvalidInputError: the query is empty or too long, or the limit is out of range.
        """
        text = query.text.strip()
        if not text:
            raise InvalidInputError("The query is empty.")
        if len(text) > MAX_QUERY_LENGTH:
            raise InvalidInputError(f"A query has at most {MAX_QUERY_LENGTH} characters.")
        if not 1 <= query.limit <= MAX_SEARCH_LIMIT:
            raise InvalidInputError(f"limit must be between 1 and {MAX_SEARCH_LIMIT}.")
        if not 0 <= query.context <= MAX_SEARCH_CONTEXT:
            raise InvalidInputError(f"context must be between 0 and {MAX_SEARCH_CONTEXT}.")
        normalised = SearchQuery(
            text=text,
            limit=query.limit,
            tags=normalise_tags(query.tags),
            audiences=query.audiences,
            exclude_flagged=query.exclude_flagged,
            context=query.context,
        )
        vector = embedding if embedding is not None else await self._embeddings.embed(text)
        return await self._knowledge.search(normalised, vector)


class EmbeddingDimensionMismatchError(RuleViolationError):
    """The embedder's vectors do not fit the knowledge base's vector column."""

    code = "embedding_dimension_mismatch"


class VerifyKnowledgeIndex:
    """Check at start that the configured embedder fits the stored vectors (dimension)."""

    def __init__(self, knowledge: KnowledgeBase, embedder: Embedder) -> None:
        self._knowledge = knowledge
        self._embedder = embedder

    async def execute(self) -> None:
        """Return when they fit.

        Raises:
            EmbeddingDimensionMismatchError: they do not; the message says both dimensions.
            StorageUnavailableError: the database cannot be reached (the check can be retried later).
        """
        stored = await self._knowledge.vector_dimension()
        if stored is not None and stored != self._embedder.dimension:
            msg = (
                f"The embedder {self._embedder.model_id} makes {self._embedder.dimension}-dimensional vectors but "
                f"the knowledge base stores {stored}; set SUPPORT_EMBEDDING__DIMENSION/PROVIDER to match."
            )
            raise EmbeddingDimensionMismatchError(msg)


@dataclass(slots=True)
class BulkIngestReport:
    """Counts of a bulk ingestion, and the reason each failed item failed (by its position and id).

    ``total`` is the number of documents, known from the start when the requests are a sized collection (a bulk
    job's); ``created + updated + unchanged + failed`` is ``done``; ``chunks`` counts the chunks stored for the
    created and updated documents (a document has one or more), not documents.
    """

    total: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    chunks: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        """Items finished, whatever their outcome."""
        return self.created + self.updated + self.unchanged + self.failed


ProgressCallback = Callable[[BulkIngestReport], Awaitable[None]]

# Documents per bulk group: enough chunks for full model batches, few enough for steady progress reports.
BULK_GROUP_DOCUMENTS = 32


@dataclass(slots=True)
class _Checked:
    position: int
    draft: DocumentDraft
    extracted: ExtractedDocument
    unchanged: bool = False


class IngestDocuments:
    """Ingest many documents with the single-document rules, at close to the embedder's own throughput.

    Chunks of several documents are embedded together in full batches, and the next group is embedded while the
    previous one is written, so the database never waits on the model or the model on the database. Each document
    commits on its own: a bad item is reported and the rest go on.
    """

    def __init__(self, single: IngestDocument, knowledge: KnowledgeBase, uow: UnitOfWork, clock: Clock) -> None:
        self._single = single
        self._knowledge = knowledge
        self._uow = uow
        self._clock = clock

    async def execute(
        self, requests: Iterable[IngestRequest], on_progress: ProgressCallback | None = None
    ) -> BulkIngestReport:
        """Ingest every request; never raises for a single bad item.

        The report's ``total`` is the number of requests from the first progress report on when ``requests`` is
        sized (a list); an iterator's requests are counted as they are read, so its ``total`` is final at the end.
        """
        total = len(requests) if isinstance(requests, Sized) else None
        report = BulkIngestReport(total=total or 0)
        previous: tuple[list[_Checked], asyncio.Task[list[list[EmbeddedChunk]]]] | None = None
        groups = self._groups(requests, report, count=total is None)
        # Reading and extracting a group is CPU work (PDFs, HTML): in a worker thread, as for one document.
        while (group := await asyncio.to_thread(next, groups, None)) is not None:
            checked = await self._check(group)
            # The model works in its own thread on this group while the previous group is written.
            embedding = asyncio.create_task(
                self._single.embed_many([(item.draft, item.extracted) for item in checked if not item.unchanged])
            )
            if previous is not None:
                await self._write_group(previous[0], await previous[1], report, on_progress)
            previous = (checked, embedding)
        if previous is not None:
            await self._write_group(previous[0], await previous[1], report, on_progress)
        return report

    def _groups(
        self, requests: Iterable[IngestRequest], report: BulkIngestReport, *, count: bool
    ) -> Iterator[list[_Checked]]:
        # The next group is read (and prepared) while the previous one is written: counted here, the total would
        # run a group ahead of what has been reported done, growing as the job goes.
        group: list[_Checked] = []
        for position, request in enumerate(requests):
            if count:
                report.total += 1
            try:
                draft, extracted = self._single.prepare(request)
            except SupportError as error:
                report.failed += 1
                report.errors.append((position, request.external_id or "", error.message))
                continue
            except Exception:
                # A document no reader copes with is a bug to fix, but it fails alone: the rest go on.
                _logger.exception("could not read document %s of a bulk ingestion", position)
                report.failed += 1
                report.errors.append((position, request.external_id or "", "The document could not be read."))
                continue
            group.append(_Checked(position, draft, extracted))
            if len(group) >= BULK_GROUP_DOCUMENTS:
                yield group
                group = []
        if group:
            yield group

    async def _check(self, group: list[_Checked]) -> list[_Checked]:
        for item in group:
            existing = await self._knowledge.get_by_external_id(item.draft.external_id)
            item.unchanged = existing is not None and existing.fingerprint == item.draft.fingerprint
        return group

    async def _write_group(
        self,
        group: list[_Checked],
        embedded: list[list[EmbeddedChunk]],
        report: BulkIngestReport,
        on_progress: ProgressCallback | None,
    ) -> None:
        chunks_of = iter(embedded)
        for item in group:
            if item.unchanged:
                report.unchanged += 1
                continue
            chunks = next(chunks_of)
            try:
                _, status = await self._knowledge.upsert(
                    with_chunk_flags(item.draft, chunks), chunks, self._clock.now()
                )
                await self._uow.commit()
            except SupportError as error:
                await self._uow.rollback()
                report.failed += 1
                report.errors.append((item.position, item.draft.external_id, error.message))
                continue
            report.chunks += len(chunks)
            if status is UpsertStatus.CREATED:
                report.created += 1
            elif status is UpsertStatus.UPDATED:
                report.updated += 1
            else:
                report.unchanged += 1
        if on_progress is not None:
            await on_progress(report)


INGEST_JOB = "ingest_documents"
BULK_JOB_TIMEOUT_S = 6 * 3600


class JobNotFoundError(NotFoundError):
    """No job with this id exists (or it expired)."""

    code = "job_not_found"
    default_message = "The job was not found."


# The fields of a JSON-lines record; any other key is refused, so that a misspelt field ("tag") is not lost.
JSONL_FIELDS = ("id", "text", "title", "url", "tags", "content_type", "audience", "metadata")
# A line's content types: the JSON body's (POST /v1/knowledge/documents); text in a JSON string is never a PDF.
JSONL_CONTENT_TYPES = (PLAIN_TEXT, "text/markdown", "text/html")


def parse_jsonl(data: bytes) -> list[IngestRequest]:
    """Documents from JSON lines of ``{id, text, title?, url?, tags?, content_type?, audience?, metadata?}``.

    Without a title, the document's is the one found in its content (a first heading), as for any document.

    Raises:
        InvalidInputError: a line is not such a record; the message names the line and the field.
    """
    return [request for _, request in parse_jsonl_lines(data)]


def parse_jsonl_lines(data: bytes) -> list[tuple[int, IngestRequest]]:
    """``parse_jsonl``, each document with its line number (from 1; blank lines count).

    Lines end at a line feed (LF or CRLF) and nowhere else: a JSON string may hold U+2028 and other characters
    that ``str.splitlines`` would break a line at. Each record is held to its types: ``id`` a
    non-empty string, ``text`` a string, ``title``/``url``/``content_type`` strings, ``tags`` a list of strings,
    ``audience`` ``public`` or ``internal``, ``metadata`` an object of strings; an optional field that is null
    counts as absent, and so does an empty title or url. Limits (lengths, counts, the url's form) are
    ``check_request``'s.

    Raises:
        InvalidInputError: the file is not UTF-8, holds no record, or a line is not a valid record.
    """
    requests: list[tuple[int, IngestRequest]] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError("The file is not UTF-8 text.") from None
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            requests.append((number, _jsonl_request(line)))
        except InvalidInputError as error:
            raise InvalidInputError(f"Line {number}: {error.message}") from None
    if not requests:
        raise InvalidInputError("The file holds no documents.")
    return requests


def _jsonl_request(line: str) -> IngestRequest:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidInputError(f"not valid JSON ({error.msg}, column {error.colno}).") from None
    except (ValueError, RecursionError):  # an integer of more than 4,300 digits; arrays nested too deep
        raise InvalidInputError("not valid JSON.") from None
    if not isinstance(record, dict):
        raise InvalidInputError(f"a line is a JSON object with id and text, not {_json_kind(record)}.")
    unknown = [key for key in record if key not in JSONL_FIELDS]
    if unknown:
        raise InvalidInputError(f"unknown field {_shown(unknown[0])}; a line has {', '.join(JSONL_FIELDS)}.")
    for required in ("id", "text"):
        if required not in record:
            raise InvalidInputError(f"{required} is missing; a line is a JSON object with id and text.")
    external_id = _string(record["id"], "id")
    if not external_id.strip():
        raise InvalidInputError("id must not be empty.")
    content_type = _optional_string(record, "content_type")
    if content_type is None:
        content_type = PLAIN_TEXT
    elif content_type not in JSONL_CONTENT_TYPES:
        choices = ", ".join(JSONL_CONTENT_TYPES)
        raise InvalidInputError(f"content_type must be one of {choices}, not {_json_kind(content_type)}.")
    audience = record.get("audience")
    if audience is not None and audience not in tuple(Audience):
        choices = " or ".join(f'"{member}"' for member in Audience)
        raise InvalidInputError(f"audience must be {choices}, not {_json_kind(audience)}.")
    return IngestRequest(
        content=_string(record["text"], "text").encode(),
        content_type=content_type,
        external_id=external_id,
        title=_optional_string(record, "title") or None,
        url=_optional_string(record, "url") or None,
        tags=_string_list(record, "tags"),
        audience=Audience.PUBLIC if audience is None else Audience(audience),
        metadata=_string_map(record, "metadata"),
    )


def _string(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string, not {_json_kind(value)}.")
    try:
        value.encode()
    except UnicodeEncodeError:
        # JSON can spell one ("\ud800"); no text holds one, and the database would refuse it.
        raise InvalidInputError(f"{name} holds an unpaired surrogate (a lone \\uD800-\\uDFFF escape).") from None
    return value


def _optional_string(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    return None if value is None else _string(value, name)


def _string_list(record: Mapping[str, Any], name: str) -> list[str]:
    value = record.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInputError(f"{name} must be a list of strings, not {_json_kind(value)}.")
    return [_string(item, f"{name}[{index}]") for index, item in enumerate(value)]


def _string_map(record: Mapping[str, Any], name: str) -> dict[str, str]:
    value = record.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInputError(f"{name} must be an object of strings, not {_json_kind(value)}.")
    return {_string(key, f"a key of {name}"): _string(item, f"{name}[{_shown(key)}]") for key, item in value.items()}


def _json_kind(value: object) -> str:
    """How a JSON value is named in a message: its type, and the value itself when that is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, int | float):
        return f"a number ({json.dumps(value)[:_SHOWN_CHARACTERS]})"
    if isinstance(value, str):
        return f"a string ({_shown(value)})" if value.strip() else "an empty string"
    return "an array" if isinstance(value, list) else "an object"


_SHOWN_CHARACTERS = 30


def _shown(text: str) -> str:
    """A string quoted for a message: cut short, and escaped where it is not printable text."""
    shown = text if len(text) <= _SHOWN_CHARACTERS else text[:_SHOWN_CHARACTERS] + "..."
    return json.dumps(shown, ensure_ascii=False).encode("utf-8", "backslashreplace").decode()


def report_detail(report: BulkIngestReport) -> dict[str, Any]:
    """A bulk report as plain data (job progress and results)."""
    return {
        "total": report.total,
        "done": report.done,
        "created": report.created,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "failed": report.failed,
        "chunks": report.chunks,
        "errors": [{"position": p, "external_id": e, "message": m} for p, e, m in report.errors[:100]],
    }


class StartBulkIngestion:
    """Validate a JSON-lines file of documents and queue its ingestion as a background job."""

    def __init__(self, jobs: JobQueue, limits: KnowledgeLimits) -> None:
        self._jobs = jobs
        self._limits = limits

    async def execute(self, data: bytes) -> JobState:
        """Queue the job and return its initial state, whose detail already counts the file's documents.

        Raises:
            ContentTooLargeError: the file exceeds the document size limit.
            InvalidInputError: a line is not a document record (``parse_jsonl_lines``), or breaks a rule of
                ``IngestDocument`` that can be checked without extraction (``check_request``); the message names
                the line and the field.
        """
        if len(data) > self._limits.max_document_bytes:
            raise ContentTooLargeError(f"A file may have at most {self._limits.max_document_bytes} bytes.")
        requests = parse_jsonl_lines(data)
        for number, request in requests:
            try:
                check_request(request, self._limits)
            except InvalidInputError as error:
                raise InvalidInputError(f"Line {number}: {error.message}") from None
        documents = len(requests)
        # The counts show from the start: a job still waiting for a worker says how many documents it holds.
        return await self._jobs.enqueue(
            INGEST_JOB,
            {"records": data.decode("utf-8-sig"), "documents": documents},
            timeout_s=BULK_JOB_TIMEOUT_S,
            detail=report_detail(BulkIngestReport(total=documents)),
        )


# How long a bulk job waits out the database or the embedder being unreachable before it fails: an upload accepted
# during an outage failed at once and for good (found by an exploratory test). Documents are upserts, so the job
# starts over and what was written before counts as unchanged.
OUTAGE_RETRY_DELAYS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
OUTAGE_GIVE_UP_S = 15 * 60.0
wait_for_outage: Callable[[float], Awaitable[None]] = asyncio.sleep  # replaced in tests


class RunBulkIngestion:
    """The worker side of a bulk ingestion job: ingest, reporting progress as documents finish."""

    def __init__(self, ingest: IngestDocuments) -> None:
        self._ingest = ingest

    async def execute(self, payload: Mapping[str, Any], report: ProgressReporter) -> dict[str, Any]:
        """Ingest the job's records; returns the final counts.

        Every report's ``total`` is the file's number of documents (the payload's ``documents``, counted when the
        file was checked) and its progress is ``done / total``; the first comes before any document is read.
        """
        requests = parse_jsonl(str(payload["records"]).encode())

        async def progress(state: BulkIngestReport) -> None:
            await report(state.done / max(state.total, 1), report_detail(state))

        await progress(BulkIngestReport(total=len(requests)))
        waited, attempt = 0.0, 0
        while True:
            try:
                return report_detail(await self._ingest.execute(requests, on_progress=progress))
            except (StorageUnavailableError, EmbedderUnavailableError) as error:
                if waited >= OUTAGE_GIVE_UP_S:
                    raise
                delay = OUTAGE_RETRY_DELAYS_S[min(attempt, len(OUTAGE_RETRY_DELAYS_S) - 1)]
                waiting = {**report_detail(BulkIngestReport(total=len(requests))), "waiting": error.message}
                await report(0.0, waiting)
                _logger.warning("bulk ingestion waits %.0f s for an outage to end: %s", delay, error.message)
                await wait_for_outage(delay)
                waited, attempt = waited + delay, attempt + 1


class GetJob:
    """Read a background job's state and progress."""

    def __init__(self, jobs: JobQueue) -> None:
        self._jobs = jobs

    async def execute(self, job_id: str) -> JobState:
        """Return the job.

        Raises:
            JobNotFoundError: unknown or expired.
        """
        state = await self._jobs.get(job_id)
        if state is None:
            raise JobNotFoundError
        return state
