"""Build the index a config asks for and report it; `type: auto` chooses the index by measuring.

auto keeps exact search while one query takes at most `exact_budget_ms` of CPU time on one
thread, in the fastest of 3 passes (CPU time and the fastest pass: a machine busy with other
work does not flip the choice as easily). Past that it builds the `approximate` index
(ivf_fastscan: IVF over 4-bit fast-scan PQ codes, or ivfsq: over 8-bit scalar codes; the
short list re-ranked exactly) and raises nprobe until recall@10 against exact search, on the
given queries, reaches `recall_target` + `recall_margin` (so that other queries reach the target
too); nprobe stops at `max_probe_fraction` of the lists, and an index that stops there below
the target is kept and reported as missing it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index.build import (
    as_matrix,
    build_index,
    exact_top_ids,
    memory_bytes,
    pass_times_ms,
    plan_index,
    query_ms,
    recall_against,
    sample_queries,
    set_search_params,
)
from index.config import IndexConfig

TIMING_QUERIES = 200  # queries timed one at a time for the report
EXACT_TIMING_QUERIES = 20  # exact search over a large catalog is slow: fewer decide auto


@dataclass
class IndexReport:
    """What was built, why, and how well it matches exact search."""

    requested: str  # the configured type: auto, or the type itself
    type: str  # the type built
    n_items: int
    dim: int
    params: dict[str, Any]
    recall_at_10: float
    recall_target: float
    meets_target: bool
    build_seconds: float  # building, and for auto deciding and tuning
    memory_bytes: int
    query_ms: float  # per query, one query per search, one FAISS thread (median of passes)
    query_cpu_ms: float  # the same, in the searching thread's CPU time
    exact_query_cpu_ms: float | None  # auto: exact search's CPU time, measured the same way

    def summary(self) -> str:
        """One line: what was built, its recall against the target, time, memory, build time."""
        chosen = " (chosen by auto)" if self.requested == "auto" else ""
        return (
            f"index {self.type}: recall@10 vs exact {self.recall_at_10:.4f} "
            f"(target {self.recall_target}), {self.query_ms:.3f} ms/query on 1 thread "
            f"({self.query_cpu_ms:.3f} ms CPU), "
            f"{self.memory_bytes / 1e6:.1f} MB, built in {self.build_seconds:.2f} s, "
            f"params {self.params}{chosen}"
        )

    def warning(self) -> str | None:
        """A line saying by how much the index misses its recall target, if it does."""
        if self.meets_target:
            return None
        return (
            f"WARNING: the {self.type} index reaches recall@10 {self.recall_at_10:.4f} against "
            f"exact search, {self.recall_target - self.recall_at_10:.4f} below the target "
            f"index.recall_target={self.recall_target}"
        )


def _probe_ceiling(index: faiss.Index, cfg: IndexConfig) -> int:
    nlist = faiss.extract_index_ivf(index).nlist
    return max(1, int(nlist * cfg.max_probe_fraction))


def _tune_nprobe(
    index: faiss.Index,
    plan: dict[str, Any],
    queries: np.ndarray,
    true_ids: np.ndarray,
    cfg: IndexConfig,
) -> int:
    """The smallest nprobe up to the ceiling whose recall reaches the target plus the margin
    (the ceiling if none does): doubling, then bisecting the last doubling. Recall grows with
    nprobe."""
    ceiling = _probe_ceiling(index, cfg)
    from tqdm import tqdm  # here: the service imports `index` and its image has no tqdm

    with tqdm(desc="tuning nprobe", unit="setting", leave=False, disable=None) as bar:

        def reaches(nprobe: int) -> bool:
            set_search_params(index, {**plan, "nprobe": nprobe})
            recall = recall_against(index, queries, true_ids)
            bar.set_postfix(nprobe=nprobe, recall=f"{recall:.4f}")
            bar.update()
            return recall >= min(1.0, cfg.recall_target + cfg.recall_margin)

        low, high = 0, 1  # low misses the target (0: nothing searched), high is being tried
        while high < ceiling and not reaches(high):
            low, high = high, min(2 * high, ceiling)
        if high == ceiling and not reaches(high):
            return ceiling
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if reaches(middle) else (middle, high)
        return high


def choose_index(
    embeddings: np.ndarray,
    cfg: IndexConfig,
    queries: np.ndarray,
    true_ids: np.ndarray,
    seed: int = 0,
) -> tuple[faiss.Index, IndexConfig, float]:
    """auto's choice: (built index, the concrete config it was built with, exact search's CPU
    ms per query). `true_ids` are the queries' exact top 10 (`exact_top_ids`)."""
    exact_cfg = cfg.model_copy(update={"type": "flat"})
    exact = build_index(embeddings, exact_cfg, seed)
    # The fastest pass: a neighbour's load only ever slows a pass, and must not flip the choice.
    exact_ms = min(pass_times_ms(exact, queries[:EXACT_TIMING_QUERIES], repeats=3)[1])
    if exact_ms <= cfg.exact_budget_ms:
        return exact, exact_cfg, exact_ms
    del exact
    approximate_cfg = cfg.model_copy(update={"type": cfg.approximate})
    index = build_index(embeddings, approximate_cfg, seed)
    plan = plan_index(*embeddings.shape, approximate_cfg)
    nprobe = _tune_nprobe(index, plan, queries, true_ids, cfg)
    set_search_params(index, {**plan, "nprobe": nprobe})
    return index, approximate_cfg.model_copy(update={"nprobe": nprobe}), exact_ms


def build_and_measure(
    embeddings: np.ndarray,
    cfg: IndexConfig,
    queries: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[faiss.Index, IndexReport]:
    """Build the index (choosing it for auto) and report its effective parameters, build time,
    recall@10 on `queries` against the target, memory and query time.

    Without `queries`, `cfg.recall_queries` catalog rows are sampled with `seed` as queries.
    """
    embeddings = as_matrix(embeddings, "embeddings")
    queries = sample_queries(embeddings, cfg.recall_queries, seed) if queries is None else queries
    queries = as_matrix(queries, "queries")
    true_ids = exact_top_ids(embeddings, queries, k=10)
    start = time.perf_counter()
    if cfg.type == "auto":
        index, built_cfg, exact_ms = choose_index(embeddings, cfg, queries, true_ids, seed)
    else:
        index, built_cfg, exact_ms = build_index(embeddings, cfg, seed), cfg, None
    build_seconds = time.perf_counter() - start
    plan = plan_index(*embeddings.shape, built_cfg)
    recall = recall_against(index, queries, true_ids)
    wall_ms, cpu_ms = query_ms(index, queries[:TIMING_QUERIES])
    report = IndexReport(
        requested=cfg.type,
        type=plan.pop("type"),
        n_items=embeddings.shape[0],
        dim=embeddings.shape[1],
        params=plan,
        recall_at_10=recall,
        recall_target=cfg.recall_target,
        meets_target=recall >= cfg.recall_target,
        build_seconds=build_seconds,
        memory_bytes=memory_bytes(index),
        query_ms=wall_ms,
        query_cpu_ms=cpu_ms,
        exact_query_cpu_ms=exact_ms,
    )
    return index, report
