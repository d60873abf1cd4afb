"""The semantic cache's questions in ``quotad.db``: table ``semantic_questions`` (schema version 3).

One row per cached answer the semantic cache may serve, under the answer's cache key: the
question's partition (16 bytes), its last user turn as asked, its vector (64 float32, little
endian) and the :data:`~quotad.daemon.semantic.cache.VECTOR_SCHEME` that made it. A row is
written in the same group commit as its cache entry, after it; the schema's triggers delete it
when its entry is deleted (evicted, expired, cleared) or stored again (replaced), in the
statement that does so: a question never outlives its answer in the file.

At start, :func:`read_page` gives the rows back a page at a time, oldest first; rows of another
scheme are embedded again from their text (:meth:`SemanticCache.reembed`) and written back.
"""

from __future__ import annotations

from typing import Final, NamedTuple

import numpy as np

from quotad.daemon.semantic.model import Vector
from quotad.daemon.store.db import Database, Statement

PAGE_ROWS: Final = 4096
"""Rows read at a time at start."""

_INSERT: Final = (
    "INSERT OR REPLACE INTO semantic_questions (key, partition, text, vector, scheme) "
    "VALUES (?, ?, ?, ?, ?)"
)
_DELETE: Final = "DELETE FROM semantic_questions WHERE key = ?"
_PAGE: Final = (
    "SELECT rowid, key, partition, text, vector, scheme FROM semantic_questions "
    "WHERE rowid > ? ORDER BY rowid LIMIT ?"
)
_VECTOR_TYPE: Final = np.dtype("<f4")


class StoredQuestion(NamedTuple):
    """One row of ``semantic_questions``."""

    rowid: int
    key: bytes
    partition: bytes
    text: str
    vector: bytes
    scheme: str


def insert(key: bytes, partition: bytes, text: str, vector: Vector, scheme: str) -> Statement:
    """The statement that stores a question beside the cache entry ``key``."""
    blob = np.ascontiguousarray(vector, dtype=_VECTOR_TYPE).tobytes()
    return (_INSERT, (key, partition, text, blob, scheme))


def delete(key: bytes) -> Statement:
    """The statement that drops the question of ``key`` (its entry stays)."""
    return (_DELETE, (key,))


def vector_of(blob: bytes) -> Vector:
    """A stored vector as float32 (its length is checked by whoever holds it; a blob that is
    not whole float32 values reads as an empty vector)."""
    if len(blob) % _VECTOR_TYPE.itemsize:
        return np.zeros(0, dtype=np.float32)
    vector: Vector = np.frombuffer(blob, dtype=_VECTOR_TYPE).astype(np.float32)
    return vector


async def read_page(db: Database, after: int) -> list[StoredQuestion]:
    """Up to :data:`PAGE_ROWS` rows stored after ``after`` (a rowid), oldest first. A value
    of the wrong type (never written by quotad) reads as empty: that row is dropped."""
    rows = await db.read(_PAGE, (after, PAGE_ROWS))
    return [
        StoredQuestion(
            int(rowid),
            _blob(key),
            _blob(partition),
            text if isinstance(text, str) else "",
            _blob(vector),
            scheme if isinstance(scheme, str) else "",
        )
        for rowid, key, partition, text, vector, scheme in rows
    ]


def _blob(value: object) -> bytes:
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else b""
