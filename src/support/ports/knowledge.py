"""Ports used to turn content into indexed, searchable knowledge."""

from collections.abc import Sequence
from typing import Protocol

from support.domain.knowledge import ExtractedDocument


class TextExtractor(Protocol):
    """Turns raw bytes of a supported format into structured text."""

    def supports(self, content_type: str) -> bool:
        """Whether this content type (text/plain, text/markdown, text/html, application/pdf) is known."""
        ...

    def extract(self, data: bytes, content_type: str) -> ExtractedDocument:
        """Extract text with headings kept as section paths.

        Raises:
            UnsupportedContentTypeError: the content type is not supported.
            InvalidInputError: the bytes cannot be read as that type (e.g. a corrupt PDF), naming the problem.
        """
        ...


class Embedder(Protocol):
    """Maps text to dense vectors of a fixed dimension; documents and queries may be encoded differently."""

    @property
    def model_id(self) -> str:
        """A stable identifier of the model, stored beside vectors so a model change is detectable."""
        ...

    @property
    def dimension(self) -> int:
        """Length of every vector this embedder returns."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many model tokens ``text`` takes (used to size chunks)."""
        ...

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed passages in batches; the result is in input order, L2-normalised.

        Raises:
            EmbedderUnavailableError: the model or provider failed.
        """
        ...

    async def embed_query(self, text: str) -> list[float]:
        """Embed one search query, L2-normalised.

        Raises:
            EmbedderUnavailableError: the model or provider failed.
        """
        ...
