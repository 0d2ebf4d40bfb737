"""Duplicate groups: the multi-index hash index finds exactly what all-pairs finds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clip_har.data.duplicates import (
    HashIndex,
    UnionFind,
    brute_force_pairs,
    duplicate_group_ids,
    exact_groups,
    hashes_to_uint64,
    near_groups,
)
from clip_har.data.hashing import hamming


def _random_hashes(n: int, seed: int, planted: int, max_flips: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    sources = base[rng.integers(0, n, size=planted)]
    near = sources.copy()
    for row in range(planted):
        bits = rng.choice(64, size=int(rng.integers(0, max_flips + 1)), replace=False)
        for bit in bits:
            near[row] ^= np.uint64(1) << np.uint64(bit)
    return np.concatenate([base, near])


@pytest.mark.parametrize(("distance", "seed"), [(0, 1), (1, 2), (4, 3), (7, 4), (10, 5)])
def test_index_equals_brute_force(distance: int, seed: int) -> None:
    hashes = np.unique(_random_hashes(3000, seed, planted=300, max_flips=distance + 2))
    index = HashIndex(hashes, distance)
    expected = brute_force_pairs(hashes, distance)
    assert len(expected) > 0 or distance == 0
    np.testing.assert_array_equal(index.pairs(), expected)


def test_index_on_clustered_hashes_equals_brute_force() -> None:
    # many hashes sharing most bits: dense buckets, the worst case for the index
    rng = np.random.default_rng(7)
    centre = np.uint64(0x0123_4567_89AB_CDEF)
    noise = rng.integers(0, 2**12, size=2000, dtype=np.uint64)
    hashes = np.unique(centre ^ noise ^ (noise << np.uint64(40)))
    np.testing.assert_array_equal(HashIndex(hashes, 4).pairs(), brute_force_pairs(hashes, 4))


def test_brute_force_matches_hamming() -> None:
    hexes = ["0000000000000000", "000000000000000f", "00000000000000ff", "ffffffffffffffff"]
    pairs = brute_force_pairs(hashes_to_uint64(hexes), 4).tolist()
    expected = [
        [i, j] for i in range(4) for j in range(i + 1, 4) if hamming(hexes[i], hexes[j]) <= 4
    ]
    assert pairs == expected == [[0, 1], [1, 2]]


def test_union_find_is_transitive() -> None:
    sets = UnionFind(6)
    sets.union_pairs([(0, 1), (1, 2), (4, 5)])
    assert sets.groups() == [[0, 1, 2], [4, 5]]
    assert sets.groups(min_size=1) == [[0, 1, 2], [3], [4, 5]]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "path": [f"/img/{i}.jpg" for i in range(7)],
            "label": ["a", "a", "b", "c", "c", "d", None],
            "sha256": ["s1", "s1", "s2", "s3", "s4", None, "s6"],
            "phash": [
                "ff00000000000000",  # 0  exact twin of 1
                "ff00000000000000",  # 1
                "ff0000000000000f",  # 2  4 bits from 0/1
                "00ff00000000ff00",  # 3
                "00ff00000000ff01",  # 4  1 bit from 3
                "ff0000000000001f",  # 5  1 bit from 2, 5 from 0: joined transitively
                None,  # 6  no hash
            ],
        }
    )


def test_exact_and_near_groups() -> None:
    frame = _frame()
    assert exact_groups(frame) == [[0, 1]]
    assert near_groups(frame) == [[0, 1, 2, 5], [3, 4]]
    assert near_groups(frame, max_distance=0) == [[0, 1]]
    assert near_groups(frame, max_distance=1) == [[0, 1], [2, 5], [3, 4]]


def test_duplicate_group_ids() -> None:
    frame = _frame().set_index(pd.Index(list("abcdefg")))
    ids = duplicate_group_ids(frame)
    assert list(ids.index) == list("abcdefg")
    assert ids.tolist() == [0, 0, 0, 1, 1, 0, 2]
    strict = duplicate_group_ids(frame, max_distance=0)
    assert strict.tolist() == [0, 0, 1, 2, 3, 4, 5]


def test_exact_duplicates_join_even_with_different_hashes() -> None:
    frame = pd.DataFrame(
        {
            "path": ["a", "b", "c"],
            "label": [None, None, None],
            "sha256": ["x", "x", "y"],
            "phash": ["0000000000000000", None, "ffffffffffffffff"],
        }
    )
    assert duplicate_group_ids(frame).tolist() == [0, 0, 1]
    assert near_groups(frame) == []
