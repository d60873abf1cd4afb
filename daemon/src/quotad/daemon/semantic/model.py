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

The memory and time of an embedding are bounded by its tokens, never by more: the token vectors
are summed :data:`POOL_ROWS` at a time (a text of a million tokens made a million x 256 matrix
first, 512 MB, in one numpy call that held the GIL), and :meth:`EmbeddingModel.embed_counting`
stops at the first text past a token limit it is given, before the next is read. A token never
stands for more than :attr:`EmbeddingModel.max_token_bytes` bytes of UTF-8 text, so a text's
bytes tell, before it is read, whether it can fit a limit.
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
POOL_ROWS: Final = 1024
"""Token vectors gathered at a time to be summed (512 KB of float16 at 256 dimensions)."""

Vector = npt.NDArray[np.float32]
"""One unit vector (``DIMENSIONS`` float32), or a matrix of them, one per row."""


class ModelUnavailableError(RuntimeError):
    """The bundled model's files cannot be found or read."""


class TooManyTokensError(ValueError):
    """A text (``index``), or the texts of one call together (``index`` None), read past
    ``limit`` tokens: ``tokens`` is the count when reading stopped."""

    def __init__(self, index: int | None, tokens: int, limit: int) -> None:
        where = "the inputs: together" if index is None else f"input[{index}]:"
        super().__init__(f"{where} {tokens:,} tokens, more than the {limit:,} allowed")
        self.index = index
        self.tokens = tokens
        self.limit = limit


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
        self.max_token_bytes = _max_token_bytes(self._tokenizer.get_vocab())
        """The most UTF-8 bytes of text one token stands for (27 for the bundled tokenizer):
        a text of more than ``n * max_token_bytes`` bytes has more than ``n`` tokens."""

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
        self,
        texts: Sequence[str],
        dimensions: int | None = None,
        *,
        max_text_tokens: int | None = None,
        max_total_tokens: int | None = None,
    ) -> tuple[Vector, int]:
        """:meth:`embed`, and how many tokens the model read (an embeddings call's usage).
        A text of more than ``max_text_tokens``, or texts of more than ``max_total_tokens``
        together, raise :class:`TooManyTokensError` as soon as that is known, and no text
        after it is read."""
        width = self._width(dimensions)
        out = np.empty((len(texts), width), dtype=np.float32)
        tokens = 0
        for row, text in enumerate(texts):
            ids = self.token_ids(text)
            if max_text_tokens is not None and len(ids) > max_text_tokens:
                raise TooManyTokensError(row, len(ids), max_text_tokens)
            tokens += len(ids)
            if max_total_tokens is not None and tokens > max_total_tokens:
                raise TooManyTokensError(None, tokens, max_total_tokens)
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
        (~40 µs a short prompt against ~70). The rows are gathered and summed
        :data:`POOL_ROWS` at a time, so no tokens x width matrix is ever made."""
        total = np.zeros(width, dtype=np.float32)
        if not ids:
            return total
        # never out of range from the bundled tokenizer; clipped so that a bad id cannot raise
        positions = np.clip(np.asarray(ids, dtype=np.intp), 0, self.vocabulary - 1)
        columns = self._table[:, :width]
        for start in range(0, len(positions), POOL_ROWS):
            rows = columns.take(positions[start : start + POOL_ROWS], axis=0)
            total += rows.sum(axis=0, dtype=np.float32)
        norm = math.sqrt(float(total @ total))
        if norm > 0.0:
            total /= norm
        return total


def _max_token_bytes(vocabulary: dict[str, int]) -> int:
    """The most UTF-8 bytes of text a token of ``vocabulary`` stands for: a byte-fallback
    token (``<0x41>``) one, another its text's bytes, its word-start mark (``▁``, which the
    tokenizer puts for a space or the start of the text) counted as the one byte of a space."""
    longest = 1
    for piece in vocabulary:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            continue
        longest = max(longest, len(piece.replace("\u2581", " ").encode("utf-8", "replace")))
    return longest


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
