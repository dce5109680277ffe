import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast
from uuid import UUID

import msgspec
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, REAL
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from support.adapters.postgres.driver import DriverStatement, compile_for_driver, driver_connection
from support.adapters.postgres.errors import storage_errors
from support.adapters.postgres.models import ChunkRow, DocumentRow
from support.domain.ids import new_id
from support.domain.injection import InjectionFlag, InjectionReason, reasons_of
from support.domain.knowledge import (
    RRF_CANDIDATES,
    RRF_K,
    Audience,
    ContextChunk,
    Document,
    DocumentDraft,
    EmbeddedChunk,
    IndexedChunk,
    SearchHit,
    SearchQuery,
    UpsertStatus,
    indexed_text,
)
from support.domain.paging import ID_CURSOR
from support.ports.knowledge import DocumentPage

# BM25 over chunks: term saturation and length normalisation (the usual values; tuning moved little).
BM25_K1 = 1.2
BM25_B = 0.75
# Candidate generation for BM25 uses the query's rarest terms: they carry the most weight, and they keep
# the set of chunks to score small on a large corpus (their document frequencies must fit the budget).
SELECTIVE_TERMS = 12
# At most this many chunks matching those terms are scored.
TEXT_PRESELECT = 200

_FILTERS = (
    "audience = ANY(:audiences) AND (cardinality(:tags) = 0 OR tags && :tags)"
    " AND (NOT :exclude_flagged OR cardinality(flags) = 0)"
)

# The tuning constants are written into the SQL, not bound: knowing them, PostgreSQL plans the statement once and
# reuses the plan (with them bound it planned every run again: ~0.9 ms of a 4 ms search at 100k chunks).
_SEARCH_TEMPLATE = """
WITH query_vector AS MATERIALIZED (
    -- Sent as a binary real[] and made a vector once: a text vector costs ~0.2 ms to format in Python, and a cast
    -- written into the ORDER BY and the select list would be evaluated again for every row a generic plan returns.
    SELECT CAST(:embedding AS vector) AS v
),
vector_hits AS (
    SELECT id, document_id, embedding <=> (SELECT v FROM query_vector) AS distance
    FROM kb_chunks
    WHERE {filters}
    ORDER BY embedding <=> (SELECT v FROM query_vector)
    LIMIT {candidates}
),
vector_ranked AS (
    SELECT id, document_id, distance, row_number() OVER (ORDER BY distance) AS rank FROM vector_hits
),
stats AS (
    SELECT greatest(chunks, 1)::float8 AS n, greatest(total_tokens, 1)::float8 / greatest(chunks, 1) AS avg_len
    FROM kb_corpus
),
query_terms AS MATERIALIZED (
    SELECT DISTINCT q.lexeme, l.df, ln(1 + (s.n - l.df + 0.5) / (l.df + 0.5)) AS idf
    FROM unnest(to_tsvector('english', :query_text)) AS q
    JOIN kb_lexemes l ON l.lexeme = q.lexeme AND l.df > 0
    CROSS JOIN stats s
),
selective_query AS (
    -- The rarest terms whose document frequencies add up to the candidate budget (always at least the rarest):
    -- they carry most of BM25's weight, and one GIN bitmap scan over them stays small however large the corpus.
    SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery AS tsq
    FROM (
        SELECT lexeme, row_number() OVER w AS position, sum(df) OVER w AS running
        FROM query_terms
        WINDOW w AS (ORDER BY df, lexeme)
    ) ranked
    WHERE position = 1 OR (running <= {text_preselect} AND position <= {selective_terms})
),
query_lexemes AS (
    SELECT array_agg(lexeme) AS lexemes FROM query_terms
),
text_candidates AS (
    SELECT c.id, c.document_id, c.token_count,
           -- Only the query's lexemes, with their positions: mark them (weight A), keep the marked ones.
           ts_filter(setweight(c.tsv, 'A', ql.lexemes), '{{a}}') AS matched
    FROM kb_chunks c, selective_query q, query_lexemes ql
    WHERE c.tsv @@ q.tsq AND {filters}
    -- No ORDER BY: the scan stops after the first matches in storage order instead of reading (and filtering
    -- the lexemes of) every match to sort them. The budget is only exceeded when the rarest term alone is
    -- common, and then the vector ranking carries the query (bench/retrieval.py: p50 5.6 -> 4.4 ms at 100k).
    LIMIT {text_preselect}
),
text_scored AS (
    SELECT c.id, c.document_id,
           sum(t.idf * (coalesce(array_length(u.positions, 1), 1) * ({k1}::float8 + 1))
               / (coalesce(array_length(u.positions, 1), 1)
                  + {k1}::float8 * (1 - {b}::float8 + {b}::float8 * c.token_count / s.avg_len))
           ) AS bm25
    FROM text_candidates c
    CROSS JOIN LATERAL unnest(c.matched) AS u
    JOIN query_terms t ON t.lexeme = u.lexeme
    CROSS JOIN stats s
    GROUP BY c.id, c.document_id
    ORDER BY bm25 DESC
    LIMIT {candidates}
),
text_ranked AS (
    SELECT id, document_id, row_number() OVER (ORDER BY bm25 DESC, id) AS rank FROM text_scored
),
fused AS MATERIALIZED (
    SELECT coalesce(v.id, t.id) AS id, coalesce(v.document_id, t.document_id) AS document_id,
           coalesce(1.0 / ({rrf_k} + v.rank), 0) + coalesce(1.0 / ({rrf_k} + t.rank), 0) AS score,
           v.rank AS vector_rank, t.rank AS text_rank, 1 - v.distance AS similarity
    FROM vector_ranked v FULL OUTER JOIN text_ranked t ON v.id = t.id
),
best_per_document AS (
    SELECT DISTINCT ON (document_id) id, document_id, score, vector_rank, text_rank, similarity
    FROM fused
    ORDER BY document_id, score DESC, similarity DESC NULLS LAST, id
)
SELECT b.id AS chunk_id, b.score, b.vector_rank, b.text_rank, b.similarity,
       c.ordinal, c.heading_path, c.text, c.version, c.flags AS chunk_flags,
       d.id AS document_id, d.external_id, d.title, d.url
FROM best_per_document b
JOIN kb_chunks c ON c.id = b.id
JOIN kb_documents d ON d.id = b.document_id
ORDER BY b.score DESC, b.id
LIMIT :limit
"""

