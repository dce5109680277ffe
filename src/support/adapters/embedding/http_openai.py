"""An embedding provider behind an OpenAI-compatible ``POST /v1/embeddings`` endpoint."""

import asyncio
import re
from collections.abc import Sequence
from typing import Any, Final

import httpx
import numpy as np

from support.ports.errors import EmbedderUnavailableError

_RETRYABLE_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER_SECONDS: Final = 5.0
_ERROR_BODY_PREVIEW_CHARS: Final = 300
_CHARACTERS_PER_TOKEN: Final = 4


class OpenAICompatibleEmbedder:
    """Embeds through OpenAI, or any server that speaks its embeddings API (vLLM, TEI, Ollama, LiteLLM...).

    ``base_url`` is the server root (``https://api.openai.com``); a trailing ``/v1`` is accepted too.
    Vectors are re-normalised here because not every compatible server returns unit vectors.
    Failures after ``max_retries`` retries (429, 5xx, timeouts, refused connections) raise
    ``EmbedderUnavailableError``; other 4xx answers are not retried.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        dimension: int,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        batch_size: int = 64,
        max_retries: int = 3,
        retry_backoff: float = 0.25,
    ) -> None:
        if dimension < 1 or batch_size < 1 or max_retries < 0:
            msg = "dimension and batch_size must be positive and max_retries not negative"
            raise ValueError(msg)
        self._model = model
        self._dimension = dimension
        self._batch_size = batch_size
        self._max_retries = max_retries
        self._retry_backoff = retry_backoff
        root = base_url.rstrip("/").removesuffix("/v1")
        self._url = f"{root}/v1/embeddings"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout)

    @property
    def model_id(self) -> str:
        return self._model

    @property
    def dimension(self) -> int:
        return self._dimension

    def count_tokens(self, text: str) -> int:
        """Estimate tokens without the provider's tokenizer: a quarter of each word's length, rounded up.

        For English BPE vocabularies this overestimates (about 2 tokens per word against a real ~1.3), so
        chunks sized with it stay within the provider's limit. It is additive over whitespace-separated
        words, which keeps the chunker's packing exact with respect to it.
        """
        return sum(-(-len(word) // _CHARACTERS_PER_TOKEN) for word in text.split())

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            vectors.extend(await self._embed_batch(list(texts[start : start + self._batch_size])))
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        [vector] = await self._embed_batch([text])
        return vector

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        payload = await self._post_with_retries({"model": self._model, "input": texts})
        return self._parse(payload, expected_count=len(texts))

    async def _post_with_retries(self, body: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = await self._client.post(self._url, json=body)
            except httpx.HTTPError as error:
                failure = f"the request to {self._url} failed: {type(error).__name__}: {error}"
                retryable = isinstance(error, httpx.TransportError)
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError as error:
                        msg = f"The embedding provider returned a body that is not JSON: {error}"
                        raise EmbedderUnavailableError(msg) from error
                failure = f"{self._url} answered {response.status_code}: {_preview(response.text)}"
                retryable = response.status_code in _RETRYABLE_STATUSES
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
            if not retryable or attempt >= self._max_retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                msg = f"The embedding provider failed{tries}: {failure}"
                raise EmbedderUnavailableError(msg)
            delay = self._retry_backoff * 2**attempt
            await asyncio.sleep(min(retry_after, _MAX_RETRY_AFTER_SECONDS) if retry_after is not None else delay)
            attempt += 1

    def _parse(self, payload: Any, *, expected_count: int) -> list[list[float]]:
        try:
            items = payload["data"]
            # The API does not promise input order; ``index`` does.
            by_index = {int(item["index"]): item["embedding"] for item in items}
        except (KeyError, TypeError, ValueError) as error:
            msg = f"The embedding provider's answer has an unexpected shape ({type(error).__name__}: {error})."
            raise EmbedderUnavailableError(msg) from error
        if len(items) != expected_count or sorted(by_index) != list(range(expected_count)):
            msg = f"The embedding provider returned {len(items)} vectors for {expected_count} inputs."
            raise EmbedderUnavailableError(msg)
        try:
            matrix = np.array([by_index[index] for index in range(expected_count)], dtype=np.float64)
        except (TypeError, ValueError) as error:  # ragged rows or non-numbers
            msg = f"The embedding provider returned malformed vectors: {error}"
            raise EmbedderUnavailableError(msg) from error
        if matrix.shape != (expected_count, self._dimension):
            width = matrix.shape[1] if matrix.ndim > 1 else "none (not a list of numbers)"
            msg = f"The embedding provider returned vectors of dimension {width}; {self._dimension} is configured."
            raise EmbedderUnavailableError(msg)
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if not np.all(np.isfinite(matrix)) or np.any(norms == 0):
            msg = "The embedding provider returned a zero or non-finite vector."
            raise EmbedderUnavailableError(msg)
        rows: list[list[float]] = (matrix / norms).tolist()
        return rows


def _retry_after_seconds(header: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds; the HTTP-date form is ignored."""
    if header is None or not re.fullmatch(r"\s*\d+(\.\d+)?\s*", header):
        return None
    return float(header)


def _preview(body: str) -> str:
    text = " ".join(body.split())
    return text if len(text) <= _ERROR_BODY_PREVIEW_CHARS else text[:_ERROR_BODY_PREVIEW_CHARS] + "..."
