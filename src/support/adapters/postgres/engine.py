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
        # A pooled connection may have died with a server restart; ping on checkout so requests recover by themselves.
        pool_pre_ping=True,
        echo=settings.echo,
        connect_args={
            "timeout": settings.pool_timeout_s,
            "server_settings": {
                "application_name": "support",
                "statement_timeout": str(settings.statement_timeout_ms),
            },
        },
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    # expire_on_commit=False: domain objects are mapped from rows before commit and must stay readable after.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
