"""Infrastructure-neutral failures. Adapters raise these ``from`` their driver's error."""

from support.domain.errors import SupportError


class DependencyUnavailableError(SupportError):
    """A backing service (database, cache, model provider) cannot be reached right now."""

    code = "dependency_unavailable"
    default_message = "A backing service is unavailable; try again shortly."


class StorageUnavailableError(DependencyUnavailableError):
    """PostgreSQL cannot be reached or refused the operation for a transient reason."""

    code = "storage_unavailable"
    default_message = "The database is unavailable; try again shortly."


class CacheUnavailableError(DependencyUnavailableError):
    """Valkey cannot be reached."""

    code = "cache_unavailable"
    default_message = "The cache is unavailable; try again shortly."


class LLMUnavailableError(DependencyUnavailableError):
    """The language model provider failed after retries."""

    code = "llm_unavailable"
    default_message = "The language model is unavailable."


class EmbedderUnavailableError(DependencyUnavailableError):
    """The embedding model or provider failed."""

    code = "embedder_unavailable"
    default_message = "The embedding provider is unavailable."