# The hits' neighbouring chunks (SearchQuery.context), read in the same statement, after the LIMIT: a handful of
# lookups on the document id index, no second round trip.
_CONTEXT_TEMPLATE = """
SELECT hits.*, (
    SELECT jsonb_agg(
        jsonb_build_object(
            'chunk_id', n.id, 'ordinal', n.ordinal, 'heading_path', n.heading_path, 'text', n.text, 'flags', n.flags
        ) ORDER BY n.ordinal
    )::text  -- decoded by msgspec, not the connection's json codec
    FROM kb_chunks n
    WHERE n.document_id = hits.document_id AND n.version = hits.version AND n.ordinal <> hits.ordinal
      AND n.ordinal BETWEEN hits.ordinal - {context} AND hits.ordinal + {context}
      AND (NOT :exclude_flagged OR cardinality(n.flags) = 0)
) AS context
FROM ({search}) hits
ORDER BY hits.score DESC, hits.chunk_id
"""


class _ContextChunk(msgspec.Struct, frozen=True):
    chunk_id: UUID
    ordinal: int
    heading_path: list[str]
    text: str
    flags: list[str]


_CONTEXT = msgspec.json.Decoder(list[_ContextChunk] | None)


@functools.cache
def search_statement(candidates: int, context: int = 0) -> DriverStatement:
    """The hybrid search as the driver runs it (``candidates`` per ranking, ``context`` chunks each side)."""
    text = _SEARCH_TEMPLATE.format(
        filters=_FILTERS,
        candidates=candidates,
        text_preselect=TEXT_PRESELECT,
        selective_terms=SELECTIVE_TERMS,
        k1=BM25_K1,
        b=BM25_B,
        rrf_k=RRF_K,
    )
    if context > 0:
        text = _CONTEXT_TEMPLATE.format(search=text.strip(), context=context)
    statement = sa.text(text).bindparams(
        sa.bindparam("embedding", type_=ARRAY(REAL)),
        sa.bindparam("audiences", type_=ARRAY(sa.Text)),
        sa.bindparam("tags", type_=ARRAY(sa.Text)),
        sa.bindparam("exclude_flagged", type_=sa.Boolean),
    )
    # Compiled for the driver: search() runs it on the session's own asyncpg connection.
    return compile_for_driver(statement)


