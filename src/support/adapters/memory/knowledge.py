import asyncio
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from uuid import UUID

from support.domain.ids import new_id
from support.domain.injection import InjectionFlag
from support.domain.knowledge import (
    RRF_CANDIDATES,
    RRF_K,
    ContextChunk,
    Document,
    DocumentDraft,
    EmbeddedChunk,
    IndexedChunk,
    SearchHit,
    SearchQuery,
    UpsertStatus,
)
from support.domain.paging import ID_CURSOR
from support.ports.knowledge import DocumentPage

_WORD = re.compile(r"[a-z0-9]+")


@dataclasses.dataclass(frozen=True, slots=True)
class _StoredChunk:
    id: UUID
    item: EmbeddedChunk
    words: frozenset[str]


class InMemoryKnowledgeBase:
    """Exact cosine search plus word-overlap ranking, fused like the PostgreSQL adapter's."""

    def __init__(self) -> None:
        self._documents: dict[UUID, Document] = {}
        self._chunks: dict[UUID, list[_StoredChunk]] = {}
        self._lock = asyncio.Lock()

    async def get(self, document_id: UUID) -> Document | None:
        return self._documents.get(document_id)

    async def get_by_external_id(self, external_id: str) -> Document | None:
        return next((doc for doc in self._documents.values() if doc.external_id == external_id), None)

    async def list_documents(self, *, tag: str | None, limit: int, cursor: str | None) -> DocumentPage:
        documents = sorted(self._documents.values(), key=lambda doc: doc.id, reverse=True)
        if tag:
            documents = [doc for doc in documents if tag in doc.tags]
        if cursor:
            after = ID_CURSOR.decode(cursor)
            documents = [doc for doc in documents if doc.id < after]
        items = documents[:limit]
        return DocumentPage(items=items, next_cursor=ID_CURSOR.encode(items[-1].id) if len(documents) > limit else None)

    async def upsert(
        self, draft: DocumentDraft, chunks: Sequence[EmbeddedChunk], now: datetime
    ) -> tuple[Document, UpsertStatus]:
        async with self._lock:
            existing = await self.get_by_external_id(draft.external_id)
            if existing is not None and existing.fingerprint == draft.fingerprint:
                return existing, UpsertStatus.UNCHANGED
            document = Document(
                id=existing.id if existing else new_id(),
                external_id=draft.external_id,
                title=draft.title,
                content_type=draft.content_type,
                url=draft.url,
                tags=draft.tags,
                audience=draft.audience,
                metadata=dict(draft.metadata),
                fingerprint=draft.fingerprint,
                version=existing.version + 1 if existing else 1,
                chunk_count=len(chunks),
                created_at=existing.created_at if existing else now,
                updated_at=now,
                flags=draft.flags,
            )
            self._chunks[document.id] = [
                _StoredChunk(new_id(), item, frozenset(_WORD.findall(item.search_text.lower()))) for item in chunks
            ]
            self._documents[document.id] = document
            return document, UpsertStatus.UPDATED if existing else UpsertStatus.CREATED

    async def indexed_chunks(self, document_id: UUID, version: int) -> list[IndexedChunk]:
        document = self._documents.get(document_id)
        if document is None or document.version != version:
            return []
        return [
            IndexedChunk(stored.item.chunk.ordinal, stored.item.search_text, stored.item.reasons)
            for stored in self._chunks[document_id]
        ]

    async def replace_flags(
        self,
        document_id: UUID,
        version: int,
        flags: Sequence[InjectionFlag],
        chunk_flags: Mapping[int, Sequence[InjectionFlag]],
    ) -> bool:
        async with self._lock:
            document = self._documents.get(document_id)
            if document is None or document.version != version:
                return False
            self._documents[document_id] = dataclasses.replace(document, flags=tuple(flags))
            self._chunks[document_id] = [
                dataclasses.replace(
                    stored,
                    item=dataclasses.replace(stored.item, flags=tuple(chunk_flags.get(stored.item.chunk.ordinal, ()))),
                )
                for stored in self._chunks[document_id]
            ]
            return True

    async def delete(self, document_id: UUID) -> bool:
        self._chunks.pop(document_id, None)
        return self._documents.pop(document_id, None) is not None

    async def search(self, query: SearchQuery, embedding: Sequence[float]) -> list[SearchHit]:
        candidates = [
            (document, stored)
            for document in self._documents.values()
            if document.audience in query.audiences and (not query.tags or set(query.tags) & set(document.tags))
            for stored in self._chunks[document.id]
            if not (query.exclude_flagged and stored.item.flags)
        ]
        depth = max(RRF_CANDIDATES, query.limit * 4)
        similarities = {stored.id: _cosine(embedding, stored.item.embedding) for _, stored in candidates}
        by_vector = sorted(candidates, key=lambda pair: -similarities[pair[1].id])[:depth]
        terms = frozenset(_WORD.findall(query.text.lower()))
        overlaps = {stored.id: len(terms & stored.words) for _, stored in candidates}
        by_text = sorted((pair for pair in candidates if overlaps[pair[1].id]), key=lambda p: -overlaps[p[1].id])
        vector_ranks = {stored.id: rank for rank, (_, stored) in enumerate(by_vector, 1)}
        text_ranks = {stored.id: rank for rank, (_, stored) in enumerate(by_text[:depth], 1)}
        best: dict[UUID, SearchHit] = {}
        for document, stored in candidates:
            vector_rank, text_rank = vector_ranks.get(stored.id), text_ranks.get(stored.id)
            if vector_rank is None and text_rank is None:
                continue
            score = sum(1 / (RRF_K + rank) for rank in (vector_rank, text_rank) if rank is not None)
            hit = SearchHit(
                chunk_id=stored.id,
                document_id=document.id,
                external_id=document.external_id,
                version=document.version,
                ordinal=stored.item.chunk.ordinal,
                title=document.title,
                url=document.url,
                heading_path=stored.item.chunk.heading_path,
                text=stored.item.chunk.text,
                score=score,
                vector_similarity=similarities[stored.id] if vector_rank is not None else None,
                vector_rank=vector_rank,
                text_rank=text_rank,
                flags=stored.item.reasons,
            )
            if document.id not in best or best[document.id].score < score:
                best[document.id] = hit
        hits = sorted(best.values(), key=lambda hit: (-hit.score, hit.chunk_id))[: query.limit]
        if query.context <= 0:
            return hits
        return [dataclasses.replace(hit, context=self._context(hit, query)) for hit in hits]

    def _context(self, hit: SearchHit, query: SearchQuery) -> tuple[ContextChunk, ...]:
        return tuple(
            ContextChunk(stored.id, chunk.ordinal, chunk.heading_path, chunk.text, stored.item.reasons)
            for stored in self._chunks[hit.document_id]
            if (chunk := stored.item.chunk).ordinal != hit.ordinal
            and abs(chunk.ordinal - hit.ordinal) <= query.context
            and not (query.exclude_flagged and stored.item.flags)
        )

    async def vector_dimension(self) -> int | None:
        return None


def _cosine(left: Sequence[float], right: Sequence[float]) -> float:
    dot = sum(a * b for a, b in zip(left, right, strict=True))
    norm = math.sqrt(sum(a * a for a in left)) * math.sqrt(sum(b * b for b in right))
    return dot / norm if norm else 0.0
