"""Ingestion skips unchanged documents, unless the model their vectors came from has changed."""

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.extraction.extractor import StructuredTextExtractor
from support.adapters.memory.knowledge import InMemoryKnowledgeBase
from support.adapters.memory.system import FixedClock, InMemoryUnitOfWork
from support.application.knowledge import IngestDocument, IngestRequest, KnowledgeLimits
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
