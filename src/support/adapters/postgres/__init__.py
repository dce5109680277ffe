"""PostgreSQL adapters (advanced-alchemy repositories, pgvector)."""
