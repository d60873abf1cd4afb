"""The vector index of one partition (quotad.daemon.semantic.index): search against a brute-force
reference under any sequence of adds and removes, rebuild, and memory bounded by the live rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quotad.daemon.semantic.index import MIN_CAPACITY, VectorIndex
from quotad.daemon.semantic.model import Vector

DIMENSIONS = 16


def unit(seed: int, dimensions: int = DIMENSIONS) -> Vector:
    vector = np.random.default_rng(seed).standard_normal(dimensions).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return vector


def entry(number: int) -> bytes:
    return number.to_bytes(16, "big")


def test_blas_runs_on_one_thread_once_the_index_is_imported() -> None:
    from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas
    assert all(pool["num_threads"] == 1 for pool in blas)


def test_search_returns_the_most_similar_first_above_the_threshold() -> None:
    index = VectorIndex(DIMENSIONS)
    for number in range(50):
        index.add(entry(number), unit(number))
    query = unit(7)
    found = index.search(query, threshold=-1.0, limit=5)
    assert found[0][0] == entry(7)
    assert found[0][1] == pytest.approx(1.0, abs=1e-6)
    assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
    assert len(found) == 5
    assert index.search(query, threshold=0.999, limit=5) == [found[0]]
    assert index.search(query, threshold=0.999, limit=0) == []
    assert VectorIndex(DIMENSIONS).search(query, threshold=-1.0, limit=5) == []


def test_adding_an_entry_again_replaces_its_vector() -> None:
    index = VectorIndex(DIMENSIONS)
    index.add(entry(1), unit(1))
    index.add(entry(1), unit(2))
    assert len(index) == 1
    assert np.allclose(index.vector(entry(1)), unit(2))


def test_a_vector_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(ValueError, match="16 values"):
        VectorIndex(DIMENSIONS).add(entry(1), unit(1, dimensions=8))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 40), st.integers(0, 10**6)), max_size=120),
    st.integers(0, 10**6),
)
def test_search_agrees_with_brute_force_under_any_adds_and_removes(
    operations: list[tuple[bool, int, int]], query_seed: int
) -> None:
    index = VectorIndex(DIMENSIONS)
    reference: dict[bytes, Vector] = {}
    for adding, number, seed in operations:
        if adding:
            index.add(entry(number), unit(seed))
            reference[entry(number)] = unit(seed)
        else:
            assert index.remove(entry(number)) == (entry(number) in reference)
            reference.pop(entry(number), None)
        assert len(index) == len(reference)
    query = unit(query_seed)
    expected = sorted(
        ((key, float(vector @ query)) for key, vector in reference.items()),
        key=lambda item: -item[1],
    )
    found = index.search(query, threshold=-1.0, limit=len(reference) + 1)
    assert {key for key, _ in found} == set(reference)
    assert np.allclose([score for _, score in found], [score for _, score in expected], atol=1e-6)
    for key, score in found:  # ties may come in either order; each score is its own
        assert score == pytest.approx(float(reference[key] @ query), abs=1e-6)
    limited = index.search(query, threshold=-1.0, limit=3)
    assert [score for _, score in limited] == pytest.approx(
        [score for _, score in expected[:3]], abs=1e-6
    )
    for key, vector in reference.items():
        assert np.allclose(index.vector(key), vector)


def test_memory_follows_the_live_rows() -> None:
    index = VectorIndex(DIMENSIONS)
    row_bytes = DIMENSIONS * 4
    for number in range(1000):
        index.add(entry(number), unit(number))
    assert index.nbytes <= 2 * 1000 * row_bytes
    for number in range(990):
        index.remove(entry(number))
    assert len(index) == 10
    assert index.nbytes <= 4 * 10 * row_bytes
    for number in range(990, 1000):
        index.remove(entry(number))
    assert index.nbytes == MIN_CAPACITY * row_bytes
    assert index.search(unit(1), threshold=-1.0, limit=3) == []


def test_rebuild_replaces_every_vector() -> None:
    index = VectorIndex(DIMENSIONS)
    index.add(entry(99), unit(99))
    index.rebuild((entry(number), unit(number)) for number in range(20))
    assert len(index) == 20
    assert entry(99) not in index
    assert [key for key, _ in index.search(unit(3), threshold=0.999, limit=1)] == [entry(3)]
    index.add(entry(20), unit(20))  # grows past the rebuilt size
    assert len(index) == 21
    index.rebuild([])
    assert len(index) == 0
