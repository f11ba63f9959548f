"""Fast tests of `index.type: auto`: exact while fast enough, else `index.approximate` (ivf_fastscan
or ivfsq) tuned to the target."""

from __future__ import annotations

from collections.abc import Iterator
from typing import get_args

import faiss
import numpy as np
import pytest

from index import build_and_measure, measure_recall, search
from index.build import set_search_params
from index.config import ApproximateType
from tests.conftest import config_section

TINY_BUDGET_MS = 1e-6  # no exact search is this fast: auto must go approximate
APPROXIMATE = list(get_args(ApproximateType))


@pytest.fixture(autouse=True, scope="module")
def single_faiss_thread() -> Iterator[None]:
    """One OpenMP thread, as in test_index.py: k-means on a busy machine stays fast."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


def clustered(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` items around 40 centres, and 300 queries that average a few items of one centre
    plus noise (a player's history), the queries' last coordinate 1 as with a bias dim."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    labels = rng.integers(0, 40, size=n)
    items = (centres[labels] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    histories = [rng.choice(np.flatnonzero(labels == c), size=5) for c in labels[:300]]
    queries = np.stack([items[h].mean(axis=0) for h in histories])
    queries += 0.1 * rng.standard_normal(queries.shape)
    queries[:, -1] = 1.0
    return items, queries.astype(np.float32)


@pytest.fixture(scope="module")
def catalog() -> tuple[np.ndarray, np.ndarray]:
    """4,000 items of an odd dimension (33, as 257 is: ivf_fastscan and ivfsq pad it)."""
    return clustered(4000, 33)


def test_auto_keeps_exact_search_for_a_small_catalog(
    catalog: tuple[np.ndarray, np.ndarray],
) -> None:
    items, queries = catalog
    index, report = build_and_measure(items, config_section("index", type="auto"), queries)
    assert (report.requested, report.type, report.params) == ("auto", "flat", {})
    assert isinstance(index, faiss.IndexFlatIP)
    assert report.recall_at_10 == 1.0 and report.meets_target
    assert report.exact_query_cpu_ms is not None and report.exact_query_cpu_ms > 0
    assert report.memory_bytes >= items.nbytes and report.warning() is None


@pytest.mark.parametrize("family", APPROXIMATE)
def test_auto_goes_approximate_past_the_budget_and_reaches_the_target(
    catalog: tuple[np.ndarray, np.ndarray], family: str
) -> None:
    items, queries = catalog
    cfg = config_section(
        "index",
        type="auto",
        approximate=family,
        exact_budget_ms=TINY_BUDGET_MS,
        recall_target=0.95,
    )
    index, report = build_and_measure(items, cfg, queries, seed=1)
    assert report.type == family and report.meets_target and report.warning() is None
    assert report.recall_at_10 >= 0.95 + cfg.recall_margin > 0.95  # tuned with the margin
    assert report.recall_at_10 == measure_recall(index, items, queries)
    assert report.exact_query_cpu_ms > TINY_BUDGET_MS and report.query_ms > 0
    assert report.memory_bytes > 0 and report.build_seconds > 0
    assert report.params["nlist"] == 4000 // 39
    assert report.params["refine_factor"] == cfg.refine_factor
    assert index.d == 33  # padded inside, asked with the towers' dimension
    _, ids = search(index, queries[:3], k=10)
    assert ids.shape == (3, 10) and (ids >= 0).all()


@pytest.mark.parametrize("family", APPROXIMATE)
def test_auto_tunes_the_smallest_nprobe_that_reaches_the_target(
    catalog: tuple[np.ndarray, np.ndarray], family: str
) -> None:
    items, queries = catalog
    cfg = config_section(
        "index",
        type="auto",
        approximate=family,
        exact_budget_ms=TINY_BUDGET_MS,
        recall_target=0.99,
        recall_margin=0.0,
    )
    index, report = build_and_measure(items, cfg, queries)
    nprobe = report.params["nprobe"]
    assert report.type == family and report.recall_at_10 >= 0.99 and nprobe > 1
    set_search_params(index, {"type": family, **report.params, "nprobe": nprobe - 1})
    assert measure_recall(index, items, queries) < 0.99


def test_a_target_out_of_reach_is_reported_not_raised() -> None:
    rng = np.random.default_rng(3)
    items = rng.standard_normal((4000, 64)).astype(np.float32)  # no structure for IVF to use
    queries = rng.standard_normal((200, 64)).astype(np.float32)
    cfg = config_section(
        "index",
        type="auto",
        exact_budget_ms=TINY_BUDGET_MS,
        recall_target=0.99,
        max_probe_fraction=0.05,
    )
    _, report = build_and_measure(items, cfg, queries)
    assert report.type == cfg.approximate and not report.meets_target
    assert report.params["nprobe"] == int(report.params["nlist"] * 0.05)  # stopped at the ceiling
    assert report.recall_at_10 < 0.99
    warning = report.warning()
    assert warning is not None and "below the target" in warning
    assert f"{0.99 - report.recall_at_10:.4f}" in warning


def test_a_concrete_type_is_checked_against_the_target_too(
    catalog: tuple[np.ndarray, np.ndarray],
) -> None:
    items, queries = catalog
    cfg = config_section("index", type="ivf", nlist=64, nprobe=1, recall_target=1.0)
    _, report = build_and_measure(items, cfg, queries)
    assert report.requested == "ivf" and report.exact_query_cpu_ms is None
    assert report.meets_target == (report.recall_at_10 >= 1.0)
    assert (report.warning() is None) == report.meets_target


def test_the_summary_names_the_choice(catalog: tuple[np.ndarray, np.ndarray]) -> None:
    items, queries = catalog
    _, report = build_and_measure(items, config_section("index", type="auto"), queries)
    line = report.summary()
    assert line.startswith("index flat: recall@10 vs exact 1.0000") and "chosen by auto" in line
