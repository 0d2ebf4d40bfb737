"""Exact and near-duplicate groups over a manifest: sha256 equality and perceptual-hash distance.

All functions return row positions (``0..len(frame)-1``, as ``frame.iloc`` takes them).
The multi-index hashing algorithm: docs/data.md#duplicates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from clip_har.config import DEFAULT_NEAR_DISTANCE

__all__ = [
    "HashIndex",
    "UnionFind",
    "brute_force_pairs",
    "duplicate_group_ids",
    "exact_groups",
    "hashes_to_uint64",
    "near_groups",
]

HASH_BITS = 64
DEFAULT_MAX_DISTANCE = DEFAULT_NEAR_DISTANCE  # the data.near_distance default
_QUERY_BLOCK = 1 << 16  # items probed at once (bounds the memory of a probe round)


class UnionFind:
    """Disjoint sets over ``0..n-1`` with path halving and union by size."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))
        self.size = [1] * size

    def find(self, item: int) -> int:
        parent = self.parent
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        if self.size[root_a] < self.size[root_b]:
            root_a, root_b = root_b, root_a
        self.parent[root_b] = root_a
        self.size[root_a] += self.size[root_b]

    def union_pairs(self, pairs: Iterable[tuple[int, int]]) -> None:
        for a, b in pairs:
            self.union(int(a), int(b))

    def groups(self, min_size: int = 2) -> list[list[int]]:
        """Every set of at least ``min_size`` members, each sorted, ordered by first member."""
        members: dict[int, list[int]] = {}
        for item in range(len(self.parent)):
            members.setdefault(self.find(item), []).append(item)
        found = [group for group in members.values() if len(group) >= min_size]
        return sorted(found, key=lambda group: group[0])


def hashes_to_uint64(hashes: Sequence[str] | pd.Series) -> NDArray[np.uint64]:
    """16-hex-char perceptual hashes as unsigned 64-bit integers."""
    return np.fromiter((int(h, 16) for h in hashes), dtype=np.uint64, count=len(hashes))


def _popcount(values: NDArray[np.uint64]) -> NDArray[np.uint8]:
    return np.bitwise_count(values)


def _flip_masks(bits: int, radius: int) -> NDArray[np.uint64]:
    """Every ``bits``-bit mask with at most ``radius`` bits set (0 included)."""
    masks = [0]
    for k in range(1, radius + 1):
        for positions in itertools.combinations(range(bits), k):
            masks.append(sum(1 << p for p in positions))
    return np.asarray(masks, dtype=np.uint64)


def _chunk_bits(chunks: int) -> list[int]:
    base, extra = divmod(HASH_BITS, chunks)
    return [base + (1 if j < extra else 0) for j in range(chunks)]


def _plan(n: int, max_distance: int) -> int:
    """The number of chunks with the least estimated work for ``n`` distinct hashes."""
    best_chunks, best_cost = max_distance + 1, math.inf
    for chunks in range(1, max_distance + 2):
        radius = max_distance // chunks
        bits = _chunk_bits(chunks)
        probes = sum(math.comb(b, k) for b in bits for k in range(radius + 1))
        if probes * n > 5e8:  # unworkable probe count (e.g. one 64-bit chunk at radius 4)
            continue
        # each probe is a binary search (~log2 n steps); each candidate is a popcount check
        collisions = sum(
            n * n * sum(math.comb(b, k) for k in range(radius + 1)) / 2.0**b for b in bits
        )
        cost = probes * n * (1.0 + math.log2(max(n, 2)) / 8) + collisions
        if cost < best_cost:
            best_chunks, best_cost = chunks, cost
    return best_chunks


