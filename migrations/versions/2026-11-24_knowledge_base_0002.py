"""Knowledge base: versioned documents and their chunks, HNSW and full-text indexes, BM25 statistics.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMBEDDING_DIMENSION = 384


def upgrade() -> None:
    op.create_table(
        "kb_documents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("external_id", sa.String(300), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("audience", sa.String(16), nullable=False),
        sa.Column("metadata", postgresql.JSONB(), server_default="{}", nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("flags", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("audience IN ('public', 'internal')", name=op.f("ck_kb_documents_audience_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_documents")),
        sa.UniqueConstraint("external_id", name=op.f("uq_kb_documents_external_id")),
    )
    op.create_index("ix_kb_documents_tags", "kb_documents", ["tags"], postgresql_using="gin")
    op.create_table(
        "kb_chunks",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("heading_path", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("context", sa.Text(), nullable=False),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("tags", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("audience", sa.String(16), nullable=False),
        sa.Column("embedding", VECTOR(EMBEDDING_DIMENSION), nullable=False),
        sa.Column(
            "tsv",
            postgresql.TSVECTOR(),
            sa.Computed(r"to_tsvector('english'::regconfig, context || E'\n\n' || text)", persisted=True),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["kb_documents.id"],
            name=op.f("fk_kb_chunks_document_id_kb_documents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_chunks")),
    )
    # Rows are ~3 KB: keep text and tsvector in the heap instead of TOASTing them at the default 2 KB target.
    op.execute("ALTER TABLE kb_chunks SET (toast_tuple_target = 4080)")
    # Keep vectors inline: with ~1 KB of text per row the default storage moves them out of line (TOAST),
    # which slows every scan that reads them.
    op.execute("ALTER TABLE kb_chunks ALTER COLUMN embedding SET STORAGE PLAIN")
    op.create_index("ix_kb_chunks_document_id", "kb_chunks", ["document_id"])
    op.create_index("ix_kb_chunks_tags", "kb_chunks", ["tags"], postgresql_using="gin")
    op.create_index("ix_kb_chunks_tsv", "kb_chunks", ["tsv"], postgresql_using="gin")
    op.create_index(
        "ix_kb_chunks_embedding_hnsw",
        "kb_chunks",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_with={"m": 16, "ef_construction": 64},
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )

    # BM25 statistics, kept exact by every upsert and delete: document frequency per lexeme, corpus size.
    op.create_table(
        "kb_lexemes",
        sa.Column("lexeme", sa.Text(), nullable=False),
        sa.Column("df", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("lexeme", name=op.f("pk_kb_lexemes")),
    )
    op.create_table(
        "kb_corpus",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("chunks", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_kb_corpus_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kb_corpus")),
    )
    op.execute("INSERT INTO kb_corpus (id, chunks, total_tokens) VALUES (1, 0, 0)")


def downgrade() -> None:
    op.drop_table("kb_corpus")
    op.drop_table("kb_lexemes")
    op.drop_table("kb_chunks")
    op.drop_table("kb_documents")
