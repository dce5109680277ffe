"""Prompt-injection flags: structured flags on documents (JSONB), the reasons a chunk was flagged on each chunk.

The documents' old ``flags`` (excerpts without reasons or places) are replaced by a scan of the stored chunks with
the current detector, so existing knowledge bases get chunk flags (and the quarantine policy works on them)
without re-ingesting. Hidden markup in the original files (HTML comments, invisible styles) is only seen when a
document is ingested again, since the files themselves are not stored.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import json
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

from support.domain.injection import InjectionReason, scan_text, unique

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000


def upgrade() -> None:
    op.add_column("kb_chunks", sa.Column("flags", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False))
    op.add_column("kb_documents", sa.Column("injection_flags", postgresql.JSONB(), server_default="[]", nullable=False))
    if not context.is_offline_mode():
        _scan_stored_chunks()
    op.drop_column("kb_documents", "flags")
    op.alter_column("kb_documents", "injection_flags", new_column_name="flags")


def _scan_stored_chunks() -> None:
    """Flag every stored chunk as ingestion now would, and collect each document's flags in chunk order."""
    connection = op.get_bind()
    page = sa.text(
        "SELECT id, document_id, ordinal, context, text FROM kb_chunks "
        "WHERE (document_id, ordinal, id) > (:document_id, :ordinal, :id) "
        "ORDER BY document_id, ordinal, id LIMIT :limit"
    )
    first = sa.text("SELECT id, document_id, ordinal, context, text FROM kb_chunks ORDER BY document_id, ordinal, id "
                    "LIMIT :limit")  # fmt: skip

    def rows() -> Iterator[sa.Row[Any]]:
        # Pages by key, so memory stays bounded and the updates in between do not disturb an open cursor.
        batch = connection.execute(first, {"limit": _BATCH}).all()
        while batch:
            yield from batch
            last = batch[-1]
            keys = {"document_id": last.document_id, "ordinal": last.ordinal, "id": last.id, "limit": _BATCH}
            batch = connection.execute(page, keys).all()

    document: object = None
    collected: list[dict[str, object]] = []
    updates: list[dict[str, object]] = []

    def flush_document() -> None:
        if document is not None and collected:
            connection.execute(
                sa.text("UPDATE kb_documents SET injection_flags = CAST(:flags AS jsonb) WHERE id = :id"),
                {"id": document, "flags": json.dumps(collected)},
            )

    for chunk_id, document_id, ordinal, chunk_context, chunk_text in rows():
        if document_id != document:
            flush_document()
            document, collected = document_id, []
        indexed = f"{chunk_context}\n\n{chunk_text}" if chunk_context else chunk_text
        flags = scan_text(indexed, chunk=ordinal)
        if flags:
            found = {flag.reason for flag in flags}
            updates.append({"id": chunk_id, "flags": [reason.value for reason in InjectionReason if reason in found]})
            known = {(item["reason"], item["excerpt"]) for item in collected}
            collected += [
                {"reason": flag.reason.value, "start": flag.start, "end": flag.end, "excerpt": flag.excerpt,
                 "chunk": flag.chunk}
                for flag in unique(flags)
                if (flag.reason.value, flag.excerpt) not in known
            ]  # fmt: skip
        if len(updates) >= _BATCH:
            _write_chunk_flags(connection, updates)
            updates = []
    flush_document()
    _write_chunk_flags(connection, updates)


def _write_chunk_flags(connection: sa.Connection, updates: list[dict[str, object]]) -> None:
    if updates:
        statement = sa.text("UPDATE kb_chunks SET flags = :flags WHERE id = :id").bindparams(
            sa.bindparam("flags", type_=postgresql.ARRAY(sa.Text()))
        )
        connection.execute(statement, updates)


def downgrade() -> None:
    op.add_column(
        "kb_documents", sa.Column("excerpt_flags", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False)
    )
    op.execute(
        "UPDATE kb_documents SET excerpt_flags = "
        "ARRAY(SELECT item->>'excerpt' FROM jsonb_array_elements(flags) AS item)"
    )
    op.drop_column("kb_documents", "flags")
    op.alter_column("kb_documents", "excerpt_flags", new_column_name="flags")
    op.drop_column("kb_chunks", "flags")
