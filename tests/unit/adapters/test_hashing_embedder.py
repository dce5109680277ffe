import json
import math
import os
import subprocess
import sys

import pytest

from support.adapters.embedding.hashing import HashingEmbedder


def dot(first: list[float], second: list[float]) -> float:
    return sum(a * b for a, b in zip(first, second, strict=True))


async def test_vectors_are_unit_length_with_the_configured_dimension() -> None:
    embedder = HashingEmbedder(dimension=64)

    vectors = await embedder.embed_documents(["Refund my order", "", "!!!"])

    assert embedder.dimension == 64
    for vector in vectors:
        assert len(vector) == 64
        assert math.hypot(*vector) == pytest.approx(1.0)


async def test_texts_sharing_words_are_more_similar_than_unrelated_texts() -> None:
    embedder = HashingEmbedder()

    query = await embedder.embed_query("How do I reset my password?")
    related, unrelated = await embedder.embed_documents(
        ["To RESET your password, open settings.", "Shipping to Canada takes a week."]
    )

    assert dot(query, related) > dot(query, unrelated) + 0.05
    assert await embedder.embed_query("Reset password") == await embedder.embed_query("reset PASSWORD")


def test_vectors_do_not_depend_on_the_interpreter_hash_seed() -> None:
    script = "import json; from support.adapters.embedding.hashing import HashingEmbedder; "
    script += "print(json.dumps(HashingEmbedder(16).embed('stable across runs')))"

    outputs = {
        subprocess.run(  # noqa: S603 - our own interpreter and a constant script
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        for seed in ("1", "2")
    }

    assert len(outputs) == 1
    assert json.loads(outputs.pop()) == HashingEmbedder(16).embed("stable across runs")


def test_counts_words() -> None:
    assert HashingEmbedder().count_tokens("Where is my parcel?") == 4
