"""Build a FAISS index over item embeddings and measure its recall against exact search.

Item embeddings are float32, one row per catalog item; the FAISS id of an item is its row
position. Every index ranks by inner product: the towers' score (cosine for unit-norm vectors,
u·v + b with a bias dimension).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

from index.config import IndexConfig

# k-means wants about this many training points per centroid (faiss warns below it).
MIN_POINTS_PER_CENTROID = 39


def as_matrix(vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
    """Return `vectors` as a C-contiguous float32 matrix, raising ValueError if it is not 2-D."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {matrix.shape}")
    return matrix


def auto_nlist(n_items: int) -> int:
    """The default number of IVF lists: about 4 * sqrt(n)."""
    return max(1, round(4 * math.sqrt(n_items)))


def plan_index(n_items: int, dim: int, cfg: IndexConfig) -> dict[str, Any]:
    """The effective index type and parameters for a catalog of `n_items` vectors of size `dim`.

    Requested values are clamped to what the catalog can train: at most one IVF list per
    39 items (at least one list), nprobe <= nlist, and 2**pq_bits <= n_items. A one-item
    catalog cannot train a product quantizer and falls back to an exact flat index.
    """
    if cfg.type == "ivfpq" and dim % cfg.pq_m:
        raise ValueError(f"index.pq_m={cfg.pq_m} must divide the embedding dim {dim}")
    if cfg.type == "flat" or (cfg.type == "ivfpq" and n_items < 2):
        return {"type": "flat"}
    if cfg.type == "hnsw":
        return {
            "type": "hnsw",
            "m": cfg.hnsw_m,
            "ef_search": cfg.hnsw_ef_search,
            "ef_construction": cfg.hnsw_ef_construction,
        }
    requested = cfg.nlist or auto_nlist(n_items)
    nlist = max(1, min(requested, n_items // MIN_POINTS_PER_CENTROID))
    plan: dict[str, Any] = {"type": cfg.type, "nlist": nlist, "nprobe": min(cfg.nprobe, nlist)}
    if cfg.type == "ivfpq":
        plan["pq_m"] = cfg.pq_m
        plan["pq_bits"] = min(cfg.pq_bits, int(math.log2(n_items)))
    return plan


def _new_index(dim: int, plan: dict[str, Any]) -> faiss.Index:
    """An empty, untrained index of the planned type."""
    if plan["type"] == "flat":
        return faiss.IndexFlatIP(dim)
    if plan["type"] == "hnsw":
        index = faiss.IndexHNSWFlat(dim, plan["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = plan["ef_construction"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if plan["type"] == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, plan["nlist"], faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(
            quantizer, dim, plan["nlist"], plan["pq_m"], plan["pq_bits"], faiss.METRIC_INNER_PRODUCT
        )
    return index  # faiss's Python wrapper keeps `quantizer` alive with the index


def _seed_clustering(index: faiss.Index, seed: int) -> None:
    """Make k-means deterministic for `seed`.

    The catalog-size clamps in `plan_index` are deliberate, so faiss's "too few training points"
    warning is silenced by lowering its threshold (it only controls that warning).
    """
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1
    if isinstance(index, faiss.IndexIVFPQ):
        index.pq.cp.seed = seed
        index.pq.cp.min_points_per_centroid = 1


def _set_search_params(index: faiss.Index, plan: dict[str, Any]) -> None:
    if "nprobe" in plan:
        index.nprobe = plan["nprobe"]
    if plan["type"] == "hnsw":
        index.hnsw.efSearch = plan["ef_search"]


def build_index(embeddings: np.ndarray, cfg: IndexConfig, seed: int = 0) -> faiss.Index:
    """Build the index `cfg` asks for over `embeddings` (row i gets id i), ready to search.

    IVF k-means is seeded, so IVF builds are deterministic for a seed. HNSW has no seed; its
    insertion is multi-threaded, and faiss does not promise an identical graph between builds.
    """
    embeddings = as_matrix(embeddings, "embeddings")
    n_items, dim = embeddings.shape
    if n_items == 0:
        raise ValueError("cannot build an index over an empty catalog")
    plan = plan_index(n_items, dim, cfg)
    index = _new_index(dim, plan)
    if isinstance(index, faiss.IndexIVF):
        _seed_clustering(index, seed)
        index.train(embeddings)
    index.add(embeddings)
    _set_search_params(index, plan)
    return index


def measure_recall(
    index: faiss.Index, embeddings: np.ndarray, queries: np.ndarray, k: int = 10
) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k, with k clamped to n_items.

    The exact top-k comes from an IndexFlatIP over the same embeddings.
    """
    embeddings = as_matrix(embeddings, "embeddings")
    queries = as_matrix(queries, "queries")
    if len(queries) == 0:
        raise ValueError("measuring recall needs at least one query")
    k = min(k, len(embeddings))
    if k < 1:
        raise ValueError("measuring recall needs k >= 1 and a non-empty catalog")
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(embeddings)
    _, true_ids = exact.search(queries, k)
    _, found_ids = index.search(queries, k)
    hits = [len(set(t) & set(f[f >= 0])) for t, f in zip(true_ids, found_ids, strict=True)]
    return float(np.mean(hits)) / k


@dataclass
class IndexReport:
    """What was built and how well it matches exact search."""

    type: str
    n_items: int
    dim: int
    params: dict[str, Any] = field(default_factory=dict)
    recall_at_10: float = 1.0
    build_seconds: float = 0.0


def sample_queries(embeddings: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` distinct catalog rows, drawn with `seed`, to use as recall queries."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(embeddings), size=min(n, len(embeddings)), replace=False)
    return as_matrix(embeddings[np.sort(rows)], "queries")


def build_and_measure(
    embeddings: np.ndarray,
    cfg: IndexConfig,
    queries: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[faiss.Index, IndexReport]:
    """Build the index and report its effective parameters, build time and recall@10.

    Without `queries`, `cfg.recall_queries` catalog rows are sampled with `seed` as queries.
    """
    embeddings = as_matrix(embeddings, "embeddings")
    if queries is None:
        queries = sample_queries(embeddings, cfg.recall_queries, seed)
    start = time.perf_counter()
    index = build_index(embeddings, cfg, seed)
    build_seconds = time.perf_counter() - start
    plan = plan_index(*embeddings.shape, cfg)
    report = IndexReport(
        type=plan.pop("type"),
        n_items=embeddings.shape[0],
        dim=embeddings.shape[1],
        params=plan,
        recall_at_10=measure_recall(index, embeddings, queries, k=10),
        build_seconds=build_seconds,
    )
    return index, report
