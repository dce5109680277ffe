"""A deterministic, dependency-free embedder for unit tests: texts that share words get similar vectors."""

import hashlib
import itertools
import math
import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+")
# Gives an empty text a unit vector of its own, so every result is L2-normalised as the port promises.
_EMPTY_FEATURE = "\x00empty"


class HashingEmbedder:
    """Feature hashing of lowercased word unigrams and bigrams into signed buckets, L2-normalised.

    Stable across processes (blake2b, not ``hash()``), so vectors can be stored and compared between runs.
    It understands no meaning: "refund" and "money back" are unrelated to it.
    """

    def __init__(self, dimension: int = 384) -> None:
        if dimension < 1:
            msg = f"dimension must be positive, got {dimension}"
            raise ValueError(msg)
        self._dimension = dimension

    @property
    def model_id(self) -> str:
        return f"hashing-unigram-bigram-{self._dimension}"

    @property
    def dimension(self) -> int:
        return self._dimension

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.embed(text) for text in texts]

    async def embed_query(self, text: str) -> list[float]:
        return self.embed(text)

    def embed(self, text: str) -> list[float]:
        """The vector of ``text``, synchronously (the async methods only wrap this)."""
        words = [word.lower() for word in _WORD.findall(text)]
        features = words + [f"{first} {second}" for first, second in itertools.pairwise(words)]
        vector = [0.0] * self._dimension
        for feature in features or [_EMPTY_FEATURE]:
            digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
            # The low bit picks the sign so that colliding features cancel out on average instead of piling up.
            vector[(digest >> 1) % self._dimension] += 1.0 if digest & 1 else -1.0
        norm = math.sqrt(math.fsum(value * value for value in vector))
        if norm == 0.0:  # every feature cancelled out: fall back to the empty-text vector
            return self.embed("")
        return [value / norm for value in vector]
