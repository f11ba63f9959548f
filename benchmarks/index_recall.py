"""Benchmark every FAISS index type on clustered synthetic embeddings.

For each index type (and a few search settings) it measures build time, recall@10 against exact
search, batched query time and serialized size, prints a table and saves a recall-vs-time plot.

    python -m benchmarks.index_recall --items 100000 --dim 64 --queries 1000
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index.build import build_index, measure_recall, plan_index, set_search_params
from training.config import load_training_config

PLOT = Path(__file__).resolve().parents[1] / "docs" / "index_recall.png"
# Search settings tried on each built index: (faiss parameter name, values).
SWEEPS: dict[str, tuple[str, list[int]]] = {
    "flat": ("", [0]),
    "ivf": ("nprobe", [4, 16, 64]),
    "ivfpq": ("nprobe", [16, 64]),
    "ivfsq": ("nprobe", [4, 16, 64]),
    "ivf_fastscan": ("nprobe", [4, 16, 64]),
    "hnsw": ("ef_search", [32, 128]),
}


@dataclass
class Row:
    index_type: str
    params: str
    setting: str  # the swept search parameter, used to label the plot
    build_seconds: float
    recall_at_10: float
    query_ms_per_1k: float
    size_mb: float


def gaussian_mixture(n: int, dim: int, n_clusters: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors around random unit centres, with Zipf-like (uneven) cluster sizes."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.7
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    noise = rng.standard_normal((n, dim)) * spread / np.sqrt(dim)
    vectors = (centres[labels] + noise).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def query_ms_per_1k(index: faiss.Index, queries: np.ndarray, repeats: int = 5) -> float:
    """Best-of-`repeats` time of a warmed-up batched top-10 search, in ms per 1k queries."""
    index.search(queries, 10)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        index.search(queries, 10)
        timings.append(time.perf_counter() - start)
    return min(timings) * 1000 / (len(queries) / 1000)


def describe(plan: dict, name: str, value: int) -> tuple[str, str]:
    """All effective parameters, and the swept one alone, as `key=value` text."""
    if not name:
        return "exact", "exact"
    params = {k: v for k, v in plan.items() if k != "type"} | {name: value}
    return " ".join(f"{k}={v}" for k, v in params.items()), f"{name}={value}"


def bench_type(index_type: str, items: np.ndarray, queries: np.ndarray, seed: int) -> list[Row]:
    cfg = load_training_config().index.model_copy(update={"type": index_type})
    start = time.perf_counter()
    index = build_index(items, cfg, seed)
    build_seconds = time.perf_counter() - start
    size_mb = faiss.serialize_index(index).nbytes / 1e6
    plan = plan_index(*items.shape, cfg)
    name, values = SWEEPS[index_type]
    rows = []
    for value in values:
        if name:
            set_search_params(index, plan | {name: value})
        params, setting = describe(plan, name, value)
        rows.append(
            Row(
                index_type=index_type,
                params=params,
                setting=setting,
                build_seconds=build_seconds,
                recall_at_10=measure_recall(index, items, queries, k=10),
                query_ms_per_1k=query_ms_per_1k(index, queries),
                size_mb=size_mb,
            )
        )
    return rows


HEADERS = ["index", "params", "build s", "recall@10", "query ms / 1k", "size MB"]


def cells(row: Row) -> list[str]:
    return [
        row.index_type,
        row.params,
        f"{row.build_seconds:.2f}",
        f"{row.recall_at_10:.3f}",
        f"{row.query_ms_per_1k:.1f}",
        f"{row.size_mb:.1f}",
    ]


def print_table(rows: list[Row], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        table = [HEADERS] + [cells(r) for r in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(HEADERS))]
        print(title)
        for line in table:
            print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
        return
    rich_table = Table(title=title)
    for header in HEADERS:
        rich_table.add_column(header, justify="left" if header in ("index", "params") else "right")
    for row in rows:
        rich_table.add_row(*cells(row))
    Console().print(rich_table)


def save_plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for index_type in SWEEPS:
        mine = [r for r in rows if r.index_type == index_type]
        ax.plot(
            [r.query_ms_per_1k for r in mine],
            [r.recall_at_10 for r in mine],
            "o-",
            label=index_type,
        )
        for r in mine:
            ax.annotate(
                r.setting,
                (r.query_ms_per_1k, r.recall_at_10),
                fontsize=7,
                xytext=(4, -10),
                textcoords="offset points",
            )
    ax.set(
        xscale="log",
        xlabel="query time, ms per 1,000 queries (batched, log scale)",
        ylabel="recall@10 vs exact",
        title=title,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=500, help="Gaussian mixture components")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="faiss threads; 0 = faiss default")
    parser.add_argument("--plot", type=Path, default=PLOT)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    # Queries are fresh draws from the same mixture as the items.
    points = gaussian_mixture(
        args.items + args.queries, args.dim, args.clusters, args.spread, args.seed
    )
    items, queries = points[: args.items], points[args.items :]
    rows = [row for t in SWEEPS for row in bench_type(t, items, queries, args.seed)]
    title = (
        f"{args.items:,} items, dim {args.dim}, {args.queries:,} queries, "
        f"{faiss.omp_get_max_threads()} threads"
    )
    print_table(rows, title)
    save_plot(rows, args.plot, title)
    print(f"plot saved to {args.plot}")


if __name__ == "__main__":
    main()
