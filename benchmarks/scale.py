"""The index at catalog scale: `index.type: auto` on synthetic catalogs of 100,000 and
1,000,000 games at the default model's dimension, against the targets of issue 17.

    python -m benchmarks.scale                        # 100,000 and 1,000,000 games
    python -m benchmarks.scale --items 100000 --queries 500

Each catalog is built with the `index:` settings of configs/training.yaml (type auto), the
recall target set to the size's target. The games are clustered like learned embeddings of a
store: genres, each with sub-genres of about 200 games, uneven in size (Zipf-like), a varying
norm and a bias coordinate (model.scoring dot_bias). A query is a player: the mean of 3-20
games' vectors from 1-3 favourite sub-genres, plus noise, with 1 as its bias coordinate. Recall
is tuned and measured on one query set and checked again on fresh queries; query time is one
query per search on one FAISS thread, the median of 5 passes.
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass
from typing import get_args

import faiss
import numpy as np
from tqdm import tqdm

from index import IndexReport, build_and_measure, measure_recall
from index.config import ApproximateType
from training.config import load_training_config
from training.ease_start import with_ease_start
from training.towers import output_dim

# Issue 17's targets: catalog size -> (recall@10 at least, ms per query at most).
TARGETS = {100_000: (0.98, 0.3), 1_000_000: (0.95, 1.0)}
BUILD_TARGET_SECONDS = 600
MEMORY_TARGET_BYTES = 2 * 1024**3
GENRES = 64
GAMES_PER_SUBGENRE = 200


@dataclass
class Catalog:
    items: np.ndarray  # (n, dim): the item tower's vectors, bias last
    subgenre: np.ndarray  # each game's sub-genre
    members: list[np.ndarray]  # each sub-genre's games


def synthetic_catalog(n: int, dim: int, seed: int) -> Catalog:
    """Clustered game vectors of `dim` coordinates, the last one a game bias."""
    rng = np.random.default_rng(seed)
    d = dim - 1
    genres = _unit(rng.standard_normal((GENRES, d)))
    n_sub = max(GENRES, n // GAMES_PER_SUBGENRE)
    centres = genres[rng.integers(0, GENRES, n_sub)] + 0.6 / np.sqrt(d) * rng.standard_normal(
        (n_sub, d)
    )
    weights = 1.0 / np.arange(1, n_sub + 1) ** 0.7
    subgenre = rng.choice(n_sub, size=n, p=weights / weights.sum())
    items = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: float64 noise for 1M x 256 is 2 GB
        rows = slice(start, min(n, start + 100_000))
        size = rows.stop - rows.start
        noise = 0.35 / np.sqrt(d) * rng.standard_normal((size, d))
        norms = rng.lognormal(0.0, 0.2, (size, 1))
        items[rows, :d] = (centres[subgenre[rows]] + noise) * norms
        items[rows, d] = rng.normal(0.0, 0.1, size)
    order = np.argsort(subgenre, kind="stable")
    bounds = np.searchsorted(subgenre[order], np.arange(n_sub + 1))
    members = [order[bounds[s] : bounds[s + 1]] for s in range(n_sub)]
    return Catalog(items, subgenre, members)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def player_queries(catalog: Catalog, n: int, seed: int) -> np.ndarray:
    """`n` players' vectors: the mean of 3-20 games of 1-3 favourite sub-genres, plus noise."""
    rng = np.random.default_rng(seed)
    items = catalog.items
    d = items.shape[1] - 1
    queries = np.ones((n, d + 1), dtype=np.float32)
    for row in range(n):
        favourites = catalog.subgenre[rng.integers(0, len(items), rng.integers(1, 4))]
        pool = np.concatenate([catalog.members[s] for s in favourites])
        history = rng.choice(pool, size=rng.integers(3, 21))
        noise = 0.3 / np.sqrt(d) * rng.standard_normal(d)
        queries[row, :d] = items[history, :d].mean(axis=0) + noise
    return queries


@dataclass
class Result:
    report: IndexReport
    fresh_recall: float
    build_cpu_seconds: float
    peak_rss_bytes: int


def run_size(n: int, families: list[str], queries_per_set: int, seed: int) -> list[Result]:
    """auto on one catalog of `n` games, once per approximate family, side by side."""
    settings = with_ease_start(load_training_config(), n, streamed=False)
    dim = output_dim(settings.model)  # as trained at this size (512 + 1 while EASE starts it)
    target_recall, _ = TARGETS.get(n, (settings.index.recall_target, None))
    catalog = synthetic_catalog(n, dim, seed)
    queries = player_queries(catalog, queries_per_set, seed + 1)
    fresh = player_queries(catalog, queries_per_set, seed + 2)
    results = []
    for family in families:
        cfg = settings.index.model_copy(
            update={"recall_target": target_recall, "approximate": family}
        )
        cpu_start = time.process_time()
        index, report = build_and_measure(catalog.items, cfg, queries, seed)
        build_cpu = time.process_time() - cpu_start
        results.append(
            Result(
                report=report,
                fresh_recall=measure_recall(index, catalog.items, fresh),
                build_cpu_seconds=build_cpu,
                peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            )
        )
        tqdm.write(report.summary())
        del index
    return results