class HashIndex:
    """Multi-index hash tables over distinct 64-bit hashes, for all close pairs at once.

    >>> index = HashIndex(hashes_to_uint64(["ffff000000000000", "ffff000000000001"]), 4)
    >>> index.pairs().tolist()
    [[0, 1]]
    """

    def __init__(self, hashes: NDArray[np.uint64], max_distance: int = DEFAULT_MAX_DISTANCE):
        if not 0 <= max_distance < HASH_BITS:
            raise ValueError(f"max_distance must be in 0..{HASH_BITS - 1}, got {max_distance}")
        self.hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
        self.max_distance = max_distance
        self.chunks = _plan(len(self.hashes), max_distance)
        self.radius = max_distance // self.chunks
        self._tables: list[tuple[int, int, NDArray[np.int64], NDArray[np.uint64]]] = []
        shift = 0
        for bits in _chunk_bits(self.chunks):
            keys = (self.hashes >> np.uint64(shift)) & np.uint64((1 << bits) - 1)
            order = np.argsort(keys, kind="stable")
            self._tables.append((shift, bits, order, keys[order]))
            shift += bits

    def pairs(self) -> NDArray[np.int64]:
        """``[P, 2]`` positions ``(i, j)``, ``i < j``, of every pair within ``max_distance``."""
        n = len(self.hashes)
        found: list[NDArray[np.int64]] = []
        for shift, bits, order, sorted_keys in self._tables:
            masks = _flip_masks(bits, self.radius)
            mask = np.uint64((1 << bits) - 1)
            for start in range(0, n, _QUERY_BLOCK):
                block = np.arange(start, min(n, start + _QUERY_BLOCK), dtype=np.int64)
                keys = (self.hashes[block] >> np.uint64(shift)) & mask
                for flips in np.array_split(masks, max(1, len(masks) // 64)):
                    probes = (keys[:, None] ^ flips[None, :]).ravel()
                    owners = np.repeat(block, len(flips))
                    lo = np.searchsorted(sorted_keys, probes, side="left")
                    hi = np.searchsorted(sorted_keys, probes, side="right")
                    counts = hi - lo
                    hit = counts > 0
                    if not hit.any():
                        continue
                    lo, counts, owners = lo[hit], counts[hit], owners[hit]
                    total = int(counts.sum())
                    # expand every [lo, hi) run into explicit positions
                    run_starts = np.cumsum(counts) - counts
                    offsets = np.arange(total, dtype=np.int64) - np.repeat(run_starts, counts)
                    other = order[np.repeat(lo, counts) + offsets]
                    first = np.repeat(owners, counts)
                    keep = first < other
                    first, other = first[keep], other[keep]
                    distance = _popcount(self.hashes[first] ^ self.hashes[other])
                    close = distance <= self.max_distance
                    if close.any():
                        found.append(np.stack([first[close], other[close]], axis=1))
        if not found:
            return np.empty((0, 2), dtype=np.int64)
        return _unique_pairs(np.concatenate(found), n)


def _unique_pairs(pairs: NDArray[np.int64], n: int) -> NDArray[np.int64]:
    """Sorted distinct ``(i, j)`` rows."""
    keys = np.unique(pairs[:, 0] * np.int64(n) + pairs[:, 1])
    return np.stack([keys // n, keys % n], axis=1)


def brute_force_pairs(
    hashes: NDArray[np.uint64], max_distance: int = DEFAULT_MAX_DISTANCE, block: int = 2048
) -> NDArray[np.int64]:
    """All close pairs by comparing every pair (the reference for tests and benchmarks)."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found: list[NDArray[np.int64]] = []
    for start in range(0, n, block):
        rows = hashes[start : start + block]
        distance = _popcount(rows[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= max_distance)
        i = i.astype(np.int64) + start
        j = j.astype(np.int64)
        keep = i < j
        found.append(np.stack([i[keep], j[keep]], axis=1))
    return _unique_pairs(np.concatenate(found), n)


def _valid_positions(column: pd.Series) -> tuple[NDArray[np.int64], list[str]]:
    mask = column.notna().to_numpy()
    positions = np.flatnonzero(mask).astype(np.int64)
    values = [str(v).strip().lower() for v in column[mask]]
    return positions, values


def exact_groups(frame: pd.DataFrame) -> list[list[int]]:
    """Row positions sharing a sha256 (groups of two or more; rows without a digest skipped)."""
    positions, digests = _valid_positions(frame["sha256"])
    by_digest: dict[str, list[int]] = {}
    for position, digest in zip(positions.tolist(), digests, strict=True):
        by_digest.setdefault(digest, []).append(position)
    return sorted((g for g in by_digest.values() if len(g) >= 2), key=lambda g: g[0])


def _near_pairs(frame: pd.DataFrame, max_distance: int) -> list[tuple[int, int]]:
    """Row-position pairs whose perceptual hashes are within ``max_distance`` bits."""
    positions, hashes = _valid_positions(frame["phash"])
    if len(positions) < 2:
        return []
    values = hashes_to_uint64(hashes)
    distinct, inverse = np.unique(values, return_inverse=True)
    pairs: list[tuple[int, int]] = []
    # rows with the very same hash: chain them to the first row holding that hash
    first_row = np.full(len(distinct), -1, dtype=np.int64)
    for row, slot in zip(positions.tolist(), inverse.tolist(), strict=True):
        if first_row[slot] < 0:
            first_row[slot] = row
        else:
            pairs.append((int(first_row[slot]), row))
    if len(distinct) >= 2:
        for a, b in HashIndex(distinct, max_distance).pairs().tolist():
            pairs.append((int(first_row[a]), int(first_row[b])))
    return pairs


def near_groups(frame: pd.DataFrame, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[list[int]]:
    """Transitive groups (two or more rows) of perceptual hashes within ``max_distance`` bits.

    Byte-identical copies have identical hashes, so they are in these groups too.
    """
    sets = UnionFind(len(frame))
    sets.union_pairs(_near_pairs(frame, max_distance))
    return sets.groups()


def duplicate_group_ids(frame: pd.DataFrame, max_distance: int = DEFAULT_MAX_DISTANCE) -> pd.Series:
    """One integer id per row; rows in the same exact-or-near duplicate group share it.

    Ids are ``0..k-1`` in order of each group's first row; a row with no duplicate gets an
    id of its own. Made for group-aware splitting: keep every id in one split.
    """
    sets = UnionFind(len(frame))
    for group in exact_groups(frame):
        sets.union_pairs((group[0], other) for other in group[1:])
    sets.union_pairs(_near_pairs(frame, max_distance))
    ids: dict[int, int] = {}
    values = [ids.setdefault(sets.find(row), len(ids)) for row in range(len(frame))]
    return pd.Series(values, index=frame.index, dtype="int64", name="duplicate_group")


def merged_groups(frame: pd.DataFrame, max_distance: int = DEFAULT_MAX_DISTANCE) -> list[list[int]]:
    """Groups (two or more rows) of the union of exact and near duplicates."""
    ids = duplicate_group_ids(frame, max_distance).to_numpy()
    members: dict[int, list[int]] = {}
    for row, group in enumerate(ids.tolist()):
        members.setdefault(group, []).append(row)
    return [g for g in members.values() if len(g) >= 2]
