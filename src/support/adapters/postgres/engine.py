from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from support.config import DatabaseSettings


def asyncpg_url(url: str) -> str:
    """Accept plain ``postgresql://``/``postgres://`` URLs and select the asyncpg driver."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def create_engine(url: str, settings: DatabaseSettings) -> AsyncEngine:
    return create_async_engine(
        asyncpg_url(url),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout_s,
        # No ping on checkout: it costs a round trip on every unit of work (several per turn). A connection that
        # died with a server restart fails its first statement as a disconnect; SQLAlchemy then invalidates the
        # whole pool, that request gets a 503, and later ones reconnect (tests/integration/*faults*).
        pool_pre_ping=False,
        echo=settings.echo,
        connect_args={
            "timeout": settings.pool_timeout_s,
            "server_settings": {
                "application_name": "support",
                "statement_timeout": str(settings.statement_timeout_ms),
                # pgvector reads these when it loads: a wider HNSW search for recall, and filtered scans (audience,
                # tags, quarantine) that keep walking the graph instead of coming back short.
                "hnsw.ef_search": str(settings.hnsw_ef_search),
                "hnsw.iterative_scan": "relaxed_order",
            },
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    # expire_on_commit=False: domain objects are mapped from rows before commit and must stay readable after.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
