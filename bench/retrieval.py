"""Retrieval benchmark: hybrid search over 100,000 chunks, HNSW recall, ingestion throughput.

Run: ``.venv/bin/python -m bench.retrieval`` (``--chunks`` to change the size). Everything is measured in one
run, on an embedded PostgreSQL started for it, each figure beside its baseline:

- the knowledge base adapter's hybrid search vs the same SQL sent raw with asyncpg (the adapter's overhead),
  with a plain HNSW + ``ts_rank_cd`` fusion query as a reference point;
- HNSW recall@10 against exact search;
- end-to-end ingestion (extract, chunk, embed, store) vs the raw embedder on the same chunk texts.

Corpus: chunks are made of real sentences from the TechQA technotes (``../shared/eval/techqa``), drawn mostly from
one technote each so topics cluster as they do in a help center. Embedding 100,000 chunks with the model would
take hours on two cores, so each chunk's vector is the normalised mean of its sentences' real MiniLM vectors:
the same kind of distribution (clustered, 384-d, unit length) that mean-pooled models produce.
"""

import argparse
import asyncio
import json
import random
import re
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
from pgvector.asyncpg import register_vector

from support.adapters.embedding.onnx_minilm import OnnxMiniLMEmbedder
from support.adapters.extraction.extractor import StructuredTextExtractor
from support.adapters.postgres.engine import create_engine, create_session_factory
from support.adapters.postgres.knowledge import PgVectorKnowledgeBase, search_statement
from support.adapters.postgres.uow import SqlAlchemyUnitOfWork
from support.adapters.system import SystemClock
from support.application.knowledge import IngestDocument, IngestDocuments, IngestRequest, KnowledgeLimits
from support.cli import migrations
from support.config import DatabaseSettings
from support.devservers.postgres import EmbeddedPostgres
from support.domain.ids import new_id
from support.domain.knowledge import RRF_CANDIDATES, SearchQuery

TECHQA = Path(__file__).resolve().parents[2] / "shared" / "eval" / "techqa"
RESULTS = Path(__file__).resolve().parent / "results"
SENTENCE = re.compile(r"(?<=[.!?])\s+")
CHUNKS_PER_DOCUMENT = 10
EF_SEARCH = DatabaseSettings().hnsw_ef_search
# Bulk ingestion is measured this many times, alternating with the raw embedder (measure_ingestion).
INGEST_ROUNDS = 3
Queries = list[tuple[str, list[float]]]

REFERENCE_SQL = """
WITH v AS (SELECT id, row_number() OVER (ORDER BY embedding <=> $1) AS r FROM
           (SELECT id, embedding FROM kb_chunks ORDER BY embedding <=> $1 LIMIT 40) x),
     t AS (SELECT id, row_number() OVER (ORDER BY rank DESC) AS r FROM
           (SELECT id, ts_rank_cd(tsv, websearch_to_tsquery('english', $2)) AS rank FROM kb_chunks
            WHERE tsv @@ websearch_to_tsquery('english', $2) ORDER BY rank DESC LIMIT 40) y)
SELECT coalesce(v.id, t.id), coalesce(1.0 / (60 + v.r), 0) + coalesce(1.0 / (60 + t.r), 0) AS s
FROM v FULL JOIN t ON v.id = t.id ORDER BY s DESC LIMIT 5
"""
VECTOR_TOP10 = "SELECT id FROM kb_chunks ORDER BY embedding <=> $1 LIMIT 10"
# A different text, so a different prepared statement: asyncpg caches statements by text, and PostgreSQL's cached
# generic plan would otherwise carry the planner setting of whichever run made it into the other kind of search.
EXACT_TOP10 = "SELECT id FROM kb_chunks ORDER BY embedding <=> $1 LIMIT 10 -- exact"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 0.5), 3),
        "p99_ms": round(percentile(values, 0.99), 3),
        "mean_ms": round(statistics.fmean(values), 3),
    }


