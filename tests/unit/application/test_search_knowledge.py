"""SearchKnowledge: what it refuses, and that a query's options reach the knowledge base."""

import pytest

from support.adapters.embedding.hashing import HashingEmbedder
from support.adapters.memory.cache import InMemoryCache
from support.application.knowledge import MAX_SEARCH_CONTEXT, KnowledgeLimits, QueryEmbeddings, SearchKnowledge
from support.domain.errors import InvalidInputError
from support.domain.knowledge import SearchQuery
from tests.unit.application.conftest import knowledge_base_of


async def searcher_over(*bodies: str) -> SearchKnowledge:
    knowledge = await knowledge_base_of(*bodies)
    return SearchKnowledge(knowledge, QueryEmbeddings(HashingEmbedder(64), InMemoryCache(), KnowledgeLimits()))


async def test_context_reaches_the_knowledge_base() -> None:
    search = await searcher_over("Open the orders page.", "Print the prepaid label.", "Drop the parcel off.")

    [plain] = await search.execute(SearchQuery("  prepaid label  "))
    [wide] = await search.execute(SearchQuery("  prepaid label  ", context=1))

    assert plain.context == ()
    assert [chunk.text for chunk in wide.context] == ["Open the orders page.", "Drop the parcel off."]


@pytest.mark.parametrize("context", [-1, MAX_SEARCH_CONTEXT + 1])
async def test_context_out_of_range_is_invalid_input(context: int) -> None:
    search = await searcher_over("Print the prepaid label.")

    with pytest.raises(InvalidInputError, match="context"):
        await search.execute(SearchQuery("label", context=context))
