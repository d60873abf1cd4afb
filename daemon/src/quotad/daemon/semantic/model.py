"""The bundled embedding model: WordLlama's ``l2_supercat`` static embeddings, read offline.

The ``wordllama`` wheel (the optional extra ``quotad[semantic]``) ships the model's two files in
its package directory: a 32,000 x 256 float16 token-embedding table (``weights/
l2_supercat_256.safetensors``, 16 MB) and the Llama 2 tokenizer it was trained with
(``tokenizers/l2_supercat_tokenizer_config.json``). An embedding is the mean of the token
vectors of a text (tokenized without special tokens), scaled to unit length: exactly what
``WordLlama.load(...).embed(texts, norm=True)`` computes (a test holds the two equal).

The files are read here with ``safetensors`` and ``tokenizers`` rather than through
``WordLlama.load``: that keeps out what the daemon does not need (its import pulls in pydantic,
requests and the configuration of every model it can train, calls ``logging.basicConfig`` and
would download when a file is missing), and it keeps the table as float16 (16 MB instead of
32 MB; the mean is taken in float32, so the vectors are the same). Nothing here opens a
network connection, and no environment variable is needed for that.

The model was trained with Matryoshka dimensions: a vector truncated to its first 64 or 128
values (then scaled to unit length again) is a usable smaller embedding.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import safetensors.numpy
from tokenizers import Tokenizer

MODEL_NAME: Final = "wordllama"
"""The name the model is served under: target ``local/wordllama``."""
MODEL_ID: Final = "wordllama-l2_supercat-256"
"""The weights' identity; stored beside vectors so that other weights never mix with them."""
DIMENSIONS: Final = 256
MATRYOSHKA_DIMENSIONS: Final = (64, 128, 256)
"""The sizes a vector may be truncated to (``dimensions`` of an embeddings request)."""
WEIGHTS_FILE: Final = "weights/l2_supercat_256.safetensors"
TOKENIZER_FILE: Final = "tokenizers/l2_supercat_tokenizer_config.json"
TENSOR_KEY: Final = "embedding.weight"

Vector = npt.NDArray[np.float32]
"""One unit vector (``DIMENSIONS`` float32), or a matrix of them, one per row."""


class ModelUnavailableError(RuntimeError):
    """The bundled model's files cannot be found or read."""


def package_dir() -> Path:
    """The installed ``wordllama`` package's directory, found without importing it."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the wordllama package is not installed: install the extra quotad[semantic]"
        )
    return Path(next(iter(spec.submodule_search_locations)))


class EmbeddingModel:
    """Static token embeddings, mean-pooled: ~0.1 ms for a short prompt, no network, no GPU.

    Thread-safe: ``embed`` may run in worker threads (the tokenizer and numpy release the GIL
    and share nothing mutable).
    """

    def __init__(self, directory: Path | None = None) -> None:
        root = package_dir() if directory is None else directory
        weights_path = root / WEIGHTS_FILE
        tokenizer_path = root / TOKENIZER_FILE
        for path in (weights_path, tokenizer_path):
            if not path.is_file():
                raise ModelUnavailableError(f"the bundled model file {path} is missing")
        try:
            tensors = safetensors.numpy.load_file(str(weights_path))
            self._tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as error:  # a damaged file: corrupt header, bad JSON
            raise ModelUnavailableError(f"cannot read the bundled model: {error}") from error
        table = tensors.get(TENSOR_KEY)
        if table is None or table.ndim != 2 or table.shape[1] != DIMENSIONS:
            raise ModelUnavailableError(f"{weights_path}: no {TENSOR_KEY} of width {DIMENSIONS}")
        self._table: npt.NDArray[np.float16] = np.ascontiguousarray(table, dtype=np.float16)
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.vocabulary = int(self._table.shape[0])
        self.dimensions = DIMENSIONS

    def token_ids(self, text: str) -> list[int]:
        """The token ids of ``text`` (no special tokens), as the model sees it."""
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def embed_one(self, text: str, dimensions: int | None = None) -> Vector:
        """The unit vector of ``text`` (all zeros for a text with no tokens), truncated to
        ``dimensions`` (one of :data:`MATRYOSHKA_DIMENSIONS`) and scaled to unit length again."""
        return self._pool(self.token_ids(text), self._width(dimensions))

    def embed(self, texts: Sequence[str], dimensions: int | None = None) -> Vector:
        """One unit vector per text, as the rows of a float32 matrix; ``dimensions`` (one of
        :data:`MATRYOSHKA_DIMENSIONS`) truncates each and scales it to unit length again."""
        return self.embed_counting(texts, dimensions)[0]

    def embed_counting(
        self, texts: Sequence[str], dimensions: int | None = None
    ) -> tuple[Vector, int]:
        """:meth:`embed`, and how many tokens the model read (an embeddings call's usage)."""
        width = self._width(dimensions)
        out = np.empty((len(texts), width), dtype=np.float32)
        tokens = 0
        for row, text in enumerate(texts):
            ids = self.token_ids(text)
            tokens += len(ids)
            out[row] = self._pool(ids, width)
        return out, tokens

    def _width(self, dimensions: int | None) -> int:
        if dimensions is None:
            return self.dimensions
        if dimensions not in MATRYOSHKA_DIMENSIONS:
            raise ValueError(f"dimensions must be one of {MATRYOSHKA_DIMENSIONS}, got {dimensions}")
        return dimensions

    def _pool(self, ids: list[int], width: int) -> Vector:
        """The tokens' mean over the first ``width`` values, scaled to unit length (the
        mean's direction: its sum's, so the sum is what is scaled). Truncating the mean and
        then scaling is the same as scaling, truncating and scaling again, in fewer steps
        (~40 µs a short prompt against ~70)."""
        if not ids:
            return np.zeros(width, dtype=np.float32)
        if max(ids) >= self.vocabulary or min(ids) < 0:  # never from the bundled tokenizer
            ids = [min(max(token, 0), self.vocabulary - 1) for token in ids]
        rows = self._table.take(ids, axis=0)
        total: Vector = rows[:, :width].sum(axis=0, dtype=np.float32)
        norm = math.sqrt(float(total @ total))
        if norm > 0.0:
            total /= norm
        return total


def normalized(matrix: Vector) -> Vector:
    """``matrix`` with each row scaled to unit length (zero rows stay zero), in place."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    np.divide(matrix, norms, out=matrix, where=norms > 0)
    return matrix


_shared: EmbeddingModel | None = None
_shared_lock = threading.Lock()


def shared_model() -> EmbeddingModel:
    """The process's one model, loaded on first use (the semantic cache and every local
    provider share it: the table is read once)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = EmbeddingModel()
        return _shared