# Apply a document's change to the BM25 statistics: +1 per lexeme of each chunk of the new version, -1 per
# lexeme of each chunk of older versions. Rows are written in lexeme order, so concurrent upserts lock
# shared lexemes in the same order and cannot deadlock.
_UPDATE_LEXEMES_SQL = sa.text(
    """
INSERT INTO kb_lexemes (lexeme, df)
SELECT u.lexeme, sum(CASE WHEN c.version = :version THEN 1 ELSE -1 END)
FROM kb_chunks c CROSS JOIN LATERAL unnest(c.tsv) AS u
WHERE c.document_id = :document_id
GROUP BY u.lexeme
ORDER BY u.lexeme
ON CONFLICT (lexeme) DO UPDATE SET df = kb_lexemes.df + EXCLUDED.df
"""
)
_UPDATE_CORPUS_SQL = sa.text(
    """
UPDATE kb_corpus SET
    chunks = chunks + (SELECT count(*) FILTER (WHERE version = :version) - count(*) FILTER (WHERE version <> :version)
                       FROM kb_chunks WHERE document_id = :document_id),
    total_tokens = total_tokens + (SELECT coalesce(sum(CASE WHEN version = :version THEN token_count
                                                            ELSE -token_count END), 0)
                                   FROM kb_chunks WHERE document_id = :document_id)
WHERE id = 1
"""
)


_CHUNKS = cast("sa.Table", ChunkRow.__table__)


def _to_domain(row: DocumentRow) -> Document:
    return Document(
        id=row.id,
        external_id=row.external_id,
        title=row.title,
        content_type=row.content_type,
        url=row.url,
        tags=tuple(row.tags),
        audience=Audience(row.audience),
        metadata=dict(row.metadata_),
        fingerprint=row.fingerprint,
        version=row.version,
        chunk_count=row.chunk_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
        flags=tuple(_flag(item) for item in row.flags),
    )


def _flag(item: Mapping[str, Any]) -> InjectionFlag:
    chunk = item.get("chunk")
    return InjectionFlag(
        reason=InjectionReason(item["reason"]),
        start=int(item["start"]),
        end=int(item["end"]),
        excerpt=str(item["excerpt"]),
        chunk=None if chunk is None else int(chunk),
    )


def _flag_json(flag: InjectionFlag) -> dict[str, object]:
    return {"reason": flag.reason.value, "start": flag.start, "end": flag.end, "excerpt": flag.excerpt,
            "chunk": flag.chunk}  # fmt: skip


def _reasons(values: Sequence[str]) -> tuple[InjectionReason, ...]:
    # A reason a newer release stored and this one does not know is skipped, not an error on every search.
    known = {reason.value for reason in InjectionReason}
    return tuple(InjectionReason(value) for value in values if value in known)