def shortfalls(result: Result) -> list[str]:
    """Each target missed, and by how much (empty: every target met)."""
    r = result.report
    recall_target, ms_target = TARGETS.get(r.n_items, (r.recall_target, None))
    missed = []
    for name, recall in (("recall", r.recall_at_10), ("fresh-query recall", result.fresh_recall)):
        if recall < recall_target:
            missed.append(f"{name} {recall_target - recall:.4f} below {recall_target}")
    if ms_target is not None and r.query_ms > ms_target:
        cpu = "meets it" if r.query_cpu_ms <= ms_target else "over too"
        missed.append(
            f"query time {r.query_ms - ms_target:.3f} ms over {ms_target} ms (CPU time {cpu})"
        )
    if r.memory_bytes > MEMORY_TARGET_BYTES:
        missed.append(f"memory {(r.memory_bytes - MEMORY_TARGET_BYTES) / 1e6:.0f} MB over 2 GiB")
    if r.build_seconds > BUILD_TARGET_SECONDS:
        missed.append(f"build {r.build_seconds - BUILD_TARGET_SECONDS:.0f} s over 10 min")
    return missed


HEADERS = [
    "games",
    "dim",
    "index",
    "params",
    "recall@10",
    "fresh recall@10",
    "target",
    "ms/query (CPU ms)",
    "exact CPU ms/query",
    "memory MB",
    "build s (CPU s)",
    "targets",
]


def cells(result: Result) -> list[str]:
    r = result.report
    recall_target, ms_target = TARGETS.get(r.n_items, (r.recall_target, None))
    params = " ".join(f"{k}={v}" for k, v in r.params.items()) or "exact"
    missed = shortfalls(result)
    return [
        f"{r.n_items:,}",
        str(r.dim),
        r.type,
        params,
        f"{r.recall_at_10:.4f}",
        f"{result.fresh_recall:.4f}",
        f">= {recall_target}" + (f", <= {ms_target} ms" if ms_target else ""),
        f"{r.query_ms:.3f} ({r.query_cpu_ms:.3f})",
        f"{r.exact_query_cpu_ms:.2f}" if r.exact_query_cpu_ms is not None else "-",
        f"{r.memory_bytes / 1e6:,.0f}",
        f"{r.build_seconds:.0f} ({result.build_cpu_seconds:.0f})",
        "met" if not missed else "missed: " + "; ".join(missed),
    ]


def markdown_table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + " --- |" * len(HEADERS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in results]
    return "\n".join(lines)


def print_ratios(results: list[Result], families: list[str]) -> None:
    """Each family's query time (CPU) as a multiple of the first's, per catalog: one run."""
    if len(families) < 2:
        return
    by_size: dict[int, dict[str, IndexReport]] = {}
    for result in results:
        by_size.setdefault(result.report.n_items, {})[result.report.type] = result.report
    for n, reports in by_size.items():
        first = reports.get(families[0])
        for family in families[1:]:
            other = reports.get(family)
            if first is None or other is None:  # exact search won: no approximate family ran
                continue
            print(
                f"{n:,} games: {family} takes {other.query_cpu_ms / first.query_cpu_ms:.2f}x "
                f"the CPU time per query of {families[0]} ({other.recall_at_10:.4f} against "
                f"{first.recall_at_10:.4f} recall@10)"
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--items", type=int, action="append", help="catalog size (repeatable) [100k and 1M]"
    )
    parser.add_argument(
        "--approximate",
        action="append",
        choices=get_args(ApproximateType),
        help="auto's approximate family (repeatable) [index.approximate, then the others]",
    )
    parser.add_argument("--queries", type=int, default=1000, help="queries per set (2 sets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="faiss threads while building")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    faiss.omp_set_num_threads(args.threads)
    sizes = args.items or sorted(TARGETS)
    default = load_training_config().index.approximate
    others = [family for family in get_args(ApproximateType) if family != default]
    families = args.approximate or [default, *others]
    results = []
    for n in tqdm(sizes, desc="catalogs", unit="catalog"):
        results += run_size(n, families, args.queries, args.seed)
    print(markdown_table(results))
    print_ratios(results, families)
    print(
        f"\n{args.threads} FAISS threads to build, 1 to time queries; peak resident memory "
        f"{max(r.peak_rss_bytes for r in results) / 1e9:.1f} GB"
    )


if __name__ == "__main__":
    main()
