"""Ingestion skips unchanged documents, unless the model their vectors came from has changed; it checks urls."""

import json
from dataclasses import replace

import pytest

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.extraction.extractor import StructuredTextExtractor
from support.adapters.memory.knowledge import InMemoryKnowledgeBase
from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.application.knowledge import (
    IngestDocument,
    IngestDocuments,
    IngestRequest,
    KnowledgeLimits,
    check_request,
    parse_jsonl_lines,
)
from support.domain.errors import InvalidInputError
from support.domain.knowledge import UpsertStatus


class RenamedModel(HashingEmbedder):
    """The same vectors under another model id: what an embedder upgrade looks like to ingestion."""

    @property
    def model_id(self) -> str:
        return "another-model"


ARTICLE = IngestRequest(
    content=b"# Refunds\n\nRefunds reach your card within five business days.",
    content_type="text/markdown",
    external_id="refunds",
)


def ingestion(knowledge: InMemoryKnowledgeBase, embedder: HashingEmbedder) -> IngestDocument:
    return IngestDocument(
        knowledge, StructuredTextExtractor(), embedder, InMemoryUnitOfWork(), FixedClock(), KnowledgeLimits()
    )


async def test_the_same_content_under_the_same_model_is_left_alone() -> None:
    knowledge = InMemoryKnowledgeBase()
    first = await ingestion(knowledge, HashingEmbedder()).execute(ARTICLE)

    again = await ingestion(knowledge, HashingEmbedder()).execute(ARTICLE)

    assert (first.status, again.status) == (UpsertStatus.CREATED, UpsertStatus.UNCHANGED)
    assert again.document.version == 1


async def test_the_same_content_under_another_model_is_embedded_again() -> None:
    knowledge = InMemoryKnowledgeBase()
    await ingestion(knowledge, HashingEmbedder()).execute(ARTICLE)

    again = await ingestion(knowledge, RenamedModel()).execute(ARTICLE)

    assert again.status is UpsertStatus.UPDATED
    assert again.document.version == 2


async def test_a_document_url_that_is_not_http_is_refused_before_anything_is_stored() -> None:
    knowledge = InMemoryKnowledgeBase()
    with pytest.raises(InvalidInputError, match=r"^url: "):
        await ingestion(knowledge, HashingEmbedder()).execute(replace(ARTICLE, url="javascript:alert(1)"))
    with pytest.raises(InvalidInputError, match=r"^url: "):
        check_request(replace(ARTICLE, url="data:text/html,hi"), KnowledgeLimits())
    assert await knowledge.get_by_external_id("refunds") is None

    created = await ingestion(knowledge, HashingEmbedder()).execute(replace(ARTICLE, url=""))
    assert created.document.url is None
    cited = await ingestion(knowledge, HashingEmbedder()).execute(replace(ARTICLE, url="https://help.example/refunds"))
    assert cited.document.url == "https://help.example/refunds"


def test_jsonl_lines_are_checked_for_their_url_and_the_line_is_named() -> None:
    lines = [
        {"id": "a", "title": "A", "text": "Fine.", "url": "https://help.example/a"},
        {"id": "b", "title": "B", "text": "Fine."},
        {"id": "c", "title": "C", "text": "Fine.", "url": "javascript:alert(1)"},
    ]
    requests = parse_jsonl_lines("\n".join(json.dumps(line) for line in lines).encode())
    for _, request in requests[:2]:
        check_request(request, KnowledgeLimits())
    number, bad = requests[2]
    assert number == 3
    with pytest.raises(InvalidInputError, match=r"^url: "):
        check_request(bad, KnowledgeLimits())


async def test_a_jsonl_line_without_a_title_takes_the_one_in_its_text() -> None:
    line = {
        "id": "faq-1",
        "text": "# Refund times\n\nCards take 5 to 10 business days.",
        "content_type": "text/markdown",
    }
    [(_, request)] = parse_jsonl_lines(json.dumps(line).encode())
    check_request(request, KnowledgeLimits())

    result = await ingestion(InMemoryKnowledgeBase(), HashingEmbedder()).execute(request)

    assert result.document.title == "Refund times"
    with pytest.raises(InvalidInputError, match="with id and text"):
        parse_jsonl_lines(json.dumps({"title": "No id or text"}).encode())


async def test_bulk_ingestion_reports_a_bad_url_and_ingests_the_rest() -> None:
    """What `support kb ingest` and the background job run: the bad document fails, naming the field."""
    knowledge = InMemoryKnowledgeBase()
    single = ingestion(knowledge, HashingEmbedder())
    bulk = IngestDocuments(single, knowledge, InMemoryUnitOfWork(), FixedClock())
    report = await bulk.execute(
        [
            replace(ARTICLE, external_id="good", url="https://help.example/refunds"),
            replace(ARTICLE, external_id="bad", url="javascript:alert(1)"),
        ]
    )
    assert (report.created, report.failed) == (1, 1)
    [(_, external_id, message)] = report.errors
    assert external_id == "bad"
    assert message.startswith("url: ")
    assert await knowledge.get_by_external_id("bad") is None
