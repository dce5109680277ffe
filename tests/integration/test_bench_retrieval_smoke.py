"""bench/retrieval.py runs end to end on a tiny corpus, so the benchmark cannot rot between full runs."""

import pytest
from bench import retrieval


@pytest.mark.slow
async def test_the_retrieval_benchmark_measures_every_figure_on_a_small_corpus() -> None:
    result = await retrieval.run(total_chunks=300, query_count=6, ingest_documents=2, seed=3)

    search = result["search"]
    for path in ("adapter", "raw_sql", "reference_hnsw_fts"):
        assert 0 < search[path]["p50_ms"] <= search[path]["p99_ms"]
    assert any("kb_chunks" in line for line in search["plan"])
    assert 0 <= result["hnsw"]["recall_at_10"] <= 1
    assert result["hnsw"]["queries"] == 6
    assert "ef_construction=400" in result["hnsw"]["index"]
    ingestion = result["ingestion"]
    assert ingestion["documents"] == 2
    assert ingestion["documents_created"] == 2 * ingestion["rounds"]  # every round ingests new documents
    assert ingestion["chunks"] > 0
    assert ingestion["ratio"] > 0
