"""Build a FAISS index over item embeddings and measure it: recall against exact search, query
time on one thread, memory.

Item embeddings are float32, one row per catalog item; the FAISS id of an item is its row
position. Every index ranks by inner product: the towers' score (cosine for unit-norm vectors,
u·v + b with a bias dimension).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np

from index.config import IndexConfig

# k-means wants about this many training points per centroid (faiss warns below it).
MIN_POINTS_PER_CENTROID = 39
# ivfsq and ivf_fastscan train their k-means on at most this many sampled points per list: a
# 1,000,000-game catalog trains on 256,000 points, not all of them (faiss's own cap is 256).
TRAIN_POINTS_PER_LIST = 64
# ivfsq and ivf_fastscan pad vectors with zeros to a multiple of this: faiss's SIMD kernels
# need it (the towers' 257 dimensions would take the scalar loop, about 6 times slower).
SIMD_WIDTH = 16
# Links per node of the HNSW graph over the refined types' list centres (nprobe searched).
QUANTIZER_HNSW_M = 32
# ivf_fastscan's codes: 4 bits per dimension, the only width faiss's fast-scan kernels take.
FASTSCAN_BITS = 4
# The IVF types whose HNSW-found lists hold codes and whose short list is re-ranked exactly.
REFINED_TYPES = ("ivfsq", "ivf_fastscan")


def as_matrix(vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
    """Return `vectors` as a C-contiguous float32 matrix, raising ValueError if it is not 2-D."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {matrix.shape}")
    return matrix


def auto_nlist(n_items: int) -> int:
    """The default number of IVF lists: about 2 * sqrt(n). Fewer, longer lists than 4 * sqrt(n)
    made ivf_fastscan faster at the same recall: 0.19 against 0.45 ms a query at 100,000
    games, 0.81 against 0.97 ms at 1,000,000 (docs/scale.md): a list costs more than its codes."""
    return max(1, round(2 * math.sqrt(n_items)))


def plan_index(n_items: int, dim: int, cfg: IndexConfig) -> dict[str, Any]:
    """The effective index type and parameters for a catalog of `n_items` vectors of size `dim`.

    Requested values are clamped to what the catalog can train: at most one IVF list per
    39 items (at least one list), nprobe <= nlist, and 2**pq_bits <= n_items. A catalog too
    small to train a product quantizer (ivfpq: one item; ivf_fastscan: under 16, its 4-bit
    codes' centroids) falls back to an exact flat index.
    """
    if cfg.type == "auto":
        raise ValueError("index type auto is decided by measuring: use build_and_measure")
    if cfg.type == "ivfpq" and dim % cfg.pq_m:
        raise ValueError(f"index.pq_m={cfg.pq_m} must divide the embedding dim {dim}")
    too_few_to_train = (cfg.type == "ivfpq" and n_items < 2) or (
        cfg.type == "ivf_fastscan" and n_items < 2**FASTSCAN_BITS
    )
    if cfg.type == "flat" or too_few_to_train:
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
    if cfg.type in REFINED_TYPES:
        plan["refine_factor"] = cfg.refine_factor
    return plan


def _refined_ivf(kind: str, dim: int, nlist: int) -> faiss.Index:
    """An IVF index of `kind` whose short list of candidates an exact flat index over the
    original vectors re-ranks. Its codes are zero-padded to the SIMD width:

    - ivfsq: 8-bit scalar codes;
    - ivf_fastscan: 4-bit fast-scan PQ codes of one dimension each, whose lookup tables stay in
      SIMD registers: at 100,000 and 1,000,000 games it reaches ivfsq's recall in about half
      its time (docs/scale.md).

    The lists' centres are found by an HNSW graph (a flat scan of 4,000 centres costs a
    1,000,000-game catalog about a millisecond a query); k-means assigns with an exact flat
    index."""
    padded = -(-dim // SIMD_WIDTH) * SIMD_WIDTH
    quantizer = faiss.IndexHNSWFlat(padded, QUANTIZER_HNSW_M, faiss.METRIC_INNER_PRODUCT)
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "ivfsq":
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer, padded, nlist, faiss.ScalarQuantizer.QT_8bit, ip
        )
    else:
        ivf = faiss.IndexIVFPQFastScan(quantizer, padded, nlist, padded, FASTSCAN_BITS, ip)
    ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
    ivf.clustering_index = faiss.IndexFlatIP(padded)
    ivf.referenced_objects = [quantizer, ivf.clustering_index]  # alive as long as `ivf`
    pad = faiss.IndexPreTransform(faiss.RemapDimensionsTransform(dim, padded, False), ivf)
    return faiss.IndexRefineFlat(pad)  # faiss's wrappers keep their parts alive


