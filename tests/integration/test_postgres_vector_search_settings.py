"""The HNSW index and the connections are set up for recall, as docs/knowledge.md says."""

import sqlalchemy as sa

from support.adapters.postgres.engine import create_engine
from support.config import DatabaseSettings


async def test_connections_search_with_the_configured_candidates_and_iterative_scans(database_url: str) -> None:
    engine = create_engine(database_url, DatabaseSettings(hnsw_ef_search=173))
    try:
        async with engine.connect() as connection:
            ef_search = await connection.scalar(sa.text("SHOW hnsw.ef_search"))
            iterative = await connection.scalar(sa.text("SHOW hnsw.iterative_scan"))
    finally:
        await engine.dispose()
    assert (ef_search, iterative) == ("173", "relaxed_order")


async def test_the_migrated_hnsw_index_is_built_for_recall(database_url: str) -> None:
    engine = create_engine(database_url, DatabaseSettings())
    try:
        async with engine.connect() as connection:
            options = await connection.scalar(
                sa.text("SELECT reloptions FROM pg_class WHERE relname = 'ix_kb_chunks_embedding_hnsw'")
            )
    finally:
        await engine.dispose()
    assert sorted(options) == ["ef_construction=400", "m=16"]
