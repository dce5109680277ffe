"""Ports used to turn content into indexed, searchable knowledge."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from support.domain.injection import InjectionFlag
from support.domain.knowledge import (
    Document,
    DocumentDraft,
    EmbeddedChunk,
    ExtractedDocument,
    IndexedChunk,
    SearchHit,
    SearchQuery,
    UpsertStatus,
)


class TextExtractor(Protocol):
    """Turns raw bytes of a supported format into structured text."""

    def supports(self, content_type: str) -> bool:
        """Whether this content type (text/plain, text/markdown, text/html, application/pdf) is known."""
        ...

    def extract(self, data: bytes, content_type: str) -> ExtractedDocument:
        """Extract text with headings kept as section paths.

        Raises:
            UnsupportedContentTypeError: the content type is not supported.
            InvalidInputError: the bytes cannot be read as that type (e.g. a corrupt PDF), naming the problem.
        """
        ...


class Embedder(Protocol):
    """Maps text to dense vectors of a fixed dimension; documents and queries may be encoded differently."""

    @property
    def model_id(self) -> str:
        """A stable identifier of the model, stored beside vectors so a model change is detectable."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector this embedder returns."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many model tokens ``text`` takes (used to size chunks)."""
        ...

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed passages in batches; the result is in input order, L2-normalised.

        Raises:
            EmbedderUnavailableError: the model or provider failed.
        """
        ...

    async def embed_query(self, text: str) -> list[float]:
        """Embed one search query, L2-normalised.

        Raises:
            EmbedderUnavailableError: the model or provider failed.
        """
        ...


@dataclass(frozen=True, slots=True)
class DocumentPage:
    """One page of documents and the cursor of the next page (None on the last)."""

    items: list[Document]
    next_cursor: str | None


class KnowledgeBase(Protocol):
    """Stores versioned documents with their embedded chunks and answers hybrid searches.

    Raises (every method):
        StorageUnavailableError: the store cannot be reached.
    """

    async def get(self, document_id: UUID) -> Document | None:
        """The document with this id."""
        ...

    async def get_by_external_id(self, external_id: str) -> Document | None:
        """The document with this external id."""
        ...

    async def list_documents(self, *, tag: str | None, limit: int, cursor: str | None) -> DocumentPage:
        """Documents, newest first, optionally only those carrying ``tag``.

        Raises:
            InvalidInputError: the cursor is not one this store issued.
        """
        ...

    async def upsert(
        self, draft: DocumentDraft, chunks: Sequence[EmbeddedChunk], now: datetime
    ) -> tuple[Document, UpsertStatus]:
        """Create the document, or replace its chunks with a new version, atomically.

        Concurrent upserts of one external id are serialised: the result is one document whose version counts
        the changes applied. When the stored fingerprint equals the draft's, nothing is written (``UNCHANGED``).
        Searches see either the old version's chunks or the new one's, never a mix and never none.
        """
        ...

    async def delete(self, document_id: UUID) -> bool:
        """Remove the document and its chunks from search at once; False when it did not exist."""
        ...

    async def indexed_chunks(self, document_id: UUID, version: int) -> list[IndexedChunk]:
        """The chunks of that version of the document, by ordinal; empty when it is gone or at another version."""
        ...

    async def replace_flags(
        self,
        document_id: UUID,
        version: int,
        flags: Sequence[InjectionFlag],
        chunk_flags: Mapping[int, Sequence[InjectionFlag]],
    ) -> bool:
        """Set the document's flags, and each chunk's by ordinal (a chunk not named has none), in one step.

        Only while the document is at ``version``: False when it was updated or deleted meanwhile (its newer
        version was flagged when it was written), and nothing changes.
        """
        ...

    async def search(self, query: SearchQuery, embedding: Sequence[float]) -> list[SearchHit]:
        """Hybrid retrieval: vector and full-text rankings fused by reciprocal rank, best chunk per document."""
        ...

    async def vector_dimension(self) -> int | None:
        """The dimension of the stored vectors' column, when the store fixes one."""
        ...


class Cache(Protocol):
    """A best-effort byte cache with expiry; losing it costs only time.

    Raises (every method):
        CacheUnavailableError: the cache cannot be reached.
    """

    async def get(self, key: str) -> bytes | None:
        """The cached value, or None."""
        ...

    async def set(self, key: str, value: bytes, ttl_seconds: int) -> None:
        """Store a value that expires after ``ttl_seconds``."""
        ...