def _new_index(dim: int, plan: dict[str, Any]) -> faiss.Index:
    """An empty, untrained index of the planned type."""
    if plan["type"] == "flat":
        return faiss.IndexFlatIP(dim)
    if plan["type"] == "hnsw":
        index = faiss.IndexHNSWFlat(dim, plan["m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = plan["ef_construction"]
        return index
    if plan["type"] in REFINED_TYPES:
        return _refined_ivf(plan["type"], dim, plan["nlist"])
    quantizer = faiss.IndexFlatIP(dim)
    if plan["type"] == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, plan["nlist"], faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(
            quantizer, dim, plan["nlist"], plan["pq_m"], plan["pq_bits"], faiss.METRIC_INNER_PRODUCT
        )
    return index  # faiss's Python wrapper keeps `quantizer` alive with the index


def _seed_clustering(index: faiss.IndexIVF, seed: int) -> None:
    """Make k-means deterministic for `seed`.

    The catalog-size clamps in `plan_index` are deliberate, so faiss's "too few training points"
    warning is silenced by lowering its threshold (it only controls that warning).
    """
    index.cp.seed = seed
    index.cp.min_points_per_centroid = 1
    if isinstance(index, faiss.IndexIVFPQ | faiss.IndexIVFPQFastScan):
        index.pq.cp.seed = seed
        index.pq.cp.min_points_per_centroid = 1


def set_search_params(index: faiss.Index, plan: dict[str, Any]) -> None:
    """Give a built index the search parameters of `plan` (from `plan_index`)."""
    if "nprobe" in plan:
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = plan["nprobe"]
        if plan["type"] in REFINED_TYPES:
            faiss.downcast_index(ivf.quantizer).hnsw.efSearch = plan["nprobe"]
    if plan["type"] == "hnsw":
        index.hnsw.efSearch = plan["ef_search"]
    if plan["type"] in REFINED_TYPES:
        index.k_factor = plan["refine_factor"]


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
    if plan["type"] in ("ivf", "ivfpq", *REFINED_TYPES):
        _seed_clustering(faiss.downcast_index(faiss.extract_index_ivf(index)), seed)
        index.train(embeddings)
    index.add(embeddings)
    set_search_params(index, plan)
    return index


def exact_top_ids(embeddings: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Each query's exact top-k ids by inner product, k clamped to n_items: recall's truth."""
    embeddings = as_matrix(embeddings, "embeddings")
    queries = as_matrix(queries, "queries")
    if len(queries) == 0:
        raise ValueError("measuring recall needs at least one query")
    k = min(k, len(embeddings))
    if k < 1:
        raise ValueError("measuring recall needs k >= 1 and a non-empty catalog")
    exact = faiss.IndexFlatIP(embeddings.shape[1])
    exact.add(embeddings)
    return exact.search(queries, k)[1]


def recall_against(index: faiss.Index, queries: np.ndarray, true_ids: np.ndarray) -> float:
    """Mean over queries of |index's top-k ∩ true top-k| / k, k being true_ids' width."""
    _, found_ids = index.search(as_matrix(queries, "queries"), true_ids.shape[1])
    hits = [len(set(t) & set(f[f >= 0])) for t, f in zip(true_ids, found_ids, strict=True)]
    return float(np.mean(hits)) / true_ids.shape[1]


def measure_recall(
    index: faiss.Index, embeddings: np.ndarray, queries: np.ndarray, k: int = 10
) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k, with k clamped to n_items.

    The exact top-k comes from an IndexFlatIP over the same embeddings.
    """
    return recall_against(index, queries, exact_top_ids(embeddings, queries, k))


@contextmanager
def one_faiss_thread() -> Iterator[None]:
    """FAISS on one OpenMP thread inside the block (a process-wide setting), as before after."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def pass_times_ms(
    index: faiss.Index, queries: np.ndarray, repeats: int = 5, k: int = 10
) -> tuple[list[float], list[float]]:
    """Milliseconds per query, one query per search on one FAISS thread, of each of `repeats`
    passes over `queries` (after one warm-up pass): in wall-clock time and in the thread's CPU
    time (which a machine shared with other work inflates less)."""
    queries = as_matrix(queries, "queries")
    if len(queries) == 0:
        raise ValueError("timing queries needs at least one query")
    wall, cpu = [], []
    with one_faiss_thread():
        for _ in range(repeats + 1):
            wall_start, cpu_start = time.perf_counter(), time.thread_time()
            for row in range(len(queries)):
                index.search(queries[row : row + 1], k)
            wall.append((time.perf_counter() - wall_start) * 1000 / len(queries))
            cpu.append((time.thread_time() - cpu_start) * 1000 / len(queries))
    return wall[1:], cpu[1:]


def query_ms(
    index: faiss.Index, queries: np.ndarray, repeats: int = 5, k: int = 10
) -> tuple[float, float]:
    """Milliseconds per query (`pass_times_ms`), the medians over the passes: wall, CPU."""
    wall, cpu = pass_times_ms(index, queries, repeats, k)
    return statistics.median(wall), statistics.median(cpu)


def memory_bytes(index: faiss.Index) -> int:
    """The index's size serialized, which is about what it holds in memory."""
    return int(faiss.serialize_index(index).nbytes)


def sample_queries(embeddings: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` distinct catalog rows, drawn with `seed`, to use as recall queries."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(embeddings), size=min(n, len(embeddings)), replace=False)
    return as_matrix(embeddings[np.sort(rows)], "queries")
