"""The vectors of one partition, searched by brute force: one contiguous float32 matrix.

A partition's entries are few to some thousands (one system prompt and history, one model), so an
exact scan beats an approximate index: one matrix-vector product (BLAS sgemv) over the live rows
gives every cosine similarity (the vectors are unit length). Importing this module limits BLAS
to one thread in the process (threadpoolctl): OpenBLAS would split a product this size over
its threads, and on a shared 2-core machine those threads wait for each other (measured under
load: 16-24 ms for 100,000 x 64 or 20,000 x 128 with two threads, 0.5-6 ms with one). Nothing
else in the daemon uses BLAS. float32 is kept because numpy has no fast float16 or int8 product
(measured 17-50x slower), which would cost far more time than the memory it saves.

Rows are kept dense: a removed row is filled with the last one, so a search never skips holes.
The matrix grows by doubling and shrinks by half when a quarter full, so its memory stays within
4x the live rows (and a partition of one entry holds a few rows, not thousands).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from quotad.daemon.semantic.model import Vector

MIN_CAPACITY: Final = 4

threadpool_limits(limits=1, user_api="blas")  # once, at import: see the module docstring


class VectorIndex:
    """Unit vectors by entry id; :meth:`search` returns the most similar above a threshold."""

    __slots__ = ("_ids", "_matrix", "_rows", "dimensions")

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self._matrix: npt.NDArray[np.float32] = np.empty(
            (MIN_CAPACITY, dimensions), dtype=np.float32
        )
        self._ids: list[bytes] = []
        self._rows: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._rows

    @property
    def nbytes(self) -> int:
        """Bytes held by the matrix (its capacity, not only the live rows)."""
        return int(self._matrix.nbytes)

    def add(self, entry_id: bytes, vector: Vector) -> None:
        """Add (or replace) the vector of ``entry_id``."""
        if vector.shape != (self.dimensions,):
            raise ValueError(f"expected a vector of {self.dimensions} values, got {vector.shape}")
        row = self._rows.get(entry_id)
        if row is None:
            row = len(self._ids)
            if row == self._matrix.shape[0]:
                self._resize(2 * row)
            self._ids.append(entry_id)
            self._rows[entry_id] = row
        self._matrix[row] = vector

    def remove(self, entry_id: bytes) -> bool:
        """Remove the vector of ``entry_id``; False when it is not here."""
        row = self._rows.pop(entry_id, None)
        if row is None:
            return False
        last = len(self._ids) - 1
        if row != last:
            moved = self._ids[last]
            self._matrix[row] = self._matrix[last]
            self._ids[row] = moved
            self._rows[moved] = row
        self._ids.pop()
        capacity = self._matrix.shape[0]
        if capacity > MIN_CAPACITY and len(self._ids) <= capacity // 4:
            self._resize(max(MIN_CAPACITY, capacity // 2))
        return True

    def rebuild(self, items: Iterable[tuple[bytes, Vector]]) -> None:
        """Replace every vector with ``items`` (as at start, from the stored vectors)."""
        pairs = dict(items)
        self._ids = list(pairs)
        self._rows = {entry_id: row for row, entry_id in enumerate(self._ids)}
        self._matrix = np.empty((max(MIN_CAPACITY, len(pairs)), self.dimensions), np.float32)
        for row, vector in enumerate(pairs.values()):
            self._matrix[row] = vector

    def search(self, query: Vector, threshold: float, limit: int) -> list[tuple[bytes, float]]:
        """Up to ``limit`` (entry id, cosine similarity) with similarity ≥ ``threshold``, most
        similar first."""
        count = len(self._ids)
        if count == 0 or limit <= 0:
            return []
        scores: npt.NDArray[np.float32] = self._matrix[:count] @ query
        above = np.flatnonzero(scores >= threshold)
        if above.size > limit:
            best = np.argpartition(scores[above], above.size - limit)[above.size - limit :]
            above = above[best]
        ordered = above[np.argsort(-scores[above], kind="stable")]
        return [(self._ids[row], float(scores[row])) for row in ordered]

    def vector(self, entry_id: bytes) -> Vector:
        """A copy of the vector of ``entry_id`` (KeyError when it is not here)."""
        vector: Vector = self._matrix[self._rows[entry_id]].copy()
        return vector

    def _resize(self, capacity: int) -> None:
        resized = np.empty((capacity, self.dimensions), dtype=np.float32)
        count = len(self._ids)
        resized[:count] = self._matrix[:count]
        self._matrix = resized
