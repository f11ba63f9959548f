"""Serialize, read and search FAISS indexes."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from index.build import as_matrix

# faiss-cpu 1.15 scores a flat index with its SIMD kernel, query after query, up to a large
# default threshold. From a few queries on, one BLAS matrix product per block is much faster:
# 64 queries against 100,000 x 128 floats, 312 ms -> 36 ms on one thread; one query, 4.3 ms
# with SIMD against 14 ms with BLAS (docs/performance.md, round 3). Both are exact.
BLAS_FROM_QUERIES = 4
_SIMD_THRESHOLD = faiss.cvar.distance_compute_blas_threshold


def _choose_kernel(n_queries: int) -> None:
    """FAISS's kernel for a search of `n_queries` (a process-wide setting, read per search: a
    concurrent search of another size may take the other kernel, which is exact as well)."""
    blas = n_queries >= BLAS_FROM_QUERIES
    faiss.cvar.distance_compute_blas_threshold = 0 if blas else _SIMD_THRESHOLD


def index_bytes(index: faiss.Index) -> bytes:
    """The index as bytes, for a file that `read_index` reads back."""
    return faiss.serialize_index(index).tobytes()


def read_index(path: Path | str) -> faiss.Index:
    """Read an index file (`index_bytes` written out); a missing or corrupt file raises
    ValueError."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: index file not found")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as err:
        raise ValueError(f"{path}: not a readable FAISS index ({err})") from err


def _check_exclude(exclude: list[set[int]] | None, n_queries: int) -> list[set[int]]:
    if exclude is None:
        return [set()] * n_queries
    if len(exclude) != n_queries:
        raise ValueError(f"exclude has {len(exclude)} sets for {n_queries} queries")
    return exclude


def _keep_top(
    scores: np.ndarray, ids: np.ndarray, excluded: set[int], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first k results that are real ids not in `excluded`, padded with (-inf, -1). A
    Python pass over the few fetched ids: numpy's isin and pad cost 8x more per query."""
    kept = [j for j, i in enumerate(ids.tolist()) if i >= 0 and i not in excluded][:k]
    top_scores = np.full(k, -np.inf, dtype=np.float32)
    top_ids = np.full(k, -1, dtype=np.int64)
    top_scores[: len(kept)], top_ids[: len(kept)] = scores[kept], ids[kept]
    return top_scores, top_ids


def search(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    exclude: list[set[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, ids) for every query row in one batched faiss search, best first.

    `exclude[i]` holds item ids never returned for query i. k is clamped to the number of
    items; a row with fewer than k allowed results is padded with score -inf and id -1.
    Returns float32 scores and int64 ids, both of shape (n_queries, k).
    """
    queries = as_matrix(queries, "queries")
    if queries.shape[1] != index.d:
        raise ValueError(f"queries have dim {queries.shape[1]}, the index has dim {index.d}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    exclude = _check_exclude(exclude, len(queries))
    k = min(k, index.ntotal)
    extra = max((len(e) for e in exclude), default=0)
    fetch = min(k + extra, index.ntotal)
    if fetch == 0:
        empty = np.empty((len(queries), 0))
        return empty.astype(np.float32), empty.astype(np.int64)
    _choose_kernel(len(queries))
    scores, ids = index.search(queries, fetch)
    rows = [_keep_top(s, i, e, k) for s, i, e in zip(scores, ids, exclude, strict=True)]
    top_scores = np.array([r[0] for r in rows], dtype=np.float32).reshape(len(queries), k)
    top_ids = np.array([r[1] for r in rows], dtype=np.int64).reshape(len(queries), k)
    return top_scores, top_ids