async def timed(call: Callable[[], Awaitable[Any]], repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def load_sentences() -> list[list[str]]:
    documents = []
    for line in (TECHQA / "kb.jsonl").read_text().splitlines():
        record = json.loads(line)
        sentences = [s.strip() for s in SENTENCE.split(" ".join(record["text"].split())) if 30 <= len(s.strip()) <= 400]
        if len(sentences) >= 4:
            documents.append(sentences)
    return documents


async def build_corpus(
    connection: asyncpg.Connection, embedder: OnnxMiniLMEmbedder, total_chunks: int, rng: random.Random
) -> None:
    # Every technote for a large corpus; a few for a small one (the suite's smoke run embeds little).
    documents = load_sentences()[: max(8, total_chunks // 25)]
    pool = [sentence for sentences in documents for sentence in sentences]
    print(f"embedding {len(pool)} real sentences for the corpus vectors …", flush=True)
    started = time.perf_counter()
    vectors = np.asarray(await embedder.embed_documents(pool), dtype=np.float32)
    print(f"  {len(pool) / (time.perf_counter() - started):.0f} sentences/s", flush=True)
    offsets, index = [], 0
    for sentences in documents:
        offsets.append(index)
        index += len(sentences)

    document_rows: list[tuple[Any, ...]] = []
    chunk_rows: list[tuple[Any, ...]] = []
    now = SystemClock().now()
    for number in range(total_chunks // CHUNKS_PER_DOCUMENT):
        document_id = new_id()
        source = rng.randrange(len(documents))
        title = f"Technote {number}: " + documents[source][0][:80]
        document_rows.append(
            (document_id, f"bench-{number}", title, "text/plain", None, [], "public", "{}", "x", 1,
             CHUNKS_PER_DOCUMENT, "[]", now, now)
        )  # fmt: skip
        for ordinal in range(CHUNKS_PER_DOCUMENT):
            picks = [offsets[source] + rng.randrange(len(documents[source])) for _ in range(rng.randint(5, 8))]
            other = rng.randrange(len(documents))
            picks.append(offsets[other] + rng.randrange(len(documents[other])))
            text = " ".join(pool[pick] for pick in picks)
            vector = vectors[picks].mean(axis=0)
            vector /= np.linalg.norm(vector)
            chunk_rows.append(
                (new_id(), document_id, 1, ordinal, ["Section"], text, title + " > Section",
                 len(text.split()) * 4 // 3, [], "public", vector)
            )  # fmt: skip
    print(f"loading {len(document_rows)} documents and {len(chunk_rows)} chunks …", flush=True)
    indexes = await connection.fetch(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'kb_chunks' AND indexname <> 'pk_kb_chunks'"
    )
    for row in await connection.fetch(
        "SELECT indexname FROM pg_indexes WHERE tablename = 'kb_chunks' AND indexname <> 'pk_kb_chunks'"
    ):
        await connection.execute(f'DROP INDEX "{row["indexname"]}"')
    await connection.copy_records_to_table(
        "kb_documents",
        records=document_rows,
        columns=["id", "external_id", "title", "content_type", "url", "tags", "audience", "metadata",
                 "fingerprint", "version", "chunk_count", "flags", "created_at", "updated_at"],
    )  # fmt: skip
    await connection.copy_records_to_table(
        "kb_chunks",
        records=chunk_rows,
        columns=["id", "document_id", "version", "ordinal", "heading_path", "text", "context", "token_count",
                 "tags", "audience", "embedding"],
    )  # fmt: skip
    started = time.perf_counter()
    await connection.execute("SET maintenance_work_mem = '1GB'")
    for row in indexes:
        await connection.execute(row["indexdef"])
    print(f"  indexes built in {time.perf_counter() - started:.1f} s", flush=True)
    await connection.execute(
        "INSERT INTO kb_lexemes (lexeme, df) SELECT word, ndoc FROM ts_stat('SELECT tsv FROM kb_chunks')"
    )
    await connection.execute(
        "UPDATE kb_corpus SET chunks = (SELECT count(*) FROM kb_chunks), "
        "total_tokens = (SELECT sum(token_count) FROM kb_chunks)"
    )
    await connection.execute("VACUUM ANALYZE kb_chunks")
    await connection.execute("VACUUM ANALYZE kb_documents")


async def measure_search(
    url: str, connection: asyncpg.Connection, queries: list[tuple[str, list[float]]]
) -> dict[str, Any]:
    # Exactly the statement the adapter runs for a 5-hit search, prepared on a plain connection.
    search = search_statement(RRF_CANDIDATES)
    statement = await connection.prepare(search.sql)

    def parameters(text: str, embedding: list[float]) -> list[Any]:
        values = {
            "embedding": list(embedding), "query_text": text, "audiences": ["public"], "tags": [],
            "exclude_flagged": False, "limit": 5,
        }  # fmt: skip
        return search.arguments(values)

    engine = create_engine(url, DatabaseSettings(pool_size=2))
    sessions = create_session_factory(engine)
    reference = await connection.prepare(REFERENCE_SQL)
    samples: dict[str, list[float]] = {"adapter": [], "raw": [], "reference": []}
    order = random.Random(len(queries))
    async with sessions() as session:
        knowledge = PgVectorKnowledgeBase(session)
        # Two passes over the queries, the first unmeasured: it warms the caches and plans, so no path pays for
        # reading a page the next one then finds in memory. Within a query the three run in a random order.
        for measured in (False, True):
            for text, embedding in queries:
                args = parameters(text, embedding)
                vector = np.asarray(embedding, dtype=np.float32)
                query = SearchQuery(text=text, limit=5)
                calls: dict[str, Callable[[], Awaitable[Any]]] = {
                    "adapter": lambda: knowledge.search(query, embedding),  # noqa: B023
                    "raw": lambda: statement.fetch(*args),  # noqa: B023
                    "reference": lambda: reference.fetch(vector, text),  # noqa: B023
                }
                for name in order.sample(list(calls), len(calls)):
                    elapsed = await timed(calls[name], 1)
                    if measured:
                        samples[name] += elapsed
    await engine.dispose()
    adapter_ms, raw_ms, reference_ms = samples["adapter"], samples["raw"], samples["reference"]
    text, embedding = queries[0]
    plan = await connection.fetch("EXPLAIN (ANALYZE, BUFFERS) " + search.sql, *parameters(text, embedding))
    adapter, raw = summary(adapter_ms), summary(raw_ms)
    return {
        "adapter": adapter,
        "raw_sql": raw,
        "reference_hnsw_fts": summary(reference_ms),
        "adapter_over_raw_p50": round(adapter["p50_ms"] / raw["p50_ms"], 3),
        "plan": [row[0] for row in plan],
    }


async def measure_recall(connection: asyncpg.Connection, queries: Queries) -> dict[str, Any]:
    found = expected = 0
    options = await connection.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'ix_kb_chunks_embedding_hnsw'")
    for _, embedding in queries:
        vector = np.asarray(embedding, dtype=np.float32)
        approximate = {row["id"] for row in await connection.fetch(VECTOR_TOP10, vector)}
        async with connection.transaction():
            await connection.execute("SET LOCAL enable_indexscan = off")
            exact = {row["id"] for row in await connection.fetch(EXACT_TOP10, vector)}
        found += len(approximate & exact)
        expected += len(exact)
    return {
        "recall_at_10": round(found / expected, 4),
        "queries": len(queries),
        "ef_search": EF_SEARCH,
        "index": ", ".join(options),
    }


async def measure_ingestion(
    url: str, embedder: OnnxMiniLMEmbedder, documents: int, rounds: int = INGEST_ROUNDS
) -> dict[str, Any]:
    """Bulk ingestion end to end against the raw embedder on the same chunk texts, alternated ``rounds`` times.

    Each rate is total chunks over total time across the rounds: one ~4 s measurement of either moved by ±10 %
    between runs on this VM, and alternating them exposes both to the same moments of the machine.
    """
    records = [json.loads(line) for line in (TECHQA / "kb.jsonl").read_text().splitlines()][:documents]
    engine = create_engine(url, DatabaseSettings(pool_size=2))
    sessions = create_session_factory(engine)
    raw_s = end_to_end_s = 0.0
    raw_chunks = end_to_end_chunks = created = 0
    async with sessions() as session:
        single = IngestDocument(
            PgVectorKnowledgeBase(session), StructuredTextExtractor(), embedder, SqlAlchemyUnitOfWork(session),
            SystemClock(), KnowledgeLimits(),
        )  # fmt: skip
        for round_ in range(rounds):
            requests = [
                IngestRequest(content=r["text"].encode(), content_type="text/plain",
                              external_id=f"ingest-{round_}-{r['id']}", title=r["title"])
                for r in records
            ]  # fmt: skip
            prepared = [single.prepare(request) for request in requests]
            # The exact texts ingestion embeds: each chunk with its title and heading path.
            texts = [
                chunk.context_text(draft.title) for draft, extracted in prepared for chunk in single.chunk(extracted)
            ]
            if round_ == 0:
                await embedder.embed_documents(texts[:32])  # warm the model
            started = time.perf_counter()
            await embedder.embed_documents(texts)
            raw_s += time.perf_counter() - started
            raw_chunks += len(texts)
            bulk = IngestDocuments(single, PgVectorKnowledgeBase(session), SqlAlchemyUnitOfWork(session), SystemClock())
            started = time.perf_counter()
            report = await bulk.execute(requests)
            end_to_end_s += time.perf_counter() - started
            end_to_end_chunks += report.chunks
            created += report.created
    await engine.dispose()
    raw_rate, e2e_rate = raw_chunks / raw_s, end_to_end_chunks / end_to_end_s
    return {
        "documents": documents,
        "rounds": rounds,
        "documents_created": created,
        "chunks": end_to_end_chunks,
        "raw_embedder_chunks_per_s": round(raw_rate, 1),
        "end_to_end_chunks_per_s": round(e2e_rate, 1),
        "ratio": round(e2e_rate / raw_rate, 3),
    }


async def run(total_chunks: int, query_count: int, ingest_documents: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    embedder = OnnxMiniLMEmbedder()
    with tempfile.TemporaryDirectory(prefix="support-bench-") as scratch:
        # Enough shared buffers for the whole corpus (~300 MB of heap, ~200 MB of HNSW, the GIN index), as
        # docs/knowledge.md advises for production: latency is then measured on memory, not on the page cache.
        server = EmbeddedPostgres(Path(scratch) / "postgres", durable=False, settings={"shared_buffers": "1GB"})
        url = server.start()
        try:
            await asyncio.to_thread(migrations.upgrade, url)
            connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            await register_vector(connection)
            # The service's own setting, as create_engine applies it to its connections.
            await connection.execute(f"SET hnsw.ef_search = {EF_SEARCH}")
            await connection.execute("SET hnsw.iterative_scan = relaxed_order")
            await build_corpus(connection, embedder, total_chunks, rng)
            questions = [json.loads(line) for line in (TECHQA / "questions.jsonl").read_text().splitlines()]
            texts = [" ".join(q["question"].split()[:30]) for q in rng.sample(questions, query_count)]
            vectors = await embedder.embed_documents(texts)
            queries = list(zip(texts, vectors, strict=True))
            print("measuring search …", flush=True)
            search = await measure_search(url, connection, queries)
            print("measuring recall …", flush=True)
            recall = await measure_recall(connection, queries)
            await connection.close()
            print("measuring ingestion …", flush=True)
            ingestion = await measure_ingestion(url, embedder, ingest_documents)
        finally:
            server.stop()
            embedder.close()
    return {"chunks": total_chunks, "queries": query_count, "search": search, "hnsw": recall, "ingestion": ingestion}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--ingest-documents", type=int, default=240)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    result = asyncio.run(run(args.chunks, args.queries, args.ingest_documents, args.seed))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "retrieval-plan.txt").write_text("\n".join(result["search"].pop("plan")) + "\n")
    (RESULTS / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    search, hnsw, ingestion = result["search"], result["hnsw"], result["ingestion"]
    print(
        f"\nhybrid search p50 {search['adapter']['p50_ms']} ms (target <= 5), "
        f"{search['adapter_over_raw_p50']}x raw SQL (target <= 1.5); HNSW recall@10 {hnsw['recall_at_10']} "
        f"(target >= 0.95); ingestion {ingestion['ratio']}x raw embedder (target >= 0.8)"
    )


if __name__ == "__main__":
    main()