class PgVectorKnowledgeBase:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get(self, document_id: UUID) -> Document | None:
        async with storage_errors():
            row = await self._session.get(DocumentRow, document_id)
        return None if row is None or row.version == 0 else _to_domain(row)

    async def get_by_external_id(self, external_id: str) -> Document | None:
        statement = sa.select(DocumentRow).where(DocumentRow.external_id == external_id, DocumentRow.version > 0)
        async with storage_errors():
            row = (await self._session.execute(statement)).scalar_one_or_none()
        return None if row is None else _to_domain(row)

    async def list_documents(self, *, tag: str | None, limit: int, cursor: str | None) -> DocumentPage:
        statement = sa.select(DocumentRow).where(DocumentRow.version > 0).order_by(DocumentRow.id.desc())
        if tag:
            statement = statement.where(DocumentRow.tags.contains([tag]))
        if cursor:
            statement = statement.where(DocumentRow.id < ID_CURSOR.decode(cursor))
        async with storage_errors():
            rows = (await self._session.execute(statement.limit(limit + 1))).scalars().all()
        items = [_to_domain(row) for row in rows[:limit]]
        return DocumentPage(items=items, next_cursor=ID_CURSOR.encode(items[-1].id) if len(rows) > limit else None)

    async def upsert(
        self, draft: DocumentDraft, chunks: Sequence[EmbeddedChunk], now: datetime
    ) -> tuple[Document, UpsertStatus]:
        async with storage_errors():
            # Insert a placeholder (version 0) or find the existing row, then lock it: concurrent upserts of one
            # external id queue here, and each sees the version the previous one committed.
            await self._session.execute(
                pg_insert(DocumentRow)
                .values(
                    id=new_id(),
                    external_id=draft.external_id,
                    title=draft.title,
                    content_type=draft.content_type,
                    audience=draft.audience.value,
                    fingerprint="",
                    version=0,
                    chunk_count=0,
                    created_at=now,
                    updated_at=now,
                )
                .on_conflict_do_nothing(index_elements=[DocumentRow.external_id])
            )
            row = (
                await self._session.execute(
                    sa.select(DocumentRow)
                    .where(DocumentRow.external_id == draft.external_id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
            ).scalar_one()
            if row.version > 0 and row.fingerprint == draft.fingerprint:
                return _to_domain(row), UpsertStatus.UNCHANGED
            status = UpsertStatus.CREATED if row.version == 0 else UpsertStatus.UPDATED
            version = row.version + 1
            if chunks:
                await self._session.execute(
                    sa.insert(ChunkRow),
                    [
                        {
                            "id": new_id(),
                            "document_id": row.id,
                            "version": version,
                            "ordinal": item.chunk.ordinal,
                            "heading_path": list(item.chunk.heading_path),
                            "text": item.chunk.text,
                            "context": item.context,
                            "token_count": item.chunk.token_count,
                            "tags": list(draft.tags),
                            "audience": draft.audience.value,
                            "embedding": list(item.embedding),
                            "flags": [reason.value for reason in item.reasons],
                        }
                        for item in chunks
                    ],
                )
            await self._apply_statistics(row.id, version)
            await self._session.execute(
                sa.delete(ChunkRow).where(ChunkRow.document_id == row.id, ChunkRow.version != version)
            )
            row.title = draft.title
            row.content_type = draft.content_type
            row.url = draft.url
            row.tags = list(draft.tags)
            row.audience = draft.audience.value
            row.metadata_ = dict(draft.metadata)
            row.fingerprint = draft.fingerprint
            row.flags = [_flag_json(flag) for flag in draft.flags]
            row.version = version
            row.chunk_count = len(chunks)
            row.updated_at = now
            await self._session.flush()
        return _to_domain(row), status

    async def _apply_statistics(self, document_id: UUID, version: int) -> None:
        parameters = {"document_id": document_id, "version": version}
        await self._session.execute(_UPDATE_LEXEMES_SQL, parameters)
        await self._session.execute(_UPDATE_CORPUS_SQL, parameters)

    async def delete(self, document_id: UUID) -> bool:
        async with storage_errors():
            # Version 0 matches no chunk: every chunk of the document counts as removed.
            await self._session.execute(
                sa.select(DocumentRow.id).where(DocumentRow.id == document_id).with_for_update()
            )
            await self._apply_statistics(document_id, 0)
            result = await self._session.execute(
                sa.delete(DocumentRow).where(DocumentRow.id == document_id).returning(DocumentRow.id)
            )
            return result.scalar_one_or_none() is not None

    async def indexed_chunks(self, document_id: UUID, version: int) -> list[IndexedChunk]:
        statement = (
            sa.select(ChunkRow.ordinal, ChunkRow.context, ChunkRow.text, ChunkRow.flags)
            .where(ChunkRow.document_id == document_id, ChunkRow.version == version)
            .order_by(ChunkRow.ordinal)
        )
        async with storage_errors():
            rows = (await self._session.execute(statement)).all()
        return [
            IndexedChunk(ordinal, indexed_text(context, text), _reasons(flags))
            for ordinal, context, text, flags in rows
        ]

    async def replace_flags(
        self,
        document_id: UUID,
        version: int,
        flags: Sequence[InjectionFlag],
        chunk_flags: Mapping[int, Sequence[InjectionFlag]],
    ) -> bool:
        async with storage_errors():
            # The version check takes the document's row lock, which an upsert of the same document waits for.
            updated = await self._session.execute(
                sa.update(DocumentRow)
                .where(DocumentRow.id == document_id, DocumentRow.version == version)
                .values(flags=[_flag_json(flag) for flag in flags])
                .returning(DocumentRow.id)
            )
            if updated.scalar_one_or_none() is None:
                return False
            of_version = (_CHUNKS.c.document_id == document_id) & (_CHUNKS.c.version == version)
            await self._session.execute(
                sa.update(_CHUNKS).where(of_version, sa.func.cardinality(_CHUNKS.c.flags) > 0).values(flags=[])
            )
            flagged = [
                {"chunk_ordinal": ordinal, "chunk_flags": [reason.value for reason in reasons_of(found)]}
                for ordinal, found in chunk_flags.items()
                if found
            ]
            if flagged:
                connection = await self._session.connection()
                await connection.execute(
                    sa.update(_CHUNKS)
                    .where(of_version, _CHUNKS.c.ordinal == sa.bindparam("chunk_ordinal"))
                    .values(flags=sa.bindparam("chunk_flags", type_=ARRAY(sa.Text))),
                    flagged,
                )
        return True

    async def search(self, query: SearchQuery, embedding: Sequence[float]) -> list[SearchHit]:
        statement = search_statement(max(RRF_CANDIDATES, query.limit * 4), max(query.context, 0))
        parameters = {
            "embedding": list(embedding),
            "query_text": query.text,
            "audiences": [audience.value for audience in query.audiences],
            "tags": list(query.tags),
            "exclude_flagged": query.exclude_flagged,
            "limit": query.limit,
        }
        # On the session's driver connection: SQLAlchemy's statement and result machinery cost ~0.6 ms a search
        # (~12 % at 100k chunks, bench/retrieval.py), for a statement that needs none of it. A lone search needs
        # no transaction (no BEGIN and ROLLBACK round trips); in a turn's scope it joins the one begun.
        async with driver_connection(self._session, begin=False) as driver:
            rows = await driver.fetch(statement.sql, *statement.arguments(parameters))
        return [
            SearchHit(
                chunk_id=row["chunk_id"],
                document_id=row["document_id"],
                external_id=row["external_id"],
                version=row["version"],
                ordinal=row["ordinal"],
                title=row["title"],
                url=row["url"],
                heading_path=tuple(row["heading_path"]),
                text=row["text"],
                score=float(row["score"]),
                vector_similarity=None if row["similarity"] is None else float(row["similarity"]),
                vector_rank=row["vector_rank"],
                text_rank=row["text_rank"],
                flags=_reasons(row["chunk_flags"] or ()),
                context=_context(row["context"]) if query.context > 0 else (),
            )
            for row in rows
        ]

    async def vector_dimension(self) -> int | None:
        statement = sa.text(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'kb_chunks'::regclass AND attname = 'embedding'"
        )
        async with storage_errors():
            dimension = (await self._session.execute(statement)).scalar_one_or_none()
        return None if dimension is None or dimension < 0 else int(dimension)


def _context(payload: str | None) -> tuple[ContextChunk, ...]:
    chunks = _CONTEXT.decode(payload) if payload is not None else None
    return tuple(
        ContextChunk(chunk.chunk_id, chunk.ordinal, tuple(chunk.heading_path), chunk.text, _reasons(chunk.flags))
        for chunk in chunks or ()
    )
