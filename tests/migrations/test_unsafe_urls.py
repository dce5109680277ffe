"""Migration 0010 clears document and citation urls that the API would refuse now (javascript:, relative, ...)."""

import json
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from support.cli import migrations
from support.domain.errors import InvalidInputError
from support.domain.knowledge import validate_document_url
from tests.conftest import in_thread
from tests.migrations.test_stairway import engine, fresh_database_url  # noqa: F401 - fixtures

SAFE = ["https://help.example.com/refunds", "HTTP://help.example.com", "https://help.example.com/a?b=c#d", None]
UNSAFE = [
    "javascript:alert(document.cookie)",
    "JavaScript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "/relative/path",
    "https://help.example.com@evil.example/",
    "https:// spaced.example.com/",
    # Spaces beyond ASCII, which PostgreSQL's [:space:] class does not know in a C locale.
    "https://help.example.com/a\u00a0b",
    "https://help\u3000example.com/",
    "https://help.example.com/\ufeff",
    "https://help.example.com/" + "a" * 2000,  # over the length limit
]


def test_the_examples_are_what_the_api_accepts_and_refuses() -> None:
    assert [validate_document_url(value) for value in SAFE] == SAFE
    for value in UNSAFE:
        with pytest.raises(InvalidInputError):
            validate_document_url(value)


async def test_upgrading_clears_unsafe_document_and_citation_urls_and_keeps_the_rest(
    fresh_database_url: str,  # noqa: F811 - the fixture
    engine: AsyncEngine,  # noqa: F811 - the fixture
) -> None:
    url = fresh_database_url
    in_thread(lambda: migrations.upgrade(url, "0009"))
    now = datetime(2026, 12, 1, tzinfo=UTC)
    urls = SAFE + UNSAFE
    customer, conversation = uuid.uuid4(), uuid.uuid4()
    citations = [
        {"document_id": str(uuid.uuid4()), "version": 1, "chunk_id": str(uuid.uuid4()), "title": f"T{index}",
         "url": value, "quote": "q"}
        for index, value in enumerate(urls)
    ]  # fmt: skip
    async with engine.begin() as connection:
        for index, value in enumerate(urls):
            await connection.execute(
                sa.text(
                    "INSERT INTO kb_documents (id, external_id, title, url, content_type, audience, fingerprint, "
                    "version, chunk_count, flags, created_at, updated_at) VALUES (:id, :external_id, 'T', :url, "
                    "'text/markdown', 'public', 'f', 1, 0, '[]', :now, :now)"
                ),
                {"id": uuid.uuid4(), "external_id": f"doc-{index}", "url": value, "now": now},
            )
        await connection.execute(
            sa.text("INSERT INTO customers (id, external_id, created_at) VALUES (:id, 'c', :now)"),
            {"id": customer, "now": now},
        )
        await connection.execute(
            sa.text(
                "INSERT INTO conversations (id, customer_id, status, created_at, updated_at, last_activity_at) "
                "VALUES (:id, :customer, 'bot', :now, :now, :now)"
            ),
            {"id": conversation, "customer": customer, "now": now},
        )
        for content, cited in (("cited", citations), ("safe only", citations[:2]), ("none", [])):
            await connection.execute(
                sa.text(
                    "INSERT INTO messages (id, conversation_id, role, content, created_at, citations) "
                    "VALUES (:id, :conversation, 'assistant', :content, :now, CAST(:citations AS jsonb))"
                ),
                {
                    "id": uuid.uuid4(),
                    "conversation": conversation,
                    "content": content,
                    "now": now,
                    "citations": json.dumps(cited),
                },
            )

    in_thread(lambda: migrations.upgrade(url, "0010"))

    async with engine.connect() as connection:
        stored = dict((await connection.execute(sa.text("SELECT external_id, url FROM kb_documents"))).tuples().all())
        messages = dict((await connection.execute(sa.text("SELECT content, citations FROM messages"))).tuples().all())
    assert [stored[f"doc-{index}"] for index in range(len(urls))] == SAFE + [None] * len(UNSAFE)
    assert [citation["url"] for citation in messages["cited"]] == SAFE + [None] * len(UNSAFE)
    # Only the url changes: the citation keeps its place, document, title and quote.
    assert [{**citation, "url": None} for citation in messages["cited"]] == [
        {**citation, "url": None} for citation in citations
    ]
    assert messages["safe only"] == citations[:2]
    assert messages["none"] == []

    in_thread(lambda: migrations.downgrade(url, "0009"))  # nothing to undo, and it does not fail
